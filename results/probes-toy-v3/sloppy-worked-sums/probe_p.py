"""Probe for issue 13, criterion 5 (partly on-policy expert): pre-train a toy base (PretrainConfig
overridable) and record median expert-token p, its distribution and split by token kind, the fit
(final loss, per-skill held-out loss curve, accuracies, carry-free split) and rollout success at T=1.

    PROBE_THREADS=1 python results/probes-toy-v3b/probe_p.py OUT_DIR --seed 0 --steps 900 [--set k=v ...] [--rollouts]

Appends one JSON line to results/probes-toy-v3b/probes.jsonl.
"""
import argparse, ast, dataclasses, json, os, random, re, statistics, time
from pathlib import Path

import torch

torch.set_num_threads(int(os.environ.get("PROBE_THREADS", "1")))
import torch.nn.functional as F
from minichord.checkpoint import load_checkpoint
from minichord.config import SamplerConfig, TrainConfig
from minichord.evaluate import evaluate, split_example
from minichord.pretrain import PretrainConfig, pad_batch, pretrain_base
from minichord.sampler import generate
from minichord.tasks import make_splits, reward
from minichord.tasks.toy import (SKILLS, OTHER_SKILLS, _carry_free, _draw, inner_carries, is_reserved,
                                 stepwise_response, terse_response)

ap = argparse.ArgumentParser()
ap.add_argument("out"); ap.add_argument("--seed", type=int, default=0); ap.add_argument("--steps", type=int, default=None)
ap.add_argument("--set", action="append", default=[]); ap.add_argument("--rollouts", action="store_true")
ap.add_argument("--tag", default="")
a = ap.parse_args()
over = {k: ast.literal_eval(v) for k, v in (kv.split("=", 1) for kv in a.set)}
cfg = dataclasses.replace(PretrainConfig(), **over)

# held-out (reserved) probe sets per kind of pre-training text, for the loss curve
hr = random.Random(1234)
def reserved(gen, n):
    out = []
    while len(out) < n:
        p = gen()
        if is_reserved(p.prompt):
            out.append(p)
    return out
add = SKILLS["add"]
held = {
    "terse_1-2": [(p.prompt, terse_response(p)) for p in reserved(lambda: _draw(hr, add, (1, 2)), 64)],
    "terse_3_carry_free": [(p.prompt, terse_response(p)) for p in reserved(lambda: _carry_free(hr, (3, 3)), 64)],
    "stepwise_base_1-3": [(p.prompt, stepwise_response(p, hr, variant=cfg.expert_style_variant if cfg.expert_style_variant_digits[0]
                           <= len(p.prompt.split()[1]) <= cfg.expert_style_variant_digits[1] else "expert",
                           keep=cfg.expert_style_keep, newline=cfg.expert_style_newline, noise=cfg.expert_style_noise
                           if cfg.expert_style_noise_digits[0] <= len(p.prompt.split()[1]) <= cfg.expert_style_noise_digits[1] else 0.0))
                          for p in reserved(lambda: _draw(hr, add, cfg.expert_style_digits), 64)],
    "other": [(p.prompt, terse_response(p)) for i in range(3) for p in
              reserved(lambda: _draw(hr, SKILLS[OTHER_SKILLS[i]], cfg.other_lengths), 22)],
}
curve = []
def on_log(step, train_loss, model):
    tok = on_log.tok
    row = {"step": step, "train": round(train_loss, 4)}
    model.eval()
    with torch.no_grad():
        for k, pairs in held.items():
            ids, att, m = pad_batch([tok.encode_example(p, r) for p, r in pairs], tok.pad_id)
            logits = model(ids[:, :-1], attention_mask=att[:, :-1])
            row[k] = round(F.cross_entropy(logits[m[:, 1:]].float(), ids[:, 1:][m[:, 1:]]).item(), 4)
    model.train()
    curve.append(row)
    print("  held-out loss", row, flush=True)

# the tokenizer is made inside pretrain_base; rebuild it the same way for the hook
from minichord.tasks.toy import style_texts
from minichord.tokenizer import Tokenizer
from minichord.config import ModelConfig
on_log.tok = Tokenizer.train(style_texts(random.Random(f"minichord-pretrain-{a.seed}"), cfg.tokenizer_texts,
                                         other_lengths=cfg.other_lengths), vocab_size=ModelConfig().vocab_size)
t0 = time.perf_counter()
path = pretrain_base(a.out, seed=a.seed, steps=a.steps, config=cfg, log=print, force=True, on_log=on_log)
wall = time.perf_counter() - t0
ck = load_checkpoint(path)
model, tok = ck.model, ck.tokenizer
assert tok.encode_example("add 1 2", "3") == on_log.tok.encode_example("add 1 2", "3")
model.eval()

