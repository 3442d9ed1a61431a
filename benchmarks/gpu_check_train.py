"""Section 5 of the GPU check (benchmarks/gpu_check.py): CHORD-phi steps of a randomly initialised model
(Qwen2.5-0.5B-shaped on the GPU, tiny in --dry-run) through the real Trainer, with one kernel backend:

    sampled tokens/s = sum_steps (mean response length x rollouts) / sum_steps time_sample
    trained tokens/s = sum_steps loss tokens / sum_steps time_train       (forward + backward + step)
    peak memory      = torch.cuda.max_memory_allocated over the timed steps (weights and AdamW state included)

One untimed warm-up step first (Triton compiles, the allocator settles). The trainer's phase timers end on a
read-back to the host (`.tolist()`, `.item()`), so each phase's time includes its GPU work.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from minichord.config import ModelConfig
from minichord.methods import build_stages
from minichord.model import Transformer
from minichord.tasks import Demonstration, Problem
from minichord.data import TrainData
from minichord.trainer import Trainer


class SyntheticTokenizer:
    """Character ids for the training benchmark: vocab as large as the model's, id 0 pad, 1 bos, 2 eos (a random
    model almost never samples it, so rollouts run to max_new_tokens)."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        return [3 + (ord(c) - 97) for c in text]

    def encode_prompt(self, prompt: str) -> list[int]:
        return [self.bos_id, *self.encode(prompt)]

    @property
    def stop_ids(self) -> list[int]:
        return [self.eos_id]

    def encode_example(self, prompt: str, response: str) -> tuple[list[int], list[bool]]:
        prompt_ids, response_ids = self.encode_prompt(prompt), [*self.encode(response), self.eos_id]
        return prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids)

    def decode(self, ids, skip_special: bool = True) -> str:
        return "".join(chr(97 + (int(i) - 3) % 26) for i in ids if int(i) > 2)


def training(device: torch.device, s: dict, backend: str) -> dict:
    """s["steps"] timed CHORD-phi steps after one warm-up step, on a fresh random model, with one backend."""
    os.environ["MINICHORD_KERNELS"] = backend
    rng = random.Random(0)
    text = lambda k: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(k))  # noqa: E731
    prompts = [Problem(text(s["prompt_len"] - 1), "a", "synthetic") for _ in range(4 * s["prompts"])]
    experts = [Demonstration(text(s["prompt_len"] - 1), text(s["expert_len"] - 1)) for _ in range(2 * s["experts"])]
    reward = lambda response, answer: float(response.count("a") % 2)  # noqa: E731  (varies within a group)
    data = TrainData(prompts=prompts, experts=experts, eval_splits={}, reward=reward)
    steps = s["steps"] + 1
    stages = build_stages("chord-phi", overrides=[
        f"steps={steps}", f"prompts_per_step={s['prompts']}", f"group_size={s['group']}",
        f"experts_per_step={s['experts']}", f"sampler.max_new_tokens={s['new_tokens']}", "lr=1e-6",
        f"device={device.type}", "dtype=bf16", "activation_checkpointing=true", "micro_batch_seqs=16",
        "eval_every=100000", "save_every=100000",
        *([] if s.get("sampler_compile", "default") == "default" else [f"sampler.compile={s['sampler_compile']}"])])
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(ModelConfig(**s["model"]))
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(stages, model, SyntheticTokenizer(model.cfg.vocab_size), data, Path(tmp), log=lines.append)
        print(lines[0], file=sys.stderr, flush=True)  # "loss backend: ..."
        trainer.train_step(0)  # warm-up: Triton compiles, the allocator settles
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        rows = [trainer.train_step(step) for step in range(1, steps)]
    sampled = sum(r["response_length"] * r["rollouts"] for r in rows)
    result = dict(backend_line=lines[0], params=model.num_params(),
                  sample_tok_s=sampled / sum(r["time_sample"] for r in rows),
                  train_tok_s=sum(r["tokens"] for r in rows) / sum(r["time_train"] for r in rows),
                  tokens_per_step=statistics.mean(r["tokens"] for r in rows),
                  response_length=statistics.mean(r["response_length"] for r in rows),
                  peak_gb=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None)
    del trainer, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result
