"""minichord.losses against hand-computed cases (the arithmetic is in the comments)."""

import math

import pytest
import torch

from minichord import losses
from minichord.config import LossConfig
from minichord.methods import LUFFY_LOSS
from minichord.lm_head import reference_token_logprobs

LN = math.log


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64),
                               torch.as_tensor(expected, dtype=torch.float64), atol=tol, rtol=tol)


# ---------------------------------------------------------------- advantages


def test_group_advantages_unbiased_std():
    # [1, 0, 0, 1]: mean .5, unbiased var = 4 * .25 / 3 = 1/3, std = .57735 -> A = +-.5/.57735 = +-.866025
    # (a biased std sqrt(1/4) = .5 would give +-1)
    # [1, 2, 3]-like group below: mean 2, unbiased std = sqrt((1 + 0 + 1) / 2) = 1 -> A = [-1, 0, 1]
    adv = losses.group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    close(adv, [[0.866025, -0.866025, -0.866025, 0.866025]])
    adv = losses.group_advantages(torch.tensor([[1.0, 2.0, 3.0]]))
    close(adv, [[-1.0, 0.0, 1.0]])
    assert adv.dtype == torch.float32


def test_group_advantages_all_equal_group_and_singleton():
    adv = losses.group_advantages(torch.tensor([[5.0, 5.0, 5.0], [0.0, 1.0, 2.0]]))
    assert torch.isfinite(adv).all()
    close(adv[0], [0.0, 0.0, 0.0])  # 0 / (0 + eps)
    close(adv[1], [-1.0, 0.0, 1.0])
    single = torch.tensor([[0.7], [0.0]])
    assert torch.equal(losses.group_advantages(single), torch.zeros(2, 1))
    # official: mean 0, std 1 -> A = R / (1 + 1e-6)
    close(losses.group_advantages(single, singleton="official"), [[0.7 / (1 + 1e-6)], [0.0]], tol=1e-7)
    close(losses.group_advantages(single, singleton="official", scale_by_std=False), [[0.7], [0.0]])


def test_group_advantages_without_std_and_bad_input():
    # LUFFY / Dr.GRPO: A = R - mean = [1, 0, 0, 1] - .5
    close(losses.group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale_by_std=False),
          [[0.5, -0.5, -0.5, 0.5]])
    with pytest.raises(ValueError, match="n_groups"):
        losses.group_advantages(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="NaN"):
        losses.group_advantages(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="singleton"):
        losses.group_advantages(torch.tensor([[1.0]]), singleton="nan")


def test_zero_variance_fraction():
    # groups [1,1] and [2,2] are flat, [0,1] and [0,3] are not -> 2 / 4
    assert losses.zero_variance_fraction(torch.tensor([[1, 1], [0, 1], [2, 2], [0, 3]])) == 0.5
    assert losses.zero_variance_fraction(torch.tensor([[0.0, 1.0]])) == 0.0


# ---------------------------------------------------------------- PPO clip


def _ppo_case(ratios, advs, **kw):
    logp = torch.tensor([LN(r) for r in ratios], dtype=torch.float64, requires_grad=True)
    old = torch.zeros_like(logp)
    loss, clipped = losses.ppo_clip_loss(logp, old, torch.tensor(advs, dtype=torch.float64), LossConfig(**kw))
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    return loss.detach(), clipped, grad


def test_group_advantages_equal_non_binary_rewards_are_exactly_zero():
    # eight rewards of 0.3: fp32 mean(0.3) != 0.3, and (R - mean) / (std + 1e-6) was 0.0289
    rewards = torch.full((2, 8), 0.3)
    rewards[1] = torch.tensor([0.7] * 7 + [0.1])
    adv = losses.group_advantages(rewards)
    assert torch.equal(adv[0], torch.zeros(8))
    assert torch.equal(losses.group_advantages(rewards, scale_by_std=False)[0], torch.zeros(8))
    assert adv[1, -1] < 0 < adv[1, 0]


