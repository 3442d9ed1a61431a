"""The reference math of CHORD (arXiv 2508.11408), on flat per-token vectors.

The CHORD objective mixes an on-policy RL term and an off-policy SFT term:

    L = (1 - mu) * L_GRPO + mu * L_SFT

    L_GRPO = (1 / N_on)  * sum_{on-policy tokens t} l_t^PPO      (token-mean over the batch)
    L_SFT  = (1 / N_exp) * sum_{expert tokens t}    l_t^SFT      (token-mean over the batch)

Each term is normalised by its own token count (the counts are clamped at 1, so a batch
without expert tokens simply has L_SFT = 0). `token_coefficients` turns this into one
coefficient per token, so the whole loss is `sum(coef * loss_tok)`: that is the form the
fused kernels consume.

Everything here works on [N] vectors: logp_t = log pi_theta(y_t | x, y_<t) of each target
token, computed elsewhere (ops.token_logprobs). Every token loss depends on the logits only
through its own logp_t, which is why a kernel needs nothing but d loss_t / d logp_t.

A note on the GRPO loss value: with one optimisation step per rollout batch, the policy that
is being differentiated *is* the policy that sampled, so logp == old_logp, r_t = 1 and
l_t = -A_t. Advantages are zero-mean within a group, so the logged GRPO loss is ~0 and
carries no information. Its gradient, -A_t * grad logp_t, is what matters. Watch the reward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

# ----------------------------------------------------------------------------------------
# Advantages


def group_advantages(rewards: Tensor, *, scale_by_std: bool = True, eps: float = 1e-6,
                     singleton: str = "zero") -> Tensor:
    """GRPO group-relative advantages.

        A_i = (R_i - mean(R)) / (std(R) + eps)     std unbiased (divides by G - 1)
        A_i = R_i - mean(R)                         with scale_by_std=False (LUFFY, Dr.GRPO)

    A group whose rewards are all equal gets A = 0 (0 / eps, no NaN). A group of one has no
    unbiased std: singleton="zero" gives A = 0 (minichord's default: one sample carries no
    relative signal); singleton="official" mimics the official code, which uses mean 0 and
    std 1 there, i.e. A = R / (1 + eps) (or A = R without std scaling).

    rewards: [n_groups, G]. Returns fp32 [n_groups, G].
    """
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [n_groups, G], got shape {tuple(rewards.shape)}")
    if singleton not in ("zero", "official"):
        raise ValueError(f"singleton must be 'zero' or 'official', got {singleton!r}")
    rewards = rewards.float()  # [n_groups, G]
    if rewards.numel() and not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    group_size = rewards.shape[1]
    if group_size == 1:
        if singleton == "zero":
            return torch.zeros_like(rewards)
        return rewards / (1.0 + eps) if scale_by_std else rewards.clone()
    mean = rewards.mean(dim=1, keepdim=True)  # [n_groups, 1]
    centered = rewards - mean  # [n_groups, G]
    if not scale_by_std:
        return centered
    std = rewards.std(dim=1, keepdim=True, unbiased=True)  # [n_groups, 1]
    return centered / (std + eps)


def zero_variance_fraction(rewards: Tensor) -> float:
    """Fraction of groups whose rewards are all equal: they get A = 0 and no gradient.

    rewards: [n_groups, G]. A group of one counts as zero-variance.
    """
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [n_groups, G], got shape {tuple(rewards.shape)}")
    if rewards.shape[0] == 0:
        return 0.0
    flat = (rewards.amax(dim=1) == rewards.amin(dim=1))  # [n_groups]
    return flat.float().mean().item()


# ----------------------------------------------------------------------------------------
# On-policy term


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, *, eps_low: float = 0.2,
                  eps_high: float = 0.2, dual_clip: Optional[float] = None,
                  log_ratio_clamp: float = 20.0) -> tuple[Tensor, Tensor]:
    """PPO-clip token loss (what GRPO uses), with optional dual clip.

        r_t = exp(clamp(logp_t - old_logp_t, -c_r, c_r))                 c_r = log_ratio_clamp
        l_t = max(-A_t * r_t, -A_t * clip(r_t, 1 - eps_low, 1 + eps_high))
        dual clip (A_t < 0 only):  l_t = min(l_t, -A_t * c)               c = dual_clip > 1

    Gradient, for the kernels: d l_t / d logp_t = -A_t * r_t, or 0 where `clipped`.

    Returns (loss_tok [N], clipped [N] bool). `clipped` marks the tokens whose gradient the
    clipping zeroes: A > 0 and r > 1 + eps_high; A < 0 and r < 1 - eps_low; A < 0 and
    r > c (dual clip); or |logp - old_logp| > c_r (the log-ratio clamp).
    """
    _check_same_shape(logp=logp, old_logp=old_logp, adv=adv)
    if not 0.0 <= eps_low < 1.0 or eps_high < 0.0:
        raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (or None), got {dual_clip}")
    if not log_ratio_clamp > 0.0:
        raise ValueError(f"log_ratio_clamp must be > 0, got {log_ratio_clamp}")
    adv = adv.to(logp.dtype)
    log_ratio = logp - old_logp.to(logp.dtype)  # [N]
    ratio = torch.exp(log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp))  # [N]
    unclipped = -adv * ratio  # [N]
    clipped_obj = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)  # [N]
    loss = torch.maximum(unclipped, clipped_obj)  # [N]
    with torch.no_grad():
        clipped = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))
        clipped |= log_ratio.abs() > log_ratio_clamp
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * dual_clip), loss)  # [N]
        clipped = clipped | ((adv < 0) & (ratio > dual_clip))
    return loss, clipped


def unclipped_pg_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, *,
                      log_ratio_clamp: float = 20.0) -> tuple[Tensor, Tensor]:
    """LUFFY's on-policy term without the PPO clip: l_t = -A_t * r_t.

    Returns (loss_tok [N], clipped [N]); clipped only where the log-ratio clamp is hit.
    """
    _check_same_shape(logp=logp, old_logp=old_logp, adv=adv)
    log_ratio = logp - old_logp.to(logp.dtype)  # [N]
    ratio = torch.exp(log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp))  # [N]
    return -adv.to(logp.dtype) * ratio, (log_ratio.abs() > log_ratio_clamp).detach()


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimator of KL(pi_theta || pi_ref) per token (>= 0, unbiased, low variance).

        d_t = ref_logp_t - logp_t,     kl_t = exp(d_t) - d_t - 1
    """
    _check_same_shape(logp=logp, ref_logp=ref_logp)
    log_ratio = ref_logp.to(logp.dtype) - logp  # [N]
    return torch.exp(log_ratio) - log_ratio - 1.0


