"""Learning curves from run directories (metrics.jsonl, eval.jsonl), as `minichord plot`; needs matplotlib."""

import json
from pathlib import Path

from minichord.config import optional_import

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
