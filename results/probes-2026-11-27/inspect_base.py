"""Probe: what does a base answer on in-domain problems? Error categories (greedy, 100 problems, seed-0 split).
    python results/probes-2026-11-27/inspect_base.py BASE_DIR"""
import sys, collections, torch
torch.set_num_threads(2)
from minichord.experiment import load_initial_model
from minichord.tasks import make_splits
from minichord.evaluate import evaluate
from minichord.tasks.reward import reward
model, tok = load_initial_model(sys.argv[1], None)
probs = make_splits(0, n_rl=0, n_expert=0, n_test=100).tests["in_domain"]
import minichord.evaluate as ev
res = []
fn = lambda r, a: (res.append((r, a)) or reward(r, a))
out = evaluate(model, tok, probs, reward_fn=fn)
cats = collections.Counter()
for (r, a), p in zip(res, probs):
    r2 = r.replace("<eos>", "").strip() if isinstance(r, str) else r
    if reward(r, a): cats["correct"] += 1
    elif "carry" in r or "answer" in r: cats["expert-style"] += 1
    elif r2[:len(a)].isdigit() and len(r2.split()[0] if r2.split() else "") == len(a): cats["terse, same length, wrong"] += 1
    else: cats["terse, other"] += 1
a_, b_ = None, None
carry = [int(p.prompt.split()[1][-1]) + int(p.prompt.split()[2][-1]) >= 10 for p in probs]
ok = [reward(r, a) for r, a in res]
print("acc", out["accuracy"], dict(cats))
print("acc | units carry", sum(o for o, c in zip(ok, carry) if c) / max(1, sum(carry)), "acc | no units carry",
      sum(o for o, c in zip(ok, carry) if not c) / max(1, len(carry) - sum(carry)))
for (r, a), p in list(zip(res, probs))[:8]:
    print(repr(p.prompt), "->", repr(r), "want", a)
