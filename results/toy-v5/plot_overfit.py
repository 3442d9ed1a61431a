"""Criterion 6's curve (issue 13): SFT on 64 and on 4000 expert demonstrations (the probe's two long runs, 400 steps,
lr 3e-4): held-out in-domain and harder accuracy, and the training expert NLL, against the step.
Run: python results/toy-v5/plot_overfit.py results/toy-v5/probe   (writes overfit.png there)"""
import json
import sys
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

probe = Path(sys.argv[1])
fig, (acc_ax, nll_ax) = plt.subplots(1, 2, figsize=(11, 4))
for run, label, color in (("sft-small", "64 demos", "tab:red"), ("sft-long", "4000 demos", "tab:blue")):
    evals = [json.loads(line) for line in open(probe / run / "eval.jsonl")]
    steps = [e["step"] for e in evals]
    acc_ax.plot(steps, [e["in_domain"]["accuracy"] for e in evals], color=color, label=f"{label}: in-domain")
    acc_ax.plot(steps, [e["harder"]["accuracy"] for e in evals], color=color, ls="--", label=f"{label}: harder")
    metrics = [json.loads(line) for line in open(probe / run / "metrics.jsonl")]
    nll_ax.plot([m["step"] for m in metrics], [m["expert_nll"] for m in metrics], color=color, label=label)
acc_ax.set(xlabel="SFT step", ylabel="held-out accuracy (greedy, 150 problems)", ylim=(0, 1.02))
nll_ax.set(xlabel="SFT step", ylabel="training expert NLL (per token)", yscale="log")
acc_ax.legend(fontsize=8)
nll_ax.legend(fontsize=8)
fig.suptitle("SFT on a small and a large expert set, default base (toy v5)")
fig.tight_layout()
fig.savefig(probe / "overfit.png", dpi=110)
print("wrote", probe / "overfit.png")
