"""Torch implementations of the two hot ops, and dispatch to the Triton kernels.

Tier 1, token log-probs:  logits [N, V], targets [N] -> logp [N] (+ entropy [N])

    logp_t = log softmax(logits_t / T)[y_t]
    H_t    = -sum_v p_tv log p_tv,   p_t = softmax(logits_t / T)

Tier 2, fused linear + token loss:  hidden [N, H], lm_head weight [V, H] -> scalar loss

    logits = hidden @ weight^T            (never materialised for all N at once when chunked)
    loss   = sum_t coef_t * l_t(logp_t)  -  entropy_coef * sum_{on-policy t} coef_t * H_t

with l_t the per-token loss of `losses.token_losses`. All math is done in fp32 (fp64 if the
input is fp64, so gradcheck works) whatever the input dtype; gradients come back in the
input dtypes.

Dispatch: `kernel_backend()` reads MINICHORD_KERNELS=torch|triton; unset means Triton iff
CUDA is available (and, when unset, CPU tensors always take the torch path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from minichord.losses import TokenLossSpec, token_losses

KERNEL_BACKENDS = ("torch", "triton")
_ENV_VAR = "MINICHORD_KERNELS"
_CHUNK_ELEMENTS = 1 << 22  # default chunk: about this many fp32 logits (16 MB) at a time


def kernel_backend() -> str:
    """"torch" or "triton": env MINICHORD_KERNELS if set, else "triton" iff CUDA is available."""
    value = os.environ.get(_ENV_VAR, "").strip().lower()
    if not value:
        return "triton" if torch.cuda.is_available() else "torch"
    if value not in KERNEL_BACKENDS:
        raise ValueError(f"{_ENV_VAR}={os.environ[_ENV_VAR]!r} is not valid; "
                         f"use one of {list(KERNEL_BACKENDS)}")
    return value


def _use_triton(tensor: Tensor) -> bool:
    backend = kernel_backend()
    if os.environ.get(_ENV_VAR, "").strip():
        return backend == "triton"  # forced: on CPU this needs TRITON_INTERPRET=1
    return backend == "triton" and tensor.is_cuda


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp32, or fp64 when an input is fp64 (bf16 / fp16 inputs are upcast)."""
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


# ----------------------------------------------------------------------------------------
# Tier 1: token log-probs


def reference_token_logprobs(logits: Tensor, targets: Tensor, *, temperature: float = 1.0,
                             ignore_index: int = -100, return_entropy: bool = False):
    """The readable definition: log_softmax in fp32 and a gather.

        logp_t = (logits_t / T)[y_t] - logsumexp_v(logits_tv / T)
        H_t    = -sum_v p_tv log p_tv

    Rows whose target is `ignore_index` get logp = 0 and entropy = 0, with no gradient.
    logits [N, V] any float dtype, targets [N] long. Returns logp [N] (and entropy [N]) in
    fp32 (fp64 for fp64 logits).
    """
    _check_logits_targets(logits, targets, temperature)
    valid = targets != ignore_index  # [N]
    vocab = logits.shape[1]
    if (valid & ((targets < 0) | (targets >= vocab))).any():
        bad = targets[valid & ((targets < 0) | (targets >= vocab))]
        raise ValueError(f"targets out of range [0, {vocab}): e.g. {bad[:5].tolist()} "
                         f"(ignore_index={ignore_index})")
    scaled = logits.to(_compute_dtype(logits)) / temperature  # [N, V]
    logprobs = torch.log_softmax(scaled, dim=-1)  # [N, V]
    safe_targets = torch.where(valid, targets, 0)  # [N]
    logp = logprobs.gather(1, safe_targets[:, None]).squeeze(1)  # [N]
    logp = torch.where(valid, logp, 0.0)  # [N]
    if not return_entropy:
        return logp
    probs = logprobs.exp()  # [N, V]
    # p log p -> 0 where p == 0 (a -inf logit); masked_fill keeps that gradient finite too
    entropy = -(probs * logprobs.masked_fill(probs == 0, 0.0)).sum(dim=-1)  # [N]
    return logp, torch.where(valid, entropy, 0.0)


def token_logprobs(logits: Tensor, targets: Tensor, *, temperature: float = 1.0,
                   ignore_index: int = -100, return_entropy: bool = False):
    """Token log-probs (and entropy), autograd-aware: Triton on CUDA, torch elsewhere.

    Same contract as `reference_token_logprobs`.
    """
    if _use_triton(logits):
        from minichord.kernels.logprobs import triton_token_logprobs
        return triton_token_logprobs(logits, targets, temperature=temperature,
                                     ignore_index=ignore_index, return_entropy=return_entropy)
    return reference_token_logprobs(logits, targets, temperature=temperature,
                                    ignore_index=ignore_index, return_entropy=return_entropy)


