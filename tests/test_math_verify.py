r"""`reward = math-verify`: HF's math-verify on the answer minichord extracts (the last \boxed{}, `####` or
`answer:` line). Every row of the math reward's table through both rewards, then rows of their own (LaTeX
fractions, \boxed variants, units, thousands, percentages, signs, prose), each asserted at the value that is
mathematically right, or at what math-verify gives with a comment where that differs. Then the refusals: a
reference answer that does not parse (file:line, at load time; 0.0 at scoring time, never 1) and math-verify not
installed (one line); and the reward from a thread other than the main one (no signal alarms there)."""

import json
import random
import subprocess
import sys
import threading
from importlib.util import find_spec
from pathlib import Path

import pytest

from minichord.config import ConfigError, TrainConfig
from minichord.data import DataError, build_train_data, rewards
from minichord.tasks import Problem
from minichord.tasks.math import math_verify_parse, math_verify_reward, strict_reward
from test_math_reward import ROWS

REPO = Path(__file__).resolve().parents[1]
needs_math_verify = pytest.mark.skipif(find_spec("math_verify") is None,  # installed by the test extra
                                       reason='math-verify is not installed: pip install "minichord[math]"')

# where math-verify scores a row of test_math_reward.ROWS otherwise than minichord's strict reward (value: why)
MATH_VERIFY_ELSE = {
    "answer-with-unit-word": 1,  # "12 apples" is 12: math-verify drops the unit word, strict compares strings
    "mixed-number-not-a-number": 1,  # "2\frac{1}{2}" read as the mixed number 5/2 (the MATH convention)
    "template-injection": 1,  # "{{7*7}}" is LaTeX grouping of 7*7 = 49: equal in value, never run
    "expression-is-not-its-value": 1,  # "1+1" equals 2 in value; strict asks for the value itself
}


@needs_math_verify
@pytest.mark.parametrize("response, answer, strict", [row[1:4] for row in ROWS], ids=[row[0] for row in ROWS])
def test_the_math_reward_table_through_both_rewards(request, response, answer, strict):
    row_id = request.node.callspec.id
    assert strict_reward(response, answer) == float(strict)
    assert math_verify_reward(response, answer) == float(MATH_VERIFY_ELSE.get(row_id, strict))


