"""The training loop: rollout -> score -> advantages -> one token batch -> fused loss -> step.

    for step in range(steps):
        mu = mu_schedule(step)                                   # global coefficient
        rollouts = sample(B prompts x G)  ;  R = reward(rollouts)
        A = group_advantages(R)                                  # per sequence, broadcast to tokens
        batch = pack(rollouts (A, old logp) + E expert demonstrations)
        L = sum_t coef_t * l_t  (coef: (1-mu)/N_on on rollout tokens, mu/N_exp on expert ones)
        L.backward(); clip_grad_norm(1.0); optimizer.step(); check the weights are still finite

L and its gradient may be accumulated over micro-batches of sequences (micro_batch_seqs), coef always over the
whole batch, so the sum is the full batch's (minichord/accumulate.py). device / dtype (minichord/device.py): the
model, KV cache, generators and batches live on `device`; bf16 is autocast over fp32 weights.

Every random choice of step s (prompts, expert examples, sampling) comes from generators seeded with
(seed, s), so a resumed run repeats an uninterrupted one exactly. Metrics go to `metrics.jsonl` (one line
per step) and `eval.jsonl`; checkpoints to `checkpoint/`. Ctrl-C or SIGTERM finishes the step, saves and
stops with TrainingInterrupted; a diverged update stops with TrainingError before anything is saved.

The departures from the paper (arXiv 2508.11408) and its official code, the one list:
- Scale: ~1M-parameter toy model, lr 1e-4, B=8 x G=8 + E=16 (paper: Qwen2.5-7B-Instruct, lr 1e-6, 32 x 8 + 64).
- Normalisation: each term is one token-mean over the whole batch (paper-era code); the official
  code averages tokens per micro-batch and weights micro-batches by their share of sequences.
  `convention = "official"` switches to the official code's choices (minichord/conventions.py).
- `dual_clip` (c = 3) off by default (official: always on); `log_ratio_clamp` +-20 on, as in current official code.
- A group of one gets A = 0 (official: R / (1 + 1e-6), `group_advantages(singleton="official")`).
- mu's warm-up and decay are shares of the run (official: W=0, D=200 steps).
- Reward: 1 for an exactly matching final answer, else 0; no format reward. With a Hugging Face model the
  math reward (minichord/math_reward.py): the answer in the required format (\\boxed{}, ####, "answer:").
- A Hugging Face model whose embedding has more rows than its tokenizer (Qwen2.5: 151,936 vs 151,665) is
  sampled over the tokenizer's ids but trained over all rows (their probabilities are ~0, not exactly 0).
- Expert examples are drawn per step, without replacement within a step, with it across steps (not epochs).
- Old log-probs are the sampler's with one update per batch; recomputed with several.
- LUFFY (minichord/luffy.py): expert trace = reward 1 in its group; A = R - mean(R); joint token-mean; no clip.
- SFT->GRPO splits the steps in half; the GRPO stage starts with a fresh optimizer.
- AdamW, betas (0.9, 0.95), no weight decay, gradient clipping at 1.0.
- The toy's expert is partly on-policy by construction: its base saw the expert's format cleanly on 1-2 digit
  sums and sloppily on 3-digit ones (60 % of the column digits wrong; minichord/tasks/corpus.py), so the
  expert's tokens have a median p of ~0.38 (`minichord pretrain`; clean format everywhere: 0.999, never seen:
  ~2e-6); the paper's expert (another model's long reasoning) is off-policy in content as well as noise.
- The toy's room for RL is partly a format: its base answers big sums in a sentence the reward marks wrong
  (minichord/tasks/toy.py, `in_a_sentence`); in the paper it is the policy's own mistakes on hard problems.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import signal
import time
from pathlib import Path
from typing import Callable

import torch

from minichord import accumulate, losses, luffy, ops
from minichord.batch import Sequence, TokenBatch, pack, split_example
from minichord.checkpoint import CheckpointError, checkpoint_exists, load_checkpoint, restore_optimizer, save_checkpoint
from minichord.config import TrainConfig
from minichord.device import autocast, describe, resolve_device
from minichord.methods import Stage
from minichord.checkpoint import LogError, cut_log, progress_line
from minichord.sampler import generate
from minichord.data import TrainData


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss or weights); the last good checkpoint is kept."""


class TrainingInterrupted(TrainingError):
    """Stopped by Ctrl-C or SIGTERM after saving a checkpoint; rerunning the command resumes."""


