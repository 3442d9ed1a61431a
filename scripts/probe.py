"""Does the setting (the toy's; a real model's on your files: `probe_real`) leave every method room to show what it
does? An experiment-design check, run before a comparison; writes OUT/probe.json and OUT/probe.md:

    .venv/bin/python scripts/probe.py --out runs/probe               # the toy's criteria 1-6 (exit 0: all pass)
    .venv/bin/python scripts/probe.py --out runs/real-probe --set init=DIR --set prompts_file=F ...  (make real-probe)

The criteria (the table in `probe`) describe the *setting*, never which method wins. Runs: the base on `seeds`
splits; GRPO x seeds at the default budget; a long SFT run on a large expert set (criteria 2, 4) and one on a small
set (criterion 6): a small set is memorised before the procedure is learned, so the two need two set sizes."""

import argparse
import collections
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch

from minichord.cli import OUT, POSITIVE, POSITIVE_FLOAT, add_hardware, hardware, run_command
from minichord.config import SamplerConfig
from minichord.data import build_train_data
from minichord.evaluate import expert_token_probs
from minichord.methods import build_stages
from minichord.runners import evaluate_initial_model, markdown_rows, mean_std, read_jsonl, run_quietly, series
from minichord.sampler import generate
from minichord.tasks import make_splits
from minichord.tasks.rg import extract, score, scorer, task_name


@dataclasses.dataclass
class ProbeBudget:
    seeds: int = 3
    grpo_steps: int = 100  # the default reproduce budget
    sft_steps: int = 400  # the long SFT run on the large set (criteria 2, 4)
    n_expert_large: int = 4000  # its expert set
    sft_lr: float = 3e-4  # of both SFT runs (3x the default: at 1e-4 the procedure is not learned in 300 steps)
    overfit_steps: int = 400  # the long SFT run on the small set (criterion 6)
    n_expert_small: int = 64  # the limited expert set of that run
    n_test: int = 150
    eval_every: int = 25  # of the GRPO runs (the long SFT run evaluates 20 times)


QUICK_BUDGET = ProbeBudget(seeds=1, grpo_steps=2, sft_steps=4, n_expert_large=16, overfit_steps=4, n_expert_small=8,
                           n_test=6, eval_every=2)


Criterion = collections.namedtuple("Criterion", "number name measured threshold passed")


def _spread(values: list[float]) -> str:  # over seeds: mean ± std, then the range
    return mean_std(values) + (" (1 seed)" if len(values) < 2 else f" (min {min(values):.3f}, max {max(values):.3f})")


