"""Loading the policy, its reference (frozen, or reset along the trial: --ref-sync-every), the unmodified model and
the tokenizer with `from_pretrained`."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from alliter.cli import AlliterError, one_line
from alliter.config import TrainConfig
from alliter.train.preflight import check_model

log = logging.getLogger("alliter")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


@dataclass
class Models:
    policy: PreTrainedModel
    reference: PreTrainedModel
    """The KL term's reference: the unmodified model, or with --ref-sync-every the one its resets move."""
    tokenizer: PreTrainedTokenizerBase
    eos_ids: list[int]
    """Every id that ends a story (the tokenizer's and the generation config's end-of-text)."""
    device: torch.device
    original: PreTrainedModel
    """The unmodified model, always frozen, that fluency is measured under: the reference itself unless resets move
    the reference (then a copy of its own, so that the default trial holds no third model)."""


def pick_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise AlliterError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AlliterError(f"device {name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def load_models(cfg: TrainConfig) -> Models:
    """Policy (trainable), reference (frozen copy), the unmodified model and tokenizer, for a resolved config."""
    hf_logging.disable_progress_bar()  # a bar per load, six trials at once, drowns the progress table
    check_model(cfg)  # a damaged folder in one line, not the library's traceback
    device = pick_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
        policy = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype)
        reference = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as err:
        raise AlliterError(
            f"cannot load model {cfg.model!r} / tokenizer {cfg.tokenizer!r} (offline or wrong path?): "
            f"{one_line(err)}; pass --model PATH to a local model folder"
        ) from None
    if tokenizer.eos_token_id is None:
        raise AlliterError(f"tokenizer {cfg.tokenizer!r} has no end-of-text token")
    tokenizer.pad_token = tokenizer.eos_token
    # eval mode: no dropout, so policy and reference agree exactly before the first update
    policy.to(device).eval()
    reference.to(device).eval().requires_grad_(False)
    original = copy.deepcopy(reference) if cfg.ref_sync_every else reference
    return Models(policy, reference, tokenizer, end_ids(tokenizer, policy), device, original)


def end_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    """Every id that ends a story: the tokenizer's end-of-text and the generation config's."""
    eos = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    return sorted(eos)
