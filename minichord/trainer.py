"""The training loop: rollout -> score -> advantages -> one token batch -> fused loss -> step.

    for step in range(steps):
        mu = mu_schedule(step)                                   # global coefficient
        rollouts = sample(B prompts x G)  ;  R = reward(rollouts)
        A = group_advantages(R)                                  # per sequence, broadcast to tokens
        batch = pack(rollouts (A, old logp) + E expert demonstrations)
        L = sum_t coef_t * loss_t       (coef: (1-mu)/N_on on rollout tokens, mu/N_exp on expert ones)
        L.backward(); clip_grad_norm(1.0); optimizer.step()

Every random choice of step s (prompts, expert examples, sampling) comes from generators
seeded with (seed, s), so a resumed run repeats an uninterrupted one exactly. Metrics go to
`metrics.jsonl` (one line per step) and `eval.jsonl`; the checkpoint to `checkpoint/`.

Note on the GRPO loss value: with one update per rollout batch the ratio r is 1, so L_GRPO is
~0 in value while its gradient is -A grad log p. Watch the reward, not the loss.

Choices that depart from the paper (arXiv 2508.11408) or its official code:
- Scale: a ~1M-parameter model on a toy task, lr 1e-4 and B=8 x G=8 + E=16 per step
  (paper: Qwen2.5-7B-Instruct, lr 1e-6, 32 x 8 rollouts + 64 expert samples).
- Normalisation: each term is one token-mean over the whole batch (paper-era code); the
  official code averages tokens per micro-batch and weights micro-batches by their share of
  sequences.
- Dual clip (c = 3) is off by default (`dual_clip=3` turns it on; the official code always
  applies it); the +-20 log-ratio clamp is on (`log_ratio_clamp`), as in the current official code.
- A group of one response gets advantage 0 (official: R / (1 + 1e-6));
  `losses.group_advantages(singleton="official")` gives the official value.
- mu's warm-up and decay are shares of the run (`mu_warmup_frac`, `mu_decay_frac`), the
  official W=0, D=200 steps scaled to the run length.
- Reward: 1 for an exactly matching final answer, else 0; no format reward.
- Expert examples are drawn per step from a generator seeded by (seed, step): without
  replacement within a step, with replacement across steps (not epoch-wise iteration).
- With one update per batch the old log-probs are the sampler's (equal in value up to float
  rounding); with several (ppo_epochs x minibatches) they are recomputed before updating.
- LUFFY: the expert trace counts as reward 1 in its group; A = R - mean(R) without std; one
  token-mean over on-policy and expert tokens; on-policy tokens unclipped.
- SFT->GRPO splits the step budget in half and starts the GRPO stage with a fresh optimizer.
- AdamW with betas (0.9, 0.95), no weight decay, gradient clipping at 1.0.
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

from minichord import losses, ops
from minichord.batch import Sequence, TokenBatch, pack
from minichord.checkpoint import checkpoint_exists, load_checkpoint, restore_optimizer, save_checkpoint
from minichord.config import TrainConfig
from minichord.methods import Method
from minichord.sampler import generate
from minichord.traindata import TrainData


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the last good checkpoint is kept."""


@dataclasses.dataclass
class Phase:
    """A stretch of steps run with one method (sft-grpo has two phases, others one)."""

    method: Method
    cfg: TrainConfig
    start: int
    end: int

    def mu(self, step: int) -> float:
        n = self.end - self.start
        return losses.mu_schedule(step - self.start, warmup=round(self.cfg.mu_warmup_frac * n),
                                  decay=round(self.cfg.mu_decay_frac * n),
                                  peak=self.cfg.mu_peak, valley=self.cfg.mu_valley)

    def loss_spec(self) -> losses.TokenLossSpec:
        c = self.cfg
        return losses.TokenLossSpec(eps_low=c.eps_low, eps_high=c.eps_high, dual_clip=c.dual_clip,
                                    log_ratio_clamp=c.log_ratio_clamp,
                                    onpolicy_clip=not self.method.mixing.in_group,
                                    expert_weighting=c.expert_weighting,
                                    entropy_coef=c.entropy_coef, kl_coef=c.kl_coef)


