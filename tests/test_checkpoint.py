"""Checkpoints: exact round trips (weights, optimizer, RNG), atomic writes, clear errors, no pickle."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

import minichord.checkpoint as checkpoint
from minichord.checkpoint import (CheckpointError, load_checkpoint, restore_optimizer, restore_rng,
                                  save_checkpoint)
from minichord.config import ModelConfig
from minichord.model import Transformer
from minichord.tokenizer import Tokenizer

VOCAB = 160


def small_config(**changes) -> ModelConfig:
    base = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, max_seq_len=32)
    return ModelConfig(**{**base, **changes})


def make_model(seed=0, **changes) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(small_config(**changes))


def batch(seed=1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(seed))  # [B, T]


def train_steps(model, optimizer, n, seed=10):
    for i in range(n):
        ids = batch(seed + i)
        loss = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train(["What is 12 + 34? 46.", "hello world"] * 5, vocab_size=VOCAB)


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_reproduces_logits_bit_for_bit(tmp_path, tok, tied):
    model = make_model(tie_embeddings=tied)
    with torch.no_grad():  # move away from the init, so a fresh model could not pass by accident
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok, step=12, meta={"run": "x", "mu": 0.1})
    ckpt = load_checkpoint(path)
    assert ckpt.model_config == model.cfg and ckpt.step == 12 and ckpt.meta == {"run": "x", "mu": 0.1}
    assert torch.equal(ckpt.model(batch()), model(batch()))
    assert ckpt.model.num_params() == model.num_params()
    if tied:  # still one tensor after loading: training keeps it tied
        assert ckpt.model.lm_head_weight.data_ptr() == ckpt.model.embed_tokens.weight.data_ptr()
    assert ckpt.tokenizer.encode("What is 99?") == tok.encode("What is 99?")
    assert ckpt.tokenizer.vocab_size == tok.vocab_size


def test_weights_shared_by_two_names_are_stored_once(tmp_path):
    """safetensors refuses two names for one storage; such a model still saves and reloads."""
    model = make_model(tie_embeddings=False)
    model.lm_head.weight = model.embed_tokens.weight  # tie by hand: two state_dict names, one tensor
    path = save_checkpoint(tmp_path / "ckpt", model)
    from safetensors import safe_open
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert len([k for k in f.keys() if "embed_tokens" in k or "lm_head" in k]) == 1
    assert torch.equal(load_checkpoint(path).model(batch()), model(batch()))


def test_bfloat16_model_round_trip(tmp_path):
    model = make_model().to(torch.bfloat16)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model))
    assert next(ckpt.model.parameters()).dtype == torch.bfloat16
    assert torch.equal(ckpt.model(batch()), model(batch()))


def test_optimizer_round_trip_gives_identical_next_steps(tmp_path):
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95), weight_decay=0.1)
    train_steps(model, optimizer, 2)
    path = save_checkpoint(tmp_path / "ckpt", model, optimizer=optimizer, step=2)

    ckpt = load_checkpoint(path)
    resumed_optimizer = torch.optim.AdamW(ckpt.model.parameters(), lr=1.0)  # hyper-params come from the file
    restore_optimizer(resumed_optimizer, ckpt)
    assert resumed_optimizer.param_groups[0]["betas"] == (0.8, 0.95)
    assert resumed_optimizer.param_groups[0]["lr"] == 1e-2

    train_steps(model, optimizer, 2, seed=20)
    train_steps(ckpt.model, resumed_optimizer, 2, seed=20)
    for (name, a), b in zip(model.named_parameters(), ckpt.model.parameters()):
        assert torch.equal(a, b), name
    state, resumed = optimizer.state_dict()["state"], resumed_optimizer.state_dict()["state"]
    assert all(torch.equal(state[i]["exp_avg_sq"], resumed[i]["exp_avg_sq"]) for i in state)


def test_restore_without_saved_state_is_an_error(tmp_path):
    model = make_model()
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "ckpt", model, save_rng=False))
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore_optimizer(torch.optim.AdamW(model.parameters()), ckpt)
    with pytest.raises(CheckpointError, match="no RNG state"):
        restore_rng(ckpt)


def test_rng_round_trip_reproduces_the_next_random_numbers(tmp_path):
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    torch.rand(5), random.random(), np.random.normal(size=3)  # move the generators along
    path = save_checkpoint(tmp_path / "ckpt", make_model(), save_rng=True)
    expected = (torch.rand(7), [random.random() for _ in range(3)], np.random.normal(size=4))
    torch.manual_seed(99), random.seed(99), np.random.seed(99)  # scramble
    restore_rng(load_checkpoint(path))
    assert torch.equal(torch.rand(7), expected[0])
    assert [random.random() for _ in range(3)] == expected[1]
    assert np.array_equal(np.random.normal(size=4), expected[2])


def _snapshot(path):
    return {f.name: f.read_bytes() for f in sorted(path.iterdir())}


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch, tok):
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    path = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok, optimizer=optimizer, step=1)
    before, old_logits = _snapshot(path), model(batch())
    train_steps(model, optimizer, 1)

    # 1) a write fails midway (after model.safetensors, at the optimizer tensors)
    real_write = checkpoint._write_tensors

    def failing_write(file, tensors):
        if file.name == "optimizer.safetensors":
            file.write_bytes(b"half a file")
            raise OSError("disk full")
        real_write(file, tensors)

    monkeypatch.setattr(checkpoint, "_write_tensors", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, tokenizer=tok, optimizer=optimizer, step=2)
    monkeypatch.undo()
    assert _snapshot(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # the temp dir was cleared
    assert load_checkpoint(path).step == 1

    # 2) a crash between the two renames: old moved to the backup, new not yet in place
    real_replace, calls = os.replace, []

    def crash_on_second_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, tokenizer=tok, optimizer=optimizer, step=2)
    monkeypatch.undo()
    assert not path.exists()  # the state a real crash would leave
    ckpt = load_checkpoint(path)  # recovers the complete backup
    assert ckpt.step == 1 and torch.equal(ckpt.model(batch()), old_logits)
    assert _snapshot(path) == before

    # 3) and the next save goes through, leaving no backup or temp dir behind
    save_checkpoint(path, model, tokenizer=tok, optimizer=optimizer, step=2)
    assert load_checkpoint(path).step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_checkpoint_exists_recovers_a_backup(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", make_model())
    assert checkpoint.checkpoint_exists(path)
    os.replace(path, tmp_path / ".ckpt.old")  # as left by a crash between the two renames
    assert checkpoint.checkpoint_exists(path) and (path / "model.safetensors").is_file()
    assert not checkpoint.checkpoint_exists(tmp_path / "other")
    # an incomplete backup (a file missing) is not resurrected
    os.replace(path, tmp_path / ".ckpt.old")
    (tmp_path / ".ckpt.old" / "model.safetensors").unlink()
    assert not checkpoint.checkpoint_exists(path)


def test_config_and_vocab_mismatch_name_both_values(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", make_model())
    with pytest.raises(CheckpointError, match="vocab_size: checkpoint has 160, expected 300"):
        load_checkpoint(path, expect_vocab_size=300)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, expect_config=small_config(dim=64, n_layers=3))
    assert "dim: checkpoint has 32, expected 64" in str(err.value)
    assert "n_layers: checkpoint has 2, expected 3" in str(err.value)
    load_checkpoint(path, expect_config=small_config(), expect_vocab_size=VOCAB)  # matching: fine


def test_tokenizer_larger_than_model_vocab_is_refused(tmp_path):
    big = Tokenizer.train(["abc def ghi jkl mno pqr stu vwx yz " * 3, "hello there"] * 5, vocab_size=200)
    assert big.vocab_size > 140
    with pytest.raises(CheckpointError, match=f"tokenizer has {big.vocab_size}, model has 140"):
        save_checkpoint(tmp_path / "ckpt", make_model(vocab_size=140), tokenizer=big)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "tokenizer.json", "optimizer.json"])
def test_missing_file_is_named(tmp_path, tok, name):
    model = make_model()
    path = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok,
                           optimizer=torch.optim.AdamW(model.parameters()))
    (path / name).unlink()
    with pytest.raises(CheckpointError, match="missing") as err:
        load_checkpoint(path)
    assert str(path / name) in str(err.value)


@pytest.mark.parametrize("damage, verify", [("truncate", True), ("truncate", False), ("garbage", True),
                                            ("garbage", False), ("flip_byte", True)])
def test_corrupt_model_file_is_named(tmp_path, damage, verify):
    """verify=False leaves it to safetensors' own checks; a flipped weight byte is still a
    well-formed file, so only the manifest's sha256 (verify=True) can catch that one."""
    path = save_checkpoint(tmp_path / "ckpt", make_model())
    file = path / "model.safetensors"
    data = file.read_bytes()
    if damage == "truncate":
        file.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        file.write_bytes(os.urandom(len(data)))
    else:
        file.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_checkpoint(path, verify=verify)
    assert str(file) in str(err.value)


def test_corrupt_config_json_is_named(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", make_model())
    (path / "config.json").write_text('{"format": "minichord-checkpoint", "vers')
    with pytest.raises(CheckpointError, match="corrupt") as err:
        load_checkpoint(path)
    assert str(path / "config.json") in str(err.value)


def test_missing_directory_and_non_checkpoint_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        save_checkpoint(precious, make_model())
    assert (precious / "thesis.txt").read_text() == "do not delete"


def test_no_pickle_anywhere(tmp_path, monkeypatch, tok):
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, 1)
    path = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok, optimizer=optimizer, meta={"a": [1, 2]})
    assert sorted(f.name for f in path.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.json", "optimizer.safetensors",
        "rng.json", "rng.safetensors", "tokenizer.json"]
    for f in path.iterdir():
        head = f.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f  # no pickle stream, no torch zip archive

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during checkpoint load")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    ckpt = load_checkpoint(path)
    restore_optimizer(torch.optim.AdamW(ckpt.model.parameters()), ckpt)
    restore_rng(ckpt)


def test_meta_must_be_json(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "ckpt", make_model(), meta={"when": object()})
    assert not (tmp_path / "ckpt").exists()
