"""The CHORD loss (arXiv 2508.11408), written once, on flat per-token vectors.

    L = (1 - mu) * L_GRPO + mu * L_SFT
    L_GRPO = (1 / N_on)  * sum_{on-policy tokens t} l_t^PPO      (token-mean over the batch)
    L_SFT  = (1 / N_exp) * sum_{expert tokens t}    l_t^SFT      (token-mean over the batch)

With one update per rollout batch r_t = 1: the logged GRPO loss is -mean(A) ~ 0; its gradient is -A_t grad logp_t.
LUFFY (Yan et al. 2025): each group holds G - 1 rollouts and the prompt's expert trace (reward 1);
A = R - mean(R); one joint token-mean; and its own token losses:

    on-policy:  l_t = -A_t r_t                        (no PPO clip)
    expert:     l_t = -A_t f(p_t),  f(p) = p / (p + gamma)   (policy shaping)

d f / d logp = p gamma / (p + gamma)^2: unlikely expert tokens get a far larger gradient than under f(p) = p."""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from minichord.config import SINGLETONS, LossConfig

IGNORE_INDEX = -100  # target of rows that carry no token (padding): logp = H = 0, no gradient


def group_advantages(rewards: Tensor, *, scale_by_std: bool = True, eps: float = 1e-6,
                     singleton: str = "zero", unbiased: bool = True) -> Tensor:
    """GRPO group-relative advantages, rewards [n_groups, G] -> fp32 [n_groups, G]:

        A_i = (R_i - mean(R)) / (std(R) + eps)     std unbiased (G - 1); unbiased=False: G (a known mistake)
        A_i = R_i - mean(R)                         with scale_by_std=False (LUFFY, Dr.GRPO)
        A = 0 exactly for equal rewards; a group of one: A = 0 (singleton="zero") or R / (1 + eps) ("official")"""
    if (rewards := torch.as_tensor(rewards)).dim() != 2:
        raise ValueError(f"rewards must be [n_groups, G], got shape {tuple(rewards.shape)}")
    if singleton not in SINGLETONS:
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
    if (rewards := torch.as_tensor(rewards)).dim() != 2:
        raise ValueError(f"rewards must be [n_groups, G], got shape {tuple(rewards.shape)}")
    return (rewards.amax(dim=1) == rewards.amin(dim=1)).float().mean().item() if rewards.shape[0] else 0.0


def mu_schedule(step: int, *, warmup: int, decay: int, peak: float, valley: float) -> float:
    """CHORD-mu's global SFT weight mu(step): linear warm-up W, cosine decay D.

        mu = peak * s / W                                               s < W
        mu = valley + (peak - valley) * (1 + cos(pi (s - W) / D)) / 2   W <= s < W + D
        mu = valley                                                     s >= W + D"""
    if step < 0 or warmup < 0 or decay < 0:
        raise ValueError(f"step, warmup, decay must be >= 0, got {step}, {warmup}, {decay}")
    if not (0.0 <= peak <= 1.0 and 0.0 <= valley <= 1.0):
        raise ValueError(f"peak and valley must be in [0, 1], got {peak}, {valley}")
    if step < warmup:
        return peak * step / warmup
    if step >= warmup + decay:
        return float(valley)
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * ((step - warmup) / decay)))


def advantages(rewards: Tensor, rules: LossConfig) -> Tensor:
    """rewards [n_groups, G] -> A [n_groups, G] by the rules' std and singleton (LUFFY's expert column included)."""
    return group_advantages(rewards, scale_by_std=rules.std != "none", eps=rules.std_eps, singleton=rules.singleton,
                            unbiased=rules.std != "biased")


AGGREGATION_SHAPES = {  # name: (within a group: token | seq-mean | seq-sum, groups: whole batch | share | equal)
    "token-mean": ("token", None), "sequence-mean": ("seq-mean", None), "sequence-sum": ("seq-sum", None),
    "micro-batch": ("token", "share"), "micro-batch-equal": ("token", "equal"),
    "micro-batch-sequence-mean": ("seq-mean", "equal")}


