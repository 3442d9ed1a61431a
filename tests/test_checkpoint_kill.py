"""kill -9 at random moments: the last complete checkpoint always loads, and a killed and
resumed training run ends bit-identical to an uninterrupted one."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from minichord.checkpoint import checkpoint_exists, load_checkpoint
from minichord.config import ModelConfig
from minichord.model import Transformer

SMALL = dict(vocab_size=64, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64, max_seq_len=16)

# Saves forever, each step twice (the second save replaces the step directory `latest` names).
# The weights of step s are drawn from seed s; each finished save prints its step. Every rename
# waits 10 ms first (a slow disk), so that kills often land between the renames of one save.
SAVER = f"""
import os, sys, time, torch
os.replace = lambda src, dst, replace=os.replace: (time.sleep(0.01), replace(src, dst))[1]
from minichord.checkpoint import save_checkpoint
from minichord.config import ModelConfig
from minichord.model import Transformer
model = Transformer(ModelConfig(**{SMALL!r}))
optimizer = torch.optim.AdamW(model.parameters())
step = int(sys.argv[2])
while True:
    torch.manual_seed(step)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
            optimizer.state[p] = {{"step": torch.tensor(float(step)), "exp_avg": p * 2, "exp_avg_sq": p * p}}
    for again in (False, True):
        save_checkpoint(sys.argv[1], model, optimizer=optimizer, step=step, meta={{"again": again}}, keep=2)
        print(step, flush=True)
    step += 1
"""


# The children are forked from one launcher (sys.executable -c LAUNCHER) that has already imported
# torch and minichord (and torch._dynamo, which the first optimizer imports), so each killed child costs milliseconds to start, not seconds. The launcher
# runs no torch op before forking. Protocol: the test writes [code, output file, *argv] as a JSON
# line; the launcher forks a child that runs `code` with its stdout in the file and answers the
# child's pid; after the test's next line it waits for the child and answers its exit status.
LAUNCHER = """
import json, os, sys, traceback
import torch, torch._dynamo, minichord.checkpoint, minichord.trainer, minichord.tokenizer
while line := sys.stdin.readline():
    code, out, *argv = json.loads(line)
    pid = os.fork()
    if pid == 0:
        sys.stdout = sys.stderr = open(out, "w", buffering=1)
        sys.argv = ["child", *argv]
        try:
            exec(code, {"__name__": "__main__"})
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    print(pid, flush=True)
    sys.stdin.readline()  # the child stays unreaped (its pid not reusable) until the test says so
    print(os.waitpid(pid, 0)[1], flush=True)
"""


@pytest.fixture(scope="module")
def launch():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    count = iter(range(10**6))

    def start(code: str, tmp_path, *argv, kill_after: float | None = None, lines: int = 1,
              prefix: str = "") -> tuple[list[str], bool]:
        """Run `code` in a fresh child; with kill_after, SIGKILL it that many seconds after its
        output has `lines` lines starting with `prefix`. Returns its output lines and whether it
        was killed."""
        out = tmp_path / f"child-{next(count)}.out"
        launcher.stdin.write(json.dumps([code, str(out), *map(str, argv)]) + "\n")
        launcher.stdin.flush()
        pid = int(launcher.stdout.readline())
        if kill_after is not None:
            deadline = time.monotonic() + 30
            while (not out.exists() or sum(line.startswith(prefix) for line in out.read_text().splitlines()) < lines
                   ) and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)  # if the child ended already, it is an unreaped zombie
        launcher.stdin.write("reap\n")
        launcher.stdin.flush()
        status = int(launcher.stdout.readline())
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        lines = out.read_text().splitlines()
        assert killed or status == 0, "\n".join(lines)
        return lines, killed

    yield start
    launcher.stdin.close()
    launcher.wait(timeout=30)


def weights_of(step: int) -> list[torch.Tensor]:
    model = Transformer(ModelConfig(**SMALL))
    torch.manual_seed(step)
    return [torch.randn_like(p) for p in model.parameters()]


def test_kill_during_saves_always_leaves_the_last_complete_checkpoint(tmp_path, launch):
    rng, root, start = random.Random(1234), tmp_path / "ckpt", 0
    for _ in range(12):
        lines, killed = launch(SAVER, tmp_path, root, start, kill_after=rng.uniform(0.0, 0.3))
        assert killed  # mid-loop: the saver never ends by itself
        last = int(lines[-1])
        ckpt = load_checkpoint(root)
        assert ckpt.step in (last, last + 1)  # the last reported save, or one that finished unreported
        for loaded, expected in zip(ckpt.model.parameters(), weights_of(ckpt.step), strict=True):
            assert torch.equal(loaded, expected)
        state = ckpt.optimizer_state["state"]
        assert all(torch.equal(state[i]["exp_avg"], 2 * w) for i, w in enumerate(weights_of(ckpt.step)))
        assert len([p for p in root.iterdir() if p.name.startswith("step-")]) <= 3
        start = ckpt.step + 1  # the next child goes on in the same directory, with what this one left


TRAINER = """
import random, sys, torch
from minichord.config import ModelConfig
from minichord.methods import build_stages
from minichord.model import Transformer
from minichord.tasks import Demonstration, Problem, style_texts
from minichord.tokenizer import Tokenizer
from minichord.data import TrainData
from minichord.trainer import Trainer

