"""The decode paths agree: Transformer.forward one token at a time, decode_step with a Python-int
slot over a slice of the cache, over a cache grown in chunks (the eager sampler), with a tensor slot
over the whole cache (the fixed shapes a CUDA graph replays), and the compiled sampler (torch.compile on a CPU; a CUDA graph where
MINICHORD_TEST_DEVICE=cuda, as benchmarks/gpu_check.py runs it): logits equal the full forward (<= 1e-4),
greedy tokens are identical, a fixed seed draws the same tokens."""

import os

import pytest
import torch

from minichord.config import SamplerConfig
from minichord.model import KVCache
from minichord.sampler import generate, left_pad
from test_model import left_padded_batch, tiny_model
from test_sampler import NO_EOS, PAD, PROMPTS

DEVICE = torch.device(os.environ.get("MINICHORD_TEST_DEVICE", "cpu"))


@pytest.mark.parametrize("mode", ["slice", "static", "chunked"])
def test_decode_step_equals_full_forward(mode):
    """Prefill 6 slots, then decode_step one token at a time. slice: attend over slots [0, t] of a
    preallocated cache; static: over all 12 slots (the unfilled ones hidden by the slot bound) with the
    slot as a tensor; chunked: a cache grown 4 slots at a time, attending over every allocated slot
    (the eager sampler's path)."""
    model = tiny_model()
    ids, mask = left_padded_batch([12, 5, 9], total=12)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, 12]
    with torch.no_grad():
        full = model(ids, attention_mask=mask)  # [B, 12, V]
        cache = KVCache(model.cfg, 3, 12, chunk=4 if mode == "chunked" else None)
        steps = [model(ids[:, :6], attention_mask=mask[:, :6], kv_cache=cache)]
        for t in range(6, 12):
            if mode == "chunked":
                cache.reserve(t + 1)
                seen, slot = mask[:, :cache.capacity], t
            else:
                seen, slot = (mask, torch.tensor([t])) if mode == "static" else (mask[:, :t + 1], t)
            steps.append(model.decode_step(ids[:, t:t + 1], positions[:, t:t + 1], seen, slot, cache))
    diff = (torch.cat(steps, dim=1) - full)[mask].abs().max().item()
    assert diff <= 1e-4, diff


def test_growing_cache_keeps_every_slot_and_refuses_past_max_len():
    cfg = tiny_model().cfg
    cache = KVCache(cfg, 2, 10, chunk=4)
    assert cache.capacity == 4  # one chunk to start
    k = torch.randn(2, cfg.n_kv_heads, 3, cfg.head_dim)
    cache.update(0, k, -k)
    cache.length = 3  # as Transformer.forward does after every layer's update
    cache.k[1][:, :, 3] = 7.0  # a decode step writes its slot without advancing length
    cache.reserve(5)
    assert cache.capacity == 8 and cache.length == 3
    assert torch.equal(cache.k[0][:, :, :3], k) and torch.equal(cache.v[0][:, :, :3], -k)
    assert (cache.k[1][:, :, 3] == 7.0).all(), "a slot past length was lost when the cache grew"
    assert (cache.k[0][:, :, 4:] == 0).all(), "grown slots must be zeros (finite under the mask)"
    cache.reserve(10)
    assert cache.capacity == 10  # the last chunk stops at max_len
    with pytest.raises(ValueError, match="max_len 10 cannot hold 11 slots"):
        cache.reserve(11)
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        KVCache(cfg, 2, 10, chunk=0)


