"""The batched RLOO update against the per-sample reference loop of the study, and each knob against its
definition."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from alliter import measures as M
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


def independent_update(policy, reference, tokens, lengths, prompt_len, raw, beta, cfg, entropy_coef=0.0,
                       diversity=None):
    """The update of `cfg`'s knobs written out per sample from the definitions (README, "Which recipe holds"), on a
    copy of the policy; returns (its weights after the step, the loss, the gradient norm before the clip, the
    group's token-mean entropy). `entropy_coef`: the bonus's coefficient in this group; `diversity`: DARLING's
    factor of each raw reward."""
    policy = copy.deepcopy(policy)
    params = list(policy.parameters())
    kls, ces, sums, entropies = [], [], [], []
    for i in range(len(tokens)):
        seq = tokens[i, : lengths[i]]
        all_logp = torch.log_softmax(policy(seq[None]).logits[0, :-1], -1)
        logp = all_logp.gather(1, seq[1:, None])[:, 0]
        with torch.no_grad():
            logp_ref = torch.log_softmax(reference(seq[None]).logits[0, :-1], -1).gather(1, seq[1:, None])[:, 0]
        r = logp - logp_ref
        tok = {"k1": r, "k2": r * r / 2, "k3": torch.exp(-r) - 1 + r}[cfg.kl_estimator]
        completion = slice(prompt_len - 1, None)  # targets from the first completion token on
        kls.append(tok.mean() if cfg.kl_reduction == "mean" else tok[completion].sum())
        ces.append(-logp.mean())
        sums.append(-logp[completion].sum())
        entropies.append(-(all_logp.exp() * all_logp).sum(-1)[completion])  # -sum p log p of each distribution
    kl = torch.stack(kls)
    task = raw if diversity is None else raw * diversity
    rewards = task.clone() if cfg.kl_loss else task - beta * kl.detach().double()
    k = len(rewards)
    advantage = torch.stack([rewards[i] - (rewards.sum() - rewards[i]) / (k - 1) for i in range(k)])
    if cfg.normalize_advantages:
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-4)
    a = advantage.to(logp.dtype)
    if cfg.loss_reduction == "mean":
        loss = (a * torch.stack(ces)).sum() + (beta * kl.sum() if cfg.kl_loss else 0)
    else:
        loss = (a * torch.stack(sums)).mean() + (beta * kl.mean() if cfg.kl_loss else 0)
    entropy = torch.cat(entropies).mean()  # over every completion token of the group at once
    loss = loss - entropy_coef * entropy
    loss.backward()
    norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params))
    if cfg.max_grad_norm and norm > cfg.max_grad_norm:
        for p in params:
            p.grad *= cfg.max_grad_norm / (norm + 1e-6)
    with torch.no_grad():
        for p in params:
            p -= cfg.lr * p.grad
    return [p.detach() for p in params], loss.item(), norm.item(), entropy.item()


KNOBS = [
    {},  # the study's
    {"kl_estimator": "k2"},
    {"kl_estimator": "k3", "kl_reduction": "sum"},
    {"kl_loss": True},
    {"kl_loss": True, "kl_estimator": "k3", "loss_reduction": "sum"},
    {"loss_reduction": "sum", "kl_reduction": "sum"},
    {"normalize_advantages": True},
    {"max_grad_norm": 0.05},
    # the remedies (issue 41): the entropy bonus, fixed and adaptive (on, and gated off by an entropy above the target)
    {"entropy_coef": 0.5},
    {"entropy_coef": 0.5, "loss_reduction": "sum", "kl_reduction": "sum"},
    {"entropy_coef": 0.5, "entropy_target": 6.0, "entropy_coef_step": 0.1},
    {"entropy_coef": 0.05, "entropy_target": 0.5, "entropy_coef_step": 0.01},
    # DARLING, with the first group in its memory; the reference reset halfway to the policy after every group
    {"darling": True},
    {"darling": True, "darling_memory": 1, "kl_loss": True},
    {"ref_sync_every": 10, "ref_sync_alpha": 0.5},
    # the over-use damping (a cap low enough to damp the bundled model's own words), with DARLING
    {"overuse_cap": 1.2, "overuse_memory": 2, "eval_samples": 50, "snapshot_every": 1000},
    {"overuse_cap": 1.2, "darling": True, "eval_samples": 50, "snapshot_every": 1000},
]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "study")
def test_each_knob_makes_the_update_its_definition_says(knobs, tmp_path, bundled_model):
    """SGD, float64, the bundled Llama (the prompt starts with <s>): alliter's batched update against the per-sample
    loop above, after one update has moved the policy away from the reference (so that the KL is not zero)."""
    from alliter.config import TrainConfig
    from alliter.train.trainer import Trainer

    cfg = TrainConfig(**{"beta": 5.0, "dtype": "float64", "threads": 1, "max_generations": 20, "eval_samples": 0,
                         "snapshot_every": 0, "lr": 0.05, **knobs})
    trainer = Trainer(cfg, tmp_path)
    if trainer.evaluating:
        trainer.evaluate()  # the unmodified model's stories: what --overuse-cap measures over-use against
    first, _ = trainer.step()  # the first group: the policy moves (and the remedies' state with it)
    tokens = trainer.sample()
    lengths = sequence_lengths(tokens, len(trainer.prompt_ids), trainer.m.eos_ids)
    before, reference = copy.deepcopy(trainer.m.policy), copy.deepcopy(trainer.m.reference)
    coef, memory = trainer.entropy_coef_applied, [t for group in trainer.darling_memory for t in group]
    recent = [t for group in trainer.overuse_memory for t in group]
    metrics, records = trainer.update(tokens)
    raw = torch.tensor([r["raw_reward"] for r in records], dtype=torch.float64)
    texts = [r["text"] for r in records]
    factor = None  # what the task reward is multiplied by: DARLING's diversity, the over-use damping
    if trainer.cfg.darling:  # the partition is alliter.measures' (its own test: by hand, below)
        factor = torch.tensor(M.darling_diversity(texts, memory), dtype=torch.float64)
        assert [r["diversity"] for r in records] == factor.tolist()
        assert len(memory) == 10 * trainer.cfg.darling_memory
    if trainer.cfg.overuse_cap:  # the ratio is alliter.measures' (its own test: by hand, below)
        ratios = M.recent_overuse(texts, recent + texts, trainer.base_texts)
        damping = torch.tensor([min(1.0, 1.2 / r) for r in ratios], dtype=torch.float64)
        assert [r["damping"] for r in records] == damping.tolist() and damping.min() < 1  # it did damp
        assert len(recent) == 10 * min(1, trainer.cfg.overuse_memory - 1)  # the first group, where it is remembered
        factor = damping if factor is None else factor * damping
    expected, loss, norm, entropy = independent_update(before, reference, tokens, lengths, len(trainer.prompt_ids), raw,
                                                       5.0, trainer.cfg, coef, factor)
    assert metrics["loss"] == pytest.approx(loss, rel=1e-9, abs=1e-12)
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-9)
    for got, want in zip(trainer.m.policy.parameters(), expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-9, atol=1e-12)
    if knobs.get("max_grad_norm"):
        assert norm > 0.05 and metrics["grad_norm_clipped"] == 0.05  # it did clip
    if knobs.get("kl_loss"):
        task = [r["raw_reward"] * r.get("diversity", 1.0) * r.get("damping", 1.0) for r in records]
        assert [r["reward"] for r in records] == pytest.approx(task, rel=1e-12)  # the KL is in the loss, not the reward
    elif "darling" in knobs or "overuse_cap" in knobs:  # raw_reward stays the task's; x the factors, + the KL term
        assert all(r["reward"] == pytest.approx(r["raw_reward"] * r.get("diversity", 1.0) * r.get("damping", 1.0)
                                                + 5.0 * r["kl_penalty"], rel=1e-12) for r in records)
        assert any(r.get("diversity", r.get("damping")) < 1 for r in records) and any(r["raw_reward"] > 0 for r in records)
    if "entropy_coef" in knobs:  # the group's entropy; the coefficient as the control left it after group 1, whose
        # entropy (the bundled model's: about 1.2 nats) was under the target 6 (a step up) and over 0.5 (the bonus off)
        assert metrics["entropy"] == pytest.approx(entropy, rel=1e-9) and 0.5 < first["entropy"] < 6
        target, start, step = knobs.get("entropy_target"), knobs["entropy_coef"], knobs.get("entropy_coef_step")
        assert coef == pytest.approx(start if target is None else start + step if target == 6 else 0.0, rel=1e-12)
    if "ref_sync_every" in knobs:
        check_reference_reset(trainer, reference, tokens, lengths, records, knobs["ref_sync_alpha"])


def check_reference_reset(trainer, reference_before, tokens, lengths, records, alpha):
    """After the group, the reference is alpha x the updated policy + (1 - alpha) x the one before (TRL's sync), and
    the records' fluency (ce_ref) is the unmodified model's, not the moving reference's."""
    assert trainer.m.original is not trainer.m.reference and trainer.ref_synced_at == 20
    for ref, old, live in zip(trainer.m.reference.parameters(), reference_before.parameters(),
                              trainer.m.policy.parameters()):
        torch.testing.assert_close(ref, alpha * live + (1 - alpha) * old, rtol=1e-12, atol=1e-15)
    original = AutoModelForCausalLM.from_pretrained(trainer.cfg.model, dtype=torch.float64).eval()
    for i, r in enumerate(records):
        seq = tokens[i : i + 1, : lengths[i]]
        with torch.no_grad():
            ce_original = F.cross_entropy(original(seq).logits[0, :-1], seq[0, 1:]).item()
            ce_reference = F.cross_entropy(reference_before(seq).logits[0, :-1], seq[0, 1:]).item()
        assert r["ce_ref"] == pytest.approx(ce_original, rel=1e-9)
        assert r["kl_penalty"] == pytest.approx(r["ce_policy"] - ce_reference, rel=1e-6, abs=1e-12)
        assert abs(ce_reference - ce_original) > 1e-6  # the reference had moved


# --- the remedies' pieces, by hand ------------------------------------------------------------------------------------


def test_recent_overuse_by_hand():
    """A text's most over-used word: the recent pool's uses per story over the unmodified model's (3 uses added)."""
    base = ["a dog ran home"] * 4 + ["the cat sat"] * 4  # 8 stories: "home" 4 uses, "tree" none
    pool = ["the tree was tall", "the tree fell", "a dog ran home", "a tree and a tree"]  # 4 stories: "tree" 4 uses
    # "tree": (4 / 4) / ((0 + 3) / 8) = 8/3; "tall": (1 / 4) / (3 / 8) = 2/3; "home": (1 / 4) / (7 / 8) = 2/7
    assert M.recent_overuse(["the tree was tall", "a dog ran home", "a cat"], pool, base) == \
        pytest.approx([8 / 3, 1.0, 1.0])


def test_darling_partition_and_diversity_by_hand():
    """Topic words: words of 4+ letters (an apostrophe inside, not counted) a story uses twice or more; two stories are
    alike when they share one; a story's diversity is the share of the others (its group's, then the memory's) that
    are not alike it."""
    a = "The tree was tall. The TREE fell."  # tree twice: {tree}; tall, fell once
    b = "A tree, a big tree house. Tom's hat."  # {tree}
    c = "Lily and Lily's dog. Lily ran."  # lily twice ("lily's" is a word of its own): {lily}
    d = "The cat sat on the mat. The cat ran."  # cat, the: under 4 letters: no topic, alike nothing
    assert [M.topic_words(t) for t in (a, b, c, d)] == [{"tree"}, {"tree"}, {"lily"}, set()]
    assert M.topic_words("It's it's don't Don't trees tree") == {"don't"}  # it's: 3 letters; trees is not tree
    assert M.alike(M.topic_words(a), M.topic_words(b)) and not M.alike(M.topic_words(a), M.topic_words(c))
    assert M.darling_diversity([a, b, c, d]) == pytest.approx([2 / 3, 2 / 3, 1, 1])
    # a memory of earlier groups' stories joins the pool: "tree tree" is alike a and b, "trees trees" alike neither
    assert M.darling_diversity([a, b, c, d], ["tree tree", "trees trees"]) == pytest.approx([3 / 5, 3 / 5, 1, 1])
    assert M.darling_diversity([a, a]) == [0.0, 0.0] and M.darling_diversity([d]) == [1.0]
    # DARLING's reward: raw reward x diversity, sample by sample
    raw = [3.0, 0.0, 5.0, 1.0]
    assert [r * v for r, v in zip(raw, M.darling_diversity([a, b, c, d]))] == pytest.approx([2.0, 0.0, 5.0, 1.0])


def test_the_entropy_controller_and_the_reference_reset_by_hand():
    from alliter.train.rloo import entropy_controller, sync_reference, token_entropy

    # Skywork-OR1: up by the step while under the target, down otherwise, never below 0; the bonus on only under it
    assert entropy_controller(0.01, 1.0, 2.0, 0.001) == (pytest.approx(0.011), True)
    assert entropy_controller(0.01, 3.0, 2.0, 0.001) == (pytest.approx(0.009), False)
    assert entropy_controller(0.01, 2.0, 2.0, 0.001) == (pytest.approx(0.009), False)  # at the target: down
    assert entropy_controller(0.0005, 3.0, 2.0, 0.001) == (0.0, False)
    # H = -sum p log p: ln 4 for four equal logits, 0 for a certain token
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, -1e4, -1e4, -1e4]], dtype=torch.float64)
    torch.testing.assert_close(token_entropy(logits), torch.tensor([4.0, 1.0], dtype=torch.float64).log())
    # TRL's sync: reference <- alpha x policy + (1 - alpha) x reference
    policy, reference = torch.nn.Linear(2, 1).double(), torch.nn.Linear(2, 1).double()
    with torch.no_grad():
        policy.weight.copy_(torch.tensor([[1.0, 2.0]])), reference.weight.copy_(torch.tensor([[3.0, -2.0]]))
    sync_reference(reference, policy, 0.25)
    torch.testing.assert_close(reference.weight, torch.tensor([[2.5, -1.0]], dtype=torch.float64))
    sync_reference(reference, policy, 1.0)
    assert torch.equal(reference.weight, policy.weight) and torch.equal(reference.bias, policy.bias)


