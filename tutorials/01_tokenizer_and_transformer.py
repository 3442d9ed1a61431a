# %% [markdown]
# # 01 — The tokenizer and the transformer
#
# Everything CHORD does happens on *tokens*: rewards are given to sequences of tokens, the
# PPO ratio and the SFT weight phi = p(1-p) are per-token quantities. So we start with the two
# objects that define what a token is and what probability the model gives it:
#
# * `minichord.tokenizer.Tokenizer`: a small byte-level BPE with a fixed chat format and a
#   *loss mask* that says which tokens a supervised loss is taken on;
# * `minichord.model.Transformer`: a Qwen2-style decoder that maps token ids to logits.
#
# Run as a script (`python tutorials/01_tokenizer_and_transformer.py`) or open it in
# VS Code / Jupyter: the `# %%` lines are notebook cells.

# %%
import random

import torch

from minichord.config import ModelConfig
from minichord.model import Transformer, rope_cos_sin
from minichord.tasks import make_splits, style_texts
from minichord.tokenizer import SPECIAL_TOKENS, Tokenizer

torch.manual_seed(0)

# %% [markdown]
# ## 1. Train a tiny BPE on toy text
#
# `style_texts` writes text of the toy task in both styles: the base model's terse answers
# ("132") and the expert's step-by-step column additions ("7+5=12 carry 1 ... answer: 132").
# BPE starts from the 128 ASCII bytes (+ 5 special tokens = 133 ids) and merges the most
# frequent adjacent pairs until the vocabulary budget is reached.

# %%
texts = style_texts(random.Random(0), 300)
print("a few training texts:", [t for t in texts[:5]])
tok = Tokenizer.train(texts, vocab_size=200)
print(tok)
merges = [tok.token_text(i) for i in range(133, tok.vocab_size)]
print(f"{len(merges)} learned merges, e.g.:", merges[:12])
# We asked for 200 ids but got fewer: this small, repetitive corpus has no more pairs that
# occur at least twice. Always size the model's embedding with `tok.vocab_size`, the actual
# count, never with the budget (an embedding row no token maps to is a token the model can
# still sample but the tokenizer cannot decode). "Ġ" is how byte-level BPE spells a space.

# %% [markdown]
# **Digits are single tokens.** The pre-tokenizer splits every digit off before BPE runs, so
# no merge can ever glue digits together. A model doing arithmetic then sees exactly one token
# per digit: "1234" is always `1 2 3 4`, never `12 34` in one number and `1 234` in another.

# %%
text = "add 1234 5678"
ids = tok.encode(text)
pieces = [tok.token_text(i) for i in ids]
print(f"{text!r} -> {ids}")
print("pieces:", pieces)
digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
assert all(len(p) == 1 for p in digit_pieces), digit_pieces
assert len(digit_pieces) == 8  # 4 + 4 digits, one token each
assert tok.decode(ids) == text  # lossless round trip on ASCII text
print("check: every digit is its own token, and decode(encode(s)) == s  (exact, tolerance 0)")

# %% [markdown]
# ## 2. Chat format and loss mask
#
#     <|bos|> <|user|> prompt <|assistant|> response <|eos|>
#
# `encode_prompt` gives the part the sampler continues from; `encode_example` gives the whole
# sequence plus a mask that is True exactly on the response and the final `<|eos|>`: those are
# the tokens an SFT loss (and, for rollouts, the RL loss) is taken on. The model is never
# trained to predict the prompt.

# %%
print("special tokens (ids 0..4):", SPECIAL_TOKENS)
prompt, response = "add 47 85", "132"
ids, mask = tok.encode_example(prompt, response)
print(f"{'id':>4s}  {'token':14s} loss?")
for i, m in zip(ids, mask):
    print(f"{i:4d}  {tok.token_text(i)!s:14s} {'yes' if m else ''}")
n_prompt = len(tok.encode_prompt(prompt))
assert ids[:n_prompt] == tok.encode_prompt(prompt)
assert mask == [False] * n_prompt + [True] * (len(ids) - n_prompt)
assert ids[-1] == tok.eos_id and tok.decode(ids[n_prompt:]) == response
print("check: mask is True on exactly the response tokens + eos (exact)")

# %% [markdown]
# The expert's demonstrations are much longer than the base model's answers, and they use
# tokens (like "carry" or "answer:") the base model never produces. That *style gap* is what
# the CHORD paper is about; the BPE learned merges for the expert's words as well:

# %%
demo = make_splits(0, n_rl=0, n_expert=1, n_test=0).expert[0]
e_ids, e_mask = tok.encode_example(demo.prompt, demo.response)
print(f"expert demonstration for {demo.prompt!r}:\n{demo.response}")
print(f"-> {len(e_ids)} tokens, {sum(e_mask)} of them carry the SFT loss "
      f"(the terse answer {demo.answer!r} would be {len(tok.encode(demo.answer)) + 1})")

