"""From a method name, a config file and overrides to a Trainer ready to run.

    trainer = prepare_run("chord-phi", out_dir="runs/x", overrides=["steps=50"])
    trainer.run()
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from minichord.checkpoint import load_checkpoint
from minichord.config import TrainConfig
from minichord.device import autocast, resolve_device
from minichord.evaluate import evaluate_splits
from minichord.hf import is_hf_dir, load_hf_model
from minichord.traindata import build_train_data
from minichord.methods import build_stages
from minichord.tasks import make_splits
from minichord.trainer import Trainer


def default_base_dir() -> Path:
    """The toy base model's cache; v7 = toy v5 (issue 13: toy v4's 3-digit target, carry-chain harder split and
    sentence answers, plus sloppy 3-digit column work), so the caches of earlier toys are never reused."""
    return Path(os.environ.get("MINICHORD_HOME") or Path.home() / ".cache" / "minichord") / "base-v7"


def load_initial_model(init: str, log: Callable[[str], None] = print, device: str = "auto"):
    """(model, tokenizer) from `init` (a minichord checkpoint or a Hugging Face model directory with its
    tokenizer and chat template), or from the cached toy base model (made on first use)."""
    if not init:
        from minichord.pretrain import pretrain_base

        init = str(pretrain_base(default_base_dir(), log=log, device=device))  # where this run trains
    if is_hf_dir(init):
        from minichord.chat import load_tokenizer

        return load_hf_model(init), load_tokenizer(init)
    ckpt = load_checkpoint(init)
    if ckpt.tokenizer is None:
        raise ValueError(f"checkpoint {init} has no tokenizer.json")
    return ckpt.model, ckpt.tokenizer


def prepare_run(method_name: str, out_dir: str | Path, *, config_file: str | None = None,
                overrides: list[str] | tuple[str, ...] = (), resume: bool = True,
                log: Callable[[str], None] = print) -> Trainer:
    stages = build_stages(method_name, config_file, overrides)
    cfg = stages[0].cfg
    resolve_device(cfg.device)  # --device cuda without CUDA: refused before any data or model loads
    torch.manual_seed(cfg.seed)
    data = build_train_data(cfg, hf_model=is_hf_dir(cfg.init))  # bad files, sizes, missing data: before any model loads
    for stage in stages:
        stage.check_data(data)
    log(f"data: {len(data.prompts)} RL prompts, {len(data.experts)} expert demonstrations, eval splits "
        f"{sorted(data.eval_splits) or 'none'}; reward {data.reward.__module__}.{data.reward.__name__}")
    model, tokenizer = load_initial_model(cfg.init, log, cfg.device)
    data.check_fits(tokenizer, model.cfg.max_seq_len, stages)  # file:line, before any step or evaluation
    trainer = Trainer(stages, model, tokenizer, data, Path(out_dir), log=log)
    if resume:
        trainer.resume()
    return trainer


def evaluate_initial_model(cfg: TrainConfig, seeds: int, n_test: int, log: Callable[[str], None] = print):
    """The starting model (`cfg.init`, else the toy base) on each seed's toy test splits, greedy:
    (model on cfg's device, tokenizer, [evaluate_splits(...) per seed 0..seeds-1]). The splits of seed s are
    the ones a run with seed=s and this n_test evaluates on (make_splits draws the test splits first)."""
    device = resolve_device(cfg.device)
    model, tok = load_initial_model(cfg.init, log, cfg.device)
    model.to(device)
    evaluations = []
    for seed in range(seeds):
        with autocast(device, cfg.dtype):
            evaluations.append(evaluate_splits(model, tok, make_splits(seed, n_rl=0, n_expert=0, n_test=n_test).tests,
                                               max_new_tokens=cfg.sampler.max_new_tokens))
    return model, tok, evaluations
