"""Nothing is lost: a writer never replaces a directory it did not create, a checkpoint root without a readable
`latest` is recovered from its newest step directory (never treated as empty), pruning keeps newer steps."""

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch

from minichord.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from minichord.cli import main


def tree(root: Path) -> dict[str, str]:
    """Every file under root (links as their target) -> sha256: what a command must leave as it was."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p)] = "-> " + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def run_root(tiny_ckpt, tmp_path) -> Path:
    """A run directory with a checkpoint root of two step directories (as a finished run leaves it)."""
    root = tmp_path / "run" / "checkpoint"
    ckpt = load_checkpoint(tiny_ckpt)
    for step in (10, 20):
        save_checkpoint(root, ckpt.model, tokenizer=ckpt.tokenizer, step=step)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 0}\n')
    return root


def one_line_refusal(capsys, argv, *needles) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    return err


@pytest.mark.parametrize("target", ["root", "step", "run", "model-dir"])
def test_export_never_replaces_a_directory_it_did_not_write(run_root, tmp_path, capsys, target):
    model_dir = tmp_path / "downloaded"  # someone's model: more files than an export writes
    shutil.copytree(Path(__file__).parent / "fixtures" / "hf" / "qwen2", model_dir)
    (model_dir / "README.md").write_text("a model card\n")
    out = {"root": run_root, "step": run_root / "step-000020", "run": run_root.parent, "model-dir": model_dir}[target]
    before = tree(tmp_path)
    one_line_refusal(capsys, ["export", str(run_root), str(out)], f"refusing to replace {out}", "new or empty")
    assert tree(tmp_path) == before


def test_export_into_a_new_an_empty_or_its_own_earlier_export(run_root, tmp_path, capsys):
    (empty := tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", empty, empty):  # the third replaces the second's export
        assert main(["export", str(run_root), str(out)]) == 0
        assert json.loads((out / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp or old directory left


def test_a_root_without_latest_is_recovered_from_its_newest_step(run_root, capsys):
    (run_root / "latest").unlink()  # as a kill between the first step directory's rename and `latest`
    assert checkpoint_exists(run_root)
    assert load_checkpoint(run_root).step == 20
    assert "no `latest`; using the newest complete step directory, step-000020" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["loop", "dangling", "garbage"])
def test_a_broken_latest_is_a_refusal_never_an_empty_root(run_root, tmp_path, capsys, damage):
    latest = run_root / "latest"
    latest.unlink()
    if damage == "garbage":
        latest.write_text("../../elsewhere")
    else:
        os.symlink("latest" if damage == "loop" else "step-000099", latest)
    assert checkpoint_exists(run_root)  # a trainer resumes (and is refused), never starts over at step 0
    before = tree(tmp_path)
    one_line_refusal(capsys, ["eval", str(run_root)], str(latest))
    assert tree(tmp_path) == before


def test_a_kill_before_the_first_latest_resumes_instead_of_restarting(run_root, capsys):
    (run_root / "latest").unlink()  # as a kill between the first step directory's rename and `latest`
    shutil.rmtree(run_root / "step-000010")
    assert checkpoint_exists(run_root) and load_checkpoint(run_root).step == 20


def test_pruning_keeps_steps_newer_than_the_one_saved(run_root):
    ckpt = load_checkpoint(run_root)
    for step in (30, 40, 50):
        save_checkpoint(run_root, ckpt.model, tokenizer=ckpt.tokenizer, step=step)
    save_checkpoint(run_root, ckpt.model, tokenizer=ckpt.tokenizer, step=5)  # a run restarted below them
    names = sorted(p.name for p in run_root.iterdir())
    assert names == ["latest", "step-000005", "step-000030", "step-000040", "step-000050"]
    assert load_checkpoint(run_root).step == 5  # `latest` names the step just saved


def test_a_root_with_only_temp_directories_is_empty(tmp_path):
    (tmp_path / "checkpoint" / ".tmp-step-000010-abc").mkdir(parents=True)
    assert not checkpoint_exists(tmp_path / "checkpoint")


def test_non_finite_weights_are_refused_at_load(run_root, capsys):
    ckpt = load_checkpoint(run_root)
    with torch.no_grad():
        next(ckpt.model.parameters())[0, 0] = float("nan")
    save_checkpoint(run_root, ckpt.model, tokenizer=ckpt.tokenizer, step=30)  # sha256 re-signed over the NaN
    with pytest.raises(Exception, match="not finite"):
        load_checkpoint(run_root)


@pytest.fixture
def adam_root(tmp_path) -> Path:
    """A checkpoint with an AdamW state after one update."""
    from minichord.config import ModelConfig
    from minichord.model import Transformer

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32,
                                    max_seq_len=16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    optimizer.step()
    save_checkpoint(tmp_path / "ckpt", model, optimizer=optimizer, step=1)
    return tmp_path / "ckpt" / "step-000001"


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("key, value", [("betas", [0.9, 1.5]), ("betas", [0.9]), ("betas", [-0.1, 0.9]),
                                        ("lr", "1e-3"), ("lr", -1.0), ("eps", None), ("weight_decay", True)])
def test_adam_settings_are_checked_for_meaning(adam_root, key, value):
    edit_json(adam_root / "config.json", lambda c: c["optimizer"]["param_groups"][0].__setitem__(key, value))
    with pytest.raises(Exception, match="optimizer.param_groups.*betas two in"):
        load_checkpoint(adam_root)


def test_a_missing_moment_is_one_line_not_a_key_error(adam_root):
    from safetensors.torch import load_file, save_file

    tensors = load_file(adam_root / "optimizer.safetensors")
    del tensors["state.0.exp_avg_sq"]
    save_file(tensors, adam_root / "optimizer.safetensors")
    digest = hashlib.sha256((adam_root / "optimizer.safetensors").read_bytes()).hexdigest()
    edit_json(adam_root / "config.json", lambda c: c["files"].__setitem__("optimizer.safetensors", digest))
    with pytest.raises(Exception, match=r"field 'state.0' must be AdamW's state"):
        load_checkpoint(adam_root)


def test_eos_must_be_another_token_than_pad():
    from minichord.tokenizer import Tokenizer, TokenizerError

    tok = Tokenizer.train(["What is 12 + 34? 46.", "hello world"] * 5, vocab_size=160)
    with pytest.raises(TokenizerError, match=re.escape("eos '<|pad|>' must be another token than pad")):
        Tokenizer.from_json(tok.to_json(), {"eos": tok.special_tokens["pad"]})


def test_a_word_level_tokenizer_without_its_unknown_token_is_refused_at_load():
    from tokenizers import Tokenizer as HFTokenizer, models

    from minichord.tokenizer import Tokenizer, TokenizerError

    words = ["<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "a", "b"]
    text = HFTokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)})).to_str()
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json: .*Missing \\[UNK\\]"):
        Tokenizer.from_json(text, dict(zip(["pad", "bos", "eos", "user", "assistant"], words)))


def test_no_command_changes_a_file_it_was_not_asked_to_write(run_root, tmp_path, capsys):
    """A property: random commands over a tree of checkpoints, runs, a model and data files change only the paths
    named as their output (export's OUT_DIR, train's --out, plot's -o, data's --out / --experts)."""
    import random

    shutil.copytree(Path(__file__).parent / "fixtures" / "hf" / "qwen2", tmp_path / "model")
    (tmp_path / "empty").mkdir()
    (tmp_path / "prompts.jsonl").write_text(json.dumps({"prompt": "add 1 2", "answer": "3"}) + "\n")
    (run_root.parent / "samples.jsonl").write_text(json.dumps({"step": 0, "samples": []}) + "\n")
    paths = [run_root.parent, run_root, run_root / "step-000020", run_root / "latest", tmp_path / "model",
             tmp_path / "empty", tmp_path / "prompts.jsonl", run_root.parent / "metrics.jsonl", tmp_path,
             tmp_path / "new", tmp_path / "new" / "deeper"]
    rng, codes = random.Random(0), []
    for _ in range(100):
        p = [str(rng.choice(paths[:5] if i == 0 and rng.random() < 0.5 else paths)) for i in range(3)]
        argv, outputs = rng.choice([
            (["export", p[0], p[1]], [p[1]]),
            (["eval", p[0], "--n-test", "2", "--max-new-tokens", "2"], []),
            (["eval", "--model", p[0], "--prompts", p[1], "--max-new-tokens", "2"], []),
            (["chat", "--model", p[0], "hi", "--max-new-tokens", "2"], []),
            (["check", p[0]], []),
            (["samples", p[0]], []),
            (["plot", p[0], "-o", p[1]], [p[1], p[1] + ".png"]),  # matplotlib adds the suffix
            (["train", "--method", "sft", "--out", p[0], "--set", f"init={p[1]}", "--set", "steps=1",
              "--set", "n_test=2", "--set", "experts_per_step=1", "--set", "eval_every=1"], [p[0]]),
        ])
        before = tree(tmp_path)
        try:
            codes.append((argv[0], main(argv)))
        except SystemExit as e:  # argparse's refusals
            codes.append((argv[0], e.code))
        capsys.readouterr()
        after = tree(tmp_path)
        changed = {f for f in before.keys() | after.keys() if before.get(f) != after.get(f)}
        stray = [f for f in changed if not any(f == o or f.startswith(o.rstrip("/") + "/") for o in outputs)]
        assert not stray, (argv, stray)
    assert {cmd for cmd, code in codes if code == 0} >= {"export", "train", "samples"}  # not only refusals


@pytest.mark.parametrize("delay", [0.1, 0.6])
def test_a_ctrl_c_while_starting_is_never_lost(tmp_path, delay):
    """Even with SIGINT ignored by the parent (a shell's background job), a Ctrl-C during the imports stops the run
    with one line; the run never trains to its end."""
    import signal
    import subprocess
    import sys
    import time

    minichord = Path(sys.executable).parent / "minichord"
    run = subprocess.Popen([str(minichord), "train", "--method", "chord-phi", "--out", str(tmp_path / "run"),
                            "--set", "steps=50", "--set", "n_test=4"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(delay)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=300)
    assert run.returncode != 0 and "Traceback" not in err
    assert "interrupted" in err or "stopped by SIGINT" in err, err
    ckpt = tmp_path / "run" / "checkpoint"
    assert not checkpoint_exists(ckpt) or load_checkpoint(ckpt).step < 50
