"""Torch datasets over adapter tables and phantoms, the batch collator, and the skip policy.

A sample is a dict: ``image`` float ``[1, H, W]`` in [0, 1], ``report`` str or None, ``labels``
float ``[K]`` (NaN = unknown), ``id`` str, ``entity_spans`` list of (start, end) characters, and
for phantoms ``lesion`` bool ``[H, W]``. A file that fails to decode yields ``{"skipped": ...}``
under ``policy="skip"`` (the collator drops it and reports it) or raises under ``"raise"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import MaskkitError
from .images import DecodeError, read_image, resize
from .records import Table
from .tokenize import ReportTokenizer, entity_positions

_CONTENT = re.compile(r"X{2,}|[^A-Za-z]")


def clean_report(text: str | None) -> str | None:
    """The report, or None when it is empty or only de-identification marks (``XXXX``) and punctuation."""
    if text is None:
        return None
    text = " ".join(text.split())
    return text if _CONTENT.sub("", text) else None


def entity_spans(reports: list[str | None], ner) -> list[list[tuple[int, int]]]:
    """Character spans of the entities of each report, NER run once per distinct text (and
    saved, for a :class:`~maskkit.data.ner.CachedNER`); no NER or no report gives none."""
    texts = sorted({r for r in reports if r})
    spans = dict(zip(texts, ner(texts))) if ner is not None and texts else {}
    if ner is not None and hasattr(ner, "save"):
        ner.save()
    return [[(s, e) for s, e, _ in spans.get(r, [])] if r else [] for r in reports]


class SkipLimitExceeded(MaskkitError):
    """Too large a fraction of the images failed to decode."""


@dataclass
class SkipReport:
    """Counts decoded and skipped files; stops the run past ``max_fraction`` (after ``min_seen``)."""

    max_fraction: float = 0.05
    min_seen: int = 50
    seen: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def update(self, n_ok: int, skipped: Sequence[tuple[str, str]]) -> None:
        self.seen += n_ok + len(skipped)
        self.skipped.extend(skipped)
        if self.seen >= self.min_seen and len(self.skipped) > self.max_fraction * self.seen:
            path, why = self.skipped[-1]
            raise SkipLimitExceeded(
                f"{len(self.skipped)} of {self.seen} images failed to decode ({len(self.skipped) / self.seen:.1%} > "
                f"data.max_skip_fraction={self.max_fraction}); last: {why}"
            )

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.seen} images read, none skipped"
        lines = [f"{len(self.skipped)} of {self.seen} images skipped:"]
        lines += [f"  {why}" for _, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more")
        return "\n".join(lines)


class XrayDataset(torch.utils.data.Dataset):
    """Images of an adapter :class:`Table`, decoded (or read from a prepared cache) and resized."""

    def __init__(self, table: Table, image_size: int = 224, policy: str = "skip", ner=None, cache: str | Path | None = None) -> None:
        if policy not in ("skip", "raise"):
            raise MaskkitError(f"data.decode_policy: '{policy}' is not a policy; expected skip or raise")
        self.table, self.image_size, self.policy = table, image_size, policy
        self.reports = [clean_report(r.report) for r in table.records]
        self.entity_spans = entity_spans(self.reports, ner)
        self.cache = None
        if cache is not None:
            from .cache import PreparedCache

            self.cache = PreparedCache(cache, expect_size=image_size, expect_ids=[r.id for r in table.records])

    def __len__(self) -> int:
        return len(self.table.records)

    def label_tensor(self, i: int) -> torch.Tensor:
        rec = self.table.records[i]
        return torch.tensor([rec.labels.get(n, math.nan) for n in self.table.label_names], dtype=torch.float32)

    def load_image(self, i: int) -> np.ndarray:
        if self.cache is not None:
            return self.cache.image(self.table.records[i].id)
        rec = self.table.records[i]
        if rec.image_path is None:
            raise DecodeError(f"{rec.id}: record has no image")
        return resize(read_image(rec.image_path), self.image_size)

    def __getitem__(self, i: int) -> dict:
        rec = self.table.records[i]
        try:
            img = self.load_image(i)
        except DecodeError as exc:
            if self.policy == "raise":
                raise
            return {"skipped": (rec.image_path or rec.id, str(exc)), "index": i}
        return {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None], "report": self.reports[i],
                "labels": self.label_tensor(i), "id": rec.id, "index": i, "entity_spans": self.entity_spans[i]}


class PhantomDataset(torch.utils.data.Dataset):
    """``n`` phantoms of one seed (sample ``i`` is generator index ``offset + i``), with NER spans."""

    def __init__(self, n: int, seed: int = 0, image_size: int = 96, offset: int = 0, ner=None, p_unpaired: float = 0.2) -> None:
        from .phantoms import LABELS, PhantomGenerator

        self.gen = PhantomGenerator(seed, image_size, p_unpaired=p_unpaired)
        self.n, self.offset, self.label_names = n, offset, LABELS
        self._items: dict[int, object] = {}
        self.reports = [clean_report(self._phantom(i).report) for i in range(n)]
        self.entity_spans = entity_spans(self.reports, ner)

    def _phantom(self, i: int):
        p = self._items.get(i)
        if p is None:
            p = self._items[i] = self.gen[self.offset + i]
        return p

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        p = self._phantom(i)
        return {"image": torch.from_numpy(p.image)[None], "report": self.reports[i],
                "labels": torch.tensor([p.labels[n] for n in self.label_names]), "id": f"phantom-{self.gen.seed}-{self.offset + i}",
                "index": i, "entity_spans": self.entity_spans[i], "lesion": torch.from_numpy(p.lesion_mask)}


class Collator:
    """Stack samples into a batch, tokenize reports and map entity spans to token positions.

    Batch: ``images [B, 1, H, W]``, ``text [B, L]`` ids, ``text_valid [B, L]``, ``paired [B]``
    (has a report), ``entities [B, L]``, ``labels [B, K]``, ``ids``, ``index [B]``, ``skipped``
    (list of (file, reason)), and ``lesion [B, H, W]`` when every sample has one.
    """

    def __init__(self, tokenizer: ReportTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict]) -> dict:
        skipped = [s["skipped"] for s in samples if "skipped" in s]
        ok = [s for s in samples if "skipped" not in s]
        enc = self.tokenizer([s["report"] for s in ok])
        L = enc.ids.shape[1]
        ents = torch.stack([entity_positions(sp, s["entity_spans"], L) for sp, s in zip(enc.spans, ok)]) if ok else torch.zeros(0, L, dtype=torch.bool)
        batch = {
            "images": torch.stack([s["image"] for s in ok]) if ok else torch.zeros(0),
            "text": enc.ids, "text_valid": enc.valid,
            "paired": torch.tensor([s["report"] is not None for s in ok], dtype=torch.bool),
            "entities": ents,
            "labels": torch.stack([s["labels"] for s in ok]) if ok else torch.zeros(0),
            "ids": [s["id"] for s in ok], "index": torch.tensor([s["index"] for s in ok], dtype=torch.long),
            "reports": [s["report"] for s in ok], "entity_spans": [s["entity_spans"] for s in ok],
            "skipped": skipped,
        }
        if ok and all("lesion" in s for s in ok):
            batch["lesion"] = torch.stack([s["lesion"] for s in ok])
        return batch
