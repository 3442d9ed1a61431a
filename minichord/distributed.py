"""Data parallelism on torch.distributed (`torchrun --nproc-per-node N -m minichord.cli train ...`), exact by design:
each rank samples its share of a step's prompts (whole groups) and trains on its share of the expert rows, with
the WHOLE batch's coefficients coef_t (`WholeBatch`) and the gradients summed over the ranks,

    L = sum_ranks sum_{t in rank} coef_t l_t = the one-process L,     grad = sum_ranks grad_rank

and the sampler draws each row's noise from the whole batch's stream (sampler.generate's `rows`). fsdp = true
trains an FSDP2 copy (`shard`); the full weights serve sampling, evaluation and checkpoints. Rank 0 writes files."""

import copy
import dataclasses
import json
import os

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, distribute_tensor

from minichord import losses


class RankError(RuntimeError):
    """A collective failed: another rank died, stopped answering (timeout) or hit an error of its own."""


def collective(op, *args, **kwargs):
    """torch.distributed's `op`, its failure (gloo: "Connection reset by peer") as one RankError line."""
    try:
        return op(*args, **kwargs)
    except RuntimeError as e:
        reason = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise RankError(f"rank {dist.get_rank()}: lost another rank ({reason}); every rank stops; the last saved "
                        f"checkpoint is kept") from None


