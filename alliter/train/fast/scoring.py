"""The training forward: `sequence_logits`, `model(tokens).logits` for any model, alliter's own forward for Llama
(fused projections, causal attention in query chunks), differentiable in the live parameters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.llama.modeling_llama import rotate_half

from alliter.train.fast.support import unsupported_reason


def sequence_logits(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """Logits [B, T, V] over the tokens [B, T], as `model(tokens).logits`, differentiable in the live
    parameters. For Llama alliter's own forward, the model's formulas with fewer and cheaper ops: q/k/v
    and gate/up fused into one matrix product each, RMSNorm by torch's fused kernel (bitwise the
    module's), the rotation as one complex product, and causal attention in query chunks that skip the
    key blocks the mask zeroes, with a backward laid out for MKL (`_AttentionChunk`): on the bundled model a
    forward and backward of a group costs about a fifth less than the library's. Any other model,
    GPT-Neo included: its own forward (GPT-Neo keeps its scores in float32 whatever the dtype, where the
    chunks' different rounding would show in float64 checks; its time goes to the output layer anyway)."""
    if type(model).__name__ == "LlamaForCausalLM" and unsupported_reason(model) is None:
        return _llama_sequence(model, tokens)
    return model(tokens).logits


_CHUNK = 32  # at most this many queries per attention chunk (T=100: four chunks of 25)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, window: int | None) -> Tensor:
    """softmax(scale q k^T + causal mask) v for q [B, Hq, T, D], k and v [B, Hkv, T, D] (query head h reads
    key/value head h // (Hq / Hkv)), with the heads merged: [B, T, Hq * D]. In chunks of queries, each
    against only the keys it may see (the last `window` positions for GPT-Neo's local layers); scores
    and softmax in q's dtype; every product laid out so that none has D as its narrow output side."""
    b, n_q, t, d = q.shape
    n_kv = k.shape[1]
    g = n_q // n_kv
    q4 = q.reshape(b * n_kv, g, t, d)
    kT, vT = k.reshape(b * n_kv, t, d).transpose(1, 2), v.reshape(b * n_kv, t, d).transpose(1, 2)
    pos = torch.arange(t, device=q.device)
    n = -(-t // _CHUNK)
    bounds = [t * i // n for i in range(n + 1)]
    outs = []
    for s, e in zip(bounds, bounds[1:]):
        ks = 0 if window is None else max(0, s - window + 1)
        back = pos[s:e, None] - pos[None, ks:e]  # query position minus key position
        allowed = (back >= 0) if window is None else (back >= 0) & (back < window)
        mask = torch.zeros(back.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
        qc = q4[:, :, s:e].reshape(b * n_kv, g * (e - s), d)
        o_t = _AttentionChunk.apply(qc, kT[:, :, ks:e], vT[:, :, ks:e], mask.repeat(g, 1), scale)
        outs.append(o_t.view(b * n_kv, d, g, e - s))
    # [B * Hkv, D, g, T] -> [B, T, Hkv, g, D] -> [B, T, Hq * D]
    return torch.cat(outs, 3).view(b, n_kv, d, g, t).permute(0, 4, 1, 3, 2).reshape(b, t, n_q * d)


class _AttentionChunk(torch.autograd.Function):
    """One chunk of attention, returning the output transposed, [N, D, R], with a backward whose four
    products all have D on their short (row) side: MKL computes [R x T] @ [T x D] several times slower than
    [D x T] @ [T x R] when D is as small as Llama-260K's 8."""

    @staticmethod
    def forward(ctx, q: Tensor, k_t: Tensor, v_t: Tensor, mask: Tensor, scale: float) -> Tensor:
        # q [N, R, D], k_t and v_t [N, D, Tk], mask [R, Tk] (0 or -inf)
        p = torch.softmax(torch.baddbmm(mask, q, k_t, alpha=scale), -1)  # [N, R, Tk]
        p = p.to(v_t.dtype)
        ctx.save_for_backward(q, k_t, v_t, p)
        ctx.scale = scale
        return torch.bmm(v_t, p.transpose(1, 2))  # [N, D, R]

    @staticmethod
    def backward(ctx, grad_o_t: Tensor):
        q, k_t, v_t, p = ctx.saved_tensors
        grad_v_t = torch.bmm(grad_o_t, p)  # [N, D, Tk]
        grad_p = torch.bmm(grad_o_t.transpose(1, 2), v_t)  # [N, R, Tk]
        grad_s = softmax_backward(grad_p.to(p.dtype), p) * ctx.scale
        grad_k_t = torch.bmm(q.transpose(1, 2), grad_s.to(q.dtype))  # [N, D, Tk]
        grad_q = torch.bmm(k_t, grad_s.transpose(1, 2).to(q.dtype)).transpose(1, 2)  # [N, R, D]
        return grad_q, grad_k_t, grad_v_t, None, None


def softmax_backward(grad: Tensor, p: Tensor) -> Tensor:
    """The gradient of the scores from the gradient of softmax's output p over the last dim: p * (grad - sum(grad *
    p)). torch's own kernel (a private op: tests/test_house.py fails when a release moves it), one pass instead of
    three."""
    return torch._softmax_backward_data(grad, p, -1, p.dtype)


def _rms_norm(x: Tensor, norm) -> Tensor:
    """LlamaRMSNorm's result (float32 statistics, weight in the input dtype), with torch's fused kernel:
    bitwise the module's output, in fewer ops forward and backward."""
    return norm.weight * F.rms_norm(x.float(), x.shape[-1:], None, norm.variance_epsilon).to(x.dtype)


def _llama_sequence(model, ids: Tensor) -> Tensor:
    inner, cfg = model.model, model.config
    b, t = ids.shape
    a0 = inner.layers[0].self_attn
    n_q, n_kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, a0.head_dim
    n_qk, half = n_q + n_kv, d // 2
    dev = ids.device
    x = inner.embed_tokens(ids)
    cos, sin = inner.rotary_emb(x, position_ids=torch.arange(t, device=dev)[None])  # [1, T, D], halves layout
    complex_ok = x.dtype in (torch.float32, torch.float64)
    if complex_ok:
        # rotation as one complex product: q and k rows in interleaved pairs (q.k unchanged when both move alike)
        cis = torch.complex(cos[0, :, :half], sin[0, :, :half])[None, :, None, :]  # [1, T, 1, D/2]
        pair = torch.arange(d, device=dev).view(2, half).t().reshape(-1)
        rows = torch.cat([(torch.arange(n_qk, device=dev)[:, None] * d + pair).reshape(-1),
                          torch.arange(n_qk * d, (n_qk + n_kv) * d, device=dev)])
    for layer in inner.layers[: cfg.num_hidden_layers]:
        a, m = layer.self_attn, layer.mlp
        w_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
        if complex_ok:
            qkv = F.linear(_rms_norm(x, layer.input_layernorm), w_qkv.index_select(0, rows))
            qk = torch.view_as_complex(qkv[..., : n_qk * d].unflatten(-1, (n_qk, half, 2)))
            qk = torch.view_as_real(qk * cis).flatten(-2)  # [B, T, Hq + Hkv, D]
            q, k = qk[:, :, :n_q].transpose(1, 2), qk[:, :, n_q:].transpose(1, 2)
        else:  # no complex half-precision: the library's formula
            qkv = F.linear(_rms_norm(x, layer.input_layernorm), w_qkv)
            q, k = (z.view(b, t, -1, d).transpose(1, 2) for z in qkv[..., : n_qk * d].split([n_q * d, n_kv * d], -1))
            c, s_ = cos[:, None], sin[:, None]
            q, k = q * c + rotate_half(q) * s_, k * c + rotate_half(k) * s_
        v = qkv[..., n_qk * d :].view(b, t, n_kv, d).transpose(1, 2)
        x = x + a.o_proj(causal_attention(q, k, v, a.scaling, None))
        w_gu = torch.cat([m.gate_proj.weight, m.up_proj.weight])
        gate, up = F.linear(_rms_norm(x, layer.post_attention_layernorm), w_gu).chunk(2, -1)
        x = x + m.down_proj(m.act_fn(gate) * up)
    return model.lm_head(_rms_norm(x, inner.norm))
