"""The batched RLOO update against the per-sample reference loop of the study."""

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
