"""minichord against the tools people would use instead: transformers' `generate`, a
transformers training step, TRL's GRPO step, with identical weights and shapes.

    pip install -e ".[bench]"          # transformers and trl: this benchmark only
    python benchmarks/bench_vs_hf.py                       # all four comparisons, tiny Qwen2
    python benchmarks/bench_vs_hf.py --only gen256 --compile

The tiny Qwen2 (vocab 64, hidden 128, 4 layers, 4 heads / 2 kv heads, ffn 512) gets random
weights in minichord, is written with minichord.hf.export_hf and loaded by transformers (the
check at start: logits equal to 1e-4, greedy tokens equal). Within a comparison the contenders
run alternately, --repeats times each after one warm-up, in one process: the table gives the
median [min-max] and minichord's speed-up = peer time / minichord time (median, and the range of
the per-round ratios). Peak memory: each contender in its own fresh process, the peak resident
memory during one run (after a warm-up run) above the resident memory before it. CPU only.

  gen256 / gen64  greedy generate, batch 256 x (10 + 64 new) / batch 64 x (10 + 32 new), KV cache,
                  eos disabled so every row makes every token (HF: its default dynamic cache, sdpa)
  gen05b          the same at Qwen2.5-0.5B's shape, random weights, --gen05b BATCHxNEW (not in the default
                  list: 64 x 256 takes minutes per run on a CPU)
  train           64 x 48 tokens: forward, next-token cross-entropy, backward, AdamW step
  grpo            8 prompts x 8 rollouts (<= 32 new tokens, T = 1), reward, group advantages,
                  PPO-clip token loss, backward, AdamW. TRL: GRPOTrainer's optimizer step (timed from
                  its step-begin to step-end callbacks: generation, reward, loss, backward, AdamW) with
                  its defaults (beta 0: no reference model, one update per generation, gradient
                  checkpointing on), and the same without gradient checkpointing.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from minichord.config import ModelConfig, SamplerConfig
from minichord.hf import export_hf
from minichord.config import LossConfig
from minichord.losses import group_advantages, ppo_clip_loss
from minichord.model import Transformer
from minichord.lm_head import token_logprobs
from minichord.sampler import generate

TINY = dict(vocab_size=64, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_dim=512, max_seq_len=128)
QWEN_05B = dict(vocab_size=151936, dim=896, n_layers=24, n_heads=14, n_kv_heads=2, ffn_dim=4864, max_seq_len=1024,
                rope_theta=1e6)  # Qwen2.5-0.5B's shape (random weights at minichord's init)
PAD, EOS, PROMPT_LEN = 0, 1, 10


def build_pair(seed: int, tmp: str, shape: dict = TINY):
    """(minichord model, transformers model) with the same random weights."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    ours = Transformer(ModelConfig(**shape))
    with torch.no_grad():  # the tiny model: larger than the init, varied and peaked next-token distributions
        for p in ours.parameters() if shape is TINY else ():
            p.normal_(0.0, 0.1) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    hf = AutoModelForCausalLM.from_pretrained(export_hf(ours, Path(tmp) / "hf"), attn_implementation="sdpa")
    hf.generation_config.eos_token_id = None  # never stop early: every row makes max_new_tokens
    hf.generation_config.pad_token_id = PAD
    return ours.eval(), hf.eval()


def prompts_of(batch: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, TINY["vocab_size"], (batch, PROMPT_LEN), generator=g)  # no pad, no eos: valid at any shape


# ---- the contenders: each returns a function that runs once ---------------------------------------

def checked_pair(seed: int, tmp: str, shape: dict = TINY):
    """build_pair, then the check every comparison starts from: logits equal to 1e-4 on 4 prompts (CPU, fp32).
    Returns (ours, hf, max |logit diff|)."""
    ours, hf = build_pair(seed, tmp, shape)
    ids = prompts_of(4)
    with torch.no_grad():
        diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff <= 1e-4, f"minichord and transformers disagree: max |logit diff| {diff}"
    return ours, hf, diff


