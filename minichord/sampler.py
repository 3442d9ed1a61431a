"""Batched generation with a KV cache, returning a `Rollout`: a left-padded prefill, then a `Transformer.decode_step`
per token (eager, compiled or a CUDA graph: SamplerConfig.compile; the graph is 3.2x faster on an H200).

A token is drawn from softmax(logits / T) restricted to the top-k / nucleus set, but the returned log-prob is the
unrestricted one, logprob_t = log_softmax(logits_t / T)[y_t] (T = 1 when greedy): the policy the trainer
differentiates, so old and new log-probs agree at the first update. The draw is by inverse CDF from one uniform
u_b per row and step, y_t = min{i : cdf_i > u_b cdf_V}, with u drawn for every row of the whole batch (`rows`):
a row's tokens do not depend on which other rows share its call (data-parallel ranks sample parts of a batch)."""

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from minichord.config import SamplerConfig
from minichord.device import autocast_dtype
from minichord.model import KVCache


@dataclass
class Rollout:
    tokens: torch.Tensor  # [B, T_new] long, pad_id after the sequence stopped
    logprobs: torch.Tensor  # [B, T_new] fp32, log_softmax(logits / T) at the sampled token, 0 at padding
    mask: torch.Tensor  # [B, T_new] bool, True on generated tokens including the eos
    finished: torch.Tensor  # [B] bool, True if eos was emitted


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits [B, V] (already / T) with -inf outside the top-k (k = 0: all), then outside the nucleus: sorted
    descending, token i is dropped when the mass before it, cumsum_i - p_i, reaches top_p (never the first)."""
    if 0 < top_k < logits.shape[-1]:
        kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
        sorted_probs = sorted_logits.softmax(dim=-1)
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p  # [B, V]: the mass before token i >= top_p
        drop_sorted[:, 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


CACHE_CHUNK = 16  # the eager sampler's KV cache grows this many slots at a time (KVCache)

_compiled_steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its compiled decode_step


def compiled_decode_step(model):
    """torch.compile(model.decode_step), once per model; dynamic: one trace for every batch and cache size."""
    if model not in _compiled_steps:
        _compiled_steps[model] = torch.compile(model.decode_step, dynamic=True)
    return _compiled_steps[model]


class GraphedDecodeStep:
    """model.decode_step as a CUDA graph over the preallocated cache, captured at the first call; logits overwritten."""

    def __init__(self, model):
        self.model, self.graph = model, None

    def __call__(self, ids, positions, attention_mask, slot, cache: KVCache):  # the same cache at every call
        if self.graph is None:
            self.inputs = [x.clone() for x in (ids, positions, attention_mask, slot)]
            dtype = autocast_dtype(ids.device)  # autocast's weight cache cannot live in a graph
            autocast = torch.autocast("cuda", dtype=dtype, cache_enabled=False, enabled=dtype is not None)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), autocast:
                for _ in range(2):
                    self.model.decode_step(*self.inputs, cache)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), autocast:
                self.logits = self.model.decode_step(*self.inputs, cache)  # [B, 1, V]
        for buf, x in zip(self.inputs, (ids, positions, attention_mask, slot)):
            buf.copy_(x)
        self.graph.replay()
        return self.logits


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> ids [B, P] long and mask [B, P] bool, real tokens at the right end."""
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (P - len(p)) + [int(t) for t in p] for p in prompts], dtype=torch.long)
    return ids.to(device), torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in prompts]).to(device)


def generate(model, prompts: list[list[int]], cfg: SamplerConfig, *, eos_id: int | list[int], pad_id: int,
             generator: torch.Generator | None = None, use_cache: bool = True,
             vocab_size: int | None = None, rows: tuple[int, int] | None = None) -> Rollout:
    """Sample continuations of ragged `prompts`; a sequence stops after emitting `eos_id` (or any id of a list).
    vocab_size: the tokenizer's, where the model has more rows (Qwen2: 151,665 of 151,936): extra logits dropped.
    rows = (first, total): the prompts are rows first... of a batch of `total` (default: the whole batch)."""
    param = next(model.parameters())
    device, V = param.device, model.cfg.vocab_size
    dtype = autocast_dtype(device) or param.dtype  # under bf16 autocast (minichord/device.py): a bf16 KV cache
    if not prompts:
        raise ValueError("generate() needs at least one prompt, got an empty list")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
        if bad := [t for t in p if not 0 <= int(t) < V]:
            raise ValueError(f"prompt {i} has token ids outside [0, {V}): {bad[:5]}")
    if (P := max(len(p) for p in prompts)) + cfg.max_new_tokens > model.cfg.max_seq_len:
        raise ValueError(f"longest prompt ({P} tokens) + max_new_tokens ({cfg.max_new_tokens}) = "
                         f"{P + cfg.max_new_tokens} exceeds the model's max_seq_len={model.cfg.max_seq_len}")
    if vocab_size is not None and not 0 < vocab_size <= V:
        raise ValueError(f"vocab_size={vocab_size} must be in [1, model vocab {V}]")
    if rows is not None and not (rows[0] >= 0 and rows[0] + len(prompts) <= rows[1]):
        raise ValueError(f"rows={rows}: {len(prompts)} prompts from row {rows[0]} do not fit in {rows[1]} rows")
    rows = rows or (0, len(prompts))
    rollout = _decode(model, prompts, cfg, device, dtype, eos_id, pad_id, generator, use_cache, vocab_size, rows)
    return Rollout(*(x.clone() for x in rollout))  # ordinary tensors: training may save them for backward


