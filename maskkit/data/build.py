"""Building a run's datasets from ``cfg.data``: each source's adapter table, its patient split,
its training and held-out datasets, and the split record. Used by training, evaluation,
visualisation and sweeps alike (evaluation does not import training)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..errors import MaskkitError

#: the fraction of each source's patients held out from pretraining (split_by_patient)
VAL_FRACTION = 0.1
SPLIT_FILE = "split.json"


class SplitMismatchError(MaskkitError):
    """The held-out ids rebuilt from a run's config differ from those its split.json recorded."""


def split_by_patient(records, val_fraction: float, seed: int):
    """(train, held-out) records: a patient (or, without one, a record) goes to held-out when the
    SHA-1 bucket of ``"{seed}:{patient}"`` falls below ``val_fraction``."""
    def bucket(r):
        key = f"{seed}:{r.patient_id or r.id}".encode()
        return int(hashlib.sha1(key).hexdigest()[:8], 16) / 0xFFFFFFFF
    train = [r for r in records if bucket(r) >= val_fraction]
    val = [r for r in records if bucket(r) < val_fraction]
    return train, val


def ids_sha256(ids) -> str:
    """SHA-256 of the sorted ids joined by newlines (the split record's checksum)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


@dataclass
class SourceData:
    """One source of a run's corpus, built: its spec, records split, datasets and resolved role."""

    spec: Any                      # maskkit.data.sources.SourceSpec
    adapter: Any                   # maskkit.data.adapters.DatasetAdapter
    records: int
    train_records: list = field(repr=False)
    held_records: list = field(repr=False)
    role: str                      # paired or image_only (auto resolved from the records)
    n_paired: int
    train: Any = None
    val: Any = None
    left_out: "LeftOut | None" = None  # training records whose image is held out (by this or another source)
    absent: list = field(default_factory=list, repr=False)  # optional columns its file lacked (records.AbsentColumn)
    no_patient: int = 0            # records without a patient id where others have one (records.count_missing_patients)
    patient_field: str | None = None  # the column/key the adapter read patient ids from
    duplicates: int = 0            # records dropped: their image listed again by the source (records.drop_duplicate_images)
    duplicate_example: str | None = None

    @property
    def held_out_ids(self) -> list[str]:
        return sorted(r.id for r in self.held_records)

    @property
    def train_ids(self) -> list[str]:
        """The ids of the source's training records, sorted (repeats kept)."""
        return sorted(r.id for r in self.train_records)

    @property
    def rule(self) -> str:
        """How this source's held-out part was chosen (split.json's ``rule``)."""
        return split_rule(self.adapter)

    @property
    def note(self) -> str | None:
        """One line when the split left this source with nothing held out (or nothing to train
        on): how many patients it has and why; None otherwise."""
        return split_note(self)

    def record(self, with_ids: bool = True) -> dict:
        """This source's entry of split.json: counts, the rule, a note when the split left a part
        empty, the held-out ids and their SHA-256, and the SHA-256 of the training ids (a resume
        checks it: the saved loader position indexes the training records)."""
        ids = self.held_out_ids
        out = {"index": self.spec.index, "name": self.spec.name, "role": self.role, "weight": self.spec.weight,
               "data": self.spec.describe(), "records": self.records, "patients": self.patients,
               "train": len(self.train_records), "held_out": len(ids), "paired_train": self.n_paired,
               "rule": self.rule, "held_out_sha256": ids_sha256(ids), "train_sha256": ids_sha256(self.train_ids)}
        if self.left_out is not None:
            out["left_out_of_training"] = self.left_out.count
        if self.duplicates:
            out["duplicates_dropped"] = self.duplicates
        notes = [n for n in (self.note, self.left_out_note, self.no_patient_warning, self.duplicates_warning) if n]
        if self.by_image:
            notes.insert(0, f"split by image: no patient {self.patient_absent.what if self.patient_absent else 'id'}")
        if notes:
            out["note"] = " ".join(notes)
        if with_ids:
            out["held_out_ids"] = ids
        return out

    @property
    def left_out_note(self) -> str | None:
        """One line when training records of this source were left out because their image is held
        out (by this source or another: :func:`leave_out_held_out_images`); None otherwise."""
        lo = self.left_out
        if lo is None:
            return None
        name = self.spec.label if self.spec.where != "data" else f"source {self.spec.name}"
        by = " and ".join(lo.by)
        return (f"{name}: {lo.count} training record{'s' if lo.count != 1 else ''} left out, "
                f"{'its' if lo.count == 1 else 'their'} image held out by {by} (e.g. {lo.example}): an image held "
                f"out anywhere trains nowhere")

    @property
    def patients(self) -> int:
        """Patients of the source (a record without a patient id counts as its own patient)."""
        return len({r.patient_id or f"\0{r.id}" for r in (*self.train_records, *self.held_records, *self.left_records)})

    @property
    def by_image(self) -> bool:
        """Whether :func:`split_by_patient` split this source image by image: no record has a
        patient id (a CSV without its ``patient_id`` column, an image folder). An adapter's own split
        (the phantoms') is not."""
        return self.adapter.split is None and not any(
            r.patient_id for r in (*self.train_records, *self.held_records, *self.left_records))

    @property
    def patient_absent(self):
        """The absent optional column that would have held patient ids (the ``csv`` adapter's
        ``patient_col`` default ``patient_id``, ``jsonl``'s ``patient_key``): the
        :class:`~maskkit.data.records.AbsentColumn` of an option named ``patient*``, or None."""
        return next((a for a in self.absent if a.option.startswith("patient")), None)

    @property
    def by_image_warning(self) -> str | None:
        """The one-line warning of a source split image by image (:attr:`by_image`): which source,
        which column it lacks, the columns that look like patient ids and the key that names one;
        None for a source split by patient."""
        if not self.by_image:
            return None
        a = self.patient_absent
        risk = "split by image, so one patient's images may be both trained on and held out"
        if a is None:
            return f"{self.spec.label}: its records carry no patient id: {risk}"
        like = patient_like(a.columns, a.default)
        key = self.spec.key(a.option)
        hint = (f"; {a.what}{'s' if len(like) > 1 else ''} that look{'' if len(like) > 1 else 's'} like one: "
                f"{', '.join(repr(c) for c in like)} (set {key}={like[0]})" if like
                else f"; if another {a.what} holds patient ids, name it with {key}")
        return f"{self.spec.label}: no patient {a.what}: {a.where} has no '{a.default}' ({a.option}'s default): {risk}{hint}"

    @property
    def duplicates_warning(self) -> str | None:
        """The one-line warning of a source that listed an image file more than once: how many
        records were dropped (the first of each kept, A67) and an example; None otherwise."""
        n = self.duplicates
        if not n:
            return None
        return (f"{self.spec.label}: {n} record{'s' if n != 1 else ''} dropped, {'their' if n != 1 else 'its'} image listed "
                f"again by the source (e.g. {self.duplicate_example}): each image is read once, the first of its records "
                f"kept (docs/assumptions.md A67)")

    @property
    def no_patient_warning(self) -> str | None:
        """The one-line warning of a source where some records carry no patient id and others do
        (blank cells of its patient column): how many, the source and the column; each such record
        is split by itself, so it may be held out while its patient's other images train. None
        when every record has an id (or none has: :attr:`by_image_warning`)."""
        n = self.no_patient
        if not n or self.adapter.split is not None:
            return None
        col = f" ('{self.patient_field}' blank or missing)" if self.patient_field else ""
        return (f"{self.spec.label}: {n} of {self.records} records ha{'ve' if n != 1 else 's'} no patient id{col}: "
                f"{'each is' if n != 1 else 'it is'} split by itself, so its patient's other images may be trained on "
                f"while it is held out; fill in the patient ids")

    @property
    def left_records(self) -> list:
        return self.left_out.records if self.left_out is not None else []


