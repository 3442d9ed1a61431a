"""Gradient accumulation: one (mini-)batch's loss and gradients computed over micro-batches of sequences,
equal to one forward/backward of the whole batch (what lets a 0.5B-1.5B model train on one GPU).

    coef_t = token_coefficients(whole batch)    (1 - mu) / N_on, mu / N_exp (LUFFY: 1 / N), N over the WHOLE batch
    for each micro-batch m (micro_batch_seqs sequences, tokens T_m):
        L_m = sum_{t in T_m} coef_t l_t ;   L_m.backward()              # .grad accumulates dL_m / dtheta
    L = sum_m L_m = sum_t coef_t l_t,   grad = sum_m dL_m / dtheta      # the full batch's loss and gradient

No micro-batch is normalised on its own: each coef_t already divides by the whole batch's token counts, so
the result does not depend on the split (the official code's per-micro-batch token-mean does; DESIGN.md §4).
The caller computes `coef` once per (mini-)batch, zeroes the gradients before and steps once after.
Precision (minichord/device.py): the model runs under `autocast(device, dtype)`; the fused loss gets its
hidden states and lm-head in `loss_dtype(dtype)` and keeps its own math in fp32.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from minichord import ops
from minichord.batch import TokenBatch
from minichord.device import autocast, loss_dtype
from minichord.losses import TokenLossSpec


def micro_batches(batch: TokenBatch, micro_batch_seqs: int) -> list[tuple[TokenBatch, Optional[Tensor]]]:
    """[(micro-batch, its tokens' mask over batch [N] or None for the whole batch)], sequences in order."""
    n_seqs = batch.ids.shape[0]
    if micro_batch_seqs <= 0 or micro_batch_seqs >= n_seqs:
        return [(batch, None)]
    out = []
    for seq_ids in torch.arange(n_seqs).split(micro_batch_seqs):
        out.append((batch.select(seq_ids), torch.isin(batch.rows, seq_ids.to(batch.rows.device))))  # mask [N]
    return out


def hidden_states(model, batch: TokenBatch) -> Tensor:
    """The final-normed hidden state that predicts each response token: [N, D]."""
    hidden = model(batch.ids, attention_mask=batch.attention_mask, return_hidden=True)  # [M, L, D]
    return hidden[batch.rows, batch.cols]  # [N, D]


def _cast(hidden: Tensor, weight: Tensor, dtype: str) -> tuple[Tensor, Tensor]:
    cast_to = loss_dtype(dtype)
    return (hidden, weight) if cast_to is None else (hidden.to(cast_to), weight.to(cast_to))


@torch.no_grad()
def batch_logprobs(model, batch: TokenBatch, temperature: float, micro_batch_seqs: int = 0,
                   dtype: str = "fp32") -> Tensor:
    """logp_t under `model` for every token of `batch` ([N], fp32 or fp64), micro-batch by micro-batch, the
    logits chunked over tokens (ops.logprobs_from_hidden: the Triton log-prob kernel on CUDA)."""
    logp = torch.zeros(batch.num_tokens, dtype=torch.float64 if model.lm_head_weight.dtype == torch.float64
                       else torch.float32, device=batch.targets.device)  # [N]
    for micro, mask in micro_batches(batch, micro_batch_seqs):
        with autocast(micro.ids.device, dtype):
            hidden = hidden_states(model, micro)  # [n, D]
        with torch.autocast(micro.ids.device.type, enabled=False):
            hidden, weight = _cast(hidden, model.lm_head_weight, dtype)
            values = ops.logprobs_from_hidden(hidden, weight, micro.targets, temperature=temperature)  # [n]
        if mask is None:
            logp = values.to(logp.dtype)
        else:
            logp[mask] = values.to(logp.dtype)
    return logp


def backward_loss(model, batch: TokenBatch, coef: Tensor, spec: TokenLossSpec, temperature: float,
                  micro_batch_seqs: int = 0, dtype: str = "fp32",
                  ref_logp: Optional[Tensor] = None) -> ops.FusedLossOutput:
    """Forward + backward of L = sum_t coef_t l_t (losses.chord_loss via ops.fused_token_loss), one
    micro-batch at a time; gradients add up in the parameters' .grad. Returns the detached total loss
    and logp / entropy / clipped for every token of `batch` ([N], in its token order)."""
    n = batch.num_tokens
    device = batch.targets.device
    total = torch.zeros((), dtype=torch.float64 if coef.dtype == torch.float64 else torch.float32, device=device)
    logp, entropy = torch.zeros(n, dtype=total.dtype, device=device), torch.zeros(n, dtype=total.dtype, device=device)
    clipped = torch.zeros(n, dtype=torch.bool, device=device)  # [N]
    for micro, mask in micro_batches(batch, micro_batch_seqs):
        pick = (lambda t: t) if mask is None else (lambda t: None if t is None else t[mask])  # [N] -> [n]
        with autocast(device, dtype):
            hidden = hidden_states(model, micro)  # [n, D]
        with torch.autocast(device.type, enabled=False):
            hidden, weight = _cast(hidden, model.lm_head_weight, dtype)
            out = ops.fused_token_loss(hidden, weight, micro.targets, pick(coef), micro.is_expert, micro.advantages,
                                       micro.old_logp, spec, ref_logp=pick(ref_logp), temperature=temperature)
            out.loss.backward()
        total += out.loss.detach().to(total.dtype)
        where = slice(None) if mask is None else mask
        logp[where], entropy[where], clipped[where] = out.logp.to(total.dtype), out.entropy.to(total.dtype), out.clipped
    return ops.FusedLossOutput(loss=total, logp=logp, entropy=entropy, clipped=clipped)
