"""The math reward: one hand-written row per rule (its strict and lenient score), then the guards:
linear time on 1 MB of hostile text, never an exception on random text."""

import random
import time

import pytest

from minichord.tasks.math import extract_final, lenient_reward, normalise, strict_reward

# (id, response, reference answer, strict, lenient)
ROWS = [
    # GSM8K style
    ("gsm8k", "48/2 = 24 clips in May.\n48+24 = 72\n#### 72", "72", 1, 1),
    ("gsm8k-no-space", "so 70 + 2\n####72", "72", 1, 1),
    ("gsm8k-wrong", "#### 71", "72", 0, 0),
    ("gsm8k-indented", "work\n   #### 72  \n", "72", 1, 1),
    ("gsm8k-not-line-start", "I think x #### 72", "72", 0, 1),
    ("gsm8k-last-line-wins", "#### 12\nno wait\n#### 13", "13", 1, 1),
    ("gsm8k-empty-marker", "#### \n", "72", 0, 0),
    ("gsm8k-thousands", "#### 1,234", "1234", 1, 1),
    ("gsm8k-ref-thousands", "#### 1234", "1,234", 1, 1),
    ("gsm8k-trailing-zero", "#### 1234.0", "1234", 1, 1),
    ("gsm8k-two-zeros", "#### 18.00", "18", 1, 1),
    ("gsm8k-dollar", "#### $5", "5", 1, 1),
    ("gsm8k-escaped-dollar", "#### \\$5.00", "5", 1, 1),
    ("gsm8k-percent", "#### 5%", "5", 1, 1),
    ("gsm8k-plus", "#### +5", "5", 1, 1),
    ("gsm8k-negative", "#### -5", "-5", 1, 1),
    ("gsm8k-negative-vs-positive", "#### -5", "5", 0, 0),
    ("minus-zero", "#### -0", "0", 1, 1),
    ("leading-zero", "#### 007", "7", 1, 1),
    ("trailing-period", "#### 12.", "12", 1, 1),
    ("unicode-minus", "#### \u22125", "-5", 1, 1),
    # answer lines
    ("answer-colon", "7 * 6 = 42\nanswer: 42", "42", 1, 1),
    ("answer-upper", "ANSWER: 42", "42", 1, 1),
    ("final-answer-bold", "**Final Answer:** 42", "42", 1, 1),
    ("the-answer-is", "So the answer is 42.", "42", 1, 1),
    ("the-answer-is-colon", "The final answer is: $42$", "42", 1, 1),
    ("answer-with-unit-word", "answer: 12 apples", "12", 0, 1),
    ("answer-unit-then-other-number", "answer: 12 apples (3 bags of 4)", "12", 0, 0),
    ("answer-on-next-line", "The answer is:\n42", "42", 0, 1),
    ("answer-isnt", "The answer isn't 41, it is 42", "42", 0, 1),
    ("answer-then-hash-wins", "answer: 41\n#### 42", "42", 1, 1),
    # MATH style
    ("boxed", "Thus $x = \\boxed{5}$.", "5", 1, 1),
    ("boxed-frac", "so $\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}", 1, 1),
    ("boxed-dfrac-vs-slash", "$\\boxed{\\dfrac{1}{2}}$", "1/2", 1, 1),
    ("boxed-dfrac-short", "$\\boxed{\\dfrac34}$", "\\frac{3}{4}", 1, 1),
    ("decimal-equals-fraction", "\\boxed{0.75}", "3/4", 1, 1),
    ("inexact-decimal", "\\boxed{0.33}", "\\frac{1}{3}", 0, 0),
    ("reducible-fraction", "\\boxed{6/3}", "2", 1, 1),
    ("negative-fraction", "\\boxed{-\\frac{3}{4}}", "\\frac{-3}{4}", 1, 1),
    ("several-boxed-last-wins", "\\boxed{3} is wrong, it is \\boxed{4}", "4", 1, 1),
    ("several-boxed-first-is-ref", "\\boxed{3} is wrong, it is \\boxed{4}", "3", 0, 0),
    ("boxed-beats-answer-line", "\\boxed{4}\nanswer: 3", "4", 1, 1),
    ("nested-braces", "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\dfrac{\\sqrt{3}}{2}", 1, 1),
    ("sqrt", "\\boxed{\\sqrt{2}}", "\\sqrt{2}", 1, 1),
    ("tuple-left-right", "$\\boxed{\\left( 1, -2 \\right)}$", "(1,-2)", 1, 1),
    ("text-answer", "\\boxed{\\text{Evelyn}}", "\\text{Evelyn}", 1, 1),
    ("text-unit-dropped", "\\boxed{10\\text{ inches}}", "10", 1, 1),
    ("degrees", "\\boxed{90^\\circ}", "90", 1, 1),
    ("thin-space-thousands", "\\boxed{10,\\!000}", "10000", 1, 1),
    ("boxed-space-token", "so \\boxed 7$", "7", 1, 1),
    ("boxed-unclosed", "\\boxed{5", "5", 0, 1),
    ("boxed-empty-then-hash", "\\boxed{}\n#### 5", "5", 1, 1),
    ("fbox", "\\fbox{12}", "12", 1, 1),
    ("mixed-number-not-a-number", "\\boxed{2\\frac{1}{2}}", "5/2", 0, 0),
    # the last number (lenient only)
    ("bare-number", "42", "42", 0, 1),
    ("number-in-the-middle", "I get 42 and then I stop.", "42", 0, 1),
    ("number-only-in-middle-not-last", "42 is wrong, 43 is right", "42", 0, 0),
    ("last-number-thousands", "It costs $1,234.", "1234", 0, 1),
    ("last-number-fraction", "so it is 3/4.", "0.75", 0, 1),
    ("last-number-negative", "x = -5", "-5", 0, 1),
    ("last-number-subtraction", "10-4", "4", 0, 1),
    ("no-number", "I do not know.", "4", 0, 0),
    ("empty", "", "4", 0, 0),
    ("only-whitespace", " \n\t ", "4", 0, 0),
    ("huge-number", "#### " + "9" * 500, "9" * 500, 1, 1),
    ("huge-number-off-by-one", "#### " + "9" * 499 + "8", "9" * 500, 0, 0),
    ("unicode-digits-are-not-numbers", "#### \u0661\u0662", "12", 0, 0),
    ("unicode-digits-lenient", "\u0661\u0662", "12", 0, 0),
    # adversarial text is only ever read, never run
    ("python-injection", "answer: __import__('os').system('echo hi')", "0", 0, 0),
    ("template-injection", "#### {{7*7}}", "49", 0, 0),
    ("eval-call", "eval(1+1)", "2", 0, 0),
    ("expression-is-not-its-value", "#### 1+1", "2", 0, 0),
    ("scientific-is-a-string", "#### 1e3", "1000", 0, 0),
    ("reference-empty", "#### 5", "  ", 0, 0),
]


