"""One token batch: on-policy rollouts and expert demonstrations packed together, and its forward/backward.

Sequences (`prompt + response`) are right-padded into ids [M, L]; the loss sees the N response tokens, each with
the hidden state that predicts it (position t-1 predicts token t):

    hidden[rows, cols]  ->  [N, D]      targets = ids[rows, cols + 1]  ->  [N]

Gradient accumulation over micro-batches of sequences equals one forward/backward of the whole batch:

    coef_t = token_coefficients(whole batch)    (1 - mu) / N_on, mu / N_exp (LUFFY: 1 / N), N over the WHOLE batch
    for each micro-batch m (micro_batch_seqs sequences, tokens T_m):
        L_m = sum_{t in T_m} coef_t l_t ;   L_m.backward()              # .grad accumulates dL_m / dtheta
    L = sum_m L_m = sum_t coef_t l_t,   grad = sum_m dL_m / dtheta      # the full batch's loss and gradient

The caller computes `coef` once per (mini-)batch, zeroes the gradients before and steps once after. The model runs
under `autocast(device, dtype)`; the fused loss gets its inputs in `loss_dtype(dtype)` and keeps fp32 math."""

import dataclasses

import torch
from torch import Tensor

from minichord import lm_head
from minichord.config import LossConfig
from minichord.device import autocast, loss_dtype


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
                          *(t[keep] for t in (self.cols, self.targets, self.is_expert, self.advantages, self.old_logp)))

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
    if (L := max(lengths)) > max_len:
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


def micro_batches(batch: TokenBatch, micro_batch_seqs: int) -> list[tuple[TokenBatch, Tensor | slice]]:
    """[(micro-batch, where its tokens are in batch: a mask [N], or slice(None) for the whole batch)], in order."""
    if micro_batch_seqs <= 0 or micro_batch_seqs >= (n_seqs := batch.ids.shape[0]):
        return [(batch, slice(None))]
    return [(batch.select(seq_ids), torch.isin(batch.rows, seq_ids.to(batch.rows.device)))  # mask [N]
            for seq_ids in torch.arange(n_seqs).split(micro_batch_seqs)]


def hidden_states(model, batch: TokenBatch, dtype: str) -> tuple[Tensor, Tensor]:
    """The final-normed hidden state that predicts each response token [N, D] (the model under autocast) and
    the lm-head weight [V, D], both cast to loss_dtype(dtype)."""
    with autocast(batch.ids.device, dtype):
        hidden = model(batch.ids, attention_mask=batch.attention_mask, return_hidden=True)  # [M, L, D]
    hidden, weight, cast_to = hidden[batch.rows, batch.cols], model.lm_head_weight, loss_dtype(dtype)  # [N, D]
    return (hidden, weight) if cast_to is None else (hidden.to(cast_to), weight.to(cast_to))


@torch.no_grad()
def batch_logprobs(model, batch: TokenBatch, temperature: float, micro_batch_seqs: int = 0, dtype="fp32") -> Tensor:
    """logp_t under `model` for every token of `batch` ([N], fp32 or fp64), micro-batch by micro-batch."""
    logp = batch.targets.new_zeros(batch.num_tokens, dtype=lm_head._compute_dtype(model.lm_head_weight))  # [N]
    for micro, where in micro_batches(batch, micro_batch_seqs):
        hidden, weight = hidden_states(model, micro, dtype)  # [n, D], [V, D]
        with torch.autocast(micro.ids.device.type, enabled=False):
            values = lm_head.logprobs_from_hidden(hidden, weight, micro.targets, temperature=temperature)  # [n]
        logp[where] = values.to(logp.dtype)
    return logp


def backward_loss(model, batch: TokenBatch, coef: Tensor, spec: LossConfig, temperature: float,
                  micro_batch_seqs: int = 0, dtype: str = "fp32",
                  ref_logp: Tensor | None = None) -> lm_head.FusedLossOutput:
    """Backward of L = sum_t coef_t l_t into .grad, per micro-batch -> detached L, [N] logp / entropy / clipped."""
    n, device = batch.num_tokens, batch.targets.device
    total = torch.zeros((), dtype=lm_head._compute_dtype(coef), device=device)
    logp, entropy = torch.zeros(n, dtype=total.dtype, device=device), torch.zeros(n, dtype=total.dtype, device=device)
    clipped = torch.zeros(n, dtype=torch.bool, device=device)  # [N]
    for micro, where in micro_batches(batch, micro_batch_seqs):
        hidden, weight = hidden_states(model, micro, dtype)  # [n, D], [V, D]
        with torch.autocast(device.type, enabled=False):
            out = lm_head.fused_token_loss(hidden, weight, micro.targets, coef[where], micro.is_expert,
                                           micro.advantages, micro.old_logp, spec, temperature=temperature,
                                           ref_logp=None if ref_logp is None else ref_logp[where])
            out.loss.backward()
        total += out.loss.detach().to(total.dtype)
        logp[where], entropy[where], clipped[where] = out.logp.to(total.dtype), out.entropy.to(total.dtype), out.clipped
    return lm_head.FusedLossOutput(loss=total, logp=logp, entropy=entropy, clipped=clipped)
