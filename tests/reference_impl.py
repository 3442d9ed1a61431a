"""Unchunked torch reference of the fused lm-head loss, for tests only: the full [N, V] logits in fp32 (fp64 for
fp64 inputs), then minichord's readable definitions (lm_head.reference_token_logprobs and
losses.chord_loss). The chunked torch path and the Triton kernel are compared against it."""

import torch

from minichord.losses import chord_loss
from minichord.lm_head import FusedLossOutput, _compute_dtype, check_fused_inputs, reference_token_logprobs


def reference_fused_token_loss(hidden, weight, targets, coef, is_expert, advantages, old_logp, spec, *,
                               ref_logp=None, temperature=1.0, chunk_size=None) -> FusedLossOutput:
    """Same signature as lm_head.fused_token_loss; `chunk_size` is accepted and ignored."""
    check_fused_inputs(hidden, weight, targets, coef, is_expert, advantages, old_logp, ref_logp, spec,
                       temperature, chunk_size)
    dtype = _compute_dtype(hidden, weight)
    logits = hidden.to(dtype) @ weight.to(dtype).T  # [N, V]
    logp, entropy = reference_token_logprobs(logits, targets, temperature=temperature, return_entropy=True)
    loss, _, clipped = chord_loss(logp, entropy, is_expert, advantages, old_logp, coef, spec, ref_logp)
    return FusedLossOutput(loss, logp.detach(), entropy.detach(), clipped.detach())
