"""Shared test set-up. Triton kernels run under the interpreter on machines without CUDA;
the variable must be set before any kernel is decorated, hence here, before test imports."""

import importlib.util
import os
import random
import shutil
from pathlib import Path

import pytest

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def load_script(name: str):
    """A module of scripts/ (developer tools outside the package), loaded from its file."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parent.parent / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _free_tmp_path(request):
    """A passing test's tmp_path is removed as soon as it ends: the real-model tests write 1.6 GB checkpoints
    (weights and AdamW moments of 135M parameters), and kept until the session ends they filled a CI disk."""
    yield
    path = request.node.funcargs.get("tmp_path")
    report = getattr(request.node, "rep_call", None)
    if path is not None and (report is None or report.passed):
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if call.when == "call":
        item.rep_call = report
    return report


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A small random model + tokenizer checkpoint standing in for the pre-trained base (CLI and probe tests)."""
    from minichord.checkpoint import save_checkpoint
    from minichord.config import ModelConfig
    from minichord.model import Transformer
    from minichord.tasks import style_texts
    from minichord.tokenizer import Tokenizer

    tok = Tokenizer.train(style_texts(random.Random(0), 200), vocab_size=160)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                    ffn_dim=64, max_seq_len=128))
    return save_checkpoint(tmp_path_factory.mktemp("base") / "ckpt", model, tokenizer=tok)