@pytest.mark.parametrize("response, answer, strict, lenient", [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_reward_table(response, answer, strict, lenient):
    assert strict_reward(response, answer) == float(strict)
    assert lenient_reward(response, answer) == float(lenient)
    assert lenient >= strict  # lenient never scores below strict


def test_table_is_large_and_ids_are_unique():
    assert len(ROWS) >= 40 and len({row[0] for row in ROWS}) == len(ROWS)


def test_extract_final_formats():
    assert extract_final("\\boxed{a{b}c} then #### 3") == ("a{b}c", True)
    assert extract_final("x\n#### 12\n") == ("12", True)
    assert extract_final("Final Answer: 7 cats") == ("7 cats", True)
    assert extract_final("we get 3, then 4.") == ("4", False)
    assert extract_final("no number") == (None, False)
    assert extract_final(None) == (None, False)


@pytest.mark.parametrize("text, canonical", [
    ("1,234", "1234"), ("1234.00", "1234"), ("+5", "5"), ("$5", "5"), ("\\$5", "5"), ("5\\%", "5"),
    ("0.5", "1/2"), ("\\tfrac{6}{4}", "3/2"), ("-0", "0"), ("1,23", "1,23"), ("3/0", "3/0"),
    ("\\sqrt{2}", "\\sqrt{2}"), ("x + 1", "x+1"), ("1 2", "1 2"), ("(1, 2)", "(1,2)"), ("\\text{(A)}", "(A)"),
])
def test_normalise(text, canonical):
    assert normalise(text) == canonical


@pytest.mark.parametrize("bad", [None, 5, 5.0, b"5", ["5"]])
def test_non_strings_score_zero(bad):
    assert strict_reward(bad, "5") == lenient_reward(bad, "5") == 0.0
    assert strict_reward("#### 5", bad) == lenient_reward("#### 5", bad) == 0.0
    assert normalise(bad) == ""


N = 1_000_000
HOSTILE = {  # 1 MB each, built in the test (not at collection)
    "digits and braces": lambda: "".join(random.Random(0).choices("0123456789{}", k=N)),
    "unclosed boxed": lambda: "\\boxed{" + "{" * N,
    "many boxed": lambda: "\\boxed{1}" * (N // 9),
    "thousands groups": lambda: "1," * (N // 2),
    "one long number": lambda: "7" * N,
    "markers on one line": lambda: "#### " * (N // 5),
    "empty marker lines": lambda: "####\n" * (N // 5),
    "answer colons": lambda: ": " * (N // 2),
    "answer is": lambda: "The answer is " * (N // 14),
    "signs": lambda: "-" * N,
    "units": lambda: "\\text{ a" * (N // 8),
    "non-ascii": lambda: "\u0130\u0661\u00e9" * (N // 3),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_one_megabyte_never_hangs(name):
    """A hang guard, not a timing: every search runs on the reversed text from the end, with a literal in
    front, so 1 MB takes ~20 ms (benchmark-free estimate); a quadratic search would take minutes, so the
    generous 1 s bound still fails on catastrophic backtracking while shared cores never trip it."""
    text = HOSTILE[name]()
    for reward in (strict_reward, lenient_reward):
        best = min(_cpu_seconds(reward, text) for _ in range(3))  # CPU time: other processes share the cores
        assert best < 1.0, f"{reward.__name__} on 1 MB of {name}: {best * 1000:.0f} ms"


FILLER = "We had 4 apples, so answer: 4? No.\n" * (N // 36)  # ~1 MB of earlier, wrong answers


@pytest.mark.parametrize("ending, strict", [("\\boxed{5}", 1), ("#### 5", 1), ("The answer is 5.", 1), ("so 5", 0)])
def test_the_last_answer_after_a_megabyte_is_found(ending, strict):
    assert strict_reward(FILLER + ending, "5") == strict and lenient_reward(FILLER + ending, "5") == 1.0
    assert strict_reward(FILLER + ending, "4") == 0.0


def _cpu_seconds(reward, text):
    t0 = time.process_time()
    assert reward(text, "1") in (0.0, 1.0)
    return time.process_time() - t0


def test_random_text_never_raises():
    rng = random.Random(1234)
    pieces = ["\\boxed{", "\\boxed ", "}", "{", "####", "\n", "answer:", "The answer is", "-", ",", ".", "/",
              "$", "\\frac{", "\\text{ ", "\\left(", "\u0661", "\ud800", "\x00", "1", "0", " "]
    for _ in range(2000):
        if rng.random() < 0.5:
            text = rng.randbytes(rng.randrange(64)).decode("utf-8", errors=rng.choice(["replace", "ignore", "surrogateescape"]))
        else:
            text = "".join(rng.choice(pieces) for _ in range(rng.randrange(20)))
        answer = rng.choice(["1", "0", "-1/2", "\\frac{1}{2}", text[:8] or "x"])
        for reward in (strict_reward, lenient_reward):
            assert reward(text, answer) in (0.0, 1.0)
        extract_final(text)
        normalise(text)
