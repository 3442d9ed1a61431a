"""Evaluation: greedy accuracy (mean 0/1 reward) on held-out splits and retention of the other skills;
`evaluate_splits` is the one evaluation of every command (eval, the trainer, pre-training, reproduce, the probe)."""

from typing import Callable, Sequence

import torch

from minichord import batch as batches
from minichord.config import SamplerConfig
from minichord.device import autocast
from minichord.sampler import generate
from minichord.tasks.base import Problem
from minichord.tasks.reward import reward as default_reward
from minichord.tasks.rg import reward_of
from minichord.tokenizer import TokenizerLike

MAX_NEW_TOKENS = SamplerConfig.max_new_tokens  # an answer's length limit: the sampler's default, declared once
N_SAMPLES = 4  # the first problems of a split whose completions `evaluate` returns (a run's samples.jsonl)


def evaluate(model, tokenizer: TokenizerLike, problems: Sequence[Problem], *, batch_size: int = 128,
             max_new_tokens: int = MAX_NEW_TOKENS, reward_fn: Callable[[str, str], float] = default_reward,
             lenient_fn: Callable[[str, str], float] | None = None) -> dict:
    """Greedy-decode and score every problem: {"accuracy" (share of reward 1), "n", "response_length" (mean tokens, eos
    included), "samples" (the first N_SAMPLES, with rewards), "per_skill" (several skills), "lenient_accuracy"}."""
    problems = list(problems)
    if not problems:
        raise ValueError("evaluate() needs at least one problem")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    responses, lengths = [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(problems), batch_size):
            ids = [tokenizer.encode_prompt(p.prompt) for p in problems[start:start + batch_size]]
            room = model.cfg.max_seq_len - max(len(p) for p in ids)  # answers are cut to fit the context
            if room < 1:
                raise ValueError(f"a prompt of {max(len(p) for p in ids)} tokens leaves no room to answer "
                                 f"within max_seq_len={model.cfg.max_seq_len}")
            cfg = SamplerConfig(max_new_tokens=min(max_new_tokens, room), greedy=True)
            rollout = generate(model, ids, cfg, eos_id=tokenizer.stop_ids, pad_id=tokenizer.pad_id,
                               vocab_size=tokenizer.vocab_size)
            for tokens, mask in zip(rollout.tokens, rollout.mask):  # [T_new] each
                responses.append(tokenizer.decode(tokens[mask]))  # generated tokens, eos included
                lengths.append(int(mask.sum()))
    finally:
        model.train(was_training)
    rewards = [reward_of(reward_fn, r, p) for r, p in zip(responses, problems)]
    out = {"accuracy": _accuracy(rewards), "n": len(rewards), "response_length": sum(lengths) / len(lengths),
           "samples": [dict(prompt=p.prompt, response=r, answer=p.answer, reward=w)
                       for p, r, w in zip(problems[:N_SAMPLES], responses, rewards)]}
    if lenient_fn is not None:
        out["lenient_accuracy"] = _accuracy([reward_of(lenient_fn, r, p) for r, p in zip(responses, problems)])
    if len(skills := sorted({p.skill for p in problems})) > 1:
        out["per_skill"] = {s: _accuracy([r for p, r in zip(problems, rewards) if p.skill == s]) for s in skills}
    return out


def _accuracy(rewards: list[float]) -> float:  # the share of reward 1
    return sum(r == 1 for r in rewards) / len(rewards)


@torch.no_grad()
def expert_token_probs(model, tokenizer: TokenizerLike, demos: Sequence, dtype: str = "fp32") -> dict[str, float]:
    """How far off-policy an expert set is: over all its tokens, teacher-forced at T = 1, p_t = pi(y_t | x, y_<t):
    median p, the shares with p < 1e-3 (phi silences them) and p > 0.5, and mean phi = p(1 - p)."""
    rows = [batches.Sequence(*batches.split_example(*tokenizer.encode_example(d.prompt, d.response)), True)
            for d in demos]
    batch = batches.pack(rows, tokenizer.pad_id, model.cfg.max_seq_len).to(next(model.parameters()).device)
    p = batches.batch_logprobs(model, batch, 1.0, dtype=dtype).exp()  # [all expert tokens]
    return {"median_p": p.median().item(), "share_p_below_1e-3": (p < 1e-3).float().mean().item(),
            "share_p_above_0.5": (p > 0.5).float().mean().item(), "mean_phi": (p * (1 - p)).mean().item()}


def evaluate_splits(model, tokenizer: TokenizerLike, splits: dict[str, Sequence[Problem]], *, dtype: str = "fp32",
                    **kwargs) -> dict[str, dict]:
    """`evaluate(**kwargs)` on each non-empty named split, under autocast to `dtype` on the model's device."""
    with autocast(next(model.parameters()).device, dtype):
        return {name: evaluate(model, tokenizer, problems, **kwargs) for name, problems in splits.items() if problems}