@dataclass
class LeftOut:
    """The training records of a source left out because their image file is held out (by the
    same source, listing it twice, or by another): how many, by which sources, one example path."""

    records: list = field(repr=False)
    by: list[str]
    example: str

    @property
    def count(self) -> int:
        return len(self.records)


def image_key(path: str) -> str:
    """An image file as the overlap rule compares it: the absolute, normalised path (``a/../b.png``
    and ``./b.png`` are one file; a symbolic or hard link to it is not recognised)."""
    return os.path.abspath(path)


def leave_out_held_out_images(splits: list[tuple[list, list]], labels: list[str]) -> list[tuple[list, "LeftOut | None"]]:
    """The overlap rule: an image file held out by any source trains in none.

    ``splits``: each source's (train, held-out) records; ``labels``: how messages name each source.
    Returns per source (its training records without those whose image file (:func:`image_key`) is
    held out by any source, the :class:`LeftOut` records or None). Without it an image listed by two
    sources (two CSVs, or ``mimic`` and a CSV of its files) could be held out by one and trained on
    by the other. (One source lists each image once: :func:`~maskkit.data.records.drop_duplicate_images`.)
    Patient ids need no such rule: :func:`split_by_patient` decides by ``seed:patient``, so a patient
    id listed by several sources is held out by all of them or by none."""
    held: dict[str, int] = {}
    for k, (_, va) in enumerate(splits):
        for r in va:
            if r.image_path is not None:
                held.setdefault(image_key(r.image_path), k)
    out = []
    for j, (tr, _) in enumerate(splits):
        if not held:
            out.append((tr, None))
            continue
        keep, left, by = [], [], {}
        for r in tr:
            k = held.get(image_key(r.image_path)) if r.image_path is not None else None
            if k is None:
                keep.append(r)
            else:
                left.append(r)
                by.setdefault("this source (listed twice)" if k == j else labels[k], r.image_path)
        out.append((keep, LeftOut(left, list(by), next(iter(by.values()))) if left else None))
    return out


