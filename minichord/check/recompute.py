"""minichord's loss and gradient for a DUMP (minichord/check/README.md), recomputed in float64 under a
convention's batch rules, optionally with one known bug of minichord/catalogue.toml planted; the tolerance rule.

    L = a * L_GRPO + b * L_SFT,   L_GRPO = sum_t c0_t l_t,  L_SFT = sum_t c1_t l_t,   g_t = d L / d logp_t
    CHORD: (a, b) = (1 - mu, mu), c0 / c1 = the rules' coefficients at mu = 0 / mu = 1
    LUFFY: (a, b) = (1, 1),       c0 = c1 = 1 / N on their own side (one joint token-mean)"""

import dataclasses

import torch
from torch import Tensor

from minichord import losses
from minichord.check.dump import Dump
from minichord.config import LossConfig
from minichord.methods import CONVENTIONS, LUFFY_LOSS

RTOL, ATOL = 1e-5, 1e-7  # the tolerance rule (`within`)
SEARCHED = ("aggregation", "dual_clip", "log_ratio_clamp", "singleton", "std", "std_eps")  # a diagnosis may change
NO_CLAMP = float("inf")  # the log-ratio clamp of "no clamp"
KEPT_STEPS = {"first_micro_batch_only": lambda G: {0}, "last_micro_batch_only": lambda G: {G - 1},
              "middle_micro_batches_dropped": lambda G: {0, G - 1}}  # accumulation steps whose gradient survives


def convention_rules(name: str, weighting: str) -> LossConfig:
    """The batch rules of convention `name` (minichord/catalogue.toml) for a dump's weighting (LUFFY: its own)."""
    if name not in CONVENTIONS:
        raise ValueError(f"convention={name!r}: must be one of {', '.join(CONVENTIONS)}")
    return LossConfig(**LUFFY_LOSS if weighting == "luffy" else dict(CONVENTIONS[name], expert_weighting=weighting))


@dataclasses.dataclass
class Reference:
    """minichord's numbers for one dump under one convention (+ at most one bug)."""

    loss: float
    grad: Tensor  # [N] float64, d loss / d logp on the masked tokens
    grpo: float  # L_GRPO
    sft: float  # L_SFT
    weights: tuple[float, float]  # (a, b): L = a L_GRPO + b L_SFT
    loss_scale: float  # a |L_GRPO| + b |L_SFT| term by term
    other_losses: tuple[float, ...] = ()  # the loss a micro-batch-dropping loop may report instead


def token_advantages(d: Dump, rules: LossConfig) -> Tensor:
    """A per masked token [N] float64: from rewards + group_ids by the rules, else the dump's."""
    if d.rewards is None:
        return d.flat(d.advantages)
    seq_adv = torch.zeros(d.is_expert.shape, dtype=torch.float64)  # [B]
    members = torch.ones_like(d.is_expert) if rules.expert_in_group else ~d.is_expert  # LUFFY: the trace too
    for g in d.group_ids[members].unique():
        rows = members & (d.group_ids == g)  # [B]
        seq_adv[rows] = losses.advantages(d.rewards[rows][None, :], rules)[0].double()  # [1, G] -> [G]
    return d.flat(seq_adv)


def reference(d: Dump, rules: LossConfig, bug: str | None = None, memo: dict | None = None) -> Reference:
    """The loss and gradient of `d` under `rules`, a catalogue bug planted by name (an aggregation bug is `rules`);
    `memo` (a dict per dump) caches coefficients."""
    is_expert, seq = d.flat(d.is_expert), d.rows  # [N], [N]
    logp = d.flat(d.logp).clone().requires_grad_(True)  # [N] float64
    old = torch.where(is_expert, 0.0, d.flat(d.old_logp))  # [N]
    adv = token_advantages(d, rules)  # [N]
    spec = dataclasses.replace(rules, eps_low=d.eps_low, eps_high=d.eps_high)
    _, l, _ = losses.chord_loss(logp, None, is_expert, adv, old, torch.ones_like(logp), spec)  # l [N]
    if bug == "phi_not_detached":
        p = logp.exp()  # [N], with its gradient
        l = torch.where(is_expert, -(p * (1 - p) if d.weighting == "phi" else p) * logp, l)
    if rules.aggregation == "joint":
        c0 = c1 = losses.coefficients(is_expert, seq, None, None, rules, dtype=torch.float64)  # [N], 1 / N
        c0, c1, (a, b) = c0 * ~is_expert, c1 * is_expert, (1.0, 1.0)
    else:
        mb, memo = None if d.micro_batch is None else d.flat(d.micro_batch), {} if memo is None else memo
        if (key := (rules.aggregation, rules.sft_aggregation)) not in memo:
            memo[key] = [losses.coefficients(is_expert, seq, mb, mu, rules, dtype=torch.float64) for mu in (0.0, 1.0)]
        (c0, c1), (a, b) = memo[key], (1.0 - d.mu, d.mu)
    name, _, arg = (bug or "").partition("/")  # generation_normaliser/S: S micro-steps per generation batch
    step, G = d.steps() if name else (None, 1)  # [N] each token's accumulation step on its rank, G steps per rank
    if name == "accumulation_divided_twice":
        c0 = c0 / G
    if name == "generation_normaliser":  # per chunk of S steps (all ranks): sum_t l_t / N_on,chunk, chunks summed
        _, chunk, count = torch.where(is_expert, -1, step // int(arg)).unique(return_inverse=True, return_counts=True)
        c0 = torch.where(is_expert, 0.0, 1.0 / count[chunk])  # [N]
    coef = a * c0 + b * c1  # [N]
    loss, keep, others = (coef * l).sum(), torch.ones_like(is_expert), ()
    if name in KEPT_STEPS:
        keep = torch.isin(step, torch.tensor(sorted(KEPT_STEPS[name](G))))  # [N]
        others = ((coef * l * keep).sum().item(),)
    (grad,) = torch.autograd.grad((coef * l * keep).sum(), logp)
    lt = l.detach()
    return Reference(loss.item(), grad, (c0 * lt).sum().item(), (c1 * lt).sum().item(), (a, b),
                     (a * (c0 * lt).abs().sum() + b * (c1 * lt).abs().sum()).item(), others)


def grad_scale(grad: Tensor) -> float:
    """The median |g_t| over tokens with g_t != 0 (0 if none): one huge token must not widen every token's tolerance."""
    nonzero = grad[grad != 0].abs()
    return nonzero.median().item() if nonzero.numel() else 0.0


def within(theirs, ours, scale: float, rtol: float = RTOL, atol: float = ATOL):
    """The tolerance rule (numbers or tensors, elementwise): |theirs - ours| <= atol * scale + rtol * |ours|;
    scale: `grad_scale` for the gradient, a |L_GRPO| + b |L_SFT| term by term for the loss."""
    return abs(theirs - ours) <= atol * scale + rtol * abs(ours)


def agrees(ref: Reference, loss: float, grad: Tensor, rtol: float = RTOL, atol: float = ATOL) -> tuple[bool, Tensor]:
    """(loss and gradient within tolerance, per-token gradient agreement [N] bool)."""
    tok_ok = within(grad, ref.grad, grad_scale(ref.grad), rtol, atol)  # [N]
    loss_ok = any(within(loss, v, ref.loss_scale, rtol, atol) for v in (ref.loss, *ref.other_losses))
    return bool(loss_ok and tok_ok.all()), tok_ok
