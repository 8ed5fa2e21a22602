"""What the tests and the benchmarks share: tiny real models, built and saved here so that nothing needs the hub,
and the digest by which the golden files pin a trial's generations."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

CORPUS = [
    "Once upon a time there was a little girl named Lily.",
    "She loved to play outside in the park with her big brown bear.",
    "One day, she saw a big red ball. Tom took the tall tree top.",
    "The happy hen hopped home. Sam saw six small snakes sleeping.",
]


def build_tiny_gpt_neo(path: Path, seed: int = 0) -> Path:
    """A randomly initialised GPT-Neo (the study's architecture) with a ~300-token byte-level BPE, saved to path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoConfig, GPTNeoForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    eos = fast.eos_token_id
    cfg = GPTNeoConfig(
        vocab_size=len(fast), max_position_embeddings=128, hidden_size=32, num_layers=2, num_heads=2,
        attention_types=[[["global", "local"], 1]], window_size=64, intermediate_size=64,
        bos_token_id=eos, eos_token_id=eos, embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
    )
    torch.manual_seed(seed)
    GPTNeoForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def texts_digest(texts: Sequence[str]) -> str:
    """SHA-256 of a trial's texts in order (tests/golden/*.json)."""
    return hashlib.sha256("\n\x00".join(texts).encode()).hexdigest()