@dataclass
class Corpus:
    """A run's data: the sources, the union of their label names, the training dataset (one
    source's, or the concatenation in source order) and the held-out dataset (likewise, or None)."""

    sources: list[SourceData]
    label_names: tuple[str, ...]
    train: Any
    val: Any
    seed: int

    @property
    def sizes(self) -> list[int]:
        """Training samples of each source (the mixture sampler's sizes)."""
        return [len(s.train) if s.train is not None else 0 for s in self.sources]

    @property
    def weights(self) -> list[float]:
        return [s.spec.weight for s in self.sources]

    @property
    def names(self) -> list[str]:
        """A unique name per source: the adapter name, with ``#index`` when an adapter repeats."""
        base = [s.spec.name for s in self.sources]
        return [n if base.count(n) == 1 else f"{n}#{s.spec.index}" for n, s in zip(base, self.sources)]

    def empty_held_out_line(self) -> str:
        """Why this corpus holds nothing out and what changes that, per source, as its split works
        (an empty held-out part: the end-of-run evaluations, ``maskkit eval zeroshot`` / ``finetune``):
        an adapter's own split (the phantoms') names its key (``data.val_n``, ``data.sources[0]
        (phantoms).val_n``); :func:`split_by_patient` (a CSV, MIMIC, ...) has no fraction key
        (:data:`VAL_FRACTION`): another ``train.seed`` draws again, or more patients."""
        parts = []
        for s in self.sources:
            if s.held_records:
                continue
            if s.adapter.split is not None:
                key = s.spec.key("val_n") if s.adapter.takes("val_n") else None
                parts.append(f"{s.spec.label} holds none out by its own split"
                             + (f" ({key}={s.spec.options.get('val_n', 0)}; set {key} above 0)" if key else ""))
            else:
                pats = s.patients
                parts.append(f"{s.spec.label}: none of its {pats} patient{'s' if pats != 1 else ''} held out (each with "
                             f"probability {VAL_FRACTION}; no key sets it): another train.seed draws again, or give it more patients")
        return f"{self.describe()} holds out no data: " + "; ".join(parts)

    @property
    def labels(self) -> list[str]:
        """How messages name each source's config: ``data.sources[1] (csv)``, or ``data (csv)``."""
        return [s.spec.label for s in self.sources]

    @property
    def has_paired(self) -> bool:
        return any(s.n_paired and s.spec.weight > 0 for s in self.sources)

    def describe(self) -> str:
        """``mimic root=... + padchest root=...`` (what data this is)."""
        return " + ".join(s.spec.describe() for s in self.sources)

    def split_record(self) -> dict:
        """split.json: the seed and, per source, the rule that chose its held-out part, the held-out
        ids, their count and SHA-256, and the counts (``note`` when a part came out empty)."""
        return {"val_fraction": VAL_FRACTION, "seed": self.seed, "sources": [s.record() for s in self.sources]}

    def what(self, split: str, text: str) -> dict:
        """What data and split a result was computed on (recorded in every evaluation result):
        ``split`` is ``run`` (the run's recorded split), ``run-config`` (rebuilt, nothing recorded
        to verify) or ``explicit`` (data.* settings)."""
        return {"data": self.describe(), "split": split, "text": text, "train_seed": self.seed,
                "sources": [{"name": n, "held_out": len(s.held_records), "held_out_sha256": ids_sha256(s.held_out_ids)}
                            for n, s in zip(self.names, self.sources)]}

    def summary_lines(self) -> list[str]:
        """One line per source: records, held out, role, weight, paired training samples; then a
        ``warning:`` line for each source split image by image (:attr:`SourceData.by_image_warning`)
        or with records lacking a patient id among others that have one (:attr:`SourceData.no_patient_warning`)
        and a ``note:`` line for each source the split left with an empty part (:attr:`SourceData.note`)."""
        lines = [f"source {n}: {s.records} records, {len(s.train_records)} train / {len(s.held_records)} held out"
                 + (f" / {s.left_out.count} left out" if s.left_out is not None else "")
                 + f" (role {s.role}, weight {s.spec.weight:g}, {s.n_paired} paired)" for n, s in zip(self.names, self.sources)]
        return (lines + [f"warning: {w}" for s in self.sources for w in (s.by_image_warning, s.no_patient_warning, s.duplicates_warning) if w]
                + [f"note: {n}" for s in self.sources for n in (s.note, s.left_out_note) if n])


