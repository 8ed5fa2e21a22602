"""alliter's fast sampling path: its own KV-cache decode step over preallocated buffers.

Sampling a group is bound by per-token overhead, not arithmetic: the library's `generate` spends most of
each step in its module stack, cache bookkeeping and logits processors. This module runs the same
network with a handful of tensor ops per layer and step, reading the live `nn.Parameter`s of the Hugging
Face modules (so it always samples from the current policy), with one fixed-size K/V buffer per layer,
and samples on the device without a host synchronisation inside the loop.

Supported: `LlamaForCausalLM` (RMSNorm, rotary "halves" layout, grouped-query attention, SiLU MLP) and
`GPTNeoForCausalLM` (LayerNorm, learned positions, unscaled attention, local-window layers, gelu_new MLP).
Anything else: `unsupported_reason` says why, and `alliter.rollout.sample_group` falls back to `generate`.

Semantics are the library's `generate(do_sample=True, top_k, temperature)`: temperature, then the top-k
filter (logits below the k-th largest set to -inf, ties kept), softmax, one categorical draw per sample
from the global torch generator. The draw is made by inverse-CDF sampling (one uniform per sample, all
of a group's uniforms drawn in one call), which is the distribution of `torch.multinomial` without its
host-side validity checks and at a fraction of its cost for large vocabularies (`torch.multinomial`
draws one exponential per vocabulary entry: ~10 ms per step for 10 x 50257 on one CPU core).
All `max_length - len(prompt)` tokens are sampled with no early exit: tokens after a sample's first
end-of-text are arbitrary, and callers cut at `alliter.rollout.sequence_lengths`.

Why not the library's StaticCache with `torch.compile`: on the 2-core CPU the first compiled decode step
took 61 s and a second shape another 28 s, per process, i.e. per trial; this eager loop needs no warm-up.

`sequence_logits` is the scoring side: `model(tokens).logits` for any model, alliter's own forward for
Llama (fused projections, causal attention in query chunks), differentiable in the live parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.llama.modeling_llama import rotate_half

__all__ = [
    "unsupported_reason",
    "fast_generate_group",
    "teacher_forced_logits",
    "sample_from_logits",
    "draw_uniforms",
    "sequence_logits",
]

_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


# --- which models ---------------------------------------------------------------------------------


def unsupported_reason(model: torch.nn.Module, max_length: int | None = None) -> str | None:
    """None when the fast path runs this model exactly as its own forward does, else a one-line reason."""
    cfg = getattr(model, "config", None)
    name = type(model).__name__
    if cfg is None or name not in _FAMILIES:
        return f"{name} is not one of the architectures alliter decodes itself ({', '.join(_FAMILIES)})"
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


# --- sampling ------------------------------------------------------------------------------------

# Uniforms are scaled by this so that u * total always rounds below the total: the draw can never land
# past the last token with a probability > 0 (it shrinks that token's share by 2^-22 of the total at most).
_BELOW_ONE = 1.0 - 2.0**-22


def draw_uniforms(*shape: int, device=None) -> Tensor:
    """Uniforms in [0, 1) from the global torch generator, for `sample_from_logits`."""
    return torch.rand(shape, device=device).mul_(_BELOW_ONE)


def sample_from_logits(logits: Tensor, top_k: int, temperature: float, u: Tensor | None = None) -> Tensor:
    """One token per row, [B]: the library's temperature and top-k warpers, softmax, a categorical draw.

    The draw is inverse-CDF sampling with one uniform per row (`u` [B, 1], else drawn here from the global
    generator): the distribution of `torch.multinomial(probs, 1)`, without its host-side checks and its
    one exponential per vocabulary entry. No host synchronisation.
    """
    scores = logits if logits.dtype == torch.float32 else logits.float()
    if temperature != 1.0:
        scores = scores / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        scores = scores.masked_fill(scores < kth, float("-inf"))  # ties with the k-th are kept
    cdf = torch.softmax(scores, dim=-1).cumsum_(-1)  # a zero-probability token leaves the cdf flat
    if u is None:
        u = draw_uniforms(cdf.shape[0], 1, device=cdf.device)
    # clamped, so that even non-finite logits give a valid id (the trainer then stops on the non-finite loss)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1).view(-1)


# --- the decoders: the live parameters arranged for a decode step, and fixed-size K/V buffers --------


class _Decoder:
    """One group's decode state. `prefill` runs the prompt (one row) and copies its keys and values
    into every row; `step` runs one token per row at one position. Both return logits in the model dtype
    (the prefill: of the prompt's last position, or with `every` of each of its positions).

    Caches per layer: keys transposed, [B, kv heads, D, max_length], and values, [B, kv heads,
    max_length, D], so each attention product is one `bmm` over B * kv heads on contiguous rows."""

    def _caches(self, batch: int, n_kv: int, d: int, length: int, like: Tensor, n_layers: int) -> None:
        self.kT = [like.new_empty(batch, n_kv, d, length) for _ in range(n_layers)]
        self.v = [like.new_empty(batch, n_kv, length, d) for _ in range(n_layers)]
        self.kT3 = [t.view(batch * n_kv, d, length) for t in self.kT]
        self.v3 = [t.view(batch * n_kv, length, d) for t in self.v]


class _Llama(_Decoder):
    """LlamaForCausalLM. Per group: q/k/v and gate/up fused; RMSNorm weights (and sqrt(H)) folded into the
    matrix after each norm; q and k rows put in interleaved rotary order (q.k is unchanged when both are
    permuted alike) so that the rotation is one complex product, the attention scale folded into the
    queries' rotation; the rows grouped per key/value head as [its query heads..., its key head]."""

    def __init__(self, model, batch: int, length: int):
        inner, cfg = model.model, model.config
        attn0 = inner.layers[0].self_attn
        w0 = inner.embed_tokens.weight
        dev, dt = w0.device, w0.dtype
        self.b, self.h = batch, cfg.hidden_size
        self.n_q, self.n_kv, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, attn0.head_dim
        n_q, n_kv, d = self.n_q, self.n_kv, self.d
        g = self.g = n_q // n_kv
        inter = cfg.intermediate_size
        self.wide = dt in (torch.float32, torch.float64)
        stat = torch.promote_types(dt, torch.float32)
        # float32: RMSNorm as x / hypot(|x|, sqrt(eps H)) == x * rsqrt(mean(x^2) + eps) / sqrt(H), three ops, with
        # sqrt(H) folded into the weights; other dtypes: LlamaRMSNorm's own ops (it keeps its statistics in float32)
        self.fast_norm = dt == torch.float32
        self.eps = inner.norm.variance_epsilon
        self.c = torch.tensor(math.sqrt(self.eps * self.h), device=dev, dtype=torch.float32)
        root_h = math.sqrt(self.h) if self.fast_norm else 1.0
        pair = torch.arange(d, device=dev).view(2, d // 2).t().reshape(-1)  # halves -> interleaved pairs

        def fold(w: Tensor, norm_w: Tensor) -> Tensor:  # W diag(norm weight) sqrt(H), transposed
            return (w.to(stat) * (norm_w.to(stat) * root_h)).to(dt).t()

        self.layers = []
        for layer in inner.layers[: cfg.num_hidden_layers]:
            a, m = layer.self_attn, layer.mlp
            wq = a.q_proj.weight.view(n_kv, g, d, -1)[:, :, pair]
            wk = a.k_proj.weight.view(n_kv, 1, d, -1)[:, :, pair]
            wqk = torch.cat([wq, wk], 1).reshape(n_kv * (g + 1) * d, -1)
            self.layers.append(
                (
                    fold(torch.cat([wqk, a.v_proj.weight]), layer.input_layernorm.weight),
                    a.o_proj.weight.t(),
                    fold(torch.cat([m.gate_proj.weight, m.up_proj.weight]), layer.post_attention_layernorm.weight),
                    m.down_proj.weight.t(),
                )
            )
        self.embed = w0
        self.lm = fold(model.lm_head.weight, inner.norm.weight)
        # rotary factors per position, as LlamaRotaryEmbedding computes the angles: [L, Hkv, g + 1, D/2]
        inv_freq = inner.rotary_emb.inv_freq.to(device=dev, dtype=torch.float)
        freqs = torch.arange(length, device=dev).float()[:, None] * inv_freq[None, :]
        cplx = torch.complex(freqs.cos().to(dt).to(stat), freqs.sin().to(dt).to(stat))
        scale = torch.ones(g + 1, 1, device=dev, dtype=stat)
        scale[:g] = attn0.scaling
        self.cis = (cplx[:, None, None, :] * scale).expand(length, n_kv, g + 1, d // 2).contiguous()
        # step buffers and their views, made once per group
        n_qk = n_kv * (g + 1)
        self.qkv = w0.new_empty(batch, (n_qk + n_kv) * d)
        self.gu = w0.new_empty(batch, 2 * inter)
        self.gate, self.up = self.gu[:, :inter], self.gu[:, inter:]
        qk = self.qkv[:, : n_qk * d].view(batch, n_kv, g + 1, d)
        self.v_new = self.qkv[:, n_qk * d :].view(batch, n_kv, d)
        if self.wide:
            self.qk_c = torch.view_as_complex(qk.unflatten(-1, (-1, 2)))
            self.rot_c = torch.empty_like(self.qk_c)
            rot = torch.view_as_real(self.rot_c).flatten(-2)
        else:
            self.qk = qk
            rot = qk.new_empty(qk.shape)
        self.rot = rot
        self.q = rot.view(batch * n_kv, g + 1, d)[:, :g]  # [B * Hkv, g, D]: query head h reads kv head h // g
        self.k_new = rot[:, :, g]  # [B, Hkv, D]
        self._caches(batch, n_kv, d, length, w0, len(self.layers))

    def _norm(self, x: Tensor) -> Tensor:
        if self.fast_norm:
            return x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), self.c)
        h = x.float()
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _rotate(self, cis: Tensor) -> None:
        if self.wide:
            torch.mul(self.qk_c, cis, out=self.rot_c)
        else:
            c = torch.view_as_complex(self.qk.float().unflatten(-1, (-1, 2)))  # no complex half precision
            self.rot.copy_(torch.view_as_real(c * cis).flatten(-2))

    def prefill(self, ids: Tensor, every: bool = False) -> Tensor:
        n_kv, g, d = self.n_kv, self.g, self.d
        p = ids.shape[1]
        n_qk = n_kv * (g + 1)
        cis = self.cis[:p]
        x = F.embedding(ids[0], self.embed)  # [P, H]
        for (wqkv, wo, wgu, wd), kT, v4 in zip(self.layers, self.kT, self.v):
            qkv = torch.mm(self._norm(x), wqkv)
            qk = qkv[:, : n_qk * d].reshape(p, n_kv, g + 1, d)
            qk = qk if self.wide else qk.float()
            rot = torch.view_as_real(torch.view_as_complex(qk.unflatten(-1, (-1, 2))) * cis).flatten(-2).to(x.dtype)
            q = rot[:, :, :g].permute(1, 2, 0, 3).reshape(1, self.n_q, p, d)  # heads in (kv head, group) order
            k = rot[:, :, g].permute(1, 0, 2)  # [Hkv, P, D]
            v = qkv[:, n_qk * d :].reshape(p, n_kv, d).permute(1, 0, 2)
            kT[:, :, :, :p].copy_(k.transpose(1, 2).unsqueeze(0))
            v4[:, :, :p].copy_(v.unsqueeze(0))
            a = _causal_attention(q, k.unsqueeze(0), v.unsqueeze(0), 1.0, None)  # the scale is in q
            x = torch.addmm(x, a[0], wo)
            gu = torch.mm(self._norm(x), wgu)
            inter = gu.shape[1] // 2
            x = torch.addmm(x, F.silu(gu[:, :inter]) * gu[:, inter:], wd)
        return torch.mm(self._norm(x if every else x[-1:]), self.lm)

    def step(self, tok: Tensor, pos: int) -> Tensor:
        b, n_q, d = self.b, self.n_q, self.d
        t = pos + 1
        cis = self.cis[pos]
        x = torch.index_select(self.embed, 0, tok)  # [B, H]
        mm, bmm, addmm, norm = torch.mm, torch.bmm, torch.addmm, self._norm
        qkv, q, k_new, v_new, gu, gate, up = self.qkv, self.q, self.k_new, self.v_new, self.gu, self.gate, self.up
        for (wqkv, wo, wgu, wd), kT, v4, kT3, v3 in zip(self.layers, self.kT, self.v, self.kT3, self.v3):
            mm(norm(x), wqkv, out=qkv)
            self._rotate(cis)
            kT.select(3, pos).copy_(k_new)
            v4.select(2, pos).copy_(v_new)
            s = bmm(q, kT3[:, :, :t])  # [B * Hkv, g, T], the scale is in q
            p = torch.softmax(s, -1) if self.wide else torch.softmax(s, -1, dtype=torch.float32).to(s.dtype)
            a = bmm(p, v3[:, :t])  # [B * Hkv, g, D]
            x = addmm(x, a.view(b, n_q * d), wo)
            mm(norm(x), wgu, out=gu)
            x = addmm(x, F.silu(gate) * up, wd)
        return mm(norm(x), self.lm)


class _GPTNeo(_Decoder):
    """GPTNeoForCausalLM: q/k/v fused with rows grouped per head as [q, k, v]; no attention scale;
    "local" layers attend to the last `window_size` positions; scores and softmax in float32."""

    def __init__(self, model, batch: int, length: int):
        tr, cfg = model.transformer, model.config
        w0 = tr.wte.weight
        self.b, self.h = batch, cfg.hidden_size
        self.nh = cfg.num_heads
        self.d = d = self.h // self.nh
        self.f32 = w0.dtype == torch.float32
        self.layers = []
        for block in tr.h:
            a = block.attn.attention
            wqkv = torch.stack([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])  # [3, H, H]
            wqkv = wqkv.view(3, self.nh, d, self.h).transpose(0, 1).reshape(3 * self.h, self.h)
            act = block.mlp.act
            self.layers.append(
                (
                    block.ln_1,
                    wqkv.t(),
                    a.out_proj.weight.t(),
                    a.out_proj.bias,
                    block.ln_2,
                    block.mlp.c_fc.weight.t(),
                    block.mlp.c_fc.bias,
                    block.mlp.c_proj.weight.t(),
                    block.mlp.c_proj.bias,
                    cfg.window_size if a.attention_type == "local" else None,
                    (lambda t: F.gelu(t, approximate="tanh")) if cfg.activation_function in _GELU_TANH else act,
                )
            )
        self.embed, self.wpe, self.ln_f = w0, tr.wpe.weight, tr.ln_f
        self.lm = model.lm_head.weight.t()
        self.qkv = w0.new_empty(batch, 3 * self.h)
        per_head = self.qkv.view(batch * self.nh, 3, d)
        self.q = per_head[:, :1]  # [B * heads, 1, D]
        self.k_new = self.qkv.view(batch, self.nh, 3, d)[:, :, 1]
        self.v_new = self.qkv.view(batch, self.nh, 3, d)[:, :, 2]
        self._caches(batch, self.nh, d, length, w0, len(self.layers))

    def _attend(self, q: Tensor, kT: Tensor, v: Tensor) -> Tensor:
        if self.f32:
            return torch.bmm(torch.softmax(torch.bmm(q, kT), -1), v)
        s = torch.bmm(q.float(), kT.float())  # GPT-Neo keeps its attention scores in float32
        return torch.bmm(torch.softmax(s, -1).to(v.dtype), v)

    def prefill(self, ids: Tensor, every: bool = False) -> Tensor:
        nh, d = self.nh, self.d
        p = ids.shape[1]
        x = F.embedding(ids[0], self.embed) + self.wpe[:p]
        for (ln1, wqkv, wo, bo, ln2, wfc, bfc, wpr, bpr, window, act), kT, v4 in zip(self.layers, self.kT, self.v):
            qkv = torch.mm(_ln(x, ln1), wqkv).view(p, nh, 3, d).permute(2, 1, 0, 3)  # [3, heads, P, D]
            q, k, v = qkv[0], qkv[1], qkv[2]
            kT[:, :, :, :p].copy_(k.transpose(1, 2).unsqueeze(0))
            v4[:, :, :p].copy_(v.unsqueeze(0))
            a = _causal_attention(q.float()[None], k.float()[None], v[None], 1.0, window)[0]  # [P, heads * D]
            x = torch.addmm(bo, a, wo) + x
            x = torch.addmm(bpr, act(torch.addmm(bfc, _ln(x, ln2), wfc)), wpr) + x
        return torch.mm(_ln(x if every else x[-1:], self.ln_f), self.lm)

    def step(self, tok: Tensor, pos: int) -> Tensor:
        b, h = self.b, self.h
        t = pos + 1
        x = torch.index_select(self.embed, 0, tok).add_(self.wpe[pos])
        for (ln1, wqkv, wo, bo, ln2, wfc, bfc, wpr, bpr, window, act), kT, v4, kT3, v3 in zip(
            self.layers, self.kT, self.v, self.kT3, self.v3
        ):
            torch.mm(_ln(x, ln1), wqkv, out=self.qkv)
            kT.select(3, pos).copy_(self.k_new)
            v4.select(2, pos).copy_(self.v_new)
            start = 0 if window is None else max(0, t - window)  # a local layer sees the last `window` keys
            a = self._attend(self.q, kT3[:, :, start:t], v3[:, start:t])  # [B * heads, 1, D]; no 1/sqrt(D)
            x = torch.addmm(bo, a.view(b, h), wo).add_(x)
            x = torch.addmm(bpr, act(torch.addmm(bfc, _ln(x, ln2), wfc)), wpr).add_(x)
        return torch.mm(_ln(x, self.ln_f), self.lm)


def _ln(x: Tensor, ln) -> Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


_FAMILIES: dict[str, type[_Decoder]] = {"LlamaForCausalLM": _Llama, "GPTNeoForCausalLM": _GPTNeo}


def _decoder(model: torch.nn.Module, batch: int, max_length: int) -> _Decoder:
    reason = unsupported_reason(model, max_length)
    if reason is not None:
        raise ValueError(f"the fast decode path does not apply: {reason}")
    return _FAMILIES[type(model).__name__](model, batch, max_length)


# --- the entry points -----------------------------------------------------------------------------


def fast_generate_group(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    group_size: int,
    max_length: int,
    top_k: int,
    temperature: float,
    greedy: bool = False,
    logprobs: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """K continuations of the prompt as [K, max_length] token ids, prompt included.

    Every position after the prompt is sampled (no early exit, no host synchronisation); a sample's
    tokens after its first end-of-text are arbitrary. `greedy` takes the argmax instead of sampling.
    The uniforms of the whole group are drawn first, in one call on the global generator.
    With `logprobs`, also [K, max_length - 1] float32: entry t is the model's log-probability (temperature 1,
    no top-k) of token t + 1 given the tokens before it, from the logits sampling computed anyway.
    """
    with torch.inference_mode():  # ~15% less per-op overhead than no_grad on the CPU
        out, lp = _generate(model, prompt_ids, group_size, max_length, top_k, temperature, greedy, logprobs)
    # ordinary tensors, which autograd may save (the scoring forward embeds the tokens)
    return (out.clone(), lp.clone()) if logprobs else out.clone()


def _generate(model, prompt_ids, group_size, max_length, top_k, temperature, greedy, logprobs=False):
    device = model.get_input_embeddings().weight.device
    prompt = prompt_ids.to(device).view(1, -1)
    p = prompt.shape[1]
    if p >= max_length:
        raise ValueError(f"the prompt has {p} tokens, max_length {max_length} leaves none to generate")
    dec = _decoder(model, group_size, max_length)
    u = None if greedy else draw_uniforms(max_length - p, group_size, 1, device=device)
    out = torch.empty(group_size, max_length, dtype=torch.long, device=device)
    out[:, :p] = prompt
    first = dec.prefill(prompt, every=logprobs)
    logits = first[-1:].expand(group_size, -1)
    lp = None
    if logprobs:
        lp = torch.empty(group_size, max_length - 1, dtype=torch.float32, device=device)
        lp[:, : p - 1] = _token_logprobs(first[:-1], prompt[0, 1:])  # the prompt's, the same in every row
    for pos in range(p, max_length):
        tok = logits.argmax(-1) if greedy else sample_from_logits(logits, top_k, temperature, u[pos - p])
        out[:, pos] = tok
        if logprobs:
            lp[:, pos - 1] = _token_logprobs(logits, tok)
        if pos + 1 < max_length:
            logits = dec.step(tok, pos)
    return out, lp


def _token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[token] per row, in float32 (as sequence_ce's cross-entropy)."""
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens.view(-1, 1)).view(-1)


def teacher_forced_logits(model: torch.nn.Module, tokens: Tensor, prompt_len: int) -> Tensor:
    """The fast path's logits [B, L - prompt_len, V] for given tokens [B, L] (the same prompt in every
    row): entry t predicts tokens[:, prompt_len + t] from the tokens before it, computed by the prefill
    and then one decode step per position, as sampling does. For checking against the model's forward."""
    b, length = tokens.shape
    with torch.inference_mode():
        dec = _decoder(model, b, length)
        rows = [dec.prefill(tokens[:1, :prompt_len]).expand(b, -1)]
        for pos in range(prompt_len, length - 1):
            rows.append(dec.step(tokens[:, pos], pos))
        logits = torch.stack(rows, 1)
    return logits.clone()


# --- the scoring forward ------------------------------------------------------------------------------


def sequence_logits(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """Logits [B, T, V] over the tokens [B, T], as `model(tokens).logits`, differentiable in the live
    parameters. For Llama alliter's own forward, the model's formulas with fewer and cheaper ops: q/k/v
    and gate/up fused into one matrix product each, RMSNorm by torch's fused kernel (bitwise the
    module's), the rotation as one complex product, and causal attention in query chunks that skip the
    key blocks the mask zeroes, with a backward laid out for MKL (`_AttentionChunk`). On the bundled
    model a forward and backward over 10 x 100 tokens takes ~55 ms instead of ~68. Any other model,
    GPT-Neo included: its own forward (GPT-Neo keeps its scores in float32 whatever the dtype, where the
    chunks' different rounding would show in float64 checks; its time goes to the output layer anyway)."""
    if type(model).__name__ == "LlamaForCausalLM" and unsupported_reason(model) is None:
        return _llama_sequence(model, tokens)
    return model(tokens).logits


_CHUNK = 32  # at most this many queries per attention chunk (T=100: four chunks of 25)


def _causal_attention(q: Tensor, k: Tensor, v: Tensor, scale: float, window: int | None) -> Tensor:
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
    [D x T] @ [T x R] when D is as small as Llama-260K's 8 (the same products run 2x faster in all)."""

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
        grad_s = torch._softmax_backward_data(grad_p.to(p.dtype), p, -1, p.dtype) * ctx.scale
        grad_k_t = torch.bmm(q.transpose(1, 2), grad_s.to(q.dtype))  # [N, D, Tk]
        grad_q = torch.bmm(k_t, grad_s.transpose(1, 2).to(q.dtype)).transpose(1, 2)  # [N, R, D]
        return grad_q, grad_k_t, grad_v_t, None, None


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
        x = x + a.o_proj(_causal_attention(q, k, v, a.scaling, None))
        w_gu = torch.cat([m.gate_proj.weight, m.up_proj.weight])
        gate, up = F.linear(_rms_norm(x, layer.post_attention_layernorm), w_gu).chunk(2, -1)
        x = x + m.down_proj(m.act_fn(gate) * up)
    return model.lm_head(_rms_norm(x, inner.norm))
