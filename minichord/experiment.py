"""From a method name, a config file and overrides to a Trainer ready to run.

    trainer = prepare_run("chord-phi", out_dir="runs/x", overrides=["steps=50"])
    trainer.run()
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from minichord.config import ConfigError, TrainConfig, load_config
from minichord.data import build_train_data
from minichord.device import resolve_device
from minichord.evaluate import evaluate_splits
from minichord.hf import is_hf_dir, load_model
from minichord.methods import Stage, get_method
from minichord.tasks import make_splits
from minichord.tokenizer import TokenizerLike
from minichord.trainer import Trainer


def build_stages(method_name: str, config_file: str | None = None,
                 overrides: list[str] | tuple[str, ...] = ()) -> list[Stage]:
    """Each stage's config = its method's preset <- config_file <- overrides; sft-grpo's stages split `steps`."""
    method = get_method(method_name)

    def config_for(name: str) -> TrainConfig:
        return load_config(TrainConfig, config_file, list(overrides), base=get_method(name).preset)

    top = config_for(method_name)
    if not method.stages:
        return [Stage(method, top, 0, top.steps)]
    stages, start = [], 0
    for i, (stage, share) in enumerate(method.stages):
        end = top.steps if i == len(method.stages) - 1 else start + round(share * top.steps)
        if end <= start:
            raise ConfigError(f"steps={top.steps}: method {method_name} needs >= {len(method.stages)} steps "
                              f"(one per stage)")
        stages.append(Stage(get_method(stage), config_for(stage), start, end))
        start = end
    return stages


def load_initial_model(init: str, log: Callable[[str], None] = print, device: torch.device | str = "auto"):
    """(model, tokenizer) of `init` (`hf.load_model`), else of the cached toy base model (pre-trained on `device`
    on first use)."""
    from minichord.pretrain import toy_base

    return load_model(init or toy_base(log, resolve_device(device)))


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


def evaluate_initial_model(cfg: TrainConfig, device: torch.device, seeds: int, n_test: int,
                           log: Callable[[str], None] = print) -> tuple[torch.nn.Module, TokenizerLike, list[dict]]:
    """The starting model (`cfg.init`, else the toy base) on each seed's toy test splits, greedy:
    (model on `device`, tokenizer, [evaluate_splits(...) per seed 0..seeds-1]). The splits of seed s are
    the ones a run with seed=s and this n_test evaluates on (make_splits draws the test splits first)."""
    model, tok = load_initial_model(cfg.init, log, device)
    model.to(device)
    return model, tok, [evaluate_splits(model, tok, make_splits(seed, n_rl=0, n_expert=0, n_test=n_test).tests,
                                        dtype=cfg.dtype, max_new_tokens=cfg.sampler.max_new_tokens)
                        for seed in range(seeds)]