def patient_like(columns, default: str) -> list[str]:
    """The columns (or keys) of ``columns`` that look like patient ids: ``default`` in another case
    or spelling (``PatientID``, ``Patient ID`` for ``patient_id``), or a name holding ``patient`` or
    ``subject`` (``subject_id``)."""
    import re

    def norm(c: str) -> str:
        return re.sub(r"[^0-9a-z]", "", str(c).lower())

    d = norm(default)
    return [c for c in columns if norm(c) == d or "patient" in norm(c) or "subject" in norm(c)]


def split_rule(adapter) -> str:
    """The rule that chooses a source's held-out part: :func:`split_by_patient`'s, or the first
    line of the adapter's own ``split`` function's docstring (the phantoms': generated apart)."""
    if adapter.split is None:
        return (f"split_by_patient: a patient (a record without one: the record) is held out when the SHA-1 "
                f"bucket of '<train.seed>:<patient>' is below {VAL_FRACTION} (each patient with probability {VAL_FRACTION})")
    import inspect

    doc = " ".join((inspect.getdoc(adapter.split) or "").split("\n\n")[0].split())
    return f"the {adapter.name} adapter's own split" + (f": {doc}" if doc else f" ({adapter.split.__name__})")


def split_note(s: "SourceData") -> str | None:
    """The one-line note of a source that :func:`split_by_patient` left with nothing held out or
    nothing to train on (a source with few patients); None otherwise, and for an adapter's own
    split (the phantoms' ``val_n=0`` is asked for)."""
    held, train = len(s.held_records), len(s.train_records)
    if (held and train) or s.adapter.split is not None:
        return None
    pats = s.patients
    name = s.spec.label if s.spec.where != "data" else f"source {s.spec.name}"
    why = (f"each patient is held out with probability {VAL_FRACTION}: {VAL_FRACTION * pats:.2g} expected "
           f"of {pats}; another train.seed draws again")
    part = "held out" if not held else "left to train on"
    return f"{name}: {pats} patient{'s' if pats != 1 else ''}, 0 {part} ({why})"


