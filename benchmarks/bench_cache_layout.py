"""Why the eager sampler's KV cache grows in chunks (minichord/model.py, KVCache): the batched matmul
of a decode step reads a whole contiguous [B, n_kv, S, hd] block much faster than the slice [:, :, :S]
of a longer preallocated buffer, even counting the masked slots a chunk adds.

    python benchmarks/bench_cache_layout.py            # batch 256, the tiny Qwen2 of bench_vs_hf.py

For each visible length S (16 % ... 100 % of --max-len) it times q_g @ K^T (the scores of `decode_attention`) over 16 distinct
caches (so they are not all in the CPU cache, as in a real decode step across layers), 1 thread:
  slice   K = buffer[:, :, :S] of a buffer with room for max_len slots (the old eager path)
  chunked K = a whole buffer of capacity ceil(S / 16) * 16 (the eager path now; the extra slots masked)
  full    K = the whole max_len buffer (the compiled path before it traced dynamic shapes)
Median of --repeats rounds, microseconds per matmul.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from minichord.cli import POSITIVE


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=POSITIVE, default=256, help="sequences per decode step")
    parser.add_argument("--max-len", type=POSITIVE, default=74, help="slots in the preallocated buffer (prompt + new)")
    parser.add_argument("--repeats", type=POSITIVE, default=9, help="timed rounds per layout")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    B, Hkv, group, hd, n = args.batch, 2, 2, 32, 16
    q = torch.randn(B, Hkv, group, hd)  # [B, Hkv, group, hd]: decode_attention's folded query rows
    buffers = [torch.randn(B, Hkv, args.max_len, hd) for _ in range(n)]
    print(f"batch {B}, {Hkv} kv heads x {group} query heads, hd {hd}, buffer {args.max_len} slots, "
          f"torch {torch.__version__}, 1 thread; us per scores matmul, median of {args.repeats}")
    print("| visible S | slice | chunked (capacity) | full | slice / chunked |")
    print("|---|---|---|---|---|")
    for S in sorted({max(1, round(f * args.max_len)) for f in (0.16, 0.35, 0.57, 0.78, 1.0)}):  # 12 ... 74 slots
        capacity = min(args.max_len, -(-S // 16) * 16)
        chunked = [torch.randn(B, Hkv, capacity, hd) for _ in range(n)]
        t_slice = timed(lambda: [q @ k[:, :, :S].transpose(-1, -2) for k in buffers], args.repeats) / n * 1e6
        t_chunk = timed(lambda: [q @ k.transpose(-1, -2) for k in chunked], args.repeats) / n * 1e6
        t_full = timed(lambda: [q @ k.transpose(-1, -2) for k in buffers], args.repeats) / n * 1e6
        print(f"| {S} | {t_slice:.0f} | {t_chunk:.0f} ({capacity}) | {t_full:.0f} | {t_slice / t_chunk:.2f}x |")


if __name__ == "__main__":
    main()
