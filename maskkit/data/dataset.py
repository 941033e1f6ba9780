"""Torch datasets over adapter tables and phantoms, the batch collator, and the skip policy.

A sample is a dict: ``image`` float ``[1, H, W]`` in [0, 1], ``report`` str or None, ``labels``
float ``[K]`` (NaN = unknown), ``id`` str, ``entity_spans`` list of (start, end) characters, and
for phantoms ``lesion`` bool ``[H, W]``. A dataset given a ``tokenizer`` adds the report's token
fields (``text_ids``, ``text_valid``, ``entities`` ``[L]``), computed once per record
and kept, so that batches only stack them.

The skip policy: a file that fails to decode raises under ``policy="raise"``; under ``"skip"``
it yields ``{"skipped": [(file, reason)], "index": i}`` with no image (``on_skip="drop"``:
evaluation, where the batch former drops it) or, for training (``on_skip="replace"``), the next
record that decodes, with the skipped files listed under ``skipped``, so a training batch always
holds ``batch_size`` samples and every rank runs the same steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import MaskkitError
from .images import DecodeError, read_image, resize
from .records import Table, has_content
from .tokenize import TextTokenizer, entity_positions

def clean_report(text: str | None) -> str | None:
    """The report with whitespace collapsed, or None when it has no content
    (:func:`maskkit.data.records.has_content`: empty, or only de-identification marks and punctuation)."""
    if text is None or not has_content(text):
        return None
    return " ".join(text.split())


def entity_spans(reports: list[str | None], ner) -> list[list[tuple[int, int]]]:
    """Character spans of the entities of each report, NER run once per distinct text (and
    saved, for a :class:`~maskkit.data.ner.CachedNER`); no NER or no report gives none."""
    texts = sorted({r for r in reports if r})
    spans = dict(zip(texts, ner(texts))) if ner is not None and texts else {}
    from .ner import CachedNER

    if isinstance(ner, CachedNER):
        ner.save()
    return [[(s, e) for s, e, _ in spans.get(r, [])] if r else [] for r in reports]


def encode_report(tokenizer: TextTokenizer, report: str | None, spans: Sequence[tuple[int, int]]) -> dict:
    """The token fields of one report: ``text_ids`` long ``[L]``, ``text_valid`` bool ``[L]``,
    ``entities`` bool ``[L]`` (positions overlapping an entity span, special tokens never). A report's identity (which
    rows hold the same report) is not a field: the model derives it from the token ids
    (:func:`maskkit.model.xlip.report_keys`)."""
    enc = tokenizer([report])
    L = enc.ids.shape[1]
    return {"text_ids": enc.ids[0], "text_valid": enc.valid[0], "entities": entity_positions(enc.spans[0], list(spans), L) & ~enc.special[0]}


class ReportDataset:
    """The interface of maskkit's datasets (:class:`XrayDataset`, :class:`PhantomDataset`; what an
    adapter's ``dataset`` hook returns, :mod:`maskkit.data.adapters`): ``reports`` and
    ``entity_spans`` per sample, :attr:`ids` in order, :meth:`drop_reports`, and token fields of
    each record computed on first use and kept (per DataLoader worker)."""

    tokenizer: TextTokenizer | None
    reports: list[str | None]
    entity_spans: list[list]
    _encoded: dict[int, dict]

    @property
    def ids(self) -> list[str]:
        """Every sample's id, in order (without decoding an image)."""
        raise NotImplementedError

    def drop_reports(self) -> None:
        """Make every sample image-only: no report, no entities, no cached token fields (a source
        of ``role: image_only``)."""
        self.reports = [None] * len(self.reports)
        self.entity_spans = [[] for _ in self.reports]
        self._encoded.clear()

    def _text_fields(self, i: int) -> dict:
        if self.tokenizer is None:
            return {}
        got = self._encoded.get(i)
        if got is None:
            got = self._encoded[i] = encode_report(self.tokenizer, self.reports[i], self.entity_spans[i])
        return got


