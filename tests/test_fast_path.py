"""alliter's fast decode path against the library: tokens, logits, the sampling distribution, gradients."""

import logging

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper

from alliter.testing import teacher_forced_logits
from alliter.train import rollout
from alliter.train.fast import sampling, scoring, support
from alliter.train.rloo import leave_one_out_advantage, rloo_loss, sequence_ce
from alliter.train.rollout import sample_group, sequence_lengths

from helpers import ARCHS, LLAMA_PROMPT, arch_model as _model


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_gives_the_tokens_of_generate_including_an_early_end(arch, tiny_gpt_neo, bundled_model):
    model, prompt = _model(arch, tiny_gpt_neo, bundled_model)
    p, length = len(prompt), 90  # longer than the tiny GPT-Neo's local window of 64
    fast = sampling.fast_generate_group(model, prompt, 3, length, top_k=50, temperature=1.0, greedy=True)
    ids = prompt[None]
    lib = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_length=length,
                         eos_token_id=None, pad_token_id=0)
    assert lib.shape == (1, length) and fast.shape == (3, length) and torch.equal(fast[:, :p], prompt.expand(3, -1))
    assert torch.equal(fast[0], lib[0]) and torch.equal(fast[1], fast[0]) and torch.equal(fast[2], fast[0])

    # a sample that ends early: call a token the greedy text emits for the first time mid-way its end-of-text
    new = lib[0, p:].tolist()
    at = next(i for i in range(8, len(new)) if new[i] not in new[:i] and new[i] not in prompt.tolist())
    eos = new[at]
    ended = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_length=length,
                           eos_token_id=eos, pad_token_id=eos)
    n = int(sequence_lengths(fast, p, [eos])[0])
    assert n == p + at + 1 < length and ended.shape[1] == n  # generate stopped at its end-of-text
    assert torch.equal(fast[0, :n], ended[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_step_logits_match_the_full_forward(arch, tiny_gpt_neo, bundled_model):
    model, prompt = _model(arch, tiny_gpt_neo, bundled_model)
    torch.manual_seed(0)
    tokens = sampling.fast_generate_group(model, prompt, 4, 80, top_k=50, temperature=1.0)
    p = len(prompt)
    with torch.no_grad():
        full = model(tokens).logits[:, p - 1 : -1]
    step = teacher_forced_logits(model, tokens, p)
    # the library's own eager and sdpa attention differ by ~2.5e-5 on the bundled model's logits (|logit| < 25)
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-4)

    model64, _ = _model(arch, tiny_gpt_neo, bundled_model, torch.float64)
    with torch.no_grad():
        full64 = model64(tokens).logits[:, p - 1 : -1]
    # in float64 only GPT-Neo's attention stays in float32, as the library computes it
    tight = dict(rtol=1e-10, atol=1e-10) if arch == "llama" else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(teacher_forced_logits(model64, tokens, p), full64, **tight)


@pytest.mark.parametrize("arch", ARCHS)
def test_sequence_logits_and_their_gradient_match_the_model(arch, tiny_gpt_neo, bundled_model):
    model, _ = _model(arch, tiny_gpt_neo, bundled_model, torch.float64)
    torch.manual_seed(0)
    tokens = torch.randint(2, model.config.vocab_size, (3, 90))  # 90 > the tiny GPT-Neo's local window
    weights = torch.randn(3, 90, model.config.vocab_size, dtype=torch.float64)

    def grads(logits_fn):
        model.zero_grad()
        logits = logits_fn(tokens)
        (logits * weights).sum().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters()]

    ours, g_ours = grads(lambda t: scoring.sequence_logits(model, t))
    lib, g_lib = grads(lambda t: model(t).logits)
    if arch == "gpt_neo":  # GPT-Neo is scored by its own forward
        assert torch.equal(ours, lib) and all(torch.equal(a, b) for a, b in zip(g_ours, g_lib))
    for a, b in zip([ours, *g_ours], [lib, *g_lib]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)

    model32, _ = _model(arch, tiny_gpt_neo, bundled_model)
    with torch.no_grad():  # float32: as close as the library's own attention implementations are to each other
        ours32 = scoring.sequence_logits(model32, tokens)
        torch.testing.assert_close(ours32, model32(tokens).logits, rtol=1e-5, atol=1e-4)


