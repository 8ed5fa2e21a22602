"""Policy snapshots: a trial's weights every `snapshot_every` generations, for export and sampling.

A trial folder's snapshots/ holds
  generations=000200.safetensors   the policy after 200 generations, in the model's dtype (a tied weight
                                   stored once)
  config.json, generation_config.json and the tokenizer's files, written when the trial starts, so that
                                   an export or a sample reads nothing but the trial folder (no hub)

In a sweep the folder is part of the trial's working directory, and Tune syncs it to storage like every
trial file. Whenever a trial reports a checkpoint, Tune syncs the working directory and waits for that sync
before the driver records the checkpoint, so every snapshot up to a checkpoint is in storage before the trial
can be restarted from it. A restarted trial, on any node, runs again from its checkpoint and writes the later
snapshots again under the same names: none is lost or duplicated, and checkpoints carry no snapshot.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from alliter.cli import AlliterError, one_line
from alliter.config import TrainConfig
from alliter.schema import SNAPSHOT_DIR, SNAPSHOT_FILE, SNAPSHOT_PATTERN
from alliter.storage import write_atomic

if TYPE_CHECKING:  # torch only where weights are written or read: the sweep's driver imports this module
    import torch


def snapshot_path(run_dir: str | os.PathLike, generations: int) -> Path:
    return Path(run_dir) / SNAPSHOT_DIR / SNAPSHOT_FILE.format(generations)


def list_snapshots(run_dir: str | os.PathLike) -> dict[int, Path]:
    """generations -> snapshot file, in order of generations."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = re.fullmatch(SNAPSHOT_PATTERN, path.name)
            if match:
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def write_model_files(policy: Any, tokenizer: Any, run_dir: str | os.PathLike) -> None:
    """The model's config, generation config and tokenizer, beside the snapshots."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    policy.config.save_pretrained(folder)
    policy.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def save_snapshot(policy: torch.nn.Module, run_dir: str | os.PathLike, generations: int, metadata: dict[str, Any]) -> Path:
    """The policy's weights after `generations`, written atomically; a tied weight once, under its first name
    (safetensors' load_model puts it back)."""
    from safetensors.torch import save_file

    tensors, seen = {}, set()
    for name, tensor in policy.state_dict(keep_vars=True).items():
        if id(tensor) not in seen:  # tied weights are one object under two names
            seen.add(id(tensor))
            tensors[name] = tensor.detach().contiguous()
    # one metadata entry: safetensors writes several in a random order, and the same run should give the same bytes
    meta = {"alliter": json.dumps(metadata, sort_keys=True)}
    path = snapshot_path(run_dir, generations)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_outside(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def _write_outside(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the run folder's parent, outside what Tune syncs (a sync during the
    write would leave a partial copy in storage), else (read-only, another file system) beside the file; the
    file gets the permissions the umask gives (safetensors creates its files private, 0600)."""
    parent = path.parent.parent.parent
    outside = os.access(parent, os.W_OK) and os.stat(parent).st_dev == os.stat(path.parent).st_dev

    def written(tmp: str) -> None:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask_now())

    write_atomic(path, written, parent if outside else None)


def umask_now() -> int:
    try:  # read, not set: os.umask would change it for every thread for a moment
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"^Umask:\s*([0-7]+)", status, re.M).group(1), 8)  # type: ignore[union-attr]
    except (OSError, AttributeError):
        return 0o022


def snapshot_at(run_dir: str | os.PathLike, generations: int, done: int, name: str | None = None) -> tuple[int, str | None]:
    """The snapshot that serves a point of a trial that ran `done` generations: the one at `generations`, else the
    nearest earlier one (and a note saying so); AlliterError in one line when there is none."""
    name = name or str(run_dir)
    if generations < 1:
        raise AlliterError(f"generations must be at least 1, got {generations}")
    if generations > done:
        raise AlliterError(f"generation {generations} is past the end of trial {name} ({done} generations)")
    snapshots = list_snapshots(run_dir)
    if not snapshots:
        raise AlliterError(f"trial {name} has no snapshots (it ran with --snapshot-every 0, or before alliter kept "
                           "them); run it again to export it")
    earlier = [g for g in snapshots if g <= generations]
    if not earlier:
        raise AlliterError(f"trial {name} has no snapshot at or before generation {generations} (the first is at "
                           f"{min(snapshots)})")
    used = max(earlier)
    note = None if used == generations else (
        f"no snapshot at generation {generations} in {name}: using the nearest earlier one, at {used}")
    return used, note


def drop_snapshots_after(run_dir: str | os.PathLike, generations: int) -> list[int]:
    """Remove the snapshots a crashed run wrote past the checkpoint it resumes from (the run writes them again)."""
    dropped = [g for g, path in list_snapshots(run_dir).items() if g > generations]
    for g in dropped:
        snapshot_path(run_dir, g).unlink(missing_ok=True)
    return dropped


def load_snapshot(run_dir: str | os.PathLike, generations: int, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) of a trial at a snapshot, from the trial folder alone; the model in eval mode and
    in the snapshot's dtype."""
    from safetensors import safe_open
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder = Path(run_dir) / SNAPSHOT_DIR
    path = snapshot_path(run_dir, generations)
    if not path.is_file():
        raise AlliterError(f"no snapshot at {generations} generations in {run_dir}")
    try:
        with safe_open(str(path), "pt") as f:
            dtype = f.get_tensor(next(iter(f.keys()))).dtype
        config = AutoConfig.from_pretrained(folder)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        load_model(model, path, strict=True, device=str(device))
        model.generation_config = GenerationConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as err:
        raise AlliterError(f"cannot load the snapshot {path} with the model files beside it: {one_line(err)}") from None
    return model.to(device).eval(), tokenizer


# --- how much disk they take ----------------------------------------------------------------------------


# bytes per weight in each dtype a trial runs in (alliter.train.model.DTYPES), and in a saved model's config
ITEMSIZE = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


def snapshot_bytes(model: str, dtype: str, hub_timeout: float = 10.0) -> int | None:
    """Bytes of one snapshot of `model` in `dtype` (the weights; a tied one once): its parameter count from
    the model's weight files, local or on the hub, read without torch (the sweep's driver never imports it).
    None when they cannot be read within `hub_timeout` seconds (a hub id, offline)."""
    if os.path.isdir(os.path.expanduser(model)):
        params = _local_parameters(Path(model).expanduser())
    else:
        result: list[int | None] = []
        worker = threading.Thread(target=lambda: result.append(_hub_parameters(model)), daemon=True)
        worker.start()
        worker.join(hub_timeout)
        params = result[0] if result else None
    return None if params is None else params * ITEMSIZE[dtype]


def _local_parameters(folder: Path) -> int | None:
    """Parameters in a saved model folder: exact from the safetensors headers, else from the size of the
    PyTorch weight files and the config's dtype."""
    from alliter.train.preflight import safetensors_shapes

    files = sorted(folder.glob("*.safetensors"))
    if files:
        try:
            return sum(math.prod(shape) for path in files for _, shape in safetensors_shapes(path).values())
        except AlliterError:
            return None  # a damaged file: the size is unknown, and the preflight says why

    size = sum(p.stat().st_size for p in folder.glob("pytorch_model*.bin"))
    return size // _config_itemsize(folder / "config.json") if size else None


def _config_itemsize(path: Path) -> int:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return 4
    return ITEMSIZE.get(str(config.get("dtype") or config.get("torch_dtype") or "float32"), 4)


def _hub_parameters(repo: str) -> int | None:
    """Parameters of a hub model: from its safetensors metadata, else from its PyTorch weight files' sizes."""
    import huggingface_hub as hub

    quiet = logging.getLogger("huggingface_hub")  # no retry messages while offline
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        try:
            return sum(hub.get_safetensors_metadata(repo).parameter_count.values())
        except hub.errors.NotASafetensorsRepoError:
            info = hub.HfApi().model_info(repo, files_metadata=True)
            size = sum(f.size or 0 for f in info.siblings or [] if re.fullmatch(r"pytorch_model.*\.bin", f.rfilename))
            return size // _config_itemsize(Path(hub.hf_hub_download(repo, "config.json"))) if size else None
    except Exception:  # noqa: BLE001 - offline, a wrong id, a private repo: the size is unknown, the sweep says so
        return None
    finally:
        quiet.setLevel(level)


def snapshots_per_trial(max_generations: int, every: int) -> int:
    """One per `every` generations, and one at the end when the end is not on that step."""
    return 0 if every <= 0 else max_generations // every + (max_generations % every != 0)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def snapshot_plan(cfg: TrainConfig, trials: int, at_most: bool = False) -> tuple[str, float]:
    """The line a sweep prints at its start about its snapshots, and the bytes they take in all (nan: unknown).
    `at_most`: `trials` is an upper bound (a search's budget)."""
    if cfg.snapshot_every <= 0:
        return "snapshots: none (--snapshot-every 0); best_beta.py --export will have nothing to export", 0.0
    n = snapshots_per_trial(cfg.max_generations, cfg.snapshot_every)
    one = snapshot_bytes(cfg.model, cfg.dtype)
    head = f"snapshots: every {cfg.snapshot_every} generations, {n} per trial"
    if one is None:
        return f"{head}, size unknown (cannot read the weights' sizes of {cfg.model})", math.nan
    total = one * n * trials
    count = f"{'at most ' if at_most else ''}{trials} trial{'s' if trials != 1 else ''}"
    return (f"{head} x {human_bytes(one)} ({cfg.dtype}) = {human_bytes(one * n)} per trial, {human_bytes(total)} "
            f"for {count}; --snapshot-every sets the step, 0 turns them off"), float(total)


def check_disk(storage: str, needed: float) -> None:
    """Refuse, before anything runs, a sweep whose snapshots would not fit in a local storage folder."""
    if "://" in storage or not math.isfinite(needed) or needed <= 0:
        return
    folder = Path(storage)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise AlliterError(
            f"the snapshots would take {human_bytes(needed)}, but {folder} has {human_bytes(free)} free; "
            "pass a larger --snapshot-every (0 turns them off) or another --storage"
        )
