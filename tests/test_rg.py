"""reasoning-gym rows (`minichord data rg:TASK`): options passed through, held-out prompts, worked traces that the
task's own scorer accepts, a reward that never raises on a completion, and one-line refusals."""

import json
import subprocess
import sys

import pytest

from minichord.cli import main
from minichord.data import load_experts, load_prompts
from minichord.tasks import Problem
from minichord.tasks.rg import TRACES, TaskError, expert_response, extract, make_entries, reward_of, score, scorer

pytest.importorskip("reasoning_gym")

SMALL = {"chain_sum": {"min_terms": 2, "max_terms": 4, "max_digits": 3}, "products": {"min_terms": 2, "max_terms": 3},
         "leg_counting": {"max_animals": 4}, "gsm_symbolic": {}}


def _problem(task: str, entry: dict) -> Problem:
    return Problem(entry["question"], str(entry["answer"]), f"rg:{task}", metadata=entry["metadata"])


@pytest.mark.parametrize("task", sorted(TRACES))
def test_traces_are_worked_and_scored_correct_by_the_task_itself(task):
    entries = make_entries(f"rg:{task}", 40, 3, SMALL[task])
    for entry in entries:
        trace = expert_response(f"rg:{task}", entry)
        assert len(trace.splitlines()) >= 3 and trace.splitlines()[-1] == f"answer: {entry['answer']}"
        assert score(trace, _problem(task, entry)) == 1.0  # reasoning-gym's own score_answer agrees
        assert scorer(task)(extract(trace, str(entry["answer"])), entry) == 1.0


ODD = [None, "", "   ", "\x00", "answer:", "answer: ", "answer: 1e999", "9" * 5000, "answer: -", "nan", "∞ answer: ½",
       "answer: [1, 2", "{" * 500, "answer: 3\nanswer: 4", "The answer is 12."]


@pytest.mark.parametrize("task", sorted(TRACES))
def test_odd_completions_score_in_range_and_never_raise(task):
    problem = _problem(task, make_entries(f"rg:{task}", 1, 0, SMALL[task])[0])
    for text in ODD:
        value = score(text if text is not None else "", problem)
        assert 0.0 <= value <= 1.0


def test_extract_reads_the_last_answer_line_else_the_last_number():
    assert extract("3 + 4 = 7\nanswer: 7", "7") == "7"
    assert extract("answer: 1\nanswer: 2", "2") == "2"  # the last one wins
    assert extract("The first is 3, the answer is 12.", "12") == "12"  # gsm_symbolic's scorer would read 3
    assert extract("no digits here", "12") is None
    assert extract("line one\nBob", "Bob") == "Bob"  # a non-numeric reference: the last line


def test_gsm_symbolic_scorer_reads_the_first_number_so_minichord_extracts_first():
    entry = make_entries("rg:gsm_symbolic", 1, 0, {})[0]
    text = f"It costs 3 per day, so the total is {entry['answer']}."
    assert scorer("gsm_symbolic")(text, entry) < 1.0  # the raw scorer reads "3"
    assert score(text, _problem("gsm_symbolic", entry)) == 1.0


def test_reward_of_dispatches_rg_rows_and_leaves_others_to_the_reward():
    entry = make_entries("rg:chain_sum", 1, 0, {})[0]
    rg_row, plain = _problem("chain_sum", entry), Problem("add 1 2", "3")
    assert reward_of(lambda r, a: 0.5, f"answer: {entry['answer']}", rg_row) == 1.0
    assert reward_of(lambda r, a: 0.5 if a == "3" else 0.0, "x", plain) == 0.5


def test_options_pass_through_and_exclude_holds_out_prompts(tmp_path):
    test, train = tmp_path / "test.jsonl", tmp_path / "train.jsonl"
    opts = ["--option", "min_terms=2", "--option", "max_terms=2", "--option", "max_digits=1"]
    assert main(["data", "rg:chain_sum", "--size", "30", "--seed", "5", *opts, "--out", str(test)]) == 0
    assert main(["data", "rg:chain_sum", "--size", "60", "--seed", "0", *opts, "--exclude", str(test),
                 "--out", str(train), "--experts", str(tmp_path / "experts.jsonl")]) == 0
    held, rows = load_prompts(test), load_prompts(train)
    assert len(rows) == 60 and {p.skill for p in rows} == {"rg:chain_sum"}
    assert all(p.metadata["num_terms"] == 2 and p.metadata["num_digits"] == 1 for p in rows)
    assert not {p.prompt for p in held} & {p.prompt for p in rows}
    demos = load_experts(tmp_path / "experts.jsonl")
    assert [d.prompt for d in demos] == [p.prompt for p in rows] and all(d.response.endswith(d.answer) for d in demos)


