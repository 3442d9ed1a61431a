"""Every method of the paper's comparison as a configuration of the one trainer.

A method is a preset of `TrainConfig` fields (the mu schedule, the expert-token weighting, the
batch sizes) plus one small choice of *how expert data enters the batch*:

    SeparateExperts  B prompts x G rollouts  +  E expert demonstrations, each term normalised
                     by its own token count:  L = (1 - mu) L_GRPO + mu L_SFT        (CHORD, SFT, GRPO)
    ExpertInGroup    each group = G-1 rollouts + 1 expert trace of the same prompt; one
                     advantage A = R - mean(R) over the mixed group, one token-mean  (LUFFY)

| method     | mu(step)                               | expert tokens            | rollouts |
|------------|----------------------------------------|--------------------------|----------|
| sft        | 1                                      | -log p                   | no       |
| grpo       | 0                                      | (none)                   | yes      |
| sft-grpo   | stage 1: sft, stage 2: grpo from it    |                          |          |
| luffy      | joint token-mean                       | -A p/(p+0.1)             | G-1      |
| chord-mu   | cosine 0.9 -> 0.05 over the run        | -log p                   | yes      |
| chord-phi  | 0.1                                    | -sg(p(1-p)) log p        | yes      |
| sft-is     | 0.1                                    | -sg(p) log p             | yes      |

Presets only fill defaults: a TOML file or `--set key=value` overrides any field.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from minichord.config import ConfigError


@dataclasses.dataclass(frozen=True)
class SeparateExperts:
    """On-policy groups and a separate expert batch (CHORD's layout)."""

    in_group: bool = False


@dataclasses.dataclass(frozen=True)
class ExpertInGroup:
    """LUFFY: one expert trace replaces one rollout in each group (advantage without std)."""

    in_group: bool = True


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    summary: str
    preset: dict[str, Any]  # TrainConfig fields
    mixing: SeparateExperts | ExpertInGroup = SeparateExperts()
    uses_rollouts: bool = True
    joint_normalisation: bool = False  # one token-mean over all tokens instead of (1-mu)/mu
    stages: tuple[tuple[str, float], ...] = ()  # (method, share of steps) run one after another


def _constant_mu(mu: float) -> dict[str, Any]:
    return {"mu_warmup_frac": 0.0, "mu_decay_frac": 0.0, "mu_peak": mu, "mu_valley": mu}


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("sft", "supervised fine-tuning on the expert set only (mu = 1)",
               {**_constant_mu(1.0), "expert_weighting": "none", "experts_per_step": 32},
               uses_rollouts=False),
        Method("grpo", "pure on-policy RL (mu = 0)",
               {**_constant_mu(0.0), "experts_per_step": 0}),
        Method("sft-grpo", "SFT for the first half of the steps, then GRPO from that model",
               {}, stages=(("sft", 0.5), ("grpo", 0.5))),
        Method("luffy", "mixed-policy GRPO: one expert trace per group, policy shaping p/(p+0.1)",
               {"expert_weighting": "luffy", "experts_per_step": 0},
               mixing=ExpertInGroup(), joint_normalisation=True),
        Method("chord-mu", "CHORD with the global mu schedule (cosine 0.9 -> 0.05), phi off",
               {"mu_warmup_frac": 0.0, "mu_decay_frac": 1.0, "mu_peak": 0.9, "mu_valley": 0.05,
                "expert_weighting": "none"}),
        Method("chord-phi", "CHORD with token-wise weight phi = p(1-p) and constant mu = 0.1",
               {**_constant_mu(0.1), "expert_weighting": "phi"}),
        Method("sft-is", "ablation: CHORD with importance weight p instead of phi (mu = 0.1)",
               {**_constant_mu(0.1), "expert_weighting": "is"}),
    ]
}


def get_method(name: str) -> Method:
    """The preset called `name`; an unknown name is refused with the nearest valid one."""
    if name not in METHODS:
        near = difflib.get_close_matches(name, list(METHODS), n=1, cutoff=0.0)
        raise ConfigError(f"unknown method {name!r}; did you mean {near[0]!r}? "
                          f"valid methods: {', '.join(METHODS)}")
    return METHODS[name]
