"""The CHORD loss (arXiv 2508.11408), written once, on flat per-token vectors.

    L = (1 - mu) * L_GRPO + mu * L_SFT

    L_GRPO = (1 / N_on)  * sum_{on-policy tokens t} l_t^PPO      (token-mean over the batch)
    L_SFT  = (1 / N_exp) * sum_{expert tokens t}    l_t^SFT      (token-mean over the batch)

`token_coefficients` turns the two token-means into one coefficient per token, `chord_loss` computes
sum_t coef_t * l_t. With one update per rollout batch r_t = 1, so the logged GRPO loss is -mean(A) ~ 0;
its gradient, -A_t grad logp_t, is what matters: watch the reward, not the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

EXPERT_WEIGHTINGS = ("uniform", "phi", "is")


def group_advantages(rewards: Tensor, *, scale_by_std: bool = True, eps: float = 1e-6,
                     singleton: str = "zero", unbiased: bool = True) -> Tensor:
    """GRPO group-relative advantages, rewards [n_groups, G] -> fp32 [n_groups, G].

        A_i = (R_i - mean(R)) / (std(R) + eps)     std unbiased (divides by G - 1)
        A_i = R_i - mean(R)                         with scale_by_std=False (LUFFY, Dr.GRPO)

    Equal rewards give A = 0 exactly. A group of one has no unbiased std: singleton="zero" gives
    A = 0 (one sample carries no relative signal); "official" as the official code, A = R / (1 + eps).
    unbiased=False divides by G instead (a known mistake; `minichord check` looks for it).
    """
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [n_groups, G], got shape {tuple(rewards.shape)}")
    if singleton not in ("zero", "official"):
        raise ValueError(f"singleton must be 'zero' or 'official', got {singleton!r}")
    rewards = rewards.double()  # [n_groups, G]; fp64 so that the mean of equal rewards is exact
    if rewards.numel() and not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    if rewards.shape[1] == 1:
        if singleton == "zero":
            return torch.zeros_like(rewards, dtype=torch.float32)
        return (rewards / (1.0 + eps) if scale_by_std else rewards).float()
    flat = rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)  # [n_groups, 1]
    centered = torch.where(flat, 0.0, rewards - rewards.mean(dim=1, keepdim=True))  # [n_groups, G]
    if scale_by_std:
        centered = centered / (rewards.std(dim=1, keepdim=True, unbiased=unbiased) + eps)
    return centered.float()


def zero_variance_fraction(rewards: Tensor) -> float:
    """Share of groups [n_groups, G] whose rewards are all equal (A = 0, no gradient)."""
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [n_groups, G], got shape {tuple(rewards.shape)}")
    if rewards.shape[0] == 0:
        return 0.0
    return (rewards.amax(dim=1) == rewards.amin(dim=1)).float().mean().item()


def mu_schedule(step: int, *, warmup: int, decay: int, peak: float, valley: float) -> float:
    """CHORD-mu's global SFT weight mu(step): linear warm-up W, cosine decay D.

        mu = peak * s / W                                               s < W
        mu = valley + (peak - valley) * (1 + cos(pi (s - W) / D)) / 2   W <= s < W + D
        mu = valley                                                     s >= W + D
    """
    if step < 0 or warmup < 0 or decay < 0:
        raise ValueError(f"step, warmup, decay must be >= 0, got {step}, {warmup}, {decay}")
    if not (0.0 <= peak <= 1.0 and 0.0 <= valley <= 1.0):
        raise ValueError(f"peak and valley must be in [0, 1], got {peak}, {valley}")
    if step < warmup:
        return peak * step / warmup
    if step >= warmup + decay:
        return float(valley)
    progress = (step - warmup) / decay
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class TokenLossSpec:
    """Everything that decides the per-token loss (the same for the torch and Triton paths).

    eps_low, eps_high    PPO clip range [1 - eps_low, 1 + eps_high]
    dual_clip            c > 1 bounds the loss of A < 0 tokens at -A c (None = off)
    log_ratio_clamp      clamp of logp - old_logp before exp
    expert_weighting     "uniform" (SFT) | "phi" (CHORD-phi) | "is" (SFT-IS)
    luffy, luffy_gamma   True: LUFFY's two terms instead, shaping p / (p + gamma) (minichord/luffy.py)
    entropy_coef, kl_coef  on-policy entropy bonus, k3 KL penalty to a reference policy (0 = off)
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: Optional[float] = None
    log_ratio_clamp: float = 20.0
    expert_weighting: str = "uniform"
    luffy: bool = False
    luffy_gamma: float = 0.1
    entropy_coef: float = 0.0
    kl_coef: float = 0.0

    def __post_init__(self) -> None:
        checks = [(self.expert_weighting in EXPERT_WEIGHTINGS, "expert_weighting", f"one of {EXPERT_WEIGHTINGS}"),
                  (0.0 <= self.eps_low < 1.0, "eps_low", "in [0, 1)"),
                  (0.0 <= self.eps_high < math.inf, "eps_high", "finite and >= 0"),
                  (self.dual_clip is None or 1.0 < self.dual_clip < math.inf, "dual_clip", "None or finite > 1"),
                  (0.0 < self.log_ratio_clamp < math.inf, "log_ratio_clamp", "finite and > 0"),
                  (0.0 < self.luffy_gamma < math.inf, "luffy_gamma", "finite and > 0"),
                  (0.0 <= self.entropy_coef < math.inf, "entropy_coef", "finite and >= 0"),
                  (0.0 <= self.kl_coef < math.inf, "kl_coef", "finite and >= 0")]
        for ok, name, allowed in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be {allowed}")