def test_held_out_templates_are_disjoint(tmp_path):
    train = make_entries("rg:gsm_symbolic", 20, 0, {}, templates="train")
    test = make_entries("rg:gsm_symbolic", 20, 0, {}, templates="test")
    assert {e["metadata"]["template"] for e in train}.isdisjoint({e["metadata"]["template"] for e in test})
    assert all(e["metadata"]["template"] % 5 == 0 for e in test)


ONE_DIGIT_PAIRS = ["--option", "min_terms=2", "--option", "max_terms=2", "--option", "max_digits=1"]


@pytest.mark.parametrize("argv, message", [
    (["rg:chain_su"], "unknown reasoning-gym task 'chain_su'; did you mean"),
    (["chain_sum"], "a task is named rg:NAME"),
    (["rg:chain_sum", "--option", "bogus=1"], "unknown option(s) ['bogus']; allowed: ['allow_negation'"),
    (["rg:chain_sum", "--option", "min_terms=0"], "refused by reasoning-gym: AssertionError: min_terms must be positive"),
    (["rg:chain_sum", "--option", "nonsense"], "option 'nonsense': must be KEY=VALUE"),
    (["rg:basic_arithmetic", "--experts", "EXPERTS"], "rg:basic_arithmetic has no trace writer"),
    (["rg:chain_sum", "--templates", "test"], "rg:chain_sum has no templates"),
    (["rg:chain_sum", "--size", "10", *ONE_DIGIT_PAIRS, "--exclude", "HELD"], "only 0 of 10 entries are new"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    held = tmp_path / "held.jsonl"  # every one-digit pair: nothing is left to draw
    options = {"min_terms": 2, "max_terms": 2, "max_digits": 1}
    held.write_text("".join(json.dumps({"prompt": e["question"], "answer": e["answer"]}) + "\n"
                            for e in make_entries("rg:chain_sum", 3000, 7, options)))
    argv = [a.replace("EXPERTS", str(tmp_path / "e.jsonl")).replace("HELD", str(held)) for a in argv]
    assert main(["data", *argv, "--out", str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.jsonl"]


def test_an_rg_row_of_an_unknown_task_is_a_file_line_error(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"prompt": "1 + 1 =", "answer": "2", "skill": "rg:no_such_task"}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:1: unknown reasoning-gym task 'no_such_task'"):
        load_prompts(bad)
    bad.write_text(json.dumps({"prompt": "1 + 1 =", "answer": "2", "metadata": [1]}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:1: 'metadata' must be an object"):
        load_prompts(bad)


def test_without_reasoning_gym_one_line_and_nothing_written(tmp_path):
    blocker = "import sys; sys.modules['reasoning_gym'] = None; sys.modules['reasoning_gym.factory'] = None\n"
    code = blocker + "from minichord.cli import main; sys.exit(main(sys.argv[1:]))"
    out = tmp_path / "out.jsonl"
    run = subprocess.run([sys.executable, "-c", code, "data", "rg:chain_sum", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and not out.exists()
    assert run.stderr.strip() == ('minichord data: error: reasoning-gym is not installed: '
                                  'pip install "minichord[tasks]" (or reasoning-gym)')


def test_an_entry_without_the_metadata_a_trace_needs_is_refused():
    for task in sorted(TRACES):
        with pytest.raises(TaskError, match=f"rg:{task}: entry 'q' lacks the metadata for a trace"):
            expert_response(f"rg:{task}", {"question": "q", "answer": "1", "metadata": {}})
    with pytest.raises(TaskError, match="gives 3, the entry says '4'"):  # a trace that disagrees is never written
        expert_response("rg:chain_sum", {"question": "q", "answer": "4", "metadata": {"expression": "1 + 2"}})
