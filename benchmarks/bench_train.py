"""One RL training step of the default toy setting, timed by phase (sample / score / train).

    python benchmarks/bench_train.py                    # random-init default model
    python benchmarks/bench_train.py --init ~/.cache/minichord/base --method chord-phi

Prints a markdown table: seconds per phase (median over --steps after --warmup), tokens/s of
sampling (generated tokens) and of training (loss tokens, forward + backward), peak RSS.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import tempfile
import time

import torch

from minichord.checkpoint import load_checkpoint
from minichord.config import ModelConfig
from minichord.methods import build_stages
from minichord.model import Transformer
from minichord.tasks import style_texts
from minichord.tokenizer import Tokenizer
from minichord.data import build_train_data
from minichord.trainer import Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="chord-phi", help="method preset (default chord-phi)")
    ap.add_argument("--init", default="", help="checkpoint to start from (default: random-init ModelConfig())")
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.init:
        ckpt = load_checkpoint(args.init)
        model, tok = ckpt.model, ckpt.tokenizer
    else:
        tok = Tokenizer.train(style_texts(random.Random(0), 500), vocab_size=256)
        torch.manual_seed(0)
        model = Transformer(ModelConfig(vocab_size=tok.vocab_size))
    steps = args.warmup + args.steps
    stages = build_stages(args.method, overrides=[f"steps={steps}", "eval_every=100000", "save_every=100000",
                                                  *args.set])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(stages, model, tok, build_train_data(stages[0].cfg), tmp, log=lambda s: None)
        rows = []
        for step in range(steps):
            t0 = time.perf_counter()
            m = trainer.train_step(step)
            m["time_total"] = time.perf_counter() - t0
            if step >= args.warmup:
                rows.append(m)
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("time_sample", "time_score", "time_train", "time_total", "tokens", "response_length")}
    cfg = stages[0].cfg
    gen_tokens = med["response_length"] * cfg.prompts_per_step * cfg.group_size
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model {model.num_params() / 1e6:.2f}M params | {args.method} | B={cfg.prompts_per_step} G={cfg.group_size} "
          f"E={cfg.experts_per_step} | {'init ' + args.init if args.init else 'random init'} | "
          f"torch threads {torch.get_num_threads()}\n")
    print("| sample s | score s | train s | step s | sampled tok/s | trained tok/s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {med['time_sample']:.3f} | {med['time_score']:.3f} | {med['time_train']:.3f} | {med['time_total']:.3f} "
          f"| {gen_tokens / med['time_sample']:.0f} | {med['tokens'] / med['time_train']:.0f} | {peak_mb:.0f} |")
    print(f"\nmedian of {args.steps} steps after {args.warmup} warm-up; command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
