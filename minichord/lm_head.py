"""The lm head's two hot operations in torch, and the dispatch to their Triton kernels (`kernel_backend`):

token log-probs (kernels/logprobs.py): logits [N, V], targets [N] -> logp [N] (+ entropy H [N]), where logits exist.
fused lm-head loss (kernels/fused_loss.py): hidden [N, H], lm-head weight [V, H] -> the training loss
    L = losses.chord_loss(logp(hidden @ weight^T), ...) over token chunks: the [N, V] logits never exist at once.

Math is fp32 (fp64 for fp64 inputs, for gradcheck) whatever the input dtype; gradients come in the input dtypes."""

import functools
import math
import os

import torch
from torch import Tensor

from minichord.config import ConfigError, LossConfig
from minichord.losses import IGNORE_INDEX, FusedLossOutput, check_fused_inputs, check_logits_targets, chord_loss

KERNEL_BACKENDS, _ENV_VAR = ("auto", "torch", "triton"), "MINICHORD_KERNELS"
_CHUNK_ELEMENTS = 1 << 22  # torch path: about this many fp32 logits (16 MB) per chunk on a CPU


def default_chunk_rows(hidden: Tensor, weight: Tensor) -> int:
    """Rows per torch-path chunk; 16x on CUDA, where 27-row chunks at V = 151,936 cost 1.8 s/batch (H200)."""
    return max(1, _CHUNK_ELEMENTS * (16 if hidden.is_cuda else 1) // weight.shape[0])


def kernel_backend(device: torch.device | str | None = None) -> str:
    """"torch" or "triton" for tensors on `device` (None: the default CUDA device if any) by MINICHORD_KERNELS:
    triton (on CPU tensors it needs TRITON_INTERPRET=1), torch, or auto (unset): triton on CUDA, torch elsewhere."""
    if (value := os.environ.get(_ENV_VAR, "").strip().lower() or "auto") not in KERNEL_BACKENDS:
        raise ConfigError(f"{_ENV_VAR}={os.environ[_ENV_VAR]!r}: must be one of {', '.join(KERNEL_BACKENDS)}")
    if value != "auto":
        return value
    is_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    return "triton" if is_cuda else "torch"


def _compute_dtype(*tensors: Tensor) -> torch.dtype:  # the math's dtype (module docstring)
    return functools.reduce(torch.promote_types, [t.dtype for t in tensors], torch.float32)


def reference_token_logprobs(logits: Tensor, targets: Tensor, *, temperature: float = 1.0, return_entropy=False):
    """Token log-probs, the readable definition: log_softmax in fp32 and a gather -> logp [N] (and H [N]).

        logp_t = (logits_t / T)[y_t] - logsumexp_v(logits_tv / T),   H_t = -sum_v p_tv log p_tv"""
    check_logits_targets(logits, targets, temperature)
    valid = targets != IGNORE_INDEX  # [N]
    logprobs = torch.log_softmax(logits.to(_compute_dtype(logits)) / temperature, dim=-1)  # [N, V]
    logp = torch.where(valid, logprobs.gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1), 0.0)  # [N]
    if not return_entropy:
        return logp
    probs = logprobs.exp()  # [N, V]
    # p log p -> 0 where p == 0 (a -inf logit); masked_fill keeps that gradient finite too
    entropy = -(probs * logprobs.masked_fill(probs == 0, 0.0)).sum(dim=-1)  # [N]
    return logp, torch.where(valid, entropy, 0.0)


def token_logprobs(logits: Tensor, targets: Tensor, *, temperature: float = 1.0, return_entropy: bool = False):
    """Token log-probs, autograd-aware: the Triton kernel on CUDA, `reference_token_logprobs` elsewhere."""
    if kernel_backend(logits.device) == "triton":
        from minichord.kernels.logprobs import triton_token_logprobs
        return triton_token_logprobs(logits, targets, temperature=temperature, return_entropy=return_entropy)
    return reference_token_logprobs(logits, targets, temperature=temperature, return_entropy=return_entropy)