# ----------------------------------------------------------------------------------------
# Expert (off-policy) term

# SFT token weights w(p); the loss detaches them (sg = stop-gradient).
_SFT_WEIGHTS: dict[str, Callable[[Tensor], Tensor]] = {
    "none": lambda p: torch.ones_like(p),  # plain SFT
    "phi": lambda p: p * (1.0 - p),  # CHORD-phi: peaks at p = 0.5
    "is": lambda p: p,  # importance-sampling ablation
}


def sft_loss(logp: Tensor, weighting: str = "none") -> Tensor:
    """Weighted negative log-likelihood per expert token.

        l_t = -sg(w(p_t)) * logp_t,   p_t = exp(logp_t)
        w = 1 ("none"),  p (1 - p) ("phi", CHORD-phi),  p ("is", the IS ablation)

    With "phi" the gradient w.r.t. the logits is the NLL gradient scaled per token by
    p_t (1 - p_t): tokens the policy finds very unlikely (p -> 0, far off-policy, would
    disrupt it) and tokens already learned (p -> 1) contribute little.
    """
    weight_fn = _SFT_WEIGHTS.get(weighting)
    if weight_fn is None:
        raise ValueError(f"unknown SFT weighting {weighting!r}; valid: {sorted(_SFT_WEIGHTS)}")
    weight = weight_fn(torch.exp(logp.detach()))  # [N], no gradient through the weight
    return -weight * logp


def luffy_shaping(p: Tensor, gamma: float = 0.1) -> Tensor:
    """LUFFY policy shaping f(p) = p / (p + gamma).

    f'(p) = gamma / (p + gamma)^2, so d f / d logp = p * gamma / (p + gamma)^2: low-probability
    expert tokens get a much larger gradient than under plain importance weighting.
    """
    if not gamma > 0.0:
        raise ValueError(f"luffy gamma must be > 0, got {gamma}")
    return p / (p + gamma)


def luffy_expert_loss(logp: Tensor, adv: Tensor, gamma: float = 0.1) -> Tensor:
    """LUFFY's off-policy token loss: l_t = -A_t * f(p_t), f(p) = p / (p + gamma)."""
    _check_same_shape(logp=logp, adv=adv)
    return -adv.to(logp.dtype) * luffy_shaping(torch.exp(logp), gamma)


# ----------------------------------------------------------------------------------------
# Global coefficient schedule


