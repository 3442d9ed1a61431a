"""A Hub id (owner/name[@revision]) wherever a model directory is accepted, resolved through huggingface_hub.

No test touches the network: each lays out huggingface_hub's cache itself (models--owner--name/refs/main and
snapshots/COMMIT/) and sets offline mode, so what is cached loads and what is not is one line.
"""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from minichord.cli import main
from minichord.hf import is_hub_id, load_model

FIXTURE = Path(__file__).parent / "fixtures" / "hf" / "qwen2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cache_model(hub: Path, repo: str, files_from: Path = FIXTURE) -> Path:
    """`repo` as huggingface_hub caches it: refs/main names a commit, snapshots/COMMIT holds the files."""
    repo_dir = hub / ("models--" + repo.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    shutil.copytree(files_from, repo_dir / "snapshots" / COMMIT)
    return repo_dir / "snapshots" / COMMIT


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty cache of the user's (HF_HUB_CACHE) with the network off (HF_HUB_OFFLINE=1)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def prompts_file(tmp_path) -> Path:
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"prompt": "What is 2 + 3?", "answer": "5"}) + "\n")
    return path


@pytest.mark.parametrize("name", ["tiny-org/tiny-qwen2", f"tiny-org/tiny-qwen2@{COMMIT}", "tiny-org/tiny-qwen2@main"])
def test_a_cached_hub_id_loads_exactly_as_its_directory(hub, name):
    cache_model(hub, "tiny-org/tiny-qwen2")
    (model, tokenizer), (ref, ref_tokenizer) = load_model(name), load_model(FIXTURE)
    ids = torch.tensor([ref_tokenizer.encode("hello world")])  # [1, T]
    assert tokenizer.encode("hello world") == ref_tokenizer.encode("hello world")
    assert torch.equal(model(ids), ref(ids))


def test_commands_take_a_hub_id(hub, tmp_path, capsys):
    cache_model(hub, "tiny-org/tiny-qwen2")
    assert main(["eval", "--model", "tiny-org/tiny-qwen2", "--prompts", str(prompts_file(tmp_path)),
                 "--max-new-tokens", "4"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_nothing_cached_offline_is_one_line_and_nothing_is_trained(hub, tmp_path, capsys):
    out, experts = tmp_path / "run", tmp_path / "experts.jsonl"
    experts.write_text(json.dumps({"prompt": "What is 2 + 3?", "response": "2 + 3 = 5\nanswer: 5"}) + "\n")
    argv = ["train", "--method", "chord-phi", "--model", "nobody/absent-model", "--prompts",
            str(prompts_file(tmp_path)), "--experts", str(experts), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nobody/absent-model' is not a local directory" in err
    assert "nothing of it is cached" in err and "--local-dir DIR" in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["a/b/c", "owner/", "/owner/name", "-owner/name", "owner/name@", "own er/name",
                                  "owner/..", "owner"])
def test_a_malformed_hub_id_is_refused_by_the_argument_parser(hub, name, capsys):
    assert not is_hub_id(name)
    with pytest.raises(SystemExit) as e:
        main(["chat", f"--model={name}", "hi"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "Hub id owner/name[@revision]" in err[-1]


def test_a_hub_model_that_is_not_a_causal_lm_is_one_line(hub, tmp_path, capsys):
    bert = tmp_path / "bert"
    shutil.copytree(FIXTURE, bert)
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"], "model_type": "bert"}))
    cache_model(hub, "tiny-org/bert", bert)
    assert main(["chat", "--model", "tiny-org/bert", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "architectures=['BertModel']" in err


def test_without_huggingface_hub_one_line_names_the_extra(hub, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    assert main(["chat", "--model", "tiny-org/tiny-qwen2", "hi"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "minichord[hub]"' in err


def test_a_local_directory_wins_over_the_hub(hub, tmp_path, monkeypatch):
    local = tmp_path / "org" / "model"
    shutil.copytree(FIXTURE, local)
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("org/model") and is_hub_id("org/other")
