"""The commands that run experiments on top of the library: `minichord demo | reproduce | plot | samples`."""

import statistics
from pathlib import Path
from typing import Callable

import torch

from minichord.config import TrainConfig
from minichord.device import resolve_device
from minichord.evaluate import evaluate_splits
from minichord.data import build_train_data
from minichord.hf import is_hf_dir, load_model
from minichord.pretrain import toy_base
from minichord.tasks import make_splits
from minichord.tokenizer import TokenizerLike


def run_quietly(method: str, run_dir: Path, overrides: list[str]) -> list[dict]:
    """A fresh training run without its per-step lines (they would drown a runner's overview); its eval.jsonl."""
    from minichord.runners.plot import read_jsonl
    from minichord.trainer import prepare_run

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
    """A markdown table's lines."""
    return [f"| {' | '.join(header)} |", "|---" * len(header) + "|", *(f"| {' | '.join(r)} |" for r in rows)]


def mean_std(values: list[float | None]) -> str:
    """mean ± sample std of the values that are not None (the value alone if one, "–" if none)."""
    if len(vals := [v for v in values if v is not None]) < 2:
        return f"{vals[0]:.3f}" if vals else "–"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"
