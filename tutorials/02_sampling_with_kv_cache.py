# %% [markdown]
# # 02 — Sampling with a KV cache, and the log-probs RL needs
#
# On-policy RL spends most of its time *generating*: every step samples B prompts x G
# responses. Two things matter:
#
# 1. **Speed.** A transformer's key/value vectors of past tokens never change, so instead of
#    re-running the whole sequence for every new token we keep them in a cache
#    (`minichord.model.KVCache`) and feed only the newest token. Each step then costs one
#    token's worth of compute instead of the whole prefix.
# 2. **The old log-probs.** The PPO ratio r_t = pi_theta(y_t) / pi_old(y_t) needs
#    log pi_old(y_t), the log-probability of each sampled token under the policy *that sampled
#    it*. `minichord.sampler.generate` returns them (`Rollout.logprobs`) at no extra cost,
#    computed from the very logits the token was drawn from.
#
# Both are only correct if cached decoding computes exactly what a full forward computes.
# That is what we check here.

# %%
import time

import torch
import torch.nn.functional as F

from minichord.config import ModelConfig, SamplerConfig
from minichord.model import KVCache, Transformer
from minichord.lm_head import token_logprobs
from minichord.sampler import generate, left_pad

torch.manual_seed(0)
cfg = ModelConfig(vocab_size=24, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, max_seq_len=96)
model = Transformer(cfg).eval()
PAD, EOS = 0, 2

# %% [markdown]
# ## 1. Cached decoding equals the full forward
#
# Prefill the prompt into the cache with one forward, then feed the remaining tokens one at a
# time. The logits for each position must equal those of one forward over the whole sequence.
# The cache holds per layer k, v: [B, n_kv_heads, max_len, head_dim] (GQA: only n_kv_heads).

# %%
seq = torch.randint(5, cfg.vocab_size, (2, 24))  # [B, T]
prefix = 8
with torch.no_grad():
    full = model(seq)  # [B, T, V]
    cache = KVCache(cfg, batch_size=2, max_len=24)
    step_logits = [model(seq[:, :prefix], kv_cache=cache)]  # prefill: [B, prefix, V]
    for t in range(prefix, 24):
        step_logits.append(model(seq[:, t:t + 1], kv_cache=cache))  # one token: [B, 1, V]
cached = torch.cat(step_logits, dim=1)  # [B, T, V]
err = (cached - full).abs().max().item()
print(f"cache k shape per layer: {tuple(cache.k[0].shape)}, filled {cache.length}")
print(f"cached vs full forward logits: max |diff| = {err:.2e} (tolerance 1e-5)")
assert err < 1e-5

# %% [markdown]
# The sampler does not preallocate all `max_len` slots: its cache grows `chunk` slots at a time
# (16 in `sampler.CACHE_CHUNK`) and each decode step attends over *every allocated slot*, the unfilled
# ones masked. Reading a whole contiguous [B, n_kv, capacity, hd] block is ~3x faster for the batched
# matmul on a CPU than reading the slice [:, :, :S] of a longer buffer (`benchmarks/bench_cache_layout.py`),
# and it costs at most chunk - 1 masked slots. The logits do not change:

# %%
with torch.no_grad():
    grown = KVCache(cfg, batch_size=2, max_len=24, chunk=4)
    capacities, chunked_logits = [], [model(seq[:, :prefix], kv_cache=grown)]
    for t in range(prefix, 24):
        chunked_logits.append(model(seq[:, t:t + 1], kv_cache=grown))
        capacities.append(grown.capacity)
err = (torch.cat(chunked_logits, dim=1) - full).abs().max().item()
print(f"capacity after each step (chunk 4): {capacities}")
print(f"chunked cache vs full forward logits: max |diff| = {err:.2e} (tolerance 1e-5)")
assert err < 1e-5

# %% [markdown]
# Batches of prompts of different lengths are **left-padded**, so that every sequence's next
# token goes into the same column. Padding must change nothing: each sequence's positions
# count only its real tokens (RoPE), and padding keys are masked out. A short prompt decoded
# in a padded batch gives the same logits as decoded alone:

# %%
prompts = [[1, 3, 10, 11, 12, 4], [1, 3, 20, 4], [1, 3, 7, 8, 4], [1, 3, 9, 4]]  # ragged
ids, mask = left_pad(prompts, PAD, "cpu")  # [B, P], [B, P]
print("left-padded prompts:\n", ids)
with torch.no_grad():
    batched = model(ids, attention_mask=mask)[1, -1]  # last logits of the short prompt (row 1)
    alone = model(torch.tensor([prompts[1]]))[0, -1]
err = (batched - alone).abs().max().item()
print(f"short prompt, padded batch vs alone: max |diff| = {err:.2e} (tolerance 1e-5)")
assert err < 1e-5

