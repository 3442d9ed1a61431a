"""A Hugging Face model on the training path, end to end through the CLI: the tiny Qwen2 fixture
(tests/fixtures/hf/qwen2: ChatML template) trained with CHORD-phi on GSM8K-format rows, resumed,
exported back to HF format, evaluated (strict and lenient accuracy) and chatted with."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from minichord.checkpoint import load_checkpoint
from minichord.cli import main
from minichord.hf import load_hf_model

FIXTURES = Path(__file__).parent / "fixtures"
MODEL, DATA = FIXTURES / "hf" / "qwen2", FIXTURES / "gsm8k"
SMALL = ["--set", "sampler.max_new_tokens=8", "--set", "prompts_per_step=2", "--set", "group_size=2",
         "--set", "experts_per_step=2", "--set", "eval_every=2", "--set", "save_every=1"]


def train(out, steps, *extra):
    return main(["train", "--method", "chord-phi", "--model", str(MODEL), "--prompts", str(DATA / "train.jsonl"),
                 "--experts", str(DATA / "train.jsonl"), "--eval", str(DATA / "test.jsonl"), "--out", str(out),
                 "--set", f"steps={steps}", *SMALL, *extra])


def test_train_resume_export_an_hf_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, 2) == 0
    log = capsys.readouterr().out
    assert "reward minichord.tasks.math.strict_reward" in log and "eval splits ['test']" in log
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1] and all(r["experts"] == 2 and r["rollouts"] == 4 for r in rows)
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 2] and "lenient_accuracy" in evals[-1]["test"]
    ckpt = load_checkpoint(out / "checkpoint")
    assert type(ckpt.tokenizer).__name__ == "ChatTokenizer"  # the template travels with the weights
    assert (ckpt.path / "tokenizer_config.json").is_file()
    before = {k: v.clone() for k, v in ckpt.model.state_dict().items()}
    assert any(not torch.equal(before[k], v) for k, v in load_hf_model(MODEL).state_dict().items())  # it trained

    assert train(out, 3) == 0  # resumes at step 2
    assert "resumed from" in capsys.readouterr().out
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]

    hf_dir = tmp_path / "hf"
    assert main(["export", str(out / "checkpoint"), str(hf_dir)]) == 0
    exported, trained = load_hf_model(hf_dir), load_checkpoint(out / "checkpoint").model
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    torch.testing.assert_close(exported(ids), trained(ids), atol=0, rtol=0)
    from minichord.chat import ChatTokenizer
    assert ChatTokenizer.from_dir(hf_dir).encode_prompt("hi") == ChatTokenizer.from_dir(MODEL).encode_prompt("hi")


def test_eval_and_chat_an_hf_model(capsys):
    assert main(["eval", "--model", str(MODEL), "--prompts", str(DATA / "test.jsonl"), "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test ") and "accuracy 0.000, lenient 0.000" in out and "(n=2," in out
    assert main(["chat", "--model", str(MODEL), "--max-new-tokens", "5", "Hello"]) == 0
    assert capsys.readouterr().out.strip()  # a random model says something; greedy, so always the same


@pytest.mark.parametrize("args, message", [
    (["train", "--method", "chord-phi", "--model", str(MODEL), "--out", "{tmp}/r"], "needs your data"),
    (["eval", "--model", str(MODEL)], "give --prompts FILE"),
    (["eval"], "give a model: --model DIR"),
    (["train", "--method", "chord-phi", "--model", "{tmp}/broken", "--prompts", str(DATA / "train.jsonl"),
      "--experts", str(DATA / "train.jsonl"), "--out", "{tmp}/r"], "broken/config.json: architectures"),
    (["chat", "--model", "{tmp}/broken", "hi"], "broken/config.json: architectures"),
    (["export", str(MODEL), "{tmp}/out"], "is already a Hugging Face directory"),
])
def test_refusals_are_one_line(tmp_path, capsys, args, message):
    shutil.copytree(MODEL, tmp_path / "broken")
    cfg = json.loads((tmp_path / "broken" / "config.json").read_text())
    (tmp_path / "broken" / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r" / "checkpoint").exists()