def test_sampling_is_reproducible_with_a_seed(bundled_model):
    model = AutoModelForCausalLM.from_pretrained(bundled_model).eval()
    prompt = torch.tensor(LLAMA_PROMPT)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(sample_group(model, prompt, 10, 100, 50, 1.0, [1], fast=True))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert len({tuple(r.tolist()) for r in runs[0]}) == 10  # ten different stories


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_top_k_sampling_draws_from_the_library_warpers_distribution(temperature):
    torch.manual_seed(0)
    vocab, k, draws = 80, 50, 200_000
    logits = torch.randn(vocab) * 2
    order = torch.argsort(logits, descending=True)
    logits[order[[55, 60, 70]]] = logits[order[k - 1]].item()  # three ties with the k-th largest: all of them kept
    scores = logits[None] if temperature == 1 else TemperatureLogitsWarper(temperature)(None, logits[None])
    expected = torch.softmax(TopKLogitsWarper(k)(None, scores)[0], -1).double()
    kept = expected > 0
    assert int(kept.sum()) == k + 3

    tokens = sampling.sample_from_logits(logits.expand(draws, -1), k, temperature)
    counts = torch.bincount(tokens, minlength=vocab).double()
    assert counts[~kept].sum() == 0  # never a token outside the top k
    # every token's count within 5 binomial standard deviations of its expectation
    mean, sd = draws * expected, (draws * expected * (1 - expected)).sqrt()
    assert ((counts - mean).abs() <= 5 * sd + 1e-9).all()
    chi2 = ((counts[kept] - mean[kept]) ** 2 / mean[kept]).sum()
    assert chi2 < 112  # chi-square with 52 degrees of freedom: P(> 112) < 1e-5


def test_sampling_lands_on_kept_tokens_only_even_at_the_extreme_uniforms():
    logits = torch.full((4, 10), -5.0)
    logits[:, 6] = 3.0
    assert torch.equal(sampling.sample_from_logits(logits, 1, 1.0), torch.full((4,), 6))
    # the extreme uniforms land on the first and the last kept token, never on a filtered one around them
    u = torch.tensor([[0.0], [sampling._BELOW_ONE * (1 - 2**-24)], [0.5], [0.999]])
    logits = torch.tensor([[0.0, 1.0, 2.0, -1.0, 0.5, -3.0]]).expand(4, -1)
    picked = sampling.sample_from_logits(logits, 3, 1.0, u).tolist()
    assert picked[0] == 1 and picked[1] == 4 and set(picked) <= {1, 2, 4}


def test_sample_group_falls_back_to_generate_once_in_the_log(caplog):
    cfg = GPT2Config(vocab_size=64, n_positions=64, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).eval()
    assert "GPT2LMHeadModel" in support.unsupported_reason(model)
    rollout._fallbacks_logged.clear()
    with caplog.at_level(logging.WARNING, logger="alliter"):
        for _ in range(2):
            tokens = sample_group(model, torch.tensor([5, 6]), 3, 12, 50, 1.0, [0], fast=True)
            assert tokens.shape == (3, 12)
    assert sum("fast decode does not apply" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_gradient_equals_per_sample_loop_through_the_fast_path(arch, tiny_gpt_neo, bundled_model):
    """#2's equivalence, on a group sampled by the fast path (float64, two samples made to end early)."""
    model, prompt = _model(arch, tiny_gpt_neo, bundled_model, torch.float64)
    eos = model.config.eos_token_id
    p = len(prompt)
    torch.manual_seed(1)
    tokens = sample_group(model, prompt, 6, 40, 50, 1.0, [eos], fast=True)
    tokens[1, p + 3] = eos  # sample 1 ends after 4 new tokens
    tokens[3, p] = eos  # sample 3 ends at once
    lengths = sequence_lengths(tokens, p, [eos])
    assert lengths[1] == p + 4 and lengths[3] == p + 1
    advantage = leave_one_out_advantage(torch.tensor([3.0, 0.0, 5.0, 1.0, 2.0, 4.0], dtype=torch.float64))

    def batched(ce):
        model.zero_grad()
        rloo_loss(ce(model, tokens, lengths), advantage).backward()
        return [q.grad.clone() for q in model.parameters()]

    def fast_ce(model, tokens, lengths):  # sequence_ce's cross-entropy on alliter's own forward
        width = int(lengths.max())
        logits = scoring.sequence_logits(model, tokens[:, :width])[:, :-1]
        nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:width], reduction="none")
        mask = torch.arange(1, width)[None, :] < lengths[:, None]
        return (nll * mask).sum(1) / mask.sum(1)

    model.zero_grad()
    for i in range(len(tokens)):
        seq = tokens[i : i + 1, : lengths[i]]
        (advantage[i] * F.cross_entropy(model(seq).logits[0, :-1], seq[0, 1:])).backward()
    loop = [q.grad.clone() for q in model.parameters()]
    tight = dict(rtol=1e-9, atol=1e-12) if arch == "llama" else dict(rtol=1e-5, atol=1e-8)
    for ce in (sequence_ce, fast_ce):
        for b, r in zip(batched(ce), loop):
            torch.testing.assert_close(b, r, **tight)
    assert sum(float(r.abs().sum()) for r in loop) > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_bfloat16_runs_and_stays_close(arch, tiny_gpt_neo, bundled_model):
    model, prompt = _model(arch, tiny_gpt_neo, bundled_model, torch.bfloat16)
    torch.manual_seed(0)
    tokens = sampling.fast_generate_group(model, prompt, 2, 30, top_k=50, temperature=1.0)
    assert tokens.dtype == torch.long and tokens.shape == (2, 30)
    with torch.no_grad():
        full = model(tokens).logits[:, len(prompt) - 1 : -1].float()
    step = teacher_forced_logits(model, tokens, len(prompt))
    assert (step - full).abs().max() < 0.05 * full.abs().max()
    with torch.no_grad():
        seq = scoring.sequence_logits(model, tokens).float()
    assert (seq - model(tokens).logits.float()).abs().max() < 0.05 * full.abs().max()


