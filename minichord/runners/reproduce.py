"""`minichord reproduce [--quick]`: the paper's comparison at toy scale, every method, several seeds.

Matched budget: the same optimizer steps and batch shape (B prompts x G rollouts, E expert demonstrations where mu > 0)
for every method, sft-grpo splitting them between its stages; samples seen differ by method and are reported. Writes
results.json, results.md, curves.png (seed 0 of every method), sft_curve.png (a long SFT run on the limited set)."""

import collections
import json
import time
from pathlib import Path
from typing import Callable

from minichord.config import ConfigError
from minichord.methods import METHODS, build_stages
from minichord.runners import evaluate_initial_model, markdown_rows, mean_std, run_quietly
from minichord.runners.plot import PANELS, plot_runs, read_jsonl, series

SFT_CURVE_PANELS = [PANELS[0], PANELS[2],
                    ("eval.jsonl", "in_domain.response_length", "in-domain response length (tokens)"),
                    ("metrics.jsonl", "expert_nll", "expert-token NLL (training batches)")]
Setting = collections.namedtuple("Setting", "steps seeds n_test eval_every sft_curve_steps")  # sft_curve_steps 0: none
FULL = Setting(steps=100, seeds=3, n_test=150, eval_every=25, sft_curve_steps=300)
QUICK = Setting(steps=24, seeds=1, n_test=60, eval_every=12, sft_curve_steps=60)
COLUMNS = [("in_domain", "in-domain acc"), ("harder", "harder acc"), ("other_skills", "other-skill retention"),
           ("entropy", "final rollout entropy"), ("response_length", "mean response length"),
           ("rollouts_seen", "rollouts seen"), ("experts_seen", "expert seqs seen"), ("wall_s", "wall s")]


def split_summary(evaluation: dict) -> dict:
    return {**{split: evaluation[split]["accuracy"] for split in ("in_domain", "harder", "other_skills")},
            "response_length": evaluation["in_domain"]["response_length"]}


def run_summary(run_dir: Path, wall: float) -> dict:
    """`split_summary` of the last evaluation, final rollout entropy and samples seen."""
    evals, metrics = read_jsonl(run_dir / "eval.jsonl"), read_jsonl(run_dir / "metrics.jsonl")
    tail = series(metrics[-5:], "entropy")[1]
    return {**split_summary(evals[-1]), "entropy": sum(tail) / len(tail) if tail else None,
            "rollouts_seen": sum(m.get("rollouts", 0) for m in metrics),
            "experts_seen": sum(m.get("experts", 0) for m in metrics), "wall_s": wall}


def reproduce(out_dir: str | Path, *, quick: bool = False, seeds: int | None = None,
              methods: list[str] | None = None, steps: int | None = None, overrides: list[str] = (),
              sft_curve_steps: int | None = None, log: Callable[[str], None] = print) -> dict:
    base = QUICK if quick else FULL
    setting = base._replace(seeds=seeds or base.seeds, steps=steps or base.steps,
                            sft_curve_steps=base.sft_curve_steps if sft_curve_steps is None else sft_curve_steps)
    methods = list(methods or METHODS)
    for m in methods:
        build_stages(m)  # refuse unknown method names before any work
    common = [f"steps={setting.steps}", f"n_test={setting.n_test}", f"eval_every={setting.eval_every}",
              f"save_every={setting.steps}", *overrides]
    first_cfg = build_stages(methods[0], overrides=common)[0].cfg
    jobs = [(m, s) for s in range(setting.seeds) for m in methods]
    total, t_start = len(jobs) + (1 if setting.sft_curve_steps else 0), time.perf_counter()
    # the base's evaluation resolves the device: a bad one is refused before anything is written
    _, _, base_evals = evaluate_initial_model(first_cfg, setting.seeds, first_cfg.n_test, log)
    (out := Path(out_dir)).mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {"base": [{**split_summary(e), "wall_s": 0.0} for e in base_evals]}
    for done, (method, seed) in enumerate(jobs):
        elapsed = time.perf_counter() - t_start
        eta = f", ~{elapsed / done * (total - done) / 60:.1f} min left" if done else ""
        log(f"[run {done + 1}/{total}] {method} seed {seed} ({elapsed / 60:.1f} min elapsed{eta})")
        run_dir, t0 = out / method / f"seed{seed}", time.perf_counter()
        run_quietly(method, run_dir, [f"seed={seed}", *common])
        r = {"seed": seed, **run_summary(run_dir, time.perf_counter() - t0)}
        results.setdefault(method, []).append(r)
        log(f"    in-domain {r['in_domain']:.3f} | harder {r['harder']:.3f} | other skills {r['other_skills']:.3f}")
    if n := setting.sft_curve_steps:
        log(f"[run {total}/{total}] long SFT run on the limited expert set ({n} steps)")
        run_quietly("sft", out / "sft-long", [*common, f"steps={n}", f"eval_every={max(1, n // 24)}",
                                              f"save_every={n}"])
    rows = [[method] + [mean_std([r.get(k) for r in runs]) if k not in ("rollouts_seen", "experts_seen")
                        else str(int(runs[0].get(k) or 0)) for k, _ in COLUMNS] for method, runs in results.items()]
    table = "\n".join(markdown_rows(["method"] + [c for _, c in COLUMNS], rows) + [
        f"\nmean ± sample std over {setting.seeds} seed(s); accuracies are greedy, on held-out splits."])
    (out / "results.json").write_text(json.dumps({"setting": {**setting._asdict(), "n_test": first_cfg.n_test,
                                                              "eval_every": first_cfg.eval_every}, "methods": methods,
                                                  "overrides": list(overrides), "results": results}, indent=1))
    (out / "results.md").write_text(f"# minichord reproduce ({'quick' if quick else 'full'})\n\n{table}\n")
    try:
        plot_runs([out / m / "seed0" for m in methods], out / "curves.png", labels=methods)
        if (out / "sft-long").exists():
            plot_runs([out / "sft-long"], out / "sft_curve.png", labels=["sft (long)"], panels=SFT_CURVE_PANELS)
    except ConfigError as e:  # matplotlib missing: the table and JSON are still written
        log(str(e))
    log(table)
    log(f"wrote {out / 'results.md'}, {out / 'results.json'} in {(time.perf_counter() - t_start) / 60:.1f} min")
    return results
