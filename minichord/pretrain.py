"""Pre-train the toy *base model*: the analogue of the instruct model the CHORD paper starts from.

A small transformer that answers every toy skill in its own terse style, and the target only *sometimes* (seed 0,
2 CPU cores, 116 s: 3-digit addition 0.26, harder 0.00, reverse / sort / copy 0.995, median expert-token p 0.38);
the recipe sits on a fitting transition (in-domain 0.045-0.34 over 28 bases: seed, floating-point order).
A byte-level BPE tokenizer is trained on text of *both* styles, then AdamW (`cosine_lr`) fits a stream of examples
of every skill (`minichord.tasks.toy`, none in any split) on the response tokens only, the batch packed:
    L = - (1 / #response tokens) * sum_{t in response} log p(x_t | x_<t)
The checkpoint's meta holds the settings (same settings: reused), test accuracies, `evaluate.expert_token_probs`."""

import dataclasses
import inspect
import math
import os
import random
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from minichord.batch import Sequence, pack, split_example
from minichord.checkpoint import CheckpointError, checkpoint_exists, load_checkpoint, save_checkpoint
from minichord.config import ModelConfig, TrainConfig, to_dict
from minichord.device import autocast, resolve_device
from minichord.evaluate import evaluate_splits, expert_token_probs
from minichord.model import Transformer
from minichord.tasks.toy import (EASY_DIGITS, OTHER_LENGTHS, PRETRAIN_DIGITS, SENTENCE_FROM, Sloppy, make_splits,
                                 pretrain_corpus, style_texts)
from minichord.tokenizer import Tokenizer

PRETRAIN_FORMAT = 7  # part of the cache key: bump when the recipe changes, so old caches are not reused


def default_base_dir() -> Path:
    return Path(os.environ.get("MINICHORD_HOME") or Path.home() / ".cache" / "minichord") / "toy-base"


def toy_base(log: Callable[[str], None] | None = print, device: torch.device | str = "auto") -> Path:
    """The cached toy base model's checkpoint (`default_base_dir`), pre-trained on `device` on first use."""
    return pretrain_base(default_base_dir(), log=log, device=device)


@dataclasses.dataclass
class PretrainConfig:
    seed: int = 0
    steps: int = 1300
    batch_size: int = 64
    lr: float = 3e-3
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    target_fraction: float = 0.5  # share of addition in the pre-training stream
    target_digits: tuple[int, int] = PRETRAIN_DIGITS  # operand lengths of pre-training additions
    other_lengths: tuple[int, int] = OTHER_LENGTHS  # string lengths of reverse / sort / copy
    expert_style_fraction: float = 0.15  # share of additions written step by step (1-3 digits)
    expert_style_digits: tuple[int, int] = (1, 3)  # operand lengths of those
    easy_fraction: float = 0.4  # share of terse additions that are carry-free with easy_digits digits
    easy_digits: tuple[int, int] = EASY_DIGITS
    easy_carry_free: float = 1.0  # share of those with no carry (the rest: any easy_digits sum)
    easy_one_carry: float = 0.3  # share of the easy sums with exactly one inner carry (drawn first)
    sentence_share: float = 0.8  # share of terse sums with first operand >= sentence_from written as a sentence
    sentence_from: int = SENTENCE_FROM  # ("the sum is 1079", toy.in_a_sentence: a format the reward marks wrong)
    sloppy_noise: float = Sloppy.noise  # > 0: 3-digit step-by-step sums are sloppy (corpus.Sloppy), this share wrong
    sloppy_keep: float = Sloppy.keep  # share of their lines that keep the " carry c" note
    sloppy_newline: float = Sloppy.newline  # share of their lines that end in a newline (else "; ")
    tokenizer_texts: int = 2000  # problems whose text (both styles) trains the tokenizer
    n_eval: int = 200  # problems per test split measured at the end (0 = skip)


