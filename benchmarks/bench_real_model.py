"""SmolLM2-135M-Instruct on this machine's CPU (README "Use your own model"): load time, greedy decoding
tokens/s at batch 1, 8 and 32 side by side with transformers' `generate` on the same weights, and seconds per
CHORD-phi step on GSM8K-format rows. Needs `make real-model` (transformers: `pip install -e ".[real]"`).

    .venv/bin/python benchmarks/bench_real_model.py [--model DIR] [--repeats 3] [--threads 2]

Each number is the median of --repeats runs (after one warm-up for decoding), with the range. Decoding: the batch
is B copies of one chat-rendered prompt (no padding), --new-tokens each with no early stop (minichord: eos_id=-1;
transformers: min_new_tokens), minichord and transformers alternating within each repeat; the ratio is the median
(and range) of the per-repeat ratios; "equal tokens" is the fraction of the B x N greedy tokens the two agree on.
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


def hf_greedy(model_dir: str, new_tokens: int, pad_id: int):
    """transformers' greedy generate on the same weights: ids [B, P] -> its new tokens [B, new_tokens]; None (one
    line printed) when transformers is not installed."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        print('transformers is not installed: `pip install -e ".[real]"` for the transformers columns (skipped)')
        return None
    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()

    @torch.inference_mode()
    def run(ids: torch.Tensor) -> torch.Tensor:
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, pad_token_id=pad_id)
        return out[:, ids.shape[1]:]
    return run


def main_() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(default_base_dir().parent / "smollm2-135m-instruct"), help="HF model directory")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (median, range)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence (no early stop)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (both contenders)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, model {args.model}")

    load = timed(lambda: load_hf_model(args.model), args.repeats)
    print(f"| load_hf_model (fp32) | {load[0]:.2f} s [{load[1]:.2f}-{load[2]:.2f}] |")
    model, tok = load_hf_model(args.model), ChatTokenizer.from_dir(args.model)
    prompt = tok.encode_prompt(QUESTION)
    cfg, n_new = SamplerConfig(max_new_tokens=args.new_tokens, greedy=True), args.new_tokens
    hf_run = hf_greedy(args.model, n_new, tok.pad_id)
    print(f"\n| greedy decode, {len(prompt)}-token prompt x batch + {n_new} new tokens | minichord tokens/s | "
          f"transformers tokens/s | minichord / transformers | equal tokens |\n|---|---|---|---|---|")
    for batch in (1, 8, 32):
        ids = torch.tensor([prompt] * batch)
        runs = {"minichord": lambda: generate(model, [prompt] * batch, cfg, eos_id=-1, pad_id=tok.pad_id).tokens}
        if hf_run is not None:
            runs["transformers"] = lambda: hf_run(ids)
        tokens = {name: run() for name, run in runs.items()}  # warm-up, and the greedy tokens compared
        times = {name: [] for name in runs}
        for _ in range(args.repeats):  # the contenders alternate within each repeat
            for name, run in runs.items():
                times[name].append(timed(run, 1)[0])
        speed = {name: sorted(batch * n_new / t for t in ts) for name, ts in times.items()}
        cells = [f"{statistics.median(v):.0f} [{v[0]:.0f}-{v[-1]:.0f}]" for v in speed.values()]
        if hf_run is None:
            cells += ["-", "-", "-"]
        else:
            ratios = sorted(h / m for m, h in zip(times["minichord"], times["transformers"]))
            equal = (tokens["minichord"] == tokens["transformers"]).sum().item()
            cells += [f"{statistics.median(ratios):.2f}x [{ratios[0]:.2f}-{ratios[-1]:.2f}]",  # per-repeat ratios
                      f"{equal / tokens['minichord'].numel():.3f} "
                      f"({equal}/{tokens['minichord'].numel()})"]
        print(f"| batch {batch} | " + " | ".join(cells) + " |")
    print()

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
