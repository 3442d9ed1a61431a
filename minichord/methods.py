"""Every method of the paper's comparison as a preset of `TrainConfig` fields (the mu schedule, the
expert-token weighting, the batch sizes), and the `Stage`: a stretch of a run's steps with one method.
Every method but LUFFY (minichord/luffy.py) samples B prompts x G rollouts plus E expert demonstrations
and takes L = (1 - mu) L_GRPO + mu L_SFT, each term a token-mean of its own tokens (losses.chord_loss).

| method     | mu(step)                               | expert tokens            | rollouts |
|------------|----------------------------------------|--------------------------|----------|
| sft        | 1                                      | -log p                   | no       |
| grpo       | 0                                      | (none)                   | yes      |
| sft-grpo   | stage 1: sft, stage 2: grpo from it    |                          |          |
| luffy      | one joint token-mean (no mu)           | -A p/(p+0.1)             | G-1      |
| chord-mu   | cosine 0.9 -> 0.05 over the run        | -log p                   | yes      |
| chord-phi  | 0.1                                    | -sg(p(1-p)) log p        | yes      |
| sft-is     | 0.1                                    | -sg(p) log p             | yes      |

Presets only fill defaults: a TOML file or `--set key=value` overrides any field.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any

from minichord import conventions, losses
from minichord.config import ConfigError, TrainConfig


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    summary: str
    preset: dict[str, Any]  # TrainConfig fields
    uses_rollouts: bool = True
    luffy: bool = False  # LUFFY's mixed groups, normalisation and token losses (minichord/luffy.py)
    stages: tuple[tuple[str, float], ...] = ()  # (method, share of steps) run one after another


def _constant_mu(mu: float) -> dict[str, Any]:
    return {"mu_warmup_frac": 0.0, "mu_decay_frac": 0.0, "mu_peak": mu, "mu_valley": mu}


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("sft", "supervised fine-tuning on the expert set only (mu = 1)",
               {**_constant_mu(1.0), "expert_weighting": "uniform", "experts_per_step": 32},
               uses_rollouts=False),
        Method("grpo", "pure on-policy RL (mu = 0)",
               {**_constant_mu(0.0), "experts_per_step": 0}),
        Method("sft-grpo", "SFT for the first half of the steps, then GRPO from that model",
               {}, stages=(("sft", 0.5), ("grpo", 0.5))),
        Method("luffy", "mixed-policy GRPO: one expert trace per group, policy shaping p/(p+0.1)",
               {"experts_per_step": 0}, luffy=True),
        Method("chord-mu", "CHORD with the global mu schedule (cosine 0.9 -> 0.05), phi off",
               {"mu_warmup_frac": 0.0, "mu_decay_frac": 1.0, "mu_peak": 0.9, "mu_valley": 0.05,
                "expert_weighting": "uniform"}),
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


@dataclasses.dataclass
class Stage:
    """A stretch of steps [start, end) run with one method (sft-grpo has two stages, others one)."""

    method: Method
    cfg: TrainConfig
    start: int
    end: int

    def mu(self, step: int) -> float:
        n = self.end - self.start
        return losses.mu_schedule(step - self.start, warmup=round(self.cfg.mu_warmup_frac * n),
                                  decay=round(self.cfg.mu_decay_frac * n),
                                  peak=self.cfg.mu_peak, valley=self.cfg.mu_valley)

    @property
    def convention(self) -> conventions.Convention:
        return conventions.get_convention(self.cfg.convention)

    def loss_spec(self) -> losses.TokenLossSpec:
        """The config's token-loss fields; an unset dual_clip takes the convention's (official: c = 3)."""
        c = self.cfg
        dual_clip = self.convention.dual_clip if c.dual_clip is None else c.dual_clip
        return losses.TokenLossSpec(eps_low=c.eps_low, eps_high=c.eps_high, dual_clip=dual_clip,
                                    log_ratio_clamp=c.log_ratio_clamp, expert_weighting=c.expert_weighting,
                                    luffy=self.method.luffy, entropy_coef=c.entropy_coef, kl_coef=c.kl_coef)

    def check_data(self, data) -> None:
        """Refuse a method whose data is missing (e.g. CHORD with n_expert=0), before any work."""
        c, name = self.cfg, self.method.name
        sft_share = 0 if self.method.luffy else max(c.mu_peak, c.mu_valley)  # the largest mu of the stage
        if sft_share > 0 and c.experts_per_step == 0:
            raise ConfigError(f"experts_per_step=0: method {name} has mu > 0 and needs >= 1 expert example per step")
        if (self.method.luffy or sft_share > 0) and not data.experts:
            raise ConfigError(f"method {name} needs expert demonstrations: n_expert=0 and no experts_file given")
        if self.method.uses_rollouts and not self.method.luffy and not data.prompts:
            raise ConfigError(f"method {name} needs RL prompts: n_rl_prompts=0 and no prompts_file given")
