"""The CPU-scale toy task: the CHORD paper's setting in miniature.

    paper                                   toy
    instruct model, its own answer style    base model pre-trained here, terse answers
    target skill (competition math)         3-digit addition              "add 347 285" -> "632"
    general capabilities (retention)        reverse / sort / copy         "sort 5292" -> "2259"
    expert data (long CoT, other style)     step-by-step column sums, lowest column first:
                                            "7+5=12 carry 1\n4+8+1=13 carry 1\n3+2+1=6 carry 0\nanswer: 632"
    partial skill of the instruct model     what the base saw (`pretrain_corpus`, below)
    limited expert set, disjoint RL set     `make_splits`: n_expert demos, n_rl prompts, disjoint
    held-out tests                          in_domain (3 digits), harder (2 inner carries), other_skills

"Harder" is a longer carry chain, not more digits (which a model this small does not generalise to): 3-digit
sums whose units *and* tens columns both carry, never seen terse. A fixed quarter of all prompts (CRC32 of the
text) is *reserved*: `make_splits` draws only those, `pretrain_corpus` never, so no split is pre-trained on.

The base model's pre-training corpus: what the toy's "instruct model" has seen.

    terse answers       every skill, "add 47 85" -> "132"; 3-digit sums only with 0 (70 %) or 1 inner carry
    sentences           "add 764 315" -> "the sum is 1079" for first operands >= 600, 4 times in 5: right digits
                        in a format the exact-match reward rejects (`in_a_sentence`)
    clean column work   the expert's format on 1-2 digit sums (`expert_response`)
    sloppy column work  the expert's format on 3-digit sums as a model half-knowing the procedure writes it
                        (`Sloppy`): carry notes and newlines often dropped, 60 % of digits wrong, the answer true

The last row makes the expert set *partly* on-policy (the probe's criterion 5): the base knows the expert's format
and answer but not every column digit, so the median expert token's probability under the base is near 0.3-0.4,
not 0.999 (clean 3-digit column work) or ~0.001 (a format never seen). Prompts are never `is_reserved`."""

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
