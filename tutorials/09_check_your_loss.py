# %% [markdown]
# # 09 — Check your CHORD loss against minichord
#
# You implemented CHORD in your own trainer. Does it compute what the paper says? Two CHORD
# implementations can both look right and still disagree: one global token-mean or a mean per
# micro-batch? a dual clip or not? what advantage does a group of one get? is phi detached?
# minichord names these choices (the `loss` table), knows the conventions of the engines people train
# CHORD with (the paper's, Trinity-RFT's `official`, ms-swift's, verl's; `minichord check --list`, with
# the source of each) and the normalisation bugs engines have shipped, and checks one batch of yours:
#
#     1. dump one batch from your trainer: logp, old_logp, advantages (or rewards + group ids),
#        the response mask, which sequences are expert ones, your loss and d loss / d logp;
#     2. `minichord check batch.safetensors`  (exit 0 match, 1 mismatch, 2 a bad file);
#     3. read the diagnosis: which convention or known bug reproduces your numbers.
#
# The DUMP schema is in `minichord/check/README.md`; this tutorial uses the Python API (`check_batch`),
# which is what the command prints.

# %%
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from minichord.check import check_batch

torch.manual_seed(0)
work = Path(tempfile.mkdtemp())

# %% [markdown]
# ## 1. A researcher's trainer, in plain PyTorch
#
# A toy "policy" (a table of logits) and a CHORD-phi loss written the way many trainers do. It has
# a bug we will let minichord find: each sequence is averaged over its own tokens first.

# %%
B, T, V, mu = 6, 5, 11, 0.2
logits = torch.randn(B, T, V, requires_grad=True)  # stands in for model(input_ids)
targets = torch.randint(0, V, (B, T))
mask = torch.arange(T)[None, :] < torch.tensor([5, 2, 4, 3, 5, 1])[:, None]  # [B, T] response tokens
is_expert = torch.tensor([False, False, False, False, True, True])  # [B] 4 rollouts, 2 demonstrations
advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 0.0])  # [B] from the reward groups
old_logp = torch.log_softmax(logits.detach() + 0.1 * torch.randn(B, T, V), -1).gather(-1, targets[..., None])[..., 0]


def my_chord_loss(logp, old_logp, adv, mask, is_expert, mu, per_sequence=False, min_count=0):
    ratio = (logp - old_logp).clamp(-20, 20).exp()
    a = adv[:, None]
    pg = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2))  # [B, T]
    p = logp.exp().detach()
    sft = -p * (1 - p) * logp  # [B, T], phi detached
    on, ex = mask & ~is_expert[:, None], mask & is_expert[:, None]
    if per_sequence:  # the bug: a mean per sequence, then over sequences
        seq_mean = lambda x, m: ((x * m).sum(1) / m.sum(1).clamp(min=1))[m.any(1)].mean()
        return (1 - mu) * seq_mean(pg, on) + mu * seq_mean(sft, ex)
    return (1 - mu) * (pg * on).sum() / on.sum().clamp(min=min_count) + mu * (sft * ex).sum() / ex.sum().clamp(min=min_count)

# %% [markdown]
# ## 2. Dump one batch (the part to paste into your trainer)
#
# `logp.retain_grad()` keeps d loss / d logp after `backward()`. With gradient accumulation, do it
# per micro-batch, concatenate the gradients, and add `"micro_batch"`: the index of each sequence's
# micro-batch (then minichord can also check the official weighting and spot dropped micro-batches).

# %%
def dump_batch(path, per_sequence):
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]  # [B, T]
    logp.retain_grad()
    loss = my_chord_loss(logp, old_logp, advantages, mask, is_expert, mu, per_sequence)
    loss.backward()
    save_file({"logp": logp.detach(), "old_logp": old_logp, "advantages": advantages, "mask": mask,
               "is_expert": is_expert, "loss": loss.detach(), "grad_logp": logp.grad},
              str(path), metadata={"mu": str(mu), "weighting": "phi", "convention": "paper"})
    return path

# %% [markdown]
# ## 3. Check it: `minichord check batch.safetensors`

# %%
good = check_batch(dump_batch(work / "good.safetensors", per_sequence=False))
print(good.report())
assert good.match

# %% [markdown]
# "not tested by this batch" lines say which choices this batch cannot tell apart (no token has
# A < 0 and r > 3, so a dual clip would change nothing here): dump a batch from later in training,
# when ratios move, for a sharper check.
#
# ## 4. The buggy variant: the diagnosis names the cause

# %%
bad = check_batch(dump_batch(work / "bad.safetensors", per_sequence=True))
print(bad.report())
assert not bad.match and bad.causes == ["sequence_mean"]

