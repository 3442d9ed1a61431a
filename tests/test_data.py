"""JSONL datasets: every malformed line is reported as file:line, nothing half-loaded."""

import json

import pytest

from minichord.data import DataError, load_experts, load_prompts, write_jsonl
from minichord.tasks import Demonstration, Problem, make_splits


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD_PROMPT = json.dumps({"prompt": "add 1 2", "answer": "3"})
GOOD_EXPERT = json.dumps({"prompt": "add 1 2", "response": "1+2=3 carry 0\nanswer: 3"})


def test_round_trip_prompts_and_experts(tmp_path):
    problems = [Problem("add 47 85", "132", "add"), Problem("sort 3 1", "1 3", "sort")]
    demos = [Demonstration("add 47 85", "7+5=12 carry 1\n4+8+1=13 carry 1\nanswer: 132", "132"),
             Demonstration("copy a", "a")]
    assert load_prompts(write_jsonl(tmp_path / "p.jsonl", problems)) == problems
    assert load_experts(write_jsonl(tmp_path / "e.jsonl", demos)) == demos
    assert load_prompts(write_jsonl(tmp_path / "d.jsonl", [{"prompt": "x", "answer": "y"}])) == [Problem("x", "y")]


def test_chat_messages_form(tmp_path):
    line = json.dumps({"messages": [{"role": "user", "content": "add 1 2"},
                                    {"role": "assistant", "content": "3"}], "answer": "3"})
    path = _write(tmp_path / "chat.jsonl", [line, "", GOOD_EXPERT])  # blank lines are skipped
    assert load_experts(path) == [Demonstration("add 1 2", "3", "3"),
                                  Demonstration("add 1 2", "1+2=3 carry 0\nanswer: 3")]


@pytest.mark.parametrize("bad_line, message", [
    ('{"prompt": "add 1 2", "answer": ', "invalid JSON"),
    ('["add 1 2", "3"]', "expected a JSON object"),
    ('{"prompt": "add 1 2"}', "missing key 'answer'"),
    ('{"prompt": "add 1 2", "answer": 3}', "'answer' must be a string"),
    ('{"prompt": "", "answer": "3"}', "'prompt' is empty"),
    ('{"prompt": "   ", "answer": "3"}', "'prompt' is empty"),
    ('{"prompt": "add 1 2", "answer": "3", "anwser": "3"}', "unknown key"),
    ('{"prompt": null, "answer": "3"}', "'prompt' must be a string"),
])
def test_malformed_prompt_lines_name_file_and_line(tmp_path, bad_line, message):
    path = _write(tmp_path / "prompts.jsonl", [GOOD_PROMPT, GOOD_PROMPT, bad_line, GOOD_PROMPT])
    with pytest.raises(DataError, match=message) as info:
        load_prompts(path)
    assert f"{path}:3:" in str(info.value)
    assert info.value.errors[0][0] == 3


@pytest.mark.parametrize("record, message", [
    ({"prompt": "add 1 2"}, "missing key 'response'"),
    ({"response": "3"}, "missing key 'prompt'"),
    ({"question": "add 1 2", "solution": "3"}, "unknown key"),
    ({"prompt": "add 1 2", "response": ""}, "'response' is empty"),
    ({"messages": [{"role": "assistant", "content": "3"}, {"role": "user", "content": "add 1 2"}]},
     "must have role 'user'"),
    ({"messages": [{"role": "user", "content": "add 1 2"}]}, "exactly two messages"),
    ({"messages": [{"role": "user", "content": "add 1 2"}, {"role": "assistant", "content": ""}]},
     r"messages\[1\]: 'content' is empty"),
    ({"messages": [{"role": "user", "content": "x"}, "3"]}, "must be an object"),
    ({"messages": "add 1 2"}, "list of exactly two"),
])
def test_malformed_expert_lines_name_file_and_line(tmp_path, record, message):
    path = _write(tmp_path / "expert.jsonl", [GOOD_EXPERT, json.dumps(record)])
    with pytest.raises(DataError, match=message) as info:
        load_experts(path)
    assert f"{path}:2:" in str(info.value)


def test_all_bad_lines_reported_and_nothing_returned(tmp_path):
    path = _write(tmp_path / "p.jsonl", ["{oops", GOOD_PROMPT, '{"prompt": "a"}', GOOD_PROMPT, "7"])
    with pytest.raises(DataError) as info:
        load_prompts(path)
    assert [n for n, _ in info.value.errors] == [1, 3, 5]
    assert "3 invalid line(s)" in str(info.value) and "nothing was loaded" in str(info.value)


def test_invalid_utf8_is_reported(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(GOOD_PROMPT.encode() + b"\n" + b'{"prompt": "\xff", "answer": "1"}\n')
    with pytest.raises(DataError, match=r"p\.jsonl:2: not valid UTF-8"):
        load_prompts(path)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match="empty"):
        load_prompts(path)
    with pytest.raises(DataError, match="empty"):
        load_experts(path)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "nope.jsonl")


