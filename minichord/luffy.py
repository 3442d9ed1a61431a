"""LUFFY (Yan et al. 2025, "Learning to Reason under Off-Policy Guidance"), the mixed-policy
baseline of the CHORD paper, in one place. It differs from GRPO + SFT in four ways:

1. Mixing: each group holds G - 1 rollouts of a prompt and 1 expert trace of the same prompt;
   the trace counts as reward 1 (`mixed_group_advantages`).
2. Advantage: A = R - mean(R) over the mixed group, without dividing by the std.
3. Normalisation: one token-mean over all tokens of the batch, on-policy and expert together
   (`coefficients`), instead of CHORD's (1 - mu) / N_on and mu / N_exp.
4. Token losses (`onpolicy_loss`, `expert_loss`), with r_t = exp(clamp(logp_t - old_logp_t, -c_r, c_r)):
       on-policy:  l_t = -A_t r_t                        (no PPO clip)
       expert:     l_t = -A_t f(p_t),  f(p) = p / (p + gamma)   (policy shaping)
   d f / d logp = p gamma / (p + gamma)^2: unlikely expert tokens get a far larger gradient
   than under plain importance weighting (f(p) = p).

The trainer applies (1)-(3) for the method luffy; (4) runs in `losses.chord_loss` (spec.luffy) and the kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from minichord.losses import TokenLossSpec, group_advantages


def mixed_group_advantages(rollout_rewards: Tensor) -> Tensor:
    """rollout_rewards [B, G-1] -> advantages [B, G]; column G-1 is the expert trace (reward 1)."""
    expert_reward = torch.ones(rollout_rewards.shape[0], 1, dtype=rollout_rewards.dtype)  # [B, 1]
    return group_advantages(torch.cat([rollout_rewards, expert_reward], dim=1), scale_by_std=False)


def coefficients(is_expert: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """One token-mean over every token of the batch: coef_t = 1 / max(1, N). [N] -> [N]."""
    return torch.full(is_expert.shape, 1.0 / max(1, is_expert.numel()), dtype=dtype, device=is_expert.device)


def onpolicy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, spec: TokenLossSpec) -> tuple[Tensor, Tensor]:
    """l_t = -A_t r_t, no PPO clip (all [N]). Returns (l, clipped: only where the log-ratio clamp hits)."""
    log_ratio = logp - old_logp.to(logp.dtype)  # [N]
    ratio = torch.exp(log_ratio.clamp(-spec.log_ratio_clamp, spec.log_ratio_clamp))  # [N]
    return -adv.to(logp.dtype) * ratio, (log_ratio.abs() > spec.log_ratio_clamp).detach()


def expert_loss(logp: Tensor, adv: Tensor, spec: TokenLossSpec) -> Tensor:
    """l_t = -A_t f(p_t), f(p) = p / (p + gamma) (all [N]); the gradient flows through p."""
    p = logp.exp()  # [N]
    return -adv.to(logp.dtype) * p / (p + spec.luffy_gamma)
