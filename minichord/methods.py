"""Every method of the paper's comparison, and every convention, as a preset of `TrainConfig` fields; the
`Stage` (a stretch of a run's steps with one method) and `build_stages` (method + file + overrides -> stages).

| method     | mu(step)                               | expert tokens            | rollouts per prompt   |
|------------|----------------------------------------|--------------------------|-----------------------|
| sft        | 1                                      | -log p                   | none                  |
| grpo       | 0                                      | (none)                   | G                     |
| sft-grpo   | stage 1: sft, stage 2: grpo from it    |                          |                       |
| luffy      | none: one joint token-mean             | -A p/(p+0.1)             | G-1 + the expert trace|
| chord-mu   | cosine 0.9 -> 0.05 over the run        | -log p                   | G                     |
| chord-phi  | 0.1                                    | -sg(p(1-p)) log p        | G                     |
| sft-is     | 0.1                                    | -sg(p) log p             | G                     |

L = (1 - mu) L_GRPO + mu L_SFT (minichord/losses.py). A convention presets the loss fields on which implementations
disagree (aggregation, dual clip, clamp, a group of one, std): `paper` (the default: one token-mean per term, no dual
clip), `official` (= trinity-mix-chord, the official code), ms-swift's and verl's, each with its source, are data in
minichord/catalogue.toml (`minichord check --list` prints them).

Presets only fill defaults: method preset <- convention preset <- a TOML file <- `--set key=value`.

The departures from the paper (arXiv 2508.11408) and its official code, the one list:
- Scale: ~1M-parameter toy model, lr 1e-4, B=8 x G=8 + E=16 (paper: Qwen2.5-7B-Instruct, lr 1e-6, 32 x 8 + 64).
- Normalisation: one token-mean per term over the whole batch (paper-era code); the official code's and the
  engines': `convention` (minichord/catalogue.toml).
- `log_ratio_clamp` +-20 on (official code); mu's warm-up and decay are shares of the run (official: W=0, D=200).
- Reward: 1 for an exactly matching final answer, else 0, no format reward; with a Hugging Face model the math
  reward (minichord/tasks/math.py): the answer in the required format (\\boxed{}, ####, "answer:").
- A Hugging Face model whose embedding has more rows than its tokenizer (Qwen2.5: 151,936 vs 151,665) is
  sampled over the tokenizer's ids but trained over all rows (their probabilities are ~0, not exactly 0).
- Expert examples are drawn per step, without replacement within a step, with it across steps (not epochs).
- Old log-probs are the sampler's with one update per batch; recomputed with several.
- LUFFY: expert trace = reward 1 in its group; A = R - mean(R); joint token-mean; no clip.
- SFT->GRPO splits the steps in half; the GRPO stage starts with a fresh optimizer.
- AdamW, betas (0.9, 0.95), no weight decay, gradient clipping at 1.0.
- The toy's expert is partly on-policy (median expert-token p ~0.38): its base saw the expert's format cleanly on
  1-2 digit sums, sloppily on 3-digit ones (minichord/tasks/toy.py); the paper's is off-policy in content too.
- The toy's room for RL is partly a format (its base answers big sums in a sentence the reward marks wrong); in
  the paper it is the policy's own mistakes on hard problems."""

import dataclasses
from typing import Any

from minichord import losses
from minichord.config import CATALOGUE, ConfigError, TrainConfig, load_config, unknown_name


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    summary: str
    preset: dict[str, Any]  # TrainConfig fields (a nested dict for the `loss` table)
    uses_rollouts: bool = True
    stages: tuple[tuple[str, float], ...] = ()  # (method, share of steps) run one after another


def _constant_mu(mu: float) -> dict[str, Any]:
    return {"mu_warmup_frac": 0.0, "mu_decay_frac": 0.0, "mu_peak": mu, "mu_valley": mu}


LUFFY_LOSS = {"expert_weighting": "luffy", "aggregation": "joint", "std": "none", "expert_in_group": True}