def overfit_check(steps: list[int], acc: list[float], nll_steps: list[int], nll: list[float],
                  drop: float = 0.05) -> tuple[bool, str]:
    """Criterion 6 on one curve: the readapt peak (the best point after the style shift's trough, never step 0's base)
    falls by >= `drop` to the last value while the training NLL over the last tenth is below its mean at the peak."""
    if len(acc) < 2 or not nll:
        return False, "no curve"
    trough = min(range(1, len(acc)), key=lambda i: acc[i])
    peak = max(range(trough, len(acc)), key=lambda i: acc[i])
    fell, window = acc[peak] - acc[-1], max(1, len(nll) // 10)
    at_peak = [v for s, v in zip(nll_steps, nll) if abs(s - steps[peak]) <= max(1, steps[-1] // 40)] or nll[:window]
    nll_peak, nll_end = statistics.mean(at_peak), statistics.mean(nll[-window:])
    ok = fell >= drop and nll_end < nll_peak
    return ok, (f"peak {acc[peak]:.3f} at step {steps[peak]}, last {acc[-1]:.3f} (fell {fell:.3f}); "
                f"expert NLL {nll_peak:.3f} at peak -> {nll_end:.3f} at end")


REAL_BUDGET = ProbeBudget(seeds=1, grpo_steps=30, sft_steps=60)  # a real model's probe: only these three are read


def _table(out: Path, criteria: list[Criterion], note: str, log: Callable[[str], None], **saved) -> list[Criterion]:
    rows = [[str(c.number), c.name, c.measured, c.threshold, "pass" if c.passed else "FAIL"] for c in criteria]
    table = "\n".join(markdown_rows(["#", "criterion", "measured", "needs", "result"], rows) + [f"\n{note}"])
    (out / "probe.md").write_text(f"# minichord probe\n\n{table}\n")
    (out / "probe.json").write_text(json.dumps({**saved, "criteria": [c._asdict() for c in criteria]}, indent=1))
    log(table)
    return criteria


def agreement(model, tok, splits: dict, n: int, seed: int = 0) -> dict[str, str]:
    """Per split of reasoning-gym rows, n base completions (T = 1): correct by the task's score_answer on minichord's
    extraction (the reward), by exact match of that extraction, and by score_answer on the raw text."""
    table, gen = {}, torch.Generator().manual_seed(seed)
    for name, problems in splits.items():
        if not (rows := [p for p in problems if p.skill.startswith("rg:")][:n]):
            continue
        out = generate(model, [tok.encode_prompt(p.prompt) for p in rows], SamplerConfig(max_new_tokens=64),
                       eos_id=tok.stop_ids, pad_id=tok.pad_id, generator=gen, vocab_size=tok.vocab_size)
        texts = [tok.decode(t[m]) for t, m in zip(out.tokens, out.mask)]
        ours = [score(t, p) == 1 for t, p in zip(texts, rows)]
        exact = [extract(t, p.answer) == p.answer for t, p in zip(texts, rows)]
        raw = [scorer(task_name(p.skill))(t, {"answer": p.answer, "metadata": p.metadata or {}}) == 1
               for t, p in zip(texts, rows)]
        table[name] = (f"{len(rows)} completions correct: reward {sum(ours)}, exact match {sum(exact)} (agree on "
                       f"{sum(a == b for a, b in zip(ours, exact))}); score_answer on the raw text {sum(raw)}")
    return table


def probe_real(out: Path, budget: ProbeBudget, overrides: list[str], log: Callable[[str], None]) -> list[Criterion]:
    """A real model on your files (prompts, experts, eval splits in_domain, harder, other_skills): is there room?"""
    cfg = build_stages("grpo", overrides=overrides)[0].cfg
    model, tok, (base, *_) = evaluate_initial_model(cfg, 1, cfg.n_test, log)
    data = build_train_data(cfg, True)
    median_p = expert_token_probs(model, tok, data.experts[:64], cfg.dtype)["median_p"]
    agree = agreement(model, tok, data.eval_splits, 32)
    log(f"probe: base {json.dumps({k: v['accuracy'] for k, v in base.items()})}; median expert p {median_p:.3f}")
    runs = {}
    for method, steps in [("grpo", budget.grpo_steps)] * budget.seeds + [("sft", budget.sft_steps)]:
        seed = sum(name.startswith(method) for name in runs)
        log(f"probe: {method} seed {seed} ({steps} steps)")
        runs[f"{method}-seed{seed}"] = run_quietly(method, out / method / f"seed{seed}", [
            *overrides, f"seed={seed}", f"steps={steps}", f"eval_every={max(1, steps // 3)}", f"save_every={steps}"])
    acc = {name: {split: [e[split]["accuracy"] for e in evals] for split in base} for name, evals in runs.items()}
    gain = [a["in_domain"][-1] - base["in_domain"]["accuracy"] for n, a in acc.items() if n.startswith("grpo")]
    lift = max(acc["sft-seed0"]["harder"][1:] or acc["sft-seed0"]["harder"]) - base["harder"]["accuracy"]
    criteria = [
        Criterion(1, "headroom: base in-domain", f"{base['in_domain']['accuracy']:.3f}", "in [0.10, 0.50]",
                  0.10 <= base["in_domain"]["accuracy"] <= 0.50),
        Criterion(2, "RL signal: GRPO final - base in-domain", _spread(gain), ">= +0.05", statistics.mean(gain) >= 0.05),
        Criterion(3, "the expert's procedure: SFT best harder - base harder", f"{lift:+.3f}", ">= +0.10", lift >= 0.10),
        Criterion(4, "how on-policy the traces are: median expert-token p", f"{median_p:.3f}", "reported", True),
        Criterion(5, "retention: other-skill base -> GRPO / SFT final", f"{base['other_skills']['accuracy']:.3f} -> "
                  + " / ".join(f"{a['other_skills'][-1]:.3f}" for a in acc.values()), "reported", True),
        *(Criterion(6 + i, f"reward: {split}", text, "reported", True) for i, (split, text) in enumerate(agree.items()))]
    return _table(out, criteria, f"{budget.seeds} GRPO seed(s) of {budget.grpo_steps} steps, one SFT run of "
                  f"{budget.sft_steps} steps on the expert file; settings: {' '.join(overrides)}", log,
                  budget=dataclasses.asdict(budget), overrides=overrides, base=base, runs=acc, median_p=median_p)


def probe(out_dir: str | Path, budget: ProbeBudget = ProbeBudget(), overrides: list[str] | tuple[str, ...] = (),
          log: Callable[[str], None] = print) -> list[Criterion]:
    """The toy setting's criteria 1-6, or (`eval_file` among the overrides) `probe_real`'s."""
    out, cfg = Path(out_dir), build_stages("grpo", overrides=list(overrides))[0].cfg  # a bad setting: nothing written
    out.mkdir(parents=True, exist_ok=True)
    if cfg.eval_file:
        return probe_real(out, budget, list(overrides), log)
    model, tok, evaluations = evaluate_initial_model(cfg, budget.seeds, budget.n_test, log)
    base = [{split: e["accuracy"] for split, e in ev.items()} for ev in evaluations]  # per seed: {split: accuracy}
    experts = make_splits(0, n_rl=0, n_expert=cfg.n_expert, n_test=0).expert
    median_p = expert_token_probs(model, tok, experts, cfg.dtype)["median_p"]
    log(f"probe: base in-domain {_spread([b['in_domain'] for b in base])}; median expert p {median_p:.3f}")

    common, grpo = [f"n_test={budget.n_test}", *overrides], []
    for s in range(budget.seeds):
        log(f"probe: grpo seed {s} ({budget.grpo_steps} steps)")
        grpo.append(run_quietly("grpo", out / "grpo" / f"seed{s}", [
            *common, f"seed={s}", f"steps={budget.grpo_steps}", f"eval_every={budget.eval_every}",
            f"save_every={budget.grpo_steps}"])[-1]["in_domain"]["accuracy"])

    def sft(name: str, n: int, n_expert: int) -> list[dict]:
        log(f"probe: {name} ({n} steps, {n_expert} expert demonstrations)")
        return run_quietly("sft", out / name, [*common, "seed=0", f"steps={n}", f"eval_every={max(1, n // 20)}",
                                               f"save_every={n}", f"n_expert={n_expert}", f"lr={budget.sft_lr}"])

    evals = sft("sft-long", budget.sft_steps, budget.n_expert_large)
    acc, harder, other = (series(evals, f"{split}.accuracy")[1] for split in ("in_domain", "harder", "other_skills"))
    small = sft("sft-small", budget.overfit_steps, budget.n_expert_small)
    nll = series(read_jsonl(out / "sft-small" / "metrics.jsonl"), "expert_nll")  # (steps, values)
    overfit, overfit_text = overfit_check(*series(small, "in_domain.accuracy"), *nll)
    acc, harder = acc[1:] or acc, harder[1:] or harder  # SFT's best: its own evaluations, not step 0's base
    base_in, base_harder = [b["in_domain"] for b in base], [b["harder"] for b in base]
    gain, disruption = [g - b for g, b in zip(grpo, base_in)], base[0]["other_skills"] - other[-1]
    criteria = [
        Criterion(1, "headroom: base in-domain", _spread(base_in), "in [0.15, 0.45]",
                  0.15 <= statistics.mean(base_in) <= 0.45),
        Criterion(2, f"expert capability: SFT ({budget.n_expert_large} demos) best in-domain / harder; base harder",
                  f"{max(acc):.3f} / {max(harder):.3f}; base {_spread(base_harder)}", ">= 0.80 / >= 0.30; <= 0.10",
                  max(acc) >= 0.80 and max(harder) >= 0.30 and statistics.mean(base_harder) <= 0.10),
        Criterion(3, "RL signal: GRPO final - base in-domain (< SFT best)",
                  f"{_spread(gain)}; GRPO final {statistics.mean(grpo):.3f}", ">= 0.10; < SFT best",
                  statistics.mean(gain) >= 0.10 and statistics.mean(grpo) < max(acc)),
        Criterion(4, "disruption: base - SFT other-skill", f"{base[0]['other_skills']:.3f} -> {other[-1]:.3f} "
                  f"({disruption:+.3f})", ">= 0.20", disruption >= 0.20),
        Criterion(5, "partly on-policy: median expert p", f"{median_p:.3f}", "in [0.05, 0.5]", 0.05 <= median_p <= 0.5),
        Criterion(6, f"overfitting: SFT on {budget.n_expert_small} demos", overfit_text,
                  "falls >= 0.05 from peak, NLL still falls", overfit)]
    return _table(out, criteria, f"{budget.seeds} seed(s) of the base and GRPO ({budget.grpo_steps} steps); one long "
                  f"SFT run ({budget.sft_steps} steps, {budget.n_expert_large} demonstrations, lr {budget.sft_lr}) and "
                  f"one on {budget.n_expert_small} demonstrations ({budget.overfit_steps} steps, same lr); "
                  f"{budget.n_test} test problems per split. Criterion 7 (wall-clock budgets) is not measured here.",
                  log, budget=dataclasses.asdict(budget), overrides=list(overrides), base=base, grpo_final=grpo,
                  median_p=median_p)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="probe.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=OUT, default="runs/probe", help="output directory (default runs/probe)")
    p.add_argument("--quick", action="store_true", help="a tiny budget that checks the plumbing, not the criteria")
    p.add_argument("--seeds", type=POSITIVE, help="seeds of the base and GRPO (default 3)")
    p.add_argument("--grpo-steps", type=POSITIVE, help="GRPO steps (default 100, reproduce's budget)")
    p.add_argument("--sft-steps", type=POSITIVE, help="steps of the long SFT run (default 400)")
    p.add_argument("--n-expert-large", type=POSITIVE, help="its expert set size (default 4000)")
    p.add_argument("--sft-lr", type=POSITIVE_FLOAT, help="learning rate of both SFT runs (default 3e-4)")
    p.add_argument("--overfit-steps", type=POSITIVE, help="steps of the small set's SFT run (default 400)")
    p.add_argument("--n-expert-small", type=POSITIVE, help="its expert set size (default 64)")
    p.add_argument("--n-test", type=POSITIVE, help="test problems per split (default 150)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run "
                   "(init=DIR eval_file=... : your model's and files' criteria)")
    add_hardware(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The criteria table; exit 0 when every criterion passes, 1 when one fails, 2 on bad input."""
    def run(args) -> int:
        real = any(s.startswith("eval_file=") for s in args.set)  # your model and files: the real-model criteria
        budget = QUICK_BUDGET if args.quick else REAL_BUDGET if real else ProbeBudget()
        changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(budget)
                   if getattr(args, f.name, None) is not None}
        criteria = probe(args.out, dataclasses.replace(budget, **changes), overrides=args.set + hardware(args))
        return 0 if all(c.passed for c in criteria) else 1
    return run_command("probe", run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