def step_rng(seed: int, step: int, stream: int, device="cpu") -> tuple[random.Random, torch.Generator]:
    """Independent, reproducible generators for (seed, step, stream); the torch one on `device`."""
    key = (seed * 1_000_003 + step) * 7 + stream
    return random.Random(key), torch.Generator(device=device).manual_seed(key)


class Trainer:
    def __init__(self, stages: list[Stage], model, tokenizer, data: TrainData, out_dir: Path,
                 log: Callable[[str], None] = print):
        self.stages, self.model, self.tok, self.data = stages, model, tokenizer, data
        self.method_name = "-".join(s.method.name for s in stages)  # sft-grpo: "sft" then "grpo"
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.cfg = stages[0].cfg
        self.steps = stages[-1].end
        self.step = 0
        self.device = resolve_device(self.cfg.device)  # model, KV cache, generators, batches, evaluation
        model.to(self.device).activation_checkpointing = self.cfg.activation_checkpointing
        self.log(describe(self.device, self.cfg.dtype))
        self.optimizer = self._new_optimizer(stages[0])
        self._stop_signal: str | None = None
        self.evals: list[dict] = []  # evaluations made by this process, in order (the demo reads them)
        # KL penalty (off by default): a frozen copy of the initial model gives ref log-probs
        self.ref_model = copy.deepcopy(model).eval().requires_grad_(False) \
            if any(s.cfg.kl_coef > 0 for s in stages) else None
        self.expert_seqs = [split_example(*tokenizer.encode_example(e.prompt, e.response)) for e in data.experts]

    # ----------------------------------------------------------------- set-up / resume
    def _new_optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=stage.cfg.lr, betas=(0.9, 0.95),
                                 weight_decay=stage.cfg.weight_decay)

    def stage_at(self, step: int) -> Stage:
        return next(s for s in self.stages if s.start <= step < s.end)

    def resume(self) -> bool:
        """Continue from `out/checkpoint` if present: weights, optimizer, step; logs are cut
        back to that step so the files read as one uninterrupted run."""
        path = self.out / "checkpoint"
        if not checkpoint_exists(path):
            return False
        ckpt = load_checkpoint(path, expect_config=self.model.cfg)
        if ckpt.tokenizer is not None and ckpt.tokenizer.files() != self.tok.files():  # a chat template too
            raise CheckpointError(f"{path}: its tokenizer differs from the one of this run's initial model; "
                                  f"use --no-resume or another --out")
        self.model.load_state_dict(ckpt.model.state_dict())
        self.step = ckpt.step
        if self.step < self.steps:
            stage = self.stage_at(self.step)
            self.optimizer = self._new_optimizer(stage)
            if self.step != stage.start or stage is self.stages[0]:  # a new stage starts afresh
                restore_optimizer(self.optimizer, ckpt)
                for group in self.optimizer.param_groups:  # this run's settings win over the saved ones
                    group.update(lr=stage.cfg.lr, weight_decay=stage.cfg.weight_decay)
        for name in ("metrics.jsonl", "eval.jsonl"):
            try:
                cut_log(self.out / name, self.step, keep_step=self.step if name == "eval.jsonl" else None, log=self.log)
            except LogError as e:
                raise TrainingError(str(e)) from None
        self.log(f"resumed from {path} at step {self.step}")
        return True

    # ----------------------------------------------------------------- one step
    def _rollouts(self, stage: Stage, step: int) -> tuple[list[Sequence], dict]:
        cfg, is_luffy = stage.cfg, stage.method.luffy
        rng, gen = step_rng(cfg.seed, step, 0, self.device)
        pool = self.data.experts if is_luffy else self.data.prompts  # LUFFY groups need an expert trace
        picked = rng.sample(range(len(pool)), min(cfg.prompts_per_step, len(pool)))
        n_on = cfg.group_size - 1 if is_luffy else cfg.group_size
        prompt_ids = [ids for i in picked for ids in [self.tok.encode_prompt(pool[i].prompt)] * n_on]  # rendered once
        t0 = time.perf_counter()
        self.model.eval()
        with autocast(self.device, cfg.dtype):
            out = generate(self.model, prompt_ids, cfg.sampler, eos_id=self.tok.stop_ids,
                           pad_id=self.tok.pad_id, generator=gen, vocab_size=self.tok.vocab_size)
        t1 = time.perf_counter()
        responses = [out.tokens[i][out.mask[i]].tolist() for i in range(len(prompt_ids))]
        old_logp = [out.logprobs[i][out.mask[i]].tolist() for i in range(len(prompt_ids))]
        rewards = torch.tensor([self.data.reward(self.tok.decode(r), pool[picked[i // n_on]].answer)
                                for i, r in enumerate(responses)]).view(len(picked), n_on)  # [B, n_on]
        seqs = []
        if is_luffy:  # the expert trace joins its group as its last member
            adv = luffy.mixed_group_advantages(rewards)  # [B, G]
            seqs += [Sequence(*self.expert_seqs[i], True, float(adv[b, -1])) for b, i in enumerate(picked)]
        else:
            adv = stage.convention.group_advantages(rewards)  # [B, G]; a group of one per the convention
        for k, r in enumerate(responses):
            b, j = divmod(k, n_on)
            seqs.append(Sequence(prompt_ids[k], r, False, float(adv[b, j]), old_logp[k]))
        t2 = time.perf_counter()
        return seqs, {
            "reward": rewards.mean().item(), "accuracy": (rewards == 1).float().mean().item(),
            "zero_variance_groups": losses.zero_variance_fraction(adv),  # equal rewards give A = 0 exactly
            "response_length": out.mask.sum(1).float().mean().item(), "truncated": (~out.finished).float().mean().item(),
            "time_sample": t1 - t0, "time_score": t2 - t1,
        }

    def _expert_batch(self, cfg: TrainConfig, step: int) -> list[Sequence]:
        rng, _ = step_rng(cfg.seed, step, 1)
        picked = rng.sample(range(len(self.expert_seqs)), min(cfg.experts_per_step, len(self.expert_seqs)))
        return [Sequence(*self.expert_seqs[i], is_expert=True) for i in picked]

    def _logp(self, batch: TokenBatch, cfg: TrainConfig, temperature: float, model=None) -> torch.Tensor:
        return accumulate.batch_logprobs(model or self.model, batch, temperature, cfg.micro_batch_seqs, cfg.dtype)

    def _diverged(self, step: int, why: str) -> TrainingError:
        return TrainingError(f"step {step}: the update diverged: {why} (lr={self.stage_at(step).cfg.lr}); nothing "
                             f"saved; the last good checkpoint, if any, is in {self.out / 'checkpoint'}")

    def _update(self, stage: Stage, batch: TokenBatch, mu: float | None, step: int) -> dict:
        """ppo_epochs x minibatches optimizer steps on one batch (old log-probs recomputed first if more than
        one, so ratios and clipping are real); weights and logits checked once, at the end (before: the loss)."""
        cfg, spec, T = stage.cfg, stage.loss_spec(), stage.cfg.sampler.temperature
        self.model.train()
        if cfg.ppo_epochs * cfg.minibatches > 1:
            batch.old_logp = torch.where(batch.is_expert, 0.0, self._logp(batch, cfg, T))
        ref_logp = self._logp(batch, cfg, T, self.ref_model) if cfg.kl_coef > 0 else None  # [N]
        _, gen = step_rng(cfg.seed, step, 2)
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            for seq_ids in torch.randperm(batch.ids.shape[0], generator=gen).chunk(cfg.minibatches):
                seq_ids = seq_ids.sort().values.to(self.device)
                mb = batch.select(seq_ids) if cfg.minibatches > 1 else batch
                mb_ref = None if ref_logp is None else ref_logp[torch.isin(batch.rows, seq_ids)]  # [N_mb]
                # convention "official" weights per micro-batch (accumulate.micro_batches: sequences in order)
                micro_ids = mb.rows // cfg.micro_batch_seqs if cfg.micro_batch_seqs else None  # [N_mb]
                coef = luffy.coefficients(mb.is_expert) if stage.method.luffy \
                    else stage.convention.coefficients(mb.is_expert, mb.rows, micro_ids, mu)  # [N_mb], whole mini-batch
                self.optimizer.zero_grad(set_to_none=True)
                out = accumulate.backward_loss(self.model, mb, coef, spec, T, cfg.micro_batch_seqs, cfg.dtype,
                                               ref_logp=mb_ref)  # backward per micro-batch, grads summed
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                if not (torch.isfinite(out.loss) and torch.isfinite(grad_norm)):
                    raise self._diverged(step, f"non-finite loss {out.loss.item()} or gradient norm "
                                               f"{grad_norm.item()}, stopped before the update")
                try:
                    self.optimizer.step()
                except RuntimeError as e:  # e.g. AdamW's "value cannot be converted to type float without overflow"
                    raise self._diverged(step, str(e)) from None
                on, ex = ~mb.is_expert, mb.is_expert
                p_exp = out.logp[ex].exp()  # [N_exp]
                for k, v in {"loss": out.loss.item(), "grad_norm": grad_norm.item(),
                             "entropy": out.entropy[on].mean().item() if on.any() else math.nan,
                             "clip_fraction": out.clipped[on].float().mean().item() if on.any() else 0.0,
                             "expert_p": p_exp.mean().item() if ex.any() else math.nan,
                             "expert_phi": (p_exp * (1 - p_exp)).mean().item() if ex.any() else math.nan,
                             "expert_nll": -out.logp[ex].mean().item() if ex.any() else math.nan}.items():
                    stats.setdefault(k, []).append(v)
        finite = torch.stack([p.isfinite().all() for p in self.model.parameters()]).all()  # once a step, one sync
        if not (finite and self._logp(batch.select(torch.tensor([0])), cfg, 1.0).isfinite().all()):
            raise self._diverged(step, "it made the weights or logits non-finite")
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def train_step(self, step: int) -> dict:
        stage = self.stage_at(step)
        mu = None if stage.method.luffy else stage.mu(step)  # LUFFY has no mu: one joint token-mean
        seqs, metrics = self._rollouts(stage, step) if stage.method.uses_rollouts else ([], {})
        if stage.cfg.experts_per_step > 0 and mu:
            seqs += self._expert_batch(stage.cfg, step)
        t0 = time.perf_counter()
        batch = pack(seqs, self.tok.pad_id, self.model.cfg.max_seq_len).to(self.device)
        return {"step": step, "method": stage.method.name, "mu": mu, "backend": ops.kernel_backend(self.device), **metrics,
                "rollouts": sum(not s.is_expert for s in seqs), "experts": sum(s.is_expert for s in seqs),
                **self._update(stage, batch, mu, step), "tokens": batch.num_tokens,
                "time_train": time.perf_counter() - t0}

    # ----------------------------------------------------------------- the loop
    def evaluate(self, step: int) -> dict:
        from minichord.evaluate import evaluate_splits
        with autocast(self.device, self.cfg.dtype):
            result = {"step": step, **evaluate_splits(self.model, self.tok, self.data.eval_splits, reward_fn=self.data.reward,
                                                      lenient_fn=self.data.lenient,
                                                      max_new_tokens=self.cfg.sampler.max_new_tokens)}
        self.evals.append(result)
        with open(self.out / "eval.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        return result

    def save(self) -> None:
        save_checkpoint(self.out / "checkpoint", self.model, tokenizer=self.tok, optimizer=self.optimizer,
                        step=self.step, meta={"method": self.method_name, "config": dataclasses.asdict(self.cfg)})

    def request_stop(self, reason: str) -> None:
        """Finish the current step, save, then stop (what Ctrl-C and SIGTERM do)."""
        self._stop_signal = reason
        self.log(f"\n{reason}: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort)")

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request_stop(signal.Signals(signum).name)

    def run(self) -> dict:
        """Train until `steps`. On Ctrl-C / SIGTERM: finish the step, save, raise TrainingInterrupted."""
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        last_eval: dict = {}
        try:
            if self.step == 0:  # a fresh run (no checkpoint resumed): logs start over too
                for name in ("metrics.jsonl", "eval.jsonl"):
                    (self.out / name).unlink(missing_ok=True)
                if self.data.eval_splits:
                    last_eval = self.evaluate(0)
            t_start, first = time.perf_counter(), self.step
            while self.step < self.steps and self._stop_signal is None:
                if self.step > first and self.step == self.stage_at(self.step).start:
                    self.optimizer = self._new_optimizer(self.stage_at(self.step))  # a new stage
                metrics = self.train_step(self.step)
                self.step += 1
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                eta = (time.perf_counter() - t_start) / (self.step - first) * (self.steps - self.step)
                self.log(progress_line(metrics, self.steps, eta))
                if self.data.eval_splits and (self.step % self.cfg.eval_every == 0 or self.step == self.steps):
                    last_eval = self.evaluate(self.step)
                    self.log("  eval " + " | ".join(f"{k} {v['accuracy']:.3f}" + (f" (lenient {v['lenient_accuracy']:.3f})"
                                                    if "lenient_accuracy" in v else "") for k, v in last_eval.items()
                                                    if isinstance(v, dict)))
                if self.step % self.cfg.save_every == 0 or self.step == self.steps or self._stop_signal:
                    self.save()
        finally:
            for sig, previous in handlers.items():
                signal.signal(sig, previous)
        if self.step < self.steps:
            raise TrainingInterrupted(f"stopped by {self._stop_signal} after step {self.step}/{self.steps}; "
                                      f"checkpoint saved in {self.out / 'checkpoint'}; rerun the command to resume")
        return last_eval
