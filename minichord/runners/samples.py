"""`minichord samples RUN`: a run's greedy answers to its fixed prompts (samples.jsonl), side by side across steps."""

import shutil
from pathlib import Path

from minichord.data import load_jsonl


def _row(record: dict, where: str) -> tuple[int, list[tuple]]:  # (step, [(split, prompt, answer, reward, response)])
    try:
        return int(record["step"]), [(s["split"], s["prompt"], s["answer"], float(s["reward"]), s["response"])
                                     for s in record["samples"]]
    except (KeyError, TypeError):
        raise ValueError("not a samples row (step, samples: split, prompt, answer, reward, response)") from None


def print_samples(run_dir: Path, steps: list[int] | None = None, prompt: int | None = None) -> None:
    """Each fixed prompt (or number `prompt`) and its answer, then a line per step (or `steps`): reward, response."""
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
