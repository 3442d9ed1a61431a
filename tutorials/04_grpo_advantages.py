# %% [markdown]
# # 04 — GRPO: group advantages and the PPO-clip token loss
#
# GRPO is the on-policy half of CHORD. For each prompt the policy samples G responses; a
# verifier gives each a reward R_i (here 1 = correct, 0 = wrong). There is no value network:
# a response's *advantage* is how much better it did than its siblings,
#
#     A_i = (R_i - mean(R)) / (std(R) + 1e-6)          std unbiased (divides by G - 1),
#
# and every token of response i gets the same A_i. The token loss is PPO's clipped surrogate
#
#     r_t = exp(logp_t - old_logp_t)
#     l_t = max(-A r_t, -A clip(r_t, 1 - eps, 1 + eps)),   eps = 0.2,
#
# and L_GRPO is the mean of l_t over all on-policy response tokens of the batch.

# %%
import torch

from minichord.config import LossConfig
from minichord.losses import group_advantages, ppo_clip_loss, zero_variance_fraction

torch.manual_seed(0)

# %% [markdown]
# ## 1. Rewards -> group advantages, by hand
#
# Three prompts, G = 4 samples each. The second group is all correct: nothing to learn there.

# %%
rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0],
                        [1.0, 1.0, 1.0, 1.0],
                        [0.0, 0.0, 0.0, 1.0]])  # [n_groups, G]
adv = group_advantages(rewards)  # [n_groups, G]
print("rewards:\n", rewards, "\nadvantages:\n", adv)

# by hand, group 0: mean 0.5, unbiased std = sqrt(((0.5^2) * 4) / 3) = sqrt(1/3) = 0.5774
std0 = (4 * 0.5**2 / 3) ** 0.5
hand0 = [0.5 / (std0 + 1e-6), -0.5 / (std0 + 1e-6), -0.5 / (std0 + 1e-6), 0.5 / (std0 + 1e-6)]
# group 2: mean 0.25, std = sqrt((3 * 0.25^2 + 0.75^2) / 3) = 0.5
hand2 = [-0.25 / (0.5 + 1e-6)] * 3 + [0.75 / (0.5 + 1e-6)]
err = max((adv[0] - torch.tensor(hand0)).abs().max().item(), (adv[2] - torch.tensor(hand2)).abs().max().item())
print(f"group_advantages vs hand computation: max |diff| = {err:.1e} (tolerance 1e-6)")
assert err < 1e-6
assert torch.equal(adv[1], torch.zeros(4))  # all-equal rewards: A = 0 / (0 + 1e-6) = 0, no NaN
print(f"zero-variance groups: {zero_variance_fraction(rewards):.3f} (they carry no gradient; the trainer logs this)")

# %% [markdown]
# Note what the normalisation does: in group 2 the single correct answer gets A = +1.5 and
# each wrong one -0.5. A rare success is a strong signal. Advantages are zero-mean inside
# every group.
#
# ## 2. The token loss at the first update: value ~0, gradient -A grad logp
#
# A toy "policy": one row of logits per response token. Each response is 3 tokens; its
# advantage is broadcast to its tokens. The rollout's `old_logp` are the sampler's log-probs,
# equal to the current ones at the first update (tutorial 02), so r_t = 1.

# %%
G, T, V = 4, 3, 10
adv_tok = adv.reshape(-1).repeat_interleave(T)  # [N]: each response's A on each of its T tokens
N = adv_tok.numel()
logits = torch.randn(N, V, requires_grad=True)  # [N, V]
targets = torch.randint(0, V, (N,))  # the sampled tokens
logp = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)  # [N]
old_logp = logp.detach()  # what the sampler returned

loss_tok, clipped = ppo_clip_loss(logp, old_logp, adv_tok, LossConfig())  # [N], [N]
loss = loss_tok.mean()  # L_GRPO: token-mean over the batch
loss.backward()
grad_ppo = logits.grad.clone()

# the policy-gradient form: L = mean(-A * logp), whose gradient is -A grad logp / N
logits.grad = None
logp_again = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
(-adv_tok * logp_again).mean().backward()
grad_pg = logits.grad.clone()

