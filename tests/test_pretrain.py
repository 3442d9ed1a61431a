"""Evaluation (accuracy) and the cached pre-training of the toy base model."""

import dataclasses

import pytest
import torch

from minichord.checkpoint import load_checkpoint
from minichord.config import ModelConfig
from minichord.evaluate import evaluate, evaluate_splits, expert_token_probs
from minichord.pretrain import PretrainConfig, cosine_lr, pretrain_base
from minichord.tasks import Demonstration, Problem
from minichord.tokenizer import Tokenizer

TINY_MODEL = ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=64)
TINY_RECIPE = PretrainConfig(steps=4, batch_size=8, warmup_steps=2, tokenizer_texts=50, n_eval=6)


# ---- accuracy on known responses --------------------------------------------------------------

class ScriptedModel(torch.nn.Module):
    """A fake policy that always answers `text` then <|eos|>, whatever the prompt, through the
    real sampler (it reads how many tokens were generated from the attention mask's length)."""

    def __init__(self, tokenizer, text):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=tokenizer.vocab_size, dim=8, n_heads=2, n_kv_heads=1, ffn_dim=8)
        self.script = tokenizer.encode(text) + [tokenizer.eos_id]
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.prompt_len = None

    def forward(self, ids, attention_mask=None, positions=None, kv_cache=None, return_hidden=False):
        B, T = ids.shape
        S = attention_mask.shape[1]
        if self.prompt_len is None or T > 1:  # the prefill call
            self.prompt_len = S
        done = S - self.prompt_len  # tokens generated so far
        logits = torch.zeros(B, T, self.cfg.vocab_size)
        logits[:, -1, self.script[min(done, len(self.script) - 1)]] = 10.0
        return logits


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(["add 12 34", "46", "answer: 7", "copy 99", "sort 21"], vocab_size=140)


def test_evaluate_scores_real_generations(tokenizer):
    problems = [Problem("add 5 7", "12", "add"), Problem("add 9 9", "18", "add"),
                Problem("copy 12", "12", "copy"), Problem("add 6 6", "12", "add")]
    out = evaluate(ScriptedModel(tokenizer, "12"), tokenizer, problems, batch_size=3)
    assert out["accuracy"] == 0.75 and out["n"] == 4
    assert out["response_length"] == 3.0  # "1", "2", eos
    assert out["per_skill"] == {"add": 2 / 3, "copy": 1.0}  # sorted by skill
    assert len(out["samples"]) == 4  # the first N_SAMPLES (here all four), with their rewards
    assert out["samples"][1] == {"prompt": "add 9 9", "response": "12", "answer": "18", "reward": 0.0}
    wrong = evaluate(ScriptedModel(tokenizer, "answer: 13"), tokenizer, problems)
    assert wrong["accuracy"] == 0.0 and "per_skill" in wrong


def test_evaluate_splits(tokenizer):
    splits = {"a": [Problem("add 5 7", "12", "add")], "b": [Problem("add 1 1", "2", "add")], "empty": []}
    out = evaluate_splits(ScriptedModel(tokenizer, "12"), tokenizer, splits)
    assert set(out) == {"a", "b"} and out["a"]["accuracy"] == 1.0 and out["b"]["accuracy"] == 0.0
    assert "per_skill" not in out["a"]
    with pytest.raises(ValueError, match="at least one problem"):
        evaluate(ScriptedModel(tokenizer, "12"), tokenizer, [])


# ---- pre-training -----------------------------------------------------------------------------

def test_cosine_lr_schedule():
    cfg = PretrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_frac=0.1)
    assert cosine_lr(0, cfg) == pytest.approx(0.1)
    assert cosine_lr(9, cfg) == pytest.approx(1.0)
    assert cosine_lr(10, cfg) == pytest.approx(1.0)
    assert cosine_lr(55, cfg) == pytest.approx(0.55)  # halfway through the decay
    assert cosine_lr(100, cfg) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    lines = []
    out = pretrain_base(tmp_path_factory.mktemp("pre") / "base", config=TINY_RECIPE, model_config=TINY_MODEL,
                        log=lines.append)
    return out, lines


