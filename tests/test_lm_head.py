"""minichord.lm_head: the torch reference log-probs, the chunked fused loss, and dispatch."""

import math
import sys
import types

import pytest
import torch

from minichord import lm_head, losses
from minichord.config import LossConfig
from minichord.methods import LUFFY_LOSS
from reference_impl import reference_fused_token_loss

# ---------------------------------------------------------------- token log-probs


def test_reference_token_logprobs_hand_case():
    # logits [0, ln 3]: p = [.25, .75]; logp(1) = ln .75 = -.287682, logp(0) = ln .25 = -1.386294
    # H = -(.25 ln .25 + .75 ln .75) = .346574 + .215762 = .562335
    # temperature 2 on [0, 2 ln 3] gives the same distribution
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)], [0.0, 2 * math.log(3)]])
    targets = torch.tensor([1, 0, 1])
    logp, entropy = lm_head.reference_token_logprobs(logits[:2], targets[:2], return_entropy=True)
    torch.testing.assert_close(logp, torch.tensor([-0.287682, -1.386294]), atol=1e-6, rtol=0)
    torch.testing.assert_close(entropy, torch.tensor([0.562335, 0.562335]), atol=1e-6, rtol=0)
    logp_t = lm_head.reference_token_logprobs(logits[2:], targets[2:], temperature=2.0)
    torch.testing.assert_close(logp_t, torch.tensor([-0.287682]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("return_entropy", [False, True])
def test_reference_token_logprobs_gradcheck(return_entropy):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 4, -100, 3])

    def fn(x):
        return lm_head.reference_token_logprobs(x, targets, temperature=0.7,
                                            return_entropy=return_entropy)

    assert torch.autograd.gradcheck(fn, (logits,))  # checks every output (logp and entropy)


def test_ignore_index_gives_zero_and_no_gradient():
    logits = torch.randn(3, 5, requires_grad=True)
    targets = torch.tensor([1, lm_head.IGNORE_INDEX, 4])
    logp, entropy = lm_head.reference_token_logprobs(logits, targets, return_entropy=True)
    assert logp[1].item() == 0.0 and entropy[1].item() == 0.0
    (grad,) = torch.autograd.grad((logp + entropy).sum(), logits)
    assert torch.all(grad[1] == 0) and torch.any(grad[0] != 0)


def test_logprobs_dtypes_and_masked_vocab():
    logits = torch.randn(4, 6).to(torch.bfloat16).requires_grad_()
    targets = torch.tensor([0, 1, 2, 3])
    logp, entropy = lm_head.reference_token_logprobs(logits, targets, return_entropy=True)
    assert logp.dtype == torch.float32 and entropy.dtype == torch.float32
    (grad,) = torch.autograd.grad(logp.sum() + entropy.sum(), logits)
    assert grad.dtype == torch.bfloat16
    # a -inf logit (masked vocab entry): p = 0 contributes 0 to H, everything stays finite
    masked = torch.tensor([[0.0, 0.0, -math.inf]], requires_grad=True)
    logp, entropy = lm_head.reference_token_logprobs(masked, torch.tensor([0]), return_entropy=True)
    torch.testing.assert_close(entropy, torch.tensor([math.log(2)]))
    assert torch.isfinite(torch.autograd.grad(logp.sum() + entropy.sum(), masked)[0]).all()


def test_logprobs_bad_input():
    with pytest.raises(ValueError, match="target id 5 outside"):
        lm_head.reference_token_logprobs(torch.zeros(2, 5), torch.tensor([1, 5]))
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        lm_head.reference_token_logprobs(torch.zeros(5), torch.tensor([1]))
    with pytest.raises(ValueError, match="temperature"):
        lm_head.reference_token_logprobs(torch.zeros(2, 5), torch.tensor([1, 2]), temperature=0.0)


# ---------------------------------------------------------------- fused lm-head loss