def step_rng(seed: int, step: int, stream: int) -> tuple[random.Random, torch.Generator]:
    """Independent, reproducible generators for (seed, step, stream)."""
    key = (seed * 1_000_003 + step) * 7 + stream
    return random.Random(key), torch.Generator().manual_seed(key)


class Trainer:
    def __init__(self, phases: list[Phase], model, tokenizer, data: TrainData, out_dir: Path,
                 log: Callable[[str], None] = print):
        self.phases, self.model, self.tok, self.data = phases, model, tokenizer, data
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = log
        self.cfg = phases[0].cfg
        self.steps = phases[-1].end
        self.step = 0
        self.optimizer = self._new_optimizer(phases[0])
        self._stop_requested = False
        self.evals: list[dict] = []  # evaluations made by this process, in order
        # KL penalty (off by default): a frozen copy of the initial model gives ref log-probs
        self.ref_model = copy.deepcopy(model).eval().requires_grad_(False) \
            if any(p.cfg.kl_coef > 0 for p in phases) else None
        self.expert_seqs = [(tokenizer.encode_prompt(e.prompt), tokenizer.encode(e.response) + [tokenizer.eos_id])
                            for e in data.experts]

    # ----------------------------------------------------------------- set-up / resume
    def _new_optimizer(self, phase: Phase) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=phase.cfg.lr, betas=(0.9, 0.95),
                                 weight_decay=phase.cfg.weight_decay)

    def phase_at(self, step: int) -> Phase:
        return next(p for p in self.phases if p.start <= step < p.end)

    def resume(self) -> bool:
        """Continue from `out/checkpoint` if present: weights, optimizer, step; logs are cut
        back to that step so the files read as one uninterrupted run."""
        path = self.out / "checkpoint"
        if not checkpoint_exists(path):
            return False
        ckpt = load_checkpoint(path, expect_config=self.model.cfg)
        self.model.load_state_dict(ckpt.model.state_dict())
        self.step = ckpt.step
        if self.step < self.steps:
            self.optimizer = self._new_optimizer(self.phase_at(self.step))
        if ckpt.optimizer_state is not None:
            restore_optimizer(self.optimizer, ckpt)
        for name in ("metrics.jsonl", "eval.jsonl"):
            f = self.out / name
            if f.exists():
                rows = [r for r in f.read_text().splitlines() if json.loads(r)["step"] < self.step
                        or (name == "eval.jsonl" and json.loads(r)["step"] == self.step)]
                f.write_text("".join(r + "\n" for r in rows))
        self.log(f"resumed from {path} at step {self.step}")
        return True

    # ----------------------------------------------------------------- one step
    def _rollouts(self, phase: Phase, step: int) -> tuple[list[Sequence], dict]:
        cfg, in_group = phase.cfg, phase.method.mixing.in_group
        rng, gen = step_rng(cfg.seed, step, 0)
        pool = self.data.experts if in_group else self.data.prompts  # LUFFY needs expert traces
        if not pool:
            raise TrainingError(f"method {phase.method.name} needs {'expert' if in_group else 'RL'} prompts")
        picked = rng.sample(range(len(pool)), min(cfg.prompts_per_step, len(pool)))
        n_on = cfg.group_size - 1 if in_group else cfg.group_size
        prompt_ids = [self.tok.encode_prompt(pool[i].prompt) for i in picked for _ in range(n_on)]
        t0 = time.perf_counter()
        self.model.eval()
        out = generate(self.model, prompt_ids, cfg.sampler, eos_id=self.tok.eos_id,
                       pad_id=self.tok.pad_id, generator=gen, vocab_size=self.tok.vocab_size)
        t1 = time.perf_counter()
        responses = [out.tokens[i][out.mask[i]].tolist() for i in range(len(prompt_ids))]
        old_logp = [out.logprobs[i][out.mask[i]].tolist() for i in range(len(prompt_ids))]
        rewards = torch.tensor([self.data.reward(self.tok.decode(r), pool[picked[i // n_on]].answer)
                                for i, r in enumerate(responses)]).view(len(picked), n_on)  # [B, n_on]
        seqs = []
        if in_group:  # LUFFY: the expert trace scores 1 and joins its group; A = R - mean(R)
            group_r = torch.cat([rewards, torch.ones(len(picked), 1)], dim=1)  # [B, G]
            adv = losses.group_advantages(group_r, scale_by_std=False)  # [B, G]
            for b, i in enumerate(picked):
                p_ids, r_ids = self.expert_seqs[i]
                seqs.append(Sequence(p_ids, r_ids, True, float(adv[b, -1])))
        else:
            group_r = rewards
            adv = losses.group_advantages(rewards)  # [B, G]
        for k, r in enumerate(responses):
            b, j = divmod(k, n_on)
            seqs.append(Sequence(prompt_ids[k], r, False, float(adv[b, j]), old_logp[k]))
        t2 = time.perf_counter()
        lengths = out.mask.sum(1).float()  # [B * n_on]
        return seqs, {
            "reward": rewards.mean().item(), "accuracy": (rewards == 1).float().mean().item(),
            "zero_variance_groups": losses.zero_variance_fraction(group_r),
            "response_length": lengths.mean().item(), "truncated": (~out.finished).float().mean().item(),
            "time_sample": t1 - t0, "time_score": t2 - t1,
        }

    def _expert_batch(self, cfg: TrainConfig, step: int) -> list[Sequence]:
        rng, _ = step_rng(cfg.seed, step, 1)
        picked = rng.sample(range(len(self.expert_seqs)), min(cfg.experts_per_step, len(self.expert_seqs)))
        return [Sequence(*self.expert_seqs[i], is_expert=True) for i in picked]

    def _hidden(self, batch: TokenBatch, model=None) -> torch.Tensor:
        model = model or self.model
        hidden = model(batch.ids, attention_mask=batch.attention_mask, return_hidden=True)  # [M, L, D]
        return hidden[batch.rows, batch.cols]  # [N, D]

    @torch.no_grad()
    def _logp(self, batch: TokenBatch, temperature: float, model=None) -> torch.Tensor:
        model = model or self.model
        logits = self._hidden(batch, model) @ model.lm_head_weight.T  # [N, V]
        return ops.token_logprobs(logits, batch.targets, temperature=temperature)  # [N]

    def _update(self, phase: Phase, batch: TokenBatch, mu: float | None, step: int) -> dict:
        """ppo_epochs x minibatches optimizer steps on one batch (old log-probs recomputed first
        when there is more than one, so ratios and clipping are real)."""
        cfg, spec, T = phase.cfg, phase.loss_spec(), phase.cfg.sampler.temperature
        self.model.train()
        if cfg.ppo_epochs * cfg.minibatches > 1:
            batch.old_logp = torch.where(batch.is_expert, 0.0, self._logp(batch, T))
        ref_logp = self._logp(batch, T, self.ref_model) if cfg.kl_coef > 0 else None  # [N]
        n_seq = batch.ids.shape[0]
        _, gen = step_rng(cfg.seed, step, 2)
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            for seq_ids in torch.randperm(n_seq, generator=gen).chunk(cfg.minibatches):
                seq_ids = seq_ids.sort().values
                mb = batch.select(seq_ids) if cfg.minibatches > 1 else batch
                mb_ref = None if ref_logp is None else ref_logp[torch.isin(batch.rows, seq_ids)]  # [N_mb]
                mask = torch.ones_like(mb.is_expert)  # [N]
                coef = losses.token_coefficients(mb.is_expert, mask, mu)
                out = ops.fused_token_loss(self._hidden(mb), self.model.lm_head_weight, mb.targets, coef,
                                           mb.is_expert, mb.advantages, mb.old_logp, spec, ref_logp=mb_ref,
                                           temperature=T)
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                if not (torch.isfinite(out.loss) and torch.isfinite(grad_norm)):
                    raise TrainingError(
                        f"step {step}: non-finite loss ({out.loss.item()}) or gradient norm ({grad_norm.item()}); "
                        f"stopped before the update. The last good checkpoint is {self.out / 'checkpoint'}")
                self.optimizer.step()
                on, ex = ~mb.is_expert, mb.is_expert
                p_exp = out.logp[ex].exp()  # [N_exp]
                for k, v in {"loss": out.loss.item(), "grad_norm": grad_norm.item(),
                             "entropy": out.entropy[on].mean().item() if on.any() else math.nan,
                             "clip_fraction": out.clipped[on].float().mean().item() if on.any() else 0.0,
                             "expert_p": p_exp.mean().item() if ex.any() else math.nan,
                             "expert_phi": (p_exp * (1 - p_exp)).mean().item() if ex.any() else math.nan,
                             "expert_nll": -out.logp[ex].mean().item() if ex.any() else math.nan}.items():
                    stats.setdefault(k, []).append(v)
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def train_step(self, step: int) -> dict:
        phase = self.phase_at(step)
        mu = None if phase.method.joint_normalisation else phase.mu(step)  # LUFFY: one token-mean
        seqs, metrics = [], {"step": step, "method": phase.method.name, "mu": mu}
        if phase.method.uses_rollouts:
            rollout_seqs, m = self._rollouts(phase, step)
            seqs += rollout_seqs
            metrics.update(m)
        if phase.cfg.experts_per_step > 0 and mu:
            seqs += self._expert_batch(phase.cfg, step)
        metrics["rollouts"] = sum(not s.is_expert for s in seqs)
        metrics["experts"] = sum(s.is_expert for s in seqs)
        t0 = time.perf_counter()
        if seqs:
            batch = pack(seqs, self.tok.pad_id, self.model.cfg.max_seq_len)
            metrics.update(self._update(phase, batch, mu, step))
            metrics["tokens"] = batch.num_tokens
        metrics["time_train"] = time.perf_counter() - t0
        return metrics

    # ----------------------------------------------------------------- the loop
    def evaluate(self, step: int) -> dict:
        from minichord.evaluate import evaluate_splits
        self.model.eval()
        result = {"step": step, **evaluate_splits(self.model, self.tok, self.data.eval_splits,
                                                  max_new_tokens=self.cfg.sampler.max_new_tokens)}
        self.evals.append(result)
        with open(self.out / "eval.jsonl", "a") as f:
            f.write(json.dumps(result) + "\n")
        return result

    def save(self) -> None:
        save_checkpoint(self.out / "checkpoint", self.model, tokenizer=self.tok, optimizer=self.optimizer,
                        step=self.step, meta={"method": self.phases[0].method.name,
                                              "config": dataclasses.asdict(self.cfg)})

    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        self.log("\ninterrupt: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to abort)")

    def run(self) -> dict:
        """Train until `steps` (or an interrupt, after which the checkpoint is saved)."""
        previous = signal.signal(signal.SIGINT, self._request_stop)
        last_eval: dict = {}
        try:
            if self.step == 0:  # a fresh run (no checkpoint resumed): logs start over too
                for name in ("metrics.jsonl", "eval.jsonl"):
                    (self.out / name).unlink(missing_ok=True)
                if self.data.eval_splits:
                    last_eval = self.evaluate(0)
            t_start = time.perf_counter()
            first = self.step
            while self.step < self.steps and not self._stop_requested:
                if self.step > first and self.step == self.phase_at(self.step).start:
                    self.optimizer = self._new_optimizer(self.phase_at(self.step))  # a new stage
                metrics = self.train_step(self.step)
                self.step += 1
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(metrics) + "\n")
                done = self.step - first
                eta = (time.perf_counter() - t_start) / done * (self.steps - self.step)
                self.log(progress_line(metrics, self.steps, eta))
                if self.data.eval_splits and (self.step % self.cfg.eval_every == 0 or self.step == self.steps):
                    last_eval = self.evaluate(self.step)
                    self.log("  eval " + " | ".join(f"{k} {v['accuracy']:.3f}" for k, v in last_eval.items()
                                                    if isinstance(v, dict)))
                if self.step % self.cfg.save_every == 0 or self.step == self.steps or self._stop_requested:
                    self.save()
        finally:
            signal.signal(signal.SIGINT, previous)
        return last_eval


def progress_line(m: dict, steps: int, eta: float) -> str:
    parts = [f"step {m['step'] + 1:4d}/{steps}", m["method"], "mu joint" if m["mu"] is None else f"mu {m['mu']:.2f}"]
    for key, label in [("reward", "reward"), ("entropy", "H"), ("response_length", "len"),
                       ("clip_fraction", "clip"), ("expert_nll", "expert nll")]:
        if key in m and not (isinstance(m[key], float) and math.isnan(m[key])):
            parts.append(f"{label} {m[key]:.3f}")
    parts.append(f"eta {eta:4.0f}s")
    return " | ".join(parts)