class SkipLimitExceeded(MaskkitError):
    """Too large a fraction of the images failed to decode; ``path``: the last file that failed, when known."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


@dataclass
class SkipReport:
    """Counts images read and files skipped; stops the run past ``max_fraction``.

    The check runs once ``min_seen`` images were read, and always at the end (``final``), so a short
    run on broken data stops too. Under DDP the recipe adds every rank's counts
    (:meth:`count` with all-reduced numbers) so that every rank decides alike; :meth:`record`
    keeps this process's file list for the summary. :meth:`update` does all three in one process.
    """

    max_fraction: float = 0.05
    min_seen: int = 20
    seen: int = 0
    n_skipped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def record(self, skipped: Sequence[tuple[str, str]]) -> None:
        self.skipped.extend(skipped)

    def count(self, seen: int, n_skipped: int) -> None:
        self.seen += int(seen)
        self.n_skipped += int(n_skipped)

    def check(self, final: bool = False) -> None:
        if (final or self.seen >= self.min_seen) and self.n_skipped > self.max_fraction * self.seen:
            last = self.skipped[-1][1] if self.skipped else "(on another rank)"
            raise SkipLimitExceeded(
                f"{self.n_skipped} of {self.seen} images failed to decode ({self.n_skipped / self.seen:.1%} > "
                f"data.max_skip_fraction={self.max_fraction}); last: {last}")

    def update(self, n_ok: int, skipped: Sequence[tuple[str, str]]) -> None:
        self.record(skipped)
        self.count(n_ok + len(skipped), len(skipped))
        self.check()

    def state_dict(self) -> dict:
        """The counts and this process's skipped files (each once, with how often it was read), for
        a checkpoint: ``{"seen", "n_skipped", "files": [[path, reason, reads], ...]}``."""
        files: dict[str, list] = {}
        for path, why in self.skipped:
            files.setdefault(path, [path, why, 0])[2] += 1
        return {"seen": self.seen, "n_skipped": self.n_skipped, "files": list(files.values())}

    def load_state_dict(self, state: dict, files: bool = True) -> None:
        """Continue from a :meth:`state_dict` (a resumed run counts the whole run); ``files``: also
        take its file list (the process that wrote it). A missing entry counts 0 (checkpoints
        written before maskkit saved these counts)."""
        self.seen = int(state.get("seen", 0))
        self.n_skipped = int(state.get("n_skipped", 0))
        self.skipped = [(str(p), str(why)) for p, why, k in state.get("files", []) for _ in range(int(k))] if files else []

    def summary(self) -> str:
        if not self.n_skipped:
            return f"{self.seen} images read, none skipped"
        reads: dict[str, list] = {}
        for path, why in self.skipped:
            reads.setdefault(path, [why, 0])[1] += 1
        lines = [f"{self.n_skipped} of {self.seen} images skipped ({len(reads)} files on this process):"]
        lines += [f"  {why}" + (f" (read {k} times)" if k > 1 else "") for why, k in list(reads.values())[:20]]
        if len(reads) > 20:
            lines.append(f"  ... and {len(reads) - 20} more files")
        return "\n".join(lines)


class XrayDataset(ReportDataset, torch.utils.data.Dataset):
    """Images of an adapter :class:`Table`, decoded (or read from a prepared cache) and resized.

    ``on_skip``: ``drop`` (a failed file yields a ``skipped`` stub) or ``replace`` (the next
    record that decodes, at most ``max_replace`` tries; training). ``tokenizer`` adds token fields.
    ``raw_cache=True`` returns a cached image as uint8 ``[1, S, S]`` (0-255), a quarter of the bytes
    between a worker and the trainer; :func:`to_device` turns it into float in [0, 1] there.
    """

    def __init__(self, table: Table, image_size: int = 224, policy: str = "skip", ner=None, cache: str | Path | None = None,
                 tokenizer: TextTokenizer | None = None, on_skip: str = "drop", max_replace: int = 32,
                 raw_cache: bool = False) -> None:
        if policy not in ("skip", "raise"):
            raise MaskkitError(f"data.decode_policy: '{policy}' is not a policy; expected skip or raise")
        if on_skip not in ("drop", "replace"):
            raise MaskkitError(f"on_skip: '{on_skip}' is not a choice; expected drop or replace")
        self.table, self.image_size, self.policy = table, image_size, policy
        self.tokenizer, self.on_skip, self.max_replace, self.raw_cache = tokenizer, on_skip, max_replace, raw_cache
        self._encoded: dict[int, dict] = {}
        self.reports = [clean_report(r.report) for r in table.records]
        self.entity_spans = entity_spans(self.reports, ner)
        self.cache = None
        if cache is not None:
            from .cache import PreparedCache

            self.cache = PreparedCache(cache, expect_size=image_size, expect_ids=[r.id for r in table.records])

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.table.records]

    def __len__(self) -> int:
        return len(self.table.records)

    def label_tensor(self, i: int) -> torch.Tensor:
        rec = self.table.records[i]
        return torch.tensor([rec.labels.get(n, math.nan) for n in self.table.label_names], dtype=torch.float32)

    def load_image(self, i: int) -> np.ndarray:
        if self.cache is not None:
            rid = self.table.records[i].id
            return self.cache.raw(rid) if self.raw_cache else self.cache.image(rid)
        rec = self.table.records[i]
        if rec.image_path is None:
            raise DecodeError(f"{rec.id}: record has no image")
        return resize(read_image(rec.image_path), self.image_size)

    def __getitem__(self, i: int) -> dict:
        skipped: list[tuple[str, str]] = []
        j = i
        tries = min(self.max_replace, len(self)) if self.on_skip == "replace" else 1
        for _ in range(tries):
            rec = self.table.records[j]
            try:
                img = self.load_image(j)
            except DecodeError as exc:
                if self.policy == "raise":
                    raise
                skipped.append((rec.image_path or rec.id, str(exc)))
                j = (j + 1) % len(self)
                continue
            img = np.ascontiguousarray(img) if img.dtype == np.uint8 else np.ascontiguousarray(img, dtype=np.float32)
            return {"image": torch.from_numpy(img)[None], "report": self.reports[j],
                    "labels": self.label_tensor(j), "id": rec.id, "index": j, "entity_spans": self.entity_spans[j],
                    **({"skipped": skipped} if skipped else {}), **self._text_fields(j)}
        if self.on_skip == "drop":
            return {"skipped": skipped, "index": i}
        if tries == len(self):
            raise SkipLimitExceeded(f"none of the {len(self)} records decodes; last: {skipped[-1][1]}", skipped[-1][0])
        raise SkipLimitExceeded(f"{len(skipped)} records in a row from index {i} (of {len(self)}) failed to decode; "
                                f"last: {skipped[-1][1]}", skipped[-1][0])


class PhantomDataset(ReportDataset, torch.utils.data.Dataset):
    """``n`` phantoms of one seed (sample ``i`` is generator index ``offset + i``), with NER spans;
    ``tokenizer`` adds token fields. ``label_names`` (default: the phantoms' own) orders the
    ``labels`` vector; a name the phantoms do not have is unknown (NaN), as in a mixed corpus."""

    def __init__(self, n: int, seed: int = 0, image_size: int = 96, offset: int = 0, ner=None, p_unpaired: float = 0.2,
                 tokenizer: TextTokenizer | None = None, label_names: Sequence[str] | None = None) -> None:
        from .phantoms import LABELS, PhantomGenerator

        self.tokenizer = tokenizer
        self._encoded: dict[int, dict] = {}
        self.gen = PhantomGenerator(seed, image_size, p_unpaired=p_unpaired)
        self.n, self.offset, self.label_names = n, offset, tuple(label_names or LABELS)
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

    @property
    def ids(self) -> list[str]:
        return [self._id(i) for i in range(self.n)]

    def _id(self, i: int) -> str:
        return f"phantom-{self.gen.seed}-{self.offset + i}"

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        p = self._phantom(i)
        return {"image": torch.from_numpy(p.image)[None], "report": self.reports[i],
                "labels": torch.tensor([p.labels.get(n, math.nan) for n in self.label_names]), "id": self._id(i),
                "index": i, "entity_spans": self.entity_spans[i], "lesion": torch.from_numpy(p.lesion_mask),
                **self._text_fields(i)}


class Collator:
    """Stack samples into a batch; reports are tokenized here only when the dataset did not.

    Batch: ``images [B, 1, H, W]``, ``text [B, L]`` ids, ``text_valid [B, L]``, ``paired [B]``
    (has a report), ``entities [B, L]``, ``labels [B, K]``, ``ids``,
    ``index [B]``, ``skipped`` (list of (file, reason)), and ``lesion [B, H, W]`` when every
    sample has one. Samples that are only a skip record are dropped (``B`` may then be 0).
    """

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict]) -> dict:
        skipped = [sk for s in samples for sk in s.get("skipped", [])]
        ok = [s for s in samples if "image" in s]
        L = self.tokenizer.context_length
        text = [s if "text_ids" in s else {**s, **encode_report(self.tokenizer, s["report"], s["entity_spans"])} for s in ok]

        def stack(key, empty):
            return torch.stack([s[key] for s in text]) if text else empty

        batch = {
            "images": stack("image", torch.zeros(0, 1, 0, 0)),
            "text": stack("text_ids", torch.zeros(0, L, dtype=torch.long)),
            "text_valid": stack("text_valid", torch.zeros(0, L, dtype=torch.bool)),
            "entities": stack("entities", torch.zeros(0, L, dtype=torch.bool)),
            "paired": torch.tensor([s["report"] is not None for s in ok], dtype=torch.bool),
            "labels": stack("labels", torch.zeros(0)),
            "ids": [s["id"] for s in ok], "index": torch.tensor([s["index"] for s in ok], dtype=torch.long),
            "reports": [s["report"] for s in ok], "entity_spans": [s["entity_spans"] for s in ok],
            "skipped": skipped,
        }
        if ok and all("lesion" in s for s in ok):
            batch["lesion"] = torch.stack([s["lesion"] for s in ok])
        return batch


def to_device(batch: dict, device: torch.device | str) -> dict:
    """The batch's tensors on ``device``; uint8 images become float in [0, 1] there."""
    out = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    if out["images"].dtype == torch.uint8:
        out["images"] = out["images"].float().div_(255.0)
    return out


class NothingDecodes(MaskkitError):
    """Not one image of an evaluation's pass decodes (:func:`decoded_batches`): ``n`` images tried,
    ``path`` one of them and ``why`` its reason. :class:`maskkit.eval.contract.Evaluation` adds
    where the images are read and the key that places them (:func:`maskkit.data.build.image_root_hint`)."""

    def __init__(self, n: int, path: str, why: str, hint: str = "", where: str = "") -> None:
        self.n, self.path, self.why, self.hint, self.where = n, path, why, hint, where
        super().__init__(f"{where}none of the {n} images decodes; e.g. {why}{hint}")

    def with_hint(self, hint: str, where: str = "") -> NothingDecodes:
        """The same failure with ``hint`` (where the images are read) and ``where`` (who read them) added."""
        return NothingDecodes(self.n, self.path, self.why, hint, where)


def decoded_batches(dataset, indices: Sequence[int], batch_size: int, skips: SkipReport | None = None):
    """The samples of ``dataset[indices]`` in order, ``batch_size`` at a time, as lists of sample
    dicts (evaluation, fine-tuning: the skip policy where these batches are formed). A file that
    failed to decode is dropped and counted in ``skips``; a batch left with no sample is not yielded.
    Raises :class:`NothingDecodes` (one line naming one file and why) when not one of ``indices``
    decodes."""
    indices = list(indices)
    first_skip, any_ok = None, False
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        ok = [s for s in items if "image" in s]
        skipped = [sk for s in items for sk in s.get("skipped", [])]
        first_skip = first_skip or (skipped[0] if skipped else None)
        if skips is not None:
            skips.update(len(ok), skipped)
        if ok:
            any_ok = True
            yield ok
    if not any_ok and first_skip is not None:
        raise NothingDecodes(len(indices), *first_skip)