@torch.no_grad()
def logprobs_from_hidden(hidden: Tensor, weight: Tensor, targets: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Token log-probs from hidden [N, H] and the lm-head [V, H], no gradient: logp [N] fp32,
    logp_t = log_softmax(hidden_t W^T / T)[y_t], default_chunk_rows x V logits at once."""
    chunk_size = default_chunk_rows(hidden, weight)
    logp = torch.zeros(hidden.shape[0], dtype=_compute_dtype(hidden, weight), device=hidden.device)  # [N]
    for start in range(0, hidden.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        logp[rows] = token_logprobs(hidden[rows] @ weight.T, targets[rows], temperature=temperature)  # [n, V] -> [n]
    return logp


class _ChunkedFusedLoss(torch.autograd.Function):
    """The fused lm-head loss in torch; forward computes each token chunk c's gradients at once:

        logits_c = hidden_c W^T,  L_c = chord_loss(logp(logits_c), ...),
        grad_hidden_c = dL_c / dhidden_c,  grad_W += dL_c / dW   (torch.autograd.grad)

    Backward only scales them by grad_output: exact, since L is a sum over tokens with fixed coefficients."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, coef, is_expert, advantages, old_logp, ref_logp,
                spec, temperature, chunk_size):
        n_tokens, dtype, device = hidden.shape[0], _compute_dtype(hidden, weight), hidden.device
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        weight_c = weight.detach().to(dtype).requires_grad_(need_weight)  # [V, H]
        grad_hidden = torch.zeros(hidden.shape, dtype=dtype, device=device) if need_hidden else None  # [N, H]
        grad_weight = torch.zeros_like(weight_c) if need_weight else None  # [V, H]
        loss = torch.zeros((), dtype=dtype, device=device)
        logp, entropy = (torch.zeros(n_tokens, dtype=dtype, device=device) for _ in range(2))  # [N] each
        clipped = torch.zeros(n_tokens, dtype=torch.bool, device=device)  # [N]
        for start in range(0, n_tokens, chunk_size):
            rows = slice(start, min(start + chunk_size, n_tokens))
            hidden_c = hidden[rows].detach().to(dtype).requires_grad_(need_hidden)  # [n, H]
            with torch.enable_grad():
                logp_c, entropy_c = reference_token_logprobs(hidden_c @ weight_c.T, targets[rows],
                                                             temperature=temperature, return_entropy=True)  # [n]
                loss_c, _, clipped[rows] = chord_loss(
                    logp_c, entropy_c, is_expert[rows], advantages[rows], old_logp[rows], coef[rows], spec,
                    None if ref_logp is None else ref_logp[rows])
            wrt = [t for t, need in ((hidden_c, need_hidden), (weight_c, need_weight)) if need]
            grads = iter(torch.autograd.grad(loss_c, wrt) if wrt else ())
            if need_hidden:
                grad_hidden[rows] = next(grads)  # [n, H]
            if need_weight:
                grad_weight += next(grads)  # [V, H]
            loss += loss_c.detach()
            logp[rows], entropy[rows] = logp_c.detach(), entropy_c.detach()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.input_dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(logp, entropy, clipped)
        return loss, logp, entropy, clipped

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp, _grad_entropy, _grad_clipped):
        grads = [None if g is None else (g * grad_loss).to(dtype)
                 for g, dtype in zip(ctx.saved_tensors, ctx.input_dtypes)]  # [N, H], [V, H]
        return (*grads, *(None,) * 9)


def fused_token_loss(hidden: Tensor, weight: Tensor, targets: Tensor, coef: Tensor, is_expert: Tensor,
                     advantages: Tensor, old_logp: Tensor, spec: LossConfig, *, ref_logp: Tensor | None = None,
                     temperature: float = 1.0, chunk_size: int | None = None) -> FusedLossOutput:
    """The fused lm-head loss (module docstring), at most chunk_size x V logits alive (None: default_chunk_rows
    here, CHUNK_BYTES in the kernel). Gradients are computed in the forward: backward twice is not supported."""
    check_fused_inputs(hidden, weight, targets, coef, is_expert, advantages, old_logp, ref_logp, spec,
                       temperature, chunk_size)
    if kernel_backend(hidden.device) == "triton":
        from minichord.kernels.fused_loss import triton_fused_token_loss
        return triton_fused_token_loss(hidden, weight, targets, coef, is_expert, advantages, old_logp, spec,
                                       ref_logp=ref_logp, temperature=temperature, chunk_size=chunk_size)
    chunk_size = chunk_size or default_chunk_rows(hidden, weight)
    detached = [None if t is None else t.detach() for t in (coef, advantages, old_logp, ref_logp)]
    return FusedLossOutput(*_ChunkedFusedLoss.apply(hidden, weight, targets, detached[0], is_expert, *detached[1:],
                                                    spec, float(temperature), int(chunk_size)))


def stat_sums(out: FusedLossOutput | None, is_expert: Tensor, device) -> Tensor:
    """The sums behind an optimizer step's metrics, from the fused loss's outputs (logp, entropy, clipped: [N]):
    [loss, N_on, sum H, clipped, N_exp, sum p, sum p(1 - p), sum -logp], fp64 (zeros for a rank without tokens)."""
    if out is None:
        return torch.zeros(8, dtype=torch.float64, device=device)
    on, ex = ~is_expert, is_expert
    p_exp = out.logp[ex].exp()  # [N_exp]
    return torch.stack([x.double() for x in (out.loss, on.sum(), out.entropy[on].sum(), out.clipped[on].sum(),
                                             ex.sum(), p_exp.sum(), (p_exp * (1 - p_exp)).sum(), -out.logp[ex].sum())])


def update_stats(sums: Tensor, grad_norm: Tensor) -> dict[str, float]:
    """One optimizer step's metrics from `stat_sums` (summed over ranks): means over the step's tokens."""
    loss, n_on, entropy, clipped, n_exp, p, phi, nll = sums.tolist()
    return {"loss": loss, "grad_norm": grad_norm.item(), "entropy": entropy / n_on if n_on else math.nan,
            "clip_fraction": clipped / n_on if n_on else 0.0, "expert_p": p / n_exp if n_exp else math.nan,
            "expert_phi": phi / n_exp if n_exp else math.nan, "expert_nll": nll / n_exp if n_exp else math.nan}
