"""Benchmark the loss kernels: time and peak memory of naive torch, chunked torch and Triton.

    logprobs  token log-probs from logits [N, V]                      naive | triton
    fused     fused lm-head loss (lm head + CHORD loss), hidden [N, H]  naive | chunked | triton

naive   = full logits, log_softmax in fp32, gather (minichord.lm_head.reference_token_logprobs;
          for the fused loss the logits are hidden @ W^T in the input dtype, then the reference)
chunked = minichord.lm_head.fused_token_loss on its torch path (chunks over tokens)
triton  = minichord.kernels.* (CUDA only; the CPU interpreter is not a performance path)

Peak memory is the extra memory one forward+backward needs on top of its inputs:
torch.cuda.max_memory_allocated on GPU; on CPU each case runs in a fresh subprocess and
reports the growth of its peak RSS (resource.getrusage ru_maxrss) during the first call.
For the token log-probs on GPU the table also gives the effective bandwidth, min bytes / time,
where min bytes is one read of the logits (forward) or one read + one write of a logits-sized
tensor (forward + backward), and its fraction of the H100's 3.35 TB/s. For the fused loss it
gives matmul TFLOP/s (6 N V H flops: logits, grad hidden, grad weight).

    python benchmarks/bench_kernels.py --quick          # CPU, about a minute
    python benchmarks/bench_kernels.py                  # GPU, realistic shapes
    python benchmarks/bench_kernels.py --ops fused      # only the fused lm-head loss
"""

import argparse
import os
import json
import resource
import subprocess
import sys
import time

import torch

from minichord import lm_head
from minichord.config import LossConfig
from minichord.losses import chord_loss, token_coefficients

H100_BANDWIDTH = 3.35e12  # bytes / s
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
OP_LABELS = {"logprobs": "log-probs", "fused": "fused loss"}  # --ops value -> table label


# ---------------------------------------------------------------------------------------
# the cases


