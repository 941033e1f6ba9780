"""Metric logging of a run (rank 0): ``metrics.jsonl`` (one JSON object per logged step) and,
when tensorboard is installed, ``tensorboard/`` scalars. Every logger gets the same flat dict."""

from __future__ import annotations

import json
from pathlib import Path


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


class MetricLogger:
    """Appends step lines to ``out/metrics.jsonl`` and tensorboard scalars (``loss/<key>``)."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.f = open(self.out / "metrics.jsonl", "a", encoding="utf-8")
        self.tb = _tensorboard(self.out)

    def write(self, line: dict, losses: dict[str, float]) -> None:
        """One logged step: ``line`` (with ``step``) to metrics.jsonl; ``losses`` and
        ``samples_per_s`` to tensorboard."""
        self.f.write(json.dumps(line) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in losses.items():
                self.tb.add_scalar(f"loss/{k}", v, line["step"])
            self.tb.add_scalar("samples_per_s", line["samples_per_s"], line["step"])

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()
