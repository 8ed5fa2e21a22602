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


def nll_of_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Each target's negative log-likelihood [K, N] from logits [K, N, V], in float32 or float64 (bf16 -> f32)."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    k, n, vocab = logits.shape
    # over the vocabulary as the last, contiguous dim: several times faster than over transposed logits
    return F.cross_entropy(logits.reshape(k * n, vocab), targets.reshape(k * n), reduction="none").view(k, n)


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
        o_t = attention_chunk(qc, kT[:, :, ks:e], vT[:, :, ks:e], mask.repeat(g, 1), scale)
        outs.append(o_t.view(b * n_kv, d, g, e - s))
    # [B * Hkv, D, g, T] -> [B, T, Hkv, g, D] -> [B, T, Hq * D]
    return torch.cat(outs, 3).view(b, n_kv, d, g, t).permute(0, 4, 1, 3, 2).reshape(b, t, n_q * d)


def attention_chunk(q: Tensor, k_t: Tensor, v_t: Tensor, mask: Tensor, scale: float) -> Tensor:
    """One chunk of attention, transposed: [N, D, R] for q [N, R, D], k_t and v_t [N, D, Tk], mask [R, Tk] (0 or
    -inf), with a backward whose four products all have D on their short (row) side: MKL computes [R x T] @ [T x D]
    several times slower than [D x T] @ [T x R] when D is as small as Llama-260K's 8. Eager, an autograd.Function;
    compiled, the same forward and backward as a custom operator (`_chunk_op`), which Inductor calls as it is: the
    backward autograd would derive from plain products has that slow layout, and an autograd.Function in a graph
    keeps it out of AOTAutograd's cache (the forward would be traced again in every process)."""
    if torch.compiler.is_compiling():
        return _chunk_op(q, k_t, v_t, mask, scale)[0]
    return _AttentionChunk.apply(q, k_t, v_t, mask, scale)


def _chunk_forward(q: Tensor, k_t: Tensor, v_t: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """(the output [N, D, R], the probabilities [N, R, Tk], which the backward reads)."""
    p = torch.softmax(torch.baddbmm(mask, q, k_t, alpha=scale), -1).to(v_t.dtype)  # [N, R, Tk]
    return torch.bmm(v_t, p.transpose(1, 2)), p


def _chunk_backward(grad_o_t: Tensor, q: Tensor, k_t: Tensor, v_t: Tensor, p: Tensor,
                    scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of q, k_t and v_t."""
    grad_v_t = torch.bmm(grad_o_t, p)  # [N, D, Tk]
    grad_p = torch.bmm(grad_o_t.transpose(1, 2), v_t)  # [N, R, Tk]
    grad_s = softmax_backward(grad_p.to(p.dtype), p) * scale
    grad_k_t = torch.bmm(q.transpose(1, 2), grad_s.to(q.dtype))  # [N, D, Tk]
    grad_q = torch.bmm(k_t, grad_s.transpose(1, 2).to(q.dtype)).transpose(1, 2)  # [N, R, D]
    return grad_q, grad_k_t, grad_v_t


class _AttentionChunk(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k_t: Tensor, v_t: Tensor, mask: Tensor, scale: float) -> Tensor:
        o_t, p = _chunk_forward(q, k_t, v_t, mask, scale)
        ctx.save_for_backward(q, k_t, v_t, p)
        ctx.scale = scale
        return o_t

    @staticmethod
    def backward(ctx, grad_o_t: Tensor):
        return *_chunk_backward(grad_o_t, *ctx.saved_tensors, ctx.scale), None, None


@torch.library.custom_op("alliter::attention_chunk", mutates_args=())
def _chunk_op(q: Tensor, k_t: Tensor, v_t: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return _chunk_forward(q, k_t, v_t, mask, scale)


@_chunk_op.register_fake
def _(q: Tensor, k_t: Tensor, v_t: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    n, r, d = q.shape
    return v_t.new_empty(n, d, r), v_t.new_empty(n, r, k_t.shape[2])


@torch.library.custom_op("alliter::attention_chunk_backward", mutates_args=())
def _chunk_op_backward(grad_o_t: Tensor, q: Tensor, k_t: Tensor, v_t: Tensor, p: Tensor,
                       scale: float) -> tuple[Tensor, Tensor, Tensor]:
    return _chunk_backward(grad_o_t, q, k_t, v_t, p, scale)


@_chunk_op_backward.register_fake
def _(grad_o_t: Tensor, q: Tensor, k_t: Tensor, v_t: Tensor, p: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    n, r, d = q.shape
    return q.new_empty(n, d, r).transpose(1, 2), k_t.new_empty(k_t.shape), v_t.new_empty(v_t.shape)  # as made


def _save_chunk(ctx, inputs, output) -> None:
    q, k_t, v_t, _, scale = inputs
    ctx.save_for_backward(q, k_t, v_t, output[1])
    ctx.scale = scale


_chunk_op.register_autograd(lambda ctx, grad_o_t, _: (*_chunk_op_backward(grad_o_t, *ctx.saved_tensors, ctx.scale),
                                                      None, None), setup_context=_save_chunk)


def softmax_backward(grad: Tensor, p: Tensor) -> Tensor:
    """The gradient of the scores from the gradient of softmax's output p over the last dim: p * (grad - sum(grad *
    p)). torch's own kernel (a private op: tests/test_house.py fails when a release moves it), one pass instead of
    three."""
    return torch._softmax_backward_data(grad, p, -1, p.dtype)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """LlamaRMSNorm's result (float32 statistics, weight in the input dtype), with torch's fused kernel:
    bitwise the module's output, in fewer ops forward and backward."""
    return weight * rms_norm_float32(x, eps).to(x.dtype)


