"""Seconds per RLOO group, side by side in one process on one model: the study's per-sample loop, the
batched trainer on the library's path (`--fast false`: its `generate` and forward), and alliter's path (the batched
trainer with its own KV-cache decode loop and scoring forward).

    python bench/throughput.py                                  # the bundled stories260k, 1 thread
    python bench/throughput.py --model tinystories-33m-shape    # TinyStories-33M's shape, random weights
    python bench/throughput.py --groups 3 --ref-groups 1        # a smoke test (CI)

Each path runs one warm-up group (printed: a trial's start-up cost), then `--groups` timed groups
(`--ref-groups` for the per-sample loop),
in interleaved rounds (one reference group, then a few of each batched path), so that a busy neighbour
on a shared machine slows every path alike. alliter's trial is loaded and run first, so that the peak
resident memory printed after its first groups is that of one trial (policy, reference, optimizer,
tokenizer, a group's activations); the high-water mark only grows after it. Times are wall-clock per
group (median and best); the ratios divide the reference loop's median by each path's median.

The per-sample loop is the reference study's: for each of the K samples, `generate` one sample
(top-k 50, temperature 1, max_length 100), score it alone with `model(seq, labels=seq).loss` for policy
and reference, reward it; then the leave-one-out advantages, one `(adv_i * loss_i).backward()` per
sample, one SGD step. The batched paths are `alliter.train.trainer.Trainer.step()`, the whole group.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alliter.train.reward import raw_reward  # noqa: E402
from alliter.config import TrainConfig  # noqa: E402
from alliter.train.rloo import leave_one_out_advantage  # noqa: E402
from alliter.train.trainer import Trainer  # noqa: E402

SHAPE_33M = "tinystories-33m-shape"


def build_33m_shape(folder: Path) -> Path:
    """A randomly initialised GPT-Neo of TinyStories-33M's shape (768 wide, 4 layers, 16 heads, vocabulary
    50257, 2048 positions, global/local layers with a 256 window), saved with a small byte-level tokenizer:
    ids the tokenizer does not know decode to nothing, which is all a speed test needs."""
    from alliter.testing import build_tiny_gpt_neo  # the tests' byte-level BPE tokenizer
    from transformers import AutoTokenizer, GPTNeoConfig, GPTNeoForCausalLM

    build_tiny_gpt_neo(folder / "tok")
    tok = AutoTokenizer.from_pretrained(folder / "tok")
    eos = tok.eos_token_id
    cfg = GPTNeoConfig(
        vocab_size=50257, max_position_embeddings=2048, hidden_size=768, num_layers=4, num_heads=16,
        attention_types=[[["global", "local"], 2]], window_size=256, intermediate_size=None,
        bos_token_id=eos, eos_token_id=eos,
    )
    torch.manual_seed(0)
    GPTNeoForCausalLM(cfg).save_pretrained(folder / "model")
    tok.save_pretrained(folder / "model")
    return folder / "model"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_mib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20


class Timer:
    """Wall-clock and CPU seconds of a path's groups; the first call is its warm-up, kept apart."""

    def __init__(self, run_group, device: torch.device):
        self.run_group, self.device = run_group, device
        self.warmup: float | None = None
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, groups: int = 1) -> None:
        for _ in range(groups):
            sync(self.device)
            start, start_cpu = time.perf_counter(), time.process_time()
            self.run_group()
            sync(self.device)
            if self.warmup is None:
                self.warmup = time.perf_counter() - start
                continue
            self.wall.append(time.perf_counter() - start)
            self.cpu.append(time.process_time() - start_cpu)


def reference_group(trainer: Trainer) -> None:
    """One group of the reference study's loop: everything one sample at a time."""
    cfg, m = trainer.cfg, trainer.m
    prompt = trainer.prompt_ids[None]
    losses, rewards = [], []
    for _ in range(cfg.group_size):
        with torch.no_grad():
            seq = m.policy.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=cfg.top_k,
                temperature=cfg.temperature, top_p=1.0, max_length=cfg.max_length, eos_token_id=m.eos_ids,
                pad_token_id=m.eos_ids[0],
            )
        text = m.tokenizer.decode(seq[0], skip_special_tokens=True)
        loss = m.policy(seq, labels=seq).loss
        with torch.no_grad():
            ref = m.reference(seq, labels=seq).loss
        rewards.append(raw_reward(text) + cfg.beta * (loss.item() - ref.item()))
        losses.append(loss)
    advantage = leave_one_out_advantage(torch.tensor(rewards, dtype=torch.float64))
    trainer.optimizer.zero_grad(set_to_none=True)
    for a, loss in zip(advantage.tolist(), losses):
        (a * loss).backward()
    trainer.optimizer.step()


