"""Sampler invariants: greedy == argmax of the full forward, returned log-probs ==
log_softmax(full forward / T), seeds repeat, top-k / top-p never leave their set, eos stops
and masks, cache on/off agree, clear errors."""

import pytest
import torch
import torch.nn.functional as F

from minichord.config import ModelConfig, SamplerConfig
from minichord.model import Transformer
from minichord.sampler import filter_logits, generate, left_pad

PAD, NO_EOS = 0, -1  # eos_id = -1 never matches: every sequence runs max_new_tokens
PROMPTS = [[5, 17, 33, 2, 9, 40, 11], [8, 3], [60, 61, 62, 63], [1, 2, 3, 4, 5]]


def tiny_model(seed=0, logit_scale=1.0, **overrides) -> Transformer:
    base = dict(vocab_size=97, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, max_seq_len=48)
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**{**base, **overrides})).eval()
    with torch.no_grad():  # larger random weights than the init: peaked, varied distributions
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
        model.norm.weight.mul_(logit_scale)
    return model


def full_forward_logits(model, prompts, tokens):
    """Teacher-forced logits predicting each generated token: [B, T_new, V], no cache."""
    ids, mask = left_pad(prompts, PAD, "cpu")
    seq = torch.cat([ids, tokens], dim=1)
    seq_mask = torch.cat([mask, torch.ones_like(tokens, dtype=torch.bool)], dim=1)
    with torch.no_grad():
        logits = model(seq, attention_mask=seq_mask)
    P = ids.shape[1]
    return logits[:, P - 1:P - 1 + tokens.shape[1]].float()


def test_greedy_equals_stepwise_argmax_of_full_forward():
    model = tiny_model()
    out = generate(model, PROMPTS, SamplerConfig(max_new_tokens=10, greedy=True), eos_id=NO_EOS, pad_id=PAD)
    assert out.tokens.shape == (4, 10) and out.mask.all() and not out.finished.any()
    for b, prompt in enumerate(PROMPTS):  # each prompt alone: no padding, no cache
        seq = list(prompt)
        for _ in range(10):
            with torch.no_grad():
                seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert out.tokens[b].tolist() == seq[len(prompt):]


@pytest.mark.parametrize("use_cache", [True, False])
def test_logprobs_are_log_softmax_of_full_forward_over_temperature(use_cache):
    model, T = tiny_model(), 0.7
    cfg = SamplerConfig(max_new_tokens=8, temperature=T, top_k=10, top_p=0.9)
    out = generate(model, PROMPTS, cfg, eos_id=NO_EOS, pad_id=PAD,
                   generator=torch.Generator().manual_seed(0), use_cache=use_cache)
    logits = full_forward_logits(model, PROMPTS, out.tokens)
    expected = F.log_softmax(logits / T, dim=-1).gather(-1, out.tokens[..., None]).squeeze(-1)
    assert out.logprobs.dtype == torch.float32
    assert (out.logprobs - expected).abs().max().item() <= 1e-4
    # not the top-k/top-p renormalised distribution: those log-probs would be strictly larger
    assert (out.logprobs < -1e-3).any()


def test_greedy_logprobs_use_temperature_one():
    model = tiny_model()
    out = generate(model, PROMPTS, SamplerConfig(max_new_tokens=4, temperature=0.5, greedy=True),
                   eos_id=NO_EOS, pad_id=PAD)
    logits = full_forward_logits(model, PROMPTS, out.tokens)
    expected = F.log_softmax(logits, dim=-1).gather(-1, out.tokens[..., None]).squeeze(-1)
    assert (out.logprobs - expected).abs().max().item() <= 1e-4


def test_seeds_repeat_and_differ_and_cache_does_not_change_samples():
    model = tiny_model()
    cfg = SamplerConfig(max_new_tokens=12)

    def run(seed, use_cache=True):
        return generate(model, PROMPTS, cfg, eos_id=NO_EOS, pad_id=PAD,
                        generator=torch.Generator().manual_seed(seed), use_cache=use_cache).tokens

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(a, run(1, use_cache=False))


def nucleus_set(probs: torch.Tensor, top_p: float) -> set[int]:
    """Independent reference: the smallest set of most-probable tokens with mass >= top_p."""
    values, order = probs.sort(descending=True)
    n = int((values.cumsum(0) < top_p).sum()) + 1
    return set(order[:n].tolist())