def test_ppo_clip_positive_and_negative_advantages():
    # eps = .2 -> clip range [.8, 1.2];  l = max(-A r, -A clip(r))
    # A=+1 r=1.1: max(-1.1, -1.1) = -1.1  grad -A r = -1.1
    # A=+1 r=1.5: max(-1.5, -1.2) = -1.2  clipped, grad 0
    # A=+1 r=0.5: max(-0.5, -0.8) = -0.5  grad -0.5
    # A=-1 r=0.5: max( 0.5,  0.8) =  0.8  clipped, grad 0
    # A=-1 r=1.5: max( 1.5,  1.2) =  1.5  grad +1.5
    # A=-1 r=0.9: max( 0.9,  0.9) =  0.9  grad +0.9
    # A= 0 r=1.5: 0, grad 0, not "clipped"
    loss, clipped, grad = _ppo_case([1.1, 1.5, 0.5, 0.5, 1.5, 0.9, 1.5], [1, 1, 1, -1, -1, -1, 0])
    close(loss, [-1.1, -1.2, -0.5, 0.8, 1.5, 0.9, 0.0])
    assert clipped.tolist() == [False, True, False, True, False, False, False]
    close(grad, [-1.1, 0.0, -0.5, 0.0, 1.5, 0.9, 0.0])


def test_ppo_asymmetric_clip_and_dual_clip():
    # eps_high = .3: A=+1 r=1.25 is inside [.8, 1.3] -> -1.25, grad -1.25
    loss, clipped, grad = _ppo_case([1.25], [1.0], eps_high=0.3)
    close(loss, [-1.25]); close(grad, [-1.25]); assert not clipped.any()
    # dual clip c=3 (A<0 only): A=-1 r=4: max(4, 1.2) = 4 -> min(4, 3) = 3, clipped, grad 0
    #                           A=-2 r=2: max(4, 2.4) = 4 -> min(4, 6) = 4, grad -A r = 4
    #                           A=+1 r=4: max(-4, -1.2) = -1.2 (dual clip does not apply)
    loss, clipped, grad = _ppo_case([4.0, 2.0, 4.0], [-1.0, -2.0, 1.0], dual_clip=3.0)
    close(loss, [3.0, 4.0, -1.2]); close(grad, [0.0, 4.0, 0.0])
    assert clipped.tolist() == [True, False, True]
    # without the dual clip the A=-1 r=4 token keeps loss 4 and gradient 4
    loss, clipped, grad = _ppo_case([4.0], [-1.0])
    close(loss, [4.0]); close(grad, [4.0]); assert not clipped.any()


def test_ppo_log_ratio_clamp():
    # logp - old = 25 > 20: r = e^20, A = -1 -> loss e^20, gradient zeroed by the clamp
    logp = torch.tensor([25.0], dtype=torch.float64, requires_grad=True)
    loss, clipped = losses.ppo_clip_loss(logp, torch.zeros(1, dtype=torch.float64),
                                         torch.tensor([-1.0], dtype=torch.float64), LossConfig())
    close(loss.detach() / math.exp(20), [1.0])
    assert clipped.tolist() == [True]
    assert torch.autograd.grad(loss.sum(), logp)[0].item() == 0.0


def test_luffy_unclipped_onpolicy_loss():
    # LUFFY on-policy: l = -A r with no clip: A=1 r=1.5 -> -1.5, grad -1.5
    logp = torch.tensor([LN(1.5)], dtype=torch.float64, requires_grad=True)
    loss, clipped = losses.luffy_onpolicy_loss(logp, torch.zeros_like(logp), torch.ones_like(logp), LossConfig(**LUFFY_LOSS))
    close(loss.detach(), [-1.5]); close(torch.autograd.grad(loss.sum(), logp)[0], [-1.5])
    assert not clipped.any()


# ---------------------------------------------------------------- SFT / LUFFY / KL


def _expert_only(logp, weighting):
    """chord_loss with mu = 1 on expert tokens only: returns the per-token losses l_t."""
    n = logp.shape[0]
    is_expert = torch.ones(n, dtype=torch.bool)
    coef = losses.token_coefficients(is_expert, 1.0, dtype=logp.dtype)
    _, loss_tok, _ = losses.chord_loss(logp, None, is_expert, torch.zeros(n), torch.zeros(n), coef,
                                       LossConfig(expert_weighting=weighting))
    return loss_tok


