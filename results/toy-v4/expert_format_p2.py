"""Median p of three more expert formats under a base checkpoint (no training): python results/toy-v4/expert_format_p2.py BASE_DIR"""
import sys, torch
torch.set_num_threads(2)
from minichord.checkpoint import load_checkpoint
from minichord.evaluate import expert_token_probs
from minichord.tasks import make_splits
from minichord.tasks.base import Demonstration
ck = load_checkpoint(sys.argv[1])
task = make_splits(0, n_rl=0, n_expert=256, n_test=0)
def decompose(a, b):
    hundreds, rest = int(b) // 100 * 100, int(b) % 100
    mid = int(a) + hundreds
    return f"{a}+{hundreds}={mid}\n{mid}+{rest}={mid + rest}\nanswer: {int(a) + int(b)}"
def partial(a, b):
    lines, carry, digits = [], 0, ""
    for da, db in zip(reversed(a), reversed(b)):
        col = int(da) + int(db) + carry; carry = col // 10; digits = str(col % 10) + digits
        lines.append(f"{da}+{db}={col} so far {digits}")
    return "\n".join(lines + [f"answer: {int(a) + int(b)}"])
def terse_then_check(a, b):
    return f"{int(a) + int(b)}\ncheck: {int(a) + int(b)}-{b}={a}"
for name, f in [("decompose", decompose), ("partial", partial), ("terse+check", terse_then_check)]:
    demos = [Demonstration(p.prompt, f(*p.prompt.split()[1:]), p.answer) for p in task.expert]
    print(name, {k: round(v, 3) for k, v in expert_token_probs(ck.model, ck.tokenizer, demos).items()}, repr(demos[0].response[:60]))
