"""Packed batches: the real tokens of a padded batch as one sequence, for the layers that work per token.

A padded batch [B, T] spends the per-token layers (norms, q/k/v/o projections, MLP, LM head) on padding
too. `Transformer.forward(packed=True)` keeps only the N real tokens, x [1, N, D], and pads back to
[B, T] inside attention alone, the one place where tokens of a sequence meet. The values are those of
the padded forward (tests/test_model.py); the toy's pre-training batches are 64 % padding, so it halves
pre-training (results/toy-v4/README.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Packed:
    """One padded batch's packing. keep: [N] indices of attention_mask's True entries in the flattened
    [B * T], row-major; attn_mask: the padded forward's bool mask [B, 1, T, T], used inside attention."""

    def __init__(self, attention_mask: torch.Tensor, attn_mask: torch.Tensor):
        self.B, self.T = attention_mask.shape
        self.keep = attention_mask.flatten().nonzero().squeeze(1)  # [N]
        self.attn_mask = attn_mask  # bool [B, 1, T, T]

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [1, N, ...]: the real positions only."""
        return x.flatten(0, 1)[self.keep][None]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [1, H, N, hd], k and v [1, Hkv, N, hd] -> attention output [1, H, N, hd] (SDPA on the padded layout)."""
        def padded(t):  # [1, heads, N, hd] -> [B, heads, T, hd], zeros at the padding
            flat = t[0].transpose(0, 1).reshape(len(self.keep), -1)  # [N, heads * hd]
            full = flat.new_zeros(self.B * self.T, flat.shape[1]).index_copy(0, self.keep, flat)
            return full.view(self.B, self.T, t.shape[1], t.shape[3]).transpose(1, 2)

        out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=self.attn_mask,
                                             enable_gqa=True)  # [B, H, T, hd]
        return self.pack(out.transpose(1, 2)).transpose(1, 2)  # [1, H, N, hd]