@pytest.mark.parametrize("knobs, forwards", [({}, 2), ({"entropy_coef": 0.1}, 2), ({"ref_sync_every": 10}, 3)],
                         ids=["default", "entropy bonus", "resets"])
def test_the_remedies_add_no_policy_forward_and_the_default_no_third_model(knobs, forwards, tmp_path, monkeypatch):
    """The entropy bonus's entropies come from the scoring forward's own logits; only resets keep a third model (the
    unmodified one, for fluency), scored with a forward of its own."""
    from alliter.config import TrainConfig
    from alliter.train import rloo
    from alliter.train.trainer import Trainer

    trainer = Trainer(TrainConfig(beta=1.0, threads=1, max_generations=20, eval_samples=0, snapshot_every=0, **knobs),
                      tmp_path)
    m = trainer.m
    assert (m.original is m.reference) == ("ref_sync_every" not in knobs)
    tokens = trainer.sample()
    calls = []  # the model of each scoring forward (the fast path's own, a function of the weights: no module hook)
    forward = rloo.sequence_logits
    monkeypatch.setattr(rloo, "sequence_logits", lambda model, ids: calls.append(model) or forward(model, ids))
    trainer.update(tokens)
    assert sum(model is m.policy for model in calls) == 1 and len(calls) == forwards
