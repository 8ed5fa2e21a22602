"""The fast path's steps compiled (`TrainConfig.compile`, `--compile`): torch.compile with Inductor, which on a CPU
generates C++ for the fused elementwise work and calls the BLAS for the matrix products.

- `llama_step`: one decode step of every layer, the output layer and the top-k draw, as one graph with static shapes:
  keys and values in buffers of `max_length` positions, attended through a mask; the position a tensor; the token,
  the position, the output row and the caches updated in place. The uniforms are drawn before the loop, as the
  eager loop draws them (one call on the global generator), so both paths sample with the same numbers.
- `llama_token_nll`: the scoring forward (`scoring.llama_logits`) and the cross-entropy, over all `max_length`
  tokens whatever the group's longest sample (entries past a sample's end are masked by the caller, as always);
  its backward is compiled by AOTAutograd with it. The attention chunks, and a float64 model's RMSNorm statistics
  (float32, as LlamaRMSNorm's), are custom operators that run eager's own kernels inside the graph (scoring.py).

Shapes are fixed per trial (group size, max_length, the model's shape and dtype), and the compiled functions take
tensors and numbers only, never a module: one compilation serves every trial of a sweep in a process (Tune reuses a
trial's worker), and Inductor's cache (`cache_dir()`) serves later processes and runs. Llama in float32 and float64;
anything else keeps the eager fast path, and the log says so once.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from alliter.train.fast.sampling import sample_from_logits, start_group
from alliter.train.fast.scoring import llama_inputs, llama_logits, nll_of_logits, rms_norm_float32
from alliter.train.fast.support import unsupported_reason

log = logging.getLogger("alliter")

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # Inductor's own variable: set, it wins over alliter's folder


def cache_dir() -> Path:
    """Where the compiled code is kept: $TORCHINDUCTOR_CACHE_DIR if the user set it, else alliter's folder under the
    user's cache, ($XDG_CACHE_HOME or ~/.cache)/alliter/inductor/SOURCE-CPU, shared by every trial and run on this
    machine (Inductor's own default is a folder of /tmp, which a reboot empties). SOURCE is a digest of this file and
    scoring.py: Inductor's keys hold the graphs, not what alliter's custom operators promise of their outputs. CPU is
    the kernels' instruction set (AVX512, AVX2, DEFAULT; ATEN_CPU_CAPABILITY picks another): code compiled for one
    and loaded for another from one folder gave wrong tokens here (torch 2.13), so each has its own."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    given = os.environ.get(CACHE_ENV)
    if given and os.path.abspath(given) != os.path.abspath(default_cache_dir()):  # torch sets its default there too
        return Path(given)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "alliter" / "inductor"
    return base / f"{_SOURCE}-{torch.backends.cpu.get_cpu_capability()}"


def _digest(*names: str) -> str:
    return hashlib.sha256(b"".join((Path(__file__).parent / name).read_bytes() for name in names)).hexdigest()[:16]


_SOURCE = _digest("compiled.py", "scoring.py")  # read once: a process keeps one folder


_compiled: dict[str, Callable] = {}
_fallbacks_logged: set[str] = set()


def compiled(fn: Callable) -> Callable:
    """`fn` compiled once per process: one graph (fullgraph), static shapes, Inductor's cache in `cache_dir()`."""
    if fn.__name__ not in _compiled:
        os.environ[CACHE_ENV] = str(cache_dir())  # read by Inductor when it first compiles
        # cpp_wrapper: the graph's calls made from C++, not Python: a decode step is a hundred small calls (a group's
        # decode took 47 ms of CPU instead of 57 here, and its cold compilation less time)
        _compiled[fn.__name__] = torch.compile(fn, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
    return _compiled[fn.__name__]


def compile_reason(model: torch.nn.Module, max_length: int | None = None) -> str | None:
    """None when the compiled path applies to this model, else why not (the eager fast path runs instead)."""
    reason = unsupported_reason(model, max_length)
    if reason is None and type(model).__name__ != "LlamaForCausalLM":
        reason = f"{type(model).__name__} (alliter compiles Llama's steps only)"
    dtype = model.get_input_embeddings().weight.dtype
    if reason is None and dtype not in (torch.float32, torch.float64):
        reason = f"dtype {dtype} (alliter compiles float32 and float64)"
    return reason


def applies(model: torch.nn.Module, max_length: int | None = None) -> bool:
    """Whether the compiled path applies; where it does not, the log says why, once per process."""
    reason = compile_reason(model, max_length)
    if reason is not None and reason not in _fallbacks_logged:
        _fallbacks_logged.add(reason)
        log.warning("--compile does not apply (%s); the eager fast path runs instead", reason)
    return reason is None


# --- sampling ----------------------------------------------------------------------------------------------------


def generate_group(model: torch.nn.Module, prompt_ids: Tensor, group_size: int, max_length: int, top_k: int,
                   temperature: float) -> Tensor:
    """K continuations of the prompt as [K, max_length] token ids, as `sampling.fast_generate_group` samples them
    (the same uniforms, the same prefill and first draw), each later step one call of the compiled `llama_step`."""
    with torch.inference_mode():
        prompt, dec, u, out = start_group(model, prompt_ids, group_size, max_length)
        p, device = prompt.shape[1], prompt.device
        tok = sample_from_logits(dec.prefill(prompt)[-1:].expand(group_size, -1), top_k, temperature, u[0])
        out[:, p] = tok
        # the uniforms by the position of the token they draw, and the prefill's keys and values in static buffers
        u_at = u.new_zeros(max_length, group_size, 1)
        u_at[p:] = u
        keys = [torch.zeros_like(kT) for kT in dec.kT]  # zeros: a masked position must weigh a value by 0, not NaN
        values = [torch.zeros_like(kT) for kT in dec.kT]
        for k, v, kT, v_eager in zip(keys, values, dec.kT, dec.v):
            k[..., :p] = kT[..., :p]
            v[..., :p] = v_eager[:, :, :p].transpose(2, 3)
        weights = torch.cat([w.reshape(-1) for layer in dec.layers for w in layer])  # each [in, out], flat
        rope = torch.stack([dec.cis.real, dec.cis.imag])
        pos = torch.tensor([p], device=device)
        step = compiled(llama_step)
        for _ in range(max_length - 1 - p):
            step(tok, pos, out, u_at, keys, values, weights, dec.embed, dec.lm, rope, dec.c, hidden=dec.h,
                 n_kv=dec.n_kv, g=dec.g, d=dec.d, inter=dec.gate.shape[1], top_k=top_k, temperature=temperature,
                 eps=dec.eps)
    return out.clone()


def llama_step(tok: Tensor, pos: Tensor, out: Tensor, u_at: Tensor, keys: list[Tensor], values: list[Tensor],
               weights: Tensor, embed: Tensor, lm: Tensor, rope: Tensor, c: Tensor, *, hidden: int, n_kv: int, g: int,
               d: int, inter: int, top_k: int, temperature: float, eps: float) -> None:
    """The token at `pos` [1] of every row through every layer (`decoders._Llama.step`'s formulas), the next token
    drawn with the uniforms of position pos + 1: written to `tok` [B] and `out` [B, max_length], each layer's key
    and value written at pos, and `pos` advanced.

    `keys` and `values` hold a layer's each as [B, Hkv, D, max_length] (the products run along positions; one
    tensor each, so that a position is written in place); `weights` the layers' matrices of `_Llama` (fused,
    folded, each [in, out] and contiguous, which MKL multiplies faster than its transpose for 10 rows), flat; `rope`
    its rotation factors as [cos, sin] of [max_length, Hkv, g + 1, D/2]; `c` its RMSNorm constant. Positions after
    pos are masked out of the attention, so that every step has the same shapes."""
    b, length = tok.shape[0], keys[0].shape[-1]
    n_qk = n_kv * (g + 1)
    x = embed.index_select(0, tok)
    cos, sin = rope.index_select(1, pos).unbind(0)  # [1, Hkv, g + 1, D/2] each
    later = torch.arange(length, device=tok.device) > pos  # the positions not written yet
    shapes = [(hidden, (n_qk + n_kv) * d), (n_kv * g * d, hidden), (hidden, 2 * inter), (inter, hidden)]
    sizes = [n * m for n, m in shapes]
    per_layer = sum(sizes)

    def norm(x: Tensor) -> Tensor:  # _Llama._norm
        if x.dtype == torch.float32:
            return x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), c)
        return rms_norm_float32(x, eps).to(x.dtype)

    for i, (k_cache, v_cache) in enumerate(zip(keys, values)):
        flat = weights[i * per_layer : (i + 1) * per_layer].split(sizes)
        wqkv, wo, wgu, wd = (w.view(shape) for w, shape in zip(flat, shapes))
        qkv = norm(x) @ wqkv
        re, im = qkv[:, : n_qk * d].view(b, n_kv, g + 1, d // 2, 2).unbind(-1)
        rot = torch.stack([re * cos - im * sin, re * sin + im * cos], -1).view(b, n_kv, g + 1, d)
        k_cache.index_copy_(3, pos, rot[:, :, g, :, None])
        v_cache.index_copy_(3, pos, qkv[:, n_qk * d :].view(b, n_kv, d, 1))
        q = rot[:, :, :g]  # [B, Hkv, g, D]: query head h reads key/value head h // g; the scale is in q
        s = (q[..., None] * k_cache[:, :, None]).sum(3).masked_fill(later, float("-inf"))  # [B, Hkv, g, max_length]
        e = torch.exp(s - s.amax(-1, keepdim=True))
        a = (e[:, :, :, None] * v_cache[:, :, None]).sum(-1) / e.sum(-1, keepdim=True)  # [B, Hkv, g, D]
        x = x + a.reshape(b, n_kv * g * d) @ wo
        gu = norm(x) @ wgu
        x = x + (F.silu(gu[:, :inter]) * gu[:, inter:]) @ wd
    nxt = sample_from_logits(norm(x) @ lm, top_k, temperature, u_at.index_select(0, pos + 1)[0])
    tok.copy_(nxt)
    out.index_copy_(1, pos + 1, nxt[:, None])
    pos.add_(1)


# --- scoring -----------------------------------------------------------------------------------------------------


def token_nll(model: torch.nn.Module, tokens: Tensor) -> Tensor:
    """`alliter.train.rloo.token_nll` through the compiled forward, over all the tokens: [K, max_length - 1],
    differentiable in the live parameters where grad mode is on."""
    inputs = llama_inputs(model, tokens.shape[1])
    return compiled(llama_token_nll)(tokens, **inputs)


def llama_token_nll(tokens: Tensor, **inputs) -> Tensor:
    """Each target token's negative log-likelihood, [K, T - 1], from `scoring.llama_logits`."""
    return nll_of_logits(llama_logits(tokens, **inputs)[:, :-1], tokens[:, 1:])
