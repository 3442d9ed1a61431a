"""The trainer learns (not merely runs), resumes exactly, and stops cleanly on bad numbers."""

import json
import math
import os
import random
import signal

import pytest
import torch

from minichord import trainer as trainer_mod
from minichord.batch import Sequence, pack
from minichord.checkpoint import load_checkpoint
from minichord.config import ConfigError, ModelConfig
from minichord.methods import build_stages
from minichord.model import Transformer
from minichord.tasks import Demonstration, Problem, style_texts
from minichord.tokenizer import Tokenizer
from minichord.data import TrainData
from minichord.trainer import Trainer, TrainingError, TrainingInterrupted

TINY = ["n_test=8", "eval_every=1000", "save_every=2", "sampler.max_new_tokens=6", "prompts_per_step=4",
        "group_size=4", "experts_per_step=4"]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(style_texts(random.Random(0), 200), vocab_size=160)


def starts_with_digit(response: str, answer: str) -> float:
    """An easy reward a random model earns sometimes: the response begins with a digit."""
    return float(response[:1].isdigit())


def tiny_data(reward=starts_with_digit) -> TrainData:
    prompts = [Problem(f"add {a} {a + 1}", str(2 * a + 1), "add") for a in range(10, 40)]
    experts = [Demonstration(p.prompt, f"{p.answer[-1]}+0\nanswer: {p.answer}", p.answer) for p in prompts[:8]]
    return TrainData(prompts=prompts, experts=experts, eval_splits={}, reward=reward)


def make_trainer(tok, tmp_path, method: str, overrides: list[str], data=None, seed=0, log=lambda s: None):
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    ffn_dim=64, max_seq_len=64))
    return Trainer(build_stages(method, overrides=[*TINY, *overrides]), model, tok, data or tiny_data(),
                   tmp_path, log=log)


def read_metrics(path, drop=("time_sample", "time_score", "time_train")) -> list[dict]:
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in drop} for r in rows]


def test_pack_aligns_hidden_positions_with_targets():
    batch = pack([Sequence([1, 2, 3], [7, 8], False, 0.5, [-0.1, -0.2]), Sequence([4], [9], True)],
                 pad_id=0, max_len=16)
    assert batch.ids.tolist() == [[1, 2, 3, 7, 8], [4, 9, 0, 0, 0]]
    assert batch.rows.tolist() == [0, 0, 1] and batch.cols.tolist() == [2, 3, 0]
    assert batch.targets.tolist() == [7, 8, 9]
    assert batch.is_expert.tolist() == [False, False, True]
    assert batch.advantages.tolist() == [0.5, 0.5, 0.0]
    sub = batch.select(torch.tensor([1]))
    assert sub.rows.tolist() == [0] and sub.targets.tolist() == [9]
    with pytest.raises(ValueError, match="exceeds the model context"):
        pack([Sequence([1] * 10, [2] * 10, True)], pad_id=0, max_len=16)


def test_methods_are_presets_of_one_trainer():
    assert build_stages("grpo")[0].mu(5) == 0.0
    assert build_stages("sft")[0].mu(5) == 1.0
    chord_mu = build_stages("chord-mu", overrides=["steps=100"])[0]
    assert chord_mu.mu(0) == pytest.approx(0.9) and chord_mu.mu(99) == pytest.approx(0.05, abs=1e-3)
    staged = build_stages("sft-grpo", overrides=["steps=10"])
    assert [(p.method.name, p.start, p.end) for p in staged] == [("sft", 0, 5), ("grpo", 5, 10)]
    assert build_stages("chord-phi")[0].cfg.loss.expert_weighting == "phi"
    assert build_stages("luffy")[0].cfg.loss.luffy is True
    with pytest.raises(ConfigError, match="did you mean 'chord-phi'"):
        build_stages("chord-phy")
    with pytest.raises(ConfigError, match="did you mean 'group_size'"):
        build_stages("grpo", overrides=["group_sise=4"])