@pytest.mark.parametrize("weighting,weights", [
    ("uniform", [1.0, 1.0, 1.0]),
    ("phi", [0.25, 0.16, 0.09]),  # p (1 - p) for p = .5, .2, .9
    ("is", [0.5, 0.2, 0.9]),  # p
])
def test_sft_loss_values_and_gradient(weighting, weights):
    # l = -w * ln p: uniform -> [.693147, 1.609438, .105361]; phi -> [.173287, .257510, .009482];
    # is -> [.346574, .321888, .094825];  d l / d logp = -w (the weight is stop-gradient)
    probs = [0.5, 0.2, 0.9]
    logp = torch.tensor([LN(p) for p in probs], dtype=torch.float64, requires_grad=True)
    loss = _expert_only(logp, weighting)
    close(loss.detach(), [-w * LN(p) for w, p in zip(weights, probs)])
    expected = {"uniform": [0.693147, 1.609438, 0.105361], "phi": [0.173287, 0.257510, 0.009482],
                "is": [0.346574, 0.321888, 0.094825]}[weighting]
    close(loss.detach(), expected)
    close(torch.autograd.grad(loss.sum(), logp)[0], [-w for w in weights])


def test_sft_phi_gradient_is_scaled_nll_gradient_wrt_logits():
    torch.manual_seed(0)
    logits = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (6,))
    logp = reference_token_logprobs(logits, targets)
    (grad_phi,) = torch.autograd.grad(_expert_only(logp, "phi").sum(), logits, retain_graph=True)
    (grad_nll,) = torch.autograd.grad(_expert_only(logp, "uniform").sum(), logits)
    p = logp.detach().exp()
    torch.testing.assert_close(grad_phi, grad_nll * (p * (1 - p))[:, None])


def test_luffy_shaping_value_and_gradient():
    # f(p) = p / (p + .1): f(.1) = .5, f(.3) = .75, f(.9) = .9
    probs = torch.tensor([0.1, 0.3, 0.9])
    shaped = losses.luffy_expert_loss(probs.log(), -torch.ones(3), LossConfig(**LUFFY_LOSS))  # A = -1: l = f(p)
    close(shaped, [0.5, 0.75, 0.9])
    # l = -A f(p): A = 2, p = .1 -> -1;  d l / d logp = -A p gamma / (p + gamma)^2 = -2 * .01 / .04 = -.5
    # A = -1, p = .3 -> .75;  grad = .3 * .1 / .16 = .1875
    logp = torch.tensor([LN(0.1), LN(0.3)], dtype=torch.float64, requires_grad=True)
    loss = losses.luffy_expert_loss(logp, torch.tensor([2.0, -1.0], dtype=torch.float64), LossConfig(**LUFFY_LOSS))
    close(loss.detach(), [-1.0, 0.75])
    close(torch.autograd.grad(loss.sum(), logp)[0], [-0.5, 0.1875])


def test_luffy_mixed_groups_and_joint_token_mean():
    # rollouts [0, 1, 0] + expert 1 -> R = [0, 1, 0, 1], mean .5, A = R - .5 (no std)
    luffy = LossConfig(**LUFFY_LOSS)
    close(losses.advantages(torch.tensor([[0.0, 1.0, 0.0, 1.0]]), luffy), [[-0.5, 0.5, -0.5, 0.5]])
    is_expert = torch.tensor([True, False, False, False, False])
    close(losses.coefficients(is_expert, torch.arange(5), None, None, luffy), [0.2] * 5)


def test_kl_k3():
    # d = ref - logp; k3 = e^d - d - 1
    # logp = ln .5, ref = ln .25: d = -ln 2 -> .5 + .693147 - 1 = .193147
    # logp = ln .25, ref = ln .5: d = ln 2 -> 2 - .693147 - 1 = .306853;  equal -> 0
    logp = torch.tensor([LN(0.5), LN(0.25), -3.0])
    ref = torch.tensor([LN(0.25), LN(0.5), -3.0])
    close(losses.kl_k3(logp, ref), [0.193147, 0.306853, 0.0])


# ---------------------------------------------------------------- mu schedule


