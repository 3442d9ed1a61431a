"""Every tutorial runs to the end (its own asserts check the math), and the index lists it.

Each tutorial runs in a fresh subprocess, in an empty temporary working directory, with
MINICHORD_TUTORIAL_QUICK=1 (tutorial 07's small setting, MINICHORD_HOME in a temp dir) and
TRITON_INTERPRET=1 when there is no CUDA (tutorial 03 runs the Triton kernel on the CPU),
OMP_NUM_THREADS=1.
New tutorials are picked up by the glob.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
TUTORIALS = sorted(TUTORIALS_DIR.glob("[0-9][0-9]_*.py"))


def test_tutorials_exist():
    assert len(TUTORIALS) >= 8, f"expected the numbered tutorials in {TUTORIALS_DIR}, found {TUTORIALS}"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    env = dict(os.environ)
    env["MINICHORD_TUTORIAL_QUICK"] = "1"
    env["MINICHORD_HOME"] = str(tmp_path / "home")
    env["MPLBACKEND"] = "Agg"
    # The tutorials' tensors are tiny: one thread per process is faster than two, and avoids
    # oversubscribing the cores when the suite shares a small CI machine.
    env["OMP_NUM_THREADS"] = "1"
    env.pop("MINICHORD_KERNELS", None)  # each tutorial sees the default dispatch
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    work = tmp_path / "cwd"
    work.mkdir()
    proc = subprocess.run([sys.executable, str(path)], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, (
        f"{path.name} failed (exit {proc.returncode})\n--- stdout (tail) ---\n{proc.stdout[-3000:]}"
        f"\n--- stderr (tail) ---\n{proc.stderr[-5000:]}")


def test_readme_lists_every_tutorial():
    readme = (TUTORIALS_DIR / "README.md").read_text()
    missing = [p.name for p in TUTORIALS if p.name not in readme]
    assert not missing, f"tutorials/README.md does not list: {missing}"


def test_tutorials_are_percent_format_and_import_minichord():
    for path in TUTORIALS:
        text = path.read_text()
        assert text.startswith("# %%"), f"{path.name}: first line should be a '# %%' cell marker"
        assert "from minichord" in text or "import minichord" in text, f"{path.name} imports nothing from minichord"
        assert "assert " in text, f"{path.name} checks nothing"
