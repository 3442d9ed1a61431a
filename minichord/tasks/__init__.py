"""Verifiable tasks: problem generators, answer styles, the reward. See `base` to add one."""

from minichord.tasks.base import Demonstration, Problem, Skill  # noqa: F401
from minichord.tasks.reward import extract_answer, normalise, reward  # noqa: F401
from minichord.tasks.toy import (OTHER_SKILLS, SKILLS, TARGET_SKILL, ToyTask, expert_response,  # noqa: F401
                                 is_reserved, make_splits, pretrain_corpus, style_texts, terse_response)
