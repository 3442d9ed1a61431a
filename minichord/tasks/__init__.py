"""Verifiable tasks: problem generators, answer styles, the reward. See `base` to add one."""

from minichord.tasks.base import Demonstration, Problem, Skill
from minichord.tasks.reward import extract_answer, normalise, reward
from minichord.tasks.corpus import pretrain_corpus, style_texts
from minichord.tasks.toy import (OTHER_SKILLS, SKILLS, TARGET_SKILL, ToyTask, expert_response, is_reserved,
                                 make_splits, terse_response)

__all__ = ["Demonstration", "Problem", "Skill", "extract_answer", "normalise", "reward", "pretrain_corpus",
           "style_texts", "OTHER_SKILLS", "SKILLS", "TARGET_SKILL", "ToyTask", "expert_response", "is_reserved",
           "make_splits", "terse_response"]
