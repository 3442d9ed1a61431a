"""Write the golden cases (spec: minichord/check/README.md):  python scripts/make_golden.py [OUT_DIR]

Each scenario is computed under every convention of minichord/catalogue.toml (`CONVENTION/NAME`; LUFFY's under
`paper/` only) by `recompute.reference` in float64; each known bug (`bug/NAME`) planted in one batch. Inputs are
decimals or seeded draws rounded to 1e-6, expected numbers are rounded to 10 significant digits: a last-bit exp/log
difference between machines does not change the file.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from minichord.check.dump import from_tensors
from minichord.check.golden import HERE, VERSION
import dataclasses

from minichord.check.recompute import convention_rules, reference
from minichord.config import AGGREGATIONS, CATALOGUE

LN = math.log
META = {"mu": 0.0, "weighting": "phi", "eps_low": 0.2, "eps_high": 0.2}  # a scenario's settings override these


def S(logp, lr=None, adv=0.0, expert=False):
    """One sequence: per-token log-probs, log-ratios logp - old_logp (default 0), its advantage."""
    return dict(logp=[float(x) for x in logp], lr=[float(x) for x in (lr or [0.0] * len(logp))], adv=adv, expert=expert)


def E(probs):
    """An expert sequence given by its token probabilities."""
    return S([LN(p) for p in probs], expert=True)


def rand_seqs(seed, n_on, n_exp, T):
    gen = torch.Generator().manual_seed(seed)

    def r6(x):  # inputs rounded to 1e-6: exact decimals, the same on every machine
        return [round(v, 6) for v in x.tolist()]
    seqs = []
    for i in range(n_on + n_exp):
        n = 1 + int(torch.randint(0, T, (1,), generator=gen))
        logp = r6(-torch.rand(n, generator=gen, dtype=torch.float64) * 3 - 0.01)
        lr = r6((torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * 0.8)
        adv = r6(torch.randn(1, generator=gen, dtype=torch.float64))[0]
        seqs.append(S(logp, lr, adv) if i < n_on else S(logp, expert=True))
    return seqs


MIXED = [S([-0.3, -1.2], [0.1, -0.15], 1.0), S([-2.0], [0.3], -0.5), S([-0.7, -0.1, -1.5], [0.0, 0.25, -0.4], 0.8),
         E([0.5, 0.2]), E([0.9, 0.05, 0.6])]
SFT3 = [E([0.5, 0.2, 0.9]), E([0.3])]

SCENARIOS = {  # name: (description, sequences[, settings])
    "grpo_one_token": ("one rollout token, A = 1, r = 1, mu = 0", [S([-0.5], adv=1.0)]),
    "grpo_r1_mixed_advantages": ("r = 1: L_GRPO = -token-mean(A), gradient -A / N",
                                 [S([-0.1], adv=1.0), S([-0.2, -0.3], adv=-0.5), S([-1, -2, -3], adv=0.25)]),
    "ppo_inside_clip": ("A = +1 r = 1.1, A = -1 r = 0.9: unclipped",
                        [S([-0.4], [LN(1.1)], 1.0), S([-0.6], [LN(0.9)], -1.0)]),
    "ppo_at_clip_thresholds": ("r = 1.2 (A > 0) and r = 0.8 (A < 0) exactly: the unclipped gradient -A r",
                               [S([0.0], [LN(1.2)], 1.0), S([0.0], [LN(0.8)], -1.0)]),
    "ppo_beyond_upper_clip": ("A = +1: r = 1.5 clipped (gradient 0), r = 0.5 not",
                              [S([-0.2, -0.3], [LN(1.5), LN(0.5)], 1.0)]),
    "ppo_below_lower_clip": ("A = -1: r = 0.5 clipped (gradient 0), r = 1.5 not",
                             [S([-0.2, -0.3], [LN(0.5), LN(1.5)], -1.0)]),
    "ppo_asymmetric_clip": ("eps_high = 0.28: r = 1.25 inside, r = 1.3 beyond",
                            [S([-0.5, -0.6], [LN(1.25), LN(1.3)], 2.0)], dict(eps_high=0.28)),
    "dual_clip_binds": ("A = -1 r = 4: paper loss 4 (gradient 4), official min(4, 3) = 3 (gradient 0); A = -2 r = 2 "
                        "unbound", [S([-0.2], [LN(4.0)], -1.0), S([-0.9], [LN(2.0)], -2.0)]),
    "dual_clip_ignores_positive_advantages": ("A = +1 r = 4: clipped at 1.2 by PPO, the dual clip does not apply",
                                              [S([-0.2], [LN(4.0)], 1.0), S([-0.3], adv=-1.0)]),
    "clamp_at_threshold": ("log-ratio exactly 20: not cut, A = -1 gives loss e^20 (paper)",
                           [S([0.0], [20.0], -1.0), S([-0.4], adv=0.5)]),
    "clamp_beyond_positive": ("log-ratio 25, A = -1: r = e^20 after the clamp, gradient 0",
                              [S([-0.5], [25.0], -1.0), S([-0.4], adv=0.5)]),
    "clamp_beyond_negative": ("log-ratio -25, A = +1: r = e^-20, gradient 0",
                              [S([-30.0], [-25.0], 1.0), S([-0.4], adv=0.5)]),
    "sft_uniform": ("mu = 1, plain SFT: -log p token-mean", SFT3, dict(mu=1.0, weighting="uniform")),
    "sft_phi": ("mu = 1, CHORD-phi: -sg(p(1-p)) log p", SFT3, dict(mu=1.0)),
    "sft_is": ("mu = 1, SFT-IS: -sg(p) log p", SFT3, dict(mu=1.0, weighting="is")),
    "phi_p_near_zero": ("phi ~ p for p = e^-30, e^-15: almost no gradient", [S([-30.0, -15.0], expert=True)],
                        dict(mu=1.0)),
    "phi_p_near_one": ("phi ~ 1 - p for log p = -1e-9, -1e-4", [S([-1e-9, -1e-4], expert=True)], dict(mu=1.0)),
    "is_p_extremes": ("IS weight p at p = e^-30 and p ~ 1", [S([-30.0, -1e-9], expert=True)],
                      dict(mu=1.0, weighting="is")),
    "mu_zero_with_experts": ("mu = 0: expert tokens get no gradient", MIXED),
    "mu_one_with_rollouts": ("mu = 1: rollout tokens get no gradient", MIXED, dict(mu=1.0)),
    "mu_mixed_phi": ("mu = 0.3, CHORD-phi", MIXED, dict(mu=0.3)),
    "mu_mixed_uniform": ("mu = 0.3, plain SFT", MIXED, dict(mu=0.3, weighting="uniform")),
    "no_expert_side": ("no expert tokens: L = (1 - mu) L_GRPO", MIXED[:3], dict(mu=0.3)),
    "no_rollout_side": ("no rollout tokens: L = mu L_SFT", MIXED[3:], dict(mu=0.3)),
    "varied_lengths": ("lengths 1, 4, 2 and 3, 1: token-mean differs from sequence-mean",
                       [S([-0.1], adv=1.0), S([-0.5, -0.2, -1.0, -0.3], [0.1, 0.0, -0.1, 0.05], -1.0),
                        S([-0.4, -0.8], adv=0.5), E([0.4, 0.7, 0.2]), E([0.6])], dict(mu=0.5)),
    "mask_with_gaps": ("response mask with holes (e.g. tool outputs): only masked tokens count",
                       [S([-0.1, -0.5, -0.2, -0.9], [0.05, 0.0, -0.1, 0.2], 1.0), S([-0.3, -0.6, -0.4], adv=-1.0),
                        E([0.3, 0.8, 0.5])], dict(mu=0.2, holes=[(0, 1), (0, 2), (2, 1)])),
    "two_micro_batches": ("micro-batches {a, e} and {b, c}: official weights them 1/3, 2/3 (rollouts) and 1 (expert)",
                          [S([-1.0, -1.0], [0.0, LN(1.5)], 1.0), S([-2.0], [LN(4.0)], -1.0), S([-1.0], adv=1.0),
                           E([0.5])], dict(mu=0.5, micro_batch=[0, 1, 1, 0])),
    "three_micro_batches": ("three micro-batches, one of experts only, one of rollouts only",
                            MIXED + [S([-0.2, -0.5, -0.1], [0.2, -0.1, 0.0], -0.7)],
                            dict(mu=0.4, micro_batch=[0, 0, 2, 1, 1, 2])),
    "micro_batch_of_one_sequence": ("each sequence its own micro-batch: official = per-sequence mean",
                                    MIXED, dict(mu=0.4, micro_batch=[0, 1, 2, 3, 4])),
    "rewards_unbiased_std": ("rewards [1, 0, 0, 1]: A = +-0.5 / sqrt(1/3) = +-0.866 (unbiased std)",
                             [S([-0.5, -0.4]), S([-0.2]), S([-0.9, -0.1]), S([-0.3])],
                             dict(rewards=[1, 0, 0, 1], group_ids=[0, 0, 0, 0])),
    "rewards_all_equal": ("groups [1, 1, 1] and [0, 0]: A = 0 exactly; group [0, 1] carries the gradient",
                          [S([-0.5]), S([-0.2]), S([-0.9]), S([-0.3, -0.1]), S([-0.6]), S([-0.4]), S([-0.7])],
                          dict(rewards=[1, 1, 1, 0, 0, 0, 1], group_ids=[0, 0, 0, 1, 1, 2, 2])),
    "rewards_group_of_one": ("a group of one (reward 1): paper A = 0, official A = 1 / (1 + 1e-6)",
                             [S([-0.5, -0.2]), S([-0.3]), S([-0.8]), E([0.4])],
                             dict(mu=0.2, rewards=[1, 0, 1, 0], group_ids=[7, 3, 3, 0])),
    "rewards_mixed_group_sizes": ("groups of 3, 2, 4 with fractional rewards",
                                  [S([-0.1 * (i + 1), -0.05 * i]) for i in range(9)] + [E([0.5, 0.5])],
                                  dict(mu=0.1, rewards=[0.2, 0.9, 0.5, 1.0, 0.0, 0.3, 0.3, 0.8, 0.1, 0.0],
                                       group_ids=[0, 0, 0, 1, 1, 2, 2, 2, 2, 9])),
    "random_phi": ("seeded batch, ratios in [0.67, 1.49], CHORD-phi, two micro-batches", rand_seqs(1, 5, 3, 6),
                   dict(mu=0.25, micro_batch=[0, 1, 0, 1, 1, 0, 1, 1])),
    "random_uniform": ("seeded batch, plain SFT, two micro-batches", rand_seqs(2, 5, 3, 6),
                       dict(mu=0.6, weighting="uniform", micro_batch=[1, 1, 0, 0, 1, 0, 0, 1])),
    "random_is": ("seeded batch, SFT-IS, eps_high 0.28", rand_seqs(3, 4, 2, 5),
                  dict(mu=0.1, weighting="is", eps_high=0.28)),
}

LUFFY = {  # weighting "luffy": l = -A r on rollouts (no clip), -A p / (p + 0.1) on expert traces; one joint token-mean
    "luffy_basic": ("A = R - mean(R) given; r = 1.5 is not clipped; expert p = 0.1, 0.3",
                    [S([-0.4, -0.2], [LN(1.5), 0.0], 0.5), S([-1.0], adv=-0.5),
                     S([LN(0.1), LN(0.3)], adv=0.5, expert=True)], dict(weighting="luffy")),
    "luffy_shaping_small_p": ("expert p = 1e-4 and 0.9: shaping p / (p + 0.1) boosts the unlikely token",
                              [S([-0.3], adv=-0.25), S([LN(1e-4), LN(0.9)], adv=0.75, expert=True)],
                              dict(weighting="luffy")),
    "luffy_clamp": ("log-ratio 25 on a rollout: r = e^20, gradient 0",
                    [S([-0.5], [25.0], -0.5), S([LN(0.5)], adv=0.5, expert=True)], dict(weighting="luffy")),
    "luffy_rewards": ("mixed group: rollouts [0, 1, 0] + expert trace 1, A = R - 0.5 (no std)",
                      [S([-0.5]), S([-0.2, -0.3]), S([-0.9]), S([LN(0.4), LN(0.6)], expert=True)],
                      dict(weighting="luffy", rewards=[0, 1, 0, 1], group_ids=[0, 0, 0, 0])),
}


def _sig(x: float) -> float:
    return float(f"{x:.10g}")


def _pad(rows: list[list], dtype=torch.float64) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence([torch.tensor(r, dtype=dtype) for r in rows], batch_first=True)  # [B, T]


STEPS = [S([-0.3, -1.2], [0.1, -0.15], 1.0), S([-2.0], [0.3], -0.5), S([-0.7, -0.1, -1.5], [0.0, 0.25, -0.4], 0.8),
         S([-0.2, -0.5, -0.1], [0.2, -0.1, 0.0], -0.7), S([-0.9, -0.4], [-0.2, 0.1], 0.6), S([-1.1], [0.05], -1.2),
         E([0.5, 0.2]), E([0.9, 0.05, 0.6]), E([0.3]), E([0.7, 0.4])]
FOUR_STEPS = dict(mu=0.3, micro_batch=[0, 1, 2, 3, 1, 2, 0, 1, 2, 3])  # every step holds rollouts; G = 4
BUG_CASES = {  # bug: (target convention, the bug as planted, description, sequences, settings)
    "phi_not_detached": ("paper", "phi_not_detached", "phi keeps its gradient, mu = 0.5", MIXED, dict(mu=0.5)),
    "micro_batch_sample_share": ("paper", "micro-batch", "official weighting under a token-mean target", STEPS,
                                 FOUR_STEPS),
    "per_device_normaliser": ("paper", "micro-batch-equal", "equal-weight micro-batch token-means", STEPS, FOUR_STEPS),
    "generation_normaliser": ("paper", "generation_normaliser/2", "S = 2 steps per generation, G = 4", STEPS,
                              FOUR_STEPS),
    "accumulation_divided_twice": ("paper", "accumulation_divided_twice", "GRPO term / G, G = 4", STEPS, FOUR_STEPS),
    "middle_micro_batches_dropped": ("official", "middle_micro_batches_dropped", "steps 1 and 2 of 4 lost", STEPS,
                                     FOUR_STEPS),
    "first_micro_batch_only": ("paper", "first_micro_batch_only", "steps 1..3 of 4 lost", STEPS, FOUR_STEPS),
    "last_micro_batch_only": ("official", "last_micro_batch_only", "steps 0..2 of 4 lost", STEPS, FOUR_STEPS),
}


def build_case(seqs, settings, convention: str, bug: str | None = None):
    """(tensors, index entry) of one case: the DUMP fields, the expected loss and gradient."""
    logp = _pad([s["logp"] for s in seqs])  # [B, T], 0 past each sequence's end
    is_expert = torch.tensor([s["expert"] for s in seqs])
    old_logp = torch.where(is_expert[:, None], 0.0, logp - _pad([s["lr"] for s in seqs]))  # [B, T]
    mask = _pad([[True] * len(s["logp"]) for s in seqs], torch.bool)  # [B, T]
    B, T = mask.shape
    for i, t in settings.get("holes", []):
        mask[i, t] = False
    tensors = {"logp": logp, "old_logp": old_logp, "mask": mask, "is_expert": is_expert}
    if "rewards" in settings:
        tensors["rewards"] = torch.tensor(settings["rewards"], dtype=torch.float64)
        tensors["group_ids"] = torch.tensor(settings["group_ids"], dtype=torch.long)
    else:
        tensors["advantages"] = torch.tensor([s["adv"] for s in seqs], dtype=torch.float64)[:, None].expand(B, T) * mask
    if "micro_batch" in settings:
        tensors["micro_batch"] = torch.tensor(settings["micro_batch"], dtype=torch.long)
    meta = {k: settings.get(k, v) for k, v in META.items()}
    d = from_tensors({**tensors, "loss": torch.tensor(0.0), "grad_logp": torch.zeros(B, T)},
                     {k: repr(v) if not isinstance(v, str) else v for k, v in meta.items()})
    rules = convention_rules(convention, d.weighting)
    if bug in AGGREGATIONS:  # a bug that is another aggregation than the target's
        rules, bug = dataclasses.replace(rules, aggregation=bug, sft_aggregation=None), None
    ref = reference(d, rules, bug)
    tensors["grad_logp"] = torch.zeros(B, T, dtype=torch.float64)
    tensors["grad_logp"][mask] = torch.tensor([_sig(g) for g in ref.grad.tolist()], dtype=torch.float64)
    expected = {"loss": _sig(ref.loss), "L_GRPO": _sig(ref.grpo), "L_SFT": _sig(ref.sft),
                "loss_scale": _sig(ref.loss_scale)}
    return tensors, {**meta, "convention": convention, "expected": expected,
                     "advantages_from_rewards": "rewards" in settings}


def build() -> tuple[dict, dict]:
    tensors, cases = {}, []
    jobs = [(c, n, None, *v) for n, v in SCENARIOS.items() for c in CATALOGUE["convention"]] + \
           [("paper", n, None, *v) for n, v in LUFFY.items()] + \
           [(c, n, planted, *v) for n, (c, planted, *v) in BUG_CASES.items()]
    for convention, name, bug, description, seqs, *settings in sorted(jobs, key=lambda j: (bool(j[2]), j[0], j[1])):
        case_tensors, entry = build_case(seqs, settings[0] if settings else {}, convention, bug)
        full = f"bug/{name}" if bug else f"{convention}/{name}"
        tensors.update({f"{full}.{k}": v.contiguous() for k, v in case_tensors.items()})
        cases.append({"name": full, "description": description, **entry, "tensors": sorted(case_tensors),
                      **({"bug": name} if bug else {})})
    return tensors, {"version": VERSION, "schema": "minichord/check/README.md", "cases": cases}


def write(out_dir: Path) -> tuple[Path, Path]:
    from safetensors.torch import save_file

    (out_dir := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    tensors, index = build()
    data, meta = out_dir / f"cases-v{VERSION}.safetensors", out_dir / f"cases-v{VERSION}.json"
    save_file(tensors, str(data))
    meta.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return data, meta


if __name__ == "__main__":
    paths = write(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
    print(f"wrote {len(json.loads(paths[1].read_text())['cases'])} cases: {paths[0]}, {paths[1]}")
