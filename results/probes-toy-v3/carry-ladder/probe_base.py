"""Probe: pre-train a toy-v3a base (PretrainConfig overridable) and record what criteria 1, 4, 5 need.

    python results/probes-toy-v3/carry-ladder/probe_base.py OUT_DIR --seed 0 --steps 600 [--set easy_fraction=0.3 ...]

Appends one JSON line to results/probes-toy-v3/carry-ladder/base_probes.jsonl: accuracies (in-domain split by
carry-free / with carries), expert-token stats, rollout success at T=1 on 64 RL prompts x 8, wall.
"""
import argparse, ast, dataclasses, json, time
from pathlib import Path

import torch

torch.set_num_threads(int(__import__("os").environ.get("PROBE_THREADS", "1")))
from minichord.checkpoint import load_checkpoint
from minichord.config import SamplerConfig
from minichord.evaluate import evaluate
from minichord.pretrain import PretrainConfig, pretrain_base
from minichord.sampler import generate
from minichord.tasks import make_splits, reward
from minichord.tasks.toy import inner_carries as carries

ap = argparse.ArgumentParser()
ap.add_argument("out"); ap.add_argument("--seed", type=int, default=0); ap.add_argument("--steps", type=int, default=None)
ap.add_argument("--set", action="append", default=[])
a = ap.parse_args()
over = {k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in a.set)}
cfg = dataclasses.replace(PretrainConfig(), **over)
t0 = time.perf_counter()
path = pretrain_base(a.out, seed=a.seed, steps=a.steps, config=cfg, log=print, force=True)
wall = time.perf_counter() - t0
ck = load_checkpoint(path)
model, tok = ck.model, ck.tokenizer
task = make_splits(0, n_rl=64, n_expert=0, n_test=200)
ind = task.tests["in_domain"]
by = {k: [p for p in ind if carries(*map(int, p.prompt.split()[1:])) == k] for k in (0, 1, 2)}
acc_by = {k: round(evaluate(model, tok, g)["accuracy"], 3) for k, g in by.items() if g}
sample = evaluate(model, tok, ind[:8])["samples"]
est_share = evaluate(model, tok, ind, reward_fn=lambda r, a: r.strip().startswith("the sum"))["accuracy"]
big = [p for p in ind if int(p.prompt.split()[1]) >= 600]; small = [p for p in ind if int(p.prompt.split()[1]) < 600]
acc_big_small = (round(evaluate(model, tok, big)["accuracy"], 3), round(evaluate(model, tok, small)["accuracy"], 3))
g = torch.Generator().manual_seed(0)
ids = [tok.encode_prompt(p.prompt) for p in task.rl for _ in range(8)]
out = generate(model, ids, SamplerConfig(max_new_tokens=96), eos_id=tok.stop_ids, pad_id=tok.pad_id,
               vocab_size=tok.vocab_size, generator=g)
r = torch.tensor([reward(tok.decode(t[m]), task.rl[i // 8].answer) for i, (t, m) in enumerate(zip(out.tokens, out.mask))]).view(64, 8)
rl_c = torch.tensor([carries(*map(int, p.prompt.split()[1:])) for p in task.rl])
succ_by = {k: round(r[rl_c == k].mean().item(), 3) for k in (0, 1, 2) if (rl_c == k).any()}
rec = {"out": a.out, "seed": a.seed, "steps": a.steps or cfg.steps, "overrides": over,
       "accuracy": {k: v for k, v in ck.meta["accuracy"].items() if isinstance(v, float)},
       "per_skill": ck.meta["accuracy"].get("other_skills_per_skill"),
       "in_domain_by_inner_carries": acc_by, "n_by_inner_carries": {k: len(g) for k, g in by.items()},
       "rollout_success_T1_by_inner_carries": succ_by,
       "expert_tokens": ck.meta["expert_tokens"], "rollout_success_T1": r.mean().item(),
       "greedy_estimate_share": est_share, "acc_a>=600_a<600": acc_big_small, "groups_with_signal": ((r.std(1) > 0).float().mean()).item(), "train_s": ck.meta["train_seconds"],
       "wall_s": round(wall, 1), "samples": [(s["prompt"], s["response"], s["answer"]) for s in sample[:3]]}
with open(Path(__file__).with_name("base_probes.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
print(json.dumps(rec))
