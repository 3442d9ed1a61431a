# %% [markdown]
# # 06 — The mu schedule and the CHORD objective
#
# CHORD trains on one batch that mixes the policy's own rollouts and expert demonstrations:
#
#     L = (1 - mu) * L_GRPO + mu * L_SFT
#
# each term a token-mean over its own tokens (tutorials 04 and 05). The global coefficient mu
# decides how much the expert pulls. Two ways to set it, one per paper variant:
#
# * **CHORD-mu**: a schedule. Start mostly SFT (mu = 0.9: learn from the expert while the
#   policy cannot yet solve much), decay with a cosine to mostly RL (mu = 0.05), plain SFT weights;
# * **CHORD-phi**: a small constant mu = 0.1, and the token weight phi = p(1-p) of tutorial 05
#   does the fine-grained work.

# %%
import torch

from minichord.methods import build_stages
from minichord.config import LossConfig
from minichord.losses import chord_loss, mu_schedule, ppo_clip_loss, token_coefficients
from minichord.methods import METHODS
from minichord.lm_head import fused_token_loss

torch.manual_seed(0)

# %% [markdown]
# ## 1. mu(step)
#
# Warm-up W, decay D, peak mu_p, valley mu_v:
#
#     mu = mu_p * s / W                                             s < W
#     mu = mu_v + (mu_p - mu_v) * (1 + cos(pi (s - W) / D)) / 2     W <= s < W + D
#     mu = mu_v                                                     s >= W + D
#
# The official CHORD-mu config uses W = 0, D = 200 steps; minichord stores W and D as shares of
# the run's length (`mu_warmup_frac`, `mu_decay_frac` in TrainConfig). `build_stages` turns a
# method name + overrides into exactly the stages the trainer runs, so `stage.mu(step)` is the
# value the trainer will use.

# %%
steps = 100
(mu_stage,) = build_stages("chord-mu", overrides=[f"steps={steps}"])
(phi_stage,) = build_stages("chord-phi", overrides=[f"steps={steps}"])
print(f"{'step':>5s} | {'chord-mu':>8s} {'chord-phi':>9s}")
for s in range(0, steps + 1, 10):
    print(f"{s:5d} | {mu_stage.mu(s):8.4f} {phi_stage.mu(s):9.4f}")

# hand check at the middle of the decay: 0.05 + (0.9 - 0.05) * (1 + cos(pi/2)) / 2 = 0.475
assert abs(mu_stage.mu(50) - 0.475) < 1e-12 and mu_stage.mu(0) == 0.9 and mu_stage.mu(100) == 0.05
assert all(phi_stage.mu(s) == 0.1 for s in range(steps))
# a warm-up: linear from 0 to the peak over W steps
assert abs(mu_schedule(5, warmup=10, decay=20, peak=0.8, valley=0.1) - 0.4) < 1e-12
print("check: mu(50) = 0.475, mu(0) = 0.9, mu(100) = 0.05, chord-phi constant 0.1, "
      "warm-up midpoint 0.4 (tolerance 1e-12)")

# %% [markdown]
# ## 2. The presets
#
# Every method of the paper's comparison is a preset of the same `TrainConfig` fields
# (`minichord.methods.METHODS`); `--set key=value` on the command line overrides any of them.

# %%
print(f"{'method':10s} {'mu schedule':34s} {'expert w':8s} {'rollouts':8s} summary")
for name, m in METHODS.items():
    cfg = build_stages(name)[0].cfg  # the preset applied to TrainConfig's defaults
    p = {"expert_weighting": cfg.loss.expert_weighting, **{k: getattr(cfg, k) for k in (
        "mu_warmup_frac", "mu_decay_frac", "mu_peak", "mu_valley")}}
    if m.stages:
        sched = " -> ".join(f"{stage} ({share:.0%})" for stage, share in m.stages)
    elif cfg.loss.aggregation == "joint":
        sched = "none: one token-mean over all"
    elif p["mu_peak"] == p["mu_valley"]:
        sched = f"constant {p['mu_peak']}"
    else:
        sched = f"cosine {p['mu_peak']} -> {p['mu_valley']} over {p['mu_decay_frac']:.0%}"
    weighting = "" if m.stages else p["expert_weighting"]
    print(f"{name:10s} {sched:34s} {weighting:8s} {str(m.uses_rollouts):8s} {m.summary}")

# %% [markdown]
# ## 3. The objective: mu = 0 is GRPO, mu = 1 is SFT
#
# A toy batch: 12 on-policy tokens (with advantages and the sampler's old log-probs) and 8
# expert tokens, all predicted by one set of logits. `chord_loss` builds the loss as
# sum_t coef_t * l_t with coef = (1 - mu)/N_on on rollout tokens and mu/N_exp on expert tokens.
# We compare its gradient with the gradients of the two terms computed separately.

