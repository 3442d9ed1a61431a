"""The training loop: rollout -> score -> advantages -> one token batch -> fused loss -> step.

    for step in range(steps):
        mu = mu_schedule(step)                                   # global coefficient
        rollouts = sample(B prompts x G)  ;  R = reward(rollouts)
        A = advantages(R, cfg.loss)                              # per sequence, by the loss table's rules
        batch = pack(rollouts (A, old logp) + E expert demonstrations)
        L = sum_t coef_t * l_t  (coef: (1-mu)/N_on on rollout tokens, mu/N_exp on expert ones)
        L.backward(); clip_grad_norm(1.0); optimizer.step(); check the weights are still finite

Every random choice of step s comes from generators seeded with (seed, s), so a resumed run repeats an
uninterrupted one exactly. Under torchrun each rank does this for its share of the batch, with the whole batch's
coefficients and summed gradients (minichord/distributed.py): the same run on any number of ranks."""

import copy
import json
import random
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from minichord import batch as batches
from minichord import lm_head, losses
from minichord.batch import Sequence, TokenBatch, pack, split_example
from minichord.checkpoint import (CheckpointError, LogError, checkpoint_exists, cut_log, load_checkpoint, progress_line,
                                  restore_optimizer, save_checkpoint)
from minichord.config import TrainConfig
from minichord.data import TrainData, build_train_data
from minichord.device import autocast, describe, resolve_device
from minichord.distributed import Ranks, WholeBatch, gathered, init_ranks, load_shards, shard
from minichord.evaluate import N_SAMPLES, evaluate_splits
from minichord.hf import is_hf_dir, load_model
from minichord.methods import Stage, build_stages
from minichord.pretrain import toy_base
from minichord.sampler import generate
from minichord.tasks.rg import PREFIX as RG_PREFIX, reward_of


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
                 log: Callable[[str], None] = print, device: torch.device | None = None, ranks: Ranks = Ranks()):
        self.stages, self.model, self.tok, self.data, self.ranks = stages, model, tokenizer, data, ranks
        self.method_name = "-".join(s.method.name for s in stages)  # sft-grpo: "sft" then "grpo"
        self.out, self.log, self.cfg, self.steps, self.step = Path(out_dir), log, stages[0].cfg, stages[-1].end, 0
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = device or resolve_device(self.cfg.device)  # model, KV cache, generators, batches, evaluation
        model.to(self.device).activation_checkpointing = self.cfg.activation_checkpointing
        self.trained = shard(model) if self.cfg.fsdp and ranks.world > 1 else model  # fsdp: `model` mirrors its shards
        self.log(describe(self.device, self.cfg.dtype))
        self.optimizer = self._new_optimizer(stages[0])
        self._stop_signal: str | None = None
        self.ref_model = copy.deepcopy(model).eval().requires_grad_(False) \
            if any(s.cfg.loss.kl_coef > 0 for s in stages) else None
        self.expert_seqs = [split_example(*tokenizer.encode_example(e.prompt, e.response)) for e in data.experts]

    def _new_optimizer(self, stage: Stage) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.trained.parameters(), lr=stage.cfg.lr, betas=(0.9, 0.95),
                                 weight_decay=stage.cfg.weight_decay)

    def stage_at(self, step: int) -> Stage:
        return next(s for s in self.stages if s.start <= step < s.end)

    def resume(self) -> bool:
        """Continue from `out/checkpoint` if present (weights, optimizer, step); logs are cut back to its step."""
        path = self.out / "checkpoint"
        if not checkpoint_exists(path):
            return False
        ckpt = load_checkpoint(path, expect_config=self.model.cfg)
        if ckpt.tokenizer is not None and ckpt.tokenizer.files() != self.tok.files():  # a chat template too
            raise CheckpointError(f"{path}: its tokenizer differs from the one of this run's initial model; "
                                  f"use --no-resume or another --out")
        self.model.load_state_dict(ckpt.model.state_dict())
        if self.trained is not self.model:  # the saved optimizer state is full: cut into shards like the weights
            ckpt.optimizer_state = load_shards(self.trained, ckpt.model.state_dict(), ckpt.optimizer_state)
        self.step = ckpt.step
        if self.step < self.steps:
            stage = self.stage_at(self.step)
            self.optimizer = self._new_optimizer(stage)
            if self.step != stage.start or stage is self.stages[0]:  # a new stage starts afresh
                restore_optimizer(self.optimizer, ckpt)
                for group in self.optimizer.param_groups:  # this run's settings win over the saved ones
                    group.update(lr=stage.cfg.lr, weight_decay=stage.cfg.weight_decay)
        for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl") if self.ranks.is_main else ():
            try:  # eval.jsonl and samples.jsonl keep the saved step's row
                cut_log(self.out / name, self.step, None if name == "metrics.jsonl" else self.step, log=self.log)
            except LogError as e:
                raise TrainingError(str(e)) from None
        self.log(f"resumed from {path} at step {self.step}")
        return True

    def _rollouts(self, stage: Stage, step: int) -> tuple[list[Sequence], list[int], dict]:
        """This rank's groups of the step: sequences, their places in the whole batch's order, metrics."""
        cfg, mixed = stage.cfg, stage.cfg.loss.expert_in_group  # mixed: each group ends with the expert trace
        rng, gen = step_rng(cfg.seed, step, 0, self.device)
        pool = self.data.experts if mixed else self.data.prompts
        every = rng.sample(range(len(pool)), min(cfg.prompts_per_step, len(pool)))  # the whole batch's prompts
        mine = self.ranks.share(len(every), "prompts_per_step")  # whole groups: advantages stay on the rank
        picked = every[mine.start:mine.stop]
        n_on = cfg.group_size - 1 if mixed else cfg.group_size
        prompt_ids = [ids for i in picked for ids in [self.tok.encode_prompt(pool[i].prompt)] * n_on]  # rendered once
        t0 = time.perf_counter()
        self.model.eval()
        with autocast(self.device, cfg.dtype):
            out = generate(self.model, prompt_ids, cfg.sampler, eos_id=self.tok.stop_ids, pad_id=self.tok.pad_id,
                           generator=gen, vocab_size=self.tok.vocab_size, rows=(mine.start * n_on, len(every) * n_on))
        t1 = time.perf_counter()
        responses = [out.tokens[i][out.mask[i]].tolist() for i in range(len(prompt_ids))]
        old_logp = [out.logprobs[i][out.mask[i]].tolist() for i in range(len(prompt_ids))]
        rewards = torch.tensor([reward_of(self.data.reward, self.tok.decode(r), pool[picked[i // n_on]])
                                for i, r in enumerate(responses)]).view(len(picked), n_on)  # [B, n_on]
        expert_column = torch.ones(len(picked), int(mixed), dtype=rewards.dtype)  # [B, 1]: the trace, reward 1
        adv = losses.advantages(torch.cat([rewards, expert_column], dim=1), cfg.loss)  # [B, G]
        seqs = [Sequence(*self.expert_seqs[i], True, float(adv[b, -1])) for b, i in enumerate(picked)] if mixed else []
        for k, r in enumerate(responses):
            b, j = divmod(k, n_on)
            seqs.append(Sequence(prompt_ids[k], r, False, float(adv[b, j]), old_logp[k]))
        first = len(every) * mixed + mine.start * n_on  # the whole batch: [its traces (LUFFY)] + every rollout
        places = [*(mine if mixed else []), *range(first, first + len(responses))]
        t2 = time.perf_counter()
        return seqs, places, {"reward": rewards.mean().item(), "accuracy": (rewards == 1).float().mean().item(),
                              "zero_variance_groups": losses.zero_variance_fraction(adv),  # equal rewards: A = 0
                              "response_length": out.mask.sum(1).float().mean().item(),
                              "truncated": (~out.finished).float().mean().item(), "time_sample": t1 - t0,
                              "time_score": t2 - t1}

    def _logp(self, batch: TokenBatch, cfg: TrainConfig, temperature: float, model=None) -> torch.Tensor:
        return batches.batch_logprobs(model or self.model, batch, temperature, cfg.micro_batch_seqs, cfg.dtype)

    def _weight_norm(self) -> torch.Tensor:  # ||theta|| over every parameter, one number on the device
        return torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in self.model.parameters()]))

    def _diverged(self, step: int, why: str) -> TrainingError:
        return TrainingError(f"step {step}: the update diverged: {why} (lr={self.stage_at(step).cfg.lr}); nothing "
                             f"saved; the last good checkpoint, if any, is in {self.out / 'checkpoint'}")

    def _batch(self, stage: Stage, step: int) -> tuple[TokenBatch, torch.Tensor, float | None, dict]:
        """This rank's share of step `step`'s token batch (rollouts with their advantages + expert demonstrations),
        each sequence's place in the whole batch [M] (rollout side first, as one process orders them), mu, metrics."""
        mu = stage.mu(step)  # None under the joint aggregation (LUFFY)
        seqs, places, metrics = self._rollouts(stage, step) if stage.method.uses_rollouts else ([], [], {})
        if stage.cfg.experts_per_step > 0 and mu:  # this rank's share of the step's expert rows, placed in the
            rng, _ = step_rng(stage.cfg.seed, step, 1)  # whole batch after the rollout side of every rank
            every = rng.sample(range(len(self.expert_seqs)), min(stage.cfg.experts_per_step, len(self.expert_seqs)))
            mine = self.ranks.share(len(every), "experts_per_step")
            first = self.ranks.world * len(seqs)  # every rank holds as many rollout-side sequences
            seqs += [Sequence(*self.expert_seqs[every[i]], is_expert=True) for i in mine]
            places += [first + i for i in mine]
        batch = pack(seqs, self.tok.pad_id, self.model.cfg.max_seq_len).to(self.device)
        return batch, torch.tensor(places, device=self.device), mu, {
            "step": step, "method": stage.method.name, "mu": mu, "backend": lm_head.kernel_backend(self.device),
            **self.ranks.mean(metrics)}

    def train_step(self, step: int) -> dict:
        """One step: the batch, then ppo_epochs x minibatches optimizer steps on it; returns its metrics."""
        stage, norm_before = self.stage_at(step), self._weight_norm()
        batch, places, mu, metrics = self._batch(stage, step)
        t0 = time.perf_counter()
        cfg, T = stage.cfg, stage.cfg.sampler.temperature
        self.trained.train()
        if cfg.ppo_epochs * cfg.minibatches > 1:
            batch.old_logp = torch.where(batch.is_expert, 0.0, self._logp(batch, cfg, T))
        ref_logp = self._logp(batch, cfg, T, self.ref_model) if cfg.loss.kl_coef > 0 else None  # [N]
        _, gen = step_rng(cfg.seed, step, 2)
        layout = WholeBatch(self.ranks, batch, places)
        metrics |= {"rollouts": layout.token_places[~layout.is_expert].unique().numel(),  # the whole batch's
                    "experts": layout.token_places[layout.is_expert].unique().numel(),
                    "tokens": len(layout.token_places)}
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            for chosen in torch.randperm(len(layout.places), generator=gen).chunk(cfg.minibatches):
                mb_places = layout.places[chosen.to(self.device)].sort().values  # the mini-batch's sequences
                seq_ids = torch.isin(places, mb_places).nonzero().flatten()  # [M_mb]: this rank's among them
                mb = batch.select(seq_ids) if cfg.minibatches > 1 else batch
                mb_ref = None if ref_logp is None else ref_logp[torch.isin(batch.rows, seq_ids)]  # [N_mb]
                coef = layout.coefficients(mb_places, mu, cfg, lm_head._compute_dtype(self.model.lm_head_weight))
                self.optimizer.zero_grad(set_to_none=True)
                out = batches.backward_loss(self.trained, mb, coef, cfg.loss, T, cfg.micro_batch_seqs, cfg.dtype,
                                            ref_logp=mb_ref) if len(seq_ids) else None  # grads summed per micro-batch
                if self.trained is self.model:  # (FSDP2 has summed them)
                    self.ranks.sum_grads(self.model)
                sums = self.ranks.sum(lm_head.stat_sums(out, mb.is_expert, self.device))
                grad_norm = gathered(torch.nn.utils.clip_grad_norm_(self.trained.parameters(), cfg.grad_clip))
                if not (torch.isfinite(sums[0]) and torch.isfinite(grad_norm)):
                    raise self._diverged(step, f"non-finite loss {sums[0].item()} or gradient norm "
                                               f"{grad_norm.item()}, stopped before the update")
                try:
                    self.optimizer.step()
                except RuntimeError as e:  # e.g. AdamW's "value cannot be converted to type float without overflow"
                    raise self._diverged(step, str(e)) from None
                if self.trained is not self.model:  # the full weights follow the shards (an all-gather)
                    self.model.load_state_dict(gathered(self.trained.state_dict()))
                for k, v in lm_head.update_stats(sums, grad_norm).items():
                    stats.setdefault(k, []).append(v)
        if self.ranks.any(not ((norm := self._weight_norm()).isfinite() and self._logp(  # a non-finite weight makes
                batch.select(torch.tensor([0])), cfg, 1.0).isfinite().all())):  # the norm non-finite
            raise self._diverged(step, "it made the weights or logits non-finite")
        if norm > cfg.max_weight_growth * norm_before:  # finite, and out of all proportion (e.g. lr = 1e6)
            raise self._diverged(step, f"the weights' norm grew {norm / norm_before:.3g}x (> max_weight_growth)")
        return {**metrics, **{k: sum(v) / len(v) for k, v in stats.items()}, "time_train": time.perf_counter() - t0}

    def evaluate(self, step: int, full: bool = True) -> dict:
        """Greedy answers: each eval split's first N_SAMPLES to samples.jsonl, the scores to eval.jsonl (if full)."""
        splits = {name: problems if full else problems[:N_SAMPLES] for name, problems in self.data.eval_splits.items()}
        result = {"step": step, **evaluate_splits(self.model, self.tok, splits, dtype=self.cfg.dtype,
                                                  reward_fn=self.data.reward, lenient_fn=self.data.lenient,
                                                  max_new_tokens=self.cfg.sampler.max_new_tokens)}
        samples = [dict(split=name, **s) for name, v in result.items() if isinstance(v, dict) for s in v.pop("samples")]
        with open(self.out / "samples.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "samples": samples}) + "\n")
        if full:
            with open(self.out / "eval.jsonl", "a") as f:
                f.write(json.dumps(result) + "\n")
        return result

    def save(self) -> None:
        optimizer = self.optimizer if self.trained is self.model else gathered(self.optimizer.state_dict())  # all ranks
        if self.ranks.is_main:  # every rank holds the same weights
            save_checkpoint(self.out / "checkpoint", self.model, tokenizer=self.tok, optimizer=optimizer,
                            step=self.step, meta={"method": self.method_name, "config": asdict(self.cfg)})

    def request_stop(self, reason: str) -> None:
        """Finish the current step, save, then stop (what Ctrl-C and SIGTERM do)."""
        self._stop_signal = reason
        self.log(f"\n{reason}: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort)")

    def _on_signal(self, signum, frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.request_stop(signal.Signals(signum).name)

    def run(self) -> dict:
        """Train until `steps` (or a stop signal: TrainingInterrupted); returns the last evaluation."""
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        last_eval: dict = {}
        try:
            evaluates = bool(self.data.eval_splits) and self.ranks.is_main  # rank 0 evaluates, the others wait
            if self.step == 0 and self.ranks.is_main:  # a fresh run (no checkpoint resumed): logs start over too
                for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
                    (self.out / name).unlink(missing_ok=True)
                if evaluates:
                    last_eval = self.evaluate(0)
            t_start, first, stop = time.perf_counter(), self.step, False  # stop: every rank's vote after each step
            while self.step < self.steps and not stop:
                if self.step > first and self.step == self.stage_at(self.step).start:
                    self.optimizer = self._new_optimizer(self.stage_at(self.step))  # a new stage
                metrics = self.train_step(self.step)
                self.step += 1
                if self.ranks.is_main:
                    with open(self.out / "metrics.jsonl", "a") as f:
                        f.write(json.dumps(metrics) + "\n")
                eta = (time.perf_counter() - t_start) / (self.step - first) * (self.steps - self.step)
                self.log(progress_line(metrics, self.steps, eta))
                if evaluates and (self.step % self.cfg.eval_every == 0 or self.step == self.steps):
                    last_eval = self.evaluate(self.step)
                    self.log("  eval " + " | ".join(f"{k} {v['accuracy']:.3f}" + (
                        f" (lenient {v['lenient_accuracy']:.3f})" if "lenient_accuracy" in v else "")
                        for k, v in last_eval.items() if isinstance(v, dict)))
                elif evaluates and self.cfg.samples_every and self.step % self.cfg.samples_every == 0:
                    self.evaluate(self.step, full=False)
                if stop := self.ranks.any(self._stop_signal is not None):  # a signal after the vote: the next step's
                    self._stop_signal = self._stop_signal or "a stop on another rank"
                if self.step % self.cfg.save_every == 0 or self.step == self.steps or stop:
                    self.save()
        finally:
            for sig, previous in handlers.items():
                signal.signal(sig, previous)
        if self.step < self.steps:
            raise TrainingInterrupted(f"stopped by {self._stop_signal} after step {self.step}/{self.steps}; "
                                      f"checkpoint saved in {self.out / 'checkpoint'}; rerun the command to resume")
        return last_eval


def prepare_run(method_name: str, out_dir: str | Path, *, config_file: str | None = None,
                overrides: list[str] | tuple[str, ...] = (), resume: bool = True,
                log: Callable[[str], None] = print) -> Trainer:
    """A Trainer ready to run, resumed if out_dir holds a checkpoint; every refusal comes before any model loads."""
    stages = build_stages(method_name, config_file, overrides)
    cfg = stages[0].cfg
    device = resolve_device(cfg.device)  # --device cuda without CUDA: refused before any data or model loads
    named = {(f"{s.method.name}." if len(stages) > 1 else "") + k: v for s in stages for k, v in asdict(s.cfg).items()}
    ranks = init_ranks(cfg.dist_backend, device, {"method": method_name, "out": str(out_dir), "resume": resume} | named)
    log = log if ranks.is_main else (lambda line: None)
    torch.manual_seed(cfg.seed)
    data = build_train_data(cfg, hf_model=is_hf_dir(cfg.init))
    for stage in stages:
        stage.check_data(data)
        if stage.method.uses_rollouts:  # prompts and expert rows split evenly over the ranks
            pool = data.experts if stage.cfg.loss.expert_in_group else data.prompts
            ranks.share(min(stage.cfg.prompts_per_step, len(pool)), "prompts_per_step")
        if stage.cfg.experts_per_step:
            ranks.share(min(stage.cfg.experts_per_step, len(data.experts)), "experts_per_step")
    rg = " (rg: rows: reasoning-gym's score_answer)" if any(p.skill.startswith(RG_PREFIX) for p in data.prompts) else ""
    log(f"data: {len(data.prompts)} RL prompts, {len(data.experts)} expert demonstrations, eval splits "
        f"{sorted(data.eval_splits) or 'none'}; reward {data.reward.__module__}.{data.reward.__name__}{rg}")
    if not ranks.is_main:
        ranks.barrier()  # rank 0 first makes the cached toy base (or fetches a Hub snapshot)
    model, tokenizer = load_model(cfg.init or toy_base(log, device))
    if ranks.is_main:
        ranks.barrier()
    data.check_fits(tokenizer, model.cfg.max_seq_len, stages)  # file:line, before any step or evaluation
    trainer = Trainer(stages, model, tokenizer, data, Path(out_dir), log=log, device=device, ranks=ranks)
    if resume:
        trainer.resume()
    return trainer
