"""--compile: the fast path's steps compiled with torch.compile give the eager fast path's tokens and numbers.

Compilation costs seconds a graph with a warm Inductor cache and tens of seconds cold (the C++ compiler), so these
tests run the tiny Llama (2 layers) at one shape, K=10 rows of 40 tokens, in both dtypes: six graphs, each
compiled once per process (alliter.train.fast.compiled) and kept in alliter's Inductor cache. In float64 every
number is the eager path's to 1e-9 (LlamaRMSNorm's float32 statistics run on aten's kernels there); in float32
within float32 rounding."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from alliter.cli import AlliterError
from alliter.config import TrainConfig
from alliter.testing import build_tiny_llama, record_differences, trial_records
from alliter.train.fast import compiled, sampling
from alliter.train.fast.scoring import _rms_norm_aten_backward
from alliter.train.preflight import check_trial
from alliter.train.rloo import token_nll
from alliter.train.rollout import sample_group
from alliter.train.trainer import Trainer

K, LENGTH = 10, 40  # the one shape of every compiled graph here
PROMPT = torch.tensor([268, 294, 221, 85, 80, 79, 78, 263, 257, 73, 277])  # "Once upon a time", the tiny tokenizer's
ENDED = [LENGTH, 30, LENGTH, 12, LENGTH, 25, LENGTH, LENGTH, 19, LENGTH]  # lengths as if some samples ended early
TIGHT = dict(rtol=1e-9, atol=1e-12)


def compiles(test):
    """A test that compiles: slow (six graphs, two to five minutes compiled cold on 2 busy cores, one from the
    cache), and only where Inductor has a C++ compiler."""
    missing = shutil.which(os.environ.get("CXX") or "g++") is None
    return pytest.mark.slow(pytest.mark.skipif(missing, reason="no C++ compiler for Inductor (g++ or $CXX)")(test))


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A trial's thread count (its graphs are compiled for it), and the same sums in every test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(path: Path, dtype: torch.dtype):
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()


def _groups(model, seeds=(0, 1)) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(eager tokens, compiled tokens) of a group per seed, each from the same generator state."""
    out = []
    for seed in seeds:
        torch.manual_seed(seed)
        eager = sampling.fast_generate_group(model, PROMPT, K, LENGTH, top_k=50, temperature=1.0)
        torch.manual_seed(seed)
        out.append((eager, compiled.generate_group(model, PROMPT, K, LENGTH, top_k=50, temperature=1.0)))
    return out


