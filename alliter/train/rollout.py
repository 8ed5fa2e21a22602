"""Sampling a group: one batched call for all K samples, then cutting each at its first end-of-text."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from alliter.train.fast import compiled
from alliter.train.fast.sampling import fast_generate_group
from alliter.train.fast.support import unsupported_reason

log = logging.getLogger("alliter")

_fallbacks_logged: set[str] = set()  # why the fast path did not apply, each said once per process


def sequence_lengths(tokens: torch.Tensor, prompt_len: int, eos_ids: list[int]) -> torch.Tensor:
    """Length of each sample up to and including its first generated end-of-text (else all of it).

    The prompt is never searched: the bundled model's prompt starts with its end-of-text `<s>`.
    """
    generated = tokens[:, prompt_len:]
    is_eos = torch.isin(generated, torch.tensor(eos_ids, device=tokens.device))
    first = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, generated.shape[1])
    return prompt_len + first


def decode_texts(tokenizer, tokens: torch.Tensor, lengths: torch.Tensor) -> list[str]:
    """Each sample's text up to its end (special tokens, the prompt's `<s>` and the end, dropped)."""
    return tokenizer.batch_decode([t[:n] for t, n in zip(tokens, lengths)], skip_special_tokens=True)


def sample_group(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    group_size: int,
    max_length: int,
    top_k: int,
    temperature: float,
    eos_ids: list[int],
    fast: bool = True,
    logprobs: bool = False,
    compile: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
    """K sampled continuations of the prompt as [K, max_length] token ids (prompt included).

    Tokens after a sample's first end-of-text are arbitrary: callers cut at `sequence_lengths`.
    With `fast`, alliter's own KV-cache decode loop (`alliter.train.fast`) samples where it supports the
    architecture (Llama, GPT-Neo); elsewhere the library's `generate` does, and the log says so once.
    With `logprobs`, (tokens, the fast path's log-probabilities of each token after the first, or None where
    the library's generate sampled). With `compile` (and not `logprobs`), the compiled decode step where it applies
    (`alliter.train.fast.compiled`): the same draw, within float rounding.
    """
    if fast:
        reason = unsupported_reason(model, max_length)
        if reason is None:
            if compile and not logprobs and compiled.applies(model, max_length):
                return compiled.generate_group(model, prompt_ids, group_size, max_length, top_k, temperature)
            return fast_generate_group(model, prompt_ids, group_size, max_length, top_k, temperature,
                                               logprobs=logprobs)
        if reason not in _fallbacks_logged:
            _fallbacks_logged.add(reason)
            log.warning("fast decode does not apply (%s); sampling with the library's generate instead", reason)
    input_ids = prompt_ids.to(model.device).expand(group_size, -1)
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=1.0,
        max_length=max_length,
        eos_token_id=eos_ids,
        pad_token_id=eos_ids[0],
    )
    tokens = torch.nn.functional.pad(out, (0, max_length - out.shape[1]), value=eos_ids[0])  # right-padded
    return (tokens, None) if logprobs else tokens
