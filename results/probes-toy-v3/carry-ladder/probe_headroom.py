"""Probe: how much greedy accuracy could RL gain by sharpening alone? (criterion 3)

    python results/probes-toy-v3/carry-ladder/probe_headroom.py CKPT [CKPT ...]

On 128 RL prompts (split seed 0): greedy correctness and the T=1 success rate over 16 samples per prompt.
"Amplifiable" = greedy wrong but the right answer sampled >= 25 % of the time: prompts where pushing up
what the model already sometimes does flips the greedy answer. Split by inner carries.
"""
import os, sys

import torch

torch.set_num_threads(int(os.environ.get("PROBE_THREADS", "1")))
from minichord.checkpoint import load_checkpoint
from minichord.config import SamplerConfig
from minichord.sampler import generate
from minichord.tasks import make_splits, reward
from minichord.tasks.toy import inner_carries

K = 16
task = make_splits(0, n_rl=128, n_expert=0, n_test=0)
carries = [inner_carries(*map(int, p.prompt.split()[1:])) for p in task.rl]
for path in sys.argv[1:]:
    ck = load_checkpoint(path)
    model, tok = ck.model, ck.tokenizer
    prompts = [tok.encode_prompt(p.prompt) for p in task.rl]
    kw = dict(eos_id=tok.stop_ids, pad_id=tok.pad_id, vocab_size=tok.vocab_size)
    greedy = generate(model, prompts, SamplerConfig(max_new_tokens=96, greedy=True), **kw)
    g_ok = [reward(tok.decode(t[m]), p.answer) for p, t, m in zip(task.rl, greedy.tokens, greedy.mask)]
    out = generate(model, [x for x in prompts for _ in range(K)], SamplerConfig(max_new_tokens=96), **kw,
                   generator=torch.Generator().manual_seed(0))
    r = torch.tensor([reward(tok.decode(t[m]), task.rl[i // K].answer)
                      for i, (t, m) in enumerate(zip(out.tokens, out.mask))]).view(-1, K).mean(1)
    print(path)
    for c in (None, 0, 1, 2):
        idx = [i for i in range(len(task.rl)) if c is None or carries[i] == c]
        amp = sum(1 for i in idx if g_ok[i] == 0 and r[i] >= 0.25) / len(idx)
        print(f"  {'all' if c is None else f'{c} inner carries':16s} n={len(idx):3d} | greedy {sum(g_ok[i] for i in idx) / len(idx):.3f}"
              f" | T=1 {r[idx].mean():.3f} | amplifiable (greedy wrong, T=1 >= 0.25) {amp:.3f}"
              f" | greedy right, T=1 < 0.5 {sum(1 for i in idx if g_ok[i] and r[i] < 0.5) / len(idx):.3f}")
