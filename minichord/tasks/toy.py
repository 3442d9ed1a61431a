"""The CPU-scale toy task: the CHORD paper's setting in miniature.

    paper                                   toy
    instruct model, its own answer style    base model pre-trained here, terse answers
    target skill (competition math)         3-digit addition              "add 347 285" -> "632"
    general capabilities (retention)        reverse / sort / copy         "sort 5292" -> "2259"
    expert data (long CoT, other style)     step-by-step column sums, lowest column first:
                                            "7+5=12 carry 1\n4+8+1=13 carry 1\n3+2+1=6 carry 0\nanswer: 632"
    partial skill of the instruct model     what the base saw (minichord.tasks.corpus)
    limited expert set, disjoint RL set     `make_splits`: n_expert demos, n_rl prompts, disjoint
    held-out tests                          in_domain (3 digits), harder (2 inner carries), other_skills

"Harder" is a longer carry chain, not more digits (which a model this small does not generalise to): 3-digit
sums whose units *and* tens columns both carry, never seen terse. A fixed quarter of all prompts (CRC32 of the
text) is *reserved*: `make_splits` draws only those, `pretrain_corpus` never, so no split is pre-trained on."""

import random
import string
import zlib
from dataclasses import dataclass
from typing import Callable

from minichord.config import ConfigError
from minichord.tasks.base import Demonstration, Problem, Skill

TARGET_SKILL, OTHER_SKILLS = "add", ("reverse", "sort", "copy")
TRAIN_DIGITS = (3, 3)  # operand lengths of the RL / expert / in_domain additions
HARDER_CARRIES = 2  # the harder test split: train_digits sums with at least this many inner carries
OTHER_LENGTHS = (3, 6)  # string lengths of reverse / sort / copy
RESERVED_SHARE = 4  # 1 prompt in 4 is reserved for the splits (never pre-trained on)


def is_reserved(prompt: str) -> bool:
    return zlib.crc32(prompt.encode("utf-8")) % RESERVED_SHARE == 0


def _number(rng: random.Random, n_digits: int) -> int:
    if n_digits < 1:
        raise ValueError(f"n_digits must be >= 1, got {n_digits}")
    return rng.randrange(10 ** (n_digits - 1) if n_digits > 1 else 0, 10**n_digits)


def carries(a: int, b: int) -> int:
    """How many columns of a + b produce a carry (0 for a "carry-free" sum such as 123 + 456)."""
    count, carry = 0, 0
    while a or b:
        carry = (a % 10 + b % 10 + carry) // 10
        count += carry
        a, b = a // 10, b // 10
    return count


class Addition(Skill):
    name = "add"

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        a, b = _number(rng, difficulty), _number(rng, difficulty)
        return Problem(f"add {a} {b}", str(a + b), self.name)

    def count(self, difficulty: int) -> int:
        return (10 if difficulty == 1 else 9 * 10 ** (difficulty - 1)) ** 2

    def expert_response(self, problem: Problem) -> str:
        """Column addition, right to left: `a+b(+carry)=s carry c` a column, then `answer: A+B` from the prompt."""
        parts = problem.prompt.split()
        if len(parts) != 3 or parts[0] != "add" or not (parts[1].isdigit() and parts[2].isdigit()):
            raise ValueError(f"not an addition prompt: {problem.prompt!r}")
        a, b = (x.zfill(max(map(len, parts[1:]))) for x in parts[1:])
        lines, carry = [], 0
        for da, db in zip(reversed(a), reversed(b)):
            column = int(da) + int(db) + carry
            lines.append(f"{da}+{db}{f'+{carry}' if carry else ''}={column} carry {column // 10}")
            carry = column // 10
        return "\n".join(lines + [f"answer: {int(a) + int(b)}"])


class DigitString(Skill):
    """A skill on a string of `difficulty` digits: "reverse 4719" -> "9174", "sort 5292" -> "2259", "copy 381"."""

    def __init__(self, name: str, solve: Callable[[str], str]):
        self.name, self.solve = name, solve

    def generate(self, rng: random.Random, difficulty: int) -> Problem:
        digits = "".join(rng.choice(string.digits) for _ in range(difficulty))
        return Problem(f"{self.name} {digits}", self.solve(digits), self.name)

    def count(self, difficulty: int) -> int:
        return 10**difficulty


SKILLS: dict[str, Skill] = {s.name: s for s in (Addition(), DigitString("reverse", lambda d: d[::-1]),
                                                DigitString("sort", lambda d: "".join(sorted(d))),
                                                DigitString("copy", lambda d: d))}


def terse_response(problem: Problem) -> str:
    return SKILLS[problem.skill].terse_response(problem)


def expert_response(problem: Problem) -> str:
    return SKILLS[problem.skill].expert_response(problem)


def _draw(rng: random.Random, skill: Skill, lengths: tuple[int, int]) -> Problem:
    return skill.generate(rng, rng.randint(*lengths))


