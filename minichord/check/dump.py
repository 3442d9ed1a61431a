"""A DUMP: one batch of a CHORD loss exactly as your code saw it, in one safetensors file, for `minichord check DUMP`.
B = sequences in the batch, T = the longest response (right-padded; the mask says which tokens count).

Tensors (any float dtype for floats, read as float64; flags: bool, or any dtype holding only 0 and 1):

    logp         [B, T]  float  log pi_theta(y_t | ...), the values your loss was computed from
    old_logp     [B, T]  float  behaviour (sampler) log-probs; read on on-policy rows only
    mask         [B, T]  0/1    response tokens that carry a loss
    is_expert    [B]     0/1    1: expert demonstration (SFT term), 0: on-policy rollout (GRPO term)
    advantages   [B, T] or [B]  float, on-policy rows (and LUFFY's expert rows)  } give one or both;
    rewards      [B]     float  outcome reward of each on-policy sequence          } with rewards, minichord
    group_ids    [B]     int    prompt group of each sequence (with rewards)      } computes A itself
    micro_batch  [B]     int    optional: gradient-accumulation micro-batch of each sequence (>= 0)
    loss         []      float  your loss for the whole batch (0-d or 1 element)
    grad_logp    [B, T]  float  d loss / d logp, your gradient (read under the mask only)

Metadata (safetensors `metadata={...}`, all values strings):

    mu           "0.1"                      SFT weight, in [0, 1] (ignored by luffy)
    weighting    "phi" | "is" | "uniform" | "luffy"   the expert term: sg(p(1-p)), sg(p), 1, or LUFFY
    eps_low, eps_high   "0.2"   optional, default 0.2   PPO clip range [1 - eps_low, 1 + eps_high]
    convention   "paper" | "official"   optional, default paper (the CLI's --convention wins)

Values outside the mask are never read (padding may hold anything, NaN included); under it every value must be
finite. A plain-PyTorch dump: tutorials/09_check_your_loss.py."""

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

    def __post_init__(self):
        self.rows = self.mask.nonzero()[:, 0]  # [N] sequence index of each masked token (row-major order)

    def flat(self, x: Tensor) -> Tensor:
        """[B, T] -> the masked tokens [N]; [B] -> each token's sequence value [N]."""
        return x[self.mask] if x.dim() == 2 else x[self.rows]


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
    for key, value, allowed in (("weighting", weighting, EXPERT_WEIGHTINGS), ("convention", convention, CONVENTIONS)):
        if value not in allowed:
            raise DumpError(f"{where}: metadata {key}={value!r}: must be one of {', '.join(allowed)}")
    adv_rows = (on_rows | (mask & is_expert[:, None])) if weighting == "luffy" else on_rows  # [B, T]
    d = Dump(logp=_finite("logp", logp, where, mask), old_logp=_finite("old_logp", tensors["old_logp"], where, on_rows),
             mask=mask, is_expert=is_expert, loss=_finite("loss", tensors["loss"].reshape(()), where).item(),
             grad_logp=_finite("grad_logp", tensors["grad_logp"], where, mask),
             mu=_number(meta, "mu", None if weighting != "luffy" else 0.0, 0.0, 1.0, where), weighting=weighting,
             eps_low=_number(meta, "eps_low", 0.2, 0.0, 0.999999, where),
             eps_high=_number(meta, "eps_high", 0.2, 0.0, 1e9, where), convention=convention)
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
