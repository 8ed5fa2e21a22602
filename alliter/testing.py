"""What the tests and the benchmarks share: tiny real models, built and saved here so that nothing needs the hub,
the digest by which the golden files pin a trial's generations, and the tiny sweep of tests/golden/tiny_sweep.json.

Everything here is the same on every CPU: the tiny model's weights are drawn by NumPy (torch's own normal sampler
rounds differently with AVX2, AVX-512 or neither), and the tiny sweep trains in float64."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

CORPUS = [
    "Once upon a time there was a little girl named Lily.",
    "She loved to play outside in the park with her big brown bear.",
    "One day, she saw a big red ball. Tom took the tall tree top.",
    "The happy hen hopped home. Sam saw six small snakes sleeping.",
]


def _tiny_tokenizer():
    """A ~300-token byte-level BPE trained on CORPUS, its end-of-text <|endoftext|>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def _numpy_init(model, std: float, seed: int) -> None:
    """Every matrix drawn from a normal of this std by NumPy (the same bits on every CPU); the rest as built."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.from_numpy(rng.normal(0.0, std, tuple(param.shape))))


def build_tiny_gpt_neo(path: Path, seed: int = 0) -> Path:
    """A randomly initialised GPT-Neo (the study's architecture) with a ~300-token byte-level BPE, saved to path."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    fast = _tiny_tokenizer()
    eos = fast.eos_token_id
    cfg = GPTNeoConfig(
        vocab_size=len(fast), max_position_embeddings=128, hidden_size=32, num_layers=2, num_heads=2,
        attention_types=[[["global", "local"], 1]], window_size=64, intermediate_size=64,
        bos_token_id=eos, eos_token_id=eos, embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
    )
    model = GPTNeoForCausalLM(cfg)
    _numpy_init(model, cfg.initializer_range, seed)  # GPT-Neo's own init (normal, std initializer_range)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    """A randomly initialised Llama of the bundled model's kind (grouped-query attention, head size 8, tied
    embeddings) with 2 layers of width 32 and the tiny GPT-Neo's tokenizer, saved to path: what the compiled path's
    tests compile in seconds (its compile time grows with the layers)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    fast = _tiny_tokenizer()
    eos = fast.eos_token_id
    cfg = LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, tie_word_embeddings=True,
        bos_token_id=eos, eos_token_id=eos,
    )
    model = LlamaForCausalLM(cfg)
    _numpy_init(model, 0.1, seed)  # wider than Llama's 0.02, so that the samples are not near uniform
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of a trial's texts in order (tests/golden/*.json)."""
    return hashlib.sha256("\n\x00".join(texts).encode()).hexdigest()


TINY_SWEEP_BETAS = (0.0, 1.0)


def tiny_sweep(folder: Path, model: Path) -> str:
    """Two float64 trials of the tiny GPT-Neo as the trainer writes them (folder/beta0, folder/beta1), and
    best_beta's table of them: what tests/golden/tiny_sweep.json holds (`python bench/golden.py --write-tiny`)."""
    from alliter.analyse.judge import analyse
    from alliter.analyse.report import table
    from alliter.config import TrainConfig
    from alliter.train.trainer import Trainer

    for beta in TINY_SWEEP_BETAS:
        trainer = Trainer(TrainConfig(beta=beta, model=str(model), dtype="float64", threads=1, max_generations=60,
                                      snapshot_every=20, eval_samples=10, lr=3e-3), folder / f"beta{beta:g}")
        for _ in trainer.groups():
            pass
    return table(analyse(folder))


TIMINGS = ("seconds_per_group", "generations_per_second", "seconds")  # differ from run to run


def trial_records(trial: Path) -> dict[str, list[dict]]:
    """A trial folder's generations, evaluations and metrics (but their timings), as tiny_sweep.json holds them."""
    import json

    def rows(name: str) -> list[dict]:
        lines = (trial / name).read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]

    return {name: rows(name) for name in ("generations.jsonl", "evaluations.jsonl", "metrics.jsonl")}


def record_differences(got: list[dict], want: list[dict], rel: float = 1e-9) -> list[str]:
    """Where two lists of records differ: text and integers exactly, floats by more than `rel` (float64 sums
    differ in their last bits between CPUs; a changed computation differs by far more)."""
    import math

    if len(got) != len(want):
        return [f"{len(got)} records, want {len(want)}"]
    found = []
    for i, (g, w) in enumerate(zip(got, want)):
        if g.keys() != w.keys():
            found.append(f"record {i}: fields {sorted(g)}, want {sorted(w)}")
            continue
        for key, value in w.items():
            other = g[key]
            close = (isinstance(value, float) and isinstance(other, (int, float))
                     and math.isclose(other, value, rel_tol=rel, abs_tol=rel))
            if other != value and not close:
                found.append(f"record {i}: {key} {other!r}, want {value!r}")
    return found


def teacher_forced_logits(model: Any, tokens: Any, prompt_len: int) -> Any:
    """The fast path's logits [B, L - prompt_len, V] for given tokens [B, L] (the same prompt in every
    row): entry t predicts tokens[:, prompt_len + t] from the tokens before it, computed by the prefill
    and then one decode step per position, as sampling does. For checking against the model's forward."""
    b, length = tokens.shape
    import torch

    from alliter.train.fast.decoders import decoder

    with torch.inference_mode():
        dec = decoder(model, b, length)
        rows = [dec.prefill(tokens[:1, :prompt_len]).expand(b, -1)]
        for pos in range(prompt_len, length - 1):
            rows.append(dec.step(tokens[:, pos], pos))
        logits = torch.stack(rows, 1)
    return logits.clone()