def token_coefficients(is_expert: Tensor, mu: float, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-token weights so that the batch loss is sum_t coef_t * l_t, is_expert [N] -> [N]:

        coef_t = (1 - mu) / N_on    on-policy tokens,  N_on  = max(1, #on-policy tokens)
        coef_t = mu / N_exp         expert tokens,     N_exp = max(1, #expert tokens)
    """
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu must be in [0, 1], got {mu}")
    expert = is_expert.bool()  # [N]
    n_exp = expert.sum().clamp(min=1).to(dtype)
    n_on = (~expert).sum().clamp(min=1).to(dtype)
    return torch.where(expert, mu / n_exp, (1.0 - mu) / n_on).to(dtype)  # [N]


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, spec: TokenLossSpec) -> tuple[Tensor, Tensor]:
    """GRPO's on-policy token loss (PPO-clip, optional dual clip), all [N]:

        r_t = exp(clamp(logp_t - old_logp_t, -c_r, c_r))                 c_r = log_ratio_clamp
        l_t = max(-A_t r_t, -A_t clip(r_t, 1 - eps_low, 1 + eps_high))
        dual clip (A_t < 0 only):  l_t = min(l_t, -A_t c)                 c = dual_clip

    Returns (l [N], clipped [N] bool): the tokens whose gradient the clipping zeroes.
    """
    log_ratio = logp - old_logp.to(logp.dtype)  # [N]
    ratio = torch.exp(log_ratio.clamp(-spec.log_ratio_clamp, spec.log_ratio_clamp))  # [N]
    adv = adv.to(logp.dtype)
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - spec.eps_low, 1.0 + spec.eps_high))  # [N]
    with torch.no_grad():
        clipped = ((adv > 0) & (ratio > 1.0 + spec.eps_high)) | ((adv < 0) & (ratio < 1.0 - spec.eps_low))
        clipped |= log_ratio.abs() > spec.log_ratio_clamp
    if spec.dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * spec.dual_clip), loss)  # [N]
        clipped = clipped | ((adv < 0) & (ratio > spec.dual_clip))
    return loss, clipped


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimator of KL(pi || pi_ref) per token: d = ref_logp - logp, kl = e^d - d - 1 >= 0."""
    d = ref_logp.to(logp.dtype) - logp  # [N]
    return torch.exp(d) - d - 1.0


def chord_loss(logp: Tensor, entropy: Optional[Tensor], is_expert: Tensor, adv: Tensor, old_logp: Tensor,
               coef: Tensor, spec: TokenLossSpec, ref_logp: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """The loss of one batch of tokens (all inputs [N]; entropy may be None without a bonus):

        L = sum_t coef_t l_t  -  entropy_coef * sum_{on-policy t} coef_t H_t
        on-policy t:  l_t = PPO-clip(logp_t, old_logp_t, A_t)  [+ kl_coef * k3(logp_t, ref_logp_t)]
        expert t:     l_t = -sg(w_t) logp_t,  p_t = exp(logp_t),  sg = stop-gradient, with
                      w_t = 1 (SFT),  p_t (1 - p_t) (CHORD-phi),  p_t (SFT-IS)
        spec.luffy:   LUFFY's unclipped on-policy term and shaped expert term (minichord/luffy.py)

    phi = p(1 - p) damps the NLL gradient of very unlikely (far off-policy) and of already known tokens.
    With coef = `token_coefficients(is_expert, mu)`, L = (1 - mu) L_GRPO + mu L_SFT. Each branch sees
    only its own tokens (others zeroed first): an overflow in one cannot become a NaN gradient via torch.where.
    Returns (L scalar, l [N], clipped [N] bool, False on expert tokens).
    """
    shapes = {tuple(t.shape) for t in (logp, is_expert, adv, old_logp, coef)}
    if len(shapes) > 1 or logp.dim() != 1:
        raise ValueError(f"logp, is_expert, adv, old_logp, coef must all be [N], got shapes {shapes}")
    if spec.kl_coef > 0.0 and ref_logp is None:
        raise ValueError("spec.kl_coef > 0 needs ref_logp (log-probs under the reference policy)")
    if spec.entropy_coef > 0.0 and entropy is None:
        raise ValueError("spec.entropy_coef > 0 needs the per-token entropy")
    expert = is_expert.bool()  # [N]
    onpolicy = ~expert

    def only(where: Tensor, values: Tensor) -> Tensor:
        return torch.where(where, values.to(logp.dtype), 0.0)  # [N]

    logp_on, old_on, adv_on = only(onpolicy, logp), only(onpolicy, old_logp), only(onpolicy, adv)
    logp_exp = only(expert, logp)
    if spec.luffy:  # LUFFY's pair of terms, see minichord/luffy.py
        from minichord import luffy
        loss_on, clipped = luffy.onpolicy_loss(logp_on, old_on, adv_on, spec)
        loss_exp = luffy.expert_loss(logp_exp, only(expert, adv), spec)
    else:
        loss_on, clipped = ppo_clip_loss(logp_on, old_on, adv_on, spec)
        p = logp_exp.detach().exp()  # [N], sg(p)
        if spec.expert_weighting == "phi":
            weight = p * (1.0 - p)  # CHORD-phi
        elif spec.expert_weighting == "is":
            weight = p  # SFT-IS ablation
        else:
            weight = torch.ones_like(p)  # plain SFT
        loss_exp = -weight * logp_exp  # [N]
    if spec.kl_coef > 0.0:
        loss_on = loss_on + spec.kl_coef * kl_k3(logp_on, only(onpolicy, ref_logp))
    loss_tok = torch.where(expert, loss_exp, loss_on)  # [N]
    coef = coef.to(logp.dtype)  # [N]
    loss = (coef * loss_tok).sum()
    if spec.entropy_coef > 0.0:
        loss = loss - spec.entropy_coef * (coef * entropy.to(logp.dtype) * onpolicy).sum()
    return loss, loss_tok, clipped & onpolicy