def gen_runs(ours, hf, batch: int, new: int, compile_: bool, check: bool = True, device: str | torch.device = "cpu"):
    """Greedy generate by each contender (the models already on `device`); check: tokens equal, compile time."""
    ids = prompts_of(batch).to(device)

    def ours_run(compile_=False):
        return generate(ours, ids.tolist(), SamplerConfig(max_new_tokens=new, greedy=True, compile=compile_),
                        eos_id=-1, pad_id=PAD).tokens

    def hf_run():
        with torch.no_grad():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)
        return out[:, PROMPT_LEN:]

    runs = {"transformers": hf_run, "minichord": ours_run}
    if compile_ and not check:
        runs["minichord compiled"] = lambda: ours_run(True)
    if not check:
        return runs
    print(f"  greedy tokens equal to transformers': {torch.equal(ours_run(), hf_run())}")
    if compile_:
        start = time.perf_counter()
        ours_run(True)
        print(f"  minichord compiled: first call (compiles) {time.perf_counter() - start:.1f} s; "
              f"tokens equal to eager: {torch.equal(ours_run(True), ours_run())}")
        runs["minichord compiled"] = lambda: ours_run(True)
    return runs


def train_runs(ours, hf, batch: int = 64, T: int = 48):
    ids = torch.randint(0, TINY["vocab_size"], (batch, T), generator=torch.Generator().manual_seed(2))
    ours.train(), hf.train()
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (ours, hf)}

    def step(model, logits_of):
        logits = logits_of(ids)  # [B, T, V]
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        opts[model].step()
        opts[model].zero_grad(set_to_none=True)

    return {"transformers": lambda: step(hf, lambda x: hf(input_ids=x).logits),
            "minichord": lambda: step(ours, ours)}


