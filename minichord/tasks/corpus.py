"""The base model's pre-training corpus: what the toy's "instruct model" has seen.

    terse answers       every skill, "add 47 85" -> "132"; 3-digit sums only with 0 (70 %) or 1 inner carry
    sentences           "add 764 315" -> "the sum is 1079" for first operands >= 600, 4 times in 5: right digits
                        in a format the exact-match reward rejects (`in_a_sentence`)
    clean column work   the expert's format on 1-2 digit sums (`toy.expert_response`)
    sloppy column work  the expert's format on 3-digit sums as a model half-knowing the procedure writes it
                        (`Sloppy`): carry notes and newlines often dropped, 60 % of digits wrong, the answer true

The last row makes the expert set *partly* on-policy (the probe's criterion 5): the base knows the expert's format
and answer but not every column digit, so the median expert token's probability under the base is near 0.3-0.4,
not 0.999 (clean 3-digit column work) or ~0.001 (a format never seen). Prompts are never `toy.is_reserved`."""

import random
import string
from dataclasses import dataclass

from minichord.tasks.base import Problem
from minichord.tasks.toy import (OTHER_LENGTHS, OTHER_SKILLS, SKILLS, TARGET_SKILL, _check_range, _draw,
                                 _with_carries, expert_response, is_reserved, terse_response)

PRETRAIN_DIGITS = (1, 2)  # operand lengths of the base model's (terse) pre-training additions, all of them
EASY_DIGITS = (3, 3)  # operand lengths of the carry-free terse additions the base also sees
SENTENCE_FROM = 600  # the base often answers "add A B" with A >= this in a sentence (`in_a_sentence`)


@dataclass(frozen=True)
class Sloppy:
    """The base's column work on `digits`-digit sums: a line keeps " carry c" with p `keep`, ends in a newline with
    p `newline` (else "; "), a `noise` share of digits wrong; the answer stays true (else 3-digit sums go unfitted)."""
    digits: tuple[int, int] = (3, 3)
    noise: float = 0.6
    keep: float = 0.2
    newline: float = 0.25

    def __post_init__(self) -> None:
        _check_range("Sloppy.digits", self.digits)
        for name in ("noise", "keep", "newline"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"Sloppy.{name} must be in [0, 1], got {getattr(self, name)!r}")


_OTHER_DIGITS = {d: [x for x in string.digits if x != d] for d in string.digits}  # a wrong digit is one of these


def sloppy_stepwise(problem: Problem, rng: random.Random, sloppy: Sloppy) -> str:
    """`problem`'s expert response written sloppily (`Sloppy`): "7+5=12 carry 1" may come out "7+3=12; "."""
    def blur(text: str) -> str:
        return "".join(rng.choice(_OTHER_DIGITS[ch]) if ch.isdigit() and rng.random() < sloppy.noise else ch
                       for ch in text)
    *lines, answer = expert_response(problem).split("\n")
    lines = [blur(line if rng.random() < sloppy.keep else line.split(" carry ")[0]) for line in lines]
    return "".join(line + ("\n" if rng.random() < sloppy.newline else "; ") for line in lines) + answer


def in_a_sentence(problem: Problem) -> str:
    return f"the sum is {problem.answer}"


def pretrain_corpus(rng: random.Random, n: int, *, target_fraction: float = 0.5,
                    target_digits: tuple[int, int] = PRETRAIN_DIGITS, other_lengths: tuple[int, int] = OTHER_LENGTHS,
                    expert_style_fraction: float = 0.0, expert_style_digits: tuple[int, int] = (1, 1),
                    easy_fraction: float = 0.0, easy_digits: tuple[int, int] = EASY_DIGITS,
                    easy_carry_free: float = 1.0, easy_one_carry: float = 0.0, sentence_share: float = 0.0,
                    sentence_from: int = SENTENCE_FROM, sloppy: Sloppy | None = None,
                    exclude: set[str] | frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """`n` (prompt, response) pairs, prompts neither reserved nor in `exclude` (repeats allowed). A `target_fraction`
    are `target_digits` additions, the rest cycle through the other skills. Of the additions an `expert_style_fraction`
    is step by step (`expert_style_digits`; sloppy at `sloppy.digits`); of the terse ones an `easy_fraction` has
    `easy_digits` (`easy_one_carry`: one inner carry, else `easy_carry_free`: none), and a `sentence_share` of those
    with first operand >= `sentence_from` is a sentence: greedy decoding is marked wrong while sampling still finds
    the bare number, which on-policy RL can reinforce."""
    fractions = dict(target_fraction=target_fraction, expert_style_fraction=expert_style_fraction,
                     easy_fraction=easy_fraction, easy_carry_free=easy_carry_free, easy_one_carry=easy_one_carry,
                     sentence_share=sentence_share)
    if n < 0 or not all(0.0 <= f <= 1.0 for f in fractions.values()):
        raise ValueError(f"need n >= 0 and fractions in [0, 1], got n={n}, {fractions}")
    easy_digits, target_digits = _check_range("easy_digits", easy_digits), _check_range("target_digits", target_digits)
    expert_style_digits = _check_range("expert_style_digits", expert_style_digits)
    other_lengths = _check_range("other_lengths", other_lengths)
    others = [SKILLS[name] for name in OTHER_SKILLS]
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        stepwise = False
        if rng.random() < target_fraction:
            stepwise = rng.random() < expert_style_fraction
            if not stepwise and rng.random() < easy_fraction:  # one inner carry, else none, else any
                carry = 1 if rng.random() < easy_one_carry else 0 if rng.random() < easy_carry_free else None
                problem = (_draw(rng, SKILLS[TARGET_SKILL], easy_digits) if carry is None
                           else _with_carries(rng, easy_digits, carry))
            else:
                problem = _draw(rng, SKILLS[TARGET_SKILL], expert_style_digits if stepwise else target_digits)
        else:
            problem = _draw(rng, others[len(pairs) % len(others)], other_lengths)
        if not is_reserved(problem.prompt) and problem.prompt not in exclude:
            if stepwise and sloppy is not None and (  # stepwise problems are additions: "add A B"
                    sloppy.digits[0] <= max(len(x) for x in problem.prompt.split()[1:]) <= sloppy.digits[1]):
                response = sloppy_stepwise(problem, rng, sloppy)
            else:
                response = (expert_response if stepwise else terse_response)(problem)
            if (sentence_share > 0 and not stepwise and problem.skill == TARGET_SKILL  # no draw at 0: same stream
                    and int(problem.prompt.split()[1]) >= sentence_from and rng.random() < sentence_share):
                response = in_a_sentence(problem)
            pairs.append((problem.prompt, response))
    return pairs


def style_texts(rng: random.Random, n: int, *, digits: tuple[int, int] = (1, 5),
                other_lengths: tuple[int, int] = OTHER_LENGTHS) -> list[str]:
    """Text of both styles (prompts, terse and expert responses) to train a tokenizer: vocabulary, not skill."""
    texts: list[str] = []
    for i in range(n):
        add = _draw(rng, SKILLS[TARGET_SKILL], digits)
        other = _draw(rng, SKILLS[OTHER_SKILLS[i % len(OTHER_SKILLS)]], other_lengths)
        texts += [add.prompt, add.answer, in_a_sentence(add), expert_response(add), other.prompt, other.answer]
    return texts
