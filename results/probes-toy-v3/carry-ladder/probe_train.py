"""Probe: run one method from a given base and summarise its eval curve (criteria 2, 3, 4, 6).

    python results/probes-toy-v3/carry-ladder/probe_train.py METHOD BASE_DIR OUT_DIR [--set k=v ...]

Prints every eval point (in-domain, harder, other skills, response length, training expert NLL / reward
near it) and appends one JSON line to results/probes-toy-v3/carry-ladder/train_probes.jsonl.
"""
import json, sys, time
from pathlib import Path

import torch

torch.set_num_threads(int(__import__("os").environ.get("PROBE_THREADS", "1")))
from minichord.experiment import prepare_run

method, base, out, *rest = sys.argv[1:]
sets = [rest[i + 1] for i in range(len(rest)) if rest[i] == "--set"]
overrides = [f"init={base}", *sets]
t0 = time.perf_counter()
prepare_run(method, out, overrides=overrides, resume=False, log=lambda m: None).run()
wall = time.perf_counter() - t0
evals = [json.loads(l) for l in open(Path(out) / "eval.jsonl")]
metrics = [json.loads(l) for l in open(Path(out) / "metrics.jsonl")]
rows = []
for e in evals:
    near = [m for m in metrics if abs(m["step"] - e["step"]) <= 5]
    mean = lambda k: round(sum(m[k] for m in near if isinstance(m.get(k), float)) / max(1, sum(isinstance(m.get(k), float) for m in near)), 3)
    row = {"step": e["step"], **{k: round(e[k]["accuracy"], 3) for k in ("in_domain", "harder", "other_skills")},
           "len": round(e["in_domain"]["response_length"], 1), "expert_nll": mean("expert_nll"), "reward": mean("reward")}
    rows.append(row); print(row)
print(evals[-1]["in_domain"]["samples"][:2])
best = {"best_in_domain": max(r["in_domain"] for r in rows), "best_harder": max(r["harder"] for r in rows),
        "min_other": min(r["other_skills"] for r in rows), "first": rows[0], "last": rows[-1]}
rec = {"method": method, "base": base, "out": out, "overrides": overrides, **best, "wall_s": round(wall, 1), "evals": rows}
with open(Path(__file__).with_name("train_probes.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
print(json.dumps({k: v for k, v in rec.items() if k != "evals"}))