def coefficients(is_expert: Tensor, seq_id: Tensor, micro_batch: Tensor | None, mu: float | None,
                 rules: LossConfig, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-token coef [N]: L = sum_t coef_t l_t = (1 - mu) L_GRPO + mu L_SFT. Each side by its aggregation (the
    SFT side's: rules.sft_aggregation when set); S = the side's sequences, n_s = tokens of s, m = a micro-batch of
    the M in the batch (no micro-batch ids: M = 1):

        token-mean                 L_side = sum_t l_t / N_side                    (paper; verl token-mean)
        sequence-mean              L_side = (1 / |S|) sum_s (1 / n_s) sum_{t in s} l_t     (verl seq-mean-token-mean)
        sequence-sum               L_side = (1 / |S|) sum_s sum_{t in s} l_t                (verl seq-mean-token-sum)
        micro-batch                L_side = sum_m (|S_m| / |S|) (1 / N_side,m) sum_{t in m} l_t   (the official code)
        micro-batch-equal          L_side = (1 / M) sum_m (1 / N_side,m) sum_{t in m} l_t   (a mean per step, / M)
        micro-batch-sequence-mean  L_side = (1 / M) sum_m sequence-mean of m              (ms-swift loss_type grpo)
        joint                      L = sum_t l_t / N   over both sides, no mu                            (LUFFY)"""
    if rules.aggregation == "joint":
        return torch.full(is_expert.shape, 1.0 / max(1, is_expert.numel()), dtype=dtype, device=is_expert.device)
    micro = torch.zeros_like(seq_id) if micro_batch is None else micro_batch  # [N]
    if not 0.0 <= mu <= 1.0 or not is_expert.shape == seq_id.shape == micro.shape:
        raise ValueError(f"mu must be in [0, 1] and is_expert, seq_id, micro_batch [N], got {mu}, "
                         f"{tuple(is_expert.shape)}, {tuple(seq_id.shape)}, {tuple(micro.shape)}")
    coef, n_micro = torch.zeros(is_expert.shape, dtype=dtype, device=is_expert.device), micro.unique().numel()
    for side, scale, name in ((False, 1.0 - mu, rules.aggregation),
                              (True, mu, rules.sft_aggregation or rules.aggregation)):
        within, groups = AGGREGATION_SHAPES[name]
        tokens = is_expert.bool() == side  # [N]
        n_seqs = seq_id[tokens].unique().numel()
        group = micro if groups else torch.zeros_like(micro)  # [N]
        for m in group[tokens].unique():
            here = tokens & (group == m)  # [N]
            seqs, inverse, counts = seq_id[here].unique(return_inverse=True, return_counts=True)  # [S_m], [N_m], [S_m]
            denominator = {"token": here.sum(), "seq-mean": len(seqs) * counts[inverse], "seq-sum": len(seqs)}[within]
            weight = {None: 1.0, "share": len(seqs) / n_seqs, "equal": 1.0 / n_micro}[groups]
            coef[here] = scale / torch.as_tensor(denominator, dtype=dtype) * weight  # [N_m]
    return coef


def token_coefficients(is_expert: Tensor, mu: float, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Per-token weights so that the batch loss is sum_t coef_t * l_t, is_expert [N] -> [N]:

        coef_t = (1 - mu) / N_on    on-policy tokens,  N_on  = max(1, #on-policy tokens)
        coef_t = mu / N_exp         expert tokens,     N_exp = max(1, #expert tokens)"""
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"mu must be in [0, 1], got {mu}")
    expert = is_expert.bool()  # [N]
    n_exp, n_on = expert.sum().clamp(min=1).to(dtype), (~expert).sum().clamp(min=1).to(dtype)
    return torch.where(expert, mu / n_exp, (1.0 - mu) / n_on).to(dtype)  # [N]


def ppo_clip_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, spec: LossConfig) -> tuple[Tensor, Tensor]:
    """GRPO's on-policy token loss (PPO-clip, optional dual clip), all [N]:

        r_t = exp(clamp(logp_t - old_logp_t, -c_r, c_r))                 c_r = log_ratio_clamp
        l_t = max(-A_t r_t, -A_t clip(r_t, 1 - eps_low, 1 + eps_high))
        dual clip (A_t < 0 only):  l_t = min(l_t, -A_t c)                 c = dual_clip

    Returns (l [N], clipped [N] bool): the tokens whose gradient the clipping zeroes."""
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


def luffy_onpolicy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, spec: LossConfig) -> tuple[Tensor, Tensor]:
    """l_t = -A_t r_t, no PPO clip (all [N]). Returns (l, clipped: only where the log-ratio clamp hits)."""
    log_ratio = logp - old_logp.to(logp.dtype)  # [N]
    ratio = torch.exp(log_ratio.clamp(-spec.log_ratio_clamp, spec.log_ratio_clamp))  # [N]
    return -adv.to(logp.dtype) * ratio, (log_ratio.abs() > spec.log_ratio_clamp).detach()


