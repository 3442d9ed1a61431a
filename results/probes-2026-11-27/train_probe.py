"""Probe: run `minichord train` on a given base and summarise eval.jsonl (base row = step 0 if present).

    python results/probes-2026-11-27/train_probe.py METHOD BASE_DIR OUT_DIR [--set k=v ...]

Prints every eval point and the best in-domain / harder / min other-skill; appends to results/probes-2026-11-27/train_probes.jsonl.
"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(2)
from minichord.experiment import prepare_run

method, base, out, *rest = sys.argv[1:]
sets = [rest[i + 1] for i in range(len(rest)) if rest[i] == "--set"]
overrides = [f"init={base}", *sets]
t0 = time.perf_counter()
prepare_run(method, out, overrides=overrides, resume=False, log=lambda m: None).run()
wall = time.perf_counter() - t0
evals = [json.loads(l) for l in open(Path(out) / "eval.jsonl")]
rows = []
for e in evals:
    row = {"step": e["step"], **{k: round(e[k]["accuracy"], 3) for k in ("in_domain", "harder", "other_skills")},
           "len": round(e["in_domain"]["response_length"], 1)}
    rows.append(row); print(row)
best = {"best_in_domain": max(r["in_domain"] for r in rows), "best_harder": max(r["harder"] for r in rows),
        "min_other": min(r["other_skills"] for r in rows), "first": rows[0], "last": rows[-1]}
rec = {"method": method, "base": base, "out": out, "overrides": overrides, **best, "wall_s": round(wall, 1), "evals": rows}
with open(Path(__file__).with_name("train_probes.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
print(json.dumps({k: v for k, v in rec.items() if k != "evals"}))