def test_grpo_raises_reward(tok, tmp_path):
    t = make_trainer(tok, tmp_path, "grpo", ["steps=12", "lr=2e-2", "prompts_per_step=8", "group_size=8",
                                             "save_every=1000", "sampler.max_new_tokens=2"])
    t.run()
    rewards = [m["reward"] for m in read_metrics(tmp_path)]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.3, f"GRPO did not learn: reward {first:.3f} -> {last:.3f} ({rewards})"


def test_sft_lowers_expert_nll(tok, tmp_path):
    t = make_trainer(tok, tmp_path, "sft", ["steps=12", "lr=1e-2", "experts_per_step=8"])
    t.run()
    nll = [m["expert_nll"] for m in read_metrics(tmp_path)]
    assert nll[-1] < 0.7 * nll[0], f"SFT did not lower the expert NLL: {nll}"
    assert all("reward" not in m for m in read_metrics(tmp_path)), "SFT must not sample rollouts"


@pytest.mark.parametrize("method", ["chord-phi", "luffy"])
def test_resume_repeats_an_uninterrupted_run(tok, tmp_path, method):
    overrides = ["steps=4", "lr=3e-3", "ppo_epochs=2", "minibatches=2"]
    make_trainer(tok, tmp_path / "full", method, overrides).run()

    def stop_after_two(line, box={}):
        if line.startswith("step    2/"):
            box["trainer"].request_stop("test")

    interrupted = make_trainer(tok, tmp_path / "cut", method, overrides, log=stop_after_two)
    stop_after_two.__defaults__[0]["trainer"] = interrupted
    with pytest.raises(TrainingInterrupted, match="after step 2/4"):
        interrupted.run()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint").step == 2
    resumed = make_trainer(tok, tmp_path / "cut", method, overrides, seed=123)  # different init: must be replaced
    assert resumed.resume() and resumed.step == 2
    resumed.run()
    full, cut = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "cut")
    assert [m["step"] for m in cut] == [0, 1, 2, 3]
    assert cut == full
    assert any(m["clip_fraction"] > 0 for m in full if m.get("clip_fraction") is not None) or method == "luffy"


def test_nan_loss_stops_with_the_step_and_keeps_the_checkpoint(tok, tmp_path, monkeypatch):
    t = make_trainer(tok, tmp_path, "chord-phi", ["steps=6", "save_every=2"])
    real = trainer_mod.lm_head.fused_token_loss

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        if t.step >= 3:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(trainer_mod.lm_head, "fused_token_loss", poisoned)
    with pytest.raises(TrainingError, match="step 3"):
        t.run()
    ckpt = load_checkpoint(tmp_path / "checkpoint")
    assert ckpt.step == 2
    assert all(torch.isfinite(p).all() for p in ckpt.model.parameters())
    assert all(torch.isfinite(p).all() for p in t.model.parameters()), "the bad update was applied"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_save_and_stop_with_an_error(tok, tmp_path, signum):
    def interrupt(line):
        if line.startswith("step    2/"):
            os.kill(os.getpid(), signum)

    t = make_trainer(tok, tmp_path, "grpo", ["steps=8", "save_every=1000"], log=interrupt)
    with pytest.raises(TrainingInterrupted, match=signal.Signals(signum).name):
        t.run()  # finishes the step and saves, then says it did not finish
    assert t.step == 2
    assert load_checkpoint(tmp_path / "checkpoint").step == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_reward_that_never_parses_is_reported(tok, tmp_path):
    t = make_trainer(tok, tmp_path, "grpo", ["steps=3"], data=tiny_data(reward=lambda r, a: 0.0))
    t.run()
    rows = read_metrics(tmp_path)
    assert all(m["reward"] == 0 and m["zero_variance_groups"] == 1.0 for m in rows)
    assert all(not math.isnan(m["grad_norm"]) for m in rows)


def test_fresh_run_in_a_used_directory_starts_its_logs_over(tok, tmp_path):
    """Starting over (no checkpoint resumed) must not append to an earlier run's metrics."""
    make_trainer(tok, tmp_path, "grpo", ["steps=3"]).run()
    (tmp_path / "checkpoint").rename(tmp_path / "old-checkpoint")  # as with --no-resume
    make_trainer(tok, tmp_path, "grpo", ["steps=2"]).run()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
