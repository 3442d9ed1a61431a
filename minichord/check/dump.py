"""A DUMP: one batch of a CHORD loss exactly as your code saw it, in one safetensors file, for `minichord check DUMP`
(or one file per rank of a data-parallel step); the tensors, metadata and rules: minichord/check/README.md."""

import dataclasses
import math
from pathlib import Path

import torch
from torch import Tensor

from minichord.config import CONVENTIONS, EXPERT_WEIGHTINGS
REQUIRED = ("logp", "old_logp", "mask", "is_expert", "loss", "grad_logp")
OPTIONAL = ("advantages", "rewards", "group_ids", "micro_batch")


class DumpError(ValueError):
    """A DUMP file that does not follow the schema; the message names the tensor or key."""


@dataclasses.dataclass
class Dump:
    logp: Tensor  # [B, T] float64
    old_logp: Tensor  # [B, T] float64
    mask: Tensor  # [B, T] bool
    is_expert: Tensor  # [B] bool
    loss: float
    grad_logp: Tensor  # [B, T] float64
    mu: float
    weighting: str
    eps_low: float = 0.2
    eps_high: float = 0.2
    convention: str = "paper"
    advantages: Tensor | None = None  # [B, T] float64 (per-sequence values broadcast)
    rewards: Tensor | None = None  # [B] float64
    group_ids: Tensor | None = None  # [B] long
    micro_batch: Tensor | None = None  # [B] long
    rank: int | None = None
    step: str | None = None
    grad_reduce: str = "mean"
    world: int = 1  # ranks merged into this batch (load_dumps)

    def __post_init__(self):
        self.rows = self.mask.nonzero()[:, 0]  # [N] sequence index of each masked token (row-major order)

    def flat(self, x: Tensor) -> Tensor:
        """[B, T] -> the masked tokens [N]; [B] -> each token's sequence value [N]."""
        return x[self.mask] if x.dim() == 2 else x[self.rows]

    def steps(self) -> tuple[Tensor, int]:
        """(each masked token's accumulation step on its rank [N], steps per rank G); no ids: one step."""
        if self.micro_batch is None:
            return torch.zeros_like(self.rows), 1
        ids, cell = self.micro_batch.unique(return_inverse=True)  # rank-major cells (load_dumps)
        return self.flat(cell % (G := len(ids) // self.world)), G


def _number(meta: dict, key: str, default: float | None, lo: float, hi: float, where: str) -> float:
    if (text := meta.get(key)) is None and default is None:
        raise DumpError(f"{where}: missing metadata {key!r} (a number in [{lo}, {hi}])")
    try:
        value = default if text is None else float(text)
    except ValueError:
        value = math.nan
    if not lo <= value <= hi:
        raise DumpError(f"{where}: metadata {key}={text!r}: must be a number in [{lo}, {hi}]")
    return value


def _flags(name: str, x: Tensor, where: str) -> Tensor:
    if x.dtype != torch.bool and not ((x == 0) | (x == 1)).all():
        raise DumpError(f"{where}: tensor {name!r} must hold only 0 and 1 (or bool), got other values")
    return x.bool()


def _finite(name: str, x: Tensor, where: str, under: Tensor | None = None) -> Tensor:
    if not x.is_floating_point():
        raise DumpError(f"{where}: tensor {name!r} must be floating point, got {x.dtype}")
    bad = ~torch.isfinite(x := x.double()) & (True if under is None else under)
    if bad.any():
        raise DumpError(f"{where}: tensor {name!r} has NaN or inf at {bad.nonzero()[0].tolist()}" +
                        (" (a masked-in token)" if under is not None else "") + "; it must be finite there")
    return x


def from_tensors(tensors: dict[str, Tensor], meta: dict[str, str], where: str = "dump") -> Dump:
    """Validate a dump given as tensors + metadata strings (what `load_dump` reads from a file)."""
    if missing := [name for name in REQUIRED if name not in tensors]:
        raise DumpError(f"{where}: missing tensor {missing[0]!r} (required: {', '.join(REQUIRED)}; "
                        f"and advantages or rewards + group_ids)")
    if unknown := sorted(set(tensors) - set(REQUIRED) - set(OPTIONAL)):
        raise DumpError(f"{where}: unknown tensor {unknown[0]!r}; allowed: {', '.join(REQUIRED + OPTIONAL)}")
    if (logp := tensors["logp"]).dim() != 2:
        raise DumpError(f"{where}: tensor 'logp' has shape {list(logp.shape)}: must be [B, T]")
    B, T = logp.shape
    shapes = {"loss": [()], "advantages": [(B, T), (B,)],
              **dict.fromkeys(("logp", "old_logp", "mask", "grad_logp"), [(B, T)])}
    for name, x in tensors.items():
        want = shapes.get(name, [(B,)])
        if (() if name == "loss" and x.numel() == 1 else tuple(x.shape)) not in want:
            raise DumpError(f"{where}: tensor {name!r} has shape {list(x.shape)}: must be "
                            f"{' or '.join(str(list(w)) for w in want)} (B={B}, T={T} from logp)")
    mask, is_expert = _flags("mask", tensors["mask"], where), _flags("is_expert", tensors["is_expert"], where)
    on_rows = mask & ~is_expert[:, None]  # [B, T]
    if "advantages" not in tensors and not ("rewards" in tensors and "group_ids" in tensors):
        raise DumpError(f"{where}: missing tensor 'advantages' (or both 'rewards' and 'group_ids')")
    if ("rewards" in tensors) != ("group_ids" in tensors):
        raise DumpError(f"{where}: tensor {'group_ids' if 'rewards' in tensors else 'rewards'!r} missing: "
                        f"rewards and group_ids go together")
    weighting, convention = meta.get("weighting"), meta.get("convention", "paper")
    reduce = meta.get("grad_reduce", "mean")
    for key, value, allowed in (("weighting", weighting, EXPERT_WEIGHTINGS), ("convention", convention, CONVENTIONS),
                                ("grad_reduce", reduce, ("mean", "sum"))):
        if value not in allowed:
            raise DumpError(f"{where}: metadata {key}={value!r}: must be one of {', '.join(allowed)}")
    adv_rows = (on_rows | (mask & is_expert[:, None])) if weighting == "luffy" else on_rows  # [B, T]
    if "rank" in meta and not (rank := _number(meta, "rank", None, 0, 1e6, where)).is_integer():
        raise DumpError(f"{where}: metadata rank={meta['rank']!r}: must be an integer >= 0")
    d = Dump(logp=_finite("logp", logp, where, mask), old_logp=_finite("old_logp", tensors["old_logp"], where, on_rows),
             mask=mask, is_expert=is_expert, loss=_finite("loss", tensors["loss"].reshape(()), where).item(),
             grad_logp=_finite("grad_logp", tensors["grad_logp"], where, mask),
             mu=_number(meta, "mu", None if weighting != "luffy" else 0.0, 0.0, 1.0, where), weighting=weighting,
             eps_low=_number(meta, "eps_low", 0.2, 0.0, 0.999999, where),
             eps_high=_number(meta, "eps_high", 0.2, 0.0, 1e9, where), convention=convention, step=meta.get("step"),
             grad_reduce=reduce, rank=int(rank) if "rank" in meta else None)
    if "advantages" in tensors:
        adv = tensors["advantages"]  # [B, T] or [B]
        d.advantages = _finite("advantages", adv[:, None].expand(B, T) if adv.dim() == 1 else adv, where, adv_rows)
    if "rewards" in tensors:
        d.rewards = _finite("rewards", tensors["rewards"], where, ~is_expert)
        d.group_ids = _ids("group_ids", tensors["group_ids"], where)
    if "micro_batch" in tensors:
        d.micro_batch = _ids("micro_batch", tensors["micro_batch"], where)
    if not mask.any():
        raise DumpError(f"{where}: tensor 'mask' selects no token: nothing to check")
    if (bad := (d.logp > 1e-6) & mask).any():  # log p <= 0 (1e-6: rounding)
        raise DumpError(f"{where}: tensor 'logp' is {d.logp[bad][0].item():.4g} at {bad.nonzero()[0].tolist()}: "
                        f"a log-probability is <= 0 (were probabilities or logits dumped?)")
    return d


def _ids(name: str, x: Tensor, where: str) -> Tensor:
    if x.is_floating_point() or x.dtype == torch.bool or (x < 0).any():
        raise DumpError(f"{where}: tensor {name!r} must hold integers >= 0, got {x.dtype}")
    return x.long()


def load_dump(path: str | Path) -> Dump:
    """Read and validate a DUMP file; any problem is a DumpError naming the tensor or key."""
    from safetensors import SafetensorError, safe_open

    if not (path := Path(path)).is_file():
        raise DumpError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, tensors = f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0] if str(e) else e
        raise DumpError(f"{path}: not a readable safetensors file ({reason!r})") from None
    return from_tensors(tensors, meta, where=str(path))


SHARED = ("mu", "weighting", "eps_low", "eps_high", "convention", "grad_reduce", "step")  # equal on every rank
TENSORS = ("logp", "old_logp", "mask", "is_expert", "grad_logp", "advantages", "rewards", "group_ids")  # merged


def load_dumps(paths: list[str | Path]) -> Dump:
    """One DUMP, or the rank files of one data-parallel step merged into the global batch (schema above)."""
    if len(dumps := [load_dump(p) for p in paths]) == 1:
        return dumps[0]
    W, named = len(dumps), sorted(zip([str(p) for p in paths], dumps), key=lambda pd: -1 if pd[1].rank is None
                                  else pd[1].rank)

    def settings(d: Dump) -> dict:
        return {**{f"metadata {k}": getattr(d, k) for k in SHARED}, "optional tensors": [k for k in OPTIONAL if
                                                                                         getattr(d, k) is not None]}
    for p, d in named:
        if d.rank is None or d.step is None:
            raise DumpError(f"{p}: metadata {'rank' if d.rank is None else 'step'!r} missing: each rank file of a "
                            f"step names its rank (0..W-1) and the step")
        if key := next((k for k, v in settings(d).items() if v != settings(named[0][1])[k]), None):
            raise DumpError(f"{p}: {key}={settings(d)[key]!r}, but {named[0][0]} has {settings(named[0][1])[key]!r}: "
                            f"the rank files of one step share it")
    if twice := [(p, d.rank) for (p, d), (_, e) in zip(named[1:], named) if d.rank == e.rank]:
        raise DumpError(f"{twice[0][0]}: rank {twice[0][1]} is given twice: one file per rank")
    if missing := sorted(set(range(W)) - {d.rank for _, d in named}):
        raise DumpError(f"rank {missing[0]} missing: {W} files must be ranks 0..{W - 1}")
    dumps, T = [d for _, d in named], max(d.mask.shape[1] for _, d in named)
    scale = 1.0 / W if dumps[0].grad_reduce == "mean" else 1.0  # L = the mean (or sum) of the ranks' losses
    merged = {k: torch.cat([torch.nn.functional.pad(x, (0, T - x.shape[1])) if (x := getattr(d, k)).dim() == 2 else x
                            for d in dumps]) for k in TENSORS if getattr(dumps[0], k) is not None}  # right-padded
    merged["grad_logp"] = merged["grad_logp"] * scale
    return dataclasses.replace(dumps[0], **merged, rank=None, world=W,
                               loss=sum(d.loss for d in dumps) * scale, micro_batch=_rank_steps(named))


def _rank_steps(named: list[tuple[str, Dump]]) -> Tensor:
    """Each sequence's cell rank * G + its accumulation step on its rank [B_total] (files in rank order); every
    rank numbers its G steps 0..G-1."""
    if named[0][1].micro_batch is None:  # one step per rank
        return torch.cat([torch.full(d.is_expert.shape, r) for r, (_, d) in enumerate(named)])
    steps = set(named[0][1].micro_batch.tolist())
    if missing := sorted(set(range(len(steps))) - steps):
        raise DumpError(f"{named[0][0]}: micro_batch id {missing[0]} missing: a rank's accumulation steps are 0..G-1")
    for p, d in named[1:]:
        if (ids := set(d.micro_batch.tolist())) != steps:
            raise DumpError(f"{p}: micro_batch ids {sorted(ids)[:8]}, but rank 0 has {sorted(steps)[:8]}: every "
                            f"rank numbers its accumulation steps 0..{len(steps) - 1}, the same steps")
    return torch.cat([r * len(steps) + d.micro_batch for r, (_, d) in enumerate(named)])