def _fused_batch(n=37, vocab=1000, hidden=24, dtype=torch.float32, seed=0, kl=False):
    """A batch mixing on-policy and expert tokens, one ignored target, old_logp != logp."""
    gen = torch.Generator().manual_seed(seed)
    h = (torch.randn(n, hidden, generator=gen) * 0.5).to(dtype)
    w = (torch.randn(vocab, hidden, generator=gen) * 0.5).to(dtype)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    targets[n // 2] = -100
    is_expert = torch.rand(n, generator=gen) < 0.4
    mask = targets != -100
    adv = torch.randn(n, generator=gen)
    with torch.no_grad():
        logp = lm_head.reference_token_logprobs(h.float() @ w.float().T, targets)
    old_logp = logp + 0.4 * torch.randn(n, generator=gen)  # |log r| ~ .4: many tokens clipped
    ref_logp = logp + 0.3 * torch.randn(n, generator=gen) if kl else None
    coef = torch.where(mask, losses.token_coefficients(is_expert, 0.3), 0.0)  # padding rows: coef 0
    return dict(hidden=h, weight=w, targets=targets, coef=coef, is_expert=is_expert,
                advantages=adv, old_logp=old_logp), ref_logp


def _loss_and_grads(fn, batch, spec, **kw):
    hidden = batch["hidden"].clone().requires_grad_()
    weight = batch["weight"].clone().requires_grad_()
    args = dict(batch, hidden=hidden, weight=weight)
    out = fn(**args, spec=spec, **kw)
    grad_hidden, grad_weight = torch.autograd.grad(out.loss, (hidden, weight))
    return out, grad_hidden, grad_weight


CASES = [  # (spec, vocab, chunk_size, kl)
    (LossConfig(expert_weighting="uniform"), 1000, 5, False),
    (LossConfig(expert_weighting="phi"), 5003, 16, False),
    (LossConfig(expert_weighting="is"), 1000, 37, False),
    (LossConfig(**LUFFY_LOSS), 1000, 10, False),
    (LossConfig(expert_weighting="phi", dual_clip=3.0, entropy_coef=0.01, kl_coef=0.1),
     5003, 8, True),
    (LossConfig(), 1000, None, False),
]


PARAMS = [case + (torch.float32,) for case in CASES] + [CASES[1] + (torch.bfloat16,),
                                                        CASES[4] + (torch.bfloat16,)]


@pytest.mark.parametrize("spec,vocab,chunk_size,kl,dtype", PARAMS)
def test_chunked_matches_reference(spec, vocab, chunk_size, kl, dtype):
    batch, ref_logp = _fused_batch(vocab=vocab, dtype=dtype, kl=kl)
    kw = dict(ref_logp=ref_logp, temperature=0.9)
    ref, ref_gh, ref_gw = _loss_and_grads(reference_fused_token_loss, batch, spec, **kw)
    out, gh, gw = _loss_and_grads(lm_head.fused_token_loss, batch, spec,
                                  chunk_size=chunk_size, **kw)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-2, rtol=2e-2)
    torch.testing.assert_close(out.loss, ref.loss, **tol)
    torch.testing.assert_close(out.logp, ref.logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.entropy, ref.entropy, atol=1e-5, rtol=1e-5)
    assert torch.equal(out.clipped, ref.clipped)
    if not spec.luffy:
        assert out.clipped.any(), "the batch must exercise clipping"
    assert not out.clipped[batch["is_expert"]].any()
    assert gh.dtype == dtype and gw.dtype == dtype
    torch.testing.assert_close(gh, ref_gh, **tol)
    torch.testing.assert_close(gw, ref_gw, **tol)
    assert gw.abs().max() > 0 and gh.abs().max() > 0


def test_reference_fused_matches_losses_on_logits():
    # the fused reference is exactly: logits -> reference log-probs -> chord_loss, and padding
    # rows (coef 0) add nothing
    batch, ref_logp = _fused_batch(kl=True)
    spec = LossConfig(expert_weighting="phi", dual_clip=3.0, entropy_coef=0.02, kl_coef=0.1)
    out = reference_fused_token_loss(**batch, spec=spec, ref_logp=ref_logp)
    logp, entropy = lm_head.reference_token_logprobs(batch["hidden"] @ batch["weight"].T,
                                                 batch["targets"], return_entropy=True)
    keep = batch["targets"] != -100
    kept = {k: v[keep] for k, v in batch.items() if k not in ("hidden", "weight", "targets")}
    expected, _, _ = losses.chord_loss(logp[keep], entropy[keep], kept["is_expert"], kept["advantages"],
                                       kept["old_logp"], kept["coef"], spec, ref_logp[keep])
    torch.testing.assert_close(out.loss, expected)


