"""What one training run learns from: RL prompts, expert demonstrations, test splits, a reward."""

from __future__ import annotations

import dataclasses
from typing import Callable

from minichord.config import TrainConfig
from minichord.data import check_lengths, load_experts, load_prompts
from minichord.tasks import Demonstration, Problem, make_splits, reward


@dataclasses.dataclass
class TrainData:
    prompts: list[Problem]  # RL prompts with reference answers
    experts: list[Demonstration]  # the (limited) expert set
    eval_splits: dict[str, list[Problem]]  # held-out test splits
    reward: Callable[[str, str], float] = reward  # (response, answer) -> reward, no eval/exec

    def check_fits(self, tokenizer, max_seq_len: int, stages) -> None:
        """DataError (file:line) unless RL prompts (and LUFFY's expert ones) leave room for max_new_tokens."""
        new = max(s.cfg.sampler.max_new_tokens for s in stages)
        check_lengths(self.prompts, tokenizer, max_seq_len, new)
        check_lengths(self.experts, tokenizer, max_seq_len, new if any(s.method.luffy for s in stages) else 0)
        check_lengths([p for split in self.eval_splits.values() for p in split], tokenizer, max_seq_len, 1)


def build_train_data(cfg: TrainConfig) -> TrainData:
    """The toy task's splits (seeded by cfg.seed), with the user's JSONL files (minichord.data) swapped in."""
    toy = make_splits(cfg.seed, n_rl=cfg.n_rl_prompts, n_expert=cfg.n_expert, n_test=cfg.n_test)
    prompts = load_prompts(cfg.prompts_file) if cfg.prompts_file else toy.rl
    experts = load_experts(cfg.experts_file) if cfg.experts_file else toy.expert
    return TrainData(prompts=prompts, experts=experts, eval_splits=toy.tests)