@dataclasses.dataclass(frozen=True)
class Ranks:
    """This process's place among the data-parallel ranks; Ranks() is one process, and every method a no-op."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"  # where the small all-reduces run (NCCL: the rank's GPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, n: int, what: str) -> range:
        """This rank's contiguous share of n items (n a multiple of the number of ranks)."""
        if n % self.world:
            raise ValueError(f"{what}={n} cannot be split over {self.world} ranks: make it a multiple of the "
                             f"number of ranks (--nproc-per-node), so that every rank gets the same share")
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def gather(self, values: Tensor) -> Tensor:
        """`values` [n, ...] of every rank, concatenated along dim 0 in rank order (ranks may hold different n)."""
        if self.world == 1:
            return values
        sizes = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(self.world)]
        collective(dist.all_gather, sizes, torch.tensor([len(values)], device=values.device))
        padded = torch.cat([values, values.new_zeros(int(max(sizes)) - len(values), *values.shape[1:])])
        parts = [torch.zeros_like(padded) for _ in range(self.world)]
        collective(dist.all_gather, parts, padded)
        return torch.cat([p[:int(n)] for p, n in zip(parts, sizes)])

    def sum(self, values: Tensor) -> Tensor:
        """The sum over ranks (in place, returned)."""
        if self.world > 1:
            collective(dist.all_reduce, values)
        return values

    def sum_grads(self, model) -> None:
        """grad <- sum over ranks of grad, every parameter (a rank with no tokens adds zeros), in one flat buffer."""
        if self.world == 1:
            return
        params = list(model.parameters())
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        collective(dist.all_reduce, flat)
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            p.grad = g.view_as(p)  # a view of the reduced buffer: no second copy

    def any(self, flag: bool) -> bool:
        """True on every rank when it is True on one (a stop signal, a diverged check)."""
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item()) if self.world > 1 else flag

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Each value's mean over ranks: with equal shares, the whole batch's mean of a per-rank mean."""
        if self.world == 1 or not values:
            return values
        total = self.sum(torch.tensor(list(values.values()), dtype=torch.float64, device=self.device))
        return dict(zip(values, (total / self.world).tolist()))

    def barrier(self) -> None:
        if self.world > 1:
            collective(dist.barrier)


class WholeBatch:
    """The whole batch's token layout, all-gathered (one process: its own batch): each token's sequence place in
    the whole batch's order, side, and whether this rank holds it; `places` [M_all], every sequence's place, sorted."""

    def __init__(self, ranks: Ranks, batch, places: Tensor):  # batch: this rank's TokenBatch; places [M]
        tokens = torch.stack([places[batch.rows], batch.is_expert.long(), torch.full_like(batch.rows, ranks.rank)], 1)
        self.token_places, is_expert, rank = ranks.gather(tokens).unbind(1)  # [N_all] each
        self.is_expert, self.here = is_expert.bool(), rank == ranks.rank  # [N_all] each
        self.places = self.token_places.unique()  # [M_all], sorted: every sequence has a response token

    def coefficients(self, mb_places: Tensor, mu: float | None, cfg, dtype: torch.dtype) -> Tensor:
        """losses.coefficients of the (mini-)batch of sequences `mb_places` (sorted), for this rank's tokens [N_mb]."""
        in_mb = torch.isin(self.token_places, mb_places)  # [N_all]
        seq = torch.searchsorted(mb_places, self.token_places[in_mb])  # [N_mb_all]: sequence index in the mini-batch
        micro_ids = seq // cfg.micro_batch_seqs if cfg.micro_batch_seqs else None  # [N_mb_all]
        return losses.coefficients(self.is_expert[in_mb], seq, micro_ids, mu, cfg.loss, dtype)[self.here[in_mb]]


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """An FSDP2 copy of `model`: each layer, then the rest (embeddings, final norm, lm head), in dim-0 shards over
    the ranks; every group's gradients are summed (divide factor 1), as Ranks.sum_grads sums them."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    sharded = copy.deepcopy(model)
    for layer in sharded.layers:
        fully_shard(layer)
    fully_shard(sharded)
    for module in sharded.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # plain sums: gloo has no pre-multiplied sum
    return sharded


def gathered(value):
    """DTensors (in dicts too) as full tensors, every rank's shards gathered: a collective, so the
    ranks walk a dict in one order, its keys sorted (a state dict read from JSON may list them in another)."""
    if isinstance(value, dict):
        return {k: gathered(value[k]) for k in sorted(value, key=str)}
    return value.full_tensor() if isinstance(value, DTensor) else value


def load_shards(sharded: torch.nn.Module, weights: dict, optimizer_state: dict | None) -> dict | None:
    """Full `weights` into the FSDP copy's shards (in place); returns `optimizer_state` with each tensor of
    parameter i cut into shards like parameter i (AdamW's moments), to load into the sharded optimizer."""
    def cut(value: Tensor, like: DTensor) -> DTensor:  # every rank holds `value`: each keeps its shard, no messages
        return distribute_tensor(value.to(like.device, like.dtype), like.device_mesh, like.placements,
                                 src_data_rank=None)

    for name, p in sharded.state_dict().items():
        p.to_local().copy_(cut(weights[name], p).to_local())
    if optimizer_state is None:
        return None
    params = list(sharded.parameters())
    return {**optimizer_state, "state": {i: {k: cut(v, params[i]) if v.dim() else v for k, v in s.items()}
                                         for i, s in optimizer_state["state"].items()}}


def init_ranks(backend: str, device: torch.device, config: dict) -> Ranks:
    """Ranks from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), or Ranks() when it is absent; every rank's
    `config` must be the same. backend auto: NCCL on CUDA, gloo on the CPU; a rank on CUDA takes GPU LOCAL_RANK."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Ranks()
    if backend == "nccl" and device.type != "cuda":
        raise ValueError(f"dist_backend=nccl needs CUDA; this run's device is {device.type}: use dist_backend=gloo "
                         f"(or auto)")
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():  # a caller's own torchrun script may have made the group already
        dist.init_process_group(("nccl" if device.type == "cuda" else "gloo") if backend == "auto" else backend)
    ranks = Ranks(dist.get_rank(), dist.get_world_size(), str(device) if device.type == "cuda" else "cpu")
    configs: list = [None] * ranks.world  # ranks given different settings are refused (the first key that differs)
    collective(dist.all_gather_object, configs, json.dumps(config, sort_keys=True, default=str))
    for rank, other in enumerate(map(json.loads, configs)):
        if key := min((k for k in config.keys() | other.keys() if config.get(k) != other.get(k)), default=""):
            raise ValueError(f"rank {rank}'s {key}={other.get(key)!r} differs from rank {ranks.rank}'s "
                             f"{config.get(key)!r}: every rank must run the same command")
    return ranks