@torch.inference_mode()  # like no_grad, and cheaper per op: no version counters or view tracking
def _decode(model, prompts, cfg: SamplerConfig, device, dtype, eos_id, pad_id, generator, use_cache, vocab_size, rows):
    ids, mask = left_pad(prompts, pad_id, device)  # [B, P]
    B, P = ids.shape
    total = P + cfg.max_new_tokens
    stop_ids = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), dtype=torch.long, device=device)
    seq_mask = torch.cat([mask, torch.ones(B, cfg.max_new_tokens, dtype=torch.bool, device=device)], dim=1)

    step = getattr(model, "decode_step", None)  # None: a test double, stepped through its forward
    compiled = use_cache and step is not None and (cfg.compile if cfg.compile is not None else device.type == "cuda")
    graphed = compiled and device.type == "cuda"  # a CUDA graph needs fixed shapes: the whole cache from the start
    cache = KVCache(model.cfg, B, total, device, dtype, chunk=None if graphed else CACHE_CHUNK) if use_cache else None
    if step is None:
        logits = model(ids, attention_mask=mask, kv_cache=cache)[:, -1]  # [B, V] (prefill)
    else:  # the last position's logits only: [B, V], never [B, P, V] (151,936 columns a token on Qwen2.5)
        logits = model(ids, attention_mask=mask, kv_cache=cache, return_hidden=True)[:, -1] @ model.lm_head_weight.t()
    if compiled:
        step = GraphedDecodeStep(model) if graphed else compiled_decode_step(model)
    next_pos = mask.sum(dim=1, keepdim=True)  # [B, 1]: the first new token's position = real prompt tokens

    tokens = torch.full((B, cfg.max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(B, cfg.max_new_tokens, dtype=torch.float32, device=device)
    out_mask = torch.zeros(B, cfg.max_new_tokens, dtype=torch.bool, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(cfg.max_new_tokens):
        scaled = logits[:, :vocab_size].float()  # [B, V] (vocab_size None: all columns)
        if cfg.greedy:
            next_tok = scaled.argmax(dim=-1)  # [B]
        else:
            scaled = scaled / cfg.temperature
            cdf = filter_logits(scaled, cfg.top_k, cfg.top_p).softmax(dim=-1).cumsum(dim=-1)  # [B, V]
            u = torch.rand(rows[1], generator=generator, device=device)[rows[0]:rows[0] + B]  # [B] of the whole batch's
            next_tok = torch.searchsorted(cdf, (u[:, None] * cdf[:, -1:]), right=True)  # [B, 1]: first cdf_i > u cdf_V
            next_tok = next_tok.squeeze(-1).clamp(max=cdf.shape[-1] - 1)  # [B]
        next_logp = F.log_softmax(scaled, dim=-1).gather(-1, next_tok[:, None]).squeeze(-1)  # [B], unrestricted
        alive = ~finished
        tokens[:, t] = torch.where(alive, next_tok, pad_id)
        logprobs[:, t] = torch.where(alive, next_logp, 0.0)
        out_mask[:, t] = alive
        finished = finished | (alive & torch.isin(next_tok, stop_ids))
        if bool(finished.all()) or t + 1 == cfg.max_new_tokens:
            break
        if not use_cache:
            logits = model(torch.cat([ids, tokens[:, :t + 1]], dim=1), attention_mask=seq_mask[:, :P + t + 1])[:, -1]
        elif step is None:
            logits = model(tokens[:, t:t + 1], attention_mask=seq_mask[:, :P + t + 1], kv_cache=cache)[:, -1]
        else:
            cache.reserve(P + t + 1)  # grows by CACHE_CHUNK slots when full (graphed: all slots from the start)
            seen = seq_mask[:, :cache.capacity]  # the step attends over every allocated slot, later ones masked
            slot = torch.tensor([P + t], device=device) if compiled else P + t  # where token t's keys/values go
            logits = step(tokens[:, t:t + 1], next_pos + t, seen, slot, cache)[:, -1]  # [B, V]
    return tokens[:, :t + 1], logprobs[:, :t + 1], out_mask[:, :t + 1], finished