def make_inputs(case, device):
    """Random inputs of one case; the tensors that get gradients require grad."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    n, v, dtype = case["n"], case["v"], DTYPES[case["dtype"]]
    targets = torch.randint(0, v, (n,), generator=gen).to(device)  # [N]
    # drawn in the target dtype, scaled in place: no fp32 temporaries raise the RSS baseline
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype).to(device)  # noqa
    if case["op"] == "logprobs":
        logits = randn(n, v).mul_(2)  # [N, V]
        return dict(logits=logits.requires_grad_(), targets=targets,
                    grad=torch.randn(n, generator=gen).to(device))
    h = case["h"]
    is_expert = (torch.arange(n) % 4 == 0).to(device)  # [N]: a quarter expert tokens
    return dict(
        hidden=randn(n, h).requires_grad_(),  # [N, H]
        weight=randn(v, h).div_(h ** 0.5).requires_grad_(),  # [V, H]
        targets=targets, is_expert=is_expert,
        coef=token_coefficients(is_expert, 0.3),  # [N]
        advantages=torch.randn(n, generator=gen).to(device),  # [N]
        old_logp=(-10 + torch.randn(n, generator=gen)).to(device),  # [N]
        spec=LossConfig(expert_weighting="phi"))


def naive_fused_loss(hidden, weight, targets, coef, is_expert, advantages, old_logp, spec):
    """What one writes first: full logits, reference log-probs, token losses."""
    logits = hidden @ weight.T  # [N, V], input dtype
    logp = lm_head.reference_token_logprobs(logits, targets)  # [N] fp32
    return chord_loss(logp, None, is_expert, advantages, old_logp, coef, spec)[0]


def chunked_torch_loss(*args):
    """lm_head.fused_token_loss forced onto its torch path (on CUDA it would take the kernel)."""
    previous = os.environ.get("MINICHORD_KERNELS")
    os.environ["MINICHORD_KERNELS"] = "torch"
    try:
        return lm_head.fused_token_loss(*args).loss
    finally:
        os.environ.pop("MINICHORD_KERNELS") if previous is None else os.environ.update(MINICHORD_KERNELS=previous)


def fused_loss_fn(impl):
    if impl == "naive":
        return naive_fused_loss
    if impl == "chunked":
        return chunked_torch_loss
    from minichord.kernels.fused_loss import triton_fused_token_loss
    return lambda *args: triton_fused_token_loss(*args).loss


def make_steps(case, inputs):
    """-> (forward-only fn or None, forward+backward fn) for one case."""
    if case["op"] == "logprobs":
        if case["impl"] == "triton":
            from minichord.kernels.logprobs import triton_token_logprobs as logprobs
        else:
            logprobs = lm_head.reference_token_logprobs
        x, y, g = inputs["logits"], inputs["targets"], inputs["grad"]

        def forward():
            with torch.no_grad():
                return logprobs(x, y)

        def forward_backward():
            x.grad = None
            logprobs(x, y).backward(g)

        return forward, forward_backward
    fn = fused_loss_fn(case["impl"])
    args = [inputs[k] for k in ("hidden", "weight", "targets", "coef", "is_expert",
                                "advantages", "old_logp", "spec")]

    def forward_backward():
        inputs["hidden"].grad = inputs["weight"].grad = None
        fn(*args).backward()

    return None, forward_backward


# ---------------------------------------------------------------------------------------
# measuring


def time_ms(fn, device, reps):
    if fn is None:
        return None
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def current_rss_kib():
    """Resident set size now (ru_maxrss is the high-water mark, in KiB on Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() // 1024


def measure(case, device, reps):
    """Peak extra memory (MB) of the first forward+backward, then timings."""
    inputs = make_inputs(case, device)
    forward, forward_backward = make_steps(case, inputs)
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        forward_backward()
        torch.cuda.synchronize()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
        forward_backward()  # warm-up (compilation happened in the first call)
        if forward is not None:
            forward()
    else:
        base = max(current_rss_kib(), 1)
        forward_backward()
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return dict(case, peak_mb=peak_mb, fwd_ms=time_ms(forward, device, reps),
                fwd_bwd_ms=time_ms(forward_backward, device, reps))


def measure_in_subprocess(case, reps):
    """CPU: a fresh process per case, so ru_maxrss (a high-water mark) is this case's."""
    cmd = [sys.executable, __file__, "--worker", json.dumps(dict(case, reps=reps))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# reporting


def table(rows, device):
    head = ["op", "impl", "N", "V", "H", "dtype", "fwd ms", "fwd+bwd ms", "peak extra MB",
            "GB/s fwd", "GB/s fwd+bwd", "% of 3.35 TB/s (fwd / fwd+bwd)", "TFLOP/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda x, spec=".1f": "-" if x is None else format(x, spec)  # noqa: E731
    for r in rows:
        elt = torch.tensor([], dtype=DTYPES[r["dtype"]]).element_size()
        gbs_f = gbs_fb = frac = tflops = None
        if r["op"] == "logprobs" and device == "cuda":
            logits_bytes = r["n"] * r["v"] * elt
            gbs_f = logits_bytes / (r["fwd_ms"] * 1e-3) / 1e9
            gbs_fb = 2 * logits_bytes / (r["fwd_bwd_ms"] * 1e-3) / 1e9
            frac = f"{100 * gbs_f * 1e9 / H100_BANDWIDTH:.0f}% / " \
                   f"{100 * gbs_fb * 1e9 / H100_BANDWIDTH:.0f}%"
        if r["op"] == "fused":
            tflops = 6 * r["n"] * r["v"] * r["h"] / (r["fwd_bwd_ms"] * 1e-3) / 1e12
        lines.append("| " + " | ".join([
            OP_LABELS[r["op"]], r["impl"], str(r["n"]), str(r["v"]), str(r.get("h", "-")),
            r["dtype"], fmt(r["fwd_ms"]), fmt(r["fwd_bwd_ms"]), fmt(r["peak_mb"], ".0f"),
            fmt(gbs_f, ".0f"), fmt(gbs_fb, ".0f"), frac or "-", fmt(tflops, ".2f")]) + " |")
    return "\n".join(lines)


def build_cases(args, device):
    logprobs_impls = ["naive"] + (["triton"] if device == "cuda" else [])
    fused_impls = ["naive", "chunked"] + (["triton"] if device == "cuda" else [])
    if args.quick:
        # CPU-sized, but includes the target case: the fused loss at N=8192, V=32768, H=256
        logprobs_shapes = [dict(n=1024, v=32768)]
        fused_shapes = [dict(n=8192, v=32768, h=256)]
    else:
        logprobs_shapes = [dict(n=n, v=v) for n in args.n for v in args.vocab]
        fused_shapes = [dict(n=n, v=v, h=args.hidden) for n in args.n for v in args.vocab]
    cases = [dict(op="logprobs", impl=i, dtype=args.dtype, **s)
             for s in logprobs_shapes for i in logprobs_impls]
    cases += [dict(op="fused", impl=i, dtype=args.dtype, **s) for s in fused_shapes for i in fused_impls]
    return [c for c in cases if c["op"] in args.ops]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small CPU-sized shapes (log-probs N=1024 V=32768; fused loss "
                             "N=8192 V=32768 H=256) instead of the realistic grid")
    parser.add_argument("--n", type=int, nargs="+", default=[4096, 16384],
                        help="token counts N to benchmark (default: 4096 16384)")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32768, 151936],
                        help="vocabulary sizes V (default: 32768 151936, Qwen2's)")
    parser.add_argument("--hidden", type=int, default=2048, help="hidden size H for the fused loss")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                        help="logits / hidden / weight dtype (default bf16)")
    parser.add_argument("--ops", nargs="+", default=list(OP_LABELS), choices=list(OP_LABELS),
                        help="which ops to run: logprobs (token log-probs), fused (fused lm-head "
                             "loss); default both")
    parser.add_argument("--reps", type=int, default=None,
                        help="timed repetitions (default 10 on GPU, 2 on CPU)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one CPU case
    args = parser.parse_args()

    if args.worker is not None:
        case = json.loads(args.worker)
        reps = case.pop("reps")
        torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
        print(json.dumps(measure(case, "cpu", reps)))
        return

    device = "cuda" if torch.cuda.is_available() else "cpu"
    reps = args.reps or (10 if device == "cuda" else 2)
    rows = []
    for case in build_cases(args, device):
        print(f"running {case} ...", file=sys.stderr, flush=True)
        rows.append(measure(case, device, reps) if device == "cuda"
                    else measure_in_subprocess(case, reps))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}, reps {reps}\n")
    print(table(rows, device))


if __name__ == "__main__":
    main()