def test_tiny_pretrain_writes_checkpoint(tiny_base):
    out, lines = tiny_base
    assert out.name == "base"
    ckpt = load_checkpoint(out)
    assert ckpt.tokenizer is not None and ckpt.step == 4
    # the model gets exactly the tokenizer's ids (TINY_MODEL.vocab_size is only the budget)
    assert ckpt.model_config == dataclasses.replace(TINY_MODEL, vocab_size=ckpt.tokenizer.vocab_size)
    assert ckpt.tokenizer.vocab_size < TINY_MODEL.vocab_size
    assert ckpt.meta["settings"]["steps"] == 4 and ckpt.meta["settings"]["model"]["dim"] == 32
    accuracy = ckpt.meta["accuracy"]
    assert set(accuracy) >= {"in_domain", "harder", "other_skills"}
    assert all(0.0 <= accuracy[k] <= 1.0 for k in ("in_domain", "harder", "other_skills"))
    assert any(line.startswith("pretrain step    4/4 | loss") for line in lines)


def test_pretrain_reuses_cache_only_for_same_settings(tiny_base, tmp_path):
    out, _ = tiny_base
    stamp = (out / "latest").stat().st_mtime_ns
    lines = []
    again = pretrain_base(out, config=TINY_RECIPE, model_config=TINY_MODEL, log=lines.append)
    assert again == out and (out / "latest").stat().st_mtime_ns == stamp
    assert lines == [f"pretrain: reusing the base model in {out} (same settings)"]

    fresh = tmp_path / "b"
    recipe = dataclasses.replace(TINY_RECIPE, n_eval=0)
    pretrain_base(fresh, config=recipe, model_config=TINY_MODEL, log=None)
    stamp = (fresh / "latest").stat().st_mtime_ns
    pretrain_base(fresh, steps=2, config=recipe, model_config=TINY_MODEL, log=None)  # different settings
    assert load_checkpoint(fresh).meta["settings"]["steps"] == 2
    assert (fresh / "latest").stat().st_mtime_ns != stamp


def test_tiny_pretrained_model_evaluates(tiny_base):
    ckpt = load_checkpoint(tiny_base[0])
    problems = [Problem("add 12 34", "46", "add"), Problem("copy 123", "123", "copy")]
    out = evaluate(ckpt.model, ckpt.tokenizer, problems, max_new_tokens=8)
    assert set(out) == {"accuracy", "n", "response_length", "samples", "per_skill"}
    assert 0.0 <= out["accuracy"] <= 1.0 and 1.0 <= out["response_length"] <= 8.0


class FixedLogitsModel(torch.nn.Module):
    """The same logits at every position: 0 everywhere, `peak` on token `peak_id` (if any); as the lm head's
    weight [V, 1] over a hidden state of ones [B, T, 1], the way a Transformer gives them to the lm-head loss."""

    def __init__(self, vocab_size, peak_id=None, peak=0.0):
        super().__init__()
        self.cfg = ModelConfig(vocab_size=vocab_size, dim=8, n_heads=2, n_kv_heads=1, ffn_dim=8)
        self.lm_head_weight = torch.nn.Parameter(torch.zeros(vocab_size, 1))
        if peak_id is not None:
            self.lm_head_weight.data[peak_id] = peak

    def forward(self, ids, return_hidden=False, **_):
        hidden = torch.ones(*ids.shape, 1)
        return hidden if return_hidden else hidden @ self.lm_head_weight.t()


def test_expert_token_probs_summarises_teacher_forced_probabilities(tokenizer):
    demos = [Demonstration("add 5 7", "5+7=12 carry 1\nanswer: 12", "12"), Demonstration("copy 9", "9", "9")]
    V = tokenizer.vocab_size
    uniform = expert_token_probs(FixedLogitsModel(V), tokenizer, demos)
    assert uniform["median_p"] == pytest.approx(1 / V) and uniform["mean_phi"] == pytest.approx((1 / V) * (1 - 1 / V))
    assert uniform["share_p_below_1e-3"] == 0.0 and uniform["share_p_above_0.5"] == 0.0
    # all mass on "9": demo 2 is ["9", eos] -> p ~ 1 then p ~ 0
    (nine,) = tokenizer.encode("9")
    peaked = expert_token_probs(FixedLogitsModel(V, nine, 30.0), tokenizer, demos[1:])
    assert peaked["share_p_above_0.5"] == 0.5 and peaked["share_p_below_1e-3"] == 0.5
    assert peaked["mean_phi"] < 1e-6
