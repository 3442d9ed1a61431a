"""The GPU check: one command for a GPU machine, a markdown table last.

    bash benchmarks/gpu_check.sh             # on one H100/H200, with the image's own torch and Triton (<= 8 min)
    bash benchmarks/gpu_check.sh --dry-run   # the same code on the CPU, tiny shapes (tests/test_gpu_check.py)

1. the kernel tests (tests/test_kernels.py: fp32 and bf16, forward and backward) with the kernels on CUDA;
2. the memory-bandwidth bound, measured here: a large device-to-device copy, (bytes read + written) / time;
3. the token log-probs (kernels/logprobs.py) forward + backward at bf16 [16384, 151936]: time, achieved GB/s
   counting the floor of one read of the logits and one write of their gradient (2 N V 2 bytes), and its share
   of the bound;
4. the fused lm-head loss (kernels/fused_loss.py) at N=16384, H=896, V=151936, bf16: time and peak extra memory
   of the naive path (full logits -> log_softmax -> loss), the chunked torch path (minichord/lm_head.py) and the
   Triton kernel;
5. CHORD-phi steps of a Qwen2.5-0.5B-shaped model (random weights; vocab 151936, hidden 896, 24 layers, 14 / 2
   heads, ffn 4864, bf16 autocast) with 8 prompts x 8 rollouts of up to 256 new tokens + 16 expert
   demonstrations of 512 tokens, once with MINICHORD_KERNELS=triton and once with torch: sampled tokens/s,
   trained tokens/s, peak GPU memory, and the ratios;
6. greedy generation at that shape, batch 64 x (10 + 256 new), bf16: transformers' generate against minichord's
   sampler, eager and with SamplerConfig.compile (a CUDA graph per decode step): tokens/s, the speed-up, the
   share of the bandwidth bound, agreement of the tokens (benchmarks/gpu_check_generate.py).

Timing: a warm-up call first (Triton compiles, the allocator settles),
CUDA events around each repeat, the median of the repeats. Training steps are timed by the trainer itself
(time_sample, time_train), which reads results back to the host at the end of each phase (a synchronisation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_kernels.py, gpu_check_train.py
# shapes: logprobs = the token log-probs' (N, V); fused = the fused lm-head loss's (N, H, V)
FULL = dict(reps=10, copy_mb=4096, logprobs=(16384, 151936), fused=(16384, 896, 151936), steps=10, prompts=8,
            group=8, new_tokens=256, experts=16, expert_len=512, prompt_len=64, gen=(64, 256), gen_reps=3,
            model=dict(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, ffn_dim=4864,
                       max_seq_len=1024, rope_theta=1e6))
DRY = dict(reps=1, copy_mb=16, logprobs=(16, 500), fused=(32, 32, 500), steps=1, prompts=2, group=2, new_tokens=4,
           experts=2, expert_len=8, prompt_len=4, gen=(2, 4), gen_reps=1,
           model=dict(vocab_size=300, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=32))
DRY_TESTS = ["tests/test_kernels.py::test_token_logprobs_matches_reference[0.7-True-dtype1-1000]",
             "tests/test_kernels.py::test_fused_loss_matches_reference[phi-dtype1]"]  # bf16, fwd + bwd


# ------------------------------------------------------------------------------------------- measuring

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_ms(fn, device: torch.device, reps: int) -> float:
    """fn() once to warm up, then the median of `reps` timed calls (CUDA events on the GPU)."""
    fn()
    sync(device)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def peak_extra_mb(fn, device: torch.device) -> float | None:
    """Peak memory one call needs above what is allocated before it (CUDA only)."""
    if device.type != "cuda":
        return None
    sync(device)
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def reps_for(first_ms: float, most: int, budget_ms: float = 3000.0) -> int:
    """Enough repeats for a stable median, within about budget_ms (at most `most`, at least 3 unless most < 3)."""
    return int(min(most, max(min(3, most), budget_ms // max(first_ms, 1e-3))))


# ------------------------------------------------------------------------------------------- sections

def kernel_tests(device: torch.device, dry_run: bool) -> str:
    env = dict(os.environ, MINICHORD_TEST_DEVICE=device.type, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           *(DRY_TESTS if dry_run else ["tests/test_kernels.py", "tests/test_decode_paths.py"])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    summary = (proc.stdout.strip().splitlines() or ["(no output)"])[-1].strip("= ")
    if proc.returncode != 0:
        print(proc.stdout[-6000:] + proc.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"kernel tests failed: {summary}")
    return f"{summary} ({time.perf_counter() - t0:.0f} s wall)"


def copy_bandwidth(device: torch.device, mb: int, reps: int) -> float:
    """Bytes read + written per second by a device-to-device copy of `mb` MiB."""
    src = torch.empty(mb * 2**20, dtype=torch.uint8, device=device).random_(0, 256)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, max(reps, 3))
    return 2 * src.numel() / (ms * 1e-3)


def token_logprobs(device: torch.device, n: int, v: int, bound: float, reps: int) -> dict:
    from minichord.kernels.logprobs import triton_token_logprobs

    gen = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(n, v, generator=gen, device=device, dtype=torch.bfloat16).requires_grad_()  # [N, V]
    targets = torch.randint(0, v, (n,), generator=gen, device=device)  # [N]
    grad = torch.randn(n, generator=gen, device=device)  # [N]

    def fwd_bwd():
        logits.grad = None
        triton_token_logprobs(logits, targets).backward(grad)

    ms = median_ms(fwd_bwd, device, reps)
    floor_bytes = 2 * n * v * logits.element_size()  # read the logits once, write their gradient once
    return dict(ms=ms, gbs=floor_bytes / (ms * 1e-3) / 1e9, share=floor_bytes / (ms * 1e-3) / bound,
                floor_ms=floor_bytes / bound * 1e3)


def fused_loss(device: torch.device, n: int, h: int, v: int, reps: int) -> dict:
    from bench_kernels import make_inputs, make_steps

    out = {}
    for impl in ("naive", "chunked", "triton"):
        case = dict(op="fused", impl=impl, n=n, h=h, v=v, dtype="bf16")
        inputs = make_inputs(case, device)
        _, fwd_bwd = make_steps(case, inputs)
        peak = peak_extra_mb(fwd_bwd, device)  # the first call also compiles
        t0 = time.perf_counter()
        fwd_bwd()
        sync(device)
        ms = median_ms(fwd_bwd, device, reps_for((time.perf_counter() - t0) * 1e3, reps))
        out[impl] = dict(ms=ms, peak_mb=peak)
        del inputs, fwd_bwd
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


# ------------------------------------------------------------------------------------------- report

def fmt(x, spec=".1f", unit="") -> str:
    return "n/a (CPU)" if x is None else f"{format(x, spec)}{unit}"


def report(r: dict, s: dict) -> str:
    rows = [("device", r["device"])]
    add = rows.append
    add(("kernel tests", r.get("tests", "-")))
    if "bound" in r:
        add((f"bandwidth bound: {s['copy_mb']} MiB device-to-device copy", f"{r['bound'] / 1e9:.0f} GB/s (read + write)"))
    if "logprobs" in r:
        n, v = s["logprobs"]
        t = r["logprobs"]
        add((f"log-probs fwd+bwd, bf16 [{n}, {v}]", f"{t['ms']:.3f} ms; {t['gbs']:.0f} GB/s counting 2NV x 2 B; "
             f"{100 * t['share']:.0f}% of the bound (floor {t['floor_ms']:.3f} ms)"))
    if "fused" in r:
        n, h, v = s["fused"]
        base = r["fused"]["naive"]
        for impl, label in (("naive", "naive (full logits)"), ("chunked", "chunked torch"), ("triton", "triton fused")):
            t = r["fused"][impl]
            add((f"fused loss {label}, N={n} H={h} V={v} bf16", f"{t['ms']:.2f} ms ({base['ms'] / t['ms']:.2f}x naive); "
                 f"peak extra {fmt(t['peak_mb'], '.0f', ' MB')}"))
    if "train" in r:
        for backend, t in r["train"].items():
            add((f"CHORD-phi {backend}, sampler.compile={s.get('sampler_compile', 'default')}: {s['prompts']}x{s['group']} rollouts <= {s['new_tokens']} new + "
                 f"{s['experts']} x {s['expert_len']} expert, {t['params'] / 1e6:.0f}M params bf16",
                 f"sampling {t['sample_tok_s']:.0f} tok/s (mean length {t['response_length']:.0f}); training "
                 f"{t['train_tok_s']:.0f} tok/s ({t['tokens_per_step']:.0f} tok/step); peak {fmt(t['peak_gb'], '.1f', ' GB')}"))
        if len(r["train"]) == 2:
            a, b = r["train"]["triton"], r["train"]["torch"]
            peak = "n/a (CPU)" if a["peak_gb"] is None else f"{a['peak_gb'] / b['peak_gb']:.2f}x"
            add(("CHORD-phi triton / torch", f"sampling {a['sample_tok_s'] / b['sample_tok_s']:.2f}x; training "
                 f"{a['train_tok_s'] / b['train_tok_s']:.2f}x; peak memory {peak}"))
    if "generate" in r:
        g = r["generate"]
        if "skipped" in g:
            add(("generate vs transformers", f"skipped: {g['skipped']}"))
        for who, c in g.get("contenders", {}).items():
            share = "" if c["bound_share"] is None else f"; {100 * c['bound_share']:.0f}% of the bandwidth bound"
            add((f"generate {g['batch']} x (10 + {g['new']}) greedy, {g['dtype']}: {who}",
                 f"{c['ms']:.0f} ms [{c['ms_range'][0]:.0f}-{c['ms_range'][1]:.0f}], {c['tok_s']:.0f} tok/s, "
                 f"{c['speedup_vs_hf']:.2f}x transformers{share}; tokens equal to minichord eager "
                 f"{100 * c['equal_tokens']:.0f}%; peak extra {fmt(c['peak_extra_mb'], '.0f', ' MB')}"))
    for name, error in r["errors"]:
        add((f"FAILED: {name}", error))
    return "\n".join(["| check | result |", "|---|---|", *(f"| {a} | {b} |" for a, b in rows)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton under TRITON_INTERPRET=1")
    ap.add_argument("--steps", type=int, default=None, help="timed CHORD-phi steps per backend (default 10; dry 1)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["tests", "logprobs", "fused", "train", "generate"],
                    help="sections to leave out")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--sampler-compile", choices=["default", "true", "false"], default="default",
                    help="sampler.compile of the CHORD-phi steps: default (a CUDA graph on a GPU, eager on a CPU), "
                         "true (a CUDA graph on a GPU, torch.compile on a CPU) or false (eager)")
    args = ap.parse_args(argv)
    settings = dict(DRY if args.dry_run else FULL)
    settings["steps"] = args.steps or settings["steps"]
    settings["sampler_compile"] = args.sampler_compile
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel is decorated
        device = torch.device("cpu")
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    elif not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device here; use --dry-run to check the script on a CPU", file=sys.stderr)
        return 2
    else:
        device = torch.device("cuda")
    import triton

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.machine()}), dry run"
    r: dict = {"device": f"{name}; torch {torch.__version__}, triton {triton.__version__}", "errors": []}
    print(f"gpu_check: {r['device']}", file=sys.stderr, flush=True)
    t_start = time.perf_counter()

    def section(key, fn):
        if key in args.skip:
            return
        t0 = time.perf_counter()
        try:
            r[key] = fn()
        except Exception as e:  # noqa: BLE001  (the table says what failed; the other sections still run)
            r["errors"].append((key, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        print(f"gpu_check: {key} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)

    section("tests", lambda: kernel_tests(device, args.dry_run))
    section("bound", lambda: copy_bandwidth(device, settings["copy_mb"], settings["reps"]))
    if "bound" in r:
        section("logprobs", lambda: token_logprobs(device, *settings["logprobs"], r["bound"], settings["reps"]))
    section("fused", lambda: fused_loss(device, *settings["fused"], settings["reps"]))
    from gpu_check_train import training  # benchmarks/, beside this file
    section("train", lambda: {b: training(device, settings, b) for b in ("triton", "torch")})
    os.environ.pop("MINICHORD_KERNELS", None)
    from gpu_check_generate import generate_vs_hf
    section("generate", lambda: generate_vs_hf(device, settings, r.get("bound")))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(r, settings=settings), indent=1, default=str))
    print(f"\ngpu_check finished in {time.perf_counter() - t_start:.0f} s\n")
    print(report(r, settings))
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