# (id, response, reference answer, math-verify's reward)
MORE = [
    # LaTeX fractions and \boxed variants
    ("frac-vs-decimal", "\\boxed{\\frac{1}{2}}", "0.5", 1),
    ("decimal-vs-frac", "#### 0.5", "\\frac{1}{2}", 1),
    ("boxed-frac-short", "\\boxed{\\frac12}", "0.5", 1),
    ("dfrac-vs-decimal", "\\boxed{\\dfrac{3}{4}}", "0.75", 1),
    ("boxed-spaces", "\\boxed{ 42 }", "42", 1),
    ("boxed-double-braces", "\\boxed{{42}}", "42", 1),
    ("nested-braces-equal", "\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", 1),
    ("nested-braces-wrong", "\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{1}{2}", 0),
    ("empty-boxed", "\\boxed{}", "0", 0),
    # units and money
    ("unit-word", "answer: 5 cm", "5", 1),
    ("unit-text", "\\boxed{5\\text{ cm}}", "5", 1),
    ("unit-wrong-number", "answer: 6 cm", "5", 0),
    ("dollar", "#### $5", "5", 1),
    ("dollar-cents", "answer: \\$5.50", "5.5", 1),
    ("degrees", "\\boxed{45^\\circ}", "45", 1),
    # thousands separators
    ("thousands", "#### 1,000", "1000", 1),
    ("thousands-reference", "#### 1000", "1,000", 1),
    ("thousands-million", "#### 1,000,000", "1000000", 1),
    ("thousands-money", "answer: $1,234.50", "1234.5", 1),
    # percentages: math-verify accepts both readings of "25%", as 25 (GSM8K's) and as 0.25
    ("percent-vs-number", "answer: 25%", "25", 1),
    ("percent-latex", "\\boxed{25\\%}", "25", 1),
    ("percent-vs-fraction", "answer: 25%", "0.25", 1),
    ("number-vs-percent-reference", "answer: 25", "25\\%", 1),
    # signs
    ("negative", "#### -7", "-7", 1),
    ("negative-sign-lost", "#### 7", "-7", 0),
    ("negative-fraction", "\\boxed{-\\frac{1}{2}}", "-0.5", 1),
    ("unicode-minus", "\\boxed{\u22125}", "-5", 1),
    # answers in prose: the rest of the answer line is what is parsed
    ("prose-no-format", "She has 12 apples.", "12", 0),  # no \boxed, ####, answer: the format was not followed
    ("prose-equation", "answer: 3 + 4 = 7", "7", 1),  # the last side of a relation
    ("prose-two-answers", "answer: 3 or 4", "3", 0),
    ("prose-words", "answer: twelve", "12", 0),
    ("prose-after-answer-is", "The answer is 12 because 3 times 4 is 12.", "12", 0),  # right is 1: the line's
    ("prose-after-final-answer", "Final answer: she has 12 apples left.", "12", 0),  # prose parses as symbols
    # symbolic equality
    ("sqrt-equal", "\\boxed{2\\sqrt{2}}", "\\sqrt{8}", 1),
    ("pi", "\\boxed{2\\pi}", "2\\pi", 1),
    ("pi-approximated", "\\boxed{6.28}", "2\\pi", 0),
    ("power", "\\boxed{2^{10}}", "1024", 1),
    ("times-ten", "\\boxed{1 \\times 10^3}", "1000", 1),
    ("polynomial", "\\boxed{x^2 + 2x + 1}", "(x+1)^2", 1),
    ("assignment", "\\boxed{x = 5}", "5", 1),
    ("restated-question", "answer: 47+85", "132", 1),  # equal in value: a policy can restate the toy's question
    ("third-3-digits", "\\boxed{0.333}", "\\frac{1}{3}", 0),
    ("third-7-digits", "\\boxed{0.3333333}", "\\frac{1}{3}", 1),  # right is 0: math-verify rounds to 6 decimals
    ("big-off-by-one", "#### 123456789012345678901234567891", "123456789012345678901234567890", 0),
    # sets, intervals, tuples, choices
    ("interval", "\\boxed{(1, 2]}", "(1,2]", 1),
    ("interval-wrong-bracket", "\\boxed{[1, 2]}", "(1,2]", 0),
    ("set-order", "\\boxed{\\{1, 2\\}}", "\\{2, 1\\}", 1),
    ("tuple-order", "\\boxed{(2, 1)}", "(1, 2)", 0),
    ("choice", "\\boxed{B}", "B", 1),
    ("choice-text", "\\boxed{\\text{(B)}}", "B", 1),
    ("choice-wrong", "\\boxed{C}", "B", 0),
    # the reference
    ("reference-with-period", "#### 12", "12.", 1),
    ("reference-does-not-parse", "\\boxed{\u0661\u0662}", "\u0661\u0662", 0),  # never 1, even when equal as text
]


@needs_math_verify
@pytest.mark.parametrize("response, answer, expected", [row[1:] for row in MORE], ids=[row[0] for row in MORE])
def test_math_verify_reward(response, answer, expected):
    assert math_verify_reward(response, answer) == float(expected)


def test_the_table_is_large_and_ids_are_unique():
    assert len(MORE) >= 30 and len({row[0] for row in MORE}) == len(MORE)
    assert set(MATH_VERIFY_ELSE) <= {row[0] for row in ROWS}


@needs_math_verify
def test_a_reference_that_does_not_parse_scores_zero_never_one():
    assert math_verify_parse("\u0661\u0662") == [] and math_verify_parse("  ") == [] and math_verify_parse(None) == []
    for response in ("\\boxed{\u0661\u0662}", "#### \u0661\u0662", "#### 12", ""):
        assert math_verify_reward(response, "\u0661\u0662") == 0.0


@needs_math_verify
def test_any_exception_on_a_prediction_scores_zero(monkeypatch):
    import math_verify

    monkeypatch.setattr(math_verify, "verify", lambda *a, **k: 1 / 0)
    assert math_verify_reward("#### 5", "5") == 0.0
    monkeypatch.setattr(math_verify, "parse", lambda *a, **k: [][1])
    assert math_verify_reward("#### 5", "5") == 0.0


