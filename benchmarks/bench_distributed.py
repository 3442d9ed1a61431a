"""Data-parallel ranks against one process on the same machine (README "More than one GPU"): CHORD-phi steps/s of
`minichord train` as one process with T threads, as torchrun with 1 rank, and as N ranks x T/N threads, side by
side in one run, with the largest process's peak RSS. The toy model on the CPU by default; `--device cuda` with N
GPUs for the GPU figures (then each rank has a GPU; 1 rank under torchrun is the one-process path by design).

    .venv/bin/python benchmarks/bench_distributed.py [--ranks 2] [--threads 2] [--steps 8] [--repeats 3]

steps/s = (steps - 1) / the summed step times (sample + score + train, as metrics.jsonl records them, rank 0's),
leaving out the first step (warm-up); each number is the median of --repeats runs with the range, the three
launches alternating within each repeat. Runs write to a temporary directory and leave nothing behind.
"""

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ranks: int | None, threads: int, args, out: Path) -> float:
    """steps/s of one `minichord train`: ranks None = a plain process; else torchrun with `ranks` ranks."""
    run = [sys.executable, "-m", "minichord.cli", "train", "--method", "chord-phi", "--out", str(out), "--no-resume"]
    if ranks is not None:
        run = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks), "--master-port",
               str(free_port()), *run[1:]]
    for setting in (f"steps={args.steps}", "eval_every=100000", "save_every=100000", "n_test=8",
                    f"device={args.device}", f"seed={args.seed}"):
        run += ["--set", setting]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(run, check=True, capture_output=True, text=True, env=env, cwd=ROOT)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]
    return len(rows) / sum(r["time_sample"] + r["time_score"] + r["time_train"] for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2, help="ranks of the data-parallel launch")
    p.add_argument("--threads", type=int, default=2, help="threads in all (one process: all; ranks: threads/ranks)")
    p.add_argument("--steps", type=int, default=8, help="steps per launch (the first is left out)")
    p.add_argument("--repeats", type=int, default=3, help="launches of each kind")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    kinds = {f"1 process x {args.threads} threads": (None, args.threads),
             f"torchrun, 1 rank x {args.threads} threads": (1, args.threads),
             f"torchrun, {args.ranks} ranks x {max(1, args.threads // args.ranks)} thread(s)":
                 (args.ranks, max(1, args.threads // args.ranks))}
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "minichord.cli", "pretrain"], check=True, capture_output=True, cwd=ROOT)
        for r in range(args.repeats):
            for name, (ranks, threads) in kinds.items():
                rates[name].append(launch(ranks, threads, args, Path(tmp) / f"{r}-{len(rates[name])}"))
    base = statistics.median(rates[next(iter(kinds))])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"CHORD-phi on the toy, {args.device}, {args.steps} steps (first left out), median of {args.repeats} "
          f"(range); peak RSS of the largest process: {peak_mb:.0f} MB\n")
    print("| launch | steps/s | vs 1 process |\n|---|---|---|")
    for name, values in rates.items():
        print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) | "
              f"{statistics.median(values) / base:.2f}x |")


if __name__ == "__main__":
    main()