# %% [markdown]
# ## 3. What the transformer computes
#
#     x_0 = embed(ids)                                    [B, T, D]
#     for each layer:   h = x + Attn(RMSNorm(x))           (RoPE on q, k; grouped-query attention)
#                       x = h + SwiGLU(RMSNorm(h))
#     logits = RMSNorm(x) @ W_embed^T                     [B, T, V]   (tied embedding)
#
# We rebuild the forward pass from the model's own sub-modules and check it gives the same
# logits as `model(ids)`; then check RMSNorm against its formula by hand.

# %%
cfg = ModelConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192)
model = Transformer(cfg).eval()
batch = torch.tensor([e_ids[:20]])  # [1, T]
B, T = batch.shape

with torch.no_grad():
    logits = model(batch)  # [B, T, V]
    x = model.embed_tokens(batch)  # [B, T, D]
    positions = torch.arange(T)[None]  # [B, T]
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)  # [B, T, hd]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None, None]  # [1, 1, T, T]: query i sees keys <= i
    for layer in model.layers:
        x = layer(x, cos, sin, causal, None)  # [B, T, D]
    by_hand = model.norm(x) @ model.embed_tokens.weight.T  # [B, T, V]
err = (by_hand - logits).abs().max().item()
print(f"forward rebuilt from sub-modules vs model(ids): max |diff| = {err:.2e} (tolerance 1e-5)")
assert err < 1e-5

h = torch.randn(3, cfg.dim)
rms_by_hand = model.norm.weight * h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + cfg.norm_eps)
err = (model.norm(h) - rms_by_hand).abs().max().item()
print(f"RMSNorm vs w * x / sqrt(mean(x^2) + eps): max |diff| = {err:.2e} (tolerance 1e-6)")
assert err < 1e-6

# %% [markdown]
# **Causality**: the logits at position t may only depend on tokens <= t. Changing the last
# token must leave every earlier position's logits untouched.

# %%
changed = batch.clone()
changed[0, -1] = (changed[0, -1] + 1) % cfg.vocab_size
with torch.no_grad():
    err = (model(changed)[:, :-1] - logits[:, :-1]).abs().max().item()
print(f"earlier logits after changing the last token: max |diff| = {err:.1e} (tolerance 1e-6)")
assert err < 1e-6

# %% [markdown]
# **Grouped-query attention**: `n_heads` query heads share `n_kv_heads` key/value heads, so
# k_proj and v_proj are `n_heads / n_kv_heads` times smaller than q_proj (and so is the KV
# cache of tutorial 02).

# %%
attn = model.layers[0].self_attn
print("q_proj", tuple(attn.q_proj.weight.shape), " k_proj", tuple(attn.k_proj.weight.shape),
      " v_proj", tuple(attn.v_proj.weight.shape), " o_proj", tuple(attn.o_proj.weight.shape))

# %% [markdown]
# ## 4. Parameter count by hand
#
# Per layer: q (D x H*hd + bias), k and v (D x Hkv*hd + bias each), o (H*hd x D, no bias),
# SwiGLU gate/up/down (3 x D x F), two RMSNorm weights (2 D). Plus the embedding (V x D),
# the final norm (D) and, when not tied, an lm_head (V x D).


# %%
def count_by_hand(c: ModelConfig) -> int:
    hd = c.head_dim
    bias = 1 if c.qkv_bias else 0
    attention = (c.dim + bias) * c.n_heads * hd + 2 * (c.dim + bias) * c.n_kv_heads * hd + c.n_heads * hd * c.dim
    mlp = 3 * c.dim * c.ffn_dim
    per_layer = attention + mlp + 2 * c.dim
    head = 0 if c.tie_embeddings else c.vocab_size * c.dim
    return c.vocab_size * c.dim + c.n_layers * per_layer + c.dim + head


for c in [cfg, ModelConfig(), ModelConfig(tie_embeddings=False)]:
    got = Transformer(c).num_params()
    print(f"dim {c.dim:4d} layers {c.n_layers} tied {c.tie_embeddings!s:5s}: by hand {count_by_hand(c):>9,d}"
          f"   model.num_params() {got:>9,d}")
    assert got == count_by_hand(c)
print("check: hand count == num_params() (exact)")

# %% [markdown]
# ## 5. Experiment: where the parameters are, small vs real
#
# The same formula for a Qwen2.5-0.5B-shaped config (vocab 151936, dim 896, 24 layers,
# 14 query heads, 2 KV heads, SwiGLU 4864). We build it on PyTorch's `meta` device: shapes
# only, no memory, so this runs anywhere in milliseconds.

# %%
qwen_like = ModelConfig(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2,
                        ffn_dim=4864, max_seq_len=32768, rope_theta=1e6)
with torch.device("meta"):
    big = Transformer(qwen_like)
assert big.num_params() == count_by_hand(qwen_like)
for name, c, n in [("tutorial model", cfg, model.num_params()), ("Qwen2.5-0.5B-like", qwen_like, big.num_params())]:
    embed = c.vocab_size * c.dim
    print(f"{name:18s}: {n / 1e6:8.2f}M parameters, embedding {embed / n:5.1%} of them")
# In the tiny toy model most weights are in the blocks; in the real one the vocabulary
# (151936 x 896) alone is about a quarter of the model. Tutorial 03 shows that the vocabulary
# dominates *activation* memory too: the logits.