@needs_math_verify
def test_random_text_never_raises():
    rng = random.Random(7)
    pieces = ["\\boxed{", "}", "{", "####", "\n", "answer:", "\\frac{", "\\sqrt", "^", "_", "\\left(", "\\right",
              "\\begin{pmatrix}", "&", "\\\\", "=", "<", "\u0661", "\ud800", "\x00", "1", "x", " ", "%", "$", "."]
    for _ in range(200):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(24)))
        assert math_verify_reward(text, rng.choice(["1", "\\frac{1}{2}", "x"])) in (0.0, 1.0)
    assert math_verify_reward("#### " + "9" * 3000, "9" * 3000) == 0.0  # over 2000 characters: never parsed
    assert math_verify_reward(None, "5") == math_verify_reward("#### 5", None) == 0.0


@needs_math_verify
def test_the_reward_from_a_thread_that_is_not_the_main_one():
    """math-verify's timeouts are signal alarms, which raise outside the main thread: there they are off."""
    results = []
    worker = threading.Thread(target=lambda: results.extend(
        [math_verify_reward("\\boxed{\\frac12}", "0.5"), math_verify_reward("#### 3", "0.5")]))
    worker.start()
    worker.join(timeout=60)
    assert results == [1.0, 0.0]


@needs_math_verify
def test_the_choice_resolves_to_the_reward_and_checks_every_reference():
    assert rewards("math-verify", chat_model=True) == (math_verify_reward, None)
    cfg = TrainConfig(reward="math-verify", n_rl_prompts=8, n_expert=4, n_test=4)
    assert build_train_data(cfg).reward is math_verify_reward  # the toy's answers all parse
    problems = [Problem("p", "42", "t", "a.jsonl:1"), Problem("q", "\u0661\u0662", "t", "a.jsonl:2")]
    with pytest.raises(DataError, match=r"a.jsonl:2: answer '\u0661\u0662'"):
        rewards("math-verify", chat_model=False, problems=problems)


def _cli(*args, blocker: str = "") -> subprocess.CompletedProcess:
    code = f"import sys\n{blocker}\nfrom minichord.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def _files(tmp_path, answers) -> list[str]:
    prompts, experts = tmp_path / "prompts.jsonl", tmp_path / "experts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}", "answer": a}) + "\n" for i, a in enumerate(answers)))
    experts.write_text(json.dumps({"prompt": "q0", "response": "answer: 42"}) + "\n")
    return ["--prompts", str(prompts), "--experts", str(experts), "--out", str(tmp_path / "run")]


@needs_math_verify
def test_train_refuses_a_reference_that_does_not_parse_naming_file_line(tmp_path):
    files = _files(tmp_path, ["42", "\\frac{1}{2}", "\u0661\u0662"])
    run = _cli("train", "--method", "chord-phi", "--set", "reward=math-verify", *files)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert f"{tmp_path / 'prompts.jsonl'}:3: answer '\u0661\u0662'" in run.stderr and "math-verify" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "run").exists()


@needs_math_verify
def test_eval_with_math_verify_and_its_refusal(tiny_ckpt, tmp_path, capsys):
    from minichord.cli import main

    prompts = tmp_path / "p.jsonl"
    args = ["eval", str(tiny_ckpt), "--prompts", str(prompts), "--max-new-tokens", "4", "--reward", "math-verify"]
    prompts.write_text(json.dumps({"prompt": "add 1 2", "answer": "3"}) + "\n")
    assert main(args) == 0 and "accuracy" in capsys.readouterr().out
    prompts.write_text("".join(json.dumps({"prompt": "add 1 2", "answer": a}) + "\n" for a in ("3", "\\text{}")))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{prompts}:2: answer '\\\\text{{}}': no number or expression" in err, err


def test_without_math_verify_one_line_and_nothing_trained(tmp_path):
    blocker = "sys.modules['math_verify'] = None  # the import fails as when it is not installed"
    files = _files(tmp_path, ["42"])
    run = _cli("train", "--method", "grpo", "--set", "reward=math-verify", *files, blocker=blocker)
    assert run.returncode == 2 and not (tmp_path / "run").exists()
    assert run.stderr.strip() == ('minichord train: error: math-verify is not installed: '
                                  'pip install "minichord[math]" (or math-verify)')


def test_without_math_verify_the_reward_refuses_rather_than_scoring(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(ConfigError, match=r'pip install "minichord\[math\]"'):
        math_verify_reward("#### 5", "5")
