"""The commands that run experiments on top of the library: `minichord demo | reproduce | probe | plot`."""

from pathlib import Path


def run_quietly(method: str, run_dir: Path, overrides: list[str]) -> list[dict]:
    """A fresh training run without its per-step lines (they would drown a runner's overview); its eval.jsonl."""
    from minichord.experiment import prepare_run
    from minichord.runners.plot import read_jsonl

    prepare_run(method, run_dir, overrides=overrides, resume=False, log=lambda _msg: None).run()
    return read_jsonl(run_dir / "eval.jsonl")
