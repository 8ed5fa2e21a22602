"""Evaluation of a point: fresh stories sampled from the policy as it is now, scored by the unmodified model.

A trial evaluates its policy before the first update (generation 0: the unmodified model) and at every snapshot,
so that every point the analysis can choose is one it can export. An evaluation samples `eval_samples` stories
with the trainer's own sampling (prompt, top-k, temperature, max_length, cut at the end-of-text) from a generator
of its own, seeded with `eval_seed` at every point: the training samples do not change by a bit whether
evaluations run or not, and every point of every trial (seeds included) is sampled with the same random
numbers, so that two points differ by their policies, not by their luck.

Each story keeps its raw reward, its new tokens and its mean token cross-entropy under the policy and under the
unmodified model (the fluency of `alliter.rule`); `alliter.measures.point_measures` turns them into the point's
measures, the same function for the trial and for best_beta.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alliter import measures as M
from alliter.cli import AlliterError, one_line
from alliter.config import TrainConfig, base_model_here
from alliter.rule import CollapseRule
from alliter.storage import read_jsonl
from alliter.train.rloo import sequence_ce, target_mask
from alliter.train.reward import Reward, load_reward
from alliter.train.rollout import decode_texts, sample_group, sequence_lengths


LOGITS_BYTES = 256 * 2**20


def evaluate(
    policy: Any,
    reference: Any,
    tokenizer: Any,
    prompt_ids: torch.Tensor,
    eos_ids: list[int],
    *,
    samples: int,
    seed: int,
    group_size: int,
    max_length: int,
    top_k: int,
    temperature: float,
    fast: bool = True,
    reward: Reward | None = None,
) -> list[dict[str, Any]]:
    """`samples` stories of the policy, each {"sample", "text", "raw_reward", "new_tokens", "ce_policy", "ce_ref"},
    sampled in one batch from a generator seeded with `seed`; the global generators are as they were before.
    `raw_reward` is the trial's reward (default: the study's)."""
    reward = reward or load_reward("alliteration")
    device = prompt_ids.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
        torch.manual_seed(seed)
        tokens, logprobs = sample_group(policy, prompt_ids, samples, max_length, top_k, temperature, eos_ids,
                                        fast=fast, logprobs=True)
        lengths = sequence_lengths(tokens, len(prompt_ids), eos_ids)
        # scored in chunks whose logits ([rows, length, vocabulary]) take at most LOGITS_BYTES, and never fewer rows
        # than a training group holds at once
        vocab = policy.get_output_embeddings().weight.shape[0]
        rows = max(group_size, LOGITS_BYTES // (4 * max_length * vocab))

        def scored(model: Any) -> torch.Tensor:
            return torch.cat([sequence_ce(model, tokens[i : i + rows], lengths[i : i + rows], fast)
                              for i in range(0, samples, rows)])

        ce_ref = scored(reference)
        if logprobs is None:
            ce_policy = scored(policy)
        else:  # the policy's own cross-entropy, from the logits that sampled the stories: sequence_ce's mask
            mask = target_mask(lengths, max_length)
            ce_policy = -(logprobs * mask).sum(1) / mask.sum(1)
    texts = decode_texts(tokenizer, tokens, lengths)
    new_tokens = (lengths - len(prompt_ids)).tolist()
    # scored a training group's worth at a time: a reward of the group (novel-alliteration) sees what a group is
    scores = [s for i in range(0, samples, group_size) for s in reward(texts[i : i + group_size])]
    return [
        {"sample": i, "text": text, "raw_reward": score, "new_tokens": int(new_tokens[i]),
         "ce_policy": float(ce_policy[i]), "ce_ref": float(ce_ref[i])}
        for i, (text, score) in enumerate(zip(texts, scores))
    ]


def evaluate_prompts(policy: Any, reference: Any, tokenizer: Any, prompts: list[str], eos_ids: list[int], *,
                     samples: int, seed: int, **settings: Any) -> list[dict[str, Any]]:
    """`evaluate` over a fixed set of prompts: `samples` stories shared out among them (the first ones take the
    remainder), prompt i's from the seed `seed + i`, numbered in one sequence; with one prompt, `evaluate` itself
    (its stories carry no "prompt")."""
    device = next(policy.parameters()).device
    if len(prompts) == 1:
        ids = tokenizer(prompts[0], return_tensors="pt").input_ids[0].to(device)
        return evaluate(policy, reference, tokenizer, ids, eos_ids, samples=samples, seed=seed, **settings)
    stories: list[dict[str, Any]] = []
    for i, prompt in enumerate(prompts):
        n = samples // len(prompts) + (i < samples % len(prompts))
        if n == 0:
            continue
        ids = tokenizer(prompt, return_tensors="pt").input_ids[0].to(device)
        for story in evaluate(policy, reference, tokenizer, ids, eos_ids, samples=n, seed=seed + i, **settings):
            stories.append({**story, "sample": len(stories), "prompt": prompt})
    return stories


def evaluate_folder(folder: str | Path, cfg: TrainConfig, rule: CollapseRule) -> dict[str, Any]:
    """Evaluate a saved model folder, loaded as its user loads it (`from_pretrained`), with a trial's sampling and
    evaluation settings, against the unmodified model (the trial's base model) evaluated the same way: both
    points' measures, the folder's share of the unmodified model's diversity, its fluency gap and the rule's
    verdict. With the trial's threads and device type, this is the trial's own evaluation at that point."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alliter.train.model import DTYPES, end_ids

    samples = cfg.eval_samples or TrainConfig.eval_samples  # a trial that ran without evaluations: the default
    base = base_model_here(cfg.model)
    threads = torch.get_num_threads()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)  # the samples depend on the thread count (README, "A sweep")
    try:
        try:
            policy = AutoModelForCausalLM.from_pretrained(folder).eval()
            tokenizer = AutoTokenizer.from_pretrained(folder)
            reference = AutoModelForCausalLM.from_pretrained(base, dtype=DTYPES[cfg.dtype]).eval().requires_grad_(False)
        except (OSError, ValueError) as err:
            raise AlliterError(f"cannot evaluate {folder} against its base model {base}: {one_line(err)}") from None
        eos = end_ids(tokenizer, policy)
        settings = dict(samples=samples, seed=cfg.eval_seed, group_size=cfg.group_size, max_length=cfg.max_length,
                        top_k=cfg.top_k, temperature=cfg.temperature, fast=cfg.fast, reward=load_reward(cfg.reward))
        bleu = M.bleu()
        base_stories = evaluate_prompts(reference, reference, tokenizer, cfg.eval_prompts, eos, **settings)
        stories = evaluate_prompts(policy, reference, tokenizer, cfg.eval_prompts, eos, **settings)
    finally:
        torch.set_num_threads(threads)
    base_texts = [s["text"] for s in base_stories]
    point = M.point_measures(stories, cfg.group_size, bleu, base_texts)
    unmodified = M.point_measures(base_stories, cfg.group_size, bleu)
    judgement = rule.judge_trial([{"generations": 0, **unmodified}, {"generations": 1, **point}])
    return {
        "samples": samples, "seed": cfg.eval_seed, "verdict": judgement.verdicts[1], "point": point,
        "unmodified": unmodified, "diversity_kept": judgement.diversity_kept[1], "fluency_gap": judgement.fluency_gap[1],
        "stories": [s["text"] for s in stories[:3]],
        "overused": M.overused_words([s["text"] for s in stories], base_texts),
    }


def evaluation_points(path: Path, group_size: int) -> list[dict[str, float]]:
    """The measures of each evaluation in an evaluations.jsonl, in order of generations."""
    return M.evaluation_measures(read_jsonl(path), group_size)