TINY = ["n_test=8", "eval_every=1000", "save_every=2", "sampler.max_new_tokens=6", "prompts_per_step=4",
        "group_size=4", "experts_per_step=4", "steps=12", "lr=3e-3"]
tok = Tokenizer.train(style_texts(random.Random(0), 200), vocab_size=160)
prompts = [Problem(f"add {a} {a + 1}", str(2 * a + 1), "add") for a in range(10, 40)]
experts = [Demonstration(p.prompt, f"{p.answer[-1]}+0\\nanswer: {p.answer}", p.answer) for p in prompts[:8]]
data = TrainData(prompts=prompts, experts=experts, eval_splits={},
                 reward=lambda response, answer: float(response[:1].isdigit()))
torch.manual_seed(0)
model = Transformer(ModelConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                ffn_dim=64, max_seq_len=64))
trainer = Trainer(build_stages("chord-phi", overrides=TINY), model, tok, data, sys.argv[1],
                  log=lambda line: print(line, flush=True))
trainer.resume()
trainer.run()
print("done", flush=True)
"""


def test_killed_and_resumed_training_is_bit_identical_to_an_uninterrupted_run(tmp_path, launch):
    assert launch(TRAINER, tmp_path, tmp_path / "full")[0][-1] == "done"

    rng, cut, kills = random.Random(99), tmp_path / "cut", 0
    for _ in range(4):  # each run resumes from the checkpoint the killed one before it left
        start = load_checkpoint(cut / "checkpoint").step if checkpoint_exists(cut / "checkpoint") else 0
        # killed at a random step (of 12; at least 4 steps before the end) and a random moment in it
        lines, killed = launch(TRAINER, tmp_path, cut, kill_after=rng.uniform(0.0, 0.005),
                               lines=rng.randint(1, max(1, 8 - start)), prefix="step ")
        kills += killed
    assert kills >= 3 and checkpoint_exists(cut / "checkpoint")
    assert launch(TRAINER, tmp_path, cut)[0][-1] == "done"

    full, resumed = load_checkpoint(tmp_path / "full" / "checkpoint"), load_checkpoint(cut / "checkpoint")
    assert full.step == resumed.step == 12
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert (a - b).abs().max().item() == 0.0, name
    assert full.optimizer_state["param_groups"] == resumed.optimizer_state["param_groups"]
    a, b = full.optimizer_state["state"], resumed.optimizer_state["state"]
    assert a.keys() == b.keys() and all(a[i].keys() == b[i].keys() for i in a)
    assert all(torch.equal(a[i][k], b[i][k]) for i in a for k in a[i])
