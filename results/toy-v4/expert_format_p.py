"""Median p of alternative expert formats under a base checkpoint (no training): python results/toy-v4/expert_format_p.py BASE_DIR"""
import torch, statistics
torch.set_num_threads(2)
from minichord.checkpoint import load_checkpoint
from minichord.evaluate import expert_token_probs
from minichord.tasks import make_splits
from minichord.tasks.base import Demonstration
ck = load_checkpoint(__import__("sys").argv[1])
task = make_splits(0, n_rl=0, n_expert=256, n_test=0)
def fmt(p, line):
    a, b = p.prompt.split()[1:]
    lines, digits, carry = [], [], 0
    for da, db in zip(reversed(a), reversed(b)):
        col = int(da) + int(db) + carry
        lines.append(line(da, db, carry, col)); carry = col // 10; digits.append(str(col % 10))
    if carry: digits.append(str(carry))
    return "\n".join(lines + ["answer: " + "".join(reversed(digits)).lstrip("0")])
variants = {
  "current": lambda da, db, c, s: f"{da}+{db}" + (f"+{c}" if c else "") + f"={s} carry {s//10}",
  "words": lambda da, db, c, s: f"{da} plus {db}" + (f" plus {c}" if c else "") + f" is {s}, carry {s//10}",
  "b_first": lambda da, db, c, s: f"{db}+{da}" + (f"+{c}" if c else "") + f"={s} carry {s//10}",
  "digit_only": lambda da, db, c, s: f"{s%10} carry {s//10}",
}
for name, line in variants.items():
    demos = [Demonstration(p.prompt, fmt(p, line), p.answer) for p in task.expert]
    print(name, {k: round(v, 3) for k, v in expert_token_probs(ck.model, ck.tokenizer, demos).items()}, repr(demos[0].response[:40]))
