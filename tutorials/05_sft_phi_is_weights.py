# %% [markdown]
# # 05 — SFT, SFT-phi and SFT-IS: which expert tokens get learned
#
# CHORD's off-policy half trains on expert demonstrations with a *weighted* negative
# log-likelihood. For an expert token with probability p_t = pi_theta(y_t | ...) under the
# current policy:
#
#     l_t = -sg(w(p_t)) * log p_t         sg = stop-gradient: w scales the step, is not optimised
#
#     plain SFT   w = 1
#     CHORD-phi   w = p (1 - p)           peaks at p = 0.5
#     SFT-IS      w = p                   the importance-sampling ablation
#
# The argument of the paper: tokens the policy finds very unlikely (p -> 0) are far from its
# own distribution; forcing them in with full SFT strength disrupts the policy (its style, its
# other skills). phi turns those down, and also the tokens already learned (p -> 1), and
# spends the step on the tokens in between. IS only turns down the unlikely ones.

# %%
import os
import tempfile

import torch

from minichord.config import LossConfig
from minichord.losses import chord_loss

torch.manual_seed(0)


def sft_loss(logp: torch.Tensor, weighting: str) -> torch.Tensor:
    """The expert term of minichord's loss, per token: `chord_loss` on a batch of expert tokens."""
    n = logp.shape[0]
    _, per_token, _ = chord_loss(logp, None, torch.ones(n, dtype=torch.bool), torch.zeros(n), torch.zeros(n),
                                 torch.full((n,), 1.0 / n), LossConfig(expert_weighting=weighting))
    return per_token  # [n]

# %% [markdown]
# ## 1. The weight curves, read off the library's loss
#
# Since the weight is detached, d l_t / d log p_t = -w(p_t) exactly: we get w from autograd
# applied to `minichord.losses.chord_loss`, not from a formula written here.

# %%
ps = torch.tensor([0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
weights = {}
for kind in ("uniform", "phi", "is"):
    logp = ps.log().clone().requires_grad_(True)
    sft_loss(logp, kind).sum().backward()
    weights[kind] = -logp.grad  # [len(ps)]

print(f"{'p':>6s} | {'SFT w=1':>8s} {'phi p(1-p)':>10s} {'IS w=p':>8s}")
for i, p in enumerate(ps):
    print(f"{p.item():6.3f} | {weights['uniform'][i].item():8.3f} {weights['phi'][i].item():10.4f} {weights['is'][i].item():8.3f}")
errs = [(weights["uniform"] - 1).abs().max(), (weights["phi"] - ps * (1 - ps)).abs().max(), (weights["is"] - ps).abs().max()]
print(f"check vs 1, p(1-p), p: max |diff| = {max(e.item() for e in errs):.1e} (tolerance 1e-6)")
assert max(e.item() for e in errs) < 1e-6

# %%
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    plt = None
if plt is not None:
    grid = torch.linspace(1e-3, 1 - 1e-3, 200)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(grid, torch.ones_like(grid), label="SFT: w = 1")
    ax.plot(grid, grid * (1 - grid), label="CHORD-phi: w = p(1-p)")
    ax.plot(grid, grid, label="SFT-IS: w = p")
    ax.set_xlabel("p = policy probability of the expert token")
    ax.set_ylabel("weight w(p)")
    ax.legend()
    fig.tight_layout()
    path = os.path.join(tempfile.mkdtemp(prefix="minichord-tutorial05-"), "sft_weights.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot saved to {path}")
else:
    print("matplotlib not installed: skipping the plot (the table above has the same numbers)")

# %% [markdown]
# ## 2. What the weight does to the gradient on the logits
#
# For the NLL, d(-log p_y)/dz = softmax(z) - onehot(y): the target's logit is pushed up by
# (1 - p_y), every other logit v down by p_v. With a detached weight the whole vector is simply
# multiplied by w(p_y). So the phi gradient = NLL gradient x p(1 - p). Check with autograd:

# %%
V = 6
z = torch.randn(V) * 2
for y in range(V):
    grads = {}
    for kind in ("uniform", "phi", "is"):
        logits = z.clone().requires_grad_(True)
        sft_loss(torch.log_softmax(logits, -1)[y].reshape(1), kind).sum().backward()
        grads[kind] = logits.grad
    p_y = torch.softmax(z, -1)[y]
    err_phi = (grads["phi"] - grads["uniform"] * p_y * (1 - p_y)).abs().max().item()
    err_is = (grads["is"] - grads["uniform"] * p_y).abs().max().item()
    assert err_phi < 1e-7 and err_is < 1e-7, (y, err_phi, err_is)
print("check: grad(phi) = grad(NLL) * p(1-p) and grad(IS) = grad(NLL) * p for every target "
      "(max |diff| < 1e-7)")

# %% [markdown]
# ## 3. Experiment: one gradient step on a toy policy
#
# A policy over 6 tokens with probabilities from very likely to very unlikely. Pretend each
# token in turn is the expert's token, take one SGD step (lr 1.0) on its logits with each
# loss, and see how much the expert token's probability rises.

# %%
z = torch.tensor([4.0, 2.5, 1.5, 0.0, -2.0, -5.0])
p0 = torch.softmax(z, -1)
print(f"{'expert token':>12s} {'p before':>9s} | {'dp SFT':>8s} {'dp phi':>8s} {'dp IS':>8s} | phi step / SFT step")
rows = []
for y in range(len(z)):
    dps = {}
    for kind in ("uniform", "phi", "is"):
        logits = z.clone().requires_grad_(True)
        sft_loss(torch.log_softmax(logits, -1)[y].reshape(1), kind).sum().backward()
        with torch.no_grad():
            dps[kind] = (torch.softmax(logits - 1.0 * logits.grad, -1)[y] - p0[y]).item()
    rows.append(dps)
    grad_ratio = (p0[y] * (1 - p0[y])).item()  # the gradient *vectors* differ by exactly this factor
    print(f"{y:12d} {p0[y].item():9.4f} | {dps['uniform']:+8.4f} {dps['phi']:+8.4f} {dps['is']:+8.4f} | {grad_ratio:.4f}")

# %% [markdown]
# Reading the table:
#
# * plain SFT raises every expert token's logit by (1 - p): almost a full unit for the
#   unlikely ones (the last rows, p ~ 0.002 and below), whatever their probability. Repeated
#   over many such tokens of a different *style* than the policy's own, this is the "shift"
#   the paper sees at the start of SFT;
# * SFT-IS (w = p) nearly ignores unlikely tokens, and hardly slows down on likely ones;
# * phi (w = p(1-p)) also nearly ignores unlikely tokens, *and* stops pushing tokens that are
#   already learned (row 0, p ~ 0.75: its weight is 0.19, against the IS weight of 0.75).
#   The step goes to tokens of moderate probability: close enough to the policy to be absorbed
#   without disruption, uncertain enough to be worth learning.

# %%
unlikely, likely = len(z) - 1, 0
assert rows[unlikely]["phi"] < 0.01 * rows[unlikely]["uniform"]  # phi barely moves a p ~ 0.001 token
assert rows[likely]["phi"] < rows[likely]["is"] < rows[likely]["uniform"]  # and slows down on a learned one
print("check: phi moves the unlikely token < 1% of what SFT does, and moves the likely one less than IS")
