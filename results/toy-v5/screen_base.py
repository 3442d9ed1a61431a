"""Screen one pre-training variant on one seed (issue 13, criterion 5): pre-train, then print one JSON line with
in-domain (all / first operand < 600 / >= 600), harder, other skills and the expert tokens' median p.

    python results/toy-v5/screen_base.py OUT --seed 0 [--set KEY=VALUE ...] [--device cuda]
"""
import argparse
import dataclasses
import json
import time

import torch

from minichord.checkpoint import load_checkpoint
from minichord.config import SamplerConfig, TrainConfig
from minichord.pretrain import PretrainConfig, pretrain_base
from minichord.sampler import generate
from minichord.tasks import make_splits

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--set", action="append", default=[])
ap.add_argument("--device", default="auto")
args = ap.parse_args()
fields = {f.name: f.type for f in dataclasses.fields(PretrainConfig)}
over = {}
for kv in args.set:
    k, v = kv.split("=", 1)
    over[k] = (v.lower() == "true") if "bool" in str(fields[k]) else type(getattr(PretrainConfig(), k))(v)
t0 = time.perf_counter()
pretrain_base(args.out, seed=args.seed, config=PretrainConfig(**over), device=args.device, log=None, force=True)
seconds = time.perf_counter() - t0
ck = load_checkpoint(args.out)
model = ck.model.eval()
task = make_splits(args.seed, n_rl=0, n_expert=TrainConfig().n_expert, n_test=200)
probs = task.tests["in_domain"]
with torch.no_grad():
    r = generate(model, [ck.tokenizer.encode_prompt(p.prompt) for p in probs], SamplerConfig(max_new_tokens=48, greedy=True),
                 eos_id=ck.tokenizer.stop_ids, pad_id=ck.tokenizer.pad_id, vocab_size=ck.tokenizer.vocab_size)
resp = [ck.tokenizer.decode(t[m]).replace("<|eos|>", "").strip() for t, m in zip(r.tokens, r.mask)]
big = [x == p.answer for p, x in zip(probs, resp) if int(p.prompt.split()[1]) >= 600]
small = [x == p.answer for p, x in zip(probs, resp) if int(p.prompt.split()[1]) < 600]
acc, et = ck.meta["accuracy"], ck.meta["expert_tokens"]
print(json.dumps(dict(set=over, seed=args.seed, in_domain=acc["in_domain"], lt600=round(sum(small) / len(small), 3),
                      ge600=round(sum(big) / len(big), 3), harder=acc["harder"], other=acc["other_skills"],
                      median_p=round(et["median_p"], 3), share_above_half=round(et["share_p_above_0.5"], 3),
                      mean_phi=round(et["mean_phi"], 3), seconds=round(seconds, 1), sample=resp[:3])), flush=True)