def test_write_is_atomic_on_failure(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "answer": "b"}])
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_jsonl(path, [{"prompt": "c", "answer": "d"}, object()])  # fails after one row
    assert path.read_bytes() == before  # the old file survives intact
    assert [p.name for p in tmp_path.iterdir()] == ["p.jsonl"]  # no temp file left behind


def test_toy_splits_round_trip_through_jsonl(tmp_path):
    task = make_splits(0, n_rl=20, n_expert=10, n_test=9)
    assert load_prompts(write_jsonl(tmp_path / "rl.jsonl", task.rl)) == task.rl
    assert load_experts(write_jsonl(tmp_path / "expert.jsonl", task.expert)) == task.expert
    for name, problems in task.tests.items():
        assert load_prompts(write_jsonl(tmp_path / f"test_{name}.jsonl", problems)) == problems


def test_deep_nesting_and_surrogates_are_line_errors(tmp_path):
    path = _write(tmp_path / "p.jsonl", [GOOD_PROMPT, "[" * 100_000 + "]" * 100_000,
                                         '{"prompt": "add \\ud800", "answer": "1"}'])
    with pytest.raises(DataError) as info:
        load_prompts(path)
    assert f"{path}:2: invalid JSON: nested too deeply" in str(info.value)
    assert f"{path}:3: 'utf-8' codec can't encode character '\\ud800'" in str(info.value)
    assert "\n" not in str(info.value)


def test_many_errors_are_one_line_listing_the_first_few(tmp_path):
    path = _write(tmp_path / "p.jsonl", ["{"] * 30)
    with pytest.raises(DataError) as info:
        load_prompts(path)
    assert "30 invalid line(s)" in str(info.value) and "... and 25 more" in str(info.value)
    assert "\n" not in str(info.value) and len(info.value.errors) == 30


def test_check_lengths_names_file_and_line(tmp_path):
    import random

    from minichord.data import check_lengths
    from minichord.tasks import style_texts
    from minichord.tokenizer import Tokenizer

    tok = Tokenizer.train(style_texts(random.Random(0), 50), vocab_size=160)
    prompts = load_prompts(_write(tmp_path / "p.jsonl", [GOOD_PROMPT, json.dumps({"prompt": "copy " + "1" * 50, "answer": "1"})]))
    assert prompts[1].where == f"{tmp_path / 'p.jsonl'}:2"
    n = len(tok.encode_prompt(prompts[1].prompt))
    check_lengths(prompts, tok, max_seq_len=n + 4, max_new_tokens=4)
    with pytest.raises(DataError, match=rf"p\.jsonl:2: prompt of {n} tokens \+ max_new_tokens=5 > max_seq_len={n + 4}"):
        check_lengths(prompts, tok, max_seq_len=n + 4, max_new_tokens=5)
    experts = load_experts(_write(tmp_path / "e.jsonl", [GOOD_EXPERT, json.dumps({"prompt": "a", "response": "1" * 70})]))
    with pytest.raises(DataError, match=r"e\.jsonl:2: prompt \+ response is 75 tokens > the model's max_seq_len=64"):
        check_lengths(experts, tok, max_seq_len=64)
    with pytest.raises(DataError, match="Problem 0: text contains characters"):
        check_lengths([Problem("add é", "1")], tok, max_seq_len=64)
    assert write_jsonl(tmp_path / "again.jsonl", prompts).read_text().count("where") == 0


# ---- GSM8K, MATH and chat rows --------------------------------------------------------------

GSM8K_ROW = {"question": "Ann has 3 bags of 14 marbles and gives away 2. How many are left?",
             "answer": "She has 3*14 = <<3*14=42>>42 marbles.\nShe keeps 42-2 = <<42-2=40>>40.\n#### 40"}
MATH_ROW = {"problem": "What is $\\frac{3}{6}$ in lowest terms?", "level": "Level 1", "type": "Prealgebra",
            "solution": "Divide by $3$: $\\frac{3}{6} = \\boxed{\\frac{1}{2}}$."}


def test_gsm8k_math_and_chat_prompt_rows(tmp_path):
    from minichord.tasks.math import strict_reward

    rows = [GSM8K_ROW, MATH_ROW, {**MATH_ROW, "answer": "0.5", "level": 2, "unique_id": "test/1.json"},
            {k: v for k, v in MATH_ROW.items() if k != "type"},
            {"problem": "Give $f(2)$.", "solution": "So $f(2) = \\boxed{\\left( 1, \\frac{2}{3} \\right)}$.",
             "subject": "Algebra"},
            {"messages": [{"role": "user", "content": "add 1 2"}], "answer": "3"},
            {"messages": [{"role": "user", "content": "add 1 2"}, {"role": "assistant", "content": "4"}],
             "answer": "3", "skill": "add"},
            {"prompt": "add 1 2", "answer": "3"}]
    problems = load_prompts(write_jsonl(tmp_path / "p.jsonl", rows))
    assert problems == [Problem(GSM8K_ROW["question"], "40", "gsm8k"),
                        Problem(MATH_ROW["problem"], "\\frac{1}{2}", "Prealgebra"),
                        Problem(MATH_ROW["problem"], "0.5", "Prealgebra"),  # the "answer" field wins
                        Problem(MATH_ROW["problem"], "\\frac{1}{2}", "math"),
                        Problem("Give $f(2)$.", "\\left( 1, \\frac{2}{3} \\right)", "Algebra"),
                        Problem("add 1 2", "3"), Problem("add 1 2", "3", "add"), Problem("add 1 2", "3")]
    assert [p.where for p in problems] == [f"{tmp_path / 'p.jsonl'}:{i}" for i in range(1, 9)]
    assert strict_reward("#### 40", problems[0].answer) == strict_reward("$\\boxed{0.5}$", problems[1].answer) == 1.0


