"""alliter's fast path: its own KV-cache decode loop and scoring forward for Llama and GPT-Neo, reading the live
parameters of the Hugging Face modules. Sampling a group is bound by per-token overhead, not arithmetic: the
library's `generate` spends most of each step in its module stack, cache bookkeeping and logits processors.

- support.py   which models it runs exactly as their own forward does (`unsupported_reason`)
- sampling.py  the library's temperature and top-k, an inverse-CDF draw, and the decode loop (`fast_generate_group`)
- decoders.py  a decode step per architecture over fixed-size key/value buffers
- scoring.py   the training forward (`sequence_logits`): Llama's own, every other model's forward
- compiled.py  Llama's decode step and scoring forward and backward compiled with torch.compile (`--compile`)

`TrainConfig.fast` (`--fast false`) turns all of it off: the library's generate and forward everywhere.
"""
