"""The GPU path: alliter's decode loop, scoring forward and RLOO update on a CUDA device, against the library
on the same device. Skipped where torch sees no GPU (CI); bench/gpu.sh runs it on a GPU machine."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alliter.testing import teacher_forced_logits
from alliter.train.fast import sampling, scoring
from alliter.config import TrainConfig
from alliter.train.rloo import leave_one_out_advantage, rloo_loss, sequence_ce
from alliter.train.rollout import sample_group, sequence_lengths
from alliter.train.trainer import Trainer
from helpers import ARCHS, arch_model as _model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _cuda_model(arch, tiny_gpt_neo, bundled_model, dtype=torch.float32):
    model, prompt = _model(arch, tiny_gpt_neo, bundled_model, dtype)
    return model.to(CUDA), prompt.to(CUDA)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_on_the_gpu_gives_the_tokens_of_generate(arch, tiny_gpt_neo, bundled_model):
    model, prompt = _cuda_model(arch, tiny_gpt_neo, bundled_model, torch.float64)  # float64: no near-ties
    fast = sampling.fast_generate_group(model, prompt, 3, 90, top_k=50, temperature=1.0, greedy=True)
    ids = prompt[None]
    lib = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_length=90,
                         eos_token_id=None, pad_token_id=0)
    assert fast.device.type == "cuda" and torch.equal(fast[0], lib[0]) and torch.equal(fast[2], fast[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_step_and_scoring_logits_match_the_library_on_the_gpu(arch, tiny_gpt_neo, bundled_model):
    model, prompt = _cuda_model(arch, tiny_gpt_neo, bundled_model)
    torch.manual_seed(0)
    tokens = sampling.fast_generate_group(model, prompt, 4, 80, top_k=50, temperature=1.0)
    p = len(prompt)
    with torch.no_grad():
        full = model(tokens).logits
        torch.testing.assert_close(teacher_forced_logits(model, tokens, p), full[:, p - 1 : -1],
                                   rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(scoring.sequence_logits(model, tokens), full, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_gradient_equals_the_per_sample_loop_on_the_gpu(arch, tiny_gpt_neo, bundled_model):
    model, prompt = _cuda_model(arch, tiny_gpt_neo, bundled_model, torch.float64)
    eos, p = model.config.eos_token_id, len(prompt)
    torch.manual_seed(1)
    tokens = sample_group(model, prompt, 6, 40, 50, 1.0, [eos], fast=True)
    tokens[1, p + 3] = eos  # one sample ends early
    lengths = sequence_lengths(tokens, p, [eos])
    advantage = leave_one_out_advantage(torch.tensor([3.0, 0.0, 5.0, 1.0, 2.0, 4.0], dtype=torch.float64, device=CUDA))
    model.zero_grad()
    rloo_loss(sequence_ce(model, tokens, lengths), advantage).backward()
    batched = [q.grad.clone() for q in model.parameters()]
    model.zero_grad()
    for i in range(len(tokens)):
        seq = tokens[i : i + 1, : lengths[i]]
        (advantage[i] * F.cross_entropy(model(seq).logits[0, :-1], seq[0, 1:])).backward()
    # relative to each gradient's norm: Llama's RMSNorm keeps its statistics in float32 (the library's does
    # too), and on the GPU torch's fused rms_norm and the module's own ops round them differently
    errors = [float((b - r).norm() / r.norm()) for b, r in zip(batched, [q.grad for q in model.parameters()])]
    print(f"{arch}: largest relative gradient difference {max(errors):.2e}")
    assert max(errors) < 1e-5, errors


def test_sampling_on_the_gpu_is_reproducible_with_a_seed(bundled_model):
    model, prompt = _cuda_model("llama", None, bundled_model)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(sample_group(model, prompt, 10, 100, 50, 1.0, [1], fast=True))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trainer_groups_on_the_gpu(tmp_path, bundled_model, dtype):
    trainer = Trainer(TrainConfig(beta=10.0, model=str(bundled_model), device="cuda", dtype=dtype), tmp_path)
    assert trainer.m.device.type == "cuda"
    first, _ = trainer.step()
    assert first["kl_penalty_mean"] == 0.0  # policy and reference agree before the first update
    for _ in range(3):
        metrics, records = trainer.step()
    assert all(math.isfinite(v) for v in metrics.values()) and len(records) == 10
    assert metrics["kl_penalty_mean"] != 0.0