def _nll_and_grads(model, tokens: torch.Tensor, compile: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """token_nll over the group (some samples as if ended early) and the gradient of a weighted sum of it."""
    lengths = torch.tensor(ENDED)
    model.zero_grad()
    nll = token_nll(model, tokens, lengths, fast=True, compile=compile)
    weights = torch.linspace(-1, 2, nll.numel(), dtype=nll.dtype).view(nll.shape)
    mask = torch.arange(1, nll.shape[1] + 1)[None, :] < lengths[:, None]
    (nll * weights * mask).sum().backward()
    return nll.detach()[:, : max(ENDED) - 1], [p.grad.clone() for p in model.parameters()]


@compiles
def test_float64_the_compiled_decode_samples_the_eager_tokens(tiny_llama):
    model = _model(tiny_llama, torch.float64)
    for eager, ours in _groups(model):
        assert torch.equal(ours, eager)
        assert len({tuple(row.tolist()) for row in ours}) == K  # ten different samples: the draw is a real one


@compiles
def test_float64_the_compiled_scoring_gives_the_eager_log_probabilities_and_gradients(tiny_llama):
    model = _model(tiny_llama, torch.float64)
    (tokens, _), = _groups(model, seeds=(3,))
    eager, eager_grads = _nll_and_grads(model, tokens, compile=False)
    ours, our_grads = _nll_and_grads(model, tokens, compile=True)
    torch.testing.assert_close(ours, eager, **TIGHT)
    for (name, _), a, b in zip(model.named_parameters(), our_grads, eager_grads):
        torch.testing.assert_close(a, b, **TIGHT, msg=name)
    assert sum(float(g.abs().sum()) for g in eager_grads) > 0
    with torch.inference_mode():  # the reference's forward: its own graph
        torch.testing.assert_close(token_nll(model, tokens, torch.tensor(ENDED), compile=True)[:, : max(ENDED) - 1],
                                   eager, **TIGHT)


@compiles
def test_float32_the_compiled_path_stays_within_float_rounding(tiny_llama):
    model = _model(tiny_llama, torch.float32)
    same = [bool((eager == ours).all(1).float().mean() >= 0.8) for eager, ours in _groups(model)]
    assert all(same)  # a row may part ways where a uniform falls within rounding of a boundary; most never do
    (tokens, _), = _groups(model, seeds=(3,))
    eager, eager_grads = _nll_and_grads(model, tokens, compile=False)
    ours, our_grads = _nll_and_grads(model, tokens, compile=True)
    torch.testing.assert_close(ours, eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(our_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@compiles
def test_a_float64_trial_with_compile_writes_the_eager_trials_records(tiny_llama, tmp_path):
    """The trainer end to end: six groups and two evaluations, the same texts, metrics and evaluations to 1e-9."""
    for compile in (False, True):
        cfg = TrainConfig(model=str(tiny_llama), dtype="float64", threads=1, max_length=LENGTH, max_generations=60,
                          snapshot_every=30, eval_samples=10, lr=3e-2, beta=1.0, compile=compile)
        trainer = Trainer(cfg, tmp_path / str(compile))
        for _ in trainer.groups():
            pass
    ours, eager = trial_records(tmp_path / "True"), trial_records(tmp_path / "False")
    for name, rows in eager.items():
        assert not record_differences(ours[name], rows), (name, record_differences(ours[name], rows)[:5])
    texts = [r["text"] for r in eager["generations.jsonl"]]
    assert len(texts) == 60 and len(set(texts)) > 50


@compiles
def test_the_cache_serves_a_later_process(tiny_llama):
    """A new process compiles nothing the cache holds: Inductor's and AOTAutograd's caches, in alliter's folder."""
    model = _model(tiny_llama, torch.float32)
    with torch.inference_mode():
        token_nll(model, torch.zeros(K, LENGTH, dtype=torch.long), torch.full((K,), LENGTH), compile=True)
    assert os.environ[compiled.CACHE_ENV] == str(compiled.cache_dir())
    code = f"""
import json, torch
from torch._dynamo.utils import counters
from transformers import AutoModelForCausalLM
from alliter.train.fast import compiled
from alliter.train.rloo import token_nll
torch.set_num_threads({torch.get_num_threads()})
model = AutoModelForCausalLM.from_pretrained({str(tiny_llama)!r}).eval()
with torch.inference_mode():
    token_nll(model, torch.zeros({K}, {LENGTH}, dtype=torch.long), torch.full(({K},), {LENGTH}), compile=True)
print(json.dumps({{"dir": str(compiled.cache_dir()), "inductor": dict(counters["inductor"]),
                  "aot": dict(counters["aot_autograd"])}}))
"""
    env = {k: v for k, v in os.environ.items() if k != compiled.CACHE_ENV}  # alliter's folder, not an inherited one
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["dir"] == str(compiled.cache_dir())
    assert seen["aot"].get("autograd_cache_hit", 0) >= 1 and not seen["aot"].get("autograd_cache_miss")
    assert not seen["inductor"].get("fxgraph_cache_miss")


@pytest.mark.parametrize("given", [None, "elsewhere"])
def test_the_cache_folder_is_alliters_unless_the_user_names_one(tmp_path, monkeypatch, given):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if given:
        monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / given))
    else:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        monkeypatch.setenv(compiled.CACHE_ENV, default_cache_dir())  # torch writes its own default there itself
    got = compiled.cache_dir()
    if given:
        assert got == tmp_path / given
    else:  # alliter's, a folder per version of the compiled code and per instruction set
        assert got.parent == tmp_path / "xdg" / "alliter" / "inductor"
        assert got.name.endswith(f"-{torch.backends.cpu.get_cpu_capability()}") and len(got.name.split("-")[0]) == 16


# --- what needs no compilation -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_float32_norms_backward_is_autograds_bit_for_bit(dtype):
    """The compiled float64 path's RMSNorm backward (scoring._rms_norm_aten_backward) is eager autograd's, op for op:
    a torch release that changes rms_norm's formulas fails here."""
    gen = torch.Generator().manual_seed(0)
    for hidden in (32, 64, 172):
        x = torch.randn(300, hidden, dtype=dtype, generator=gen) * 2
        grad = torch.randn(300, hidden, generator=gen)
        leaf = x.clone().requires_grad_()
        F.rms_norm(leaf.float(), (hidden,), None, 1e-5).backward(grad)
        assert torch.equal(_rms_norm_aten_backward(grad, x, 1e-5), leaf.grad)


@pytest.mark.parametrize("arch", ["gpt_neo", "bfloat16"])
def test_where_compile_does_not_apply_the_eager_fast_path_runs_and_says_so(arch, tiny_gpt_neo, tiny_llama, caplog):
    path, dtype = (tiny_gpt_neo, torch.float32) if arch == "gpt_neo" else (tiny_llama, torch.bfloat16)
    model = _model(path, dtype)
    prompt = PROMPT if arch == "bfloat16" else torch.tensor([5, 17, 42, 99])
    compiled._fallbacks_logged.clear()
    with caplog.at_level(logging.WARNING, logger="alliter"):
        for _ in range(2):
            torch.manual_seed(0)
            ours = sample_group(model, prompt, K, LENGTH, 50, 1.0, [model.config.eos_token_id], compile=True)
            torch.manual_seed(0)
            assert torch.equal(ours, sampling.fast_generate_group(model, prompt, K, LENGTH, 50, 1.0))
    assert sum("--compile does not apply" in r.message for r in caplog.records) == 1


def test_compile_needs_the_fast_path():
    with pytest.raises(AlliterError, match="compile compiles the fast path"):
        TrainConfig(compile=True, fast=False).validate()


def test_the_preflight_and_the_trainer_refuse_compile_without_a_cpp_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    for check in (check_trial, lambda cfg: Trainer(cfg, tmp_path / "trial")):
        with pytest.raises(AlliterError, match="needs a C\\+\\+ compiler"):
            check(TrainConfig(compile=True))
    assert not (tmp_path / "trial").exists()
    check_trial(TrainConfig(compile=False))
    monkeypatch.delenv("CXX")
    check_trial(TrainConfig(compile=True))  # g++, here
