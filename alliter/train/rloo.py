"""The pieces of the RLOO update: per-token negative log-likelihoods (and entropies) and their reductions, the KL
estimates, the leave-one-out advantage, the loss, the KL-target controller; the remedies' entropy controller and
reference reset."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from alliter.train.fast import compiled
from alliter.train.fast.scoring import nll_of_logits, sequence_logits


def token_nll(model: PreTrainedModel, tokens: torch.Tensor, lengths: torch.Tensor, fast: bool = True,
              compile: bool = False) -> torch.Tensor:
    """Each target token's negative log-likelihood, [K, width - 1] (entry t: token t + 1 given the tokens before it),
    in one forward pass over the padded batch (`fast`: alliter's own forward where it applies, else the model's);
    `width` is the longest sample's length, or with `compile` (where it applies: alliter.train.fast.compiled) all
    the tokens', so that every group has one shape. Entries past a sample's length are meaningless: reduce them with a
    mask (`target_mask`)."""
    return token_scores(model, tokens, lengths, fast, compile=compile)[0]


def token_scores(model: PreTrainedModel, tokens: torch.Tensor, lengths: torch.Tensor, fast: bool = True,
                 entropy: bool = False, compile: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`token_nll`, and (`entropy`) from the same logits each position's entropy of the model's whole next-token
    distribution in nats, [K, width - 1] (entry t: the distribution token t + 1 is drawn from), else None. The
    compiled forward gives the NLLs alone: with the entropy bonus, the eager one runs."""
    if compile and not entropy and fast and compiled.applies(model, tokens.shape[1]):
        return compiled.token_nll(model, tokens), None
    width = int(lengths.max())
    forward = sequence_logits if fast else (lambda m, ids: m(ids).logits)
    logits = forward(model, tokens[:, :width])[:, :-1]
    nll = nll_of_logits(logits, tokens[:, 1:width])
    return nll, token_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32))) if entropy else None


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - sum softmax(z) z over the last dim (verl's entropy_from_logits), differentiable."""
    return torch.logsumexp(logits, -1) - (torch.softmax(logits, -1) * logits).sum(-1)


def target_mask(lengths: torch.Tensor, width: int, start: int = 1) -> torch.Tensor:
    """[K, width - 1]: True where the target token (positions 1 .. width - 1) is at `start` or after and within the
    sample's length; start 1: every token but the first (the study's), start len(prompt): the completion's."""
    positions = torch.arange(1, width, device=lengths.device)[None, :]
    return (positions >= start) & (positions < lengths[:, None])


def reduce_tokens(values: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """[K]: each sample's masked values, averaged over its tokens (mean) or summed (sum)."""
    total = (values * mask).sum(1)
    return total / mask.sum(1) if reduction == "mean" else total


def sequence_ce(model: PreTrainedModel, tokens: torch.Tensor, lengths: torch.Tensor, fast: bool = True) -> torch.Tensor:
    """Mean token cross-entropy of each sample, [K], prompt included (the study's CE).

    Equals `model(tokens[i, :lengths[i]], labels=...).loss` for each i: right padding is invisible to
    causal attention, and the targets past a sample's length are masked out.
    """
    nll = token_nll(model, tokens, lengths, fast)
    return reduce_tokens(nll, target_mask(lengths, nll.shape[1] + 1), "mean")


def kl_tokens(nll: torch.Tensor, nll_ref: torch.Tensor, estimator: str) -> torch.Tensor:
    """The per-token KL estimate (Schulman's k1, k2, k3) from the sampled tokens' log-ratio r = log pi - log pi_ref
    = nll_ref - nll: k1 = r, k2 = r^2 / 2, k3 = exp(-r) - 1 + r."""
    r = nll_ref - nll
    if estimator == "k1":
        return r
    if estimator == "k2":
        return r * r / 2
    return torch.expm1(-r) + r


def leave_one_out_advantage(rewards: torch.Tensor) -> torch.Tensor:
    """Each sample's reward minus the mean reward of the other K-1 samples."""
    k = rewards.shape[0]
    return rewards - (rewards.sum() - rewards) / (k - 1)


def normalized(advantage: torch.Tensor) -> torch.Tensor:
    """Centred and divided by the standard deviation + 1e-4, as TRL's normalize_advantages."""
    return (advantage - advantage.mean()) / (advantage.std() + 1e-4)


def kl_controller(beta: float, kl: float, target: float, horizon: int, clip: float, group_size: int) -> float:
    """The next group's beta from this group's KL estimate, as Ziegler et al. (2019, section 2.2)'s adaptive
    controller: e = clip(kl / target - 1, -clip, clip), beta <- beta * (1 + e * group_size / horizon)."""
    error = min(max(kl / target - 1.0, -clip), clip)
    return beta * (1.0 + error * group_size / horizon)


def entropy_controller(coef: float, entropy: float, target: float, step: float) -> tuple[float, bool]:
    """Skywork-OR1's adaptive entropy control (arXiv 2505.22312; EntController in their verl's core_algos.py): from a
    group's entropy, the next group's coefficient, raised by `step` while the entropy is under the target and lowered
    otherwise, never below 0 (their min_ent_coef; no ceiling here), and whether the next group's loss has the bonus
    at all: only while the entropy is under the target (their entropy_loss_enabled)."""
    under = entropy < target
    return max(coef + step if under else coef - step, 0.0), under


@torch.no_grad()
def sync_reference(reference: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    """reference <- alpha x policy + (1 - alpha) x reference, parameter by parameter (TRL's SyncRefModelCallback,
    TR-DPO's soft update); alpha 1 copies the policy."""
    for ref, live in zip(reference.parameters(), policy.parameters(), strict=True):
        if alpha == 1.0:
            ref.copy_(live)
        else:
            ref.mul_(1.0 - alpha).add_(live, alpha=alpha)


def rloo_loss(ce_policy: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """sum_i advantage_i * CE_policy_i: descending it raises the likelihood of above-baseline samples."""
    return (advantage.detach() * ce_policy).sum()
