"""The training DataLoader: a resumable, rank-aware batch sampler over ``torch.utils.data.DataLoader``.

Decoding, resizing, tokenization and entity alignment run in the dataset's ``__getitem__``
(in worker processes when ``data.num_workers > 0``), and their text results are kept per record;
the collator only stacks. The order is fixed by the seed (:class:`MixtureBatchSampler`, the one
training sampler: with one source of weight 1, epoch ``e`` is the permutation of
``DistributedSampler(shuffle=True, seed=seed, drop_last=True)`` at epoch ``e``, cut into
batches), so a run resumed at (epoch, batch) sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..distributed import DistInfo
from ..errors import MaskkitError


#: the most samples one epoch of the mixture may draw when the corpus has fewer training records
#: (an epoch's order is materialised: about 40 bytes a sample, so 2^24 is under 1 GB per process)
MAX_EPOCH_SAMPLES = 2**24


def epoch_draws(sizes: list[int], weights: list[float]) -> list[int]:
    """Samples of each source one epoch draws: ``round(n_k w_k)``, at least 1 for a non-empty
    source of weight > 0 (:class:`MixtureBatchSampler`)."""
    m = [int(round(n * w)) if n else 0 for n, w in zip(sizes, weights)]
    return [max(k, 1) if n and w > 0 else k for k, n, w in zip(m, sizes, weights)]


def check_epoch(sizes: list[int], weights: list[float], labels: list[str] | None = None) -> list[int]:
    """:func:`epoch_draws`, refused in one line when an epoch would draw more than
    ``max(MAX_EPOCH_SAMPLES, sum(sizes))`` samples (a weight of 1e9 would materialise 1e9 indices
    per training record): the line names the source (``labels[k]``: ``data.sources[0] (csv)``), its
    weight, its training records and the epoch's size. A corpus of more records than the bound
    draws each once at weight 1 and is never refused."""
    limit = max(MAX_EPOCH_SAMPLES, sum(int(n) for n in sizes))
    draws = [n * w if n and w > 0 else 0.0 for n, w in zip(sizes, weights)]
    if sum(draws) <= limit:
        return epoch_draws(sizes, weights)
    k = max(range(len(sizes)), key=lambda j: draws[j])
    name = labels[k] if labels else f"source {k}"
    raise MaskkitError(f"{name}.weight: {weights[k]:g} makes an epoch draw {sum(draws):.4g} samples ({draws[k]:.4g} of its "
                       f"{sizes[k]} training records), above the {limit} an epoch may draw (docs/data.md); lower the weight "
                       f"(a source's share of the samples is n x weight over the sum)")


class MixtureBatchSampler(Sampler[list[int]]):
    """Endless batches over several sources (indices into their concatenation), for one rank,
    starting at global batch ``start``; seeded, resumable and exact under DDP.

    Weights behave as open_clip's ``--train-data-upsampling-factors``: a source's share of the
    samples drawn is proportional to its size times its weight, ``n_k w_k / sum_j n_j w_j``. An
    epoch draws ``m_k = round(n_k w_k)`` samples of source ``k``: a source of weight 1 gives each of
    its samples once; otherwise the next ``m_k`` of an endless stream of seeded permutations of the
    source (``w < 1``: a different subset each epoch, every sample once before any repeats;
    ``w > 1``: each sample ``w`` times on average). The epoch's ``M = sum m_k`` indices are shuffled
    by ``torch.randperm(M)`` seeded ``seed + epoch`` and dealt to ranks as
    ``DistributedSampler(drop_last=True)`` deals them, then cut into batches. With one source of
    weight 1 this is exactly ``DistributedSampler(shuffle=True, seed=seed, drop_last=True)``'s
    order at each epoch.

    ``per_epoch`` batches per epoch; global batch ``g`` is batch ``g % per_epoch`` of epoch
    ``g // per_epoch`` (:meth:`position`). Raises :class:`~maskkit.errors.MaskkitError` when a
    rank's share of an epoch is smaller than ``batch``, and when the weights make an epoch larger
    than :data:`MAX_EPOCH_SAMPLES` (:func:`check_epoch`; ``labels`` name the sources there).
    """

    def __init__(self, sizes: list[int], weights: list[float], batch: int, seed: int, info: DistInfo, start: int = 0,
                 labels: list[str] | None = None) -> None:
        if len(sizes) != len(weights):
            raise MaskkitError(f"{len(sizes)} sources but {len(weights)} weights")
        self.sizes = [int(n) for n in sizes]
        self.weights = [float(w) for w in weights]
        self.m = check_epoch(self.sizes, self.weights, labels)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)
        self.total = sum(self.m)
        self.world, self.rank, self.batch, self.seed, self.start = info.world, info.rank, batch, seed, start
        self.per_rank = self.total // self.world  # DistributedSampler(drop_last=True)
        if self.per_rank < batch:
            raise MaskkitError(f"train.batch_size: {batch} per process is more than the {self.per_rank} samples each process gets")
        self.per_epoch = self.per_rank // batch
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def position(self, global_batch: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of a global batch number."""
        return divmod(global_batch, self.per_epoch)

    def _stream(self, k: int, start: int, count: int) -> np.ndarray:
        """Elements ``start .. start+count-1`` of source ``k``'s stream of seeded permutations."""
        n = self.sizes[k]
        out = []
        pos = start
        while pos < start + count:
            cycle, off = divmod(pos, n)
            perm = np.random.default_rng([self.seed, k, cycle]).permutation(n)
            take = min(n - off, start + count - pos)
            out.append(perm[off:off + take])
            pos += take
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(global dataset indices, their source) of ``epoch``, before dealing to ranks."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        idx, src = [], []
        for k, (n, m) in enumerate(zip(self.sizes, self.m)):
            if not m:
                continue
            local = np.arange(n) if m == n else self._stream(k, epoch * m, m)
            idx.append(local + self.offsets[k])
            src.append(np.full(m, k))
        idx, src = np.concatenate(idx), np.concatenate(src)
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        perm = torch.randperm(self.total, generator=g).numpy()
        self._cache = (epoch, idx[perm], src[perm])
        return self._cache[1], self._cache[2]

    def _rank_order(self, epoch: int) -> np.ndarray:
        idx, _ = self.epoch_order(epoch)
        return idx[: self.per_rank * self.world][self.rank::self.world]

    def batch_indices(self, global_batch: int) -> list[int]:
        """This rank's dataset indices of one global batch (what training reads at that batch)."""
        epoch, b = self.position(global_batch)
        return self._rank_order(epoch)[b * self.batch:(b + 1) * self.batch].tolist()

    def batch_sources(self, global_batch: int) -> np.ndarray:
        """Samples of each source in one global batch, over every rank: int ``[sources]``."""
        epoch, b = self.position(global_batch)
        _, src = self.epoch_order(epoch)
        span = self.batch * self.world  # rank r's batch b is positions r + world*(b*B .. b*B+B-1)
        return np.bincount(src[b * span:(b + 1) * span], minlength=len(self.sizes))

    def samples_seen(self, global_batches: int) -> np.ndarray:
        """Samples of each source read by every rank in the first ``global_batches`` batches: int ``[sources]``."""
        full, rest = self.position(global_batches)
        span = self.batch * self.world
        seen = np.zeros(len(self.sizes), np.int64)
        for e in range(full + (1 if rest else 0)):
            _, src = self.epoch_order(e)
            upto = (self.per_epoch if e < full else rest) * span
            seen += np.bincount(src[:upto], minlength=len(self.sizes))
        return seen

    def __iter__(self) -> Iterator[list[int]]:
        epoch, b = self.position(self.start)
        while True:
            idx = self._rank_order(epoch)  # once per epoch, not per batch
            for k in range(b, self.per_epoch):
                yield idx[k * self.batch:(k + 1) * self.batch].tolist()
            epoch, b = epoch + 1, 0

    def __len__(self) -> int:  # endless
        return 2**62


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and ``random`` in a worker from the seed torch gave it (torch's recipe)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def init_worker(worker_id: int) -> None:
    """A DataLoader worker's start: :func:`seed_worker`, and the stop signals left to the main
    process (:func:`~maskkit.training.preemption.shield_loader_worker`: a scheduler's SIGTERM to
    every process of the job must not kill the workers before the main process checkpoints)."""
    from ..training.preemption import shield_loader_worker

    seed_worker(worker_id)
    shield_loader_worker()


def make_loader(dataset, collate, sampler: MixtureBatchSampler, num_workers: int = 0, pin_memory: bool = False,
                prefetch_factor: int = 4, seed: int = 0) -> DataLoader:
    """A DataLoader over ``dataset`` (the corpus's concatenated sources) reading the batches of
    ``sampler`` (the :class:`MixtureBatchSampler` of :func:`maskkit.train.make_sampler`; any
    batch sampler of dataset indices works), collated by ``collate``; ``num_workers`` worker
    processes, persistent, seeded from ``seed`` and leaving the stop signals to the main process
    (:func:`init_worker`)."""
    g = torch.Generator().manual_seed(seed)
    kw = dict(persistent_workers=True, prefetch_factor=prefetch_factor, worker_init_fn=init_worker) if num_workers else {}
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                      pin_memory=pin_memory, generator=g, **kw)


