"""Damaged or edited checkpoints: every problem is one CheckpointError line naming the file and the
field, nothing on disk changes, nothing outside the checkpoint is read, and nothing loads unverified."""

import hashlib
import json
import math
import random
import shutil
import time

import pytest
import torch
from safetensors.torch import save as st_save

from minichord.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from minichord.cli import main
from minichord.config import ModelConfig
from minichord.model import Transformer
from minichord.tokenizer import Tokenizer

STEP = "step-000003"


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(["What is 12 + 34? 46.", "hello world"] * 5, vocab_size=160)


@pytest.fixture(scope="module")
def original(tmp_path_factory, tok):
    """A valid checkpoint root with a tokenizer and an optimizer state."""
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                    ffn_dim=64, max_seq_len=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    root = tmp_path_factory.mktemp("original") / "ckpt"
    save_checkpoint(root, model, tokenizer=tok, optimizer=optimizer, step=3, meta={"run": "x"})
    return root


@pytest.fixture
def root(original, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(original, copy)
    return copy


def snapshot(top):
    return {str(p.relative_to(top)): (p.is_symlink(), p.read_bytes() if p.is_file() else None)
            for p in sorted(top.rglob("*"))}


def edit_config(root, change):
    path = root / STEP / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def rehash(root, name):
    """Make the integrity table agree with an edited file, to reach the checks behind it."""
    digest = hashlib.sha256((root / STEP / name).read_bytes()).hexdigest()
    edit_config(root, lambda c: c["files"].__setitem__(name, digest))


def refused(root, path=None, *words, top=None) -> str:
    top = top or root.parent
    before = snapshot(top)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path or root)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message, message
    for word in words:
        assert word in message, (word, message)
    assert snapshot(top) == before
    return message


def set_key(key, value):
    return lambda c: c.__setitem__(key, value)


def set_model(key, value):
    return lambda c: c["model_config"].__setitem__(key, value)


def test_the_fixture_loads(root):
    assert load_checkpoint(root).step == 3


@pytest.mark.parametrize("content", [b"../ckpt2/step-000003", b"/etc", b"step-000999", b"\xff\xfe\x00garbage",
                                     b"", b"latest", b"..", b"step-000003/../step-000003"])
def test_latest_pointing_anywhere_but_a_step_directory_in_root(root, content):
    (root.parent / "ckpt2" / STEP).mkdir(parents=True)  # a real directory outside the root
    (root / "latest").write_bytes(content)
    refused(root, None, str(root / "latest"))