METHODS: dict[str, Method] = {m.name: m for m in [
    Method("sft", "supervised fine-tuning on the expert set only (mu = 1)",
           {**_constant_mu(1.0), "experts_per_step": 32}, uses_rollouts=False),
    Method("grpo", "pure on-policy RL (mu = 0)", {**_constant_mu(0.0), "experts_per_step": 0}),
    Method("sft-grpo", "SFT for the first half of the steps, then GRPO from that model",
           {}, stages=(("sft", 0.5), ("grpo", 0.5))),
    Method("luffy", "mixed-policy GRPO: one expert trace per group, policy shaping p/(p+0.1)",
           {"experts_per_step": 0, "loss": LUFFY_LOSS}),
    Method("chord-mu", "CHORD with the global mu schedule (cosine 0.9 -> 0.05), phi off",
           {"mu_warmup_frac": 0.0, "mu_decay_frac": 1.0, "mu_peak": 0.9, "mu_valley": 0.05}),
    Method("chord-phi", "CHORD with token-wise weight phi = p(1-p) and constant mu = 0.1",
           {**_constant_mu(0.1), "loss": {"expert_weighting": "phi"}}),
    Method("sft-is", "ablation: CHORD with importance weight p instead of phi (mu = 0.1)",
           {**_constant_mu(0.1), "loss": {"expert_weighting": "is"}})]}

CONVENTIONS: dict[str, dict[str, Any]] = {n: c["loss"] for name, c in CATALOGUE["convention"].items()  # loss fields
                                          for n in (name, c.get("also")) if n}


def get_method(name: str) -> Method:
    """The preset called `name`; an unknown name is refused with the nearest valid one."""
    if name not in METHODS:
        raise ConfigError(unknown_name("method", name, METHODS))
    return METHODS[name]


@dataclasses.dataclass
class Stage:
    """A stretch of steps [start, end) run with one method (sft-grpo has two stages, others one)."""

    method: Method
    cfg: TrainConfig
    start: int
    end: int

    def mu(self, step: int) -> float | None:
        """The global SFT weight at `step`; None under the joint aggregation (LUFFY has no mu)."""
        if self.cfg.loss.aggregation == "joint":
            return None
        n, c = self.end - self.start, self.cfg
        return losses.mu_schedule(step - self.start, warmup=round(c.mu_warmup_frac * n),
                                  decay=round(c.mu_decay_frac * n), peak=c.mu_peak, valley=c.mu_valley)

    def check_data(self, data) -> None:
        """Refuse a method whose data is missing (e.g. CHORD with n_expert=0), before any work."""
        c, name, mixed = self.cfg, self.method.name, self.cfg.loss.expert_in_group
        sft_share = 0 if mixed else max(c.mu_peak, c.mu_valley)  # the largest mu of the stage
        if sft_share > 0 and c.experts_per_step == 0:
            raise ConfigError(f"experts_per_step=0: method {name} has mu > 0 and needs >= 1 expert example per step")
        if (mixed or sft_share > 0) and not data.experts:
            raise ConfigError(f"method {name} needs expert demonstrations: n_expert=0 and no experts_file given")
        if self.method.uses_rollouts and not mixed and not data.prompts:
            raise ConfigError(f"method {name} needs RL prompts: n_rl_prompts=0 and no prompts_file given")


def stage_config(method_name: str, config_file: str | None = None,
                 overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A method's TrainConfig; the convention is read first: it may come from the file or an override."""
    preset = get_method(method_name).preset
    convention = load_config(TrainConfig, config_file, list(overrides), base=preset).convention
    loss = {**CONVENTIONS[convention], **preset.get("loss", {})}
    return load_config(TrainConfig, config_file, list(overrides), base={**preset, "loss": loss})


def build_stages(method_name: str, config_file: str | None = None,
                 overrides: list[str] | tuple[str, ...] = ()) -> list[Stage]:
    """Each stage's config = stage_config(its method); sft-grpo's stages split `steps`."""
    method, top = get_method(method_name), stage_config(method_name, config_file, overrides)
    if not method.stages:
        return [Stage(method, top, 0, top.steps)]
    stages, start = [], 0
    for i, (stage, share) in enumerate(method.stages):
        if (end := top.steps if i == len(method.stages) - 1 else start + round(share * top.steps)) <= start:
            raise ConfigError(f"steps={top.steps}: method {method_name} needs >= {len(method.stages)} steps "
                              f"(one per stage)")
        stages.append(Stage(get_method(stage), stage_config(stage, config_file, overrides), start, end))
        start = end
    return stages
