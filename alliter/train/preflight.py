"""What a trial will build, checked before anything starts: the model's folder and files (`check_model`), its
config, the tokenizer, every prompt's tokens against max_length and the model's positions, and
that the reward imports.

The sweep's driver runs `check_trial` in a subprocess (`run_preflight`), so that it finds in a few seconds, in one
line, what every trial would otherwise find inside Ray, once per retry, while the driver itself never imports
torch. The trainer runs the same `check_prompt` (and `check_entropy_target`) on what it loaded.

    python -m alliter.train.preflight < config.json     # {"ok": {...}} or {"error": "one line"} on stdout
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from alliter.cli import AlliterError, one_line
from alliter.config import STUDY_TOKENIZER, TOKENIZER_FILES, TrainConfig
from alliter.train.reward import load_reward

# --- a model folder -----------------------------------------------------------------------------------------------

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_model_folder(model: str, what: str = "model") -> None:
    """A model (or tokenizer) that can only be a folder must exist (a hub id is "name" or "org/name")."""
    looks_local = model.startswith((".", "/", "~")) or model.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(model)):
        raise AlliterError(f"{what} folder {model!r} does not exist; pass --{what} PATH to a saved {what} folder")


def safetensors_shapes(path: Path) -> dict[str, tuple[str, list[int]]]:
    """Each tensor of a safetensors file: (its dtype, its shape), read by safetensors itself without torch (the
    sweep's driver never imports it); a damaged file is an AlliterError in one line."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return {name: (f.get_slice(name).get_dtype(), f.get_slice(name).get_shape()) for name in f.keys()}
    except (OSError, SafetensorError) as err:
        raise AlliterError(f"{path} is not a readable safetensors file ({one_line(err, 120)}); the model folder is "
                           "damaged") from None


def check_model_files(folder: Path) -> None:
    """A local model folder holds a config and weights that can be read."""
    if not (folder / "config.json").is_file():
        raise AlliterError(f"model folder {folder} has no config.json: not a saved model (save_pretrained writes one)")
    if not any((folder / name).is_file() for name in WEIGHT_FILES) and not list(folder.glob("*.safetensors")):
        raise AlliterError(f"model folder {folder} has no weights ({', '.join(WEIGHT_FILES[::2])})")
    for path in sorted(folder.glob("*.safetensors")):
        safetensors_shapes(path)


def check_model(cfg: TrainConfig) -> None:
    """A resolved config's model and tokenizer folders (a hub id is the library's to find): the folder exists and
    holds a config and weights that can be read."""
    check_model_folder(cfg.model)
    if Path(cfg.model).expanduser().is_dir():
        check_model_files(Path(cfg.model).expanduser())
    if cfg.tokenizer is None:  # a model folder without a tokenizer of its own (TrainConfig.resolved)
        raise AlliterError(f"model folder {cfg.model} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); pass "
                           f"--tokenizer NAME_OR_FOLDER (the study's: {STUDY_TOKENIZER})")
    check_model_folder(cfg.tokenizer, "tokenizer")


# --- a trial ---------------------------------------------------------------------------------------------------

POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


def positions(config: Any) -> int | None:
    """The positions a model was built for (learned embeddings, or its trained context), if its config says."""
    for key in POSITION_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_prompt(prompt: str, prompt_tokens: int, max_length: int, model: Any, name: str) -> None:
    """The prompt leaves tokens to generate, and every sample fits the positions of the model (its config)."""
    if not prompt.strip():
        raise AlliterError("the prompt is empty; pass --prompt TEXT (the study's: 'Once upon a time')")
    if prompt_tokens >= max_length:
        raise AlliterError(f"the prompt is {prompt_tokens} tokens, max_length {max_length} leaves none to generate; "
                           "pass a larger --max-length")
    most = positions(model)
    if most is not None and max_length > most:
        raise AlliterError(f"max_length {max_length} exceeds the {most} positions of {name}; "
                           f"pass --max-length {most} or less")


def check_entropy_target(target: float, vocabulary: int, name: str) -> None:
    """An --entropy-target the policy's entropy can reach: under ln(vocabulary), the uniform distribution's (else the
    adaptive coefficient only ever grows)."""
    most = math.log(vocabulary)
    if target >= most:
        raise AlliterError(f"entropy_target {target:g} is not under {most:.3g} nats, the entropy of the uniform "
                           f"distribution over the {vocabulary} tokens of {name}'s vocabulary: the policy can never "
                           f"reach it; pass a target under {most:.3g}")


def check_compiler(cfg: TrainConfig) -> None:
    """--compile needs the C++ compiler that Inductor runs (its $CXX, else g++; clang++ on macOS)."""
    if not cfg.compile:
        return
    cxx = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    if shutil.which(cxx) is None:
        raise AlliterError(f"--compile needs a C++ compiler for Inductor's code, and {cxx!r} is not on this machine: "
                           "install one (apt-get install g++) or set CXX, or drop --compile")


def check_trial(cfg: TrainConfig) -> dict[str, Any]:
    """Load what a trial loads, but the weights, and check it; AlliterError in one line. Returns what was found."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    cfg = cfg.resolved()
    check_model(cfg)
    check_compiler(cfg)
    try:
        config = AutoConfig.from_pretrained(cfg.model)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AlliterError(f"cannot read the config of model {cfg.model!r}: {one_line(err)}") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise AlliterError(f"model {cfg.model!r} is a {config.model_type!r}, not a causal language model")
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AlliterError(f"cannot load tokenizer {cfg.tokenizer!r}: {one_line(err)}") from None
    if tokenizer.eos_token_id is None:
        raise AlliterError(f"tokenizer {cfg.tokenizer!r} has no end-of-text token")
    prompt_tokens = [len(tokenizer(prompt).input_ids) for prompt in cfg.prompt_list]
    for prompt, n in zip(cfg.prompt_list, prompt_tokens):
        check_prompt(prompt, n, cfg.max_length, config, cfg.model)
    vocabulary = max(len(tokenizer), getattr(config, "vocab_size", 0) or 0)
    if cfg.top_k > vocabulary:
        raise AlliterError(f"top_k {cfg.top_k} is more than the {vocabulary} tokens of {cfg.model}'s vocabulary; pass "
                           f"--top-k {vocabulary} or less (0 turns the top-k filter off)")
    if cfg.entropy_target is not None:
        check_entropy_target(cfg.entropy_target, getattr(config, "vocab_size", 0) or vocabulary, cfg.model)
    # imports a user's file (a syntax error, a missing function) and calls it once: a reward that returns no
    # number for every text, or raises, shows here
    load_reward(cfg.reward)(cfg.prompt_list[:1])
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise AlliterError(f"--device {cfg.device}, but torch sees no CUDA device here")
    return {"architecture": (config.architectures or [config.model_type])[0], "prompt_tokens": prompt_tokens[0],
            "positions": positions(config), "vocabulary": len(tokenizer)}


def run_preflight(cfg: TrainConfig, timeout: float = 300.0) -> dict[str, Any]:
    """`check_trial` in a subprocess, so that the driver does not import torch (in this process where it already
    has); AlliterError with its line."""
    if "torch" in sys.modules:
        return check_trial(cfg)
    env = {**os.environ, "HF_HUB_ETAG_TIMEOUT": os.environ.get("HF_HUB_ETAG_TIMEOUT", "10"),
           "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    try:
        proc = subprocess.run([sys.executable, "-m", "alliter.train.preflight"], input=json.dumps(cfg.to_dict()),
                              capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise AlliterError(f"checking model {cfg.model!r} and tokenizer {cfg.tokenizer!r} took over {timeout:.0f} s "
                           "(a hub download?); fetch them first, or pass local folders") from None
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise AlliterError(f"the check of the trial's model and tokenizer failed: {tail[:200]}")
    answer = json.loads(lines[-1])
    if "error" in answer:
        raise AlliterError(answer["error"])
    return answer["ok"]


def main() -> int:
    try:
        cfg = TrainConfig.from_dict(json.loads(sys.stdin.read()))
        print(json.dumps({"ok": check_trial(cfg)}))
    except AlliterError as err:
        print(json.dumps({"error": str(err)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