def reward_of(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A cheap verifiable reward per rollout: the share of its tokens that are even ids."""
    return ((tokens % 2 == 0) & mask).sum(-1) / mask.sum(-1).clamp(min=1)


def minichord_grpo_step(model, opt, prompts: torch.Tensor, G: int, new: int, gen: torch.Generator):
    """One GRPO step with minichord's pieces: sample, reward, advantages, PPO-clip, AdamW."""
    model.eval()
    roll = generate(model, prompts.repeat_interleave(G, dim=0).tolist(), SamplerConfig(max_new_tokens=new),
                    eos_id=EOS, pad_id=PAD, generator=gen)  # [B*G, T_new]
    adv = group_advantages(reward_of(roll.tokens, roll.mask).view(-1, G).float()).view(-1)  # [B*G]
    model.train()
    seq = torch.cat([prompts.repeat_interleave(G, dim=0), roll.tokens], dim=1)  # [B*G, P + T_new]
    seq_mask = torch.cat([torch.ones_like(prompts.repeat_interleave(G, dim=0), dtype=torch.bool), roll.mask], 1)
    logits = model(seq, attention_mask=seq_mask)[:, prompts.shape[1] - 1:-1]  # predicts each new token
    logp = token_logprobs(logits[roll.mask], roll.tokens[roll.mask])  # [N] generated tokens
    adv_tok = adv[:, None].expand_as(roll.tokens)[roll.mask]  # [N]
    loss, _ = ppo_clip_loss(logp, roll.logprobs[roll.mask], adv_tok, LossConfig())
    loss.mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def grpo_runs(ours, hf, tmp: str, n_prompts: int = 8, G: int = 8, new: int = 32):
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    words = Tokenizer(models.WordLevel({f"t{i}": i for i in range(TINY["vocab_size"])}, unk_token="t2"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", eos_token="t1", unk_token="t2")
    prompts = prompts_of(n_prompts, seed=3)
    data = Dataset.from_dict({"prompt": [" ".join(f"t{i}" for i in p) for p in prompts.tolist()] * 64})

    def trl_reward(completions, completion_ids, **kwargs):
        return [float(sum(t % 2 == 0 for t in ids) / max(1, len(ids))) for ids in completion_ids]

    class StepTimer(TrainerCallback):
        seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)

    hf.generation_config.eos_token_id = EOS

    def trl_run(checkpointing: bool):
        """TRL's GRPO defaults (beta 0, loss 'dapo', one update per generation) at this batch; its own copy
        of the weights, since gradient checkpointing changes the model it trains."""
        timer = StepTimer()
        cfg = GRPOConfig(output_dir=str(Path(tmp) / f"trl{checkpointing}"), per_device_train_batch_size=n_prompts * G,
                         num_generations=G, max_completion_length=new, learning_rate=1e-5, max_steps=1,
                         gradient_checkpointing=checkpointing, logging_steps=10**6, save_strategy="no", report_to=[],
                         use_cpu=True, bf16=False, seed=0, disable_tqdm=True)
        trainer = GRPOTrainer(model=copy.deepcopy(hf), reward_funcs=trl_reward, args=cfg, train_dataset=data,
                              processing_class=tok, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)

        def run():
            trainer.train()  # one step (max_steps=1); the timer keeps the step's own time, not the setup's
            return timer.seconds[-1]
        return run

    opt = torch.optim.AdamW(ours.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)
    return {"TRL default (gradient checkpointing)": trl_run(True), "TRL, no checkpointing": trl_run(False),
            "minichord": lambda: minichord_grpo_step(ours, opt, prompts, G, new, gen)}


def runs_for(name: str, args, tmp: str, check: bool = True):
    ours, hf, _ = checked_pair(args.seed, tmp, QWEN_05B if name == "gen05b" else TINY)
    if name == "gen256":
        return gen_runs(ours, hf, 256, 64, args.compile, check)
    if name == "gen64":
        return gen_runs(ours, hf, 64, 32, args.compile, check)
    if name == "gen05b":
        batch, new = (int(n) for n in args.gen05b.split("x"))
        return gen_runs(ours, hf, batch, new, args.compile, check)
    if name == "train":
        return train_runs(ours, hf)
    return grpo_runs(ours, hf, tmp)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb(name: str, who: str, args) -> float:
    """Runs in a fresh process: the peak resident memory (MiB) during the contender's second run
    above the resident memory just before it, sampled every millisecond by a thread (max RSS
    never falls, so it cannot tell one run's peak after imports and loading)."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run = runs_for(name, args, tmp, check=False)[who]
        run()  # warm-up: the compiler, the trainer's first step, the allocator's caches
        base, peak, done = rss_mb(), [0.0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], rss_mb())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        run()
        done.set()
        sampler.join()
        return max(0.0, peak[0] - base)


def print_profiles(runs: dict, top: int) -> None:
    """torch.profiler over one run of each contender: the `top` ops by self CPU time, with their share."""
    from torch.profiler import profile

    for who, run in runs.items():
        with profile() as prof:
            run()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        print(f"  profile, {who}: {total / 1e3:.0f} ms self CPU in all; top ops (share, calls, ms):")
        for e in events[:top]:
            print(f"    {e.key[:60]:60s} {e.self_cpu_time_total / total:6.1%} {e.count:6d} {e.self_cpu_time_total / 1e3:8.1f}")


def compare(name: str, args) -> list[str]:
    print(f"{name}:")
    with tempfile.TemporaryDirectory() as tmp:
        runs = runs_for(name, args, tmp)
        seconds = {who: [] for who in runs}
        for who, run in runs.items():  # warm-up
            run()
        for _ in range(args.repeats):  # alternating rounds
            for who, run in runs.items():
                start = time.perf_counter()
                out = run()
                seconds[who].append(out if isinstance(out, float) else time.perf_counter() - start)
        if args.profile:
            print_profiles(runs, args.profile)
    peers = [who for who in runs if not who.startswith("minichord")]
    mems = {}
    if not args.no_memory:
        with mp.get_context("spawn").Pool(1) as pool:
            mems = {who: pool.apply(peak_mb, (name, who, args)) for who in runs}
    rows = []
    for who, s in seconds.items():
        speed = "" if who in peers else "; ".join(
            f"{statistics.median(seconds[peer]) / statistics.median(s):.2f}x "
            f"[{min(p / m for p, m in zip(seconds[peer], s)):.2f}-{max(p / m for p, m in zip(seconds[peer], s)):.2f}]"
            + (f" vs {peer}" if len(peers) > 1 else "") for peer in peers)
        mem = f"{mems[who]:.0f}" if who in mems else "-"
        rows.append(f"| {name} | {who} | {statistics.median(s) * 1e3:.0f} [{min(s) * 1e3:.0f}-{max(s) * 1e3:.0f}] "
                    f"| {speed} | {mem} |")
        print("  " + rows[-1])
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="gen256,gen64,train,grpo", help="comma-separated comparisons")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per comparison (alternating)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads, the same for every contender")
    p.add_argument("--compile", action="store_true", help="also time minichord with SamplerConfig.compile=True")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after the timed rounds, profile one run of each contender and print its top N ops")
    p.add_argument("--gen05b", default="64x256", metavar="BATCHxNEW",
                   help="the shape of --only gen05b: generate at Qwen2.5-0.5B's shape (random weights)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.compile:  # a fresh inductor cache: the first compiled call below pays the whole compile (cold)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench_vs_hf_inductor_"))
    torch.set_num_threads(args.threads)
    rows = [row for name in args.only.split(",") for row in compare(name, args)]
    print(f"\ntorch {torch.__version__}, {args.threads} thread(s)\n")
    print("| comparison | who | ms per run, median [range] | minichord speed-up vs peer, median [per-round range] "
          "| peak RSS above start MiB |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\ncommand: python benchmarks/bench_vs_hf.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())


if __name__ == "__main__":
    main()
