"""Evaluation: greedy accuracy on held-out splits, pass@k, retention of the other skills.

    accuracy  = mean over problems of reward(greedy response, answer)            (0/1 rewards)
    pass@k    = E_problems[ 1 - C(n-c, k) / C(n, k) ]   from n samples, c of them correct
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Callable, Sequence

import torch

from minichord.config import SamplerConfig
from minichord.sampler import generate
from minichord.tasks.base import Problem
from minichord.tasks.reward import reward as default_reward

RewardFn = Callable[[str, str], float]


def _responses(model, tokenizer, prompts: list[str], cfg: SamplerConfig, batch_size: int,
               generator: torch.Generator | None) -> tuple[list[str], list[int]]:
    """Generate one response per prompt, in batches: (texts, lengths in tokens incl. eos)."""
    texts, lengths = [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            ids = [tokenizer.encode_prompt(p) for p in prompts[start:start + batch_size]]
            room = model.cfg.max_seq_len - max(len(p) for p in ids)  # answers are cut to fit the context
            if room < 1:
                raise ValueError(f"a prompt of {max(len(p) for p in ids)} tokens leaves no room to answer "
                                 f"within max_seq_len={model.cfg.max_seq_len}")
            batch_cfg = dataclasses.replace(cfg, max_new_tokens=min(cfg.max_new_tokens, room))
            rollout = generate(model, ids, batch_cfg, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                               generator=generator, vocab_size=tokenizer.vocab_size)
            for tokens, mask in zip(rollout.tokens, rollout.mask):  # [T_new] each
                texts.append(tokenizer.decode(tokens[mask]))  # generated tokens, eos included
                lengths.append(int(mask.sum()))
    finally:
        model.train(was_training)
    return texts, lengths


def score(responses: Sequence[str], problems: Sequence[Problem], reward_fn: RewardFn = default_reward) -> list[float]:
    """Reward of each response against its problem's answer."""
    if len(responses) != len(problems):
        raise ValueError(f"{len(responses)} responses for {len(problems)} problems")
    return [float(reward_fn(r, p.answer)) for r, p in zip(responses, problems)]


def summarise(problems: Sequence[Problem], responses: Sequence[str], rewards: Sequence[float],
              lengths: Sequence[int], n_samples: int = 3) -> dict:
    """{"accuracy", "n", "response_length" (mean tokens, eos included), "samples": the first
    n_samples as [{"prompt", "response", "answer"}, ...], "per_skill" (only when several skills)}."""
    by_skill: dict[str, list[float]] = defaultdict(list)
    for p, r in zip(problems, rewards):
        by_skill[p.skill].append(r)
    out = {
        "accuracy": sum(rewards) / len(rewards),
        "n": len(rewards),
        "response_length": sum(lengths) / len(lengths),
        "samples": [{"prompt": p.prompt, "response": r, "answer": p.answer}
                    for p, r in list(zip(problems, responses))[:n_samples]],
    }
    if len(by_skill) > 1:
        out["per_skill"] = {skill: sum(v) / len(v) for skill, v in sorted(by_skill.items())}
    return out


def evaluate(model, tokenizer, problems: Sequence[Problem], *, batch_size: int = 128,
             max_new_tokens: int = 96, reward_fn: RewardFn = default_reward, n_samples: int = 3) -> dict:
    """Greedy-decode every problem and score it; returns `summarise`'s dict."""
    problems = list(problems)
    if not problems:
        raise ValueError("evaluate() needs at least one problem")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg = SamplerConfig(max_new_tokens=max_new_tokens, greedy=True)
    responses, lengths = _responses(model, tokenizer, [p.prompt for p in problems], cfg, batch_size, None)
    return summarise(problems, responses, score(responses, problems, reward_fn), lengths, n_samples)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: the chance that k of them drawn without
    replacement include a correct one, 1 - C(n-c, k) / C(n, k), computed as a product to avoid
    huge binomials:  C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset contains a correct sample
        return 1.0
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def evaluate_pass_at_k(model, tokenizer, problems: Sequence[Problem], *, n: int = 8, ks: Sequence[int] = (1, 8),
                       temperature: float = 1.0, max_new_tokens: int = 96, batch_size: int = 128,
                       generator: torch.Generator | None = None, reward_fn: RewardFn = default_reward) -> dict:
    """Sample n responses per problem at `temperature`; mean pass@k over problems for each k."""
    problems = list(problems)
    if not problems:
        raise ValueError("evaluate_pass_at_k() needs at least one problem")
    repeated = [p for p in problems for _ in range(n)]  # n consecutive copies of each problem
    cfg = SamplerConfig(max_new_tokens=max_new_tokens, temperature=temperature)
    responses, _ = _responses(model, tokenizer, [p.prompt for p in repeated], cfg, batch_size, generator)
    rewards = score(responses, repeated, reward_fn)
    correct = [int(sum(rewards[i * n:(i + 1) * n])) for i in range(len(problems))]
    return {f"pass@{k}": sum(pass_at_k(n, c, k) for c in correct) / len(problems) for k in ks}


@torch.no_grad()
def expert_token_probs(model, tokenizer, demos: Sequence) -> dict[str, float]:
    """How far off-policy an expert set is for `model`: the probability it gives each expert
    token, teacher-forced at T = 1, p_t = pi(y_t | x, y_<t), summarised over all tokens:
    median p, the shares with p < 1e-3 (phi silences them) and p > 0.5, and mean phi = p(1 - p)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs = []
    for demo in demos:
        prompt = tokenizer.encode_prompt(demo.prompt)
        response = tokenizer.encode(demo.response) + [tokenizer.eos_id]
        logits = model(torch.tensor([prompt + response], device=device))[0, len(prompt) - 1:-1]  # [T, V]
        targets = torch.tensor(response, device=device)[:, None]  # [T, 1]
        probs.append(logits.float().softmax(-1).gather(1, targets).squeeze(1))  # [T]
    model.train(was_training)
    p = torch.cat(probs)  # [all expert tokens]
    return {"median_p": p.median().item(), "share_p_below_1e-3": (p < 1e-3).float().mean().item(),
            "share_p_above_0.5": (p > 0.5).float().mean().item(), "mean_phi": (p * (1 - p)).mean().item()}


def evaluate_splits(model, tokenizer, splits: dict[str, Sequence[Problem]], **kwargs) -> dict[str, dict]:
    """`evaluate` on each named split, e.g. {"in_domain": ..., "harder": ..., "other_skills": ...};
    a split mixing skills (other_skills) also reports "per_skill" accuracy."""
    return {name: evaluate(model, tokenizer, problems, **kwargs) for name, problems in splits.items() if problems}