def test_chunked_backward_scales_with_grad_output_and_partial_grads():
    batch, _ = _fused_batch(n=9, vocab=50, hidden=8)
    spec = LossConfig(expert_weighting="phi")
    hidden = batch["hidden"].clone().requires_grad_()
    out = lm_head.fused_token_loss(**dict(batch, hidden=hidden), spec=spec, chunk_size=4)
    (3.0 * out.loss).backward()  # weight does not require grad here
    hidden2 = batch["hidden"].clone().requires_grad_()
    ref = reference_fused_token_loss(**dict(batch, hidden=hidden2), spec=spec)
    (grad_ref,) = torch.autograd.grad(3.0 * ref.loss, hidden2)
    torch.testing.assert_close(hidden.grad, grad_ref)


def test_fused_bad_input():
    batch, _ = _fused_batch(n=6, vocab=20, hidden=4)
    with pytest.raises(ValueError, match="advantages"):
        lm_head.fused_token_loss(**dict(batch, advantages=torch.zeros(5)), spec=LossConfig())
    with pytest.raises(ValueError, match="ref_logp"):
        lm_head.fused_token_loss(**batch, spec=LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="chunk_size"):
        lm_head.fused_token_loss(**batch, spec=LossConfig(), chunk_size=0)
    with pytest.raises(ValueError, match=r"\[V, H\]"):
        lm_head.fused_token_loss(**dict(batch, weight=torch.zeros(20, 5)), spec=LossConfig())
    with pytest.raises(ValueError, match="target id 20 outside"):
        lm_head.fused_token_loss(**dict(batch, targets=torch.full((6,), 20)), spec=LossConfig())


# ---------------------------------------------------------------- dispatch


def test_kernel_backend_env(monkeypatch):
    monkeypatch.setenv("MINICHORD_KERNELS", "torch")
    assert lm_head.kernel_backend() == "torch"
    monkeypatch.setenv("MINICHORD_KERNELS", "Triton")
    assert lm_head.kernel_backend() == "triton"
    monkeypatch.setenv("MINICHORD_KERNELS", "cuda")
    with pytest.raises(ValueError, match=r"MINICHORD_KERNELS='cuda': must be one of auto, torch, triton"):
        lm_head.kernel_backend()
    for value in ("auto", None):  # auto = unset: triton for CUDA tensors, torch elsewhere
        if value is None:
            monkeypatch.delenv("MINICHORD_KERNELS")
        else:
            monkeypatch.setenv("MINICHORD_KERNELS", value)
        assert lm_head.kernel_backend() == ("triton" if torch.cuda.is_available() else "torch")
        assert lm_head.kernel_backend("cpu") == "torch" and lm_head.kernel_backend(torch.device("cuda")) == "triton"


def test_dispatch_torch_path(monkeypatch):
    monkeypatch.setenv("MINICHORD_KERNELS", "torch")
    logits, targets = torch.randn(4, 9), torch.tensor([0, 8, 2, -100])
    assert torch.equal(lm_head.token_logprobs(logits, targets),
                       lm_head.reference_token_logprobs(logits, targets))
    batch, _ = _fused_batch(n=7, vocab=30, hidden=4)
    out = lm_head.fused_token_loss(**batch, spec=LossConfig(), chunk_size=3)
    ref = reference_fused_token_loss(**batch, spec=LossConfig())
    torch.testing.assert_close(out.loss, ref.loss)


def test_dispatch_triton_path_imports_lazily(monkeypatch):
    # stand-in kernel modules: checks the names and arguments the dispatch passes on
    calls = []
    fake_logprobs = types.ModuleType("minichord.kernels.logprobs")
    fake_logprobs.triton_token_logprobs = lambda *a, **k: calls.append(("logprobs", k)) or "lp"
    fake_fused = types.ModuleType("minichord.kernels.fused_loss")
    fake_fused.triton_fused_token_loss = lambda *a, **k: calls.append(("fused", k)) or "fl"
    monkeypatch.setitem(sys.modules, "minichord.kernels.logprobs", fake_logprobs)
    monkeypatch.setitem(sys.modules, "minichord.kernels.fused_loss", fake_fused)
    monkeypatch.setenv("MINICHORD_KERNELS", "triton")
    assert lm_head.token_logprobs(torch.zeros(2, 3), torch.tensor([0, 1]), temperature=0.5) == "lp"
    batch, _ = _fused_batch(n=4, vocab=10, hidden=4)
    assert lm_head.fused_token_loss(**batch, spec=LossConfig(), chunk_size=2) == "fl"
    assert calls[0] == ("logprobs", dict(temperature=0.5, return_entropy=False))
    assert calls[1] == ("fused", dict(ref_logp=None, temperature=1.0, chunk_size=2))
