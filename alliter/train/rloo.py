"""The pieces of the RLOO loss: per-sample cross-entropy, leave-one-out advantage, loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from alliter.train.fast.scoring import sequence_logits


def sequence_ce(model: PreTrainedModel, tokens: torch.Tensor, lengths: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Mean token cross-entropy of each sample, [K], in one forward pass over the padded batch (`fast`: alliter's
    own forward where it applies, else the model's).

    Equals `model(tokens[i, :lengths[i]], labels=...).loss` for each i: right padding is invisible to
    causal attention, and the targets past a sample's length are masked out.
    """
    width = int(lengths.max())
    forward = sequence_logits if fast else (lambda m, ids: m(ids).logits)
    logits = forward(model, tokens[:, :width])[:, :-1]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 -> f32, f64 stays
    k, n, vocab = logits.shape
    # over the vocabulary as the last, contiguous dim: several times faster than over transposed logits
    nll = F.cross_entropy(logits.reshape(k * n, vocab), tokens[:, 1:width].reshape(k * n), reduction="none")
    mask = target_mask(lengths, width)
    return (nll.view(k, n) * mask).sum(1) / mask.sum(1)


def target_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """[K, width - 1]: True where a sample's next token (positions 1 .. width - 1) is within its length."""
    return torch.arange(1, width, device=lengths.device)[None, :] < lengths[:, None]


def leave_one_out_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """Each sample's reward minus the mean reward of the other K-1 samples."""
    k = rewards.shape[0]
    return rewards - (rewards.sum() - rewards) / (k - 1)


def kl_controller(beta: float, kl: float, target: float, horizon: int, clip: float, group_size: int) -> float:
    """The next group's beta from this group's per-token KL estimate, as Ziegler et al. (2019, section 2.2)'s
    adaptive controller: e = clip(kl / target - 1, -clip, clip), beta <- beta * (1 + e * group_size / horizon)."""
    error = min(max(kl / target - 1.0, -clip), clip)
    return beta * (1.0 + error * group_size / horizon)


def rloo_loss(ce_policy: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """sum_i advantage_i * CE_policy_i: descending it raises the likelihood of above-baseline samples."""
    return (advantage.detach() * ce_policy).sum()
