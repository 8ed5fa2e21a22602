"""A decode step per architecture: the live parameters arranged for one token per row, and fixed-size key/value
buffers, so that a step is a handful of tensor ops per layer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from alliter.train.fast.scoring import causal_attention
from alliter.train.fast.support import unsupported_reason

_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


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
            a = causal_attention(q, k.unsqueeze(0), v.unsqueeze(0), 1.0, None)  # the scale is in q
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
            a = causal_attention(q.float()[None], k.float()[None], v[None], 1.0, window)[0]  # [P, heads * D]
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


FAMILIES: dict[str, type[_Decoder]] = {"LlamaForCausalLM": _Llama, "GPTNeoForCausalLM": _GPTNeo}


def decoder(model: torch.nn.Module, batch: int, max_length: int) -> _Decoder:
    """A decode state of `batch` rows for a model the fast path supports (ValueError for one it does not)."""
    reason = unsupported_reason(model, max_length)
    if reason is not None:
        raise ValueError(f"the fast decode path does not apply: {reason}")
    return FAMILIES[type(model).__name__](model, batch, max_length)
