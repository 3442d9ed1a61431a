"""Greedy in-domain accuracy of the default base by first operand (< 600 / >= 600), split seed 0, 200 problems.
Run: python results/toy-v4/base-v6/by_first_operand.py  (2026-11-27: < 600: 0.339 of 118; >= 600: 0.0 of 82, all sentences)"""
import torch, os
from minichord.checkpoint import load_checkpoint
from minichord.tasks import make_splits
from minichord.sampler import generate
from minichord.config import SamplerConfig, TrainConfig
ck = load_checkpoint(os.path.expanduser("~/.cache/minichord/base-v6"))
task = make_splits(0, n_rl=0, n_expert=TrainConfig().n_expert, n_test=200)
probs = task.tests["in_domain"]
ids = [ck.tokenizer.encode_prompt(p.prompt) for p in probs]
r = generate(ck.model.eval(), ids, SamplerConfig(max_new_tokens=48, greedy=True), eos_id=ck.tokenizer.stop_ids, pad_id=ck.tokenizer.pad_id, vocab_size=ck.tokenizer.vocab_size)
resp = [ck.tokenizer.decode(t[m]).replace("<|eos|>", "").strip() for t, m in zip(r.tokens, r.mask)]
big = [(p, x) for p, x in zip(probs, resp) if int(p.prompt.split()[1]) >= 600]
small = [(p, x) for p, x in zip(probs, resp) if int(p.prompt.split()[1]) < 600]
acc = lambda g: sum(x.split()[-1] == p.answer and not x.startswith("the sum") for p, x in g) / len(g)
print("n big", len(big), "acc", acc(big), "sentence share", sum(x.startswith("the sum is") for _, x in big) / len(big))
print("n small", len(small), "acc", round(acc(small), 3))
print(resp[:3])
