"""The token log-prob kernel (torch path: minichord/lm_head.py): per-token log-probs and entropies, in Triton.

    logp_t = (z_{t,y_t} - m_t) - log s_t,   z_t = logits_t / T,   m_t = max_v z_{t,v},
    s_t = sum_v exp(z_{t,v} - m_t)   (so lse_t = m_t + log s_t)
    H_t    = -sum_v p_{t,v} log p_{t,v} = lse_t - sum_v p_{t,v} z_{t,v}

Forward: one program per row streams the vocabulary in BLOCK_V blocks through an online log-sum-exp and entropy
(`_row_lse_entropy`). logp = (z_y - m) - log s, not z_y - lse: exact when z_y = m, so a near-certain token keeps
its tiny logp even for logits ~1000. All is fp32 in registers, each load upcast at once (bf16 arithmetic is
imprecise and mishandled by the Triton interpreter).

Backward (softmax recomputed from the logits and the saved lse, never stored):

    dlogp_t / dz_{t,v} = onehot(y_t)_v - p_{t,v}
    dH_t / dz_{t,v}    = -p_{t,v} (log p_{t,v} + H_t)

Derivation of the second line: log p_j = z_j - lse, dlse/dz_k = p_k, so dp_j/dz_k = p_j (delta_jk - p_k):
    dH/dz_k = -sum_j dp_j/dz_k (log p_j + 1)
            = -p_k (log p_k + 1) + p_k sum_j p_j (log p_j + 1)
            = -p_k (log p_k + 1) + p_k (1 - H)  =  -p_k (log p_k + H).
Since z = logits / T, both are divided by T (chain rule):

    dlogits_{t,v} = (g_logp_t (onehot - p) + g_H_t * (-p (log p + H))) / T

The gradient is fp32 until the store (in bf16, onehot - p would round 1 - 0.999 to 0). Ignored rows
(target == ignore_index) get logp = H = 0 and a zero gradient row."""

import torch
import triton
import triton.language as tl

from minichord.losses import IGNORE_INDEX, check_logits_targets

MAX_BLOCK_V = 4096  # vocabulary block per loop iteration (a power of two)


def _block_v(vocab_size: int) -> int:
    return min(triton.next_power_of_2(vocab_size), MAX_BLOCK_V)


def _num_warps(block_v: int) -> int:
    return 8 if block_v >= 2048 else 4


@triton.jit
def _row_lse_entropy(row_ptr, vocab_size, inv_temperature, BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr):
    """One row, streamed in vocab blocks -> (m, log s, H): max, log sum_v exp(z_v - m), entropy.

    m = running max, s = sum exp(z - m), t = sum exp(z - m) (z - m); rescaled when m grows.
    H = log s - t / s (if WITH_ENTROPY): shifting by m avoids lse - E[z]'s cancellation for large logits."""
    m = tl.full((), -1e30, tl.float32)  # finite start keeps (m_old - m_new) * s free of inf*0
    s, t = tl.zeros((), tl.float32), tl.zeros((), tl.float32)
    for start in range(0, vocab_size, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)  # [BLOCK_V]
        z = tl.load(row_ptr + cols, mask=cols < vocab_size, other=float("-inf"))
        z = z.to(tl.float32) * inv_temperature  # [BLOCK_V] fp32
        m_new = tl.maximum(m, tl.max(z, axis=0))
        rescale = tl.exp(m - m_new)
        e = tl.exp(z - m_new)  # [BLOCK_V], 0 where masked or z = -inf
        if WITH_ENTROPY:
            shifted = tl.where(e > 0, z - m_new, 0.0)  # no -inf * 0 where e underflows
            t = rescale * (t + (m - m_new) * s) + tl.sum(e * shifted, axis=0)
        s, m = rescale * s + tl.sum(e, axis=0), m_new
    return m, tl.log(s), tl.log(s) - t / s


