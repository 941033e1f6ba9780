"""torch.distributed helpers: who am I, gathering rows with gradient, global counts.

maskkit uses torchrun + DistributedDataParallel; nothing here launches processes itself.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun set up (nccl on CUDA, gloo on CPU); single process otherwise."""
    if not under_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))


def process_group_size() -> int:
    """Ranks in the initialised default process group; 1 when there is none."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def shutdown() -> None:
    """Tear down the process group this process joined, if any: a process that leaves with it
    alive (after an error, say) is aborted by the backend's threads ("terminate called ...")."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class Gatherer:
    """Collectives the model needs; the identity in a single process."""

    def __init__(self, info: DistInfo) -> None:
        self.info = info

    @classmethod
    def local(cls) -> Gatherer:
        """The single-process gatherer (every collective is the identity)."""
        return cls(DistInfo())

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate ``x [n_r, ...]`` of every rank (rank order), keeping the local gradient.

        Two collectives on every call whatever ``n_r`` is (0 included): the sizes, then the rows
        padded to the largest size; callers must call it on every rank at the same point."""
        if not self.info.enabled:
            return x
        import torch.distributed.nn.functional as dfn

        n = torch.tensor([x.shape[0]], device=x.device)
        sizes = [torch.zeros_like(n) for _ in range(self.info.world)]
        dist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        pad = max(sizes) - x.shape[0]
        xp = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
        with warnings.catch_warnings():  # its suggested successor is private (torch.distributed._functional_collectives)
            warnings.simplefilter("ignore", FutureWarning)
            parts = dfn.all_gather(xp)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def mean_denominator(self, count: torch.Tensor) -> torch.Tensor:
        """Global ``count`` divided by the world size, so that DDP's gradient average and the
        mean of per-rank losses both equal the global mean."""
        if not self.info.enabled:
            return count
        c = count.detach().clone().float()
        dist.all_reduce(c)
        return c / self.info.world

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a (detached) tensor (the identity in one process)."""
        if not self.info.enabled:
            return value.detach()
        v = value.detach().clone().float()
        dist.all_reduce(v)
        return v

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of a (detached) scalar over ranks, for logging."""
        if not self.info.enabled:
            return value
        v = value.detach().clone().float()
        dist.all_reduce(v)
        return v / self.info.world


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """The sum of ``x`` over every rank, differentiable (the gradient is summed over ranks too);
    ``x`` itself when no process group is initialised. One collective per call."""
    if process_group_size() == 1:
        return x
    import torch.distributed.nn.functional as dfn

    with warnings.catch_warnings():  # its suggested successor is private (torch.distributed._functional_collectives)
        warnings.simplefilter("ignore", FutureWarning)
        return dfn.all_reduce(x)
