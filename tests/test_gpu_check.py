"""benchmarks/gpu_check.sh --dry-run: the GPU check's own code, on the CPU with tiny shapes, so it cannot rot
between the (rare) runs on a lent GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run_passes(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, TRITON_INTERPRET="1")
    env.pop("MINICHORD_KERNELS", None)
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--json", str(tmp_path / "r.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.strip().splitlines()
    header = table.index("| check | result |")
    rows = table[header + 2:]
    assert len(rows) == 13 and table[-1] == rows[-1], "the table must come last, one row per check"
    assert not any("FAILED" in row for row in rows), rows
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result["train"]) == {"triton", "torch"} and set(result["fused"]) == {"naive", "chunked", "triton"}
    assert result["train"]["triton"]["backend_line"].startswith("loss backend: triton fused")
    assert "2 passed" in result["tests"]
    generate = result["generate"]["contenders"]  # transformers, minichord (eager), minichord compiled
    assert len(generate) == 3 and all(c["equal_tokens"] == 1.0 for c in generate.values()), generate


def test_gpu_check_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--skip", "tests"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device here; use --dry-run" in proc.stderr