# %%
N_on, N_exp, V = 12, 8, 16
is_expert = torch.tensor([False] * N_on + [True] * N_exp)
targets = torch.randint(0, V, (N_on + N_exp,))
adv = torch.where(is_expert, 0.0, torch.randn(N_on + N_exp))
base_logits = torch.randn(N_on + N_exp, V)
old_logp = torch.log_softmax(base_logits, -1).gather(1, targets[:, None]).squeeze(1)  # r = 1
old_logp = torch.where(is_expert, 0.0, old_logp)  # experts have no sampler log-probs
spec = LossConfig(expert_weighting="phi")


def logp_of(logits):
    return torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)  # [N]


def grad_of(loss_fn):
    logits = base_logits.clone().requires_grad_(True)
    loss_fn(logits).backward()
    return logits.grad


def chord(mu):
    coef = token_coefficients(is_expert, mu)  # [N]: (1-mu)/N_on on rollout tokens, mu/N_exp on expert ones
    return lambda logits: chord_loss(logp_of(logits), None, is_expert, adv, old_logp, coef, spec)[0]


def phi_sft_loss(logp):  # the CHORD-phi expert term, written out: -sg(p (1 - p)) log p
    p = logp.detach().exp()
    return -(p * (1 - p)) * logp


g_grpo = grad_of(lambda lg: ppo_clip_loss(logp_of(lg)[:N_on], old_logp[:N_on], adv[:N_on], spec)[0].mean())
g_sft = grad_of(lambda lg: phi_sft_loss(logp_of(lg)[N_on:]).mean())
for mu, expected in [(0.0, g_grpo), (1.0, g_sft), (0.3, 0.7 * g_grpo + 0.3 * g_sft)]:
    err = (grad_of(chord(mu)) - expected).abs().max().item()
    print(f"mu = {mu}: grad of chord_loss vs (1-mu) grad L_GRPO + mu grad L_SFT: max |diff| = {err:.1e} (tolerance 1e-7)")
    assert err < 1e-7
_, per_token, _ = chord_loss(logp_of(base_logits), None, is_expert, adv, old_logp, token_coefficients(is_expert, 0.3), spec)
print(f"mu = 0.3: GRPO term {per_token[~is_expert].mean():.4f} (~0: r = 1, zero-mean A), "
      f"SFT term {per_token[is_expert].mean():.4f}")

# %% [markdown]
# Each term is normalised by its *own* token count. That matters: expert traces are long
# (tutorial 01: 36 loss tokens for an answer the policy writes in 4), so a single joint
# token-mean would let the expert term dominate the batch whatever mu says. With separate
# means, mu is exactly the share of the expert term.
#
# In the trainer the same loss is computed from hidden states by `lm_head.fused_token_loss`
# (lm-head matmul + log-softmax + token losses, chunked, or the Triton kernel on CUDA). It must
# agree with the reference above:

# %%
H = 8
hidden = torch.randn(N_on + N_exp, H, requires_grad=True)
weight = torch.randn(V, H, requires_grad=True)
coef = token_coefficients(is_expert, 0.3)  # [N]: (1-mu)/N_on on rollout tokens, mu/N_exp on expert ones
fused = fused_token_loss(hidden, weight, targets, coef, is_expert, adv, old_logp, spec, chunk_size=7)
fused.loss.backward()
g_hidden = hidden.grad.clone()
hidden.grad = None
ref_loss, _, _ = chord_loss(logp_of(hidden @ weight.T), None, is_expert, adv, old_logp, coef, spec)
ref_loss.backward()
err = max(abs(fused.loss.item() - ref_loss.item()), (g_hidden - hidden.grad).abs().max().item())
print(f"fused_token_loss (chunks of 7 tokens) vs chord_loss: max |diff| loss/grad = {err:.1e} (tolerance 1e-5)")
assert err < 1e-5

# %% [markdown]
# ## 4. Experiment: how mu mixes the two directions
#
# The gradient at mu is (1 - mu) g_GRPO + mu g_SFT. How aligned it is with each pure direction
# (cosine similarity), and how big it is, as mu sweeps from RL to SFT:

# %%
cos = torch.nn.functional.cosine_similarity
print(f"{'mu':>5s} | {'|g|':>7s} {'cos(g, g_GRPO)':>14s} {'cos(g, g_SFT)':>13s}")
for mu in (0.0, 0.05, 0.1, 0.3, 0.5, 0.9, 1.0):
    g = grad_of(chord(mu)).flatten()
    print(f"{mu:5.2f} | {g.norm().item():7.4f} {cos(g, g_grpo.flatten(), 0).item():14.3f} "
          f"{cos(g, g_sft.flatten(), 0).item():13.3f}")
print(f"(|g_GRPO| = {g_grpo.norm().item():.4f}, |g_SFT| with phi = {g_sft.norm().item():.4f}, "
      f"cos(g_GRPO, g_SFT) = {cos(g_grpo.flatten(), g_sft.flatten(), 0).item():.3f})")
# The two directions are orthogonal here because they act on different tokens' logits (in a
# real model they share every parameter and need not be), and with phi the SFT
# gradient is small (phi <= 0.25), so at chord-phi's mu = 0.1 the step is dominated by RL,
# with the expert as a gentle, token-selective pull.
