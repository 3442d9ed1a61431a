# %% [markdown]
# # 07 — A full toy run, and how to read its curves
#
# Everything together on the toy task: a base model that
# answers 3-digit additions in its own terse style ("1079") and gets only some of them right (those
# without a carry between columns, some with one: it never saw two), that answers "add A B" with
# A >= 600 in a sentence ("the sum is 1079": right digits, a format the exact-match reward marks
# wrong, as an instruct model that will not give the bare number), a limited set of expert
# demonstrations in a step-by-step style ("4+5=9 carry 0 ... answer: 1079", lowest column first)
# that the base has seen only sloppily on 3-digit sums (wrong column digits: it knows the format,
# not the digits, so the expert's tokens have p ~ 0.4 under it and phi = p(1-p) is not ~0),
# and CHORD-phi training: GRPO on the model's own rollouts + phi-weighted SFT on the expert traces,
# mu = 0.1. Two kinds of room: RL can drop the sentence (the base still samples the bare number);
# only the expert's procedure brings the carries.
#
#     1. pretrain_base   -> a checkpoint: tokenizer + model + its accuracy on each test split
#     2. prepare_run     -> a Trainer (method preset <- overrides; data; the initial model)
#     3. trainer.run()   -> metrics.jsonl (one line per step), eval.jsonl, samples.jsonl, checkpoint/
#
# Two settings:
#
# * `MINICHORD_TUTORIAL_QUICK=1` (what the test suite uses): a 0.1M-parameter model pre-trained
#   for a few seconds, 4 RL steps, 8 test problems per split. Under a minute on 2 CPU cores,
#   everything in a temporary directory (MINICHORD_HOME too). The model is too weak to get any
#   reward: this setting shows the plumbing and the files, not learning.
# * default: the library's own toy base model (0.8M parameters, 1300 pre-training steps; the
#   one `minichord demo` uses, cached in $MINICHORD_HOME, default ~/.cache/minichord, so it is
#   made at most once) and 40 RL steps. About 2.5 minutes on 2 CPU cores the first time (~2 of them
#   pre-training), 35 s after. Measured (2026-11-27): in-domain 0.167 -> 0.350 on 60 problems,
#   sentence answers 40 % -> 5 %. The full-size experiment is `minichord demo` / `minichord reproduce`.

# %%
import math
import os
import tempfile
import time
from pathlib import Path

import torch

QUICK = os.environ.get("MINICHORD_TUTORIAL_QUICK", "") == "1"
work = Path(tempfile.mkdtemp(prefix="minichord-tutorial07-"))
if QUICK:
    os.environ["MINICHORD_HOME"] = str(work / "home")  # never touch the user's cache

from minichord.checkpoint import load_checkpoint  # noqa: E402  (after MINICHORD_HOME is set)
from minichord.config import ModelConfig  # noqa: E402
from minichord.evaluate import evaluate  # noqa: E402
from minichord.trainer import prepare_run  # noqa: E402
from minichord.pretrain import PretrainConfig, default_base_dir, pretrain_base  # noqa: E402
from minichord.runners import read_jsonl  # noqa: E402

t_start = time.perf_counter()
print(f"setting: {'QUICK' if QUICK else 'default (a few minutes)'}; outputs in {work}")

# %% [markdown]
# ## 1. The base model
#
# One detail: the tokenizer is trained first, with the model's `vocab_size` as its budget, and
# on this small, repetitive corpus BPE runs out of merges after a few dozen (tutorial 01).
# `pretrain_base` then gives the model exactly as many embedding rows as the tokenizer has ids,
# so every row is trained and every sampled id decodes.

# %%
if QUICK:
    model_cfg = ModelConfig(vocab_size=144, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=192)
    pre_cfg = PretrainConfig(steps=25, batch_size=32, warmup_steps=3, n_eval=8)
    base_dir = work / "base"
else:
    model_cfg = ModelConfig()  # dim 128, 4 layers: 0.8M parameters
    pre_cfg = PretrainConfig()  # the library's recipe: 1300 steps x 64 examples
    base_dir = default_base_dir()  # the demo's base model, reused if already made
