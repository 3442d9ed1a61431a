"""SmolLM2-135M-Instruct on this machine's CPU (README "Use your own model"): load time, greedy decoding
tokens/s at batch 1 and 8, and seconds per CHORD-phi step on GSM8K-format rows. Needs `make real-model`.

    .venv/bin/python benchmarks/bench_real_model.py [--model DIR] [--repeats 3]

Each number is the median of --repeats runs (after one warm-up for decoding), with the range.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from minichord.chat import ChatTokenizer
from minichord.cli import main
from minichord.config import SamplerConfig
from minichord.pretrain import default_base_dir
from minichord.hf import load_hf_model
from minichord.sampler import generate

QUESTION = "A farmer has 17 sheep and buys 25 more. How many sheep does he have now?"
ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeats: int) -> tuple[float, float, float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def main_() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(default_base_dir().parent / "smollm2-135m-instruct"), help="HF model directory")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (median, range)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence (no early stop)")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}")

    load = timed(lambda: load_hf_model(args.model), args.repeats)
    print(f"| load_hf_model (fp32) | {load[0]:.2f} s [{load[1]:.2f}-{load[2]:.2f}] |")
    model, tok = load_hf_model(args.model), ChatTokenizer.from_dir(args.model)
    prompt = tok.encode_prompt(QUESTION)
    cfg = SamplerConfig(max_new_tokens=args.new_tokens, greedy=True)
    for batch in (1, 8):
        run = lambda: generate(model, [prompt] * batch, cfg, eos_id=-1, pad_id=tok.pad_id)  # noqa: E731 (no stop)
        run()  # warm-up
        t = timed(run, args.repeats)
        n = batch * args.new_tokens
        print(f"| greedy decode, batch {batch} x {args.new_tokens} new tokens | {n / t[0]:.0f} tokens/s "
              f"[{n / t[2]:.0f}-{n / t[1]:.0f}] |")

    data = ROOT / "tests" / "fixtures" / "gsm8k"
    with tempfile.TemporaryDirectory() as out:
        steps = 1 + args.repeats
        argv = ["train", "--method", "chord-phi", "--model", args.model, "--prompts", str(data / "train.jsonl"),
                "--experts", str(data / "train.jsonl"), "--out", out, "--set", f"steps={steps}",
                "--set", "prompts_per_step=2", "--set", "group_size=4", "--set", "experts_per_step=2",
                "--set", "sampler.max_new_tokens=64", "--set", f"save_every={steps}", "--set", "lr=1e-6"]
        assert main(argv) == 0
        rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()][1:]
    per_step = [r["time_sample"] + r["time_score"] + r["time_train"] for r in rows]
    sample, train = statistics.median(r["time_sample"] for r in rows), statistics.median(r["time_train"] for r in rows)
    print(f"| CHORD-phi step, 2 prompts x 4 rollouts (<= 64 new tokens) + 2 GSM8K expert demos | "
          f"{statistics.median(per_step):.1f} s [{min(per_step):.1f}-{max(per_step):.1f}] "
          f"(sampling {sample:.1f} s, update {train:.1f} s; step 0 excluded as warm-up) |")


if __name__ == "__main__":
    main_()
