"""Probe: at T=1, how often does a checkpoint answer in the expert's column style, and how well in each style?

    python results/probes-toy-v3/carry-ladder/probe_styles.py CKPT [CKPT ...]

128 RL prompts (split seed 0) x 8 samples; per style (column = response holds "answer:"): share and
success, split by inner carries. Also greedy accuracy when the response is forced to start in the column
style (the prompt followed by the expert response's first two tokens: the units digit and "+").
"""
import os, sys

import torch

torch.set_num_threads(int(os.environ.get("PROBE_THREADS", "1")))
from minichord.checkpoint import load_checkpoint
from minichord.config import SamplerConfig
from minichord.sampler import generate
from minichord.tasks import make_splits, reward
from minichord.tasks.toy import expert_response, inner_carries

task = make_splits(0, n_rl=128, n_expert=0, n_test=0)
for path in sys.argv[1:]:
    ck = load_checkpoint(path)
    model, tok = ck.model, ck.tokenizer
    g = torch.Generator().manual_seed(0)
    ids = [tok.encode_prompt(p.prompt) for p in task.rl for _ in range(8)]
    out = generate(model, ids, SamplerConfig(max_new_tokens=96), eos_id=tok.stop_ids, pad_id=tok.pad_id,
                   vocab_size=tok.vocab_size, generator=g)
    stats = {}
    for i, (t, m) in enumerate(zip(out.tokens, out.mask)):
        p = task.rl[i // 8]
        text = tok.decode(t[m])
        key = ("column" if "answer:" in text else "terse", inner_carries(*map(int, p.prompt.split()[1:])))
        n, s = stats.get(key, (0, 0))
        stats[key] = (n + 1, s + reward(text, p.answer))
    total = len(out.tokens)
    print(path)
    for style in ("terse", "column"):
        row = {c: stats.get((style, c), (0, 0)) for c in (0, 1, 2)}
        n_all = sum(n for n, _ in row.values())
        print(f"  T=1 {style:6s}: share {n_all / total:.3f} | success by inner carries "
              + " | ".join(f"{c}: {s / n:.2f} (n={n})" if n else f"{c}: -" for c, (n, s) in row.items()))
    # forced column style: greedy continuation after the expert response's first token
    forced = {0: [0, 0], 1: [0, 0], 2: [0, 0]}
    prompts = []
    for p in task.rl:
        first = tok.encode(expert_response(p))[:2]  # units digit and "+"
        prompts.append(tok.encode_prompt(p.prompt) + first)
    outg = generate(model, prompts, SamplerConfig(max_new_tokens=96, greedy=True), eos_id=tok.stop_ids,
                    pad_id=tok.pad_id, vocab_size=tok.vocab_size)
    for p, pr, t, m in zip(task.rl, prompts, outg.tokens, outg.mask):
        text = tok.decode(pr[len(tok.encode_prompt(p.prompt)):] + t[m].tolist())
        c = inner_carries(*map(int, p.prompt.split()[1:]))
        forced[c][0] += 1; forced[c][1] += reward(text, p.answer)
    print("  greedy, forced into the column style: " + " | ".join(f"{c}: {s / n:.2f} (n={n})" for c, (n, s) in forced.items()))