# %% [markdown]
# Reading the report: the verdict, the tolerance, the loss split into L_GRPO and L_SFT (ours), the
# first tokens whose gradient differs (theirs vs ours), and the simplest variant that reproduces your
# numbers: here the per-sequence mean. If the report says your numbers match another convention,
# say `--convention verl-seq-mean-token-mean`, you implemented that one: check the one you meant.
#
# ## 5. Golden cases: your loss function against ~40 named batches per convention
#
# `minichord check --golden my_module:my_loss` runs a function over the golden cases shipped with
# minichord (`minichord/check/`, schema in `golden.py`): thresholds of the clip and the clamp,
# p near 0 and 1, mu = 0 and 1, empty sides, groups of one, micro-batches, LUFFY. Raise
# NotImplementedError for what you do not support (here: LUFFY and advantages from rewards).

# %%
from minichord.check.golden import run_golden  # noqa: E402


def golden_entry(min_count):
    def entry(logp, old_logp, advantages, mask, is_expert, *, mu, weighting, eps_low, eps_high, **_):
        if weighting != "phi" or advantages is None or eps_high != 0.2:
            raise NotImplementedError("this toy loss is CHORD-phi with given advantages only")
        a = advantages.sum(1) / mask.sum(1).clamp(min=1)  # [B]: the per-sequence advantage
        return my_chord_loss(logp, old_logp, a, mask, is_expert.bool(), mu, min_count=min_count)
    return entry


lines = []
assert run_golden(golden_entry(min_count=0), "paper", lines.append) == 1
print("\n".join(line for line in lines if line.startswith("FAIL"))[:1500])
print(lines[-1])
assert any(line.startswith("FAIL paper/no_expert_side: loss nan") for line in lines)

# %% [markdown]
# The one batch above could not show it: with no expert token (or no rollout) in a batch, the loss
# divides 0 by 0. Counting at least 1 token per side (minichord's `token_coefficients` does the same)
# fixes every case this function supports:

# %%
lines = []
assert run_golden(golden_entry(min_count=1), "paper", lines.append) == 0
print(lines[-1])
assert " 0 failed" in lines[-1]

# %% [markdown]
# ## 6. Several GPUs: one file per rank
#
# Under data parallelism each rank computes the loss of its own sequences and DDP averages the
# gradients. A token-mean over the whole batch then needs the whole batch's token count on every rank
# (an all-reduce) and a loss times the number of ranks; a rank that divides by its own count weights
# the ranks equally instead, so the loss changes with the number of GPUs. Dump each rank's batch with
# metadata `rank` and `step` (and `grad_reduce = "sum"` if your ranks' gradients are summed):
# `minichord check rank0.safetensors rank1.safetensors` checks them as one batch.

# %%
def dump_ranks(own_count):
    world, paths = 2, []
    on_all, ex_all = (mask & ~is_expert[:, None]).sum(), (mask & is_expert[:, None]).sum()  # all-reduced counts
    for rank, rows in enumerate([torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5])]):  # each rank's sequences
        logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0][rows]  # [B_rank, T]
        logp.retain_grad()
        on, ex = mask[rows] & ~is_expert[rows, None], mask[rows] & is_expert[rows, None]
        # the bug: a single-GPU loss run unchanged on each rank (its own token counts, no x W)
        n_on, n_ex, w = (on.sum(), ex.sum(), 1) if own_count else (on_all, ex_all, world)
        ratio, a, p = (logp - old_logp[rows]).clamp(-20, 20).exp(), advantages[rows, None], logp.exp().detach()
        pg, sft = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2)), -p * (1 - p) * logp  # [B_rank, T]
        loss = w * ((1 - mu) * (pg * on).sum() / n_on + mu * (sft * ex).sum() / n_ex)  # x W: DDP averages
        loss.backward()
        paths.append(work / f"rank{rank}.safetensors")
        save_file({"logp": logp.detach(), "old_logp": old_logp[rows], "advantages": advantages[rows],
                   "mask": mask[rows], "is_expert": is_expert[rows], "loss": loss.detach(), "grad_logp": logp.grad},
                  str(paths[-1]),
                  metadata={"mu": str(mu), "weighting": "phi", "rank": str(rank), "step": "1"})
    return paths


assert check_batch(dump_ranks(own_count=False)).match
per_rank = check_batch(dump_ranks(own_count=True))
print(per_rank.report())
assert "per_device_normaliser" in [c.key for d in per_rank.diagnoses for c in d.causes]

# %% [markdown]
# The diagnosis names the bug and where it was reported (TRL PR #3231); with equal numbers of
# sequences per rank it is equally verl issue #5625's per-micro-batch weighting. Give `micro_batch`
# ids too (each rank's accumulation steps 0..G-1) and the accumulation bugs of the catalogue show.