@triton.jit
def _token_logprobs_fwd_kernel(logits_ptr, row_stride, targets_ptr, logp_ptr, lse_ptr, entropy_ptr, vocab_size,
                               inv_temperature, ignore_index, BLOCK_V: tl.constexpr, WITH_ENTROPY: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64 before the multiply: N*V may exceed 2^31
    row_ptr = logits_ptr + row * row_stride
    target = tl.load(targets_ptr + row)
    ignored = target == ignore_index
    safe_target = tl.where(ignored, 0, target)

    m, log_s, entropy = _row_lse_entropy(row_ptr, vocab_size, inv_temperature, BLOCK_V, WITH_ENTROPY)
    z_target = tl.load(row_ptr + safe_target).to(tl.float32) * inv_temperature
    tl.store(logp_ptr + row, tl.where(ignored, 0.0, (z_target - m) - log_s))
    tl.store(lse_ptr + row, m + log_s)
    if WITH_ENTROPY:
        tl.store(entropy_ptr + row, tl.where(ignored, 0.0, entropy))


@triton.jit
def _token_logprobs_bwd_kernel(logits_ptr, row_stride, grad_logits_ptr, targets_ptr, lse_ptr, entropy_ptr,
                               grad_logp_ptr, grad_entropy_ptr, vocab_size, inv_temperature, ignore_index,
                               BLOCK_V: tl.constexpr, HAS_GRAD_LOGP: tl.constexpr, HAS_GRAD_ENTROPY: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * row_stride
    grad_row_ptr = grad_logits_ptr + row * vocab_size  # grad buffer is contiguous [N, V]
    target = tl.load(targets_ptr + row)
    keep = (target != ignore_index).to(tl.float32)  # 0 zeroes the whole row
    lse = tl.load(lse_ptr + row)
    g_logp = tl.zeros((), tl.float32)
    if HAS_GRAD_LOGP:
        g_logp = tl.load(grad_logp_ptr + row).to(tl.float32) * keep
    g_entropy, entropy = tl.zeros((), tl.float32), tl.zeros((), tl.float32)  # both defined on every path
    if HAS_GRAD_ENTROPY:
        g_entropy, entropy = tl.load(grad_entropy_ptr + row).to(tl.float32) * keep, tl.load(entropy_ptr + row)
    for start in range(0, vocab_size, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)  # [BLOCK_V]
        in_row = cols < vocab_size
        log_p = tl.load(row_ptr + cols, mask=in_row, other=0.0).to(tl.float32) * inv_temperature - lse
        p = tl.exp(log_p)  # [BLOCK_V] fp32 softmax
        dz = g_logp * ((cols == target).to(tl.float32) - p)  # onehot - p
        if HAS_GRAD_ENTROPY:
            log_p = tl.where(p > 0, log_p, 0.0)  # z = -inf: p log p -> 0, not nan
            dz += g_entropy * (-p * (log_p + entropy))
        tl.store(grad_row_ptr + cols, (dz * inv_temperature).to(grad_logits_ptr.dtype.element_ty), mask=in_row)


class _TritonTokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, temperature, ignore_index, return_entropy):
        logits = logits if logits.stride(-1) == 1 else logits.contiguous()
        (n_rows, vocab_size), targets = logits.shape, targets.to(torch.int64).contiguous()
        logp = torch.empty(n_rows, dtype=torch.float32, device=logits.device)  # [N]
        lse = torch.empty_like(logp)  # [N]
        entropy = torch.empty_like(logp) if return_entropy else lse  # dummy ptr when unused
        block_v = _block_v(vocab_size)
        if n_rows:
            _token_logprobs_fwd_kernel[(n_rows,)](
                logits, logits.stride(0), targets, logp, lse, entropy, vocab_size, 1.0 / temperature, ignore_index,
                BLOCK_V=block_v, WITH_ENTROPY=return_entropy, num_warps=_num_warps(block_v))
        ctx.save_for_backward(logits, targets, lse, entropy if return_entropy else None)
        ctx.temperature, ctx.ignore_index, ctx.block_v = temperature, ignore_index, block_v
        return (logp, entropy) if return_entropy else logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        logits, targets, lse, entropy = ctx.saved_tensors
        n_rows, vocab_size = logits.shape
        grad_logits = torch.empty((n_rows, vocab_size), dtype=logits.dtype, device=logits.device)
        has_grad_entropy = entropy is not None and grad_entropy is not None
        if n_rows:
            _token_logprobs_bwd_kernel[(n_rows,)](
                logits, logits.stride(0), grad_logits, targets, lse, entropy if has_grad_entropy else lse,
                grad_logp.contiguous() if grad_logp is not None else lse,
                grad_entropy.contiguous() if has_grad_entropy else lse, vocab_size, 1.0 / ctx.temperature,
                ctx.ignore_index, BLOCK_V=ctx.block_v, HAS_GRAD_LOGP=grad_logp is not None,
                HAS_GRAD_ENTROPY=has_grad_entropy, num_warps=_num_warps(ctx.block_v))
        return grad_logits, None, None, None, None


def triton_token_logprobs(logits, targets, *, temperature=1.0, return_entropy=False):
    """The contract of minichord.lm_head.reference_token_logprobs; logp, entropy fp32, gradient in the logits dtype."""
    check_logits_targets(logits, targets, temperature)
    if logits.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"logits dtype must be fp32/fp16/bf16, got {logits.dtype}")
    return _TritonTokenLogprobs.apply(logits, targets, float(temperature), IGNORE_INDEX, bool(return_entropy))
