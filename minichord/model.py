"""A Qwen2-family decoder-only transformer, written to be read.

    x_0 = embed(ids)
    for each layer:  h = x + Attn(RMSNorm(x));  x = h + MLP(RMSNorm(h))
    logits = RMSNorm(x) @ W_lm^T            (W_lm = the embedding when tied)

Parameter names are Hugging Face Qwen2's but for HF's `model.` prefix; a tied embedding has no `lm_head` at all.
Padding never shifts RoPE: positions count real tokens only (the sampler left-pads, training right-pads)."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from minichord.config import ModelConfig


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, S] bool -> [B, S] long: cumsum(mask) - 1, clamped at 0 (pads get one too, their outputs are unused)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class KVCache:
    """k[l], v[l]: layer l's keys/values [B, n_kv_heads, capacity, head_dim], filled in slots [0, length).
    chunk=None allocates all max_len slots at once (a CUDA graph's fixed shapes); an int grows them chunk at a time."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32,
                 chunk: int | None = None):
        if chunk is not None and chunk < 1:
            raise ValueError(f"KV cache chunk must be >= 1 slot (or None: all max_len at once), got {chunk}")
        empty = torch.zeros(batch_size, cfg.n_kv_heads, 0, cfg.head_dim, device=device, dtype=dtype)
        self.k, self.v = [empty] * cfg.n_layers, [empty] * cfg.n_layers
        self.batch_size, self.max_len, self.length, self.chunk = batch_size, max_len, 0, chunk
        self.reserve(max_len if chunk is None else 1)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    def reserve(self, end: int):
        """Make slots [0, end) exist, growing to the next multiple of chunk (<= max_len)."""
        if end <= self.capacity:
            return
        if end > self.max_len:
            raise ValueError(f"KV cache of max_len {self.max_len} cannot hold {end} slots")
        size = self.max_len if self.chunk is None else min(self.max_len, -(-end // self.chunk) * self.chunk)
        grow = (0, 0, 0, size - self.capacity)  # zeros in the new slots: hidden slots must be finite (0 * inf = nan)
        self.k, self.v = [F.pad(k, grow) for k in self.k], [F.pad(v, grow) for v in self.v]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        self.reserve(end := self.length + k.shape[2])
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # [B, n_kv, end, hd]


class CacheSlot:
    """One decode step's view of a KVCache: update() writes k, v [B, n_kv, 1, hd] at `slot`, returns slots [0, visible).
    slot: an int (eager) or a [1] long tensor (torch.compile: one trace for every step, not one per int value)."""

    def __init__(self, cache: KVCache, slot, visible: int):
        self.cache, self.visible = cache, visible
        self.slot = slot if torch.is_tensor(slot) else torch.tensor([slot], device=cache.k[0].device)  # [1] long

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        k_all, v_all = self.cache.k[layer], self.cache.v[layer]
        k_all.index_copy_(2, self.slot, k)
        v_all.index_copy_(2, self.slot, v)
        return k_all[:, :, :self.visible], v_all[:, :, :self.visible]  # [B, n_kv, visible, hd]


class Packed:
    """A padded batch's N real tokens as one sequence [1, N, D]: per-token layers skip the padding, attention alone
    pads back to [B, T] (the same values for half the pre-training time)."""

    def __init__(self, attention_mask: torch.Tensor, attn_mask: torch.Tensor):
        self.B, self.T = attention_mask.shape
        self.keep = attention_mask.flatten().nonzero().squeeze(1)  # [N]
        self.attn_mask = attn_mask  # bool [B, 1, T, T]

    def pack(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, ...] -> [1, N, ...]
        return x.flatten(0, 1)[self.keep][None]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        def padded(t):  # [1, heads, N, hd] -> [B, heads, T, hd], zeros at the padding
            flat = t[0].transpose(0, 1).reshape(len(self.keep), -1)  # [N, heads * hd]
            full = flat.new_zeros(self.B * self.T, flat.shape[1]).index_copy(0, self.keep, flat)
            return full.view(self.B, self.T, t.shape[1], t.shape[3]).transpose(1, 2)

        out = F.scaled_dot_product_attention(padded(q), padded(k), padded(v), attn_mask=self.attn_mask,
                                             enable_gqa=True)  # [B, H, T, hd]
        return self.pack(out.transpose(1, 2)).transpose(1, 2)  # [1, H, N, hd]


class RMSNorm(nn.Module):
    """y = w * x / sqrt(mean(x^2) + eps), normalised in fp32 (as Qwen2 does)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == self.weight.dtype == torch.float32:  # the weight inside the one call: bitwise the same in fp32
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)  # x / sqrt(mean(x^2) + eps), one kernel
        return self.weight * normed.to(x.dtype)  # bf16: rounded before the weight, as Qwen2 does


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float):
    """inv_freq_i = 1 / theta^(2i/d) (HF's order), angle[b,t,i] = pos[b,t] * inv_freq_i,
    cos = [cos(angle), cos(angle)], sin = [-sin(angle), sin(angle)]: rotate_half's minus sign moved into sin."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # [B, T, hd/2]
    return angles.cos().repeat(1, 1, 2), torch.cat([-angles.sin(), angles.sin()], dim=-1)  # [B, T, hd] each


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x' = x*cos + rotate_half(x)*sin_HF, rotate_half([a, b]) = [-b, a], computed as x*cos + roll(x, hd/2)*sin
    with rope_cos_sin's signed sin. x: [B, H, T, hd]; cos, sin: [B, T, hd]."""
    x32 = x.float()
    return (x32 * cos[:, None] + x32.roll(x.shape[-1] // 2, dims=-1) * sin[:, None]).to(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention (query head h reads kv head h // (n_heads / n_kv_heads), K/V never copied):
        Attn = softmax(q k^T / sqrt(hd) + mask) v"""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * hd, cfg.dim, bias=False)
        self._stacked, self._stacked_key = None, None  # [W_q; W_k; W_v], [b_q; b_k; b_v] and the weights' versions

    def rotated_qkv(self, x, cos, sin):
        """x [B, T, D] -> q [B, H, T, hd], k and v [B, Hkv, T, hd] (q, k roped); no autograd: one matmul on W_qkv."""
        B, T, _ = x.shape
        c, projs = self.cfg, (self.q_proj, self.k_proj, self.v_proj)
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            q, k, v = (lin(x).view(B, T, -1, c.head_dim).transpose(1, 2) for lin in projs)
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v
        if (key := tuple((p.data_ptr(), p._version) for lin in projs for p in lin.parameters())) != self._stacked_key:
            biases = None if projs[0].bias is None else torch.cat([lin.bias for lin in projs])
            self._stacked, self._stacked_key = (torch.cat([lin.weight for lin in projs]), biases), key
        qkv = F.linear(x, *self._stacked).view(B, T, -1, c.head_dim).transpose(1, 2)  # [B, H + 2 Hkv, T, hd]
        q, k = apply_rope(qkv[:, :c.n_heads + c.n_kv_heads], cos, sin).split([c.n_heads, c.n_kv_heads], dim=1)
        return q, k, qkv[:, c.n_heads + c.n_kv_heads:]

    def forward(self, x, cos, sin, mask, kv_cache: KVCache | None):
        q, k, v = self.rotated_qkv(x, cos, sin)  # q: [B, H, T, hd]; k, v: [B, Hkv, T, hd]
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)  # [B, Hkv, S, hd]
        if isinstance(mask, Packed):  # x is [1, N, D], the real tokens of a padded batch
            out = mask.attend(q, k, v)  # [1, H, N, hd]
        elif mask.is_floating_point():  # decode_step's one query row: mask is an additive bias [B * Hkv, group, S]
            out = decode_attention(q, k, v, mask)  # [B, H, 1, hd]
        else:  # mask: bool [B, 1, T, S]; query head h reads kv head h // group, nothing is copied
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)  # [B, H, T, hd]
        return self.o_proj(out.transpose(1, 2).flatten(2))  # [B, T, H * hd] -> [B, T, D]


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One query row per sequence against a grouped cache; a kv head's group = H / Hkv query heads are its rows:
        q_g [B, Hkv, group, hd],  out_g = softmax(q_g k^T / sqrt(hd) + bias) v   [B, Hkv, group, hd]
    (heads h = j * group + r, HF's repeat_kv order). bias [B * Hkv, group, S]: 0 visible, -inf hidden."""
    (B, H, _, hd), (_, Hkv, S, _) = q.shape, k.shape
    q_g = q.reshape(B * Hkv, H // Hkv, hd)  # [B*Hkv, group, hd]
    scores = torch.baddbmm(bias, q_g, k.reshape(B * Hkv, S, hd).transpose(1, 2), alpha=hd ** -0.5)  # [B*Hkv, group, S]
    return (scores.softmax(dim=-1) @ v.reshape(B * Hkv, S, hd)).view(B, H, 1, hd)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer_idx)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask, kv_cache):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, kv_cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.activation_checkpointing = False  # True: keep each layer's input only, recompute it in backward
        self._rope_tables = {}  # device -> rope_table(max_seq_len): a decode step looks its positions up
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # GPT-2 style: each residual branch's output projection gets std 0.02/sqrt(2L) (variance flat in depth)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @property
    def lm_head_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def num_params(self) -> int:  # a tied embedding counts once
        return sum(p.numel() for p in self.parameters())

    def rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] long -> cos, sin [B, T, hd] from rope_cos_sin's table, built once per device."""
        if positions.device not in self._rope_tables:
            table = torch.arange(self.cfg.max_seq_len, device=positions.device)[None]  # [1, max_seq_len]
            self._rope_tables[positions.device] = rope_cos_sin(table, self.cfg.head_dim, self.cfg.rope_theta)
        cos, sin = self._rope_tables[positions.device]  # [1, max_seq_len, hd] each
        return cos[0][positions], sin[0][positions]

    def decode_step(self, ids, positions, attention_mask, slot, kv_cache: KVCache) -> torch.Tensor:
        """One new token per sequence (ids, positions [B, 1]) -> logits [B, 1, V], shapes fixed from step to step.
        attention_mask [B, S] over cache slots: key j visible iff attention_mask[b, j] and j <= slot, or j == slot."""
        S, c = attention_mask.shape[1], self.cfg
        key_slot = torch.arange(S, device=ids.device)  # [S]
        visible = (attention_mask & (key_slot <= slot)) | (key_slot == slot)  # [B, S]
        bias = torch.zeros_like(visible, dtype=self.embed_tokens.weight.dtype).masked_fill(~visible, float("-inf"))
        # [B, Hkv, group, S] -> [B * Hkv, group, S]: decode_attention's layout, once for all layers
        bias = bias[:, None, None, :].expand(-1, c.n_kv_heads, c.n_heads // c.n_kv_heads, -1).flatten(0, 1)
        cos, sin = self.rope(positions)  # [B, 1, hd]
        x = self.embed_tokens(ids)  # [B, 1, D]
        writer = CacheSlot(kv_cache, slot, S)
        for layer in self.layers:
            x = layer(x, cos, sin, bias, writer)
        return self.norm(x) @ self.lm_head_weight.t()  # [B, 1, V]

    def forward(self, ids, attention_mask=None, kv_cache: KVCache | None = None, return_hidden: bool = False,
                packed: bool = False):
        """ids [B, T] -> logits [B, T, V] (or final-normed hidden [B, T, D] if return_hidden); packed=True: [N, V]
        for the N real tokens, row-major. attention_mask [B, cached + T], True on real tokens (default all True).
        Query i (slot past+i) sees key j iff j <= past+i and attention_mask[b, j], or j == past+i (pad rows finite)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, T], got shape {tuple(ids.shape)}")
        (B, T), past = ids.shape, 0 if kv_cache is None else kv_cache.length
        S = past + T
        if kv_cache is not None and (S > kv_cache.max_len or kv_cache.batch_size != B):
            raise ValueError(f"KV cache (batch {kv_cache.batch_size}, max_len {kv_cache.max_len}) cannot "
                             f"take batch {B} with {past} cached + {T} new tokens")
        if S > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {S} exceeds max_seq_len={self.cfg.max_seq_len}")
        if attention_mask is not None and attention_mask.shape != (B, S):
            raise ValueError(f"attention_mask must be [B, cached+T] = {(B, S)}, got {tuple(attention_mask.shape)}")
        attention_mask = ids.new_ones(B, S, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        positions = positions_from_mask(attention_mask)[:, past:]  # [B, T]
        if kv_cache is not None and T == 1 and not return_hidden:  # a decode step
            kv_cache.reserve(S)  # a chunked cache grows here; the sampler reserves before each step itself
            logits = self.decode_step(ids, positions, attention_mask, past, kv_cache)
            kv_cache.length = S
            return logits

        query_slot = torch.arange(past, S, device=ids.device)[:, None]  # [T, 1]
        key_slot = torch.arange(S, device=ids.device)[None, :]  # [1, S]
        mask = ((key_slot <= query_slot) & attention_mask[:, None, None, :]) | (key_slot == query_slot)  # [B, 1, T, S]

        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)  # [B, T, hd]
        if packed:
            if kv_cache is not None:
                raise ValueError("packed=True runs without a KV cache")
            mask = Packed(attention_mask, mask)
            x = self.embed_tokens(ids.flatten()[mask.keep])[None]  # [1, N, D]
            cos, sin = mask.pack(cos), mask.pack(sin)  # [1, N, hd]
        else:
            x = self.embed_tokens(ids)  # [B, T, D]
        recompute = self.activation_checkpointing and kv_cache is None and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, cos, sin, mask, None, use_reentrant=False) if recompute \
                else layer(x, cos, sin, mask, kv_cache)  # [B, T, D]
        if kv_cache is not None:
            kv_cache.length = S
        hidden = self.norm(x)[0] if packed else self.norm(x)  # [N, D] or [B, T, D]
        return hidden if return_hidden else hidden @ self.lm_head_weight.t()  # [N, V] or [B, T, V]
