"""samples.jsonl: the greedy answers to a run's fixed prompts at each evaluation and every `samples_every` steps,
cut back on resume like metrics.jsonl, and `minichord samples` printing them across steps."""

import dataclasses
import json

import pytest

from minichord import trainer as trainer_mod
from minichord.cli import main
from minichord.config import ConfigError, TrainConfig
from minichord.evaluate import N_SAMPLES
from minichord.tasks import Problem
from minichord.trainer import TrainingInterrupted
from test_trainer import make_trainer, tiny_data, tok  # noqa: F401  (tok is a fixture)

EVAL_SPLITS = {"in_domain": [Problem(f"add {a} {a + 2}", str(2 * a + 2), "add") for a in range(50, 56)],
               "other_skills": [Problem(f"copy {a}", str(a), "copy") for a in range(70, 73)]}  # fewer than N_SAMPLES
OVERRIDES = ["steps=4", "lr=3e-3", "eval_every=2", "samples_every=3"]


def data_with_eval():
    return dataclasses.replace(tiny_data(), eval_splits=EVAL_SPLITS)


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tok, tmp_path_factory):  # noqa: F811
    out, calls, real = tmp_path_factory.mktemp("run"), [], trainer_mod.evaluate_splits

    def counted(model, tokenizer, splits, **kwargs):
        calls.append({name: len(problems) for name, problems in splits.items()})
        return real(model, tokenizer, splits, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer_mod, "evaluate_splits", counted)
        make_trainer(tok, out, "chord-phi", OVERRIDES, data=data_with_eval()).run()
    full, fixed = {"in_domain": 6, "other_skills": 3}, {"in_domain": N_SAMPLES, "other_skills": 3}
    assert calls == [full, full, fixed, full]  # steps 0, 2, 3, 4: one generation a step, the fixed prompts at 3
    return out


def test_samples_at_each_evaluation_and_every_k_steps_for_the_same_prompts(run):
    rows = read_rows(run / "samples.jsonl")
    assert [r["step"] for r in rows] == [0, 2, 3, 4]  # evaluations 0, 2, 4; samples_every=3 adds 3
    fixed = [(name, p.prompt, p.answer) for name, split in EVAL_SPLITS.items() for p in split[:N_SAMPLES]]
    for row in rows:
        assert [(s["split"], s["prompt"], s["answer"]) for s in row["samples"]] == fixed
        for s in row["samples"]:
            assert s["reward"] == tiny_data().reward(s["response"], s["answer"])  # the run's reward
    evals = read_rows(run / "eval.jsonl")
    assert [e["step"] for e in evals] == [0, 2, 4]
    assert all("samples" not in e[split] for e in evals for split in EVAL_SPLITS)  # they live in samples.jsonl


def test_samples_every_is_validated():
    with pytest.raises(ConfigError, match="samples_every=-1"):
        TrainConfig(samples_every=-1)


def test_resumed_run_cuts_samples_back_and_matches_an_uninterrupted_one(tok, tmp_path, run):  # noqa: F811
    def stop_after_two(line, box={}):
        if line.startswith("step    2/"):
            box["trainer"].request_stop("test")

    cut = stop_after_two.__defaults__[0]["trainer"] = make_trainer(tok, tmp_path, "chord-phi", OVERRIDES,
                                                                   data=data_with_eval(), log=stop_after_two)
    with pytest.raises(TrainingInterrupted):
        cut.run()
    with open(tmp_path / "samples.jsonl", "a") as f:  # a row written by a later step before a kill
        f.write(json.dumps({"step": 3, "samples": []}) + "\n")
    resumed = make_trainer(tok, tmp_path, "chord-phi", OVERRIDES, data=data_with_eval(), seed=123)
    assert resumed.resume() and [r["step"] for r in read_rows(tmp_path / "samples.jsonl")] == [0, 2]
    resumed.run()
    assert read_rows(tmp_path / "samples.jsonl") == read_rows(run / "samples.jsonl")


def test_cli_prints_each_prompt_once_then_a_line_per_step(run, capsys):
    assert main(["samples", str(run), "--step", "0", "4"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = {r["step"]: r["samples"] for r in read_rows(run / "samples.jsonl")}
    assert len(out) == 3 * len(rows[0])  # a prompt line, then steps 0 and 4
    assert out[0] == "[0] in_domain: 'add 50 52'  (answer '102')"
    for i, s in enumerate(rows[0]):
        assert out[3 * i].startswith(f"[{i}] {s['split']}: {s['prompt']!r}")
        for line, step in zip(out[3 * i + 1:3 * i + 3], (0, 4)):
            full = f"  step {step:>5}  reward {rows[step][i]['reward']:.2f}  {rows[step][i]['response']!r}"
            assert line == full or (line.endswith("...") and full.startswith(line[:-3]))
    assert main(["samples", str(run), "--prompt", "5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[5] other_skills: 'copy 71'") and [line[:12] for line in out[1:]] == [
        f"  step {step:>5}" for step in (0, 2, 3, 4)]


def test_long_responses_are_cut_to_one_terminal_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    row = {"step": 7, "samples": [{"split": "s", "prompt": "p", "answer": "1", "reward": 0.0,
                                   "response": "line one\nline two " + "x" * 100}]}
    (tmp_path / "samples.jsonl").write_text(json.dumps(row) + "\n")
    assert main(["samples", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  step     7  reward 0.00  'line one\\..." and all(len(line) <= 40 for line in out)


@pytest.mark.parametrize("content,args,message", [
    (None, [], "has no samples.jsonl: give the --out directory of a training run with eval splits"),
    ('{"step": 0, "samples": []}\n{"step": 5, "samples": []}\n', ["--step", "0", "3"],
     "has no step 3; its steps: 0, 5"),
    ('{"step": 0, "samples": []}\nnot json\n', [], "samples.jsonl:2: invalid JSON"),
    ('{"step": 0, "samples": [{"prompt": "p"}]}\n', [], "samples.jsonl:1: not a samples row"),
    ('', [], "no samples records (the file is empty)"),
    ('{"step": 0, "samples": []}\n', ["--prompt", "0"], "has no prompt 0: it has 0 prompts a step"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, args, message):
    if content is not None:
        (tmp_path / "samples.jsonl").write_text(content)
    assert main(["samples", str(tmp_path), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1
    assert captured.err.startswith("minichord samples: error: ") and message in captured.err
