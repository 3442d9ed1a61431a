"""`minichord check`: planted mistakes in a hand-written user implementation are named; the official
preset on a two-micro-batch case computed by hand; the golden cases regenerate byte-identically; the CLI."""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import save_file

from minichord.check import check_batch
from minichord.check.recompute import convention_rules, reference
from minichord.config import CATALOGUE, LossConfig
from minichord.methods import CONVENTIONS
from minichord.cli import main
from minichord.check.dump import DumpError, from_tensors


from conftest import load_script as _load_script

LN = math.log

# ---------------------------------------------------------------- a researcher's implementation, plain torch


def user_advantages(rewards, group_ids, is_expert, *, biased=False, singleton="zero", eps=1e-6):
    """rewards [B] -> A [B]: (R - mean) / (std + eps) within each group of on-policy sequences."""
    adv = torch.zeros_like(rewards)
    for g in group_ids[~is_expert].unique():
        rows = (group_ids == g) & ~is_expert
        r = rewards[rows]
        if len(r) == 1:
            adv[rows] = 0.0 if singleton == "zero" else r / (1 + eps)
        else:
            adv[rows] = (r - r.mean()) / (r.std(unbiased=not biased) + eps)
    return adv


def user_loss(logp, old_logp, adv, mask, is_expert, micro_batch, mu, *, weighting="phi", eps=(0.2, 0.2), agg="token",
              sft_agg=None, dual_clip=None, clamp=True, detach_phi=True, keep="all", bug=None, only=None, ranks=1,
              dtype=torch.float32):
    """CHORD with gradient accumulation over micro-batches; returns (loss, d loss / d logp). agg (sft_agg: the SFT
    term's, default agg): token | sequence | seq-sum (global) | micro (official) | micro-equal | micro-seq (ms-swift);
    keep: all | first | last (zero_grad inside the loop) | ends (DeepSpeed #7967): the steps whose gradient survives;
    bug: None | "twice" (GRPO term / G) | ("generation", S); only [B] bool: the loss and gradient of these sequences
    alone, normalisers still the whole batch's (one rank's share); ranks: micro_batch holds rank-major cells."""
    logp = logp.detach().to(dtype).requires_grad_(True)
    micro_batch = torch.zeros(len(is_expert), dtype=torch.long) if micro_batch is None else micro_batch
    m = mask.to(dtype)
    on, ex = m * (~is_expert)[:, None], m * is_expert[:, None]  # [B, T]
    a = adv.to(dtype)[:, None] if adv.dim() == 1 else adv.to(dtype)
    log_ratio = logp - old_logp.to(dtype)
    ratio = (log_ratio.clamp(-20, 20) if clamp else log_ratio).exp()
    pg = torch.maximum(-a * ratio, -a * ratio.clamp(1 - eps[0], 1 + eps[1]))
    if dual_clip:
        pg = torch.where(a < 0, torch.minimum(pg, -a * dual_clip), pg)
    p = logp.exp()
    w = {"phi": p * (1 - p), "is": p, "uniform": torch.ones_like(p)}[weighting]
    sft = -(w.detach() if detach_phi else w) * logp
    if only is not None:
        pg, sft = pg * only[:, None], sft * only[:, None]
    total, micro = 0.0, sorted(micro_batch.unique().tolist())

    def term(x, side, rows, how):  # one side's loss over the sequences `rows` [B] of this micro-batch
        seqs = side.any(1)  # [B]
        per_seq_mean = (x * side).sum(1) / side.sum(1).clamp(min=1)
        if how == "token":  # normalised by the whole batch's counts
            return (x * side * rows[:, None]).sum() / side.sum().clamp(min=1)
        if how in ("sequence", "seq-sum"):
            per_seq = per_seq_mean if how == "sequence" else (x * side).sum(1)
            return (per_seq * rows * seqs).sum() / seqs.sum().clamp(min=1)
        if how == "micro":  # official: token mean in the micro-batch x its share of the side's sequences
            share = (rows * seqs).sum() / seqs.sum().clamp(min=1)
            return (x * side * rows[:, None]).sum() / (side * rows[:, None]).sum().clamp(min=1) * share
        if how == "micro-equal":  # a token mean per micro-batch, the Trainer's / G
            return (x * side * rows[:, None]).sum() / (side * rows[:, None]).sum().clamp(min=1) / len(micro)
        return (per_seq_mean * rows * seqs).sum() / (rows * seqs).sum().clamp(min=1) / len(micro)  # micro-seq

    G = len(micro) // ranks  # accumulation steps per rank; cell i is step i % G of its rank
    for i, k in enumerate(micro):
        rows = (micro_batch == k).to(dtype)
        l_on, l_ex = term(pg, on, rows, agg), term(sft, ex, rows, sft_agg or agg)
        if bug == "twice":  # the GRPO term's window normaliser, then / G once more
            l_on = l_on / G
        elif bug:  # ("generation", S): the GRPO term over chunks of S steps (all ranks), each by its own token count
            S = bug[1]
            same_chunk = [c for j, c in enumerate(micro) if (j % G) // S == (i % G) // S]
            chunk = torch.isin(micro_batch, torch.tensor(same_chunk))
            l_on = (pg * on * rows[:, None]).sum() / (on * chunk[:, None]).sum().clamp(min=1)
        loss = (1 - mu) * l_on + mu * l_ex
        total += loss.item()
        if keep == "all" or i % G in {"first": {0}, "last": {G - 1}, "ends": {0, G - 1}}[keep]:
            loss.backward(retain_graph=True)  # one shared forward here; a real loop runs one per micro-batch
    grad = torch.zeros_like(logp) if logp.grad is None else logp.grad
    return torch.tensor(total, dtype=torch.float64), grad


def batch(micro_batch=None):
    """8 sequences: groups [1, 0, 0], [0, 1], a group of one [1]; 2 expert demonstrations; 2 micro-batches."""
    gen = torch.Generator().manual_seed(3)
    lengths = torch.tensor([3, 5, 4, 2, 5, 3, 4, 2])
    mask = torch.arange(5)[None, :] < lengths[:, None]  # [8, 5]
    is_expert = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    logp = -torch.rand(8, 5, generator=gen, dtype=torch.float64) * 2.5 - 0.05
    old_logp = logp + (torch.rand(8, 5, generator=gen, dtype=torch.float64) - 0.5) * 0.6
    old_logp[1, 0] = logp[1, 0] - LN(4.0)  # A < 0, r = 4: the dual clip binds
    old_logp[2, 1] = logp[2, 1] - 21.0  # A < 0, log-ratio 21: the clamp binds
    return dict(logp=logp, old_logp=old_logp, mask=mask, is_expert=is_expert,
                rewards=torch.tensor([1.0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.float64),
                group_ids=torch.tensor([0, 0, 0, 1, 1, 2, 3, 4]),
                micro_batch=torch.tensor(micro_batch or (0, 0, 1, 1, 1, 1, 0, 1)))


FOUR_STEPS = (0, 1, 2, 3, 2, 3, 0, 1)  # 4 accumulation steps: the bugs that need G >= 3 show


def dump_of(b, mu=0.2, adv_kw=None, **loss_kw):
    adv = user_advantages(b["rewards"], b["group_ids"], b["is_expert"], **(adv_kw or {}))
    loss, grad = user_loss(b["logp"], b["old_logp"], adv, b["mask"], b["is_expert"], b["micro_batch"], mu, **loss_kw)
    return {**b, "advantages": adv, "loss": loss, "grad_logp": grad}, {"mu": str(mu), "weighting": "phi"}


PAPER = dict()
OFFICIAL = dict(agg="micro", dual_clip=3.0, adv_kw=dict(singleton="official"))
IMPLEMENTATIONS = {  # convention: this file's implementation of it, read from the engine's code (catalogue.toml)
    "paper": PAPER, "official": OFFICIAL, "trinity-mix-chord": OFFICIAL,
    "ms-swift": dict(agg="micro-seq", sft_agg="micro-equal", clamp=False, adv_kw=dict(eps=1e-4)),
    "verl-token-mean": dict(OFFICIAL, agg="token"), "verl-seq-mean-token-mean": dict(OFFICIAL, agg="sequence"),
    "verl-seq-mean-token-sum": dict(OFFICIAL, agg="seq-sum")}


@pytest.mark.parametrize("preset", list(IMPLEMENTATIONS))
def test_a_correct_implementation_matches_each_convention(preset):
    assert set(IMPLEMENTATIONS) == set(CONVENTIONS)
    result = check_batch(from_tensors(*dump_of(batch(), **IMPLEMENTATIONS[preset])), preset)
    assert result.match, result.report()
    assert result.report().startswith("match")
    other = "paper" if preset != "paper" else "official"  # checked against another: named as what it is
    result = check_batch(from_tensors(*dump_of(batch(), **IMPLEMENTATIONS[preset])), other)
    assert not result.match
    assert {preset, "official" if preset == "trinity-mix-chord" else preset} & set(result.matches), result.report()
    assert f"your numbers match convention {result.matches[0]}" in result.report()


PLANTED = [  # (target preset, implementation, the change planted in it[, micro-batch ids])
    ("paper", dict(detach_phi=False), "phi_not_detached"), ("paper", dict(agg="sequence"), "sequence_mean"),
    ("paper", dict(clamp=False), "no_clamp"), ("official", dict(OFFICIAL, dual_clip=None), "no_dual_clip"),
    ("paper", dict(adv_kw=dict(biased=True)), "biased_std"), ("paper", dict(keep="last"), "last_micro_batch_only"),
    ("official", dict(OFFICIAL, adv_kw=dict(singleton="zero")), "wrong_singleton"),
    ("paper", dict(adv_kw=dict(singleton="official")), "wrong_singleton"),
    ("official", dict(OFFICIAL, detach_phi=False), "phi_not_detached"),
    ("official", dict(OFFICIAL, clamp=False), "no_clamp"),
    ("official", dict(OFFICIAL, keep="first"), "first_micro_batch_only"),
    ("paper", dict(agg="micro"), "micro_batch_sample_share"),
    ("paper", dict(agg="micro-equal"), "per_device_normaliser"),
    ("paper", dict(agg="seq-sum"), "sequence_sum"), ("official", dict(OFFICIAL, agg="token"), "token_mean"),
    ("paper", dict(bug="twice"), "accumulation_divided_twice"),
    ("paper", dict(bug=("generation", 2)), "generation_normaliser", FOUR_STEPS),
    ("paper", dict(bug=("generation", 1)), "generation_normaliser", FOUR_STEPS),
    ("paper", dict(keep="ends"), "middle_micro_batches_dropped", FOUR_STEPS),
    ("verl-token-mean", dict(IMPLEMENTATIONS["verl-token-mean"], keep="ends"), "middle_micro_batches_dropped",
     FOUR_STEPS),
    ("ms-swift", dict(IMPLEMENTATIONS["ms-swift"], adv_kw=dict(eps=1e-6)), "std_eps"),
    ("ms-swift", dict(IMPLEMENTATIONS["ms-swift"], detach_phi=False), "phi_not_detached"),
]
MICRO_BATCH_CAUSES = {"last_micro_batch_only", "first_micro_batch_only", "micro_batch_sample_share",
                      "per_device_normaliser", "accumulation_divided_twice", "generation_normaliser",
                      "middle_micro_batches_dropped"}


@pytest.mark.parametrize("preset,impl,cause,ids", [p + (None,) * (4 - len(p)) for p in PLANTED
                                                   if p[::2] != ("official", "no_clamp")])  # dual clip hides it here
def test_each_planted_mistake_is_named(preset, impl, cause, ids):
    result = check_batch(from_tensors(*dump_of(batch(ids), **impl)), preset)
    assert not result.match
    assert result.causes == [cause], result.report()
    assert f"[{cause}]" in result.report()
    assert result.first_diffs or "loss" in result.report()


@pytest.mark.parametrize("micro_batches", ["none", "one"])
def test_official_without_micro_batches_names_only_the_planted_change(micro_batches):
    b = batch(micro_batch=[0] * 8)  # one micro-batch: token-mean = its weighting
    tensors, meta = dump_of(b, **dict(OFFICIAL, dual_clip=None))
    if micro_batches == "none":
        del tensors["micro_batch"]
    result = check_batch(from_tensors(tensors, meta), "official")
    assert result.causes == ["no_dual_clip"] and "[token_mean]" not in result.report(), result.report()


def test_random_planted_changes_get_no_false_cause():
    """>= 200 random dumps with one planted change: the diagnosis names that change, alone, or (listed beside it)
    another single change that gives the same numbers on that batch; a batch that cannot show it matches."""
    rng = torch.Generator().manual_seed(0)
    named = 0
    for trial in range(264):
        preset, impl, planted, *ids = PLANTED[trial % len(PLANTED)]
        b = batch(*ids)  # ids: the plant's micro-batches, if it names them
        b["logp"] = -torch.rand(8, 5, generator=rng, dtype=torch.float64) * 3.0 - 0.02
        b["old_logp"] = b["logp"] + (torch.rand(8, 5, generator=rng, dtype=torch.float64) - 0.5) * 0.8
        b["rewards"] = torch.randint(0, 2, (8,), generator=rng).double()
        one = planted not in MICRO_BATCH_CAUSES and trial % 3 == 0  # one micro-batch, its ids dropped or kept
        if one:
            b["micro_batch"] = torch.zeros(8, dtype=torch.long)
        tensors, meta = dump_of(b, **impl)
        if one and trial % 2:
            del tensors["micro_batch"]
        result = check_batch(from_tensors(tensors, meta), preset)
        if result.match:  # the batch cannot tell the planted change from the target (e.g. no clip binds)
            continue
        diagnoses = [[c.key for c in dg.causes] for dg in result.diagnoses]
        assert [planted] in diagnoses and all(len(d) == 1 for d in diagnoses), (trial, preset, planted, diagnoses)
        named += 1
    assert named >= 150  # most plants show in their batch


def test_a_mistake_of_another_kind_is_not_explained_away():
    # no-clamp gradients are ~1e7 on one token: that must not widen the tolerance of the others
    tensors, meta = dump_of(batch(), agg="sequence", clamp=False)
    assert check_batch(from_tensors(tensors, meta), "paper").causes == ["sequence_mean", "no_clamp"]
    tensors["grad_logp"][0, 0] += 0.01
    result = check_batch(from_tensors(tensors, meta), "paper")
    assert not result.match and not result.diagnoses and result.first_diffs[0].index == 0
    assert "no known convention or bug reproduces your numbers" in result.report()
    assert "closest variant: sequence_mean, no_clamp (still 1 of 28 tokens differ)" in result.report()


def test_official_preset_on_a_two_micro_batch_case_by_hand():
    # mu = .5, eps = .2, dual clip 3, phi weighting. micro-batch 0: rollout a (2 tokens, A = +1, r = 1, 1.5),
    # expert e (1 token, p = .5); micro-batch 1: rollouts b (1 token, A = -1, r = 4) and c (1 token, A = +1, r = 1).
    # Per-token losses: a: -1 (r = 1), -1.2 (r = 1.5 clipped, gradient 0); b: max(4, 1.2) = 4 -> min(4, 3) = 3
    # (dual clip, gradient 0); c: -1; e: -.25 ln .5 = .1732868.
    # On-policy sequences: a in mb 0, b and c in mb 1 -> shares 1/3, 2/3; the expert: share 1 in mb 0.
    # L_GRPO = 1/3 * (-1 - 1.2) / 2 + 2/3 * (3 - 1) / 2 = -.3666667 + .6666667 = .3;  L_SFT = .1732868
    # L = .5 * .3 + .5 * .1732868 = .2366434
    # d L / d logp: a0: .5 * 1/3 * 1/2 * (-A r) = -.0833333; a1: 0; b: 0; c: .5 * 2/3 * 1/2 * (-1) = -.1666667;
    #               e: .5 * 1 * 1 * (-.25) = -.125
    nan = float("nan")
    logp = torch.tensor([[-1.0, -1.0], [-2.0, nan], [-1.0, nan], [LN(0.5), nan]], dtype=torch.float64)
    old_logp = logp - torch.tensor([[0.0, LN(1.5)], [LN(4.0), 0], [0.0, 0], [0, 0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0], [1, 0], [1, 0]], dtype=torch.bool)
    d = from_tensors({"logp": logp, "old_logp": old_logp, "mask": mask, "is_expert": torch.tensor([0, 0, 0, 1]),
                      "advantages": torch.tensor([1.0, -1.0, 1.0, 0.0]), "micro_batch": torch.tensor([0, 1, 1, 0]),
                      "loss": torch.tensor(0.2366434), "grad_logp": torch.zeros(4, 2)}, {"mu": "0.5", "weighting": "phi"})
    ref = reference(d, convention_rules("official", "phi"))
    assert ref.grpo == pytest.approx(0.3, abs=1e-7) and ref.sft == pytest.approx(0.1732868, abs=1e-7)
    assert ref.loss == pytest.approx(0.2366434, abs=1e-7)
    torch.testing.assert_close(ref.grad, torch.tensor([-1 / 12, 0.0, 0.0, -1 / 6, -0.125], dtype=torch.float64))
    # paper on the same batch: one token-mean, no dual clip: L_GRPO = (-1 - 1.2 + 4 - 1) / 4 = .2
    paper = reference(d, convention_rules("paper", "phi"))
    assert paper.grpo == pytest.approx(0.2, abs=1e-7)
    torch.testing.assert_close(paper.grad[:4], torch.tensor([-0.125, 0.0, 0.5, -0.125], dtype=torch.float64))


def test_convention_validation_is_one_line():
    from minichord.config import ConfigError, TrainConfig
    with pytest.raises(ConfigError, match=r"^convention='verl': must be one of paper, official, trinity-mix-chord, "
                       r"ms-swift, verl-token-mean, verl-seq-mean-token-mean, verl-seq-mean-token-sum$"):
        TrainConfig(convention="verl")
    with pytest.raises(ValueError, match="aggregation='mean': must be one of"):
        LossConfig(aggregation="mean")


# ---------------------------------------------------------------- the CLI


def _write(tmp_path, name, tensors, meta):  # a DUMP file: the tensors, the settings as metadata strings
    path = tmp_path / name
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
              metadata={k: str(v) for k, v in meta.items()})
    return str(path)


def test_cli_match_mismatch_and_bad_files(tmp_path, capsys):
    good = _write(tmp_path, "good.safetensors", *dump_of(batch()))
    assert main(["check", good]) == 0
    assert capsys.readouterr().out.startswith("match")
    bad = _write(tmp_path, "bug.safetensors", *dump_of(batch(), agg="sequence"))
    assert main(["check", bad]) == 1
    out = capsys.readouterr().out
    assert out.startswith("mismatch")
    assert "[sequence_mean] per-sequence token-means averaged over the sequences instead" in out
    tensors, meta = dump_of(batch())
    broken = {
        "missing.safetensors": ({k: v for k, v in tensors.items() if k != "old_logp"}, meta, "missing tensor 'old_logp'"),
        "shape.safetensors": ({**tensors, "grad_logp": tensors["grad_logp"][:, :3]}, meta, "tensor 'grad_logp' has shape"),
        "nan.safetensors": ({**tensors, "logp": tensors["logp"].masked_fill(tensors["mask"], float("nan"))}, meta,
                            "tensor 'logp' has NaN or inf"),
        "weighting.safetensors": (tensors, {**meta, "weighting": "phy"}, "weighting='phy': must be one of"),
        "probs.safetensors": ({**tensors, "logp": tensors["logp"].exp()}, meta,  # probabilities, not log-probs
                              "tensor 'logp' is 0."),
        "logits.safetensors": ({**tensors, "logp": tensors["logp"] + 5.0}, meta, "a log-probability is <= 0"),
    }
    for name, (t, m, message) in broken.items():
        assert main(["check", _write(tmp_path, name, t, m)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    assert main(["check", str(tmp_path / "junk.safetensors")]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err


def test_dump_errors_name_the_key():
    tensors, meta = dump_of(batch())
    with pytest.raises(DumpError, match=r"metadata mu='2': must be a number in \[0.0, 1.0\]"):
        from_tensors(tensors, {**meta, "mu": "2"})
    with pytest.raises(DumpError, match="'advantages' \\(or both 'rewards' and 'group_ids'\\)"):
        from_tensors({k: v for k, v in tensors.items() if k not in ("advantages", "rewards")}, meta)
    with pytest.raises(DumpError, match="unknown tensor 'logits'"):
        from_tensors({**tensors, "logits": torch.zeros(1)}, meta)
    with pytest.raises(DumpError, match="tensor 'mask' must hold only 0 and 1"):
        from_tensors({**tensors, "mask": tensors["mask"] * 2.0}, meta)
    float_mask = from_tensors({**tensors, "mask": tensors["mask"].float(), "is_expert": tensors["is_expert"].float()}, meta)
    assert check_batch(float_mask, "paper").match  # a float 0/1 mask, as many trainers keep it, is fine


# ---------------------------------------------------------------- golden cases


def golden_user_fn(convention):
    """The plain-torch implementation above in the golden cases' signature, float64."""
    impl = IMPLEMENTATIONS[convention]

    def fn(logp, old_logp, advantages, mask, is_expert, *, mu, weighting, eps_low, eps_high, micro_batch,
           rewards, group_ids):
        if weighting == "luffy":
            raise NotImplementedError("no LUFFY here")
        is_expert = is_expert.bool()
        if advantages is None:
            advantages = user_advantages(rewards, group_ids, is_expert, **impl.get("adv_kw", {}))
        return user_loss(logp, old_logp, advantages, mask, is_expert, micro_batch, mu, weighting=weighting,
                         eps=(eps_low, eps_high), dtype=torch.float64,
                         **{k: v for k, v in impl.items() if k != "adv_kw"})
    return fn


def test_golden_cases_regenerate_byte_identically(tmp_path):
    from minichord.check.golden import HERE, load_cases
    write = _load_script("make_golden").write

    for new in write(tmp_path):
        assert new.read_bytes() == (HERE / new.name).read_bytes(), \
            f"{new.name} drifted from minichord's math: run python scripts/make_golden.py (bump VERSION if a case changed)"
    cases = load_cases()
    assert len(cases) >= 50 and (HERE / "cases-v1.safetensors").stat().st_size < 1_000_000
    names = {c.name.split("/")[1] for c in cases}
    for needed in ("no_expert_side", "no_rollout_side", "rewards_group_of_one", "rewards_all_equal",
                   "ppo_at_clip_thresholds", "clamp_beyond_positive", "phi_p_near_zero", "phi_p_near_one",
                   "mu_zero_with_experts", "mu_one_with_rollouts", "luffy_basic", "two_micro_batches"):
        assert needed in names


@pytest.mark.parametrize("convention", list(IMPLEMENTATIONS))
def test_an_independent_implementation_passes_the_golden_cases(convention, capsys):
    from minichord.check.golden import run_golden

    assert run_golden(golden_user_fn(convention), convention) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and ("4 skipped" in out if convention == "paper" else "0 skipped" in out), out
    for other in CATALOGUE["convention"]:  # every other convention's cases fail: the golden set tells them apart
        if convention not in (other, CATALOGUE["convention"][other].get("also")):
            assert run_golden(golden_user_fn(convention), other) == 1, other


@pytest.mark.parametrize("bug", list(CATALOGUE["bug"]))
def test_each_catalogued_bug_has_a_golden_case_diagnosed_by_name(bug):
    from minichord.check.golden import load_cases

    assert bug in {p[2] for p in PLANTED}  # and an independent implementation of it is named (above)
    case = {c.settings["bug"]: c for c in load_cases(bugs=True)}[bug]
    meta = {k: str(case.settings[k]) for k in ("mu", "weighting", "eps_low", "eps_high")}
    d = from_tensors({**case.tensors, "loss": torch.tensor(case.settings["expected"]["loss"])}, meta)
    result = check_batch(d, case.settings["convention"])
    assert result.causes == [bug], result.report()
    assert CATALOGUE["bug"][bug]["source"] in result.report()


def test_cli_golden(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_impl.py").write_text(
        "def chord(logp, old_logp, advantages, mask, is_expert, **settings):\n"
        "    if advantages is None or settings['weighting'] == 'luffy':\n"
        "        raise NotImplementedError\n"
        "    ratio = (logp - old_logp).exp()  # GRPO without clip or SFT term: most cases fail\n"
        "    return -(advantages * ratio * mask).sum() / mask.sum()\n")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "--golden", "my_impl:chord"]) == 1
    out = capsys.readouterr().out
    assert "PASS paper/grpo_one_token" in out and "FAIL paper/sft_phi" in out and "skipped of" in out
    assert main(["check", "--golden", "my_impl"]) == 2
    assert "must be MODULE:FUNCTION" in capsys.readouterr().err
    assert main(["check", "--golden", "no_such_module:f"]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err


def one_trainer_step(tmp_path, monkeypatch, overrides):
    """(coef, is_expert, spec) of each fused-loss call of one chord-phi step, and the step's metrics."""
    import random

    from minichord import lm_head
    from minichord.tasks import style_texts
    from minichord.tokenizer import Tokenizer
    from test_trainer import make_trainer

    seen, real = [], lm_head.fused_token_loss

    def spy(hidden, weight, targets, coef, is_expert, *args, **kwargs):
        seen.append((coef, is_expert, args[-1]))  # args: advantages, old_logp, spec
        return real(hidden, weight, targets, coef, is_expert, *args, **kwargs)

    monkeypatch.setattr(lm_head, "fused_token_loss", spy)
    tok = Tokenizer.train(style_texts(random.Random(0), 200), vocab_size=160)
    settings = ["steps=1", "prompts_per_step=2", "group_size=2", "experts_per_step=2", "sampler.max_new_tokens=2"]
    out = make_trainer(tok, tmp_path, "chord-phi", [*settings, *overrides]).train_step(0)
    return seen, out


def test_the_trainer_takes_its_convention(tmp_path, monkeypatch):
    from minichord import losses

    seen, _ = one_trainer_step(tmp_path, monkeypatch, ["convention=official", "minibatches=2"])
    assert len(seen) == 2
    for coef, is_expert, spec in seen:  # each PPO minibatch is one micro-batch: a token-mean per side within it
        assert spec.dual_clip == 3.0
        torch.testing.assert_close(coef, losses.token_coefficients(is_expert, 0.1))


@pytest.mark.parametrize("convention", ["ms-swift", "verl-seq-mean-token-sum"])
def test_the_trainer_trains_with_an_engines_convention(tmp_path, monkeypatch, convention):
    seen, out = one_trainer_step(tmp_path, monkeypatch, [f"convention={convention}"])
    coef, is_expert, spec = seen[0]
    assert convention_rules(convention, "phi") == dataclasses.replace(spec, kl_coef=0.0, entropy_coef=0.0)
    if convention == "ms-swift":  # means per side: the weights sum to (1 - mu) + mu
        assert coef.sum().item() == pytest.approx(1.0)
    else:  # token sums averaged over sequences: the weights sum to the mean length (expert traces: > 1 token)
        assert coef.sum().item() > 1.0
    assert math.isfinite(out["loss"])


def test_cli_list_prints_each_convention_and_bug_with_its_source(capsys):
    assert main(["check", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(CATALOGUE["convention"]) + len(CATALOGUE["bug"])
    for line, (kind, name, entry) in zip(lines, [("convention", n, c) for n, c in CATALOGUE["convention"].items()] +
                                         [("bug", n, b) for n, b in CATALOGUE["bug"].items()]):
        assert line.startswith(f"{kind} {name}") and f"[{entry['source']}]" in line
    assert "(= trinity-mix-chord)" in lines[1] and "verl issue #5625" in "\n".join(lines)
    assert main(["check"]) == 2  # neither files nor --golden nor --list