def mu_schedule(step: int, *, warmup: int, decay: int, peak: float, valley: float) -> float:
    """CHORD-mu's global SFT weight mu(step): linear warm-up W, cosine decay D.

        mu = peak * s / W                                          s < W
        mu = valley + (peak - valley) * (1 + cos(pi (s - W) / D)) / 2   W <= s < W + D
        mu = valley                                                s >= W + D

    warmup = decay = 0 and peak = valley gives a constant mu (the CHORD-phi preset).
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


# ----------------------------------------------------------------------------------------
# Putting the token losses together

# Expert token loss by weighting name: (logp, adv, spec) -> loss_tok. A dict, not an if-chain.
_EXPERT_LOSSES: dict[str, Callable[[Tensor, Tensor, "TokenLossSpec"], Tensor]] = {
    "none": lambda logp, adv, spec: sft_loss(logp, "none"),
    "phi": lambda logp, adv, spec: sft_loss(logp, "phi"),
    "is": lambda logp, adv, spec: sft_loss(logp, "is"),
    "luffy": lambda logp, adv, spec: luffy_expert_loss(logp, adv, spec.luffy_gamma),
}
EXPERT_WEIGHTINGS = tuple(sorted(_EXPERT_LOSSES))


@dataclass(frozen=True)
class TokenLossSpec:
    """Everything that decides the per-token loss (the same for the torch and Triton paths).

    eps_low, eps_high    PPO clip range [1 - eps_low, 1 + eps_high]
    dual_clip            c > 1 bounds the loss of A < 0 tokens at -A c (None = off;
                         the current official code uses 3.0)
    log_ratio_clamp      clamp of logp - old_logp before exp
    onpolicy_clip        False = LUFFY's unclipped -A r
    expert_weighting     "none" (SFT) | "phi" (CHORD-phi) | "is" (SFT-IS) | "luffy" (-A f(p))
    luffy_gamma          gamma of LUFFY's shaping f(p) = p / (p + gamma)
    entropy_coef         entropy bonus on on-policy tokens (0 = off)
    kl_coef              k3 KL penalty to a reference policy on on-policy tokens (0 = off)
    """

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: Optional[float] = None
    log_ratio_clamp: float = 20.0
    onpolicy_clip: bool = True
    expert_weighting: str = "none"
    luffy_gamma: float = 0.1
    entropy_coef: float = 0.0
    kl_coef: float = 0.0

    def __post_init__(self) -> None:
        if self.expert_weighting not in _EXPERT_LOSSES:
            raise ValueError(f"unknown expert_weighting {self.expert_weighting!r}; "
                             f"valid: {list(EXPERT_WEIGHTINGS)}")
        if not (0.0 <= self.eps_low < 1.0 and self.eps_high >= 0.0):
            raise ValueError(f"need 0 <= eps_low < 1 and eps_high >= 0, "
                             f"got eps_low={self.eps_low}, eps_high={self.eps_high}")
        if self.dual_clip is not None and not self.dual_clip > 1.0:
            raise ValueError(f"dual_clip must be > 1 or None, got {self.dual_clip}")
        if not self.log_ratio_clamp > 0.0:
            raise ValueError(f"log_ratio_clamp must be > 0, got {self.log_ratio_clamp}")
        if not self.luffy_gamma > 0.0:
            raise ValueError(f"luffy_gamma must be > 0, got {self.luffy_gamma}")
        for name in ("entropy_coef", "kl_coef"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0.0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")


def token_coefficients(is_expert: Tensor, mask: Tensor, mu: Optional[float], *,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-token weights so that the batch loss is sum_t coef_t * loss_t.

    CHORD (mu a float in [0, 1]):
        coef_t = (1 - mu) / N_on    on-policy tokens,  N_on  = max(1, #on-policy tokens)
        coef_t = mu / N_exp         expert tokens,     N_exp = max(1, #expert tokens)
    Joint token-mean (mu=None, LUFFY): coef_t = 1 / max(1, #tokens) on every token.
    Masked-out tokens (mask False) get 0. Returns [N] in `dtype` (fp32 by default).
    """
    _check_same_shape(is_expert=is_expert, mask=mask)
    is_expert, mask = is_expert.bool(), mask.bool()
    if mu is None:
        n_tokens = mask.sum().clamp(min=1).to(dtype)
        return mask.to(dtype) / n_tokens  # [N]
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu must be in [0, 1] (or None for a joint token-mean), got {mu}")
    onpolicy = mask & ~is_expert  # [N]
    expert = mask & is_expert  # [N]
    n_on = onpolicy.sum().clamp(min=1).to(dtype)
    n_exp = expert.sum().clamp(min=1).to(dtype)
    return onpolicy.to(dtype) * ((1.0 - mu) / n_on) + expert.to(dtype) * (mu / n_exp)  # [N]