# expert-token p, by kind (the trainer's default expert set of split seed = pre-training seed, as pretrain does)
task = make_splits(a.seed, n_rl=0, n_expert=TrainConfig().n_expert, n_test=0)
def kinds(response):
    lab = []
    for line in response.split("\n"):
        if line.startswith("answer:"):
            lab += ["fmt"] * len("answer: ") + ["ans"] * (len(line) - len("answer: "))
        else:
            terms, rest = line.split("=")
            parts = terms.split("+")
            for i, t in enumerate(parts):
                lab += (["op"] if i < 2 else ["cin"]) * len(t) + (["fmt"] if i < len(parts) - 1 else [])
            s, c = rest.split(" carry ")
            lab += ["fmt"] + ["sum"] * len(s) + ["fmt"] * len(" carry ") + ["cout"] * len(c)
        lab.append("fmt")  # newline (or eos after the answer line)
    return lab
ps, ks, ctx_first = [], [], []
with torch.no_grad():
    for d in task.expert:
        ids, mask = tok.encode_example(d.prompt, d.response)
        prompt, response = split_example(ids, mask)
        logits = model(torch.tensor([prompt + response]))[0, len(prompt) - 1:-1]
        p = logits.float().softmax(-1).gather(1, torch.tensor(response)[:, None]).squeeze(1)
        lab, pos = kinds(d.response), 0
        for t, pt in zip(response, p.tolist()):
            text = tok.decode([t])
            ks.append("eos" if text == "" else lab[pos]); ps.append(pt)
            pos += len(text)
        assert pos == len(d.response), (d.response, pos)
P = torch.tensor(ps)
by_kind = {k: {"n_share": round(sum(1 for x in ks if x == k) / len(ks), 3),
               "median_p": round(statistics.median([x for x, kk in zip(ps, ks) if kk == k]), 4),
               "mean_p": round(statistics.mean([x for x, kk in zip(ps, ks) if kk == k]), 4)}
           for k in ["op", "cin", "sum", "cout", "ans", "fmt", "eos"]}
digits = torch.tensor([x for x, k in zip(ps, ks) if k in ("op", "cin", "sum", "cout", "ans")])
fmt = torch.tensor([x for x, k in zip(ps, ks) if k in ("fmt", "eos")])
dist = {"median_p": round(P.median().item(), 4), "share_lt_0.05": round((P < 0.05).float().mean().item(), 3),
        "share_0.05_0.5": round(((P >= 0.05) & (P <= 0.5)).float().mean().item(), 3),
        "share_gt_0.5": round((P > 0.5).float().mean().item(), 3), "mean_phi": round((P * (1 - P)).mean().item(), 4),
        "digits_median": round(digits.median().item(), 4), "format_median": round(fmt.median().item(), 4)}

test = make_splits(0, n_rl=64, n_expert=0, n_test=200)
ind = test.tests["in_domain"]
free = [p for p in ind if inner_carries(*map(int, p.prompt.split()[1:])) == 0]
acc = {k: v for k, v in ck.meta["accuracy"].items() if isinstance(v, float)}
acc["in_domain_split0"] = evaluate(model, tok, ind)["accuracy"]
acc["carry_free_split0"] = evaluate(model, tok, free)["accuracy"]
acc["with_carry_split0"] = evaluate(model, tok, [p for p in ind if p not in free])["accuracy"]
samples = [(s["prompt"], s["response"]) for s in evaluate(model, tok, ind[:4])["samples"][:4]]
rec = {"tag": a.tag, "out": a.out, "seed": a.seed, "steps": a.steps or cfg.steps, "overrides": over, "expert_p": dist,
       "by_kind": by_kind, "accuracy": acc, "per_skill": ck.meta["accuracy"].get("other_skills_per_skill"),
       "final_train_loss": curve[-1]["train"], "final_heldout": curve[-1], "curve": curve,
       "train_s": ck.meta["train_seconds"], "wall_s": round(wall, 1), "samples": samples}
if a.rollouts:
    g = torch.Generator().manual_seed(0)
    ids = [tok.encode_prompt(p.prompt) for p in test.rl for _ in range(8)]
    out = generate(model, ids, SamplerConfig(max_new_tokens=96), eos_id=tok.stop_ids, pad_id=tok.pad_id,
                   vocab_size=tok.vocab_size, generator=g)
    texts = [tok.decode(t[m]) for t, m in zip(out.tokens, out.mask)]
    r = torch.tensor([reward(x, test.rl[i // 8].answer) for i, x in enumerate(texts)]).view(64, 8)
    rec["rollout_success_T1"] = round(r.mean().item(), 4)
    rec["groups_with_signal"] = round((r.std(1) > 0).float().mean().item(), 4)
    rec["rollout_stepwise_share"] = round(sum("\n" in x for x in texts) / len(texts), 4)
with open(Path(__file__).with_name("probes.jsonl"), "a") as f:
    f.write(json.dumps(rec) + "\n")
print("RESULT", json.dumps({k: rec[k] for k in ["tag", "seed", "steps", "overrides", "expert_p", "by_kind", "accuracy",
                                               "final_heldout", "train_s"] + [k for k in ("rollout_success_T1", "groups_with_signal", "rollout_stepwise_share") if k in rec]}))
