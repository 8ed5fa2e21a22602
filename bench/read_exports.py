"""Read exported models as their user would: fresh stories from the library's `generate`, measured against the
unmodified model's.

    python bench/read_exports.py model-coarse model-fine         # exported folders (best_beta.py --export)
    python bench/read_exports.py --stories 3 model-coarse        # and print three stories of each

Independent of alliter's own sampling and evaluation: each folder is loaded with `from_pretrained` and sampled
with `generate` and the folder's generation_config (do_sample, top-k, temperature, max_length), `--n` stories
(60) from the prompt, seed `--seed`. Per folder, and for the unmodified model (the base model the export names
in alliter.json, loaded the same way), it prints:

- fluency: the unmodified model's mean token cross-entropy of the stories (each story's mean, then the mean);
- novel words: the share of the stories' words (lower-case letter runs) that the unmodified model never wrote in
  `--vocabulary-stories` (2000) stories of its own, sampled the same way with another seed;
- distinct-2 over all the stories together, and the mean raw reward (the study's alliteration count);
- the words it over-uses: those of 4+ letters it uses at least once in 5 stories, with how many times as often as
  the unmodified model's stories do (alliter.measures.overused_words: the rule's measure, 3 uses added to each of the
  unmodified model's words), and its most over-used word's ratio against the 2000 stories of the vocabulary too;
- the goals (issue 41's): fluency within 0.25 nats, at most twice the novel-word share, at least 85% of the
  distinct-2, at least 1 more raw reward than the unmodified model, and no word used more than 5 times as often.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alliter import measures as M  # noqa: E402
from alliter.train.reward import raw_reward  # noqa: E402
from alliter.config import MODEL_PRESETS  # noqa: E402
from alliter.schema import EXPORT_INFO_FILE  # noqa: E402

WORD = re.compile(r"[a-z]+")


def load(folder: str):
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def sample(model, tokenizer, prompt: str, n: int, seed: int, batch: int = 60) -> list[str]:
    """n stories from `generate` with the model's generation_config, the prompt cut off."""
    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    texts: list[str] = []
    with torch.no_grad():
        while len(texts) < n:
            k = min(batch, n - len(texts))
            out = model.generate(input_ids=ids.expand(k, -1), attention_mask=torch.ones_like(ids).expand(k, -1),
                                 pad_token_id=tokenizer.eos_token_id)
            texts += tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [prompt + t for t in texts]


def mean_ce(model, tokenizer, texts: list[str]) -> float:
    """Each text's mean token cross-entropy under `model`, averaged over the texts."""
    values = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt").input_ids
            values.append(model(ids, labels=ids).loss.item())
    return sum(values) / len(values)


def words(texts: list[str]) -> list[str]:
    return [w for t in texts for w in WORD.findall(t.lower())]


def pooled_distinct_2(texts: list[str]) -> float:
    return M.distinct_n(texts, 2)


def measure(texts: list[str], reference, tokenizer, vocabulary: set[str], base_texts: list[str],
            many: list[str]) -> dict:
    ws = words(texts)
    overused = M.overused_words(texts, base_texts)
    return {
        "fluency": mean_ce(reference, tokenizer, texts),
        "novel_words": sum(w not in vocabulary for w in ws) / max(1, len(ws)),
        "distinct_2": pooled_distinct_2(texts),
        "raw_reward": sum(raw_reward(t) for t in texts) / len(texts),
        "overuse": overused[0][2] if overused else 1.0,
        "overused": M.overuse_text(overused[:3], len(base_texts)),
        "overuse_many": M.top_overuse(texts, many),
    }


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="exported model folders")
    parser.add_argument("--n", type=int, default=60, help="stories per folder (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocabulary-stories", type=int, default=2000)
    parser.add_argument("--stories", type=int, default=0, help="print this many stories of each folder")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON lines too")
    args = parser.parse_args()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)

    infos = [json.loads((Path(f) / EXPORT_INFO_FILE).read_text()) for f in args.folders]
    base = infos[0]["config"]["model"]
    base = MODEL_PRESETS.get(base, (base,))[0]
    prompt = infos[0]["prompt"]
    reference, tokenizer = load(base)
    reference.generation_config = AutoModelForCausalLM.from_pretrained(args.folders[0]).generation_config
    many = sample(reference, tokenizer, prompt, args.vocabulary_stories, args.seed + 1)
    vocabulary = set(words(many))
    base_texts = sample(reference, tokenizer, prompt, args.n, args.seed)
    rows = [("unmodified model", "-", measure(base_texts, reference, tokenizer, vocabulary, base_texts, many), [])]
    for folder, info in zip(args.folders, infos):
        model, tok = load(folder)
        texts = sample(model, tok, prompt, args.n, args.seed)
        point = f"beta={info['beta']:g} at {info['generations']}"
        rows.append((folder, point, measure(texts, reference, tokenizer, vocabulary, base_texts, many),
                     texts[: args.stories]))

    base_m = rows[0][2]
    print(f"{args.n} stories each from generate (seed {args.seed}); vocabulary: {len(vocabulary)} words of "
          f"{args.vocabulary_stories} stories of the unmodified model ({base})\n")
    print("| folder | point | fluency (CE under the unmodified model) | novel words | distinct-2 | raw reward | "
          f"over-used words | top ratio against {args.vocabulary_stories} stories | goal |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for folder, point, m, _ in rows:
        misses = [] if folder == "unmodified model" else [
            name for name, ok in (
                ("fluency", m["fluency"] <= base_m["fluency"] + 0.25),
                ("novel words", m["novel_words"] <= 2 * base_m["novel_words"]),
                ("distinct-2", m["distinct_2"] >= 0.85 * base_m["distinct_2"]),
                ("raw reward", m["raw_reward"] >= base_m["raw_reward"] + 1),
                ("over-use", m["overuse"] <= 5),
            ) if not ok]
        goal = "-" if folder == "unmodified model" else ("met" if not misses else "missed: " + ", ".join(misses))
        print(f"| {folder} | {point} | {m['fluency']:.2f} | {m['novel_words']:.1%} | {m['distinct_2']:.2f} | "
              f"{m['raw_reward']:.1f} | {m['overused'] if folder != 'unmodified model' else '-'} | "
              f"{m['overuse_many']:.1f}x | {goal} |")
        if args.json:
            print(json.dumps({"folder": folder, "point": point, **m}), file=sys.stderr)
    for folder, point, _, texts in rows:
        for i, text in enumerate(texts, 1):
            print(f"\n{folder} ({point}) [{i}] raw reward {raw_reward(text)}\n{text}")


if __name__ == "__main__":
    main()
