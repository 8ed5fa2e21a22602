"""One RLOO trial: sample a group, score it, one SGD step; every generation, metric and evaluation kept in the
trial's folder (its files: alliter.schema), and the checkpoint that continues it exactly."""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import torch
from tensorboardX import SummaryWriter
from tensorboardX import summary as tb_summary
from tensorboardX.proto.summary_pb2 import Summary

from alliter import measures as M
from alliter.cli import AlliterError
from alliter.config import HPARAMS, TrainConfig
from alliter.schema import ATTEMPT_FILES, CONFIG_FILE, EVALUATIONS_FILE, GENERATIONS_FILE, METRICS_FILE, REWARD_FILE
from alliter.storage import append_jsonl, read_jsonl, read_text, write_atomic
from alliter.train.evaluate import evaluate_prompts, evaluation_points
from alliter.train.model import load_models
from alliter.train.preflight import check_compiler, check_entropy_target, check_prompt
from alliter.train.rloo import (
    entropy_controller, kl_controller, kl_tokens, leave_one_out_advantage, normalized, reduce_tokens, rloo_loss,
    sync_reference, target_mask, token_nll, token_scores,
)
from alliter.train.rollout import decode_texts, sample_group, sequence_lengths
from alliter.train.reward import Reward, load_reward
from alliter.train.snapshots import drop_snapshots_after, save_snapshot, write_model_files

CHECKPOINT_FORMAT = 1
# the HParams dashboard's columns: the settings a sweep varies (alliter.config's fields marked so), and the evaluation
# measures they are judged by (alliter.measures' registry entries marked so)
HPARAM_METRICS = tuple(f"eval/{m.name}" for m in M.MEASURES if m.hparam)


