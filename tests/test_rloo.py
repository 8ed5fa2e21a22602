"""The batched RLOO update against the per-sample reference loop of the study, and each knob against its
definition."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from alliter.train.rloo import leave_one_out_advantage, rloo_loss, sequence_ce
from alliter.train.rollout import sample_group, sequence_lengths


def test_leave_one_out_advantage_is_reward_minus_mean_of_the_others():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0], dtype=torch.float64)
    expected = torch.tensor([r[i] - (r.sum() - r[i]) / 3 for i in range(4)])
    assert torch.allclose(leave_one_out_advantage(r), expected.double())
    assert torch.allclose(leave_one_out_advantage(torch.full((10,), 7.0)), torch.zeros(10))


def _group_with_early_ends(model, prompt_len, eos, max_length=40, k=6):
    torch.manual_seed(1)
    prompt = torch.randint(2, model.config.vocab_size, (prompt_len,))
    prompt[0] = eos if prompt_len == 5 else prompt[0]  # the Llama prompt starts with its end-of-text
    tokens = sample_group(model, prompt, k, max_length, top_k=50, temperature=1.0, eos_ids=[eos], fast=False)
    tokens[1, prompt_len + 3] = eos  # sample 1 ends after 4 new tokens
    tokens[3, prompt_len] = eos  # sample 3 ends at once
    return tokens, sequence_lengths(tokens, prompt_len, [eos])


@pytest.mark.parametrize("arch", ["gpt_neo", "llama"])
def test_batched_gradient_equals_per_sample_loop_in_float64(arch, tiny_gpt_neo, bundled_model):
    path = tiny_gpt_neo if arch == "gpt_neo" else bundled_model
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    eos = model.config.eos_token_id
    prompt_len = 5 if arch == "llama" else 4
    tokens, lengths = _group_with_early_ends(model, prompt_len, eos)
    assert lengths[1] == prompt_len + 4 and lengths[3] == prompt_len + 1
    rewards = torch.tensor([3.0, 0.0, 5.0, 1.0, 2.0, 4.0], dtype=torch.float64)
    advantage = leave_one_out_advantage(rewards)

    model.zero_grad()
    rloo_loss(sequence_ce(model, tokens, lengths), advantage).backward()
    batched = [p.grad.clone() for p in model.parameters()]

    def per_sample_loop(score):
        model.zero_grad()
        for i in range(len(tokens)):
            seq = tokens[i : i + 1, : lengths[i]]
            (advantage[i] * score(seq)).backward()
        return [p.grad.clone() for p in model.parameters()]

    # the study's scoring; the library's loss casts logits to float32, so float32 precision at best
    with_labels = per_sample_loop(lambda seq: model(seq, labels=seq).loss)
    # the same cross-entropy kept in float64
    in_float64 = per_sample_loop(lambda seq: F.cross_entropy(model(seq).logits[0, :-1], seq[0, 1:]))

    # GPT-Neo computes its attention scores in float32 whatever the dtype, Llama stays in float64
    tight = dict(rtol=1e-9, atol=1e-12) if arch == "llama" else dict(rtol=1e-5, atol=1e-8)
    for b, r64, r32 in zip(batched, in_float64, with_labels):
        torch.testing.assert_close(b, r64, **tight)
        torch.testing.assert_close(b, r32, rtol=1e-4, atol=1e-6)
    assert sum(float(r.abs().sum()) for r in in_float64) > 0


def test_sequence_ce_masks_everything_after_the_first_end(tiny_gpt_neo):
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt_neo, dtype=torch.float64).eval()
    eos = model.config.eos_token_id
    tokens, lengths = _group_with_early_ends(model, 4, eos)
    changed = tokens.clone()
    changed[1, lengths[1]:] = (changed[1, lengths[1]:] + 7) % model.config.vocab_size  # garbage after the end
    with torch.no_grad():
        assert torch.equal(sequence_ce(model, tokens, lengths), sequence_ce(model, changed, lengths))


# --- the knobs, against hand-computed values and an independent per-sample loop ---------------------------------


def test_kl_estimators_and_reductions_by_hand():
    from alliter.train.rloo import kl_tokens, reduce_tokens, target_mask

    nll, nll_ref = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[1.5, 1.0, 0.5]])  # log-ratio r = 0.5, -1, 0
    torch.testing.assert_close(kl_tokens(nll, nll_ref, "k1"), torch.tensor([[0.5, -1.0, 0.0]]))
    torch.testing.assert_close(kl_tokens(nll, nll_ref, "k2"), torch.tensor([[0.125, 0.5, 0.0]]))
    k3 = [float(torch.tensor(-0.5).exp()) - 1 + 0.5, float(torch.tensor(1.0).exp()) - 1 - 1, 0.0]
    torch.testing.assert_close(kl_tokens(nll, nll_ref, "k3"), torch.tensor([k3]))
    # a sample of 4 tokens, 2 of them the prompt's: targets 1..3 (the study's), the completion's 2..3 (TRL's)
    lengths = torch.tensor([4])
    assert target_mask(lengths, 4).tolist() == [[True, True, True]]
    assert target_mask(lengths, 4, start=2).tolist() == [[False, True, True]]
    values = torch.tensor([[1.0, 2.0, 4.0]])
    assert reduce_tokens(values, target_mask(lengths, 4), "mean").item() == pytest.approx(7 / 3)
    assert reduce_tokens(values, target_mask(lengths, 4, start=2), "sum").item() == 6.0
    assert target_mask(torch.tensor([3]), 4).tolist() == [[True, True, False]]  # past its length: masked


def test_normalized_advantages_by_hand():
    from alliter.train.rloo import normalized

    a = torch.tensor([1.0, -1.0, 2.0, -2.0], dtype=torch.float64)
    std = (10 / 3) ** 0.5  # unbiased, as TRL's nanstd
    torch.testing.assert_close(normalized(a), a / (std + 1e-4))


def independent_update(policy, reference, tokens, lengths, prompt_len, raw, beta, cfg):
    """The update of `cfg`'s knobs written out per sample from the definitions (README, "Which recipe holds"), on a
    copy of the policy; returns (its weights after the step, the loss, the gradient norm before the clip)."""
    policy = copy.deepcopy(policy)
    params = list(policy.parameters())
    kls, ces, sums = [], [], []
    for i in range(len(tokens)):
        seq = tokens[i, : lengths[i]]
        logp = torch.log_softmax(policy(seq[None]).logits[0, :-1], -1).gather(1, seq[1:, None])[:, 0]
        with torch.no_grad():
            logp_ref = torch.log_softmax(reference(seq[None]).logits[0, :-1], -1).gather(1, seq[1:, None])[:, 0]
        r = logp - logp_ref
        tok = {"k1": r, "k2": r * r / 2, "k3": torch.exp(-r) - 1 + r}[cfg.kl_estimator]
        completion = slice(prompt_len - 1, None)  # targets from the first completion token on
        kls.append(tok.mean() if cfg.kl_reduction == "mean" else tok[completion].sum())
        ces.append(-logp.mean())
        sums.append(-logp[completion].sum())
    kl = torch.stack(kls)
    rewards = raw.clone() if cfg.kl_loss else raw - beta * kl.detach().double()
    k = len(rewards)
    advantage = torch.stack([rewards[i] - (rewards.sum() - rewards[i]) / (k - 1) for i in range(k)])
    if cfg.normalize_advantages:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-4)
    a = advantage.to(logp.dtype)
    if cfg.loss_reduction == "mean":
        loss = (a * torch.stack(ces)).sum() + (beta * kl.sum() if cfg.kl_loss else 0)
    else:
        loss = (a * torch.stack(sums)).mean() + (beta * kl.mean() if cfg.kl_loss else 0)
    loss.backward()
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    if cfg.max_grad_norm and norm > cfg.max_grad_norm:
        for p in params:
            p.grad *= cfg.max_grad_norm / (norm + 1e-6)
    with torch.no_grad():
        for p in params:
            p -= cfg.lr * p.grad
    return [p.detach() for p in params], loss.item(), norm.item()


KNOBS = [
    {},  # the study's
    {"kl_estimator": "k2"},
    {"kl_estimator": "k3", "kl_reduction": "sum"},
    {"kl_loss": True},
    {"kl_loss": True, "kl_estimator": "k3", "loss_reduction": "sum"},
    {"loss_reduction": "sum", "kl_reduction": "sum"},
    {"normalize_advantages": True},
    {"max_grad_norm": 0.05},
]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "study")
def test_each_knob_makes_the_update_its_definition_says(knobs, tmp_path, bundled_model):
    """SGD, float64, the bundled Llama (the prompt starts with <s>): alliter's batched update against the per-sample
    loop above, after one update has moved the policy away from the reference (so that the KL is not zero)."""
    from alliter.config import TrainConfig
    from alliter.train.trainer import Trainer

    cfg = TrainConfig(beta=5.0, dtype="float64", threads=1, max_generations=20, eval_samples=0, snapshot_every=0,
                      lr=0.05, **knobs)
    trainer = Trainer(cfg, tmp_path)
    trainer.step()  # the first group: the policy moves
    tokens = trainer.sample()
    lengths = sequence_lengths(tokens, len(trainer.prompt_ids), trainer.m.eos_ids)
    before = copy.deepcopy(trainer.m.policy)
    metrics, records = trainer.update(tokens)
    raw = torch.tensor([r["raw_reward"] for r in records], dtype=torch.float64)
    expected, loss, norm = independent_update(before, trainer.m.reference, tokens, lengths, len(trainer.prompt_ids),
                                              raw, 5.0, trainer.cfg)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-9)
    for got, want in zip(trainer.m.policy.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-9, atol=1e-12)
    if knobs.get("max_grad_norm"):
        assert norm > 0.05 and metrics["grad_norm_clipped"] == 0.05  # it did clip
    if knobs.get("kl_loss"):
        assert all(r["reward"] == r["raw_reward"] for r in records)  # the KL is in the loss, not the reward
