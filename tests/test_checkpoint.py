"""Checkpoints: exact round trips (weights, tokenizer, optimizer), atomic publishing, clear errors, no pickle."""

import json
import os
import pickle
import shutil

import pytest
import torch

import minichord.checkpoint as checkpoint
from minichord.checkpoint import (CheckpointError, checkpoint_exists, load_checkpoint, restore_optimizer,
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


def snapshot(root):
    return {str(f.relative_to(root)): f.read_bytes() for f in sorted(root.rglob("*")) if f.is_file()}


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
    assert path == tmp_path / "ckpt" / "step-000012"
    for where in (tmp_path / "ckpt", path):  # the root (follows `latest`) or the step directory itself
        ckpt = load_checkpoint(where)
        assert ckpt.model_config == model.cfg and ckpt.step == 12 and ckpt.meta == {"run": "x", "mu": 0.1}
        assert ckpt.path == path
        assert torch.equal(ckpt.model(batch()), model(batch()))
        for (name, a), b in zip(model.state_dict().items(), ckpt.model.state_dict().values()):
            assert torch.equal(a, b), name
        assert all(p.requires_grad for p in ckpt.model.parameters())
        if tied:  # still one tensor after loading: training keeps it tied
            assert ckpt.model.lm_head_weight.data_ptr() == ckpt.model.embed_tokens.weight.data_ptr()
        assert ckpt.tokenizer.encode("What is 99?") == tok.encode("What is 99?")
        assert ckpt.tokenizer.vocab_size == tok.vocab_size and ckpt.tokenizer.eos_id == tok.eos_id


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
    assert list(resumed_optimizer.param_groups[0]["betas"]) == [0.8, 0.95]  # a list after JSON: AdamW takes it
    assert resumed_optimizer.param_groups[0]["lr"] == 1e-2

    train_steps(model, optimizer, 2, seed=20)
    train_steps(ckpt.model, resumed_optimizer, 2, seed=20)
    for (name, a), b in zip(model.named_parameters(), ckpt.model.parameters()):
        assert torch.equal(a, b), name
    state, resumed = optimizer.state_dict()["state"], resumed_optimizer.state_dict()["state"]
    assert state.keys() == resumed.keys()
    for i in state:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state[i][key], resumed[i][key]), (i, key)


def test_restore_without_saved_state_or_into_another_optimizer_is_an_error(tmp_path):
    model = make_model()
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "a", model))
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore_optimizer(torch.optim.AdamW(model.parameters()), ckpt)
    optimizer = torch.optim.AdamW(model.parameters())
    train_steps(model, optimizer, 1)
    ckpt = load_checkpoint(save_checkpoint(tmp_path / "b", model, optimizer=optimizer))
    with pytest.raises(CheckpointError, match="does not fit this optimizer"):  # fewer parameters
        restore_optimizer(torch.optim.AdamW(list(model.parameters())[:3]), ckpt)


def test_optimizer_state_that_needs_pickle_is_refused(tmp_path):
    class Odd:
        def state_dict(self):
            return {"state": {0: {"momentum_buffer": object()}}, "param_groups": [{"params": [0], "lr": 0.1}]}

    with pytest.raises(CheckpointError, match="without pickle"):
        save_checkpoint(tmp_path / "ckpt", make_model(), optimizer=Odd())
    Odd.state_dict = lambda self: {"state": {"w": {"m": torch.zeros(2)}}, "param_groups": []}
    with pytest.raises(CheckpointError, match="parameter indices"):
        save_checkpoint(tmp_path / "ckpt", make_model(), optimizer=Odd())
    assert not checkpoint_exists(tmp_path / "ckpt")


def test_layout_latest_pointer_and_keep(tmp_path, tok):
    root, model = tmp_path / "ckpt", make_model()
    assert not checkpoint_exists(root)
    for step in (1, 2, 3, 4, 5):
        save_checkpoint(root, model, tokenizer=tok, step=step, meta={"at": step}, keep=3)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000003", "step-000004", "step-000005"]
    assert (root / "latest").read_text() == "step-000005" and checkpoint_exists(root)
    assert sorted(p.name for p in (root / "step-000005").iterdir()) == ["config.json", "model.safetensors",
                                                                         "tokenizer.json"]
    config = json.loads((root / "step-000005" / "config.json").read_text())
    assert set(config["files"]) == {"model.safetensors", "tokenizer.json"} and config["dtype"] == "float32"
    assert load_checkpoint(root / "step-000003").meta == {"at": 3}  # older steps stay loadable

    with torch.no_grad():
        model.norm.weight.add_(1.0)
    save_checkpoint(root, model, step=5, meta={"again": True}, keep=3)  # re-saving the newest step
    ckpt = load_checkpoint(root)
    assert ckpt.meta == {"again": True} and torch.equal(ckpt.model.norm.weight, model.norm.weight)
    assert ckpt.tokenizer is None
    save_checkpoint(root, model, step=2, keep=2)  # a run started over: later steps of the old one stay
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002", "step-000003", "step-000004",
                                                      "step-000005"]
    with pytest.raises(CheckpointError, match="keep"):
        save_checkpoint(root, model, step=3, keep=0)