class NonFiniteLossError(AlliterError):
    pass


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: str | os.PathLike, reward: Reward | None = None):
        """`reward`: the one loaded already (a sweep's trial: the copy shipped to its node), else cfg.reward's."""
        self.cfg = cfg = cfg.resolved()
        self.run_dir = Path(run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise AlliterError(f"{self.run_dir} is a file, not a run folder; pass another --out")
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        check_compiler(cfg)
        self.reward = reward or load_reward(cfg.reward)
        self.m = load_models(cfg)
        self.optimizer = make_optimizer(self.m.policy, cfg)
        self.prompts = cfg.prompt_list
        self.prompt_tokens = [self.m.tokenizer(p, return_tensors="pt").input_ids[0].to(self.m.device) for p in self.prompts]
        for prompt, ids in zip(self.prompts, self.prompt_tokens):
            check_prompt(prompt, len(ids), cfg.max_length, self.m.policy.config, cfg.model)
        if cfg.entropy_target is not None:
            check_entropy_target(cfg.entropy_target, self.m.policy.get_output_embeddings().weight.shape[0], cfg.model)
        self.prompt_index = 0  # the prompt of the group being sampled
        self.prompt_ids = self.prompt_tokens[0]
        try:  # only once the trial can run: a refused one leaves nothing
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise AlliterError(f"cannot create the run folder {self.run_dir}: {err.strerror or err}") from None
        random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.beta = cfg.beta  # the next group's KL coefficient: fixed, or the KL-target controller's state
        # the remedies' state (each checkpointed or rebuilt on a resume): the entropy bonus's coefficient and whether
        # the next group has it, the stories of DARLING's last groups, the generation of the reference's last reset
        self.entropy_coef, self.entropy_on = cfg.entropy_coef, True
        self.darling_memory: deque[list[str]] = deque(maxlen=cfg.darling_memory)
        self.overuse_memory: deque[list[str]] = deque(maxlen=cfg.overuse_memory - 1)  # and this group: the pool
        self.ref_synced_at = 0
        self.generations = 0  # the study's step counter: generations so far
        self.group = 0
        self.resumed_at: int | None = None
        self.points: list[dict[str, float]] = []  # the measures of each evaluation so far, in order
        self.base_texts: list[str] = []  # the stories of the evaluation at generation 0 (the unmodified model's)
        self.eval_seconds = 0.0  # this process's time in evaluations (the sweep prints what they cost)
        self._writer: SummaryWriter | None = None
        (self.run_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (self.run_dir / REWARD_FILE).write_text(json.dumps(self.reward.describe(), indent=2) + "\n")
        if cfg.snapshot_every:
            write_model_files(self.m.policy, self.m.tokenizer, self.run_dir)

    # --- the RLOO update -------------------------------------------------------------------------

    def step(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """One group: K samples, their rewards, one SGD step. Returns the metrics and the records."""
        start = time.perf_counter()
        return self.update(self.sample(), start)

    def sample(self) -> torch.Tensor:
        """K samples of the prompt from the policy, [K, max_length] token ids (cut at `sequence_lengths`); with
        several prompts, the group's prompt drawn first (Python's generator: the seed's order, checkpointed)."""
        cfg, m = self.cfg, self.m
        if len(self.prompts) > 1:
            self.prompt_index = random.randrange(len(self.prompts))
            self.prompt_ids = self.prompt_tokens[self.prompt_index]
        return sample_group(m.policy, self.prompt_ids, cfg.group_size, cfg.max_length, cfg.top_k, cfg.temperature,
                            m.eos_ids, fast=cfg.fast, compile=cfg.compile)

    def update(self, tokens: torch.Tensor, start: float | None = None) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """The RLOO update on a sampled group: rewards, leave-one-out advantages, one optimiser step."""
        cfg, m = self.cfg, self.m
        start = time.perf_counter() if start is None else start
        prompt_len = len(self.prompt_ids)
        lengths = sequence_lengths(tokens, prompt_len, m.eos_ids)
        texts = decode_texts(m.tokenizer, tokens, lengths)
        scores = self.reward(texts)
        raw = torch.tensor(scores, dtype=torch.float64, device=m.device)
        diversity = self.diversity(texts)  # --darling: each sample's share of unlike stories, else None
        damping = self.damping(texts)  # --overuse-cap: each sample's factor for its most over-used word, else None
        task = raw if diversity is None else raw * diversity
        task = task if damping is None else task * damping

        # with gradient: the loss (and a KL in the loss); the entropy bonus's entropies from the same logits
        nll, entropies = token_scores(m.policy, tokens, lengths, cfg.fast, entropy=self.entropy_bonus,
                                      compile=cfg.compile)
        with torch.inference_mode():  # cheaper than no_grad per op; the reference never enters the graph
            nll_ref = token_nll(m.reference, tokens, lengths, cfg.fast, cfg.compile)
            # fluency is the unmodified model's: a forward of its own only where resets move the reference
            nll_orig = nll_ref if m.original is m.reference else token_nll(m.original, tokens, lengths, cfg.fast,
                                                                           cfg.compile)
        width = nll.shape[1] + 1
        whole, completion = target_mask(lengths, width), target_mask(lengths, width, start=prompt_len)
        ce_policy, ce_ref = reduce_tokens(nll, whole, "mean"), reduce_tokens(nll_orig, whole, "mean")  # the study's CE
        kl_mask = whole if cfg.kl_reduction == "mean" else completion
        if cfg.kl_estimator == "k1":  # linear: the reduced difference is the difference of the reductions (the study's)
            kl = reduce_tokens(nll_ref, kl_mask, cfg.kl_reduction) - reduce_tokens(nll, kl_mask, cfg.kl_reduction)
        else:
            kl = reduce_tokens(kl_tokens(nll, nll_ref, cfg.kl_estimator), kl_mask, cfg.kl_reduction)
        kl_penalty = (-kl.detach()).double()  # the study's KL term, CE_policy - CE_ref: minus the KL estimate
        beta = self.beta
        rewards = task if cfg.kl_loss else task + beta * kl_penalty
        advantage = leave_one_out_advantage(rewards)
        if cfg.normalize_advantages:
            advantage = normalized(advantage)
        if cfg.loss_reduction == "mean":  # the study's: sum_i A_i x mean token CE_i
            loss = rloo_loss(ce_policy, advantage.to(nll.dtype))
        else:  # TRL's: mean_i A_i x the completion's summed NLL
            loss = rloo_loss(reduce_tokens(nll, completion, "sum"), advantage.to(nll.dtype)) / cfg.group_size
        if cfg.kl_loss:
            loss = loss + beta * (kl.sum() if cfg.loss_reduction == "mean" else kl.mean())
        entropy = None if entropies is None else (entropies * completion).sum() / completion.sum()  # verl's token-mean
        if entropy is not None:
            loss = loss - self.entropy_coef_applied * entropy

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = cfg.max_grad_norm if cfg.max_grad_norm else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(m.policy.parameters(), clip)  # the norm before the clip
        if not (math.isfinite(loss.item()) and math.isfinite(grad_norm.item())):
            raise NonFiniteLossError(
                f"non-finite loss {loss.item()} (grad norm {grad_norm.item()}) at generation {self.generations}; "
                "stopped before the update, the last checkpoint is intact"
            )
        self.optimizer.step()
        if cfg.kl_target is not None:  # in the recipe's KL units
            self.beta = kl_controller(beta, -kl_penalty.mean().item(), cfg.kl_target, cfg.kl_horizon, cfg.kl_clip,
                                      cfg.group_size)
            if cfg.kl_min_beta is not None:
                self.beta = max(self.beta, cfg.kl_min_beta)
        trl_kl = reduce_tokens(nll_ref, completion, "sum") - reduce_tokens(nll.detach(), completion, "sum")
        recorded = self._record(texts, scores, raw, lengths - prompt_len, ce_policy, ce_ref, kl_penalty, trl_kl, beta,
                                rewards, advantage, loss, grad_norm, start, diversity, entropy, damping)
        self._advance_remedies(texts, entropy)
        return recorded

    # --- the remedies against a reward hack (off by default) ---------------------------------------------------------

    @property
    def entropy_bonus(self) -> bool:
        return self.cfg.entropy_coef > 0 or self.cfg.entropy_target is not None

    @property
    def entropy_coef_applied(self) -> float:
        """The coefficient of this group's entropy bonus: the controller's, where it has the bonus on."""
        return self.entropy_coef if self.entropy_on else 0.0

    def diversity(self, texts: list[str]) -> torch.Tensor | None:
        """--darling: each text's share of unlike stories among its group and DARLING's memory, else None."""
        if not self.cfg.darling:
            return None
        memory = [text for group in self.darling_memory for text in group]
        return torch.tensor(M.darling_diversity(texts, memory), dtype=torch.float64, device=self.m.device)

    def damping(self, texts: list[str]) -> torch.Tensor | None:
        """--overuse-cap: each text's min(1, cap / its most over-used word's ratio over the recent groups and this
        one, against the unmodified model's evaluation stories), else None."""
        if not self.cfg.overuse_cap:
            return None
        pool = [text for group in self.overuse_memory for text in group] + texts
        ratios = M.recent_overuse(texts, pool, self.base_texts)
        return torch.tensor([min(1.0, self.cfg.overuse_cap / r) for r in ratios], dtype=torch.float64,
                            device=self.m.device)

    def _advance_remedies(self, texts: list[str], entropy: torch.Tensor | None) -> None:
        """After the step (the counters advanced): the entropy controller, DARLING's memory, the reference's reset at
        the group that reaches or crosses a multiple of ref_sync_every (TRL's sync at the end of a step)."""
        cfg = self.cfg
        if cfg.entropy_target is not None:
            self.entropy_coef, self.entropy_on = entropy_controller(self.entropy_coef, entropy.item(),
                                                                    cfg.entropy_target, cfg.entropy_coef_step)
        if cfg.darling_memory:
            self.darling_memory.append(texts)
        if cfg.overuse_cap:
            self.overuse_memory.append(texts)
        every = cfg.ref_sync_every
        if every and self.generations // every > (self.generations - cfg.group_size) // every:
            sync_reference(self.m.reference, self.m.policy, cfg.ref_sync_alpha)
            self.ref_synced_at = self.generations

    def _record(self, texts: list[str], scores: list[float], raw: torch.Tensor, new_tokens: torch.Tensor,
                ce_policy: torch.Tensor, ce_ref: torch.Tensor, kl_penalty: torch.Tensor, trl_kl: torch.Tensor,
                beta: float, rewards: torch.Tensor, advantage: torch.Tensor, loss: torch.Tensor,
                grad_norm: torch.Tensor, start: float, diversity: torch.Tensor | None = None,
                entropy: torch.Tensor | None = None, damping: torch.Tensor | None = None,
                ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """The group's metrics (metrics.jsonl, Tune, TensorBoard) and its records (generations.jsonl); the counters
        advance. The remedies' own (alliter.schema) only where they are on."""
        cfg = self.cfg
        first = self.generations
        self.generations += cfg.group_size
        self.group += 1
        seconds = time.perf_counter() - start
        metrics = {
            "generations": self.generations,
            "group": self.group - 1,  # from 0, as generations.jsonl's (alliter.schema)
            "beta": beta,
            "raw_reward_mean": raw.mean().item(),
            "raw_reward_max": raw.max().item(),
            "kl_penalty_mean": kl_penalty.mean().item(),
            "scaled_kl_penalty_mean": beta * kl_penalty.mean().item(),
            "kl_completion_sum_mean": trl_kl.mean().item(),
            "reward_mean": rewards.mean().item(),
            "ce_policy_mean": ce_policy.mean().item(),
            "ce_ref_mean": ce_ref.mean().item(),
            "advantage_std": advantage.std().item(),
            "loss": loss.item(),
            "grad_norm": grad_norm.item(),
            **M.group_measures(texts),
            "mean_new_tokens": new_tokens.double().mean().item(),
            "seconds_per_group": seconds,
            "generations_per_second": cfg.group_size / seconds,
        }
        if cfg.max_grad_norm:
            metrics["grad_norm_clipped"] = min(metrics["grad_norm"], cfg.max_grad_norm)
        if entropy is not None:  # the entropy and the coefficients this group's loss used
            metrics.update(entropy=entropy.item(), entropy_coef=self.entropy_coef)
            if cfg.entropy_target is not None:
                metrics["entropy_coef_applied"] = self.entropy_coef_applied
        if diversity is not None:
            metrics.update(darling_diversity_mean=diversity.mean().item(),
                           darling_memory_stories=sum(len(group) for group in self.darling_memory))
        if damping is not None:
            metrics["overuse_damping_mean"] = damping.mean().item()
        if cfg.ref_sync_every:
            metrics["ref_synced_at"] = self.ref_synced_at  # the reference this group's KL was measured against
        records = [
            {
                "generation": first + i,
                "group": self.group - 1,
                "beta": beta,
                "text": texts[i],
                "raw_reward": scores[i],
                "kl_penalty": kl_penalty[i].item(),
                "reward": rewards[i].item(),
                "advantage": advantage[i].item(),
                "new_tokens": int(new_tokens[i]),
                "ce_policy": ce_policy[i].item(),
                "ce_ref": ce_ref[i].item(),
            }
            for i in range(cfg.group_size)
        ]
        if len(self.prompts) > 1:
            for record in records:
                record["prompt"] = self.prompts[self.prompt_index]
        if diversity is not None:  # raw_reward stays the task's: reward = raw_reward x diversity (+ the KL term)
            for record, share in zip(records, diversity.tolist()):
                record["diversity"] = share
        if damping is not None:  # ... x damping
            for record, factor in zip(records, damping.tolist()):
                record["damping"] = factor
        return metrics, records

    # --- the loop ----------------------------------------------------------------------------------

    def groups(self) -> Iterator[dict[str, float]]:
        """Run groups until max_generations, writing each one's records, metrics and events; the policy is
        evaluated before the first group and with every snapshot (the group's metrics then carry `eval_*`)."""
        if self.generations == 0 and self.resumed_at is None and not self.points:
            self._discard_earlier_attempt()
        if self.evaluating and not self.points:
            self.evaluate()  # the unmodified model, generation 0
        while self.generations < self.cfg.max_generations:
            metrics, records = self.step()
            append_jsonl(self.run_dir / GENERATIONS_FILE, records)
            append_jsonl(self.run_dir / METRICS_FILE, [metrics])
            self._log_events(metrics, records)
            if self.snapshot_due:
                self.save_snapshot()
                if self.evaluating:
                    metrics.update({f"eval_{k}": v for k, v in self.evaluate().items() if k != "generations"})
            yield metrics
        self.close()

    def _discard_earlier_attempt(self) -> None:
        """A trial that starts from generation 0 starts its files afresh: a retried trial whose first attempt died
        before its first checkpoint left records, events and snapshots that this attempt writes again (a trial
        restored from a checkpoint gets its files back from it instead: load_checkpoint)."""
        for pattern in ATTEMPT_FILES:
            for path in self.run_dir.glob(pattern):
                path.unlink()

    # --- evaluation -------------------------------------------------------------------------------------

    @property
    def evaluating(self) -> bool:
        """Evaluations run with the snapshots: every point the analysis judges is one it can export."""
        return self.cfg.eval_samples > 0 and self.cfg.snapshot_every > 0

    def evaluate(self) -> dict[str, float]:
        """Evaluate the policy now (alliter.train.evaluate): its stories go to evaluations.jsonl, its measures to
        `points` and TensorBoard."""
        cfg, m = self.cfg, self.m
        start = time.perf_counter()
        stories = evaluate_prompts(
            m.policy, m.original, m.tokenizer, cfg.eval_prompts, m.eos_ids, samples=cfg.eval_samples,
            seed=cfg.eval_seed, group_size=cfg.group_size, max_length=cfg.max_length, top_k=cfg.top_k,
            temperature=cfg.temperature, fast=cfg.fast, reward=self.reward,
        )
        append_jsonl(self.run_dir / EVALUATIONS_FILE, [{"generations": self.generations, **s} for s in stories])
        if not self.points:  # the unmodified model's: what every later point's stories are measured against
            self.base_texts = [s["text"] for s in stories]
        point = {"generations": self.generations, **M.point_measures(stories, cfg.group_size, None, self.base_texts),
                 "seconds": time.perf_counter() - start}
        self.points.append(point)
        self.eval_seconds += point["seconds"]
        writer = self._events()
        self._add_scalars({f"eval/{k}": v for k, v in point.items() if k != "generations"})
        shown = "\n\n".join(f"**{s['raw_reward']:g}** (fluency {s['ce_ref']:.2f}): {s['text']}" for s in stories[:3])
        writer.add_text("eval/stories", shown, self.generations)
        writer.flush()
        return point

    @property
    def done(self) -> bool:
        return self.generations >= self.cfg.max_generations

    @property
    def checkpoint_due(self) -> bool:
        return self.done or self.group % self.cfg.checkpoint_every == 0

    @property
    def snapshot_due(self) -> bool:
        """At the end, and at the group that reaches or crosses a multiple of snapshot_every."""
        every = self.cfg.snapshot_every
        if every <= 0:
            return False
        return self.done or self.generations // every > (self.generations - self.cfg.group_size) // every

    def save_snapshot(self) -> Path:
        """The policy's weights now, as snapshots/generations=NNNNNN.safetensors."""
        meta = {"generations": self.generations, "group": self.group, "beta": self.beta, "model": self.cfg.model}
        return save_snapshot(self.m.policy, self.run_dir, self.generations, meta)

    def _events(self) -> SummaryWriter:
        if self._writer is None:
            # purge_step: TensorBoard drops the events a crashed run logged past the checkpoint we resume from
            self._writer = SummaryWriter(str(self.run_dir), purge_step=None if self.resumed_at is None else self.resumed_at + 1)
            # TensorBoard's HParams dashboard: the trial's settings against its evaluations' last values
            hparams = {name: getattr(self.cfg, name) for name in HPARAMS}
            for summary in tb_summary.hparams(hparams, dict.fromkeys(HPARAM_METRICS, 0.0)):
                self._writer.file_writer.add_summary(summary)
        return self._writer

    def _add_scalars(self, values: dict[str, float]) -> None:
        """Scalars at the current generations, as one event: add_scalar writes an event per value, a cost the
        sweep's efficiency sees for a model as small as the bundled one; TensorBoard reads both alike."""
        scalars = Summary(value=[Summary.Value(tag=name, simple_value=float(v)) for name, v in values.items()])
        self._events().file_writer.add_summary(scalars, self.generations)

    def _log_events(self, metrics: dict[str, float], records: list[dict[str, Any]]) -> None:
        self._add_scalars(metrics)
        texts = "\n\n".join(f"**{r['raw_reward']:g}** (kl {r['kl_penalty']:+.3f}): {r['text']}" for r in records)
        self._writer.add_text("generations", texts, self.generations)
        self._writer.flush()  # TensorBoard shows a running trial up to its last group

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # --- checkpoints --------------------------------------------------------------------------------

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Weights, optimizer, RNG states, counters and the run's files so far, written atomically."""
        path = Path(path)
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "generations": self.generations,
            "group": self.group,
            "beta": self.beta,
            "policy": self.m.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng_python": random.getstate(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # the files travel with the checkpoint, so a trial restarted on another node has them
            GENERATIONS_FILE: read_text(self.run_dir / GENERATIONS_FILE) or "",
            METRICS_FILE: read_text(self.run_dir / METRICS_FILE) or "",
            EVALUATIONS_FILE: read_text(self.run_dir / EVALUATIONS_FILE) or "",
        }
        if self.entropy_bonus:
            state.update(entropy_coef=self.entropy_coef, entropy_on=self.entropy_on)
        if self.cfg.ref_sync_every:  # the moving reference: a resume measures the KL against it, not the original
            state.update(reference=self.m.reference.state_dict(), ref_synced_at=self.ref_synced_at)
        if self._writer is not None:
            self._writer.flush()
        write_atomic(path, lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Continue exactly where the checkpoint stopped; the run's files are put back as they were then."""
        state = load_checkpoint_file(path)
        self.m.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        random.setstate(state["rng_python"])
        torch.set_rng_state(state["rng_torch"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        self.generations, self.group = state["generations"], state["group"]
        self.beta = float(state.get("beta", self.cfg.beta))  # a checkpoint of before the controller: the fixed beta
        self.resumed_at = self.generations
        for name in (GENERATIONS_FILE, METRICS_FILE, EVALUATIONS_FILE):
            write_atomic(self.run_dir / name, state.get(name, ""))  # a checkpoint of before evaluations: none
        self.points = evaluation_points(self.run_dir / EVALUATIONS_FILE, self.cfg.group_size)
        self.base_texts = [s["text"] for s in read_jsonl(self.run_dir / EVALUATIONS_FILE) if s.get("generations") == 0]
        drop_snapshots_after(self.run_dir, self.generations)
        self.entropy_coef = float(state.get("entropy_coef", self.cfg.entropy_coef))
        self.entropy_on = bool(state.get("entropy_on", True))
        if self.cfg.ref_sync_every and "reference" in state:
            self.m.reference.load_state_dict(state["reference"])
            self.ref_synced_at = int(state["ref_synced_at"])
        # DARLING's memory and the over-use damping's: the stories of their last groups, from the records put back
        by_group: dict[int, list[str]] = {}
        if self.cfg.darling_memory or self.cfg.overuse_cap:
            for record in read_jsonl(self.run_dir / GENERATIONS_FILE):
                by_group.setdefault(int(record["group"]), []).append(record["text"])
        for memory, used in ((self.darling_memory, self.cfg.darling_memory), (self.overuse_memory, self.cfg.overuse_cap)):
            memory.clear()
            if used and memory.maxlen:
                memory.extend(by_group[g] for g in sorted(by_group)[-memory.maxlen:])


def make_optimizer(policy: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The study's SGD, or AdamW with weight decay on the weight matrices only (biases and norms: none)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(policy.parameters(), lr=cfg.lr)
    params = [p for p in policy.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon)


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; a damaged one is an AlliterError, never a fresh start."""
    path = Path(path)
    if not path.is_file():
        raise AlliterError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip, pickle and EOF errors all mean the same thing here
        raise AlliterError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}); nothing was changed - "
            "restore it or start a new run in another directory"
        ) from None
    missing = {"format", "policy", "optimizer", "generations", GENERATIONS_FILE} - set(state if isinstance(state, dict) else ())
    if missing or state["format"] != CHECKPOINT_FORMAT:
        raise AlliterError(f"checkpoint {path} is not an alliter checkpoint (missing {sorted(missing)})")
    return state