def test_compiled_sampler_matches_eager_and_full_forward():
    """torch.compile'd decode step (dynamic shapes, over the growing cache): greedy tokens identical to eager and to the
    uncached path, sampled tokens identical for a seed, log-probs those of the full forward."""
    model = tiny_model().to(DEVICE)
    runs = {}
    for name, compile_, use_cache in [("eager", False, True), ("compiled", True, True), ("uncached", False, False)]:
        greedy = generate(model, PROMPTS, SamplerConfig(max_new_tokens=10, greedy=True, compile=compile_),
                          eos_id=NO_EOS, pad_id=PAD, use_cache=use_cache)
        sampled = generate(model, PROMPTS, SamplerConfig(max_new_tokens=10, temperature=0.8, compile=compile_),
                           eos_id=NO_EOS, pad_id=PAD, generator=torch.Generator(DEVICE).manual_seed(5), use_cache=use_cache)
        runs[name] = (greedy, sampled)
    for name in ("compiled", "uncached"):
        assert torch.equal(runs[name][0].tokens, runs["eager"][0].tokens), name
        assert torch.equal(runs[name][1].tokens, runs["eager"][1].tokens), name
    ids, mask = left_pad(PROMPTS, PAD, DEVICE)
    out = runs["compiled"][1]
    seq = torch.cat([ids, out.tokens], dim=1)
    with torch.no_grad():
        logits = model(seq, attention_mask=torch.cat([mask, out.mask], dim=1))[:, ids.shape[1] - 1:-1]
    expected = (logits / 0.8).log_softmax(-1).gather(-1, out.tokens[..., None]).squeeze(-1)
    assert (out.logprobs - expected).abs().max().item() <= 1e-4


def test_compile_default_is_static_only_on_a_gpu(monkeypatch):
    """SamplerConfig.compile=None (the default): eager on a CPU (torch.compile would cost tens of seconds per
    shape), the CUDA graph on a GPU; False: eager everywhere."""
    import minichord.sampler as sampler

    def refuse(*args, **kwargs):
        raise AssertionError("the static decode step was built")

    monkeypatch.setattr(sampler, "compiled_decode_step", refuse)
    monkeypatch.setattr(sampler, "GraphedDecodeStep", refuse)
    model = tiny_model().to(DEVICE)
    assert SamplerConfig().compile is None
    for compile_ in ((None, False) if DEVICE.type == "cpu" else (False,)):
        out = generate(model, PROMPTS, SamplerConfig(max_new_tokens=4, greedy=True, compile=compile_), eos_id=NO_EOS,
                       pad_id=PAD)
        assert out.tokens.shape == (len(PROMPTS), 4)
    if DEVICE.type == "cuda":
        with pytest.raises(AssertionError, match="static decode step"):
            generate(model, PROMPTS, SamplerConfig(max_new_tokens=4, greedy=True), eos_id=NO_EOS, pad_id=PAD)


def test_rollout_tensors_can_enter_training():
    """Sampling runs under torch.inference_mode; the Rollout holds ordinary tensors, so training can index
    embeddings with its tokens and save its log-probs for backward."""
    model = tiny_model()
    out = generate(model, PROMPTS, SamplerConfig(max_new_tokens=5, temperature=1.0), eos_id=NO_EOS, pad_id=PAD,
                   generator=torch.Generator().manual_seed(0))
    assert not any(x.is_inference() for x in (out.tokens, out.logprobs, out.mask, out.finished))
    model.train()
    loss = (model.embed_tokens(out.tokens).sum(-1) * out.logprobs.exp()).sum()  # embedding saves the ids
    loss.backward()
    assert model.embed_tokens.weight.grad is not None


def test_cache_layout_benchmark_runs_and_refuses_bad_sizes():
    """benchmarks/bench_cache_layout.py (the measurement behind the chunked cache) runs at a tiny size and
    prints one row per visible length; a bad size is one line and exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cache_layout.py"
    ok = subprocess.run([sys.executable, str(script), "--batch", "2", "--max-len", "20", "--repeats", "1"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    rows = [line for line in ok.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [int(r.split("|")[1]) for r in rows] == [3, 7, 11, 16, 20]
    bad = subprocess.run([sys.executable, str(script), "--batch", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "must be an integer >= 1" in bad.stderr and "Traceback" not in bad.stderr