base = pretrain_base(base_dir, config=pre_cfg, model_config=model_cfg, log=print)
base_meta = load_checkpoint(base).meta
print("base model accuracy:", {k: v for k, v in base_meta["accuracy"].items() if isinstance(v, float)})

# %% [markdown]
# ## 2. A short CHORD-phi run
#
# `prepare_run(method, out_dir, overrides=...)` = method preset <- `key=value` overrides, the
# toy task's splits (RL prompts, expert set, test splits; seeded), the initial model from
# `init`. Each step samples `prompts_per_step x group_size` rollouts and adds
# `experts_per_step` expert demonstrations.

# %%
if QUICK:
    steps, eval_every = 4, 2
    overrides = ["prompts_per_step=4", "group_size=4", "experts_per_step=4", "n_test=8",
                 "n_rl_prompts=64", "n_expert=16", "sampler.max_new_tokens=48"]
else:
    steps, eval_every = 40, 10
    overrides = ["prompts_per_step=8", "group_size=8", "experts_per_step=16", "n_test=60",
                 "n_rl_prompts=400", "n_expert=64", "lr=1e-4"]
run_dir = work / "run"
trainer = prepare_run("chord-phi", run_dir, resume=False, overrides=[
    f"init={base}", f"steps={steps}", f"eval_every={eval_every}", f"save_every={steps}", *overrides])
assert trainer.tok.vocab_size == trainer.model.cfg.vocab_size  # one embedding row per token id
print(f"{trainer.steps} steps of {trainer.cfg.prompts_per_step} prompts x {trainer.cfg.group_size} rollouts "
      f"+ {trainer.cfg.experts_per_step} expert demos; lr {trainer.cfg.lr}")
trainer.run()

# %% [markdown]
# ## 3. Reading metrics.jsonl
#
# One JSON line per step. The columns worth watching:
#
# * **reward** (and accuracy): mean reward of the step's rollouts. The primary signal of RL. It
#   is noisy (a handful of prompts per step): look at its trend.
# * **zero_variance_groups**: share of groups whose G rollouts all got the same reward. They
#   have zero advantage and teach GRPO nothing (tutorial 04). Near 1 at the start (all wrong)
#   or the end (all right) means the RL term is starving; the SFT term still has signal.
# * **entropy**: mean per-token entropy of the rollouts. RL tends to collapse it (the policy
#   becomes deterministic, exploration dies); SFT on another style usually raises it at first.
# * **mu**: the global SFT share; constant 0.1 for CHORD-phi.
# * **response_length**: tokens per rollout. The terse base writes ~4 tokens; as the
#   policy picks up the expert's step-by-step style this grows toward the expert's length.
# * **expert_nll / expert_p / expert_phi**: mean NLL of the expert tokens, mean p, mean
#   phi = p(1-p) over them. NLL falling = the policy absorbs the expert's style. phi is the
#   SFT weight: when mean phi is small, the expert tokens are either far from the policy
#   (p ~ 0) or already learned (p ~ 1), and the SFT term switches itself off.
# * **loss**: not informative for the GRPO part (~0 at r = 1, tutorial 04).

# %%
metrics = read_jsonl(run_dir / "metrics.jsonl")
cols = ["step", "mu", "reward", "zero_variance_groups", "entropy", "response_length",
        "expert_nll", "expert_p", "expert_phi", "clip_fraction"]
print(" ".join(f"{c[:11]:>11s}" for c in cols))
for m in metrics:
    print(" ".join(f"{m[c]:11d}" if isinstance(m[c], int) else f"{m[c]:11.4f}" for c in cols))

# %% [markdown]
# Checks on the file: one line per step; mu is CHORD-phi's constant; and a small identity:
# because p(1-p) is concave, the mean of phi over the expert tokens can never exceed
# mean(p) (1 - mean(p)) (Jensen's inequality).