def _unique(n: int, draw: Callable[[], Problem], seen: set[str], what: str) -> list[Problem]:
    """`n` reserved problems from `draw()` whose prompts are not in `seen` (which is updated)."""
    out, attempts = [], 0
    while len(out) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} distinct {what} prompts: the problem space is too small "
                             f"(got {len(out)}); lower the split size or widen the difficulty range")
        if (problem := draw()).prompt not in seen and is_reserved(problem.prompt):
            seen.add(problem.prompt)
            out.append(problem)
    return out


def _check_range(name: str, lengths: tuple[int, int]) -> tuple[int, int]:
    lo, hi = lengths
    if not 1 <= lo <= hi:
        raise ValueError(f"{name} must be (lo, hi) with 1 <= lo <= hi, got {lengths}")
    return int(lo), int(hi)


@dataclass
class ToyTask:
    """All splits of the toy task; prompts are disjoint across `rl`, `expert` and `tests`."""

    seed: int
    rl: list[Problem]  # prompts for on-policy rollouts (target skill)
    expert: list[Demonstration]  # the limited expert set (target skill, expert style)
    tests: dict[str, list[Problem]]  # "in_domain", "harder", "other_skills"


def make_splits(seed: int = 0, *, n_rl: int = 1024, n_expert: int = 256, n_test: int = 200,
                train_digits: tuple[int, int] = TRAIN_DIGITS, harder_carries: int = HARDER_CARRIES,
                other_lengths: tuple[int, int] = OTHER_LENGTHS) -> ToyTask:
    """Seeded, prompt-disjoint splits; harder: `train_digits` sums with >= `harder_carries` inner carries."""
    if min(n_rl, n_expert, n_test) < 0:
        raise ValueError(f"n_rl, n_expert, n_test must be >= 0, got {n_rl}, {n_expert}, {n_test}")
    train_digits = _check_range("train_digits", train_digits)
    other_lengths = _check_range("other_lengths", other_lengths)
    rng = random.Random(f"minichord-toy-{seed}")
    add, others = SKILLS[TARGET_SKILL], [SKILLS[name] for name in OTHER_SKILLS]
    budgets = [(f"n_rl_prompts={n_rl} + n_expert={n_expert} + 2 x n_test={n_test} (in-domain, harder)",
                n_rl + n_expert + 2 * n_test, add, train_digits),
               *((f"n_test / {len(others)}", -(-n_test // len(others)), s, other_lengths) for s in others)]
    for what, n, skill, lengths in budgets:  # fail fast, before drawing
        counts = [skill.count(d) for d in range(lengths[0], lengths[1] + 1)]  # None: unknown
        if None not in counts and n > (room := sum(counts) // RESERVED_SHARE):  # 1 in RESERVED_SHARE is reserved
            raise ConfigError(f"{what} = {n} is more than the {room} distinct {skill.name} prompts with "
                              f"lengths {lengths} that the splits may use; lower it")
    if not 1 <= harder_carries < train_digits[1]:  # an n-digit sum has at most n - 1 inner carries
        raise ValueError(f"harder_carries must be in [1, {train_digits[1] - 1}] for train_digits {train_digits}, "
                         f"got {harder_carries}")
    seen: set[str] = set()
    in_domain = _unique(n_test, lambda: _draw(rng, add, train_digits), seen, "in-domain test")
    harder_digits = (max(train_digits[0], harder_carries + 1), train_digits[1])  # lengths that can carry enough
    harder = _unique(n_test, lambda: _with_carries(rng, rng.randint(*harder_digits), harder_carries, at_least=True),
                     seen, "harder test")
    other = [p for i, s in enumerate(others) for p in _unique(
        n_test // len(others) + (i < n_test % len(others)), lambda: _draw(rng, s, other_lengths), seen,
        f"{s.name} test")]
    expert = [Demonstration(p.prompt, add.expert_response(p), p.answer)
              for p in _unique(n_expert, lambda: _draw(rng, add, train_digits), seen, "expert")]
    rl = _unique(n_rl, lambda: _draw(rng, add, train_digits), seen, "RL")
    return ToyTask(seed, rl, expert, {"in_domain": in_domain, "harder": harder, "other_skills": other})


def inner_carries(a: int, b: int) -> int:
    """Carries *between* the columns of a + b (a carry out of the top column, 500 + 600, is not one):
    a sum without them is written digit by digit, left to right, with no look-ahead."""
    top = 10 ** (max(len(str(a)), len(str(b))) - 1)
    return carries(a % top, b % top)


def _with_carries(rng: random.Random, lengths: tuple[int, int] | int, n: int, at_least: bool = False) -> Problem:
    """An addition with exactly (at_least: at least) `n` inner carries; an int `lengths`: that many digits."""
    for _ in range(10_000):
        problem = (SKILLS[TARGET_SKILL].generate(rng, lengths) if isinstance(lengths, int)
                   else _draw(rng, SKILLS[TARGET_SKILL], lengths))
        if (count := inner_carries(*(int(x) for x in problem.prompt.split()[1:]))) == n or (at_least and count > n):
            return problem
    raise ValueError(f"no addition with {lengths} digits has {n} inner carries")