print(f"L_GRPO value = {loss.item():.2e}   (r = 1 -> l_t = -A_t; advantages are zero-mean: ~0)")
err = (grad_ppo - grad_pg).abs().max().item()
print(f"gradient of PPO-clip vs gradient of mean(-A logp): max |diff| = {err:.1e} (tolerance 1e-7)")
assert abs(loss.item()) < 1e-6 and err < 1e-7 and not clipped.any()
# The loss *value* tells you nothing during GRPO training; the gradient does the work.
# Watch the reward instead (tutorial 07).

# %% [markdown]
# Tokens of the all-correct group 1 (tokens 12..23 here: 4 responses x 3 tokens) got A = 0:
# their rows of the gradient are exactly zero. Compute spent sampling them is wasted; this is
# why the fraction of zero-variance groups is worth logging, and why expert data (CHORD's SFT
# term) helps when the policy is uniformly failing or succeeding.

# %%
group1_rows = slice(1 * G * T, 2 * G * T)
print(f"max |grad| on group-1 tokens: {grad_ppo[group1_rows].abs().max().item():.1e} (exactly 0 expected)")
assert grad_ppo[group1_rows].abs().max().item() == 0.0

# %% [markdown]
# What does -A grad logp do to the logits of one token? d logp / d z = onehot(y) - softmax(z):
# with A > 0 gradient *descent* raises the sampled token's logit and lowers every other logit
# in proportion to its probability; A < 0 does the opposite.

# %%
row = 0  # a token of a response with A > 0
p = torch.softmax(logits[row].detach(), -1)
expected = -(adv_tok[row] / N) * (torch.nn.functional.one_hot(targets[row], V) - p)
err = (grad_ppo[row] - expected).abs().max().item()
print(f"A = {adv_tok[row]:+.3f}; d L / d logits of token 0 vs -(A/N)(onehot - softmax): max |diff| = {err:.1e} (tolerance 1e-7)")
assert err < 1e-7

# %% [markdown]
# ## 3. Experiment: when does the clip bite?
#
# With several updates per rollout batch (`ppo_epochs > 1` in TrainConfig) the policy moves
# and r_t leaves 1. The clip stops the push once a token's probability has already moved
# "enough" in the direction the advantage asks: for A > 0 once r > 1 + eps, for A < 0 once
# r < 1 - eps. There d l / d logp = 0 (`clipped` is True). Scan r for A = +1 and A = -1:

# %%
ratios = torch.tensor([0.5, 0.79, 0.9, 1.0, 1.1, 1.21, 2.0])
print(f"{'r':>5s} | {'A=+1: loss':>10s} {'dl/dlogp':>9s} {'clipped':>7s} | {'A=-1: loss':>10s} {'dl/dlogp':>9s} {'clipped':>7s}")
table = []
for r in ratios:
    row_out = []
    for a in (1.0, -1.0):
        lp = torch.log(r).reshape(1).clone().requires_grad_(True)  # logp with old_logp = 0 -> r
        l, c = ppo_clip_loss(lp, torch.zeros(1), torch.tensor([a]), LossConfig())
        l.sum().backward()
        row_out += [l.item(), lp.grad.item(), bool(c.item())]
    table.append(row_out)
    print(f"{r.item():5.2f} | {row_out[0]:10.3f} {row_out[1]:9.3f} {row_out[2]!s:>7s} | "
          f"{row_out[3]:10.3f} {row_out[4]:9.3f} {row_out[5]!s:>7s}")
# the gradient, when not clipped, is -A r (so -1.1 at A=+1, r=1.1)
assert abs(table[4][1] + 1.1) < 1e-6  # tolerance 1e-6
assert table[5][1] == 0.0 and table[5][2]  # A>0, r = 1.21 > 1.2: clipped
assert table[1][4] == 0.0 and table[1][5]  # A<0, r = 0.79 < 0.8: clipped
print("check: clipped exactly where r leaves [0.8, 1.2] in the advantage's direction")
# Note the last row, A = -1 and r = 2: the loss keeps growing with r. A token whose probability
# exploded under a negative advantage gets an unbounded push. The *dual clip* caps it at -A c
# (`LossConfig(dual_clip=3.0)`, TrainConfig.dual_clip); the official CHORD code uses
# c = 3, minichord leaves it off by default (the paper-era code had none).
l, c = ppo_clip_loss(torch.log(torch.tensor([5.0])), torch.zeros(1), torch.tensor([-1.0]), LossConfig(dual_clip=3.0))
print(f"A = -1, r = 5 with dual_clip=3: loss {l.item():.1f} (capped at 3), clipped {bool(c.item())}")
assert abs(l.item() - 3.0) < 1e-6