# %%
assert [m["step"] for m in metrics] == list(range(steps))
assert all(m["mu"] == 0.1 for m in metrics)
for m in metrics:
    assert all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "entropy", "expert_nll"))
    assert 0.0 <= m["reward"] <= 1.0
    assert m["expert_phi"] <= m["expert_p"] * (1 - m["expert_p"]) + 1e-6
print("check: one row per step, mu = 0.1, finite losses, mean phi <= mean p (1 - mean p) (tolerance 1e-6)")

# %% [markdown]
# ## 4. Reading eval.jsonl
#
# Greedy-decoding accuracy on held-out splits, at step 0 (the base model) and every
# `eval_every` steps: **in_domain** (3-digit additions like the training ones), **harder**
# (3-digit sums whose units and tens columns both carry: a longer carry chain than the base ever
# answered; does the learned procedure generalise?), **other_skills**
# (reverse / sort / copy: never trained on during RL; a drop here is forgetting, the cost
# the paper attributes to disruptive off-policy data).

# %%
evals = read_jsonl(run_dir / "eval.jsonl")
splits = ("in_domain", "harder", "other_skills")
print(f"{'step':>5s} " + " ".join(f"{s:>13s}" for s in splits) + "   mean length (in_domain)")
for e in evals:
    print(f"{e['step']:5d} " + " ".join(f"{e[s]['accuracy']:13.3f}" for s in splits)
          + f"   {e['in_domain']['response_length']:.1f}")
# samples.jsonl holds the answers themselves: at each evaluation (and every `samples_every` steps), the greedy
# response and reward for the same first prompts of each split; `minichord samples RUN_DIR` prints them across steps.
last = read_jsonl(run_dir / "samples.jsonl")[-1]
print("a final in-domain sample:", next(x for x in last["samples"] if x["split"] == "in_domain"))

# %% [markdown]
# Which *style* the answers take is half of the story on this toy: the share of greedy in-domain
# answers written as a sentence (the base's habit on big first operands) and as a column
# procedure (the expert's style), before and after. Accuracy can only rise on the sentence
# prompts once that share falls.

# %%
def style_shares(model, tokenizer, problems) -> dict:
    def share(test):
        return evaluate(model, tokenizer, problems, reward_fn=lambda r, a: float(test(r)),
                        max_new_tokens=trainer.cfg.sampler.max_new_tokens)["accuracy"]
    return {"sentence": share(lambda r: r.strip().startswith("the sum is")),
            "step by step": share(lambda r: "answer:" in r)}


in_domain = trainer.data.eval_splits["in_domain"]
base_ckpt = load_checkpoint(base)
before_styles = style_shares(base_ckpt.model, base_ckpt.tokenizer, in_domain)
after_styles = style_shares(trainer.model, trainer.tok, in_domain)
print("styles of greedy in-domain answers, base:", before_styles, "| trained:", after_styles)
assert all(0.0 <= v <= 1.0 for v in (*before_styles.values(), *after_styles.values()))

# %% [markdown]
# Check: the saved checkpoint reproduces the last evaluation (greedy decoding is deterministic).

# %%
final = load_checkpoint(run_dir / "checkpoint")
again = evaluate(final.model, final.tokenizer, trainer.data.eval_splits["in_domain"],
                 max_new_tokens=trainer.cfg.sampler.max_new_tokens)
print(f"checkpoint step {final.step}: in-domain accuracy {again['accuracy']:.3f} "
      f"(eval.jsonl: {evals[-1]['in_domain']['accuracy']:.3f}; tolerance 0)")
assert final.step == steps and again["accuracy"] == evals[-1]["in_domain"]["accuracy"]

# %% [markdown]
# ## 5. The curves as a picture
#
# `minichord plot RUN_DIR -o curves.png` draws the same columns (needs matplotlib).

# %%
try:
    from minichord.runners import plot_runs

    print("curves saved to", plot_runs([run_dir], work / "curves.png"))
except SystemExit as e:  # plot_runs exits with a message when matplotlib is missing
    print(e)
print(f"tutorial 07 took {time.perf_counter() - t_start:.0f} s")