# ----------------------------------------------------------------------------------------
# Tier 2: fused linear + token-weighted loss


@dataclass
class FusedLossOutput:
    loss: Tensor  # scalar, differentiable w.r.t. hidden and weight
    logp: Tensor  # [N] fp32, detached
    entropy: Tensor  # [N] fp32, detached
    clipped: Tensor  # [N] bool, tokens whose gradient the PPO clip zeroes


def _loss_from_hidden(hidden: Tensor, weight: Tensor, targets: Tensor, coef: Tensor,
                      is_expert: Tensor, advantages: Tensor, old_logp: Tensor,
                      ref_logp: Optional[Tensor], spec: TokenLossSpec, temperature: float):
    """hidden [n, H], weight [V, H] (both already in the compute dtype) -> loss of n tokens.

        loss = sum_t coef_t l_t - entropy_coef * sum_{on-policy t} coef_t H_t
    """
    logits = hidden @ weight.T  # [n, V]
    logp, entropy = reference_token_logprobs(logits, targets, temperature=temperature,
                                             return_entropy=True)  # [n], [n]
    loss_tok, clipped = token_losses(logp, is_expert, advantages, old_logp, spec, ref_logp)
    coef = coef.to(logp.dtype)  # [n]
    loss = (coef * loss_tok).sum()
    if spec.entropy_coef > 0.0:
        onpolicy = ~is_expert.bool()  # [n]
        loss = loss - spec.entropy_coef * (coef * entropy * onpolicy).sum()
    return loss, logp, entropy, clipped


def reference_fused_token_loss(hidden: Tensor, weight: Tensor, targets: Tensor, coef: Tensor,
                               is_expert: Tensor, advantages: Tensor, old_logp: Tensor,
                               spec: TokenLossSpec, *, ref_logp: Optional[Tensor] = None,
                               temperature: float = 1.0,
                               chunk_size: Optional[int] = None) -> FusedLossOutput:
    """Unchunked reference: full logits [N, V] in fp32, then the reference log-probs and
    `losses.token_losses`. `chunk_size` is accepted for a uniform signature and ignored."""
    _check_fused_inputs(hidden, weight, targets, coef, is_expert, advantages, old_logp,
                        ref_logp, spec, temperature, chunk_size)
    dtype = _compute_dtype(hidden, weight)
    loss, logp, entropy, clipped = _loss_from_hidden(
        hidden.to(dtype), weight.to(dtype), targets, coef, is_expert, advantages, old_logp,
        ref_logp, spec, temperature)
    return FusedLossOutput(loss, logp.detach(), entropy.detach(), clipped.detach())