def allowed_violations(model, prompts, tokens, T, top_k, top_p):
    """Count sampled tokens outside the top-k / nucleus set of the full-forward logits."""
    logits = full_forward_logits(model, prompts, tokens) / T
    violations = 0
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1]):
            allowed = set(range(logits.shape[-1]))
            row = logits[b, t]
            if top_k:
                allowed &= set(row.topk(top_k).indices.tolist())
                row = row.masked_fill(~torch.isin(torch.arange(row.numel()), row.topk(top_k).indices), -1e9)
            if top_p < 1.0:
                allowed &= nucleus_set(row.softmax(-1), top_p)
            violations += int(tokens[b, t]) not in allowed
    return violations


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.6), (8, 0.5)])
def test_top_k_top_p_never_leave_the_allowed_set(top_k, top_p):
    model, T = tiny_model(logit_scale=2.0), 1.3
    prompts = [[(7 * i + j) % 97 for j in range(1 + i % 5)] for i in range(48)]
    cfg = SamplerConfig(max_new_tokens=8, temperature=T, top_k=top_k, top_p=top_p)
    gen = torch.Generator().manual_seed(0)
    out = generate(model, prompts, cfg, eos_id=NO_EOS, pad_id=PAD, generator=gen)  # 384 draws
    assert allowed_violations(model, prompts, out.tokens, T, top_k, top_p) == 0
    assert len(out.tokens.unique()) > 3  # the draws are not degenerate
    # The same check catches unrestricted sampling (so the check above can fail).
    free = generate(model, prompts, SamplerConfig(max_new_tokens=8, temperature=T), eos_id=NO_EOS,
                    pad_id=PAD, generator=torch.Generator().manual_seed(0))
    assert allowed_violations(model, prompts, free.tokens, T, top_k, top_p) > 0


def test_filter_logits_hand_case():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    kept = lambda x: torch.isfinite(x)[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.7)) == [1, 3]  # 0.4 + 0.3 >= 0.7
    assert kept(filter_logits(logits, top_p=0.71)) == [1, 3, 4]
    assert kept(filter_logits(logits, top_p=0.01)) == [1]  # the top token is always kept
    assert kept(filter_logits(logits, top_k=3, top_p=0.9)) == [1, 3, 4]  # 0.4/0.85+0.3/0.85 < 0.9


def test_eos_stops_a_sequence_and_masks_the_rest():
    model = tiny_model()
    cfg = SamplerConfig(max_new_tokens=10, greedy=True)
    free = generate(model, PROMPTS, cfg, eos_id=NO_EOS, pad_id=PAD)
    eos = int(free.tokens[0, 3])  # sequence 0 emits this at step 3 (or earlier)
    stop = free.tokens[0].tolist().index(eos)
    out = generate(model, PROMPTS, cfg, eos_id=eos, pad_id=PAD)
    assert out.finished[0]
    assert out.tokens[0, :stop + 1].tolist() == free.tokens[0, :stop + 1].tolist()
    assert out.mask[0, :stop + 1].all() and not out.mask[0, stop + 1:].any()
    assert (out.tokens[0, stop + 1:] == PAD).all() and (out.logprobs[0, stop + 1:] == 0).all()
    for b in range(1, 4):  # others: identical up to their own eos (if any)
        row = free.tokens[b].tolist()
        n = row.index(eos) + 1 if eos in row else len(row)
        assert bool(out.finished[b]) == (eos in row)
        assert out.tokens[b, :n].tolist() == row[:n] and out.mask[b].sum() == n


def test_several_stop_ids_each_stop_a_sequence():  # a chat model's <|im_end|> and <|endoftext|>
    model = tiny_model()
    cfg = SamplerConfig(max_new_tokens=10, greedy=True)
    free = generate(model, PROMPTS, cfg, eos_id=NO_EOS, pad_id=PAD)
    stops = [int(free.tokens[0, 2]), int(free.tokens[1, 4])]
    out = generate(model, PROMPTS, cfg, eos_id=stops, pad_id=PAD)
    for b in range(len(PROMPTS)):
        row = free.tokens[b].tolist()
        n = min([row.index(s) + 1 for s in stops if s in row], default=len(row))  # the first stop id emitted
        assert bool(out.finished[b]) == (n < len(row) or row[-1] in stops)
        assert out.tokens[b, :n].tolist() == row[:n] and out.mask[b].sum() == n
    assert out.finished[0] and out.finished[1]


