# %% [markdown]
# # 03 — The fused log-softmax kernel
#
# Every loss in CHORD (PPO-clip, SFT, SFT-phi, SFT-IS, LUFFY's shaping) depends on the logits
# only through one number per token: logp_t = log softmax(logits_t)[y_t]. The textbook way to
# get it, `log_softmax(logits).gather(...)`, materialises a second [N, V] tensor, and for real
# vocabularies that tensor is the biggest thing in memory. `minichord.kernels.logprobs`
# computes logp_t (and the entropy H_t) in one pass over the logits with an *online
# log-sum-exp*, keeps one number per row (the log-sum-exp, for the backward) and nothing of
# size [N, V] besides the logits themselves and their gradient.
#
# On a machine without CUDA the kernel runs under Triton's *interpreter* (slow, exact, on CPU
# tensors). The interpreter is switched on by an environment variable that must be set before
# Triton decorates the kernel, i.e. before `minichord.kernels` is imported: hence this first cell.

# %%
import os

import torch  # importing torch does not import Triton; the kernels module below does

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import math

from minichord import lm_head
from minichord.kernels.logprobs import triton_token_logprobs
from minichord.lm_head import reference_token_logprobs

device = "cuda" if torch.cuda.is_available() else "cpu"
print(f"device: {device}; Triton interpreter: {os.environ.get('TRITON_INTERPRET') == '1'}")
torch.manual_seed(0)

# %% [markdown]
# ## 1. Memory arithmetic for real vocabularies
#
# One RL batch of the paper's setting is easily 16384 response tokens; Qwen2's vocabulary has
# 151936 entries. Per [N, V] tensor:

# %%
GB = 1e9
rows = [(4096, 32000), (16384, 151936), (65536, 151936)]
print(f"{'N tokens':>9s} {'V':>7s} | {'bf16 logits':>11s} {'fp32 log_softmax':>16s} | kernel keeps (lse + logp, fp32)")
for n, v in rows:
    print(f"{n:9d} {v:7d} | {n * v * 2 / GB:9.2f} GB {n * v * 4 / GB:14.2f} GB | {2 * n * 4 / 1e6:8.3f} MB")
n, v = 16384, 151936
assert abs(n * v * 2 / GB - 4.98) < 0.01 and abs(n * v * 4 / GB - 9.96) < 0.01
# %% [markdown]
# For 16384 x 151936: the bf16 logits are 5 GB; an fp32 log_softmax is 10 GB more, and
# autograd saves it for the backward. The kernel never creates it: it reads the logits
# (streaming, block by block), writes logp [N] and lse [N] (128 KB in all), and in the backward
# recomputes the softmax from the logits and lse while writing the gradient (5 GB, unavoidable
# as long as the logits exist). The fused-loss kernel (`kernels/fused_loss.py`, used by the
# trainer through `lm_head.fused_token_loss`) goes one step further: it multiplies hidden states by
# the lm_head one chunk of tokens at a time, so even the full logits never exist.
#
# Speed follows memory: the op is bandwidth-bound. On an H100 (3.35 TB/s) one read of those
# 5 GB takes about 1.5 ms, a lower bound the benchmark (`benchmarks/bench_kernels.py`) compares against.

# %%
print(f"one read of the bf16 logits at 3.35 TB/s: {n * v * 2 / 3.35e12 * 1e3:.2f} ms")

# %% [markdown]
# ## 2. The online log-sum-exp
#
# lse(z) = log sum_v exp(z_v). Computed naively, exp overflows for large logits (exp(89) is
# already inf in fp32). The stable form shifts by the maximum m: lse = m + log sum exp(z - m).
# The *online* form gets m without a separate pass: walk the row in blocks, keep the running
# maximum m and the running sum s = sum exp(z - m); when a block raises the maximum to m',
# rescale the old sum by exp(m - m'):
#
#     m' = max(m, max(block))
#     s  = s * exp(m - m') + sum(exp(block - m'))
#     lse = m + log(s)          after the last block
#
# One read of the row, two numbers of state. Here it is in plain torch:


# %%
def online_logsumexp(z: torch.Tensor, block: int) -> torch.Tensor:
    m = torch.tensor(-math.inf)
    s = torch.tensor(0.0)
    for start in range(0, z.numel(), block):
        chunk = z[start:start + block]
        m_new = torch.maximum(m, chunk.max())
        s = s * torch.exp(m - m_new) + torch.exp(chunk - m_new).sum()
        m = m_new
    return m + torch.log(s)


z = torch.randn(1000) * 5 + 100  # large logits: naive exp overflows in fp32
naive = torch.log(torch.exp(z).sum())
print(f"naive log(sum(exp(z))) with logits near 100: {naive.item()}")
for block in (7, 64, 1000):
    got = online_logsumexp(z, block)
    err = abs(got.item() - torch.logsumexp(z.double(), 0).item())
    print(f"online lse, block {block:4d}: {got.item():.5f}   |diff| to fp64 logsumexp = {err:.1e} (tolerance 1e-4)")
    assert err < 1e-4

