"""What a task is: problems with a checkable answer, written in one or two styles.

A `Skill` subclass makes problems (`generate`) and answers them in the base model's *terse* style; the target
skill also has an *expert* style, the step-by-step traces of the CHORD paper's stronger model. Responses must
end in an answer that `minichord.tasks.reward.extract_answer` reads."""

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field as _field
from typing import ClassVar


class _Texts:
    required: ClassVar[tuple[str, ...]]  # the fields that must be non-empty strings

    def __post_init__(self) -> None:
        for field in self.required:
            if not isinstance(value := getattr(self, field), str) or not value.strip():
                raise ValueError(f"{type(self).__name__}.{field} must be a non-empty string, got {value!r}")


@dataclass(frozen=True)
class Problem(_Texts):
    """One prompt with its reference answer; `skill` names the skill that made it."""

    required = ("prompt", "answer", "skill")
    prompt: str
    answer: str
    skill: str = "task"
    where: str | None = _field(default=None, compare=False, repr=False)  # "file:line" if loaded from one
    metadata: dict | None = _field(default=None, compare=False, repr=False)  # what a task's own scorer reads (rg.py)


@dataclass(frozen=True)
class Demonstration(_Texts):
    """An expert demonstration: a prompt and the full response to imitate (`answer` is optional)."""

    required = ("prompt", "response")
    prompt: str
    response: str
    answer: str | None = None
    where: str | None = _field(default=None, compare=False, repr=False)  # "file:line" if loaded from one


class Skill(ABC):  # see the module docstring
    name: str = "skill"

    @abstractmethod
    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        """A random problem; `difficulty` is skill-specific (digits, string length)."""

    def terse_response(self, problem: Problem) -> str:
        return problem.answer

    def count(self, difficulty: int) -> int | None:  # how many distinct prompts `generate` makes (None: unknown)
        return None

    def expert_response(self, problem: Problem) -> str:  # step by step, ending in `answer: ...`
        raise NotImplementedError(f"skill {self.name!r} has no expert solver")