class ConcatSources:
    """The datasets of several sources as one map-style dataset (index ``offsets[k] + i`` is sample
    ``i`` of source ``k``); samples carry their ``source`` index."""

    def __init__(self, datasets: list, names: list[str]) -> None:
        import bisect

        self._bisect = bisect.bisect_right
        self.datasets, self.names = datasets, names
        self.offsets, total = [], 0
        for d in datasets:
            self.offsets.append(total)
            total += len(d) if d is not None else 0
        self.total = total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.total:
            raise IndexError(i)
        k = self._bisect(self.offsets, i) - 1
        while self.datasets[k] is None or i - self.offsets[k] >= len(self.datasets[k]):
            k -= 1  # an empty source shares its offset with the next one
        item = self.datasets[k][i - self.offsets[k]]
        return {**item, "source": k, "index": i}

    @property
    def ids(self) -> list[str]:
        """Every sample's id, in order (ids of different sources may repeat: :attr:`keys` do not)."""
        return [i for _, i in self.keys]

    @property
    def keys(self) -> list[tuple[str, str]]:
        """Every sample's ``(source name, id)``, in order: the key that tells apart two sources'
        samples with one id (``names[k]`` is dataset ``k``'s source)."""
        out = []
        for name, d in zip(self.names, self.datasets):
            if d is not None:
                out += [(name, i) for i in d.ids]  # every dataset of a corpus: maskkit.data.dataset.ReportDataset
        return out


def _default_dataset(table, image_size: int, *, train: bool, ner=None, tokenizer=None, data=None, cache=None):
    from .dataset import XrayDataset

    if not table.records:
        return None
    if train:
        return XrayDataset(table, image_size, data.decode_policy, ner=ner, cache=cache, tokenizer=tokenizer,
                           on_skip="replace", raw_cache=True)
    return XrayDataset(table, image_size, data.decode_policy, ner=ner, cache=cache)


def _drop_reports(ds) -> None:
    """An image-only source: no sample of ``ds`` has a report (nor entities, nor cached tokens)."""
    if ds is not None:
        ds.drop_reports()


def train_ner(cfg: ExperimentConfig) -> bool:
    """Whether training's datasets run NER: when ``cfg`` has a ``text_mask`` tree (EntMLM's
    entities; a tree that reads none gets them unused)."""
    return cfg.text_mask is not None


#: records per source whose image file :func:`check_images_exist` looks for
IMAGES_CHECKED = 16


def check_images_exist(spec, adapter, table, n: int = IMAGES_CHECKED) -> None:
    """A wrong image root found when the data is built, not after the model: when none of the first
    ``n`` records of a source that has image files exists (a stat each), one line naming the source,
    one path and the key that places the images (``image_root``, else ``root``). A source read from
    a prepared cache (its images are there) or with generated images (``image_path`` None) is not
    checked; one missing file among found ones is the skip policy's (``data.decode_policy``)."""
    if spec.cache is not None:
        return
    paths = [r.image_path for r in table.records[:n] if r.image_path is not None]
    if not paths or any(os.path.exists(p) for p in paths):
        return
    opt = _image_option(adapter)
    given = opt is not None and opt in spec.options
    where = (f"; check {spec.key(opt)}" + ("" if given or opt != "image_root" else
                                           " (unset, relative paths resolve against the file's folder)")) if opt else ""
    raise MaskkitError(f"{spec.label}: image {paths[0]} does not exist, nor any of the first {len(paths)} records' images{where}")


def _image_option(adapter) -> str | None:
    """The adapter option that places a source's image files (``image_root``, else ``root``, ...)."""
    return next((o for o in ("image_root", "image_dir", "root", "path") if adapter.takes(o)), None)


