"""Every resume is exact, and no diverged weights are ever kept.

A run stopped after step k (as Ctrl-C / SIGTERM stop it: finish the step, save) and resumed
must end bit-identical to an uninterrupted run: weights and AdamW state, max |diff| = 0.0.
sft-grpo is cut at its stage boundary (the GRPO stage starts with a fresh optimizer) and
inside each stage.
"""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from minichord.checkpoint import load_checkpoint, save_checkpoint
from minichord.cli import main
from minichord.config import ModelConfig
from minichord.model import Transformer
from minichord.tasks import style_texts
from minichord.tokenizer import Tokenizer
from minichord.methods import METHODS
from minichord.trainer import TrainingError, TrainingInterrupted
from test_trainer import make_trainer, tok  # noqa: F401  (tok is a fixture)

OVERRIDES = ["steps=4", "lr=3e-3", "ppo_epochs=2", "minibatches=2"]
CUTS = [(m, k) for m in METHODS for k in ((1, 2, 3) if m == "sft-grpo" else (1, 2))]  # sft-grpo: 2 = boundary


def optimizer_tensors(trainer) -> dict:
    state = trainer.optimizer.state_dict()["state"]
    return {f"{i}.{k}": v for i, s in state.items() for k, v in s.items() if torch.is_tensor(v)}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def uninterrupted(tok, tmp_path_factory):  # noqa: F811
    runs = {}
    for method in METHODS:
        t = make_trainer(tok, tmp_path_factory.mktemp(method), method, OVERRIDES)
        t.run()
        runs[method] = (t.model.state_dict(), optimizer_tensors(t))
    return runs


@pytest.mark.parametrize("method,cut", CUTS)
def test_resume_is_bit_identical(tok, tmp_path, uninterrupted, method, cut):  # noqa: F811
    box = {}

    def stop_after_cut(line):
        if line.startswith(f"step {cut:4d}/"):
            box["trainer"].request_stop("test")

    first = box["trainer"] = make_trainer(tok, tmp_path, method, OVERRIDES, log=stop_after_cut)
    with pytest.raises(TrainingInterrupted):
        first.run()
    assert load_checkpoint(tmp_path / "checkpoint").step == cut
    resumed = make_trainer(tok, tmp_path, method, OVERRIDES, seed=123)  # another init: must be replaced
    assert resumed.resume() and resumed.step == cut
    resumed.run()
    weights, optim = uninterrupted[method]
    assert max_diff(resumed.model.state_dict(), weights) == 0.0
    assert max_diff(optimizer_tensors(resumed), optim) == 0.0


def test_diverged_update_keeps_the_last_good_checkpoint(tok, tmp_path):  # noqa: F811
    make_trainer(tok, tmp_path, "chord-phi", ["steps=2", "save_every=1"]).run()
    good = load_checkpoint(tmp_path / "checkpoint")
    files = {p: p.read_bytes() for p in (tmp_path / "checkpoint").rglob("*") if p.is_file()}
    t = make_trainer(tok, tmp_path, "chord-phi", ["steps=5", "save_every=1", "lr=1e30"])
    assert t.resume()
    with pytest.raises(TrainingError, match=r"step 2: the update diverged: it made the weights or logits non-finite"):
        t.run()
    after = load_checkpoint(tmp_path / "checkpoint")
    assert after.step == 2
    assert max_diff(after.model.state_dict(), good.model.state_dict()) == 0.0
    assert all(torch.isfinite(p).all() for p in after.model.parameters())
    assert {p: p.read_bytes() for p in (tmp_path / "checkpoint").rglob("*") if p.is_file()} == files


@pytest.mark.parametrize("setting", ["lr=1e30", "lr=1e38"])
def test_diverging_cli_run_exits_non_zero_with_one_line(tmp_path, capsys, setting):
    init = _tiny_init(tmp_path / "base")
    code = main(["train", "--method", "chord-phi", "--out", str(tmp_path / "run"), "--set", f"init={init}",
                 "--set", "steps=3", "--set", "save_every=1", "--set", "n_test=4", "--set", setting,
                 "--set", "sampler.max_new_tokens=8", "--set", "prompts_per_step=2", "--set", "group_size=2",
                 "--set", "experts_per_step=2"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and "step 0: the update diverged" in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "checkpoint").exists() or all(
        torch.isfinite(p).all() for p in load_checkpoint(tmp_path / "run" / "checkpoint").model.parameters())


def _tiny_init(path):
    tokenizer = Tokenizer.train(style_texts(random.Random(0), 200), vocab_size=160)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    ffn_dim=64, max_seq_len=128))
    return save_checkpoint(path, model, tokenizer=tokenizer)


def test_sigterm_saves_and_exits_non_zero_with_one_line(tmp_path):
    init, out = _tiny_init(tmp_path / "base"), tmp_path / "run"
    cmd = [sys.executable, "-m", "minichord.cli", "train", "--method", "grpo", "--out", str(out)]
    for setting in (f"init={init}", "steps=100000", "save_every=100000", "n_test=4", "eval_every=100000",
                    "sampler.max_new_tokens=6", "prompts_per_step=2", "group_size=2"):
        cmd += ["--set", setting]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("minichord train: error: stopped by SIGTERM after step"), err
    step = int(last.split("after step ")[1].split("/")[0])
    assert load_checkpoint(out / "checkpoint").step == step >= 2
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == step


def test_torn_last_log_line_is_dropped_on_resume(tok, tmp_path):  # noqa: F811
    make_trainer(tok, tmp_path, "grpo", ["steps=2", "save_every=1"]).run()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "rew')  # killed mid-write
    lines = []
    t = make_trainer(tok, tmp_path, "grpo", ["steps=3"], log=lines.append)
    assert t.resume()
    assert any("dropped a torn last line" in line and "metrics.jsonl:3" in line for line in lines)
    t.run()
    assert [json.loads(r)["step"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write("garbage\n{\"step\": 3}\n")  # not the last line: refused with file:line, not guessed
    with pytest.raises(TrainingError, match=r"metrics.jsonl:4: not a metrics row"):
        make_trainer(tok, tmp_path, "grpo", ["steps=5"]).resume()


@pytest.mark.parametrize("growth, diverged", [(None, True), ("1e12", False)])
def test_a_finite_blow_up_is_caught_and_the_check_can_be_relaxed(tmp_path, capsys, growth, diverged):
    init = _tiny_init(tmp_path / "base")
    code = main(["train", "--method", "chord-phi", "--out", str(tmp_path / "run"), "--set", f"init={init}",
                 "--set", "steps=2", "--set", "save_every=1", "--set", "n_test=4", "--set", "lr=1e6",
                 "--set", "sampler.max_new_tokens=8", "--set", "prompts_per_step=2", "--set", "group_size=2",
                 "--set", "experts_per_step=2", *(["--set", f"max_weight_growth={growth}"] if growth else [])])
    err = capsys.readouterr().err.strip()
    if diverged:  # every weight stays finite (|w| ~ 1e6), so only the norm's growth catches it
        assert code == 2 and len(err.splitlines()) == 1 and "the weights' norm grew" in err, err
        assert not (tmp_path / "run" / "checkpoint").exists()
    else:
        assert code == 0 and load_checkpoint(tmp_path / "run" / "checkpoint").step == 2