def cosine_lr(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * min_lr_frac at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain_base(out_dir: str | Path, *, seed: int = 0, steps: int | None = None, config: PretrainConfig | None = None,
                  model_config: ModelConfig | None = None, log: Callable[[str], None] | None = print,
                  force: bool = False, device: torch.device | str = "auto", dtype: str = "fp32") -> Path:
    """Pre-train (or reuse) the toy base model in `out_dir`; returns the checkpoint directory. device, dtype:
    minichord/device.py; they are not part of the cache key (a base made on a GPU is reused on a CPU)."""
    where = resolve_device(device)
    cfg = dataclasses.replace(config or PretrainConfig(), seed=seed, **({"steps": steps} if steps is not None else {}))
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={cfg.steps}, batch_size={cfg.batch_size}")
    model_cfg = model_config or ModelConfig()
    # everything that determines the model (measuring does not), as the checkpoint's JSON meta will hold it
    settings = {"format": PRETRAIN_FORMAT, **dataclasses.asdict(cfg), "model": to_dict(model_cfg)}
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items() if k != "n_eval"}
    out_dir, say = Path(out_dir), log or (lambda _msg: None)
    try:
        cached = not force and checkpoint_exists(out_dir) and load_checkpoint(out_dir).meta.get("settings") == settings
    except CheckpointError:
        cached = False
    if cached:
        say(f"pretrain: reusing the base model in {out_dir} (same settings)")
        return out_dir

    t0, rng = time.perf_counter(), random.Random(f"minichord-pretrain-{cfg.seed}")
    torch.manual_seed(cfg.seed)
    tokenizer = Tokenizer.train(style_texts(rng, cfg.tokenizer_texts, other_lengths=cfg.other_lengths),
                                vocab_size=model_cfg.vocab_size)
    named = inspect.signature(pretrain_corpus).parameters  # the PretrainConfig fields it takes by name
    pairs = pretrain_corpus(rng, cfg.steps * cfg.batch_size, **{k: getattr(cfg, k) for k in named if hasattr(cfg, k)},
                            sloppy=Sloppy(noise=cfg.sloppy_noise, keep=cfg.sloppy_keep, newline=cfg.sloppy_newline)
                            if cfg.sloppy_noise > 0 else None)
    examples = [Sequence(*split_example(*tokenizer.encode_example(prompt, response)), is_expert=True)
                for prompt, response in pairs]  # demonstrations: the loss is on the response tokens
    if (longest := max(len(s.prompt_ids) + len(s.response_ids) for s in examples)) > model_cfg.max_seq_len:
        raise ValueError(f"a pre-training example has {longest} tokens > max_seq_len={model_cfg.max_seq_len}")

    # model_cfg.vocab_size is the tokenizer's budget, not its size (see Tokenizer.train): no untrained rows
    model = Transformer(dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)).to(where)
    optimizer = torch.optim.AdamW([{"params": [p for p in model.parameters() if (p.dim() >= 2) == decay],
                                    "weight_decay": cfg.weight_decay if decay else 0.0} for decay in (True, False)],
                                  lr=cfg.lr, betas=(0.9, 0.95))  # decay on matrices, not norms / biases
    say(f"pretrain: {model.num_params() / 1e6:.2f}M parameters, vocab {tokenizer.vocab_size}, "
        f"{cfg.steps} steps x {cfg.batch_size} examples -> {out_dir}")
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, cfg)
        batch = pack(examples[step * cfg.batch_size:(step + 1) * cfg.batch_size], tokenizer.pad_id,
                     model_cfg.max_seq_len).to(where)
        real = batch.attention_mask[:, :-1]  # [B, T-1]: the positions that predict a next token
        scored = torch.zeros_like(real)
        scored[batch.rows, batch.cols] = True  # [B, T-1]: those predicting a response token (or the eos)
        with autocast(where, dtype):  # packed: the per-token layers skip the padding (~64 % of these batches)
            logits = model(batch.ids[:, :-1], attention_mask=real, packed=True)  # [N, V], N = real positions
        loss = F.cross_entropy(logits[scored[real]].float(), batch.targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretrain: loss is {loss.item()} at step {step}; lower lr (now {cfg.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if (step + 1) % max(1, cfg.steps // 12) == 0 or step + 1 == cfg.steps:
            say(f"pretrain step {step + 1:4d}/{cfg.steps} | loss {loss.item():.4f} | "
                f"lr {cosine_lr(step, cfg):.2e} | {time.perf_counter() - t0:5.1f}s")
    train_seconds = time.perf_counter() - t0

    accuracies, expert_tokens = {}, {}
    if cfg.n_eval > 0:
        task = make_splits(cfg.seed, n_rl=0, n_expert=TrainConfig().n_expert, n_test=cfg.n_eval,
                           other_lengths=cfg.other_lengths)  # the trainer's default expert set
        results = evaluate_splits(model, tokenizer, task.tests, dtype=dtype)
        accuracies = {name: r["accuracy"] for name, r in results.items()}
        if "per_skill" in results.get("other_skills", {}):
            accuracies["other_skills_per_skill"] = results["other_skills"]["per_skill"]
        say("pretrain: accuracy " + " | ".join(f"{k} {v:.3f}" for k, v in accuracies.items() if isinstance(v, float)))
        expert_tokens = expert_token_probs(model, tokenizer, task.expert)  # how off-policy the expert set is
        say("pretrain: expert tokens under the base: " + " | ".join(f"{k} {v:.3f}" for k, v in expert_tokens.items()))
    meta = {"kind": "toy base model", "settings": settings, "accuracy": accuracies, "expert_tokens": expert_tokens,
            "n_eval": cfg.n_eval, "train_seconds": round(train_seconds, 1)}
    save_checkpoint(out_dir, model, tokenizer=tokenizer, step=cfg.steps, meta=meta)
    say(f"pretrain: saved {out_dir} ({time.perf_counter() - t0:.1f}s in all)")
    return out_dir