def image_root_hint(corpus, path: str) -> str:
    """``"; data (padchest) reads its images under /data/pc (data.root): set data.root to the folder
    that holds readable images"`` for the source of ``corpus`` whose record has image ``path`` (an
    evaluation where no image decodes: :class:`maskkit.data.dataset.NothingDecodes`); ``""`` when
    no source has it."""
    for src in corpus.sources:
        rec = next((r for r in (*src.held_records, *src.train_records) if (r.image_path or r.id) == path), None)
        if rec is None:
            continue
        opt = _image_option(src.adapter)
        if opt is None:
            return f"; the images of {src.spec.label} are the adapter's own"
        key = src.spec.key(opt)
        root = src.spec.options.get(opt)
        where = f"under {root} ({key})" if root is not None else f"with {key} unset"
        return f"; {src.spec.label} reads its images {where}: set {key} to the folder that holds readable images"
    return ""


def build_corpus(cfg: ExperimentConfig, image_size: int, tokenizer=None, held_out_ner: bool = False,
                 ner: bool | None = None) -> Corpus:
    """Every source of ``cfg.data`` built: adapter table, split by patient with ``train.seed``
    (each source on its own), training and held-out datasets over the union of label names. A
    training record whose image file is held out by any source is left out of training
    (:func:`leave_out_held_out_images`; counted in the log and split.json).

    The training set replaces a sample that fails to decode by the next one that decodes (the skip
    policy, reported); the held-out set drops it. ``tokenizer`` makes the training set compute each
    record's token fields once (in the DataLoader's workers). Raises one line when a source has no
    record, or is ``role: paired`` with no report among its training records.

    ``ner``: whether the training datasets run NER (None: when training reads entities,
    :func:`train_ner`; an evaluation that reads no training entities passes False);
    ``held_out_ner``: whether the held-out datasets do.
    """
    from .ner import CachedNER, make_ner
    from .records import Table
    from .sources import source_specs

    d = cfg.data
    specs = source_specs(d)
    ner_train = train_ner(cfg) if ner is None else ner
    ner = CachedNER(make_ner(d.ner, d.ner_model)) if ner_train or held_out_ner else None
    from .adapters import get_adapter

    tables = [(spec, get_adapter(spec.name), spec.load()) for spec in specs]
    for spec, adapter, table in tables:
        check_images_exist(spec, adapter, table)
    names: list[str] = []
    for _, _, t in tables:
        names += [n for n in t.label_names if n not in names]
    label_names = tuple(names)
    splits = [(adapter.split or (lambda recs, seed: split_by_patient(recs, VAL_FRACTION, seed)))(table.records, cfg.train.seed)
              for _, adapter, table in tables]
    kept = leave_out_held_out_images(splits, [spec.label if spec.where != "data" else f"source {spec.name}" for spec in specs])
    built = []
    for (spec, adapter, table), (_, va), (tr, left_out) in zip(tables, splits, kept):
        role = spec.role if spec.role != "auto" else adapter.role
        if role == "image_only":
            tr = [dataclasses.replace(r, report=None) for r in tr]
            va = [dataclasses.replace(r, report=None) for r in va]
        make = adapter.dataset or _default_dataset
        kw = {"data": d} if adapter.dataset else {"data": d, "cache": spec.cache}
        with spec.errors():  # a cache that does not fit names this source's cache key
            train = make(Table(table.name, tr, label_names), image_size, train=True,
                         ner=ner if role != "image_only" else None, tokenizer=tokenizer, **kw)
            val = make(Table(table.name, va, label_names), image_size, train=False,
                       ner=ner if held_out_ner and role != "image_only" else None, tokenizer=None, **kw)
        if role == "image_only":
            _drop_reports(train)
            _drop_reports(val)
        reports = getattr(train, "reports", None) if train is not None else []
        n_paired = sum(r is not None for r in reports) if reports is not None else sum(bool(r.report) for r in tr)
        if role == "auto":
            role = "paired" if n_paired else "image_only"
        elif role == "paired" and not n_paired:
            if spec.where == "data":
                raise MaskkitError(f"{spec.label}: dataset '{spec.name}' is paired, but none of its {len(tr)} training records "
                                   f"has a report (check the report files, or give it as a data.sources entry with role: image_only)")
            own = "" if spec.role == "paired" else f" (the role dataset '{spec.name}' declares)"
            raise MaskkitError(f"{spec.key('role')}: paired{own}, but none of its {len(tr)} training records has a report "
                               f"(set role: image_only, or check the report files)")
        built.append(SourceData(spec, adapter, len(table), tr, va, role, n_paired, train, val, left_out,
                                absent=list(getattr(table, "absent", [])), no_patient=getattr(table, "no_patient", 0),
                                duplicates=getattr(table, "duplicates", 0), duplicate_example=getattr(table, "duplicate_example", None),
                                patient_field=getattr(table, "patient_field", None)))
    corpus_names = [s.spec.name for s in built]
    names_u = [n if corpus_names.count(n) == 1 else f"{n}#{s.spec.index}" for n, s in zip(corpus_names, built)]
    if len(built) == 1:
        train_ds, val_ds = built[0].train, built[0].val
    else:
        train_ds = ConcatSources([s.train for s in built], names_u)
        vals = [s.val for s in built]
        val_ds = ConcatSources(vals, names_u) if any(v is not None and len(v) for v in vals) else None
    if train_ds is None or not len(train_ds):
        raise MaskkitError(f"data: {' + '.join(s.spec.describe() for s in built)} leaves no training record after the held-out split")
    corpus = Corpus(built, label_names, train_ds, val_ds, cfg.train.seed)
    from .loader import check_epoch

    check_epoch(corpus.sizes, corpus.weights, corpus.labels)  # before anything is sampled (or the model built)
    return corpus