class _ChunkedFusedLoss(torch.autograd.Function):
    """Forward walks over token chunks; each chunk's logits live only inside its iteration.

    Per chunk c: logits_c = hidden_c W^T, loss_c as in `_loss_from_hidden`, and at once
    grad_hidden_c = d loss_c / d hidden_c, grad_W += d loss_c / d W (torch.autograd.grad).
    The gradients are stored; backward only scales them by the incoming grad_output. This
    is exact because the loss is a sum over tokens with precomputed coefficients.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, coef, is_expert, advantages, old_logp, ref_logp,
                spec, temperature, chunk_size):
        n_tokens = hidden.shape[0]
        dtype = _compute_dtype(hidden, weight)
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        weight_c = weight.detach().to(dtype).requires_grad_(need_weight)  # [V, H]
        grad_hidden = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if need_hidden else None
        grad_weight = torch.zeros_like(weight_c) if need_weight else None  # [V, H]
        loss = torch.zeros((), dtype=dtype, device=hidden.device)
        logp = torch.zeros(n_tokens, dtype=dtype, device=hidden.device)  # [N]
        entropy = torch.zeros(n_tokens, dtype=dtype, device=hidden.device)  # [N]
        clipped = torch.zeros(n_tokens, dtype=torch.bool, device=hidden.device)  # [N]
        for start in range(0, n_tokens, chunk_size):
            rows = slice(start, min(start + chunk_size, n_tokens))
            hidden_c = hidden[rows].detach().to(dtype).requires_grad_(need_hidden)  # [n, H]
            with torch.enable_grad():
                loss_c, logp_c, entropy_c, clipped_c = _loss_from_hidden(
                    hidden_c, weight_c, targets[rows], coef[rows], is_expert[rows],
                    advantages[rows], old_logp[rows],
                    None if ref_logp is None else ref_logp[rows], spec, temperature)
            wrt = [t for t, need in ((hidden_c, need_hidden), (weight_c, need_weight)) if need]
            if wrt:
                grads = list(torch.autograd.grad(loss_c, wrt))
                if need_hidden:
                    grad_hidden[rows] = grads.pop(0)  # [n, H]
                if need_weight:
                    grad_weight += grads.pop(0)  # [V, H]
            loss += loss_c.detach()
            logp[rows], entropy[rows], clipped[rows] = logp_c.detach(), entropy_c.detach(), clipped_c
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.input_dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(logp, entropy, clipped)
        return loss, logp, entropy, clipped

    @staticmethod
    def backward(ctx, grad_loss, _grad_logp, _grad_entropy, _grad_clipped):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.input_dtypes
        if grad_hidden is not None:
            grad_hidden = (grad_hidden * grad_loss).to(hidden_dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_loss).to(weight_dtype)
        return (grad_hidden, grad_weight) + (None,) * 9


def chunked_fused_token_loss(hidden: Tensor, weight: Tensor, targets: Tensor, coef: Tensor,
                             is_expert: Tensor, advantages: Tensor, old_logp: Tensor,
                             spec: TokenLossSpec, *, ref_logp: Optional[Tensor] = None,
                             temperature: float = 1.0,
                             chunk_size: Optional[int] = None) -> FusedLossOutput:
    """Same result as `reference_fused_token_loss`, with at most chunk_size x V logits alive.

    chunk_size=None picks about 2^22 logits per chunk. Gradients are computed during the
    forward (memory bounded), so calling backward twice is not supported.
    """
    _check_fused_inputs(hidden, weight, targets, coef, is_expert, advantages, old_logp,
                        ref_logp, spec, temperature, chunk_size)
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // weight.shape[0])
    loss, logp, entropy, clipped = _ChunkedFusedLoss.apply(
        hidden, weight, targets, coef.detach(), is_expert, advantages.detach(),
        old_logp.detach(), None if ref_logp is None else ref_logp.detach(), spec,
        float(temperature), int(chunk_size))
    return FusedLossOutput(loss, logp, entropy, clipped)


def fused_token_loss(hidden: Tensor, weight: Tensor, targets: Tensor, coef: Tensor,
                     is_expert: Tensor, advantages: Tensor, old_logp: Tensor,
                     spec: TokenLossSpec, *, ref_logp: Optional[Tensor] = None,
                     temperature: float = 1.0,
                     chunk_size: Optional[int] = None) -> FusedLossOutput:
    """Fused lm-head + CHORD token loss: Triton on CUDA, chunked torch elsewhere."""
    args = (hidden, weight, targets, coef, is_expert, advantages, old_logp, spec)
    kwargs = dict(ref_logp=ref_logp, temperature=temperature, chunk_size=chunk_size)
    if _use_triton(hidden):
        from minichord.kernels.fused_loss import triton_fused_token_loss
        return triton_fused_token_loss(*args, **kwargs)
    return chunked_fused_token_loss(*args, **kwargs)


# ----------------------------------------------------------------------------------------
# Input checks


def _check_logits_targets(logits: Tensor, targets: Tensor, temperature: float) -> None:
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, V], got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"targets must be [N]={logits.shape[0]}, got shape {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"targets must be int64 or int32, got {targets.dtype}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _check_fused_inputs(hidden, weight, targets, coef, is_expert, advantages, old_logp,
                        ref_logp, spec, temperature, chunk_size) -> None:
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} "
                         f"and {tuple(weight.shape)}")
    n_tokens = hidden.shape[0]
    vectors = dict(targets=targets, coef=coef, is_expert=is_expert, advantages=advantages,
                   old_logp=old_logp)
    if ref_logp is not None:
        vectors["ref_logp"] = ref_logp
    for name, vec in vectors.items():
        if tuple(vec.shape) != (n_tokens,):
            raise ValueError(f"{name} must be [N]=[{n_tokens}], got shape {tuple(vec.shape)}")
    if not isinstance(spec, TokenLossSpec):
        raise ValueError(f"spec must be a TokenLossSpec, got {type(spec).__name__}")
    if spec.kl_coef > 0.0 and ref_logp is None:
        raise ValueError("spec.kl_coef > 0 needs ref_logp")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
