"""Section 6 of the GPU check (benchmarks/gpu_check.py): greedy generation of a
Qwen2.5-0.5B-shaped model (random weights, bf16) by transformers' `generate` and by minichord's sampler,
eager and with SamplerConfig.compile (on a GPU: the decode step as one CUDA graph), same weights, same
prompts, eos disabled so every row makes every token.

    tokens/s      = batch x new tokens / wall time of one generate call (median of alternating rounds)
    bound share   = (weight bytes + mean KV-cache bytes read per step) x steps / bandwidth bound / time
                    (a decode step must read every weight once; the prefill is included in the time)
    equal tokens  = share of positions where the greedy tokens equal the eager minichord run's (bf16: different
                    kernel shapes round differently, so a long greedy run may part ways; fp32 logits are
                    checked equal to transformers' first, <= 1e-4, on the CPU)

With --dry-run the same code runs on the CPU at a tiny shape (transformers needed; skipped without it).
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch


def generate_vs_hf(device: torch.device, s: dict, bound: float | None) -> dict:
    try:
        from bench_vs_hf import checked_pair, gen_runs  # imports transformers
    except ImportError as e:
        return {"skipped": f"transformers not installed ({e})"}

    batch, new = s["gen"]
    with tempfile.TemporaryDirectory() as tmp:
        ours, hf, diff = checked_pair(0, tmp, s["model"])  # fp32 on the CPU, logits equal to 1e-4
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ours, hf = ours.to(device, dtype), hf.to(device, dtype)
    runs = gen_runs(ours, hf, batch, new, compile_=True, check=False, device=device)  # transformers, eager, compiled
    out = {who: dict(seconds=[]) for who in runs}
    for who, run in runs.items():  # warm-up; peak memory; tokens
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        out[who]["tokens"] = run().cpu()
        if device.type == "cuda":
            out[who]["peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    for _ in range(s["gen_reps"]):  # alternating rounds
        for who, run in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            out[who]["seconds"].append(time.perf_counter() - t0)
    ref = out["minichord"]["tokens"]
    cfg = ours.cfg
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())
    mean_len = 10 + new / 2  # keys/values read per step, on average
    kv_bytes = 2 * cfg.n_layers * batch * cfg.n_kv_heads * cfg.head_dim * mean_len * ours.lm_head_weight.element_size()
    result = dict(batch=batch, new=new, dtype=str(dtype).replace("torch.", ""), logit_diff_fp32=diff,
                  floor_ms=(weight_bytes + kv_bytes) * new / bound * 1e3 if bound else None, contenders={})
    hf_s = statistics.median(out["transformers"]["seconds"])
    for who, o in out.items():
        sec = statistics.median(o["seconds"])
        result["contenders"][who] = dict(
            ms=sec * 1e3, ms_range=(min(o["seconds"]) * 1e3, max(o["seconds"]) * 1e3), tok_s=batch * new / sec,
            speedup_vs_hf=hf_s / sec, equal_tokens=(o["tokens"] == ref).float().mean().item(),
            bound_share=result["floor_ms"] / (sec * 1e3) if bound else None, peak_extra_mb=o.get("peak_extra_mb"))
    return result