def build_datasets(cfg: ExperimentConfig, image_size: int, tokenizer=None):
    """(train, held-out) datasets and their label names, from ``cfg.data`` (:func:`build_corpus`)."""
    c = build_corpus(cfg, image_size, tokenizer)
    return c.train, c.val, c.label_names


def load_records(cfg: ExperimentConfig):
    """The adapter tables of ``cfg.data`` (every source), loaded and checked: one-line errors.
    Returns the first source's table (the single-source form's table)."""
    from .sources import source_specs

    first = None
    for spec in source_specs(cfg.data):
        table = spec.load()
        first = first or table
    return first


# --- the split record -----------------------------------------------------------------------

def write_split(run_dir: str | Path, corpus: Corpus) -> Path:
    """Write ``split.json`` (atomically) into a run directory; returns its path."""
    from ..io import atomic_write_text

    path = Path(run_dir) / SPLIT_FILE
    atomic_write_text(path, json.dumps(corpus.split_record(), indent=1))
    return path


def read_split(run_dir: str | Path) -> dict | None:
    """A run directory's split record, or None when the run predates it; one line when unreadable."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        for s in rec["sources"]:
            if ids_sha256(s["held_out_ids"]) != s["held_out_sha256"]:
                raise SplitMismatchError(f"{path}: source {s['name']}: the held-out ids do not match their SHA-256; the file was edited")
        return rec
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise MaskkitError(f"{path}: not a readable split record ({type(exc).__name__}: {exc})") from None


def verify_split(corpus: Corpus, record: dict, path: str | Path, train: bool = False) -> None:
    """Check that the held-out ids rebuilt from a run's config are those its split.json recorded
    and, with ``train`` (a resume: the saved loader position indexes the training records in their
    order), that the training ids are too (a record from before ``train_sha256`` is not checked);
    a difference (the data changed on disk) is one line naming the source and both counts."""
    rec = record["sources"]
    if len(rec) != len(corpus.sources):
        raise SplitMismatchError(f"{path}: records {len(rec)} sources, the run's config builds {len(corpus.sources)}")
    for s, r in zip(corpus.sources, rec):
        ids = s.held_out_ids
        if ids_sha256(ids) != r["held_out_sha256"]:
            raise SplitMismatchError(
                f"{path}: source {r['name']}: the held-out ids rebuilt now ({len(ids)}) differ from the run's "
                f"({r['held_out']}, sha256 {r['held_out_sha256'][:12]}); the data changed since the run (rebuild gives "
                f"{ids_sha256(ids)[:12]})")
    if not train:
        return
    for s, r in zip(corpus.sources, rec):
        ids = s.train_ids
        if "train_sha256" in r and ids_sha256(ids) != r["train_sha256"]:
            raise SplitMismatchError(
                f"{path}: source {r['name']}: the training ids rebuilt now ({len(ids)}) differ from the run's "
                f"({r['train']}, sha256 {r['train_sha256'][:12]}); the data changed since the run, and the saved loader "
                f"position would index another order (rebuild gives {ids_sha256(ids)[:12]}); restore the data, or start a new run")


def data_line(what: dict | str) -> str:
    """The one line every command that reads a run's data prints to say which data and split it
    used: ``data: <what>`` (``what``: :meth:`Corpus.what`'s dict, or a text)."""
    return f"data: {what['text'] if isinstance(what, dict) else what}"


def run_dir_of(path: str | Path) -> Path:
    """The run directory of a run directory or of one of its checkpoint files."""
    p = Path(path)
    if p.is_dir():
        return p
    return p.parent.parent if p.parent.name == "checkpoints" else p.parent


def run_sources_setting(run_cfg: ExperimentConfig, settings: list[str]) -> list[str]:
    """``[data.sources=<the run's sources>]`` when ``settings`` change a key of one of the run's
    sources by its index (``data.sources.0.path=/elsewhere/reports.csv``: the run's data moved), so
    that the index names the run's entry; a run of the single-source form is its one entry
    ``data.sources.0``. ``[]`` otherwise (the settings describe other data whole)."""
    import re

    from .sources import source_specs

    if not any(re.match(r"data\.sources\.\d", s) for s in settings):
        return []
    d = run_cfg.data
    if d.sources:
        entries = list(d.sources)
    else:
        spec = source_specs(d)[0]
        entries = [{"name": spec.name, **spec.options, **({"cache": spec.cache} if spec.cache else {})}]
    return ["data.sources=" + json.dumps(entries)]


def eval_corpus(path: str | Path, run_cfg: ExperimentConfig, image_size: int, settings: list[str] | None = None,
                tokenizer=None, held_out_ner: bool = False, ner: bool | None = None) -> tuple[ExperimentConfig, Corpus, dict]:
    """The data a command that evaluates (or draws samples from) a run reads: (config, corpus, what).

    Without ``settings``: the run's own data and split, rebuilt from its config and checked against
    its ``split.json`` (SHA-256 of each source's held-out ids; a mismatch is one line). With
    ``data.*`` settings: that data, explicit, split by patient with the run's ``train.seed`` (so the
    run's own data given explicitly is still its split). ``what`` names the data and split (it goes
    into every result: table titles, JSON)."""
    import sys

    if settings:
        from ..config import resolve

        cfg, _ = resolve(run_sources_setting(run_cfg, settings) + list(settings) + ["preset=clip", f"train.seed={run_cfg.train.seed}"])
        corpus = build_corpus(cfg, image_size, tokenizer, held_out_ner=held_out_ner, ner=ner)
        what = corpus.what("explicit", f"{corpus.describe()}, held out by patient with the run's seed {run_cfg.train.seed} (data.* given)")
    else:
        cfg = run_cfg
        corpus = build_corpus(cfg, image_size, tokenizer, held_out_ner=held_out_ner, ner=ner)
        run = run_dir_of(path)
        rec = read_split(run)
        if rec is not None:
            verify_split(corpus, rec, run / SPLIT_FILE)
            what = corpus.what("run", f"the held-out split of run {run} ({corpus.describe()}; split.json verified)")
        else:
            what = corpus.what("run-config", f"the held-out split of run {run} rebuilt from its config ({corpus.describe()}; no split.json to verify)")
            print(f"note: {run} has no {SPLIT_FILE} (a run from before maskkit recorded its split); its held-out set is "
                  "rebuilt from its config and cannot be verified", file=sys.stderr)
    return cfg, corpus, what
