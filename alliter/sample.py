"""Stories from an exported model folder, or from a trial's snapshot, each with the study's raw reward.

    python -m alliter.sample DIR [--n 5] [--seed 0]                  # a folder best_beta.py --export wrote
    python -m alliter.sample TRIAL_DIR --generations 800 [--n 5]     # a trial folder, at a snapshot

Sampling is the trainer's own (alliter.train.rollout: the same decode loop, top-k and temperature, stories cut at
their end-of-text) with the settings the policy was trained with; the raw reward is the study's alliteration count
(alliter.train.reward.raw_reward), whichever reward the policy was trained with.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers.utils import logging as hf_logging

from alliter.cli import AlliterError, ArgumentParser, command, one_line, prog, run
from alliter.config import MAX_EVAL_SAMPLES, TrainConfig, check_bounds, within
from alliter.schema import CONFIG_FILE, EXPORT_INFO_FILE, METRICS_FILE
from alliter.storage import json_table, read_jsonl
from alliter.train.reward import raw_reward
from alliter.train.model import end_ids, pick_device
from alliter.train.preflight import check_model_files, check_prompt
from alliter.train.rollout import decode_texts, sample_group, sequence_lengths
from alliter.train.snapshots import list_snapshots, load_snapshot, snapshot_at

GENERATION_CONFIG = "generation_config.json"  # the sampling an exported folder carries (transformers' file)


def load_exported(folder: Path, device: torch.device) -> tuple[Any, Any, dict[str, Any], str]:
    """(model, tokenizer, sampling settings, what it is) of a folder best_beta.py --export wrote (or any
    saved causal LM folder)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_files(folder)  # a config and readable weights, said in one line
    info = json_table(folder / EXPORT_INFO_FILE) or {}  # the export's card, machine-readable: damaged is one line
    json_table(folder / GENERATION_CONFIG)  # the library would ignore a damaged one, and sample with its defaults
    try:
        model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, SafetensorError) as err:
        raise AlliterError(f"cannot load a model from {folder}: {one_line(err)}") from None
    gen = model.generation_config
    settings = {
        "prompt": info.get("prompt", TrainConfig.prompt),
        "top_k": gen.top_k if gen.top_k is not None else TrainConfig.top_k,
        "temperature": gen.temperature if gen.temperature is not None else TrainConfig.temperature,
        "max_length": gen.max_length if gen.max_length is not None else TrainConfig.max_length,
    }
    known = all(isinstance(info.get(k), (int, float)) for k in ("beta", "generations")) and "trial" in info
    what = f"beta={info['beta']:g} at {info['generations']} generations (trial {info['trial']})" if known else str(folder)
    return model, tokenizer, settings, what


def load_trial(folder: Path, generations: int, device: torch.device) -> tuple[Any, Any, dict[str, Any], str]:
    """(model, tokenizer, sampling settings, what it is) of a trial folder at a snapshot (the nearest earlier
    one when there is none at `generations`, said on stderr)."""
    config = json_table(folder / CONFIG_FILE)
    if config is None:
        raise AlliterError(f"{folder} is not a trial folder (no {CONFIG_FILE})")
    cfg = TrainConfig.from_dict(config)
    rows = read_jsonl(folder / METRICS_FILE)
    done = max((int(r["generations"]) for r in rows if "generations" in r), default=max(list_snapshots(folder) or [0]))
    used, note = snapshot_at(folder, generations, done)
    if note:
        print(f"note: {note}", file=sys.stderr)
    model, tokenizer = load_snapshot(folder, used, device)
    settings = {"prompt": cfg.prompt_list[0], "top_k": cfg.top_k, "temperature": cfg.temperature, "max_length": cfg.max_length}
    return model, tokenizer, settings, f"beta={cfg.beta:g} at {used} generations (trial {folder})"


def check_sampling(settings: dict[str, Any], source: str) -> None:
    """The sampling settings a folder gives (or --max-length) within the bounds a trial's are (TrainConfig's): a
    generation_config.json with temperature 0 would sample greedily where the policy never did."""
    try:
        TrainConfig(top_k=settings["top_k"], temperature=float(settings["temperature"]),
                    max_length=settings["max_length"]).validate()
    except (AlliterError, TypeError, ValueError) as err:
        raise AlliterError(f"the sampling settings of {source}: {err}") from None


def stories(model: Any, tokenizer: Any, settings: dict[str, Any], n: int, seed: int, fast: bool = True) -> list[str]:
    """n stories of the prompt, sampled as the trainer samples a group."""
    torch.manual_seed(seed)
    prompt_ids = tokenizer(settings["prompt"], return_tensors="pt").input_ids[0].to(model.device)
    check_prompt(settings["prompt"], len(prompt_ids), settings["max_length"], model.config, "the model")
    eos = end_ids(tokenizer, model)
    if not eos:
        raise AlliterError("the tokenizer has no end-of-text token")
    tokens = sample_group(model, prompt_ids, n, settings["max_length"], settings["top_k"], settings["temperature"], eos,
                          fast=fast)
    return decode_texts(tokenizer, tokens, sequence_lengths(tokens, len(prompt_ids), eos))


@command
def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog=prog("python -m alliter.sample"), description=__doc__)
    parser.add_argument("dir", metavar="DIR", help="an exported model folder, or a trial folder with --generations")
    parser.add_argument("--generations", type=int, help="a trial folder's snapshot at this many generations")
    parser.add_argument("--n", type=int, default=5, help="stories to print (default: 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling (default: 0)")
    parser.add_argument("--prompt", help="the prompt (default: the one the policy was trained on)")
    parser.add_argument("--max-length", type=int, help="tokens per story, prompt included (default: the trained policy's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto (default)")
    args = parser.parse_args(argv)
    folder = Path(args.dir)
    hf_logging.disable_progress_bar()
    within("n", args.n, 1, MAX_EVAL_SAMPLES, why="stories sampled in one batch")
    check_bounds("seed", args.seed)
    if not folder.is_dir():
        raise AlliterError(f"{folder} is a file, not a folder" if folder.exists() else f"no such folder: {folder}")
    device = pick_device(args.device)
    if args.generations is not None:
        model, tokenizer, settings, what = load_trial(folder, args.generations, device)
    elif list_snapshots(folder):
        have = ", ".join(str(g) for g in list_snapshots(folder))
        raise AlliterError(f"{folder} is a trial folder: pass --generations G (its snapshots: {have})")
    else:
        model, tokenizer, settings, what = load_exported(folder, device)
    if args.prompt is not None:
        settings["prompt"] = args.prompt
    if args.max_length is not None:
        settings["max_length"] = args.max_length
    source = folder / (GENERATION_CONFIG if args.generations is None else CONFIG_FILE)
    check_sampling(settings, f"{source}{' and --max-length' if args.max_length is not None else ''}")
    texts = stories(model, tokenizer, settings, args.n, args.seed)
    print(f"{what}: top-k {settings['top_k']}, temperature {settings['temperature']:g}, "
          f"max length {settings['max_length']} tokens, seed {args.seed}\n")
    for i, text in enumerate(texts, 1):
        print(f"[{i}] raw reward {raw_reward(text)}\n{text}\n")
    return 0


if __name__ == "__main__":
    run(main)
