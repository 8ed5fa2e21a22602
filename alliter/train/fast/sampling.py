"""Sampling on the device, and the decode loop over a group.

Semantics are the library's `generate(do_sample=True, top_k, temperature)`: temperature, then the top-k
filter (logits below the k-th largest set to -inf, ties kept), softmax, one categorical draw per sample
from the global torch generator. The draw is made by inverse-CDF sampling (one uniform per sample, all
of a group's uniforms drawn in one call), which is the distribution of `torch.multinomial` without its
host-side validity checks, and without its one exponential per vocabulary entry per draw (the cost of a
step for the study's 50257-token vocabulary on a CPU).
All `max_length - len(prompt)` tokens are sampled with no early exit and no host synchronisation: tokens after
a sample's first end-of-text are arbitrary, and callers cut at `alliter.train.rollout.sequence_lengths`.

Why not the library's StaticCache with `torch.compile`: the compiled decode step is compiled again per process and
per shape, i.e. per trial, and on a CPU that takes longer than a trial of the bundled model runs; this eager loop
needs no warm-up. alliter's own compiled step (`--compile`, alliter.train.fast.compiled) takes tensors only, so that
one compilation serves every trial of a process, and keeps it in a cache that later processes read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from alliter.train.fast.decoders import decoder

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
    scores = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()  # bf16 -> f32, f64 stays
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
    With `logprobs`, also [K, max_length - 1] float32 (float64 for a float64 model): entry t is the model's log-probability (temperature 1,
    no top-k) of token t + 1 given the tokens before it, from the logits sampling computed anyway.
    """
    with torch.inference_mode():  # less per-op overhead than no_grad
        out, lp = _generate(model, prompt_ids, group_size, max_length, top_k, temperature, greedy, logprobs)
    # ordinary tensors, which autograd may save (the scoring forward embeds the tokens)
    return (out.clone(), lp.clone()) if logprobs else out.clone()


def start_group(model: torch.nn.Module, prompt_ids: Tensor, group_size: int, max_length: int, greedy: bool = False):
    """What a group's decode starts from, the eager and the compiled alike: the prompt [1, p], its decoder, the
    group's uniforms (drawn first, in one call; None when greedy) and the [K, max_length] tokens, the prompt's in."""
    device = model.get_input_embeddings().weight.device
    prompt = prompt_ids.to(device).view(1, -1)
    p = prompt.shape[1]
    if p >= max_length:
        raise ValueError(f"the prompt has {p} tokens, max_length {max_length} leaves none to generate")
    dec = decoder(model, group_size, max_length)
    u = None if greedy else draw_uniforms(max_length - p, group_size, 1, device=device)
    out = torch.empty(group_size, max_length, dtype=torch.long, device=device)
    out[:, :p] = prompt
    return prompt, dec, u, out


def _generate(model, prompt_ids, group_size, max_length, top_k, temperature, greedy, logprobs=False):
    prompt, dec, u, out = start_group(model, prompt_ids, group_size, max_length, greedy)
    p, device = prompt.shape[1], prompt.device
    first = dec.prefill(prompt, every=logprobs)
    logits = first[-1:].expand(group_size, -1)
    lp = None
    if logprobs:
        lp = torch.empty(group_size, max_length - 1, dtype=torch.promote_types(first.dtype, torch.float32), device=device)
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
    """log softmax(logits)[token] per row, in float32 or float64 (as sequence_ce's cross-entropy)."""
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), -1).gather(-1, tokens.view(-1, 1)).view(-1)