class LoaderWorkerDied(MaskkitError):
    """A DataLoader worker process died (killed by the out-of-memory killer, a signal, a crash).
    Only the rank whose worker died sees it, so every rank prints it (``rank_local``)."""

    rank_local = True


# how torch's DataLoader reports a worker that died (its SIGCHLD handler and its queue check)
_WORKER_DIED = "DataLoader worker (pid"


def worker_death(exc: BaseException, loader_iter, num_workers: int, prefetch_factor: int, batch: int,
                 checkpoints: str = "") -> LoaderWorkerDied | None:
    """The one-line error for ``exc`` when torch's report of a dead DataLoader worker of
    ``loader_iter`` is it or lies under it (torch raises it from its SIGCHLD handler wherever the
    main process is: inside ``torch.save`` of a checkpoint it comes back under the writer's
    ``unexpected pos`` error); ``batch``: the global micro-batch being read; ``checkpoints``: what
    the message says of the run's checkpoints and how to continue. ``None`` for any other exception."""
    from ..errors import exception_chain

    exc = next((e for e in exception_chain(exc) if isinstance(e, RuntimeError) and str(e).startswith(_WORKER_DIED)), None)
    if exc is None:
        return None
    import signal

    codes = sorted({w.exitcode for w in getattr(loader_iter, "_workers", ()) if w.exitcode not in (None, 0)})
    causes = [f"killed by {signal.Signals(-c).name}" if c < 0 and -c in signal.Signals._value2member_map_ else f"exit status {c}"
              for c in codes] or [str(exc).splitlines()[0].rstrip(". ")]
    return LoaderWorkerDied(
        f"data.num_workers: a DataLoader worker process died ({', '.join(causes)}) at batch {batch}; SIGKILL is "
        f"usually the out-of-memory killer: lower data.num_workers (now {num_workers}) or data.prefetch_factor (now "
        f"{prefetch_factor}), or give the job more memory (SIGBUS: more shared memory, e.g. docker --shm-size)"
        + (f"; {checkpoints}" if checkpoints else ""))
