"""Model invariants: KV-cache decoding == full forward, GQA == expanded MHA, padding and
causality do not leak, HF-compatible names, clear errors."""

import pytest
import torch

from minichord.config import ModelConfig
from minichord.model import KVCache, Transformer, apply_rope, positions_from_mask, rope_cos_sin


def tiny_cfg(**overrides) -> ModelConfig:
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=48)
    return ModelConfig(**{**base, **overrides})


def tiny_model(seed=0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(tiny_cfg(**overrides)).eval()
    with torch.no_grad():  # larger random weights than the init, so differences are visible
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


def left_padded_batch(lengths, total, vocab=97, seed=1):
    """Random ids [B, total] whose row b has lengths[b] real tokens at the right end."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, total - n:] = True
    return ids.masked_fill(~mask, 0), mask


def test_positions_from_mask():
    mask = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


@pytest.mark.parametrize("chunk", [None, 4])
def test_kv_cache_decoding_equals_full_forward_on_left_padded_batch(chunk):
    """chunk=None: every slot preallocated; 4: the cache grows 4 slots at a time as forward() decodes."""
    model = tiny_model()
    ids, mask = left_padded_batch([12, 5, 9], total=12)
    prefill = 6  # the shortest sequence's prompt is partly padding at prefill time
    with torch.no_grad():
        full = model(ids, attention_mask=mask)  # [B, 12, V]
        cache = KVCache(model.cfg, 3, 12, device="cpu", dtype=torch.float32, chunk=chunk)
        steps = [model(ids[:, :prefill], attention_mask=mask[:, :prefill], kv_cache=cache)]
        assert cache.length == prefill
        for t in range(prefill, 12):
            steps.append(model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1], kv_cache=cache))
        cached = torch.cat(steps, dim=1)  # [B, 12, V]
    assert cache.length == 12
    diff = (cached - full)[mask].abs().max().item()  # compare real tokens only
    assert diff <= 1e-4, diff
    assert torch.isfinite(cached).all()


def test_left_padding_does_not_change_logits():
    model = tiny_model()
    ids, mask = left_padded_batch([10, 4, 7], total=10)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)
        for b, n in enumerate([10, 4, 7]):
            alone = model(ids[b:b + 1, 10 - n:])  # no padding, no mask
            assert (batched[b, 10 - n:] - alone[0]).abs().max().item() <= 1e-4


def test_rope_scores_depend_on_position_differences_only():
    """RoPE: rotated q . k depends on position differences only: a constant shift changes
    nothing, any other change of positions does."""
    g = torch.Generator().manual_seed(4)
    q, k = torch.randn(2, 4, 8, 16, generator=g), torch.randn(2, 4, 8, 16, generator=g)  # [B, H, T, hd]

    def scores(pos):
        cos, sin = rope_cos_sin(pos, head_dim=16, theta=10000.0)  # [B, T, hd]
        return apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2)  # [B, H, T, T]

    pos = torch.arange(8).expand(2, 8)
    assert torch.allclose(scores(pos + 5), scores(pos), atol=1e-4)
    assert not torch.allclose(scores(pos * 2), scores(pos), atol=1e-3)


def test_causal_future_tokens_do_not_change_past_logits():
    model = tiny_model()
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % 97
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-5)
    assert not torch.allclose(a[:, 6:], b[:, 6:], atol=1e-3)


def test_gqa_equals_model_with_kv_heads_repeated():
    gqa = tiny_model(n_heads=4, n_kv_heads=2)
    mha = Transformer(tiny_cfg(n_heads=4, n_kv_heads=4)).eval()
    rep, hd = 2, gqa.cfg.head_dim
    state = {}
    for name, tensor in gqa.state_dict().items():
        if any(k in name for k in ("k_proj", "v_proj")):
            # kv head j serves query heads j*rep .. j*rep+rep-1: repeat each head's rows
            heads = tensor.view(gqa.cfg.n_kv_heads, hd, *tensor.shape[1:])
            tensor = heads.repeat_interleave(rep, dim=0).reshape(-1, *tensor.shape[1:])
        state[name] = tensor
    mha.load_state_dict(state)
    ids, mask = left_padded_batch([8, 5], total=8)
    with torch.no_grad():
        diff = (gqa(ids, attention_mask=mask) - mha(ids, attention_mask=mask))[mask].abs().max().item()
    assert diff <= 1e-4, diff


def test_hidden_times_lm_head_is_logits_and_tying():
    tied, untied = tiny_model(), tiny_model(tie_embeddings=False)
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(0))
    for model in (tied, untied):
        with torch.no_grad():
            hidden = model(ids, return_hidden=True)
            assert hidden.shape == (2, 5, 64)
            assert torch.allclose(hidden @ model.lm_head_weight.t(), model(ids), atol=1e-5)
    assert tied.lm_head_weight is tied.embed_tokens.weight
    assert "lm_head.weight" not in tied.state_dict() and "lm_head.weight" in untied.state_dict()
    assert untied.num_params() - tied.num_params() == 97 * 64


def test_hf_qwen2_parameter_names_and_biases():
    names = set(tiny_model().state_dict())
    for n in ["embed_tokens.weight", "norm.weight", "layers.1.input_layernorm.weight",
              "layers.1.post_attention_layernorm.weight", "layers.0.self_attn.q_proj.bias",
              "layers.0.self_attn.k_proj.bias", "layers.0.self_attn.v_proj.bias",
              "layers.0.self_attn.o_proj.weight", "layers.0.mlp.gate_proj.weight",
              "layers.0.mlp.up_proj.weight", "layers.0.mlp.down_proj.weight"]:
        assert n in names, n
    assert "layers.0.self_attn.o_proj.bias" not in names
    assert not any(n.endswith("bias") for n in tiny_model(qkv_bias=False).state_dict())


def test_init_scales_residual_projections():
    torch.manual_seed(0)
    model = Transformer(ModelConfig())
    assert abs(model.embed_tokens.weight.std().item() - 0.02) < 2e-3
    down = model.layers[0].mlp.down_proj.weight.std().item()
    assert abs(down - 0.02 / (2 * model.cfg.n_layers) ** 0.5) < 1e-3


def test_clear_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len=48"):
        model(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 5, dtype=torch.bool))
    cache = KVCache(model.cfg, 1, 4, device="cpu", dtype=torch.float32)
    with pytest.raises(ValueError, match="max_len 4"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def test_stacked_qkv_without_autograd_equals_training_path_and_follows_weight_updates():
    """Sampling and evaluation project q, k, v with one matmul on stacked weights kept between calls;
    training uses the three projections. Both give the same logits, and the stack is rebuilt after an
    optimizer step (in place) and after load_state_dict."""
    model = tiny_model()
    ids, mask = left_padded_batch([8, 5], total=8)

    def both():
        with torch.no_grad():
            stacked = model(ids, attention_mask=mask)
        return stacked, model(ids, attention_mask=mask)  # grad enabled: three matmuls

    stacked, three = both()
    assert torch.equal(stacked, three.detach())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    three[mask].logsumexp(-1).sum().backward()
    opt.step()  # changes every q/k/v weight in place
    stacked2, three2 = both()
    assert not torch.equal(stacked2, stacked)
    assert torch.equal(stacked2, three2.detach())
    model.load_state_dict(tiny_model(seed=3).state_dict())
    stacked3, three3 = both()
    assert torch.equal(stacked3, three3.detach()) and not torch.equal(stacked3, stacked2)


@pytest.mark.parametrize("side", ["right", "left"])
def test_packed_forward_equals_padded_forward_on_real_tokens(side):
    """packed=True runs the per-token layers on the real tokens only ([N, D]) and pads only inside attention:
    the same logits on the real tokens, in the row-major order of the mask, and the same gradients."""
    model = tiny_model().train()
    ids, mask = left_padded_batch([12, 5, 9, 1], total=12)
    if side == "right":
        ids, mask = ids.flip(1), mask.flip(1)
    full = model(ids, attention_mask=mask)  # [B, T, V]
    packed = model(ids, attention_mask=mask, packed=True)  # [N, V]
    assert packed.shape == (int(mask.sum()), full.shape[-1])
    assert torch.equal(packed, full[mask])
    params = list(model.parameters())
    grads_full = torch.autograd.grad(full[mask].logsumexp(-1).sum(), params)
    grads_packed = torch.autograd.grad(packed.logsumexp(-1).sum(), params)
    assert max((a - b).abs().max().item() for a, b in zip(grads_full, grads_packed)) <= 1e-5
    with pytest.raises(ValueError, match="without a KV cache"):
        model(ids, attention_mask=mask, kv_cache=KVCache(model.cfg, 4, 12), packed=True)


def test_bf16_forward_returns_parameter_dtype():
    model = tiny_model().to(torch.bfloat16)
    ids, mask = left_padded_batch([6, 3], total=6)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
