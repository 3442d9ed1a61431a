"""The run's log files, as a resumed run must leave them: `metrics.jsonl` / `eval.jsonl` cut back to the
checkpoint's step, and the one-line progress report of each step."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable


class LogError(ValueError):
    """A log file that cannot be cut back (the trainer raises it as a TrainingError)."""


def cut_log(file: Path, before: int, keep_step: int | None, log: Callable[[str], None]) -> None:
    """Keep the rows with step < before (and == keep_step); a torn last line is dropped (and said)."""
    if not file.exists():
        return
    rows, lines = [], file.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        try:
            step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            if n < len(lines):
                raise LogError(f"{file}:{n}: not a metrics row; move the file away to resume") from None
            log(f"{file}:{n}: dropped a torn last line (the run was killed while writing it)")
            continue
        if step < before or step == keep_step:
            rows.append(line)
    file.write_text("".join(r + "\n" for r in rows), encoding="utf-8")


def progress_line(m: dict, steps: int, eta: float) -> str:
    parts = [f"step {m['step'] + 1:4d}/{steps}", m["method"], "mu joint" if m["mu"] is None else f"mu {m['mu']:.2f}"]
    for key, label in [("reward", "reward"), ("entropy", "H"), ("response_length", "len"),
                       ("clip_fraction", "clip"), ("expert_nll", "expert nll")]:
        if key in m and not (isinstance(m[key], float) and math.isnan(m[key])):
            parts.append(f"{label} {m[key]:.3f}")
    parts.append(f"eta {eta:4.0f}s")
    return " | ".join(parts)
