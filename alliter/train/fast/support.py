"""Which models the fast path runs exactly as their own forward does.

Supported: `LlamaForCausalLM` (RMSNorm, rotary "halves" layout, grouped-query attention, SiLU MLP) and
`GPTNeoForCausalLM` (LayerNorm, learned positions, unscaled attention, local-window layers, gelu_new MLP).
Anything else: `unsupported_reason` says why, and `alliter.train.rollout.sample_group` falls back to `generate`.
"""

from __future__ import annotations

import torch

FAMILIES = ("LlamaForCausalLM", "GPTNeoForCausalLM")


def unsupported_reason(model: torch.nn.Module, max_length: int | None = None) -> str | None:
    """None when the fast path runs this model exactly as its own forward does, else a one-line reason."""
    cfg = getattr(model, "config", None)
    name = type(model).__name__
    if cfg is None or name not in FAMILIES:
        return f"{name} is not one of the architectures alliter decodes itself ({', '.join(FAMILIES)})"
    device = model.get_input_embeddings().weight.device
    if device.type not in ("cpu", "cuda"):
        return f"device {device.type} (the fast path is checked on cpu and cuda)"
    out = model.get_output_embeddings()
    if getattr(out, "bias", None) is not None:
        return f"{name} has an output bias"
    if model.training and any(
        float(getattr(cfg, k, 0) or 0) > 0 for k in ("attention_dropout", "resid_dropout", "embed_dropout")
    ):
        return f"{name} is in training mode with dropout"
    if name == "LlamaForCausalLM":
        rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
        if rope.get("rope_type", "default") != "default":
            return f"rope type {rope.get('rope_type')!r} (only the default rotary embedding is supported)"
        if cfg.hidden_act != "silu":
            return f"activation {cfg.hidden_act!r} (only silu)"
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            return "Llama with attention or MLP biases"
        if getattr(model.model.rotary_emb, "attention_scaling", 1.0) != 1.0:
            return "rotary attention scaling"
    if name == "GPTNeoForCausalLM":
        if max_length is not None and max_length > cfg.max_position_embeddings:
            return f"max_length {max_length} exceeds the {cfg.max_position_embeddings} learned positions"
        if any(t not in ("global", "local") for t in cfg.attention_layers):
            return f"attention layer types {sorted(set(cfg.attention_layers))}"
    return None
