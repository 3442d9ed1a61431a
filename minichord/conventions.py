"""Conventions: the choices on which CHORD implementations disagree, as data.

The paper fixes L = (1 - mu) L_GRPO + mu L_SFT but not every detail of how the two terms are formed.
A `Convention` names each choice; two presets are provided:

| field           | `paper` (minichord's default)   | `official` (the official code today)          |
|-----------------|---------------------------------|-----------------------------------------------|
| aggregation     | token-mean                      | micro-batch                                   |
| dual_clip       | None (off)                      | 3.0 (always on)                               |
| log_ratio_clamp | 20.0 (r = exp(clamp(., +-20)))   | 20.0                                          |
| singleton       | zero  (a group of one: A = 0)   | official  (A = R / (1 + 1e-6))                |
| std             | unbiased (divides by G - 1)     | unbiased (torch.std's default)                |

Aggregation, per side (on-policy tokens for L_GRPO, expert tokens for L_SFT); S = a side's sequences:

    token-mean     L_side = sum_t l_t / N_side                           one mean over the batch's tokens
    sequence-mean  L_side = (1 / |S|) sum_{s in S} (1 / n_s) sum_{t in s} l_t        (GRPO paper)
    micro-batch    L_side = sum_m (|S_m| / |S|) * (1 / N_side,m) sum_{t in m} l_t
                   each micro-batch m is token-averaged, then weighted by its share of the side's
                   sequences; the result depends on how the batch was split (the official code)

sequence-mean is micro-batch with one sequence per micro-batch. Without micro-batch ids the whole batch
is one micro-batch and micro-batch equals token-mean. A sequence counts if it has at least one token.
`std` exists for `minichord check`'s search (a biased std is a known mistake); both presets are unbiased.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import Tensor

from minichord.losses import TokenLossSpec, group_advantages, token_coefficients

AGGREGATIONS = ("token-mean", "sequence-mean", "micro-batch")
SINGLETONS = ("zero", "official")
STDS = ("unbiased", "biased")
NO_CLAMP = float(torch.finfo(torch.float64).max)  # the spec's clamp when a convention has none


@dataclasses.dataclass(frozen=True)
class Convention:
    """One set of choices (see the module docstring); `name` is for messages only."""

    name: str = "paper"
    aggregation: str = "token-mean"
    dual_clip: Optional[float] = None  # c > 1 bounds the loss of A < 0 tokens at -A c; None = off
    log_ratio_clamp: Optional[float] = 20.0  # clamp of logp - old_logp before exp; None = off
    singleton: str = "zero"  # a group of one: "zero" A = 0 | "official" A = R / (1 + 1e-6)
    std: str = "unbiased"  # group std: "unbiased" (G - 1) | "biased" (G)

    def __post_init__(self) -> None:
        for key, allowed in (("aggregation", AGGREGATIONS), ("singleton", SINGLETONS), ("std", STDS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"convention {key}={getattr(self, key)!r}: must be one of {', '.join(allowed)}")
        if self.dual_clip is not None and not 1.0 < self.dual_clip < math.inf:
            raise ValueError(f"convention dual_clip={self.dual_clip!r}: must be None or a finite number > 1")
        if self.log_ratio_clamp is not None and not 0.0 < self.log_ratio_clamp < math.inf:
            raise ValueError(f"convention log_ratio_clamp={self.log_ratio_clamp!r}: must be None or finite > 0")

    def replace(self, **changes) -> "Convention":
        return dataclasses.replace(self, **changes)

    def loss_spec(self, **fields) -> TokenLossSpec:
        """The token-loss spec of this convention; `fields` (eps, weighting, ...) pass through."""
        clamp = NO_CLAMP if self.log_ratio_clamp is None else self.log_ratio_clamp
        return TokenLossSpec(**{"dual_clip": self.dual_clip, "log_ratio_clamp": clamp, **fields})

    def group_advantages(self, rewards: Tensor) -> Tensor:
        """rewards [n_groups, G] -> A [n_groups, G], A = (R - mean) / (std + 1e-6) with this std / singleton."""
        return group_advantages(rewards, singleton=self.singleton, unbiased=self.std == "unbiased")

    def coefficients(self, is_expert: Tensor, seq_id: Tensor, micro_batch: Optional[Tensor], mu: float,
                     dtype: torch.dtype = torch.float32) -> Tensor:
        """Per-token coef [N] with  L = sum_t coef_t l_t = (1 - mu) L_GRPO + mu L_SFT  under this aggregation.

        is_expert [N] bool, seq_id [N] (sequence of each token), micro_batch [N] or None (one micro-batch).
        """
        if self.aggregation == "token-mean" or (self.aggregation == "micro-batch" and micro_batch is None):
            return token_coefficients(is_expert, mu, dtype=dtype)
        groups = seq_id if self.aggregation == "sequence-mean" else micro_batch
        return grouped_coefficients(is_expert, seq_id, groups, mu, dtype=dtype)


def grouped_coefficients(is_expert: Tensor, seq_id: Tensor, groups: Tensor, mu: float,
                         dtype: torch.dtype = torch.float32) -> Tensor:
    """Token means within each group m, weighted by m's share of the side's sequences, all [N] -> [N]:

        coef_t = token_coefficients(tokens of m)_t * |S_side,m| / |S_side|      t in m
    """
    is_expert = is_expert.bool()
    if not (is_expert.shape == seq_id.shape == groups.shape):
        raise ValueError(f"is_expert, seq_id, micro_batch must all be [N], got {tuple(is_expert.shape)}, "
                         f"{tuple(seq_id.shape)}, {tuple(groups.shape)}")
    coef = torch.zeros(is_expert.shape, dtype=dtype, device=is_expert.device)  # [N]
    n_seqs = {side: max(1, seq_id[is_expert == side].unique().numel()) for side in (False, True)}
    for m in groups.unique():
        tokens = groups == m  # [N]
        share = {side: seq_id[tokens & (is_expert == side)].unique().numel() / n_seqs[side] for side in (False, True)}
        weight = torch.where(is_expert[tokens], share[True], share[False]).to(dtype)  # [N_m]
        coef[tokens] = token_coefficients(is_expert[tokens], mu, dtype=dtype) * weight
    return coef


PRESETS: dict[str, Convention] = {
    "paper": Convention("paper"),
    "official": Convention("official", aggregation="micro-batch", dual_clip=3.0, singleton="official"),
}


def get_convention(name: str) -> Convention:
    """The preset called `name` (paper | official); anything else is refused in one line."""
    if name not in PRESETS:
        raise ValueError(f"convention={name!r}: must be one of {', '.join(PRESETS)}")
    return PRESETS[name]
