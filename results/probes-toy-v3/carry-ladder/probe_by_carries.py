"""Probe: greedy in-domain accuracy of checkpoints split by the number of inner carries (0, 1, 2).

    python results/probes-toy-v3/carry-ladder/probe_by_carries.py CKPT [CKPT ...]
"""
import os, sys

import torch

torch.set_num_threads(int(os.environ.get("PROBE_THREADS", "1")))
from minichord.checkpoint import load_checkpoint
from minichord.evaluate import evaluate
from minichord.tasks import make_splits
from minichord.tasks.toy import inner_carries

problems = make_splits(0, n_rl=0, n_expert=0, n_test=300).tests["in_domain"]
groups = {k: [p for p in problems if inner_carries(*map(int, p.prompt.split()[1:])) == k] for k in (0, 1, 2)}
for path in sys.argv[1:]:
    ck = load_checkpoint(path)
    accs = {k: evaluate(ck.model, ck.tokenizer, g)["accuracy"] for k, g in groups.items()}
    print(path, " | ".join(f"{k} inner carries (n={len(groups[k])}): {a:.3f}" for k, a in accs.items()))