def test_mu_schedule():
    kw = dict(warmup=10, decay=20, peak=0.9, valley=0.05)
    # warm-up: .9 * s / 10
    assert losses.mu_schedule(0, **kw) == 0.0
    close(losses.mu_schedule(5, **kw), 0.45)
    close(losses.mu_schedule(10, **kw), 0.9)
    # s = 15: .05 + .85 * (1 + cos(pi / 4)) / 2 = .05 + .85 * .853553 = .775520
    close(losses.mu_schedule(15, **kw), 0.775520)
    # s = 20 (mid-decay): .05 + .85 * (1 + 0) / 2 = .475
    close(losses.mu_schedule(20, **kw), 0.475)
    close(losses.mu_schedule(30, **kw), 0.05)
    close(losses.mu_schedule(1000, **kw), 0.05)
    # CHORD-mu preset W = 0: starts at the peak
    close(losses.mu_schedule(0, warmup=0, decay=200, peak=0.9, valley=0.05), 0.9)
    for step in (0, 7, 10_000):  # CHORD-phi preset: constant .1
        assert losses.mu_schedule(step, warmup=0, decay=0, peak=0.1, valley=0.1) == 0.1
    with pytest.raises(ValueError):
        losses.mu_schedule(-1, **kw)
    with pytest.raises(ValueError):
        losses.mu_schedule(0, warmup=0, decay=0, peak=1.5, valley=0.1)


# ---------------------------------------------------------------- spec and coefficients


