"""Packing on-policy rollouts and expert demonstrations into one token batch.

Every sequence is `prompt + response`; only response tokens carry a loss. Sequences are
right-padded into ids [M, L]; the loss sees the flat list of N response tokens, each with the
hidden state that predicts it (position t-1 predicts token t):

    hidden[rows, cols]  ->  [N, D]      targets = ids[rows, cols + 1]  ->  [N]
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Sequence:
    """One training sequence. `old_logprobs` are the sampler's (on-policy) or None (expert)."""

    prompt_ids: list[int]
    response_ids: list[int]
    is_expert: bool
    advantage: float = 0.0
    old_logprobs: list[float] | None = None


@dataclasses.dataclass
class TokenBatch:
    ids: torch.Tensor  # [M, L] long, right-padded
    attention_mask: torch.Tensor  # [M, L] bool
    rows: torch.Tensor  # [N] long: sequence of each response token
    cols: torch.Tensor  # [N] long: position of the hidden state that predicts it
    targets: torch.Tensor  # [N] long
    is_expert: torch.Tensor  # [N] bool
    advantages: torch.Tensor  # [N] fp32, the sequence's advantage broadcast to its tokens
    old_logp: torch.Tensor  # [N] fp32, sampler log-probs (0 on expert tokens)

    @property
    def num_tokens(self) -> int:
        return int(self.targets.numel())

    def select(self, seq_ids: torch.Tensor) -> "TokenBatch":
        """The sub-batch of the given sequences (PPO mini-batches, micro-batches), tokens in the same order;
        trailing columns that are padding in every selected sequence are dropped (causal: nothing changes)."""
        seq_ids = seq_ids.to(self.ids.device)
        keep = torch.isin(self.rows, seq_ids)  # [N]
        remap = torch.full((self.ids.shape[0],), -1, dtype=torch.long, device=self.ids.device)
        remap[seq_ids] = torch.arange(len(seq_ids), device=self.ids.device)
        width = int(self.attention_mask[seq_ids].sum(1).max()) if len(seq_ids) else 0
        return TokenBatch(self.ids[seq_ids, :width], self.attention_mask[seq_ids, :width], remap[self.rows[keep]],
                          self.cols[keep], self.targets[keep], self.is_expert[keep], self.advantages[keep],
                          self.old_logp[keep])

    def to(self, device) -> "TokenBatch":
        return TokenBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def split_example(ids: list[int], loss_mask: list[bool]) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a tokenizer's `encode_example`: the response is the masked tail."""
    start = loss_mask.index(True)
    return ids[:start], ids[start:]


def pack(sequences: list[Sequence], pad_id: int, max_len: int) -> TokenBatch:
    """Right-pad `sequences` into one TokenBatch; refuse sequences longer than `max_len`."""
    if not sequences:
        raise ValueError("cannot pack an empty list of sequences")
    lengths = [len(s.prompt_ids) + len(s.response_ids) for s in sequences]
    L = max(lengths)
    if L > max_len:
        raise ValueError(f"a sequence of {L} tokens exceeds the model context {max_len}")
    ids = torch.full((len(sequences), L), pad_id, dtype=torch.long)  # [M, L]
    attention_mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # [M, L], True on real tokens
    rows, cols, is_expert, advantages, old_logp = [], [], [], [], []
    for i, s in enumerate(sequences):
        p, r = len(s.prompt_ids), len(s.response_ids)
        ids[i, : p + r] = torch.tensor(s.prompt_ids + s.response_ids)
        rows += [i] * r
        cols += range(p - 1, p + r - 1)
        is_expert += [s.is_expert] * r
        advantages += [s.advantage] * r
        old_logp += s.old_logprobs if s.old_logprobs is not None else [0.0] * r
    rows_t, cols_t = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)  # [N]
    return TokenBatch(ids, attention_mask, rows_t, cols_t, ids[rows_t, cols_t + 1],
                      torch.tensor(is_expert, dtype=torch.bool), torch.tensor(advantages, dtype=torch.float32),
                      torch.tensor(old_logp, dtype=torch.float32))