def test_gsm8k_and_math_expert_rows(tmp_path):
    from minichord.tasks.math import strict_reward

    demos = load_experts(write_jsonl(tmp_path / "e.jsonl", [GSM8K_ROW, MATH_ROW, {**GSM8K_ROW, "answer": "4\n####  1,234 "}]))
    assert demos == [Demonstration(GSM8K_ROW["question"], "She has 3*14 = 42 marbles.\nShe keeps 42-2 = 40.\n#### 40", "40"),
                     Demonstration(MATH_ROW["problem"], MATH_ROW["solution"], "\\frac{1}{2}"),
                     Demonstration(GSM8K_ROW["question"], "4\n####  1,234 ", "1,234")]
    assert all(strict_reward(d.response, d.answer) == 1.0 for d in demos)  # a demonstration earns its own reward


@pytest.mark.parametrize("record, message", [
    ({**GSM8K_ROW, "answer": "3*14 = 42, minus 2 is 40"}, r"'answer' has no final '#### N' line \(GSM8K format\)"),
    ({**GSM8K_ROW, "answer": "40\n####   \n"}, r"'answer' has no final '#### N' line"),
    ({**GSM8K_ROW, "answer": 40}, "'answer' must be a string"),
    ({"question": "How many?"}, "missing key 'answer'"),
    ({**GSM8K_ROW, "question": " "}, "'question' is empty"),
    ({**GSM8K_ROW, "solution": "40"}, r"unknown key\(s\) \['solution'\]; allowed in a GSM8K row"),
    ({**MATH_ROW, "solution": "It is $\\frac{1}{2}$."}, r"'solution' has no \\boxed\{...\} answer and the row has no 'answer'"),
    ({**MATH_ROW, "solution": "It is \\boxed{\\frac{1}{2}."}, r"'solution' has no \\boxed"),  # unclosed
    ({**MATH_ROW, "answer": ""}, "'answer' is empty"),
    ({**MATH_ROW, "level": [5]}, "'level' must be a string or an integer, got list"),
    ({**MATH_ROW, "type": None}, "'type' must be a string or an integer, got NoneType"),
    ({**MATH_ROW, "source": "web"}, r"unknown key\(s\) \['source'\]; allowed in a MATH row"),
    ({"problem": "What is 1+1?"}, "missing key 'solution'"),
    ({**MATH_ROW, "question": "x"}, r"keys of two formats: 'question' \(GSM8K\) and 'problem' \(MATH\)"),
    ({"prompt": "add 1 2", "answer": "3", "response": "3", "question": "x"}, r"keys of two formats: 'prompt' \(plain\)"),
    ({"messages": [], "problem": "x", "solution": "\\boxed{1}"}, "keys of two formats"),
])
@pytest.mark.parametrize("load", [load_prompts, load_experts])
def test_bad_math_rows_name_file_line_and_field(tmp_path, load, record, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [GSM8K_ROW, record, MATH_ROW])
    with pytest.raises(DataError, match=message) as info:
        load(path)
    assert f"{path}:2: " in str(info.value) and "\n" not in str(info.value)
    assert [n for n, _ in info.value.errors] == [2]  # only the bad row; nothing was loaded


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "user", "content": "add 1 2"}]}, "missing key 'answer'"),
    ({"messages": [], "answer": "3"}, "'messages' must be a list of a user message, then optionally"),
    ({"messages": [{"role": "user", "content": "a"}] * 3, "answer": "3"}, "'messages' must be a list of a user message"),
    ({"messages": [{"role": "assistant", "content": "3"}], "answer": "3"}, r"messages\[0\] must have role 'user'"),
    ({"messages": [{"role": "user", "content": "add 1 2"}], "answer": "3", "response": "3"},
     r"unknown key\(s\) \['response'\]; allowed in a chat row"),
])
def test_bad_chat_prompt_rows(tmp_path, record, message):
    path = write_jsonl(tmp_path / "p.jsonl", [GOOD_PROMPT_ROW, record])
    with pytest.raises(DataError, match=message) as info:
        load_prompts(path)
    assert f"{path}:2: " in str(info.value) and "\n" not in str(info.value)


GOOD_PROMPT_ROW = {"prompt": "add 1 2", "answer": "3"}
