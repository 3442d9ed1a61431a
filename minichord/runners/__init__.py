"""The commands that run experiments on top of the library: `minichord demo | reproduce | plot | samples`; the
learning curves (`plot_runs`) need matplotlib."""

import collections
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from minichord.config import ConfigError, TrainConfig, optional_import
from minichord.data import build_train_data, load_jsonl
from minichord.device import resolve_device
from minichord.evaluate import evaluate_splits
from minichord.hf import is_hf_dir, load_model
from minichord.methods import METHODS, build_stages
from minichord.pretrain import toy_base
from minichord.tasks import make_splits
from minichord.tokenizer import TokenizerLike
from minichord.trainer import prepare_run


PANELS = [  # (file, key, title); eval keys are "split.accuracy"
    ("eval.jsonl", "in_domain.accuracy", "in-domain accuracy (greedy)"),
    ("eval.jsonl", "harder.accuracy", "harder-split accuracy"),
    ("eval.jsonl", "other_skills.accuracy", "other-skill retention"),
    ("metrics.jsonl", "reward", "rollout reward"), ("metrics.jsonl", "entropy", "rollout token entropy"),
    ("metrics.jsonl", "mu", "mu (global SFT coefficient)"),
    ("metrics.jsonl", "response_length", "response length (tokens)"),
    ("metrics.jsonl", "expert_nll", "expert-token NLL")]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of a dotted key, skipping rows without a finite value."""
    xs, ys = [], []
    for row in rows:
        value = row
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (int, float)) and value == value:
            xs.append(row["step"])
            ys.append(float(value))
    return xs, ys


def plot_runs(run_dirs: list[Path], out_file: Path, labels: list[str] | None = None,
              panels: list[tuple[str, str, str]] = PANELS) -> Path:
    """One panel per curve, one line per run; returns the written file."""
    optional_import("matplotlib", "matplotlib", "plot").use("Agg")
    import matplotlib.pyplot as plt
    runs = [Path(d) for d in run_dirs]
    if bad := [d for d in runs if not (d / "metrics.jsonl").exists() and not (d / "eval.jsonl").exists()]:
        raise FileNotFoundError(f"{bad[0]} holds no metrics.jsonl or eval.jsonl: is it a run directory?")
    if labels is None:  # directory names, with their parent's when they repeat (a/seed0, b/seed0)
        labels = [d.resolve().name for d in runs]
        if len(set(labels)) < len(labels):
            labels = [f"{d.resolve().parent.name}/{d.resolve().name}" for d in runs]
    rows_n = (len(panels) + 3) // 4  # 4 panels a row
    fig, axes = plt.subplots(rows_n, 4, figsize=(16, 3 * rows_n), squeeze=False)
    data = {d: {f: read_jsonl(d / f) for f in ("metrics.jsonl", "eval.jsonl")} for d in runs}
    handles = {}  # label -> a line of that run, for one legend covering every run
    for ax, (file, key, title) in zip(axes.flat, panels):
        for i, (d, label) in enumerate(zip(runs, labels)):
            xs, ys = series(data[d][file], key)
            if xs:  # a run's colour is fixed (C0, C1, ...) even in panels where others have no data
                (handles[label],) = ax.plot(xs, ys, label=label, color=f"C{i % 10}",
                                            marker="o" if file == "eval.jsonl" else None, markersize=3)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(list(handles.values()), list(handles), fontsize=7)
    fig.tight_layout()
    (out_file := Path(out_file)).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=80)
    plt.close(fig)
    return out_file


def run_quietly(method: str, run_dir: Path, overrides: list[str]) -> list[dict]:
    """A fresh training run without its per-step lines (they would drown a runner's overview); its eval.jsonl."""
    prepare_run(method, run_dir, overrides=overrides, resume=False, log=lambda _msg: None).run()
    return read_jsonl(run_dir / "eval.jsonl")


def evaluate_initial_model(cfg: TrainConfig, seeds: int, n_test: int, log: Callable[[str], None] = print
                           ) -> tuple[torch.nn.Module, TokenizerLike, list[dict]]:
    """(model, tokenizer, [evaluate_splits per seed]): the starting model, greedy on each seed's run's test splits
    (the toy's, seeded), or once on `cfg.eval_file`'s splits (the same for every seed)."""
    device = resolve_device(cfg.device)
    model, tok = load_model(cfg.init or toy_base(log, device))
    model.to(device)
    data = build_train_data(cfg, is_hf_dir(cfg.init)) if cfg.eval_file else None
    kwargs = dict(dtype=cfg.dtype, max_new_tokens=cfg.sampler.max_new_tokens)
    if data:
        return model, tok, [evaluate_splits(model, tok, data.eval_splits, reward_fn=data.reward, **kwargs)] * seeds
    return model, tok, [evaluate_splits(model, tok, make_splits(seed, n_rl=0, n_expert=0, n_test=n_test).tests,
                                        **kwargs) for seed in range(seeds)]


def markdown_rows(header: list[str], rows: list[list[str]]) -> list[str]:
    return [f"| {' | '.join(header)} |", "|---" * len(header) + "|", *(f"| {' | '.join(r)} |" for r in rows)]


def mean_std(values: list[float | None]) -> str:
    """mean ± sample std of the values that are not None (the value alone if one, "–" if none)."""
    if len(vals := [v for v in values if v is not None]) < 2:
        return f"{vals[0]:.3f}" if vals else "–"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def run_demo(out_dir: Path, *, steps: int | None = None, seed: int = 0, hardware: tuple[str, ...] = (),
             overrides: tuple[str, ...] = ()) -> None:
    """`minichord demo` (`make demo`): CHORD-phi on the embedded toy task, on a CPU, from the cached
    (or freshly pre-trained) base model; prints accuracy before/after and a few outputs, base vs trained.
    hardware: extra overrides such as ("device=cuda", "dtype=bf16"); overrides: any TrainConfig KEY=VALUE (a real
    model: init=DIR prompts_file=... experts_file=... eval_file=in_domain.jsonl,harder.jsonl,other_skills.jsonl)."""
    t0 = time.perf_counter()
    real = any(o.startswith("init=") for o in overrides)
    print("minichord demo: CHORD-phi on " + ("your model and data" if real else
                                             "the toy task (addition; reverse/sort/copy measure retention)"))
    print("step 1/3: " + ("load the model" if real else "base model (pre-trained once, then cached)"))
    overrides = ["n_test=100", "eval_every=1000", "save_every=1000", f"steps={steps or 100}", f"seed={seed}",
                 *overrides, *hardware]
    trainer = prepare_run("chord-phi", out_dir, overrides=overrides, resume=False)
    print(f"step 2/3: CHORD-phi for {trainer.steps} steps ({trainer.cfg.prompts_per_step} prompts x "
          f"{trainer.cfg.group_size} rollouts + {trainer.cfg.experts_per_step} expert demos per step, "
          f"mu = {trainer.cfg.mu_peak})")
    after, before = trainer.run(), read_jsonl(Path(out_dir) / "eval.jsonl")[0]  # the base's evaluation (step 0)
    print("step 3/3: results (greedy decoding on held-out splits)\n")
    print(f"{'split':14s} {'before':>8s} {'after':>8s}   {'mean length before -> after'}")
    for split in (s for s in before if isinstance(before[s], dict)):
        b, a = before[split], after[split]
        print(f"{split:14s} {b['accuracy']:8.3f} {a['accuracy']:8.3f}   "
              f"{b['response_length']:.1f} -> {a['response_length']:.1f} tokens")
    rows = read_jsonl(Path(out_dir) / "samples.jsonl")  # the base's answers (step 0) first, the trained ones last
    first = rows[0]["samples"][0]["split"]
    print(f"\nsample outputs ({first}):")
    for sb, sa in [(b, a) for b, a in zip(rows[0]["samples"], rows[-1]["samples"]) if b["split"] == first][:3]:
        print(f"  prompt  : {sb['prompt']}   (answer {sb['answer']})\n  base    : {sb['response']!r}\n"
              f"  trained : {sa['response']!r}")
    print(f"\nrun directory: {out_dir} (metrics.jsonl, eval.jsonl, samples.jsonl, checkpoint/); answers across steps: "
          f"minichord samples {out_dir}; plot with: minichord plot {out_dir} -o {Path(out_dir) / 'curves.png'}")
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")


def _row(record: dict, where: str) -> tuple[int, list[tuple]]:  # (step, [(split, prompt, answer, reward, response)])
    try:
        return int(record["step"]), [(s["split"], s["prompt"], s["answer"], float(s["reward"]), s["response"])
                                     for s in record["samples"]]
    except (KeyError, TypeError):
        raise ValueError("not a samples row (step, samples: split, prompt, answer, reward, response)") from None


def print_samples(run_dir: Path, steps: list[int] | None = None, prompt: int | None = None) -> None:
    """`minichord samples RUN`: a run's greedy answers to its fixed prompts (samples.jsonl), side by side across steps.
    Each fixed prompt (or number `prompt`) and its answer, then a line per step (or `steps`): reward, response."""
    if not (file := Path(run_dir) / "samples.jsonl").is_file():
        raise ValueError(f"{run_dir} has no samples.jsonl: give the --out directory of a training run with eval splits")
    rows = dict(load_jsonl(file, _row, "samples"))  # step -> its samples; data's JSONL reader: a bad line is file:line
    if missing := [s for s in steps or [] if s not in rows]:
        raise ValueError(f"{file} has no step {missing[0]}; its steps: {', '.join(map(str, rows))}")
    first, width = next(iter(rows.values())), shutil.get_terminal_size((120, 24)).columns
    if prompt is not None and prompt >= len(first):
        raise ValueError(f"{file} has no prompt {prompt}: it has {len(first)} prompts a step, numbered from 0")
    for i, (split, question, answer, _, _) in enumerate(first):
        lines = [f"[{i}] {split}: {question!r}  (answer {answer!r})"] + [f"  step {step:>5}  reward {row[i][3]:.2f}  "
                 f"{row[i][4]!r}" for step, row in rows.items() if (not steps or step in steps) and i < len(row)]
        if prompt in (None, i):  # each line cut to the terminal's width
            print("\n".join(line if len(line) <= width else line[:width - 3] + "..." for line in lines))


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


def reproduce(out_dir: str | Path, *, quick: bool = False, seeds: int | None = None,
              methods: list[str] | None = None, steps: int | None = None, overrides: list[str] = (),
              sft_curve_steps: int | None = None, log: Callable[[str], None] = print) -> dict:
    """`minichord reproduce [--quick]`: the paper's comparison at toy scale, every method, several seeds. Matched
    budget: the same optimizer steps and batch shape (B prompts x G rollouts, E expert demonstrations where mu > 0) for
    every method, sft-grpo splitting them between its stages; samples seen differ by method and are reported. Writes
    results.json, results.md, curves.png (seed 0 of every method), sft_curve.png (a long SFT run on the limited set)."""
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
        wall, metrics = time.perf_counter() - t0, read_jsonl(run_dir / "metrics.jsonl")
        tail = series(metrics[-5:], "entropy")[1]  # the final rollout entropy
        r = {"seed": seed, **split_summary(read_jsonl(run_dir / "eval.jsonl")[-1]),  # the last evaluation
             "entropy": sum(tail) / len(tail) if tail else None,
             "rollouts_seen": sum(m.get("rollouts", 0) for m in metrics),
             "experts_seen": sum(m.get("experts", 0) for m in metrics), "wall_s": wall}
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