def rms_norm_float32(x: Tensor, eps: float) -> Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim, in float32 whatever x's dtype, as LlamaRMSNorm computes it.
    Compiled on a float64 model, aten's own kernels run it (`_rms_norm_aten`): a float32 mean rounds by its order of
    summation, Inductor's differs from aten's, and the compiled path would lose the eager path's float64 exactness
    there alone."""
    if x.dtype == torch.float64 and torch.compiler.is_compiling():
        return _rms_norm_aten(x, eps)
    return F.rms_norm(x.float(), x.shape[-1:], None, eps)


@torch.library.custom_op("alliter::rms_norm_float32", mutates_args=())
def _rms_norm_aten(x: Tensor, eps: float) -> Tensor:
    return F.rms_norm(x.float(), x.shape[-1:], None, eps)


@_rms_norm_aten.register_fake
def _(x: Tensor, eps: float) -> Tensor:
    return torch.empty_like(x, dtype=torch.float32)


@torch.library.custom_op("alliter::rms_norm_float32_backward", mutates_args=())
def _rms_norm_aten_backward(grad: Tensor, x: Tensor, eps: float) -> Tensor:
    """The gradient eager autograd takes through x.float() and F.rms_norm (x * rsqrt(mean(x^2) + eps)), op for op
    as its backward functions compute it (tests/test_compiled.py holds them bitwise equal)."""
    h = x.float()
    r = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    grad_r = (grad * h).sum(-1, keepdim=True)  # MulBackward0, to r's shape
    grad_sq = (-0.5 * grad_r * r.pow(3)).expand_as(h) / h.shape[-1]  # RsqrtBackward0, MeanBackward1
    return (grad * r + grad_sq * (2.0 * h.pow(1))).to(x.dtype)  # MulBackward0 and PowBackward0, summed


@_rms_norm_aten_backward.register_fake
def _(grad: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.empty_like(x)


def _save_rms_norm_input(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.eps = inputs[1]


_rms_norm_aten.register_autograd(lambda ctx, grad: (_rms_norm_aten_backward(grad, ctx.saved_tensors[0], ctx.eps), None),
                                 setup_context=_save_rms_norm_input)


def llama_inputs(model, length: int) -> dict:
    """What `llama_logits` reads of a LlamaForCausalLM, for sequences of `length` tokens: its live parameters
    (differentiable), its shape and the rotary factors, as tensors and numbers only (so that a compiled forward
    serves every model of the same shape)."""
    inner, cfg = model.model, model.config
    a0 = inner.layers[0].self_attn
    w0 = inner.embed_tokens.weight
    cos, sin = inner.rotary_emb(w0[None, :1], position_ids=torch.arange(length, device=w0.device)[None])
    layers = [(layer.input_layernorm.weight, layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight,
               layer.self_attn.v_proj.weight, layer.self_attn.o_proj.weight, layer.post_attention_layernorm.weight,
               layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight)
              for layer in inner.layers[: cfg.num_hidden_layers]]
    return dict(embed=w0, layers=layers, norm=inner.norm.weight, lm=model.lm_head.weight, cos=cos, sin=sin,
                padding_idx=inner.embed_tokens.padding_idx, eps=inner.norm.variance_epsilon,
                n_q=cfg.num_attention_heads, n_kv=cfg.num_key_value_heads, d=a0.head_dim, scaling=a0.scaling)


def llama_logits(ids: Tensor, embed: Tensor, layers: list, norm: Tensor, lm: Tensor, cos: Tensor, sin: Tensor, *,
                 padding_idx: int | None, eps: float, n_q: int, n_kv: int, d: int, scaling: float) -> Tensor:
    """LlamaForCausalLM's logits [B, T, V] from `llama_inputs`: the model's formulas, fused (see sequence_logits).
    Compiled (`torch.compiler.is_compiling()`), the rotation is written in real arithmetic, which Inductor
    generates code for (complex numbers it leaves to eager kernels); eager, it is one complex product."""
    b, t = ids.shape
    n_qk, half = n_q + n_kv, d // 2
    dev = ids.device
    x = F.embedding(ids, embed, padding_idx)
    complex_ok = x.dtype in (torch.float32, torch.float64)
    if complex_ok:
        # rotation as one complex product: q and k rows in interleaved pairs (q.k unchanged when both move alike)
        c, s = cos[0, :, :half][None, :, None, :], sin[0, :, :half][None, :, None, :]  # [1, T, 1, D/2]
        cis = None if torch.compiler.is_compiling() else torch.complex(c, s)
        pair = torch.arange(d, device=dev).view(2, half).t().reshape(-1)
        rows = torch.cat([(torch.arange(n_qk, device=dev)[:, None] * d + pair).reshape(-1),
                          torch.arange(n_qk * d, (n_qk + n_kv) * d, device=dev)])
    for w_in, wq, wk, wv, wo, w_post, w_gate, w_up, w_down in layers:
        w_qkv = torch.cat([wq, wk, wv])
        if complex_ok:
            qkv = F.linear(_rms_norm(x, w_in, eps), w_qkv.index_select(0, rows))
            if cis is not None:
                qk = torch.view_as_complex(qkv[..., : n_qk * d].unflatten(-1, (n_qk, half, 2)))
                qk = torch.view_as_real(qk * cis).flatten(-2)  # [B, T, Hq + Hkv, D]
            else:
                re, im = qkv[..., : n_qk * d].unflatten(-1, (n_qk, half, 2)).unbind(-1)
                qk = torch.stack([re * c - im * s, re * s + im * c], -1).flatten(-2)
            q, k = qk[:, :, :n_q].transpose(1, 2), qk[:, :, n_q:].transpose(1, 2)
        else:  # no complex half-precision: the library's formula
            qkv = F.linear(_rms_norm(x, w_in, eps), w_qkv)
            q, k = (z.view(b, t, -1, d).transpose(1, 2) for z in qkv[..., : n_qk * d].split([n_q * d, n_kv * d], -1))
            c4, s4 = cos[:, None], sin[:, None]
            q, k = q * c4 + rotate_half(q) * s4, k * c4 + rotate_half(k) * s4
        v = qkv[..., n_qk * d :].view(b, t, n_kv, d).transpose(1, 2)
        x = x + F.linear(causal_attention(q, k, v, scaling, None), wo)
        gate, up = F.linear(_rms_norm(x, w_post, eps), torch.cat([w_gate, w_up])).chunk(2, -1)
        x = x + F.linear(F.silu(gate) * up, w_down)
    return F.linear(_rms_norm(x, norm, eps), lm)


def _llama_sequence(model, ids: Tensor) -> Tensor:
    return llama_logits(ids, **llama_inputs(model, ids.shape[1]))