# %% [markdown]
# ## 2. The sampler's log-probs equal log_softmax of the full forward
#
# `generate` returns tokens [B, T_new], logprobs [B, T_new], and mask [B, T_new] (True on
# generated tokens, the eos included; after the eos: pad, mask False, logprob 0).
# The log-prob it returns is log_softmax(logits / T)[y_t]: the policy at temperature T, the
# same quantity the trainer recomputes with `lm_head.token_logprobs(logits, y, temperature=T)`.
# We recompute it from scratch with one full forward over prompt + response and compare.

# %%
sampler_cfg = SamplerConfig(max_new_tokens=20, temperature=0.7)
gen = torch.Generator().manual_seed(0)
out = generate(model, prompts, sampler_cfg, eos_id=EOS, pad_id=PAD, generator=gen)
print("tokens:\n", out.tokens, "\nmask:\n", out.mask.int(), "\nfinished (emitted eos):", out.finished.tolist())
# (a random model over 24 ids emits the eos id 2 now and then, so some sequences stop early)

P = ids.shape[1]
full_ids = torch.cat([ids, out.tokens], dim=1)  # [B, P + T_new]
full_mask = torch.cat([mask, torch.ones_like(out.tokens, dtype=torch.bool)], dim=1)  # generated slots are real
with torch.no_grad():
    logits = model(full_ids, attention_mask=full_mask)  # [B, P + T_new, V]
predicting = logits[:, P - 1:-1]  # [B, T_new, V]: position P-1+t predicts generated token t
recomputed = token_logprobs(predicting[out.mask], out.tokens[out.mask], temperature=0.7)  # [N]
err = (recomputed - out.logprobs[out.mask]).abs().max().item()
print(f"sampler logprobs vs log_softmax(full forward / T): max |diff| = {err:.2e} (tolerance 1e-5)")
assert err < 1e-5
assert (out.logprobs[~out.mask] == 0).all()

# %% [markdown]
# **Why RL needs them.** In the trainer these become `old_logp`. At the first update on a
# rollout batch the policy being differentiated *is* the sampling policy, so
# r_t = exp(logp_t - old_logp_t) = 1 up to float noise: the PPO clip is inactive and the GRPO
# gradient is -A grad logp (tutorial 04). With several updates per batch (ppo_epochs > 1) the
# policy moves away from pi_old, r_t drifts from 1, and the clip starts to matter. If the
# sampler's log-probs were computed differently (say, after top-k renormalisation), r_t would
# not start at 1 and the clip would fire for no reason.

# %%
ratio = torch.exp(recomputed - out.logprobs[out.mask])
print(f"ratio r_t at the first update: min {ratio.min():.6f}  max {ratio.max():.6f}")

# %% [markdown]
# Greedy decoding is deterministic, and with or without the cache it must pick the same tokens:

# %%
greedy = SamplerConfig(max_new_tokens=16, greedy=True)
a = generate(model, prompts, greedy, eos_id=EOS, pad_id=PAD, use_cache=True)
b = generate(model, prompts, greedy, eos_id=EOS, pad_id=PAD, use_cache=False)
assert torch.equal(a.tokens, b.tokens)
err = (a.logprobs - b.logprobs).abs().max().item()
print(f"greedy, cache vs no cache: identical tokens; logprob max |diff| = {err:.1e} (tolerance 1e-5)")
assert err < 1e-5

# %% [markdown]
# ## 3. Experiment: how much the cache saves
#
# Without a cache, generating token t re-runs all P + t positions: O(T^2) token-forwards for
# T new tokens; with it, O(T). (eos_id=-1 disables stopping so both generate all tokens.)
# Timings depend on the machine and its load; they are printed, never asserted.

# %%
batch_prompts = [[1, 3, 10 + i, 11, 4] for i in range(8)]
generate(model, batch_prompts, SamplerConfig(max_new_tokens=4), eos_id=-1, pad_id=PAD)  # warm-up
for n_new in (16, 64):
    c = SamplerConfig(max_new_tokens=n_new, greedy=True)
    times = {}
    for use_cache in (True, False):
        best = float("inf")
        for _ in range(2):  # best of 2: the machine may be busy
            t0 = time.perf_counter()
            generate(model, batch_prompts, c, eos_id=-1, pad_id=PAD, use_cache=use_cache)
            best = min(best, time.perf_counter() - t0)
        times[use_cache] = best
    print(f"{n_new:3d} new tokens x 8 prompts: cached {times[True] * 1e3:7.1f} ms, "
          f"uncached {times[False] * 1e3:7.1f} ms  (x{times[False] / times[True]:.1f})")
# The gap grows with the response length (on a model this tiny, per-call overhead hides part
# of it: each token-forward costs little compute either way); for the long reasoning traces of the paper
# (thousands of tokens) decoding without a cache would be out of the question.
