"""Sampler benchmark: generated tokens/s with and without the KV cache, and peak memory.

    python benchmarks/bench_sampler.py                    # default toy model, batch 256, 64 new tokens
    python benchmarks/bench_sampler.py --device cuda --dtype bf16

The model is ModelConfig() with random weights; eos is disabled (eos_id=-1) so every sequence
generates exactly --new-tokens tokens. Each mode runs in its own fresh process so that its
peak memory is its own: on CPU the growth of the process's max RSS (resource.getrusage)
during generation, on CUDA torch.cuda.max_memory_allocated above the memory held before.
tokens/s counts generated tokens only (batch * new_tokens / seconds), median of --repeats.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shlex
import statistics
import sys
import time

import torch

from minichord.config import ModelConfig, SamplerConfig
from minichord.model import Transformer
from minichord.sampler import generate

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run_mode(args: argparse.Namespace, use_cache: bool) -> dict:
    """Runs in a child process: build the model, warm up, time `repeats` generations."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = Transformer(ModelConfig()).to(device=device, dtype=DTYPES[args.dtype]).eval()
    g = torch.Generator().manual_seed(args.seed)
    prompts = torch.randint(0, model.cfg.vocab_size, (args.batch_size, args.prompt_len), generator=g).tolist()
    cfg = SamplerConfig(max_new_tokens=args.new_tokens, temperature=1.0)
    gen = torch.Generator(device=device)

    def once(n_new: int) -> float:
        gen.manual_seed(args.seed)
        c = SamplerConfig(max_new_tokens=n_new, temperature=cfg.temperature)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate(model, prompts, c, eos_id=-1, pad_id=0, generator=gen, use_cache=use_cache)
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert out.tokens.shape == (args.batch_size, n_new)
        return time.perf_counter() - start

    once(2)  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    seconds = [once(args.new_tokens) for _ in range(args.repeats)]
    if device.type == "cuda":
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    median = statistics.median(seconds)
    return {"tok_s": args.batch_size * args.new_tokens / median, "seconds": median, "peak_mb": peak_mb}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=256, help="number of prompts generated at once")
    p.add_argument("--prompt-len", type=int, default=16, help="tokens per (random) prompt")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per prompt (eos disabled)")
    p.add_argument("--repeats", type=int, default=3, help="timed generations per mode; the median is reported")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="model parameter dtype")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads; 1 by default: on a shared, busy machine more threads can be "
                   "10x slower (OpenMP threads wait on each other)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, prompts and sampling")
    p.add_argument("--skip-uncached", action="store_true", help="only time the KV-cache path")
    args = p.parse_args(argv)
    total = args.prompt_len + args.new_tokens
    if total > ModelConfig().max_seq_len:
        p.error(f"--prompt-len + --new-tokens = {total} exceeds max_seq_len={ModelConfig().max_seq_len}")

    ctx = mp.get_context("spawn")  # fresh process per mode: clean peak-memory numbers
    results = {}
    for name, use_cache in [("cached", True), ("uncached", False)]:
        if name == "uncached" and args.skip_uncached:
            continue
        with ctx.Pool(1) as pool:
            results[name] = pool.apply(run_mode, (args, use_cache))

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu ({args.threads} threads)"
    cached, uncached = results["cached"], results.get("uncached")
    fmt = lambda r, key, spec: format(r[key], spec) if r else "-"  # noqa: E731
    speedup = f"{cached['tok_s'] / uncached['tok_s']:.1f}x" if uncached else "-"
    print("| device | dtype | batch | prompt | new | cached tok/s | uncached tok/s | speedup "
          "| cached peak MB | uncached peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {device_name} | {args.dtype} | {args.batch_size} | {args.prompt_len} | {args.new_tokens} "
          f"| {cached['tok_s']:.0f} | {fmt(uncached, 'tok_s', '.0f')} | {speedup} "
          f"| {cached['peak_mb']:.1f} | {fmt(uncached, 'peak_mb', '.1f')} |")
    print(f"command: python benchmarks/bench_sampler.py {shlex.join(sys.argv[1:] if argv is None else argv)}".rstrip())


if __name__ == "__main__":
    main()