# %% [markdown]
# The kernel does exactly this per row (one Triton program per token), plus a third running
# quantity for the entropy, then logp_t = z_{y_t} - lse_t. Its backward uses
# d logp_t / d z_v = onehot(y_t)_v - softmax(z)_v, recomputing softmax as exp(z_v - lse_t).
#
# ## 3. The Triton kernel against the torch reference
#
# `reference_token_logprobs` is the readable definition (log_softmax in fp32, gather). We use
# odd shapes so the kernel's masks (a vocabulary that is not a multiple of the block size) are
# exercised, include an ignored row (target -100: logp 0, no gradient), and check the forward
# (logp, entropy) and the backward (gradient w.r.t. the logits) for a loss using both.

# %%
N, V = 37, 1000
logits32 = (torch.randn(N, V) * 3).to(device)
targets = torch.randint(0, V, (N,), device=device)
targets[5] = -100  # an ignored row
g_logp, g_ent = torch.randn(N, device=device), torch.randn(N, device=device)  # arbitrary upstream gradients


def run(fn, logits):
    x = logits.detach().clone().requires_grad_(True)
    logp, entropy = fn(x, targets, temperature=0.8, return_entropy=True)
    ((logp * g_logp).sum() + (entropy * g_ent).sum()).backward()
    return logp.detach(), entropy.detach(), x.grad.float()


for dtype, tol in [(torch.float32, 1e-4), (torch.bfloat16, 2e-3)]:
    logits = logits32.to(dtype)
    k_logp, k_ent, k_grad = run(triton_token_logprobs, logits)
    r_logp, r_ent, r_grad = run(reference_token_logprobs, logits)
    errs = {"logp": (k_logp - r_logp).abs().max().item(), "entropy": (k_ent - r_ent).abs().max().item(),
            "grad": (k_grad - r_grad).abs().max().item()}
    # the bf16 gradient is rounded to bf16 at the store (a rounding step is 2^-7 ~ 0.8% relative):
    # two fp32 values a hair apart may round one step apart, so allow ~1% of the gradient's scale
    grad_tol = tol if dtype == torch.float32 else 1e-2 * r_grad.abs().max().item()
    print(f"{str(dtype):15s} N={N} V={V}: " + "  ".join(f"{k} {e:.1e}" for k, e in errs.items())
          + f"   (tolerance {tol:g} on logp/entropy, {grad_tol:.1e} on grad)")
    assert errs["logp"] < tol and errs["entropy"] < tol and errs["grad"] < grad_tol
    assert k_logp[5] == 0 and k_grad[5].abs().max() == 0  # the ignored row

# %% [markdown]
# Both paths compute in fp32 internally even for bf16 logits (the kernel upcasts right after
# each load), so logp agrees to fp32 rounding; only the gradient is rounded to the logits' dtype.
#
# ## 4. Dispatch
#
# Library code never calls the kernel directly: it calls `minichord.lm_head.token_logprobs` /
# `lm_head.fused_token_loss`, which pick the Triton kernel on CUDA and the torch implementation
# elsewhere. `MINICHORD_KERNELS=torch|triton` forces one (forcing `triton` on a CPU needs
# `TRITON_INTERPRET=1`, as in this file and in the test suite).

# %%
print(f"lm_head.kernel_backend() = {lm_head.kernel_backend()!r}  (MINICHORD_KERNELS={os.environ.get('MINICHORD_KERNELS', '')!r})")
via_ops = lm_head.token_logprobs(logits32, targets)
err = (via_ops - reference_token_logprobs(logits32, targets)).abs().max().item()
print(f"lm_head.token_logprobs vs reference: max |diff| = {err:.1e} (tolerance 1e-4)")
assert err < 1e-4

# %% [markdown]
# ## 5. Experiment: why fp32 accumulation matters
#
# What if we did the whole log-softmax in bf16 instead? Compare against an fp64 reference on
# the same bf16 logits (so the input rounding is the same for everyone): the kernel's error is
# fp32 rounding; a bf16 log_softmax loses about 3 significant digits, on *every* token's logp,
# which then feeds exp(logp - old_logp) in the PPO ratio.

# %%
logits_bf16 = (torch.randn(64, 5003) * 4).to(torch.bfloat16).to(device)
tg = torch.randint(0, 5003, (64,), device=device)
exact = reference_token_logprobs(logits_bf16.double(), tg)
kernel = triton_token_logprobs(logits_bf16, tg)
in_bf16 = torch.log_softmax(logits_bf16, -1).gather(1, tg[:, None]).squeeze(1).double()
print(f"kernel (fp32 inside) vs fp64: max |diff| = {(kernel.double() - exact).abs().max().item():.1e}")
print(f"log_softmax in bf16  vs fp64: max |diff| = {(in_bf16 - exact).abs().max().item():.1e}")
print(f"-> a ratio exp(logp - old_logp) off by up to x{math.exp((in_bf16 - exact).abs().max().item()):.3f} "
      f"with bf16 log-probs, vs x{math.exp((kernel.double() - exact).abs().max().item()):.7f}")