def test_latest_or_step_directory_as_symlink_is_refused(root, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(root / STEP, outside)
    (root / "step-000004").symlink_to(outside, target_is_directory=True)
    (root / "latest").write_text("step-000004")
    refused(root, None, "latest", "step-000004")
    (root / "latest").unlink()
    (root / "latest").symlink_to(root / STEP / "config.json")  # a symlink, and to a non-name
    refused(root, None, "latest")


def test_symlinked_file_is_refused(root, tmp_path):
    outside = tmp_path / "model.safetensors"
    shutil.copy(root / STEP / "model.safetensors", outside)
    (root / STEP / "model.safetensors").unlink()
    (root / STEP / "model.safetensors").symlink_to(outside)
    refused(root, None, "model.safetensors", "symbolic link")


@pytest.mark.parametrize("text", ["[1, 2]", '"x"', "null", '{"format": "minichord-checkpoint", "vers',
                                  "[" * 100_000, "\udcff"])
def test_config_json_that_is_not_an_object(root, text):
    (root / STEP / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    refused(root, None, str(root / STEP / "config.json"))


@pytest.mark.parametrize("field, value", [
    ("format", "something-else"), ("format", None), ("version", 1), ("version", True), ("version", "2"),
    ("version", 2.0), ("step", -1), ("step", True), ("step", None), ("step", 3.0), ("step", "3"), ("step", 4),
    ("meta", []), ("meta", None), ("meta", "x"), ("dtype", "float64"), ("dtype", None), ("dtype", ["float32"]),
    ("dtype", "float16"), ("dtype", "bfloat16"), ("files", None), ("files", []), ("files", {}),
    ("tokenizer_special_tokens", []), ("tokenizer_special_tokens", {"eos": 3}),
    ("model_config", None), ("model_config", [1]), ("model_config", "dim=32")])
def test_each_config_field_is_checked(root, field, value):
    edit_config(root, set_key(field, value))
    refused(root, None, "config.json", field)


@pytest.mark.parametrize("field", ["format", "version", "step", "meta", "dtype", "model_config", "files"])
def test_each_config_field_is_required(root, field):
    edit_config(root, lambda c: c.pop(field))
    refused(root, None, "config.json", field)


@pytest.mark.parametrize("field, value, words", [
    ("n_heads", 0, ["n_heads"]), ("rope_theta", math.nan, ["rope_theta"]), ("norm_eps", -1.0, ["norm_eps"]),
    ("dim", "many", ["dim"]), ("dim", 64, ["model.safetensors", "does not fit"]), ("vocab_size", 10**30, []),
    ("n_layers", 10**9, ["n_layers"]), ("n_layers", 3, ["does not fit"]), ("max_seq_len", 0, ["max_seq_len"]),
    ("tie_embeddings", False, ["does not fit"]), ("typo_key", 1, ["typo_key"])])
def test_model_config_values_are_checked(root, field, value, words):
    edit_config(root, set_model(field, value))
    t0 = time.perf_counter()
    refused(root, None, "model_config", *words)
    assert time.perf_counter() - t0 < 5


def test_files_table_is_required_and_verified(root):
    config = root / STEP / "config.json"
    edit_config(root, lambda c: c["files"].pop("tokenizer.json"))  # a file on disk not in the table
    refused(root, None, str(config), "files", "tokenizer.json")
    for name in ["../step-000003/model.safetensors", "/etc/passwd", "sub/model.safetensors", "config.json",
                 "other.bin"]:
        edit_config(root, lambda c: c["files"].__setitem__(name, "0" * 64))
        refused(root, None, str(config), "files", name)
        edit_config(root, lambda c: c["files"].pop(name))
    edit_config(root, lambda c: c["files"].pop("optimizer.safetensors"))
    refused(root, None, "files", "optimizer.safetensors")


@pytest.mark.parametrize("name", ["model.safetensors", "tokenizer.json", "optimizer.safetensors"])
def test_a_flipped_bit_in_any_file_is_caught_by_its_sha256(root, name):
    path = root / STEP / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 1
    path.write_bytes(bytes(data))
    refused(root, None, str(path), "sha256")
    path.unlink()
    refused(root, None, str(path), "missing")


def test_torn_safetensors_is_refused_even_with_a_matching_sha(root):
    path = root / STEP / "model.safetensors"
    for cut in (3, 100, path.stat().st_size // 2):
        data = path.read_bytes()
        path.write_bytes(data[:cut])
        rehash(root, "model.safetensors")
        refused(root, None, str(path))
        path.write_bytes(data)
        rehash(root, "model.safetensors")
    load_checkpoint(root)


def test_dtype_must_match_the_stored_weights(root):
    edit_config(root, set_key("dtype", "float16"))  # fp32 weights are never silently cast
    refused(root, None, "config.json", "dtype", "float16", "float32")


def test_tokenizer_ids_must_fit_the_model_rows(root, tok):
    text = json.loads(tok.to_json())
    big = next(t for t, i in text["model"]["vocab"].items() if i == tok.vocab_size - 1)
    edit_config(root, lambda c: c["tokenizer_special_tokens"].__setitem__("eos", big))
    load_checkpoint(root)  # the id fits: fine, eos is now that token
    edit_config(root, lambda c: c["model_config"].__setitem__("vocab_size", tok.vocab_size - 1))
    # the weights no longer fit either; make them fit to reach the tokenizer's check
    torch.manual_seed(0)
    small = Transformer(ModelConfig(vocab_size=tok.vocab_size - 1, dim=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                    ffn_dim=64, max_seq_len=32))
    other = save_checkpoint(root.parent / "small", small, step=3)
    shutil.copy(other / "model.safetensors", root / STEP / "model.safetensors")
    rehash(root, "model.safetensors")
    refused(root, None, str(root / STEP / "tokenizer.json"), f"'stop ids': {tok.vocab_size - 1}",
            f"'last id': {tok.vocab_size - 1}", f"model vocab_size {tok.vocab_size - 1}")


@pytest.mark.parametrize("value", [[], None, {"param_groups": 3, "state": {}}, {"param_groups": [], "state": {"x": {}}},
                                   {"param_groups": [], "state": []}, {"state": {}}])
def test_optimizer_field_is_checked(root, value):
    edit_config(root, set_key("optimizer", value))
    refused(root, None, "config.json", "optimizer")


def test_garbage_tokenizer_and_optimizer_files_are_refused(root):
    for name, data in [("tokenizer.json", b"{not json"), ("tokenizer.json", b'{"a": 1}'),
                       ("optimizer.safetensors", st_save({"exp_avg": torch.zeros(2)})),
                       ("optimizer.safetensors", b"\xff" * 16)]:
        saved = (root / STEP / name).read_bytes()
        (root / STEP / name).write_bytes(data)
        rehash(root, name)
        refused(root, None, name)
        (root / STEP / name).write_bytes(saved)
        rehash(root, name)


def test_not_a_checkpoint_at_all(tmp_path):
    refused(tmp_path / "none", None, "missing", str(tmp_path / "none"), top=tmp_path)
    (tmp_path / "file").write_text("x")
    refused(tmp_path / "file", None, "file", top=tmp_path)
    (tmp_path / "dir").mkdir()
    refused(tmp_path / "dir", None, "dir", top=tmp_path)


@pytest.mark.parametrize("damage", ["latest", "dtype", "sha", "model_config"])
def test_cli_eval_prints_one_line_and_no_traceback(root, capsys, damage):
    if damage == "latest":
        (root / "latest").write_text("../../etc")
    elif damage == "sha":
        (root / STEP / "model.safetensors").write_bytes(b"\0" * 100)
    else:
        edit_config(root, set_key("dtype", "float16") if damage == "dtype" else set_model("n_heads", 0))
    before = snapshot(root)
    assert main(["eval", str(root), "--n-test", "2"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "error" in err, err
    assert snapshot(root) == before


# ---- a programmatic mutation test ------------------------------------------------------------------

BAD_VALUES = [None, "x", [], {}, [1, 2], -1, 0, math.nan, math.inf, 10**30, "float64", "../model.safetensors",
              "/etc/passwd", True, 1.5]


def config_mutations(config):
    """(description, change) for every field of config.json, its model_config and its files table."""
    out = [("extra key", set_key("unknown", 1)), ("extra model key", set_model("unknown", 1))]
    for key in config:
        out.append((f"delete {key}", lambda c, k=key: c.pop(k)))
        out += [(f"{key}={v!r}", set_key(key, v)) for v in BAD_VALUES]
    for key in config["model_config"]:
        out.append((f"delete model_config.{key}", lambda c, k=key: c["model_config"].pop(k)))
        out += [(f"model_config.{key}={v!r}", set_model(key, v)) for v in BAD_VALUES]
    for name in config["files"]:
        out.append((f"delete files.{name}", lambda c, n=name: c["files"].pop(n)))
        out += [(f"files.{name}={v!r}", lambda c, n=name, v=v: c["files"].__setitem__(n, v))
                for v in (None, "0" * 64, 7, "")]
        out.append((f"files key {name} -> ../{name}", lambda c, n=name: c["files"].__setitem__(f"../{n}", c["files"].pop(n))))
    return out


def binary_mutations(names, rng):
    out = []
    for name in names:
        for _ in range(3):
            out.append((f"flip a byte of {name}", lambda d, n=name: flip(d / n, rng)))
        out.append((f"truncate {name}", lambda d, n=name: (d / n).write_bytes((d / n).read_bytes()[:rng.randrange(
            max(1, (d / n).stat().st_size))])))
        out.append((f"empty {name}", lambda d, n=name: (d / n).write_bytes(b"")))
        out.append((f"delete {name}", lambda d, n=name: (d / n).unlink()))
    for a, b in [(x, y) for x in names for y in names if x < y]:
        out.append((f"swap {a} {b}", lambda d, a=a, b=b: swap(d / a, d / b)))
    return out


def flip(path, rng):
    data = bytearray(path.read_bytes())
    data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def swap(a, b):
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def test_mutations_either_load_the_same_weights_or_are_refused_in_one_line(original, tmp_path):
    rng = random.Random(2024)
    reference = load_checkpoint(original).model.state_dict()
    config = json.loads((original / STEP / "config.json").read_text())
    names = sorted(p.name for p in (original / STEP).iterdir())
    mutations = [("config", d, f) for d, f in config_mutations(config)]
    mutations += [("binary", d, f) for d, f in binary_mutations(names, rng)]
    outcomes = {"loaded": 0, "refused": 0}
    for i, (kind, description, change) in enumerate(mutations):
        root = tmp_path / f"m{i}"
        shutil.copytree(original, root)
        change(root / STEP) if kind == "binary" else edit_config(root, change)
        before, t0 = snapshot(root), time.perf_counter()
        try:
            ckpt = load_checkpoint(root)
            for (name, a), b in zip(reference.items(), ckpt.model.state_dict().values(), strict=True):
                assert torch.equal(a, b), (description, name)
            outcomes["loaded"] += 1
        except CheckpointError as e:
            assert "\n" not in str(e), (description, str(e))
            outcomes["refused"] += 1
        assert time.perf_counter() - t0 < 5, description
        assert snapshot(root) == before, description
        shutil.rmtree(root)
    print(f"checkpoint mutations: {len(mutations)} ({outcomes['loaded']} loaded the same weights, "
          f"{outcomes['refused']} refused in one line)")
    assert len(mutations) >= 80 and sum(outcomes.values()) == len(mutations)
    assert outcomes["refused"] > outcomes["loaded"] > 0, outcomes