@pytest.mark.parametrize("existing_step", [False, True])
def test_crash_at_every_rename_leaves_a_complete_checkpoint(tmp_path, monkeypatch, tok, existing_step):
    """Stop the save at each os.replace in turn (as a kill would): `latest` always loads, and it
    loads either the old checkpoint or the new one, never a mix."""
    model = make_model()
    old_step = 7
    root = tmp_path / "ckpt"
    new_step = old_step if existing_step else old_step + 1
    for crash_at in range(1, 10):
        save_checkpoint(root, make_model(), tokenizer=tok, step=old_step)
        old = load_checkpoint(root).model(batch())
        calls, real_replace = [], os.replace

        def replace(src, dst):
            calls.append(dst)
            if len(calls) == crash_at:
                raise KeyboardInterrupt("kill")
            real_replace(src, dst)

        monkeypatch.setattr(checkpoint.os, "replace", replace)
        try:
            save_checkpoint(root, model, tokenizer=tok, step=new_step, meta={"new": True})
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.undo()
        ckpt = load_checkpoint(root)
        expected = model(batch()) if ckpt.meta == {"new": True} else old
        assert torch.equal(ckpt.model(batch()), expected) and ckpt.step in (old_step, new_step)
        if finished:
            assert ckpt.meta == {"new": True}
            break
        save_checkpoint(root, model, step=new_step + 1)  # the next save clears what the crash left
        assert {p.name for p in root.iterdir()} <= {"latest", f"step-{old_step:06d}", f"step-{new_step:06d}",
                                                    f"step-{new_step + 1:06d}"}
        assert load_checkpoint(root).step == new_step + 1
        for p in root.iterdir():  # start the next round from scratch
            p.unlink() if p.is_file() else shutil.rmtree(p)
    assert crash_at >= 3  # the save really did go through several renames


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, tok):
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    root = tmp_path / "ckpt"
    save_checkpoint(root, model, tokenizer=tok, optimizer=optimizer, step=1)
    before = snapshot(root)
    train_steps(model, optimizer, 1)
    real_write = checkpoint._write

    def failing_write(file, data):
        if file.name == "optimizer.safetensors":
            file.write_bytes(b"half a file")
            raise OSError("disk full")
        return real_write(file, data)

    monkeypatch.setattr(checkpoint, "_write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(root, model, tokenizer=tok, optimizer=optimizer, step=2)
    monkeypatch.undo()
    after = snapshot(root)  # `latest` and step-000001 untouched; a stray temp dir may remain ...
    assert {k: v for k, v in after.items() if not k.startswith(".tmp-")} == before
    assert load_checkpoint(root).step == 1
    save_checkpoint(root, model, tokenizer=tok, optimizer=optimizer, step=2)  # ... until the next save
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001", "step-000002"]


def test_config_and_vocab_mismatch_name_both_values(tmp_path):
    path = save_checkpoint(tmp_path / "ckpt", make_model())
    with pytest.raises(CheckpointError, match="vocab_size: checkpoint has 160, expected 300"):
        load_checkpoint(path, expect_config=small_config(vocab_size=300))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "ckpt", expect_config=small_config(dim=64, n_layers=3))
    assert "dim: checkpoint has 32, expected 64" in str(err.value)
    assert "n_layers: checkpoint has 2, expected 3" in str(err.value)
    load_checkpoint(path, expect_config=small_config())  # matching: fine


def test_tokenizer_larger_than_model_vocab_is_refused(tmp_path):
    big = Tokenizer.train(["abc def ghi jkl mno pqr stu vwx yz " * 3, "hello there"] * 5, vocab_size=200)
    assert big.vocab_size > 140
    with pytest.raises(CheckpointError, match=f"tokenizer has {big.vocab_size}, model has 140"):
        save_checkpoint(tmp_path / "ckpt", make_model(vocab_size=140), tokenizer=big)
    assert not (tmp_path / "ckpt").exists()


def test_save_refuses_a_file_or_a_foreign_directory(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "nothing")
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("do not delete")
    with pytest.raises(CheckpointError, match="not a directory of checkpoints"):
        save_checkpoint(precious, make_model())
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory of checkpoints"):
        save_checkpoint(tmp_path / "file", make_model())
    assert (tmp_path / "file").read_text() == "x"


def test_no_pickle_anywhere(tmp_path, monkeypatch, tok):
    model = make_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    train_steps(model, optimizer, 1)
    path = save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok, optimizer=optimizer, meta={"a": [1, 2]})
    assert sorted(f.name for f in path.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "tokenizer.json"]
    for f in path.iterdir():
        head = f.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", f  # no pickle stream, no torch zip archive

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling during checkpoint load")

    for module, name in [(pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    ckpt = load_checkpoint(path)
    restore_optimizer(torch.optim.AdamW(ckpt.model.parameters()), ckpt)


def test_meta_must_be_a_json_object(tmp_path):
    with pytest.raises(CheckpointError, match="without pickle"):
        save_checkpoint(tmp_path / "ckpt", make_model(), meta={"when": object()})
    with pytest.raises(CheckpointError, match="meta must be a dict"):
        save_checkpoint(tmp_path / "ckpt", make_model(), meta=[1, 2])
    assert not checkpoint_exists(tmp_path / "ckpt")
