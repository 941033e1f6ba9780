"""Metric logging of a run (rank 0): ``metrics.jsonl`` (one JSON object per logged step) and,
when tensorboard is installed, ``tensorboard/`` scalars. Every logger gets the same flat dict.
docs/logging.md describes the fields.

A term's loss is ``None`` at a step that had no target for it (no pair to contrast, no masked
patch, no MLM target): ``null`` in metrics.jsonl, no TensorBoard point, ``–`` on the console
(:func:`format_loss`); never 0.0, which would read as a perfect loss. A line's losses are the
means over the steps since the previous line (:class:`LossWindow`) that had targets.

A run that resumes at step ``s`` (``runtime.resume``, an elastic restart, a requeue after a
preemption) first drops what was logged after ``s`` by the attempt it continues, in both logs, so
that each step is logged once: ``metrics.jsonl`` is rewritten atomically without those lines, and
tensorboard's ``purge_step`` hides the events past ``s``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write_text


def _tensorboard(out: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"), purge_step=purge_step)


def drop_lines_after(path: Path, step: int) -> int:
    """Rewrite ``path`` (metrics.jsonl) without the lines of steps after ``step`` (and without a
    torn last line); returns how many lines were dropped. Nothing is written when none is."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            s = json.loads(line).get("step")
        except (ValueError, AttributeError):
            dropped += 1  # a line cut by a kill mid-write
            continue
        if isinstance(s, int) and s > step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        atomic_write_text(path, "".join(l + "\n" for l in kept))
    return dropped


def format_loss(v: float | None) -> str:
    """A loss for the console: ``1.234``, or ``–`` when the step (or window) had no target for it."""
    return "–" if v is None else f"{v:.3f}"


class LossWindow:
    """The mean of each loss over the steps added since the last :meth:`take`, counting only the
    steps that had targets for it (a ``None`` value is left out); a loss that no step of the
    window had is ``None``. Its state goes in the checkpoint, so a resumed run's first line
    covers the same steps as it would have without the stop."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, losses: dict[str, float | None]) -> None:
        for k, v in losses.items():
            self.sums.setdefault(k, 0.0)
            self.counts.setdefault(k, 0)
            if v is not None:
                self.sums[k] += float(v)
                self.counts[k] += 1

    def take(self) -> dict[str, float | None]:
        """The window's means (keys in the order first added), and a new empty window."""
        out = {k: self.sums[k] / self.counts[k] if self.counts[k] else None for k in self.sums}
        self.sums, self.counts = {}, {}
        return out

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.sums = {str(k): float(v) for k, v in (state.get("sums") or {}).items()}
        self.counts = {str(k): int(state.get("counts", {}).get(k, 0)) for k in self.sums}


class MetricLogger:
    """Appends step lines to ``out/metrics.jsonl`` and tensorboard scalars (``loss/<key>``).

    ``resume_step``: the step this run continues from (0 for a new run); lines logged after it by
    an earlier attempt are dropped first (see the module's note)."""

    def __init__(self, out: Path, resume_step: int = 0) -> None:
        self.out = Path(out)
        self.dropped = drop_lines_after(self.out / "metrics.jsonl", resume_step)
        self.f = open(self.out / "metrics.jsonl", "a", encoding="utf-8")
        self.tb = _tensorboard(self.out, resume_step + 1 if resume_step else None)

    def write(self, line: dict, losses: dict[str, float | None]) -> None:
        """One logged step: ``line`` (with ``step``; a loss without targets is ``None``, written
        ``null``) to metrics.jsonl; ``losses`` (``None`` ones left out) and ``samples_per_s`` to
        tensorboard."""
        self.f.write(json.dumps(line) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in losses.items():
                if v is not None:
                    self.tb.add_scalar(f"loss/{k}", v, line["step"])
            self.tb.add_scalar("samples_per_s", line["samples_per_s"], line["step"])

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()