def profile_groups(trainer: Trainer, groups: int, device: torch.device) -> None:
    """Where alliter's group spends its time: the trainer's pieces timed by wrapping the functions it calls
    (backward, clipping, the SGD step and the metrics are the remainder), then torch's op profile."""
    import alliter.train.trainer as T
    from torch.profiler import profile

    spent: dict[str, float] = {}
    originals = {name: getattr(T, name) for name in ("sample_group", "sequence_ce", "decode_texts")}

    def timed(name, fn):
        def wrapper(*a, **kw):
            sync(device)
            start = time.perf_counter()
            out = fn(*a, **kw)
            sync(device)
            label = name
            if name == "sequence_ce":
                policy = a[0] is trainer.m.policy
                label = "policy forward (sequence_ce)" if policy else "reference forward (sequence_ce)"
            spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
            return out
        return wrapper

    for name, fn in originals.items():
        labels = {"sample_group": "sampling (sample_group)", "decode_texts": "detokenise"}
        setattr(T, name, timed(labels.get(name, name), fn))
    try:
        trainer.step()
        spent.clear()
        sync(device)
        start = time.perf_counter()
        for _ in range(groups):
            trainer.step()
        sync(device)
        total = time.perf_counter() - start
    finally:
        for name, fn in originals.items():
            setattr(T, name, fn)
    print(f"profile of alliter's group ({groups} groups, {total / groups * 1000:.1f} ms per group):")
    for label, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:34s} {sec / groups * 1000:7.1f} ms  {100 * sec / total:5.1f}%")
    rest = total - sum(spent.values())
    print(f"  {'backward, clip, SGD step, rewards':34s} {rest / groups * 1000:7.1f} ms  {100 * rest / total:5.1f}%")
    with profile() as prof:
        trainer.step()
    print("torch ops of one group, by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"cpu: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="stories260k", help=f"stories260k (default), {SHAPE_33M}, or a model folder")
    ap.add_argument("--groups", type=int, help="timed groups per batched path (default 20; 3 for the 33M shape)")
    ap.add_argument("--ref-groups", type=int, help="timed groups of the per-sample loop (default 5; 1 for the 33M shape)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--skip-reference", action="store_true", help="leave out the per-sample loop")
    ap.add_argument("--profile", action="store_true", help="also print where alliter's group spends its time")
    ap.add_argument("--build-33m-shape", metavar="FOLDER", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build_33m_shape:
        build_33m_shape(Path(args.build_33m_shape))
        return
    big = args.model == SHAPE_33M
    groups = args.groups if args.groups is not None else (3 if big else 20)
    ref_groups = args.ref_groups if args.ref_groups is not None else (1 if big else 5)

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="alliter-bench-") as tmp:
        tmp = Path(tmp)
        if big:  # built in a child process, so that building it does not count in this one's peak memory
            subprocess.run([sys.executable, __file__, "--build-33m-shape", str(tmp)], check=True)
            model = str(tmp / "model")
        else:
            model = args.model
        rss_start = peak_rss_mib()

        def trainer(fast: bool, name: str) -> Trainer:
            cfg = TrainConfig(model=model, fast=fast, threads=args.threads, device=args.device, dtype=args.dtype)
            return Trainer(cfg, tmp / name)

        fast_trainer = trainer(True, "fast")
        device = fast_trainer.m.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fast = Timer(fast_trainer.step, device)
        fast(2)  # the warm-up and one group: this process's peak memory is now one trial's
        rss_fast = peak_rss_mib()
        cuda_fast = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        plain_trainer = trainer(False, "plain")
        plain = Timer(plain_trainer.step, device)
        ref = Timer(lambda: reference_group(plain_trainer), device)
        plain()
        if not args.skip_reference:
            ref()
        # interleaved rounds, so that a busy neighbour on a shared machine slows every path alike
        rounds = max(1, groups // 4 if args.skip_reference else ref_groups)
        per_round = -(-groups // rounds)
        for r in range(rounds):
            if not args.skip_reference and r < ref_groups:
                ref()
            plain(min(per_round, groups - len(plain.wall)))
            fast(min(per_round, groups - len(fast.wall)))
        rss_end = peak_rss_mib()
        if args.profile:
            profile_groups(fast_trainer, groups, device)

        cfg, m = plain_trainer.cfg, plain_trainer.m
        k = cfg.group_size
        n_params = sum(p.numel() for p in m.policy.parameters())
        print(f"model: {args.model} ({type(m.policy).__name__}, {n_params:,} parameters, {args.dtype})")
        print(f"device: {device_name(device)}; torch {torch.__version__}; threads: {torch.get_num_threads()}")
        print(
            f"group: K={k}, max_length={cfg.max_length}, top_k={cfg.top_k}, temperature={cfg.temperature}, "
            f"prompt {len(plain_trainer.prompt_ids)} tokens; {rounds} interleaved rounds"
        )
        ref_med = statistics.median(ref.wall) if ref.wall else None
        print("  path                         wall s/group   (best)   cpu s/group  generations/s  vs reference")
        paths = (("reference per-sample loop", ref), ("batched, library path", plain), ("alliter (fast path)", fast))
        for name, t in paths:
            if not t.wall:
                continue
            med = statistics.median(t.wall)
            ratio = f"{ref_med / med:6.1f}x" if ref_med else "   n/a"
            print(
                f"  {name:27s} {med:10.4f}   ({min(t.wall):.4f})  {statistics.median(t.cpu):10.4f}"
                f"  {k / med:13.1f}  {ratio}"
                f"   [{len(t.wall)} groups]"
            )
        fast_med = statistics.median(fast.wall)
        if ref.wall:
            print(
                f"alliter vs the reference loop: {ref_med / fast_med:.1f}x (median wall), "
                f"{min(ref.wall) / min(fast.wall):.1f}x (best vs best), "
                f"{statistics.median(ref.cpu) / statistics.median(fast.cpu):.1f}x (median cpu)"
            )
        print(f"alliter vs the batched library path: {statistics.median(plain.wall) / fast_med:.2f}x (median wall)")
        print(
            f"first group of a trial (its warm-up; nothing is compiled): alliter {fast.warmup:.4f} s, "
            f"batched library path {plain.warmup:.4f} s"
        )
        print(
            f"peak RSS: {rss_start:.0f} MiB before loading, {rss_fast:.0f} MiB after alliter's first groups "
            f"(one trial), {rss_end:.0f} MiB at the end (three paths)"
        )
        if cuda_fast is not None:
            print(f"peak CUDA memory allocated by alliter's trial: {cuda_fast:.0f} MiB")


if __name__ == "__main__":
    main()
