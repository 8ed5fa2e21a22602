"""TRL's own RLOO update, as a reference for alliter's "--recipe trl": one optimizer step of TRL 1.16.0's
RLOOTrainer on completions we give it instead of ones it samples.

trl is imported inside trl_one_step, so that importing this module never needs it; a test that calls it should
skip when trl (1.16.0) is not installed.

What TRL 1.16.0 does with these settings (rloo_trainer.py), so that a reader of a failing comparison knows where
to look: the prompt is tokenized by the processor's plain `__call__` (special tokens added, so the Llama
tokenizer's leading <s> is kept, exactly like `tokenizer(prompt).input_ids`; checked below); every completion
token up to and including the EOS is scored, and a truncated completion counts in full; the reward is our raw
reward minus beta * sum over tokens of (log pi_old - log pi_ref), which is zero on this first step because the
policy still equals the reference; the advantage is reward minus the leave-one-out mean of the others' rewards
(optionally standardised over the batch, here the one group, with Bessel's std + 1e-4); the loss is -mean over
the K sequences of A * exp(sum logp - sum logp_old), clipped PPO-style (a no-op here, the ratio is 1); then
clip_grad_norm_ and one fused AdamW step (betas 0.9/0.999, eps 1e-8, no weight decay) at the constant learning rate.
AdamW's first step moves each weight by lr * g / (|g| + 1e-8): about lr * sign(g), so a rescaled gradient (clipping,
normalisation, reward scale) shows only where |g| is near 1e-8, and there float32 noise in g shows too.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def trl_one_step(model_dir: str, prompt: str, completion_ids: list[list[int]], raw_rewards: list[float], *,
                 beta: float, learning_rate: float, max_grad_norm: float = 1.0, normalize_advantages: bool = False,
                 adam_epsilon: float = 1e-8, ref_model_dir: str | None = None, dtype: str = "float32",
                 work_dir: str) -> dict[str, "torch.Tensor"]:
    """The policy's state_dict (on the CPU, in `dtype`) after one RLOOTrainer step on the K given completions of
    `prompt`. `ref_model_dir`: the reference's weights, where they are not the policy's (so that the KL is not zero);
    `dtype`: the policy's and the reference's (float64: the same on every CPU)."""
    import numpy as np
    import torch

    # TRL seeds Python's, NumPy's and torch's global generators (set_seed), and importing it draws from Python's:
    # leave the caller's generators as they were
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            return _one_step(model_dir, prompt, completion_ids, raw_rewards, beta=beta, learning_rate=learning_rate,
                             max_grad_norm=max_grad_norm, normalize_advantages=normalize_advantages,
                             adam_epsilon=adam_epsilon, ref_model_dir=ref_model_dir, dtype=dtype, work_dir=work_dir)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def _one_step(model_dir: str, prompt: str, completion_ids: list[list[int]], raw_rewards: list[float], *,
              beta: float, learning_rate: float, max_grad_norm: float, normalize_advantages: bool,
              adam_epsilon: float, ref_model_dir: str | None, dtype: str, work_dir: str) -> dict[str, "torch.Tensor"]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import RLOOConfig, RLOOTrainer

    k = len(completion_ids)
    if k < 2 or len(raw_rewards) != k:
        raise ValueError("RLOO needs K >= 2 completions and one raw reward per completion")
    completions = [list(map(int, ids)) for ids in completion_ids]
    rewards = [float(r) for r in raw_rewards]
    # What the caller assumes the prompt tokenizes to: the tokenizer's default call, special tokens included
    expected_prompt_ids = AutoTokenizer.from_pretrained(model_dir)(prompt).input_ids

    class GivenCompletionsRLOO(RLOOTrainer):
        def _send_telemetry(self) -> None:  # a test must not try to reach the network
            pass

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields):  # replaces model.generate
            if prompt_ids != [expected_prompt_ids] * k:
                raise AssertionError(f"TRL tokenized the prompt as {prompt_ids[0]}, not {expected_prompt_ids}")
            # TRL cuts a sampled completion just after its first EOS, so a given one may hold an EOS only at its end
            for ids in completions:
                if any(token in self.eos_token_ids for token in ids[:-1]):
                    raise ValueError(f"completion {ids} has an end-of-text token {self.eos_token_ids} before its end")
            return [list(ids) for ids in completions]

    def given_rewards(completion_ids: list[list[int]], **kwargs) -> list[float]:
        # Called once, with the completions in the order we gave them (TRL shuffles only afterwards): matching the
        # ids rather than the decoded texts is immune to two completions decoding alike
        if completion_ids != completions:
            raise AssertionError("TRL scored other completions than the given ones, or in another order")
        return rewards

    args = RLOOConfig(
        output_dir=work_dir, num_generations=k, per_device_train_batch_size=k, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, max_steps=1, max_completion_length=max(map(len, completions)),
        beta=beta, learning_rate=learning_rate, max_grad_norm=max_grad_norm, normalize_advantages=normalize_advantages,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_epsilon=adam_epsilon, temperature=1.0,
        bf16=False, fp16=False, use_cpu=True, activation_checkpointing=False,  # TRL defaults it on: only costs time
        disable_dropout=True, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
        model_init_kwargs={"dtype": getattr(torch, dtype)},  # the policy's and the reference's (TRL takes no "float64")
    )
    trainer = GivenCompletionsRLOO(model=model_dir, reward_funcs=given_rewards, args=args,
                                   train_dataset=Dataset.from_list([{"prompt": prompt}]))
    if ref_model_dir is not None and beta != 0.0:  # the weights only: TRL's own (patched) reference model stays
        trainer.ref_model.load_state_dict(AutoModelForCausalLM.from_pretrained(ref_model_dir).state_dict())
    trainer.train()
    if trainer.state.global_step != 1:
        raise AssertionError(f"TRL made {trainer.state.global_step} optimizer steps, not 1")
    return {name: t.detach().to("cpu").clone() for name, t in trainer.model.state_dict().items()}