def test_generation_ends_early_when_all_sequences_finished():
    model = tiny_model()
    cfg = SamplerConfig(max_new_tokens=10, greedy=True)
    first = int(generate(model, PROMPTS[:1], cfg, eos_id=NO_EOS, pad_id=PAD).tokens[0, 0])
    out = generate(model, PROMPTS[:1], cfg, eos_id=first, pad_id=PAD)
    assert out.tokens.tolist() == [[first]] and out.mask.all() and out.finished.all()


def test_clear_errors():
    model = tiny_model()  # max_seq_len=48
    cfg = SamplerConfig(max_new_tokens=40)
    with pytest.raises(ValueError, match=r"\(9 tokens\).*\(40\).*max_seq_len=48"):
        generate(model, [[1] * 9, [2]], cfg, eos_id=2, pad_id=PAD)
    with pytest.raises(ValueError, match="empty"):
        generate(model, [], cfg, eos_id=2, pad_id=PAD)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [[1], []], cfg, eos_id=2, pad_id=PAD)
    with pytest.raises(ValueError, match="outside"):
        generate(model, [[1, 97]], cfg, eos_id=2, pad_id=PAD)


def test_padded_vocabulary_rows_are_never_drawn():
    """A model with more embedding rows than tokenizer ids (Qwen2 pads its vocabulary):
    `vocab_size=` keeps every draw below it, and log-probs are over the allowed ids only."""
    model, T, allowed = tiny_model(logit_scale=2.0), 1.5, 40
    prompts = [[(5 * i + j) % 97 for j in range(1 + i % 4)] for i in range(32)]
    cfg = SamplerConfig(max_new_tokens=6, temperature=T)
    out = generate(model, prompts, cfg, eos_id=NO_EOS, pad_id=PAD,
                   generator=torch.Generator().manual_seed(0), vocab_size=allowed)
    assert int(out.tokens.max()) < allowed
    logits = full_forward_logits(model, prompts, out.tokens)[..., :allowed]
    expected = F.log_softmax(logits / T, dim=-1).gather(-1, out.tokens[..., None]).squeeze(-1)
    assert (out.logprobs - expected).abs().max().item() <= 1e-4
    free = generate(model, prompts, cfg, eos_id=NO_EOS, pad_id=PAD, generator=torch.Generator().manual_seed(0))
    assert int(free.tokens.max()) >= allowed  # without the limit such ids do get drawn
    with pytest.raises(ValueError, match="vocab_size=98"):
        generate(model, prompts, cfg, eos_id=NO_EOS, pad_id=PAD, vocab_size=98)


def test_rows_sampled_in_parts_equal_the_whole_batch():
    """Data-parallel ranks sample parts of one batch: rows 1-2 and rows 0, 3 drawn in separate calls (`rows`) get
    the tokens the whole batch gets, whatever the other rows of their call."""
    model, cfg = tiny_model(), SamplerConfig(max_new_tokens=8, temperature=1.3, top_k=20, top_p=0.95)

    def sample(prompts, rows):
        return generate(model, prompts, cfg, eos_id=NO_EOS, pad_id=PAD, rows=rows,
                        generator=torch.Generator().manual_seed(7))
    whole = sample(PROMPTS, None)
    middle, first = sample(PROMPTS[1:3], (1, 4)), sample(PROMPTS[:1], (0, 4))
    assert torch.equal(middle.tokens, whole.tokens[1:3]) and torch.equal(first.tokens, whole.tokens[:1])
    torch.testing.assert_close(middle.logprobs, whole.logprobs[1:3])
    with pytest.raises(ValueError, match=r"rows=\(3, 4\): 2 prompts from row 3 do not fit in 4 rows"):
        sample(PROMPTS[:2], (3, 4))


def test_inverse_cdf_draws_follow_the_distribution():
    """The token frequencies of 4,000 draws from one position match softmax(logits / T) (each within 4 sigma)."""
    model, cfg = tiny_model(logit_scale=0.3), SamplerConfig(max_new_tokens=1, temperature=1.0)
    out = generate(model, [PROMPTS[0]] * 4000, cfg, eos_id=NO_EOS, pad_id=PAD, generator=torch.Generator().manual_seed(0))
    p = full_forward_logits(model, [PROMPTS[0]], out.tokens[:1]).softmax(-1)[0, 0]  # [V]
    freq = torch.bincount(out.tokens[:, 0], minlength=p.numel()).double() / 4000
    sigma = (p.double() * (1 - p.double()) / 4000).sqrt()
    assert ((freq - p.double()).abs() <= 4 * sigma + 1e-3).all()