def token_losses(logp: Tensor, is_expert: Tensor, adv: Tensor, old_logp: Tensor,
                 spec: TokenLossSpec, ref_logp: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Per-token loss of a batch mixing on-policy and expert tokens.

        on-policy:  l_t = PPO-clip(logp, old_logp, A)  (or -A r if not spec.onpolicy_clip)
                          + kl_coef * kl_k3(logp, ref_logp)
        expert:     l_t = -sg(w(p_t)) logp_t  (none/phi/is)  or  -A_t f(p_t)  (luffy)

    Each branch sees only its own tokens: the other tokens' inputs are replaced by zeros
    before the branch is evaluated, so an overflow in one branch (say exp in kl_k3 on an
    expert token) can never turn into a NaN gradient through torch.where. No host sync.
    The entropy bonus is not a per-token loss of logp; the caller adds it
    (chord_objective, ops.fused_token_loss).

    Returns (loss_tok [N], clipped [N] bool, False on expert tokens).
    """
    _check_same_shape(logp=logp, is_expert=is_expert, adv=adv, old_logp=old_logp)
    if spec.kl_coef > 0.0 and ref_logp is None:
        raise ValueError("spec.kl_coef > 0 needs ref_logp (log-probs under the reference policy)")
    expert = is_expert.bool()  # [N]
    onpolicy = ~expert  # [N]
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    adv = adv.to(logp.dtype)

    def only(where: Tensor, values: Tensor) -> Tensor:
        return torch.where(where, values.to(logp.dtype), zero)  # [N]

    logp_on, old_on, adv_on = only(onpolicy, logp), only(onpolicy, old_logp), only(onpolicy, adv)
    if spec.onpolicy_clip:
        loss_on, clipped = ppo_clip_loss(
            logp_on, old_on, adv_on, eps_low=spec.eps_low, eps_high=spec.eps_high,
            dual_clip=spec.dual_clip, log_ratio_clamp=spec.log_ratio_clamp)
    else:
        loss_on, clipped = unclipped_pg_loss(logp_on, old_on, adv_on,
                                             log_ratio_clamp=spec.log_ratio_clamp)
    if spec.kl_coef > 0.0:
        loss_on = loss_on + spec.kl_coef * kl_k3(logp_on, only(onpolicy, ref_logp))
    loss_exp = _EXPERT_LOSSES[spec.expert_weighting](only(expert, logp), only(expert, adv), spec)
    loss_tok = torch.where(expert, loss_exp, loss_on)  # [N]
    return loss_tok, clipped & onpolicy


def chord_objective(logp: Tensor, entropy: Optional[Tensor], is_expert: Tensor, mask: Tensor,
                    adv: Tensor, old_logp: Tensor, mu: Optional[float], spec: TokenLossSpec,
                    ref_logp: Optional[Tensor] = None) -> tuple[Tensor, dict]:
    """The full CHORD loss on flat token vectors, plus metrics.

        L = sum_t coef_t * l_t  -  entropy_coef * sum_{on-policy t} coef_t * H_t
          = (1 - mu) L_GRPO + mu L_SFT  (- entropy bonus)

    entropy may be None when spec.entropy_coef == 0. Returns (loss scalar, metrics) where the
    metrics are python floats: loss, grpo_loss, sft_loss (token-means of each term; the GRPO
    loss value is ~0 with one update per batch, see the module docstring), clip_fraction
    (over on-policy tokens), entropy, kl (if ref_logp), mu, n_onpolicy, n_expert.
    """
    is_expert, mask = is_expert.bool(), mask.bool()
    coef = token_coefficients(is_expert, mask, mu, dtype=logp.dtype)  # [N]
    loss_tok, clipped = token_losses(logp, is_expert, adv, old_logp, spec, ref_logp)
    loss = (coef * loss_tok).sum()
    onpolicy, expert = mask & ~is_expert, mask & is_expert  # [N]
    if spec.entropy_coef > 0.0:
        if entropy is None:
            raise ValueError("spec.entropy_coef > 0 needs the per-token entropy")
        loss = loss - spec.entropy_coef * (coef * entropy * onpolicy).sum()

    def masked_mean(values: Tensor, where: Tensor) -> float:
        return (values.detach().float() * where).sum().item() / max(1, int(where.sum()))

    metrics = {
        "loss": loss.item(),
        "grpo_loss": masked_mean(loss_tok, onpolicy),
        "sft_loss": masked_mean(loss_tok, expert),
        "clip_fraction": masked_mean(clipped.float(), onpolicy),
        "mu": float("nan") if mu is None else float(mu),
        "n_onpolicy": int(onpolicy.sum()),
        "n_expert": int(expert.sum()),
    }
    if entropy is not None:
        metrics["entropy"] = masked_mean(entropy, mask)
    if ref_logp is not None:
        metrics["kl"] = masked_mean(kl_k3(logp.detach(), ref_logp), onpolicy)
    return loss, metrics


def _check_same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shape mismatch: {shapes}")