@pytest.mark.parametrize("arch", ARCHS)
def test_sampling_logprobs_give_the_policys_cross_entropy(arch, tiny_gpt_neo, bundled_model):
    """An evaluation takes the policy's cross-entropy of its stories from the logits that sampled them: the same
    as a scoring forward's, up to an end-of-text mid-way."""
    model, prompt = _model(arch, tiny_gpt_neo, bundled_model)
    torch.manual_seed(1)
    tokens, logprobs = sampling.fast_generate_group(model, prompt, 6, 70, top_k=50, temperature=1.0, logprobs=True)
    torch.manual_seed(1)
    assert torch.equal(tokens, sampling.fast_generate_group(model, prompt, 6, 70, top_k=50, temperature=1.0))
    lengths = torch.tensor([70, 70, 40, 55, 70, 12])  # as if some ended early
    mask = torch.arange(1, 70)[None, :] < lengths[:, None]
    ce = -(logprobs * mask).sum(1) / mask.sum(1)
    with torch.no_grad():
        torch.testing.assert_close(ce, sequence_ce(model, tokens, lengths), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_the_librarys_path_trains_to_the_same_numbers(arch, tiny_gpt_neo, bundled_model, tmp_path):
    """--fast false: the library's generate and forward everywhere. Given the same groups, the RLOO updates of
    both paths agree within float tolerance, step after step (the samples themselves are another draw)."""
    from alliter.config import TrainConfig
    from alliter.train.trainer import Trainer

    model = str(tiny_gpt_neo if arch == "gpt_neo" else bundled_model)
    trainers = {fast: Trainer(TrainConfig(beta=1.0, model=model, threads=1, fast=fast, lr=1e-2, eval_samples=0,
                                          snapshot_every=0), tmp_path / str(fast)) for fast in (True, False)}
    for _ in range(4):
        tokens = trainers[True].sample()  # one group for both
        ours, _ = trainers[True].update(tokens)
        theirs, records = trainers[False].update(tokens)
        for name in ("loss", "kl_penalty_mean", "ce_policy_mean", "ce_ref_mean", "grad_norm", "raw_reward_mean"):
            assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), name
    for (name, a), b in zip(trainers[True].m.policy.named_parameters(), trainers[False].m.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
    assert trainers[True].m.policy.state_dict().keys() == trainers[False].m.policy.state_dict().keys()
    draws = {}
    for fast in (True, False, True):  # from one generator state: the fast path's draw, then generate's (another)
        torch.manual_seed(5)
        draws.setdefault(fast, []).append(trainers[fast].sample())
    assert torch.equal(draws[True][0], draws[True][1]) and draws[False][0].shape == tokens.shape
    assert not torch.equal(draws[False][0], draws[True][0])