def luffy_expert_loss(logp: Tensor, adv: Tensor, spec: LossConfig) -> Tensor:
    """l_t = -A_t f(p_t), f(p) = p / (p + gamma) (all [N]); the gradient flows through p."""
    p = logp.exp()  # [N]
    return -adv.to(logp.dtype) * p / (p + spec.luffy_gamma)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 estimator of KL(pi || pi_ref) per token: d = ref_logp - logp, kl = e^d - d - 1 >= 0."""
    d = ref_logp.to(logp.dtype) - logp  # [N]
    return torch.exp(d) - d - 1.0


def chord_loss(logp: Tensor, entropy: Tensor | None, is_expert: Tensor, adv: Tensor, old_logp: Tensor,
               coef: Tensor, spec: LossConfig, ref_logp: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The loss of one batch of tokens (all inputs [N]; entropy may be None without a bonus):

        L = sum_t coef_t l_t  -  entropy_coef * sum_{on-policy t} coef_t H_t
        on-policy t:  l_t = PPO-clip(logp_t, old_logp_t, A_t)  [+ kl_coef * k3(logp_t, ref_logp_t)]
        expert t:     l_t = -sg(w_t) logp_t,  p_t = exp(logp_t),  sg = stop-gradient, with
                      w_t = 1 (SFT),  p_t (1 - p_t) (CHORD-phi),  p_t (SFT-IS)
        spec.luffy:   LUFFY's unclipped on-policy term and shaped expert term (module docstring)

    phi = p(1 - p) damps the NLL gradient of very unlikely (far off-policy) and of already known tokens.
    Each branch sees only its own tokens (others zeroed): an overflow in one cannot NaN the gradient via where.
    Returns (L scalar, l [N], clipped [N] bool, False on expert tokens)."""
    if len(shapes := {tuple(t.shape) for t in (logp, is_expert, adv, old_logp, coef)}) > 1 or logp.dim() != 1:
        raise ValueError(f"logp, is_expert, adv, old_logp, coef must all be [N], got shapes {shapes}")
    if spec.kl_coef > 0.0 and ref_logp is None:
        raise ValueError("spec.kl_coef > 0 needs ref_logp (log-probs under the reference policy)")
    if spec.entropy_coef > 0.0 and entropy is None:
        raise ValueError("spec.entropy_coef > 0 needs the per-token entropy")
    expert, onpolicy = is_expert.bool(), ~is_expert.bool()  # [N] each

    def only(where: Tensor, values: Tensor) -> Tensor:
        return torch.where(where, values.to(logp.dtype), 0.0)  # [N]

    logp_on, old_on, adv_on = only(onpolicy, logp), only(onpolicy, old_logp), only(onpolicy, adv)
    logp_exp = only(expert, logp)
    if spec.luffy:  # LUFFY's pair of terms (module docstring)
        loss_on, clipped = luffy_onpolicy_loss(logp_on, old_on, adv_on, spec)
        loss_exp = luffy_expert_loss(logp_exp, only(expert, adv), spec)
    else:
        loss_on, clipped = ppo_clip_loss(logp_on, old_on, adv_on, spec)
        p = logp_exp.detach().exp()  # [N], sg(p)
        weight = {"phi": p * (1.0 - p), "is": p, "uniform": torch.ones_like(p)}[spec.expert_weighting]  # [N]
        loss_exp = -weight * logp_exp  # [N]
    if spec.kl_coef > 0.0:
        loss_on = loss_on + spec.kl_coef * kl_k3(logp_on, only(onpolicy, ref_logp))
    loss_tok = torch.where(expert, loss_exp, loss_on)  # [N]
    coef = coef.to(logp.dtype)  # [N]
    loss = (coef * loss_tok).sum()
    if spec.entropy_coef > 0.0:
        loss = loss - spec.entropy_coef * (coef * entropy.to(logp.dtype) * onpolicy).sum()
    return loss, loss_tok, clipped & onpolicy


# The contract of the fast paths (minichord/lm_head.py and the kernels): output, input checks.
@dataclass
class FusedLossOutput:
    loss: Tensor  # scalar, differentiable w.r.t. hidden and weight
    logp: Tensor  # [N] fp32, detached
    entropy: Tensor  # [N] fp32, detached
    clipped: Tensor  # [N] bool, tokens whose gradient the PPO clip zeroes


def check_logits_targets(logits: Tensor, targets: Tensor, temperature: float) -> None:
    """The input checks of the token log-probs (their torch path and their kernel)."""
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float [N, V] tensor, got {logits.dtype} {tuple(logits.shape)}")
    if targets.shape != logits.shape[:1] or targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be int [N]={logits.shape[0]}, got {targets.dtype} {tuple(targets.shape)}")
    check_targets(targets, logits.shape[1], temperature)


def check_targets(targets: Tensor, vocab_size: int, temperature: float) -> None:
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if (bad := (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= vocab_size))).any():  # [N]
        raise ValueError(f"target id {int(targets[bad][0])} outside [0, {vocab_size}) "
                         f"and not the padding id {IGNORE_INDEX}")


def check_fused_inputs(hidden, weight, targets, coef, is_expert, advantages, old_logp, ref_logp, spec,
                       temperature, chunk_size) -> None:
    """The input checks of the fused lm-head loss (its torch path and its kernel)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    for name, vec in dict(targets=targets, coef=coef, is_expert=is_expert, advantages=advantages, old_logp=old_logp,
                          ref_logp=ref_logp).items():
        if vec is not None and tuple(vec.shape) != (hidden.shape[0],):
            raise ValueError(f"{name} must be [N]=[{hidden.shape[0]}], got shape {tuple(vec.shape)}")
    if not isinstance(spec, LossConfig):
        raise ValueError(f"spec must be a LossConfig, got {type(spec).__name__}")
    if spec.kl_coef > 0.0 and ref_logp is None:
        raise ValueError("spec.kl_coef > 0 needs ref_logp")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    check_targets(targets, weight.shape[0], temperature)
