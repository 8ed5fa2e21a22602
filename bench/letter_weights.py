"""The weights of the rare-alliteration reward: how rarely each letter starts a word in the unmodified model's own
stories, written to alliter/train/letter_weights.json with their provenance.

    python bench/letter_weights.py                   # 5000 stories of the bundled model, seed 0
    python bench/letter_weights.py --stories 20000   # more of them

A story is sampled as the trainer samples (the prompt, top-k 50, temperature 1, 100 tokens, cut at its end), and
its words are `text.split()`, as the study's reward splits them. p(l) is the share of words whose first character
is the letter l (add-one smoothed: a letter never seen counts once); its information is I(l) = -log2 p(l) bits.
A pair's weight is I(l) over the mean information of the unmodified model's own alliterating pairs, so that on the
unmodified model the rare-alliteration reward is, on average, its raw reward: a pair of t (a common initial) weighs
less than 1, one of z several times more, and none is a thousand times more (1 / p(l) would be).
"""

from __future__ import annotations

import argparse
import json
import math
import string
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alliter.config import TrainConfig  # noqa: E402
from alliter.train.model import load_models  # noqa: E402
from alliter.train.reward import LETTER_WEIGHTS, alliterating_letters  # noqa: E402
from alliter.train.rollout import decode_texts, sample_group, sequence_lengths  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stories", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(LETTER_WEIGHTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cfg = TrainConfig().resolved()
    m = load_models(cfg)
    prompt = m.tokenizer(cfg.prompt, return_tensors="pt").input_ids[0]
    starts, pairs, n = Counter(), Counter(), 0
    while n < args.stories:
        k = min(100, args.stories - n)
        with torch.inference_mode():
            tokens = sample_group(m.policy, prompt, k, cfg.max_length, cfg.top_k, cfg.temperature, m.eos_ids)
        for text in decode_texts(m.tokenizer, tokens, sequence_lengths(tokens, len(prompt), m.eos_ids)):
            words = text.split()
            starts.update(w[0].lower() for w in words if w[0].lower() in string.ascii_lowercase)
            pairs.update(alliterating_letters(text))
        n += k
    total = sum(starts.values()) + len(string.ascii_lowercase)
    share = {c: (starts[c] + 1) / total for c in string.ascii_lowercase}
    info = {c: -math.log2(p) for c, p in share.items()}
    mean_pair_info = sum(pairs[c] * info[c] for c in pairs) / sum(pairs.values())
    weights = {c: round(info[c] / mean_pair_info, 4) for c in string.ascii_lowercase}
    data = {
        "provenance": {
            "what": "the rare-alliteration reward's weight of a pair of words starting with each letter",
            "model": "stories260k (bundled)", "stories": args.stories, "seed": args.seed, "prompt": cfg.prompt,
            "sampling": f"top-k {cfg.top_k}, temperature {cfg.temperature:g}, max_length {cfg.max_length}",
            "made_by": "python bench/letter_weights.py", "date": time.strftime("%Y-%m-%d"),
            "definition": "weight(l) = -log2 p(l) / (the mean of -log2 p over the unmodified model's alliterating "
                          "pairs), p(l) the add-one smoothed share of words starting with l",
        },
        "words": sum(starts.values()),
        "first_letter_share": {c: round(share[c], 6) for c in string.ascii_lowercase},
        "alliterating_pairs": dict(sorted(pairs.items(), key=lambda kv: -kv[1])),
        "weights": weights,
    }
    Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
    top = sorted(pairs.items(), key=lambda kv: -kv[1])[:6]
    print(f"{n} stories, {sum(starts.values())} words; pairs by letter: {top}")
    print("weights: " + ", ".join(f"{c} {w:.2f}" for c, w in sorted(weights.items(), key=lambda kv: kv[1])))


if __name__ == "__main__":
    main()
