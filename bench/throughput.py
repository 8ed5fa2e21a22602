"""Seconds per RLOO group, side by side in one process on one model: the study's per-sample loop, the
batched trainer on the library's path (`--fast false`: its `generate` and forward), alliter's path (the batched
trainer with its own KV-cache decode loop and scoring forward), and alliter's path compiled (`--compile`).

    python bench/throughput.py                                  # the bundled stories260k, 1 thread
    python bench/throughput.py --profile                        # and where a group's time goes, eager and compiled
    python bench/throughput.py --cold-cache                     # the compiled path's first group from an empty cache
    python bench/throughput.py --coarse-grid                    # and the coarse grid's wall time without/with --compile
    python bench/throughput.py --model tinystories-33m-shape    # TinyStories-33M's shape, random weights
    python bench/throughput.py --groups 3 --ref-groups 1        # a smoke test (CI)

Each path runs one warm-up group (printed: a trial's start-up cost; the compiled path's includes its compilation,
from alliter's Inductor cache unless `--cold-cache`), then `--groups` timed groups (`--ref-groups` for the per-sample
loop), in interleaved rounds (one reference group, then a few of each batched path), so that a busy neighbour
on a shared machine slows every path alike. alliter's trial is loaded and run first, so that the peak
resident memory printed after its first groups is that of one trial (policy, reference, optimizer,
tokenizer, a group's activations); the high-water mark only grows after it. Times are wall-clock per
group (median and best); the ratios divide the reference loop's median by each path's median.

`--coarse-grid` then runs `tune_jobs/sweep.py --grid coarse` as a user runs it (bench/sweeps.py), without and with
`--compile`, alternating for `--grid-rounds` rounds; the compiled sweeps find the graphs this process compiled in the
cache.

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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from alliter.train.reward import raw_reward  # noqa: E402
from alliter.config import TrainConfig  # noqa: E402
from alliter.train.rloo import leave_one_out_advantage  # noqa: E402
from alliter.cli import AlliterError  # noqa: E402
from alliter.train.fast import compiled  # noqa: E402
from alliter.train.preflight import check_compiler  # noqa: E402
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


PHASES = ("decode (sample_group)", "policy forward (token_nll)", "reference forward (token_nll)", "backward")


def profile_groups(trainer: Trainer, groups: int, device: torch.device, count_ops: bool) -> dict[str, list[float]]:
    """Where a group's time goes: per phase (PHASES, then the rest: rewards, texts, clipping, the SGD step, the
    metrics), its median milliseconds over `groups` groups, timed by wrapping the functions the trainer calls; with
    `count_ops`, also the aten ops each phase dispatches in one more group (counting slows them, so apart)."""
    import alliter.train.trainer as T
    from torch.utils._python_dispatch import TorchDispatchMode

    spent: dict[str, float] = {}
    ops: dict[str, int] = {}
    phase = ["rest"]

    def timed(fn, name=None):
        def wrapper(*a, **kw):
            label = name or (PHASES[1] if a[0] is trainer.m.policy else PHASES[2])
            phase[0] = label
            sync(device)
            start = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                sync(device)
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - start
                phase[0] = "rest"
        return wrapper

    class CountOps(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ops[phase[0]] = ops.get(phase[0], 0) + 1
            return func(*args, **(kwargs or {}))

    originals = {"sample_group": T.sample_group, "token_nll": T.token_nll}
    backward = torch.Tensor.backward
    T.sample_group, T.token_nll = timed(T.sample_group, PHASES[0]), timed(T.token_nll)
    torch.Tensor.backward = timed(backward, PHASES[3])
    table: dict[str, list[float]] = {name: [] for name in (*PHASES, "rest", "group")}
    try:
        for _ in range(groups):
            spent.clear()
            sync(device)
            start = time.perf_counter()
            trainer.step()
            total = time.perf_counter() - start
            for name in PHASES:
                table[name].append(spent.get(name, 0.0))
            table["rest"].append(total - sum(spent.values()))
            table["group"].append(total)
        if count_ops:
            with CountOps():
                trainer.step()
    finally:
        T.sample_group, T.token_nll = originals["sample_group"], originals["token_nll"]
        torch.Tensor.backward = backward
    medians = {name: [statistics.median(v) * 1000] for name, v in table.items()}
    if count_ops:
        for name in medians:
            medians[name].append(sum(ops.values()) if name == "group" else ops.get(name, 0))
    return medians


def print_profile(eager: dict[str, list[float]], ours: dict[str, list[float]] | None, groups: int) -> None:
    print(f"profile of a group (median of {groups} groups a path; aten ops: the operators the eager path dispatches):")
    compiled_head = "   --compile ms   eager / compiled" if ours else ""
    print("  phase                             eager ms   aten ops" + compiled_head)
    for name in (*PHASES, "rest", "group"):
        (e, n), c = eager[name], ours[name][0] if ours else None
        print(f"  {name:32s} {e:9.1f} {n:10d}" + (f" {c:14.1f} {e / c if c else float('nan'):14.2f}x" if ours else ""))


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
    ap.add_argument("--no-compile", action="store_true", help="leave out the compiled path")
    ap.add_argument("--cold-cache", action="store_true",
                    help="compile into an empty Inductor cache (the first group's cost on a fresh machine)")
    ap.add_argument("--coarse-grid", action="store_true",
                    help="also time the coarse grid as a user runs it, without and with --compile")
    ap.add_argument("--grid-rounds", type=int, default=1, help="coarse grids of each kind, alternating (default 1)")
    ap.add_argument("--grid-extra", default="", help="flags for every coarse grid, separated by commas")
    ap.add_argument("--grid-keep", metavar="FOLDER", help="keep the coarse grids in FOLDER (eager-N, compile-N), for "
                    "python bench/golden.py FOLDER/compile-0")
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

        def trainer(name: str, fast: bool = True, compile: bool = False) -> Trainer:
            cfg = TrainConfig(model=model, fast=fast, compile=compile, threads=args.threads, device=args.device,
                              dtype=args.dtype)
            return Trainer(cfg, tmp / name)

        fast_trainer = trainer("fast")
        device = fast_trainer.m.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        fast = Timer(fast_trainer.step, device)
        fast(2)  # the warm-up and one group: this process's peak memory is now one trial's
        rss_fast = peak_rss_mib()
        cuda_fast = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        paths = {"reference per-sample loop": None, "batched, library path": None, "alliter (fast path)": fast}
        try:
            check_compiler(TrainConfig(compile=not args.no_compile))
        except AlliterError as err:
            print(f"leaving out the compiled path: {err}")
            args.no_compile = True
        if not args.no_compile:
            if args.cold_cache:
                os.environ[compiled.CACHE_ENV] = str(tmp / "inductor")
            from torch._dynamo.utils import counters

            comp_trainer = trainer("compiled", compile=True)
            paths["alliter --compile"] = comp = Timer(comp_trainer.step, device)
            comp(2)
            rss_comp = peak_rss_mib()
            found, missed = (counters["inductor"][f"fxgraph_cache_{k}"] for k in ("hit", "miss"))
            cache_state = f"{found} graphs found in the cache, {missed} compiled, in {compiled.cache_dir()}"
        plain_trainer = trainer("plain", fast=False)
        paths["batched, library path"] = plain = Timer(plain_trainer.step, device)
        paths["reference per-sample loop"] = ref = Timer(lambda: reference_group(plain_trainer), device)
        plain()
        if not args.skip_reference:
            ref()
        # interleaved rounds, so that a busy neighbour on a shared machine slows every path alike
        batched = [t for name, t in paths.items() if name != "reference per-sample loop"]
        rounds = max(1, groups // 4 if args.skip_reference else ref_groups)
        per_round = -(-groups // rounds)
        for r in range(rounds):
            if not args.skip_reference and r < ref_groups:
                ref()
            for t in batched:
                t(min(per_round, groups - len(t.wall)))
        rss_end = peak_rss_mib()
        profiles = {}
        if args.profile:
            profiles["eager"] = profile_groups(fast_trainer, groups, device, count_ops=True)
            if not args.no_compile:
                profiles["compiled"] = profile_groups(comp_trainer, groups, device, count_ops=False)

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
        for name, t in paths.items():
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
        first = (f"first group of a trial (its warm-up): alliter {fast.warmup:.4f} s, "
                 f"batched library path {plain.warmup:.4f} s")
        if not args.no_compile:
            comp_med = statistics.median(comp.wall)
            print(f"alliter --compile vs alliter (fast path): {fast_med / comp_med:.2f}x (median wall), "
                  f"{statistics.median(fast.cpu) / statistics.median(comp.cpu):.2f}x (median cpu)"
                  + (f"; vs the reference loop: {ref_med / comp_med:.1f}x" if ref_med else ""))
            first += f", alliter --compile {comp.warmup:.2f} s (compilation included: {cache_state})"
        print(first)
        print(
            f"peak RSS: {rss_start:.0f} MiB before loading, {rss_fast:.0f} MiB after alliter's first groups "
            f"(one trial)" + ("" if args.no_compile else f", {rss_comp:.0f} MiB after --compile's")
            + f", {rss_end:.0f} MiB at the end (all paths)"
        )
        if cuda_fast is not None:
            print(f"peak CUDA memory allocated by alliter's trial: {cuda_fast:.0f} MiB")
        if profiles:
            print_profile(profiles["eager"], profiles.get("compiled"), groups)
    if args.coarse_grid:
        coarse_grid(args)


def coarse_grid(args: argparse.Namespace) -> None:
    """The coarse grid as a user runs it (its own process and Ray), without and with --compile, alternating."""
    from sweeps import timed_sweep

    extra = [f for f in args.grid_extra.split(",") if f]
    walls: dict[str, list[float]] = {"eager fast path": [], "--compile": []}
    with tempfile.TemporaryDirectory(prefix="alliter-bench-grids-") as scratch:
        storage = args.grid_keep or scratch
        for r in range(args.grid_rounds):
            for arm, flags in (("eager fast path", []), ("--compile", ["--compile"])):
                name = f"{arm.strip('-').split()[0]}-{r}"  # eager-0, compile-0, ...
                wall = timed_sweep(Path(storage), name, ["--grid", "coarse", *flags, *extra])
                walls[arm].append(wall)
                print(f"  coarse grid, {arm}: {wall:.0f} s", flush=True)
    base = statistics.median(walls["eager fast path"])
    print(f"coarse grid ({args.grid_rounds} of each, alternating; wall time with Python's and Ray's start; "
          f"--compile from alliter's Inductor cache, {compiled.cache_dir()}):")
    for arm, w in walls.items():
        print(f"  {arm:16s} {statistics.median(w):6.0f} s  ({', '.join(f'{x:.0f}' for x in w)})  "
              f"{statistics.median(w) / base:.2f} of the eager grid's")


if __name__ == "__main__":
    main()
