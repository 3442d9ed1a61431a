"""What one training run learns from: RL prompts, expert demonstrations, test splits, a reward."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from minichord import math_reward
from minichord.config import ConfigError, TrainConfig
from minichord.data import check_lengths, load_experts, load_prompts
from minichord.tasks import Demonstration, Problem, make_splits, reward


@dataclasses.dataclass
class TrainData:
    prompts: list[Problem]  # RL prompts with reference answers
    experts: list[Demonstration]  # the (limited) expert set
    eval_splits: dict[str, list[Problem]]  # held-out test splits
    reward: Callable[[str, str], float] = reward  # (response, answer) -> reward, no eval/exec
    lenient: Callable[[str, str], float] | None = None  # reported beside accuracy (math: the last number)

    def check_fits(self, tokenizer, max_seq_len: int, stages) -> None:
        """DataError (file:line) unless RL prompts (and LUFFY's expert ones) leave room for max_new_tokens."""
        new = max(s.cfg.sampler.max_new_tokens for s in stages)
        check_lengths(self.prompts, tokenizer, max_seq_len, new)
        check_lengths(self.experts, tokenizer, max_seq_len, new if any(s.cfg.loss.expert_in_group for s in stages) else 0)
        check_lengths([p for split in self.eval_splits.values() for p in split], tokenizer, max_seq_len, 1)


def build_train_data(cfg: TrainConfig, hf_model: bool = False) -> TrainData:
    """The user's JSONL files (minichord.data), the toy task's splits (seeded by cfg.seed) where none is given.
    With a Hugging Face model (`hf_model`) the toy is no default: prompts and experts files are required."""
    if hf_model and not (cfg.prompts_file and cfg.experts_file):
        raise ConfigError("a Hugging Face model needs your data: give prompts_file and experts_file "
                          "(--prompts FILE --experts FILE); the toy task is for the toy model")
    toy = make_splits(cfg.seed, n_rl=cfg.n_rl_prompts, n_expert=cfg.n_expert, n_test=cfg.n_test)
    prompts = load_prompts(cfg.prompts_file) if cfg.prompts_file else toy.rl
    experts = load_experts(cfg.experts_file) if cfg.experts_file else toy.expert
    evals = {Path(cfg.eval_file).stem: load_prompts(cfg.eval_file)} if cfg.eval_file else {} if hf_model else toy.tests
    return TrainData(prompts, experts, evals, *rewards(cfg.reward, hf_model))


def rewards(name: str, chat_model: bool) -> tuple[Callable[[str, str], float], Callable[[str, str], float] | None]:
    """(reward, lenient or None) of `reward = exact | math | auto`; auto = math for a chat (Hugging Face) model."""
    if name == "math" or (name == "auto" and chat_model):
        return math_reward.strict_reward, math_reward.lenient_reward
    return reward, None
