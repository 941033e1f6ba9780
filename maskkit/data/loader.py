"""The training DataLoader: a resumable, rank-aware batch sampler over ``torch.utils.data.DataLoader``.

Decoding, resizing, tokenization and entity alignment run in the dataset's ``__getitem__``
(in worker processes when ``data.num_workers > 0``), and their text results are kept per record;
the collator only stacks. The order is fixed by the seed: epoch ``e`` is the permutation of
``DistributedSampler(shuffle=True, seed=seed, drop_last=True)`` at epoch ``e``, cut into batches,
so a run resumed at (epoch, batch) sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from ..distributed import DistInfo
from ..errors import MaskkitError


class ResumableBatchSampler(Sampler[list[int]]):
    """Endless batches of dataset indices for one rank, starting at global batch ``start``.

    ``per_epoch`` batches per epoch (``len(DistributedSampler) // batch``); global batch ``g`` is
    batch ``g % per_epoch`` of epoch ``g // per_epoch``. :meth:`position` converts.
    """

    def __init__(self, n: int, batch: int, seed: int, info: DistInfo, start: int = 0) -> None:
        self.sampler = DistributedSampler(range(n), num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed, drop_last=True)
        if len(self.sampler) < batch:
            raise MaskkitError(f"train.batch_size: {batch} per process is more than the {len(self.sampler)} samples each process gets")
        self.batch = batch
        self.per_epoch = len(self.sampler) // batch
        self.start = start

    def position(self, global_batch: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of a global batch number."""
        return divmod(global_batch, self.per_epoch)

    def _epoch_order(self, epoch: int) -> list[int]:
        """This rank's dataset indices of ``epoch``, in order (batches are consecutive slices)."""
        self.sampler.set_epoch(epoch)
        return list(self.sampler)

    def batch_indices(self, global_batch: int) -> list[int]:
        """The dataset indices of one global batch (what training reads at that batch)."""
        epoch, b = self.position(global_batch)
        return self._epoch_order(epoch)[b * self.batch:(b + 1) * self.batch]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, b = self.position(self.start)
        while True:
            idx = self._epoch_order(epoch)  # once per epoch, not per batch
            for k in range(b, self.per_epoch):
                yield idx[k * self.batch:(k + 1) * self.batch]
            epoch, b = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs it for len(loader), which we never take
        return 2**62


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and ``random`` in a worker from the seed torch gave it (torch's recipe)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset, collate, sampler: ResumableBatchSampler, num_workers: int = 0, pin_memory: bool = False,
                prefetch_factor: int = 4, seed: int = 0) -> DataLoader:
    """A DataLoader over ``dataset`` in ``sampler``'s order; workers are persistent and seeded."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(persistent_workers=True, prefetch_factor=prefetch_factor, worker_init_fn=seed_worker) if num_workers else {}
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=pin_memory, generator=g, **kw)


class LoaderWorkerDied(MaskkitError):
    """A DataLoader worker process died (killed by the out-of-memory killer, a signal, a crash).
    Only the rank whose worker died sees it, so every rank prints it (``rank_local``)."""

    rank_local = True


# how torch's DataLoader reports a worker that died (its SIGCHLD handler and its queue check)
_WORKER_DIED = "DataLoader worker (pid"


def worker_death(exc: BaseException, loader_iter, num_workers: int, prefetch_factor: int, batch: int) -> LoaderWorkerDied | None:
    """The one-line error for ``exc`` when it is torch's report of a dead DataLoader worker of
    ``loader_iter`` (``batch``: the global micro-batch being read); ``None`` for any other exception."""
    if not isinstance(exc, RuntimeError) or not str(exc).startswith(_WORKER_DIED):
        return None
    import signal

    codes = sorted({w.exitcode for w in getattr(loader_iter, "_workers", ()) if w.exitcode not in (None, 0)})
    causes = [f"killed by {signal.Signals(-c).name}" if c < 0 and -c in signal.Signals._value2member_map_ else f"exit status {c}"
              for c in codes] or [str(exc).splitlines()[0].rstrip(". ")]
    return LoaderWorkerDied(
        f"data.num_workers: a DataLoader worker process died ({', '.join(causes)}) while reading batch {batch}; SIGKILL is "
        f"usually the out-of-memory killer: lower data.num_workers (now {num_workers}) or data.prefetch_factor (now "
        f"{prefetch_factor}), or give the job more memory (SIGBUS: more shared memory, e.g. docker --shm-size); the "
        "checkpoints written so far are intact: runtime.resume=latest continues from the last one")