def test_token_loss_spec_validation():
    LossConfig(**LUFFY_LOSS, dual_clip=3.0)
    with pytest.raises(ValueError, match=r"expert_weighting='sft': must be one of uniform, phi, is, luffy$"):
        LossConfig(expert_weighting="sft")
    for bad in (dict(dual_clip=1.0), dict(eps_low=1.0), dict(eps_high=-0.1), dict(eps_high=float("inf")),
                dict(luffy_gamma=0.0), dict(kl_coef=-1.0), dict(entropy_coef=float("nan")),
                dict(log_ratio_clamp=0.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LossConfig(**bad)


def test_token_coefficients():
    is_expert = torch.tensor([0, 0, 0, 1, 1], dtype=torch.bool)
    # CHORD mu = .25: on-policy (1 - .25) / 3 = .25, expert .25 / 2 = .125
    close(losses.token_coefficients(is_expert, 0.25), [0.25, 0.25, 0.25, 0.125, 0.125])
    # no expert token: the on-policy share is (1 - mu), nothing is divided by zero
    coef = losses.token_coefficients(torch.zeros(4, dtype=torch.bool), 0.3)
    close(coef, [0.175] * 4)
    assert coef.dtype == torch.float32
    with pytest.raises(ValueError, match="mu"):
        losses.token_coefficients(is_expert, 1.5)


# ---------------------------------------------------------------- the CHORD loss


def _batch(n=11, vocab=9, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, vocab, (n,), generator=gen)
    is_expert = torch.arange(n) % 3 == 0
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    return logits, targets, is_expert, adv


def test_chord_loss_branches():
    # one on-policy token (A=1, r=1.5 -> clipped at -1.2) plus kl .1 * .193147,
    # one phi expert token (p = .5 -> -.25 ln .5 = .173287)
    logp = torch.tensor([LN(0.5), LN(0.5)], dtype=torch.float64)
    old = torch.tensor([LN(0.5 / 1.5), 0.0], dtype=torch.float64)
    ref = torch.tensor([LN(0.25), 0.0], dtype=torch.float64)
    is_expert, adv, coef = torch.tensor([False, True]), torch.tensor([1.0, 5.0]), torch.tensor([0.5, 0.5])
    spec = LossConfig(expert_weighting="phi", kl_coef=0.1)
    total, loss, clipped = losses.chord_loss(logp, None, is_expert, adv, old, coef, spec, ref)
    close(loss, [-1.2 + 0.1 * 0.193147, 0.173287])
    close(total, 0.5 * (-1.2 + 0.1 * 0.193147 + 0.173287))
    assert clipped.tolist() == [True, False]
    # luffy expert token: -A f(p) = -5 * .5 / .6; unclipped on-policy: -A r = -1.5
    _, loss, clipped = losses.chord_loss(logp, None, is_expert, adv, old, coef, LossConfig(**LUFFY_LOSS))
    close(loss, [-1.5, -5 * 0.5 / 0.6])
    with pytest.raises(ValueError, match="ref_logp"):
        losses.chord_loss(logp, None, is_expert, adv, old, coef, LossConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="shapes"):
        losses.chord_loss(logp, None, is_expert, adv[:1], old, coef, spec)


def test_chord_loss_ignores_garbage_on_the_other_branch():
    # NaN old_logp and a far-away ref_logp on expert tokens must not leak into any gradient
    logits, targets, is_expert, adv = _batch()
    for spec in (LossConfig(**LUFFY_LOSS, kl_coef=0.5), LossConfig(kl_coef=0.5, expert_weighting="phi")):
        logp = reference_token_logprobs(logits, targets)
        old = torch.where(is_expert, torch.full_like(adv, float("nan")), logp.detach())
        ref = torch.where(is_expert, torch.full_like(adv, 500.0), logp.detach())
        loss, loss_tok, _ = losses.chord_loss(logp, None, is_expert, adv, old, torch.ones_like(adv), spec, ref)
        assert torch.isfinite(loss_tok).all()
        assert torch.isfinite(torch.autograd.grad(loss, logits)[0]).all()


def test_chord_mu1_is_sft_and_mu0_is_grpo():
    logits, targets, is_expert, adv = _batch()
    for weighting in ("uniform", "phi"):
        spec = LossConfig(expert_weighting=weighting)
        logp = reference_token_logprobs(logits, targets)
        coef = losses.token_coefficients(is_expert, 1.0, dtype=torch.float64)
        loss, _, _ = losses.chord_loss(logp, None, is_expert, adv, logp.detach(), coef, spec)
        (grad_chord,) = torch.autograd.grad(loss, logits)
        p = logp.detach().exp()
        weight = torch.ones_like(p) if weighting == "uniform" else p * (1 - p)
        sft = (-weight * reference_token_logprobs(logits, targets))[is_expert].mean()
        (grad_sft,) = torch.autograd.grad(sft, logits)
        torch.testing.assert_close(grad_chord, grad_sft, atol=1e-15, rtol=1e-12)

    logp = reference_token_logprobs(logits, targets)
    coef = losses.token_coefficients(is_expert, 0.0, dtype=torch.float64)
    loss, loss_tok, clipped = losses.chord_loss(logp, None, is_expert, adv, logp.detach(), coef, LossConfig())
    (grad_chord,) = torch.autograd.grad(loss, logits)
    grpo = (-adv * reference_token_logprobs(logits, targets))[~is_expert].mean()  # -A logp, r = 1
    (grad_grpo,) = torch.autograd.grad(grpo, logits)
    torch.testing.assert_close(grad_chord, grad_grpo, atol=1e-15, rtol=1e-12)
    close(loss.detach(), (-adv[~is_expert]).mean())  # r = 1 -> L = -mean(A) over on-policy tokens
    assert not clipped.any()


def test_chord_loss_mixture_and_entropy():
    # L = (1 - mu) L_GRPO + mu L_SFT - entropy_coef * sum coef H over on-policy tokens
    logits, targets, is_expert, adv = _batch(seed=1)
    logp, entropy = reference_token_logprobs(logits, targets, return_entropy=True)
    old = logp.detach() + 0.5  # r = e^-.5 = .607: A > 0 tokens unclipped, A < 0 tokens clipped
    spec, mu = LossConfig(entropy_coef=0.01), 0.3
    coef = losses.token_coefficients(is_expert, mu, dtype=torch.float64)
    loss, _, clipped = losses.chord_loss(logp, entropy, is_expert, adv, old, coef, spec)
    onpolicy = ~is_expert
    ppo = torch.where(adv > 0, -adv * math.exp(-0.5), -adv * 0.8)
    expected = ((1 - mu) * ppo[onpolicy].mean() + mu * (-logp[is_expert]).mean()
                - 0.01 * (1 - mu) * entropy[onpolicy].mean())
    close(loss.detach(), expected.detach(), tol=1e-10)
    assert torch.equal(clipped[onpolicy], adv[onpolicy] < 0)
    with pytest.raises(ValueError, match="entropy"):
        losses.chord_loss(logp, None, is_expert, adv, old, coef, spec)
