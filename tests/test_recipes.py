"""--recipe trl makes TRL 1.16.0's RLOOTrainer update on the same samples (tests/trl_reference.py runs TRL's own), and
a resumed AdamW trial continues exactly."""

from __future__ import annotations

import pytest
import torch

from alliter.config import TrainConfig
from alliter.train.rollout import decode_texts, sequence_lengths
from alliter.train.trainer import Trainer, make_optimizer
from helpers import assert_resumed_as_whole


def trl_version() -> str | None:
    try:
        import trl
    except ImportError:
        return None
    return trl.__version__


TRL = trl_version()
needs_trl = pytest.mark.skipif(TRL != "1.16.0", reason=f"needs trl 1.16.0 (the version --recipe trl matches); "
                                                       f"{'none' if TRL is None else TRL} is installed")


@needs_trl
@pytest.mark.parametrize("knobs", [{}, {"normalize_advantages": True}, {"max_grad_norm": 1e9}, {"beta": 0.0}],
                         ids=["trl", "normalized advantages", "no clip", "beta 0"])
@pytest.mark.parametrize("arch", ["llama", "gpt_neo"])
def test_recipe_trl_changes_the_weights_as_trls_rloo_trainer(arch, knobs, tmp_path, bundled_model, tiny_gpt_neo):
    """The policy is moved by one update first (so that its KL to the reference is not zero), its optimizer started
    afresh, then one group is sampled and both updates are made on it: alliter's and TRL's (from the moved policy's
    folder, with the original as its reference). AdamW's epsilon is 1 in both: its first step is then
    lr x g / (|g| + 1), nearly linear in the gradient, so every part of it shows; with TRL's 1e-8 it would be
    lr x sign(g), blind to anything that rescales the gradient (tests/trl_reference.py)."""
    from trl_reference import trl_one_step

    model = bundled_model if arch == "llama" else tiny_gpt_neo
    cfg = TrainConfig(**{"beta": 0.05, **knobs}, recipe="trl", model=str(model), lr=1e-2, adam_epsilon=1.0,
                      threads=1, max_generations=100, eval_samples=0, snapshot_every=0, dtype="float64")
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.step()
    trainer.optimizer = make_optimizer(trainer.m.policy, trainer.cfg)  # TRL's step is its first
    trainer.m.policy.save_pretrained(tmp_path / "moved")
    trainer.m.tokenizer.save_pretrained(tmp_path / "moved")
    before = {k: v.clone() for k, v in trainer.m.policy.state_dict().items()}

    tokens = trainer.sample()
    prompt_len = len(trainer.prompt_ids)
    lengths = sequence_lengths(tokens, prompt_len, trainer.m.eos_ids)
    completions = [tokens[i, prompt_len : lengths[i]].tolist() for i in range(len(tokens))]
    rewards = trainer.reward(decode_texts(trainer.m.tokenizer, tokens, lengths))
    metrics, _ = trainer.update(tokens)
    assert cfg.beta == 0.0 or metrics["kl_completion_sum_mean"] != 0.0  # the KL is in play

    theirs = trl_one_step(str(tmp_path / "moved"), cfg.prompt, completions, rewards, beta=trainer.cfg.beta,
                          learning_rate=trainer.cfg.lr, max_grad_norm=trainer.cfg.max_grad_norm,
                          normalize_advantages=trainer.cfg.normalize_advantages, adam_epsilon=1.0,
                          ref_model_dir=str(model), dtype="float64", work_dir=str(tmp_path / "trl"))
    mine = trainer.m.policy.state_dict()
    step = torch.cat([(mine[k] - before[k]).flatten() for k in mine])
    trl_step = torch.cat([(theirs[k] - before[k]).flatten() for k in mine])
    # the two steps agree to 1e-4 of their size, and every weight to 1e-4 of the learning rate (the two implementations
    # sum in other orders; AdamW's step scales each element's to about lr). In float64, as the goldens: in float32
    # one weight of 2048 was 1.04e-6 apart under AVX2 kernels, within the bound under AVX-512.
    assert float((step - trl_step).norm() / trl_step.norm()) < 1e-4
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=1e-4 * cfg.lr, msg=lambda m: f"{name}: {m}")


def test_a_resumed_adamw_trial_equals_an_uninterrupted_one(tmp_path, tiny_gpt_neo):
    """The optimizer's state (AdamW's moments and step) is in the checkpoint: a trial interrupted after 3 groups and
    resumed writes the same records as one never interrupted."""
    cfg = TrainConfig(beta=0.1, model=str(tiny_gpt_neo), optimizer="adamw", max_grad_norm=1.0, lr=1e-3, threads=1,
                      max_generations=60, eval_samples=5, snapshot_every=20)
    whole = Trainer(cfg, tmp_path / "whole")
    for _ in whole.groups():
        pass
    first = Trainer(cfg, tmp_path / "part")
    for metrics in first.groups():
        if metrics["group"] == 2:
            first.save_checkpoint(tmp_path / "part" / "checkpoint.pt")
            break
    first.close()
    resumed = Trainer(cfg, tmp_path / "part")
    resumed.load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert resumed.optimizer.state_dict()["state"]  # AdamW's moments came back
    for _ in resumed.groups():
        pass
    metrics = assert_resumed_as_whole(tmp_path / "part", tmp_path / "whole")
    assert metrics[-1]["grad_norm_clipped"] <= 1.0


def test_each_remedy_is_named_in_the_update_s_words_and_the_hparams():
    """The sweep's header, the report and a model card say which remedies a trial ran with (describe_recipe), and
    TensorBoard's HParams dashboard has a column for each of their knobs; the default names none."""
    from alliter.train.trainer import HPARAMS

    remedies = {"entropy_coef": 0.01, "entropy_target": 2.0, "entropy_coef_step": 1e-4, "darling": True,
                "darling_memory": 3, "ref_sync_every": 200, "ref_sync_alpha": 0.5}
    assert set(remedies) <= set(HPARAMS)
    default = TrainConfig(beta=1.0).resolved().describe_recipe()
    assert not any(word in default for word in ("entropy bonus", "DARLING", "reference reset"))
    words = {
        "entropy bonus": ({"entropy_coef": 0.01}, "an entropy bonus of 0.01 x the policy's token-mean entropy"),
        "adaptive": ({"entropy_target": 2.0, "entropy_coef_step": 1e-4}, "an entropy bonus, its coefficient from 0 "
                     "moved by 0.0001 a group toward an entropy of 2 nats per token (Skywork-OR1)"),
        "darling": ({"darling": True, "darling_memory": 3}, "each raw reward x its diversity among its group and the 3 "
                    "groups before (DARLING, topic words)"),
        "resets": ({"ref_sync_every": 200}, "the KL's reference reset to the policy every 200 generations"),
        "soft resets": ({"ref_sync_every": 200, "ref_sync_alpha": 0.5}, "the KL's reference reset to 0.5 x the policy "
                        "+ 0.5 x itself every 200 generations"),
    }
    for knobs, said in words.values():
        described = TrainConfig(beta=1.0, **knobs).resolved().describe_recipe()
        assert described.startswith(default) and f"; {said}" in described
