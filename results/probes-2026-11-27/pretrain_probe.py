"""Probe: pre-train a base with the current recipe (optionally overridden) and record accuracies.

    python results/probes-2026-11-27/pretrain_probe.py OUT_DIR --seed 0 --steps 500 [--set target_fraction=0.3 ...]

Appends one JSON line to results/probes-2026-11-27/pretrain_probes.jsonl: settings, accuracies, expert-token stats, wall.
"""
import argparse, dataclasses, json, time, ast
from pathlib import Path
import torch
torch.set_num_threads(2)
from minichord.pretrain import PretrainConfig, pretrain_base
from minichord.checkpoint import load_checkpoint

ap = argparse.ArgumentParser()
ap.add_argument("out"); ap.add_argument("--seed", type=int, default=0); ap.add_argument("--steps", type=int, default=500)
ap.add_argument("--n-eval", type=int, default=200)
ap.add_argument("--set", action="append", default=[])
a = ap.parse_args()
over = {}
for kv in a.set:
    k, v = kv.split("=", 1)
    over[k] = ast.literal_eval(v)
cfg = dataclasses.replace(PretrainConfig(), n_eval=a.n_eval, **over)
t0 = time.perf_counter()
path = pretrain_base(a.out, seed=a.seed, steps=a.steps, config=cfg, log=print, force=True)
wall = time.perf_counter() - t0
meta = load_checkpoint(path).meta
rec = {"out": a.out, "seed": a.seed, "steps": a.steps, "overrides": over, "accuracy": meta["accuracy"],
       "expert_tokens": meta["expert_tokens"], "train_s": meta["train_seconds"], "wall_s": round(wall, 1)}
with open(Path(__file__).with_name("pretrain_probes.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
print(json.dumps(rec))
