"""CheXpert 5x200 and MIMIC-CXR 5x200: deterministic builders and stored, hash-checked id sets.

**The definition** (the same in every repository that builds one; docs/eval.md cites each):
200 frontal images per class for the five CheXpert competition tasks - Atelectasis,
Cardiomegaly, Consolidation, Edema, Pleural Effusion - where that label is **positive (1)** and
every other observation except ``No Finding`` (the four other tasks and Enlarged
Cardiomediastinum, Lung Lesion, Lung Opacity, Pneumonia, Pneumothorax, Pleural Other, Fracture,
Support Devices) is **negative (0)**, a blank cell counting as negative and an uncertain (-1)
one as neither, so an image with any uncertain observation is never eligible:

- GLoRIA, ``marshuang80/gloria`` ``gloria/datasets/preprocess_datasets.py``
  ``preprocess_chexpert_5x200_data``: CheXpert ``train.csv``, ``fillna(0)``, ``Frontal/Lateral ==
  "Frontal"``, the label vector equal to the one-hot of the task on those 13 columns,
  ``df.sample(n=200)`` (unseeded); the report is the ``Report Impression`` of CheXpert's
  (non-public) report table.
- MGCA, ``HKU-MedAI/MGCA`` ``mgca/preprocess/chexpert.py``: the same rule, ``sample(n=200,
  random_state=0)``, no reports.
- CXR-CLIP, ``kakaobrain/cxr-clip`` ``datasets/README.md``: GLoRIA's released
  ``chexpert_5x200.csv``, text = ``Report Impression``; the set's patients are left out of training.
- BenchX, ``yangzhou12/BenchX``: MIMIC-CXR 5x200 by the same rule on the MIMIC-CXR CheXpert
  labels (``fillna(0)``), frontal (PA/AP) images whose FINDINGS + IMPRESSION are not empty,
  ``sample(n)`` unseeded, its ids published (``datasets/MIMIC_5x200/mimic_5x200_ids.csv``).

maskkit applies that rule to a :class:`~maskkit.data.records.Table` whose labels were read with
``uncertain=ignore`` (an uncertain cell is unknown, NaN, so it fails "negative" and "positive")
and ``blank=negative`` - :func:`table_for_5x200` loads one that way - and draws with its own
seeded ``numpy`` Generator (pandas' draws cannot be reproduced without pandas, and GLoRIA's and
BenchX's were unseeded): the published sets are reused by importing their ids
(:func:`save_id_set` writes any ids), not by redrawing them.

**Stored sets.** The chosen ids go to a JSON file (:func:`save_id_set`, atomic) with the SHA-256
of each class's ids and of all of them (``maskkit.data.build.ids_sha256``: sorted ids joined by
newlines, the checksum of ``split.json`` and the fine-tuning splits); :func:`load_id_set` refuses
a file whose ids no longer match their hashes, and, given the table, ids the table lacks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MaskkitError

FIVE_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
K = 200
FRONTAL = ("PA", "AP")
FORMAT = "maskkit.idset/1"
#: label policies under which a table's values follow the papers' rule (blank 0, uncertain excluded)
POLICIES = {"uncertain": "ignore", "blank": "negative"}
SOURCES = {
    "chexpert": ("GLoRIA (marshuang80/gloria, gloria/datasets/preprocess_datasets.py, preprocess_chexpert_5x200_data); "
                 "MGCA (HKU-MedAI/MGCA, mgca/preprocess/chexpert.py); CXR-CLIP (kakaobrain/cxr-clip, datasets/README.md)"),
    "mimic": ("BenchX (yangzhou12/BenchX, MIMIC-5x200: the GLoRIA rule on MIMIC-CXR's CheXpert labels, frontal images, "
              "FINDINGS + IMPRESSION not empty; datasets/MIMIC_5x200/mimic_5x200_ids.csv)"),
}


class IdSetError(MaskkitError):
    """An id-set file that is missing, malformed, edited after it was written, or drawn from other data."""


@dataclass
class IdSet:
    """Ids chosen per class (each list sorted) and how they were chosen (``definition``)."""

    name: str
    classes: dict[str, list[str]]
    definition: dict[str, Any] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        """Every id, class by class (in class order, each class's ids sorted)."""
        return [i for ids in self.classes.values() for i in ids]

    @property
    def sha256(self) -> str:
        """``ids_sha256`` of all ids: one identifier of the whole set."""
        from ..data.build import ids_sha256

        return ids_sha256(self.ids)

    def label_of(self) -> dict[str, str]:
        """id -> its class."""
        return {i: c for c, ids in self.classes.items() for i in ids}

    def to_json(self) -> dict[str, Any]:
        from ..data.build import ids_sha256

        return {"format": FORMAT, "name": self.name, "n": len(self.ids), "sha256": self.sha256,
                "classes": {c: {"n": len(ids), "sha256": ids_sha256(ids), "ids": list(ids)} for c, ids in self.classes.items()},
                "definition": self.definition}


def table_for_5x200(dataset: str, **options: Any):
    """The ``dataset`` adapter's table (``chexpert`` or ``mimic``, :func:`maskkit.data.records.load_table`)
    with the label policies the 5x200 rule needs (:data:`POLICIES`); another ``uncertain`` or
    ``blank`` in ``options`` is a one-line error (under ``uncertain=ones`` an uncertain label would
    count as positive, under ``zeros`` as negative, which the papers' ``fillna(0)`` rule never does)."""
    from ..data.records import load_table

    for key, want in POLICIES.items():
        if key in options and options[key] != want:
            raise MaskkitError(f"5x200: {dataset} option {key}={options[key]!r}; the 5x200 definition needs "
                               f"{key}={want} (an uncertain label is neither positive nor negative, a blank one negative)")
    return load_table(dataset, **(options | POLICIES))


def eligible_5x200(table, classes=FIVE_CLASSES, views=FRONTAL, require_report: bool = False) -> dict[str, list[str]]:
    """class -> sorted ids of the records of ``table`` that may represent it: view in ``views``
    (None: any view), report with content when ``require_report``, the class's label 1.0 and
    every other label except ``No Finding`` 0.0 (an unknown, NaN, label disqualifies).

    Raises :class:`MaskkitError` in one line for a class the table lacks, a table whose records
    carry no view when ``views`` is given, or a table in which one id appears twice.
    """
    from ..data.records import has_content
    from ..findings import is_no_finding

    names = list(table.label_names)
    missing = [c for c in classes if c not in names]
    if missing:
        raise MaskkitError(f"5x200: table {table.name} has no label '{missing[0]}'; its labels are {', '.join(names)}")
    others = [n for n in names if not is_no_finding(n)]
    recs = table.records
    if views is not None and recs and all(r.view is None for r in recs):
        raise MaskkitError(f"5x200: no record of table {table.name} has a view, so the frontal filter "
                           f"(views={list(views)}) would keep none; pass views=None to skip it")
    ids = [r.id for r in recs]
    if len(set(ids)) != len(ids):
        from collections import Counter

        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise MaskkitError(f"5x200: id '{dup}' appears twice in table {table.name}; ids must name one image each")
    keep = np.array([(views is None or r.view in views) and (not require_report or has_content(r.report)) for r in recs],
                    dtype=bool)
    y = np.array([[r.labels.get(n, math.nan) for n in others] for r in recs], dtype=np.float64).reshape(len(recs), len(others))
    negative = y == 0.0  # NaN compares False: an unknown label is neither
    out = {}
    for c in classes:
        k = others.index(c)
        rest = np.delete(negative, k, axis=1).all(1)
        chosen = keep & (y[:, k] == 1.0) & rest
        out[c] = sorted(ids[i] for i in np.flatnonzero(chosen))
    return out


def build_5x200(table, seed: int = 0, *, k: int = K, classes=FIVE_CLASSES, views=FRONTAL, require_report: bool = False,
                name: str | None = None, dataset: str | None = None) -> IdSet:
    """``k`` ids per class drawn from :func:`eligible_5x200` without replacement.

    Class ``c`` (its position ``j`` in ``classes``) draws ``Generator(PCG64([seed, j])).choice(n, k,
    replace=False)`` over its eligible ids sorted, so a class's draw depends only on its own
    eligible ids and the seed - not on the table's row order or on the other classes. A class
    with fewer than ``k`` eligible records is a one-line :class:`MaskkitError` naming every such
    class and its count (pass a smaller ``k``; the file records the ``k`` used).
    """
    if not isinstance(k, int) or k < 1:
        raise MaskkitError(f"5x200: k must be an integer >= 1, got {k!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise MaskkitError(f"5x200: seed must be an integer >= 0, got {seed!r}")
    eligible = eligible_5x200(table, classes, views, require_report)
    short = {c: len(v) for c, v in eligible.items() if len(v) < k}
    if short:
        counts = ", ".join(f"{c} {n}" for c, n in short.items())
        raise MaskkitError(f"5x200: table {table.name} has fewer than k={k} eligible images for "
                           f"{len(short)} class(es): {counts} (eligible: {_rule(views, require_report)}); pass a smaller k")
    chosen = {}
    for j, c in enumerate(classes):
        rng = np.random.default_rng([seed, j])
        pick = rng.choice(len(eligible[c]), size=k, replace=False)
        chosen[c] = sorted(eligible[c][i] for i in pick)
    definition = {"dataset": dataset or table.name, "classes": list(classes), "k": k, "seed": seed,
                  "views": list(views) if views is not None else None, "require_report": require_report,
                  "rule": _rule(views, require_report), "label_policies": POLICIES,
                  "draw": "numpy Generator(PCG64([seed, class index])).choice(n_eligible, k, replace=False) over the class's eligible ids sorted",
                  "eligible": {c: len(v) for c, v in eligible.items()},
                  "source": SOURCES.get(dataset or table.name, "the GLoRIA / MGCA / BenchX 5x200 rule (docs/eval.md)")}
    return IdSet(name or f"{dataset or table.name}-{len(classes)}x{k}", chosen, definition)


def _rule(views, require_report: bool) -> str:
    view = f"view in {'/'.join(views)}, " if views is not None else ""
    report = "report with content, " if require_report else ""
    return f"{view}{report}the class's label 1, every other label except No Finding 0 (uncertain or unknown: not eligible)"


def chexpert_5x200(table, seed: int = 0, k: int = K) -> IdSet:
    """CheXpert 5x200 from a CheXpert table (:func:`table_for_5x200`; GLoRIA draws from
    ``train.csv``): frontal images, no report requirement (CheXpert's reports are not public;
    GLoRIA's set carries the ``Report Impression`` of its own report table)."""
    return build_5x200(table, seed, k=k, require_report=False, name="chexpert-5x200" if k == K else None, dataset="chexpert")


def mimic_5x200(table, seed: int = 0, k: int = K) -> IdSet:
    """MIMIC-CXR 5x200 from a MIMIC-CXR table (:func:`table_for_5x200`): frontal images whose
    report - FINDINGS + IMPRESSION, the adapter's default sections - has content (BenchX)."""
    return build_5x200(table, seed, k=k, require_report=True, name="mimic-5x200" if k == K else None, dataset="mimic")


def save_id_set(idset: IdSet, path: str | Path) -> Path:
    """Write ``idset`` to ``path`` as JSON (atomic: a reader sees the old file or the new one).

    Ids must be non-empty strings, unique across classes. Returns the path.
    """
    from ..io import atomic_write_text

    seen: dict[str, str] = {}
    for c, ids in idset.classes.items():
        for i in ids:
            if not isinstance(i, str) or not i:
                raise IdSetError(f"id set {idset.name}: class '{c}' holds {i!r}; ids are non-empty strings")
            if i in seen:
                raise IdSetError(f"id set {idset.name}: id '{i}' is in class '{seen[i]}' and in class '{c}'")
            seen[i] = c
    sorted_set = IdSet(idset.name, {c: sorted(ids) for c, ids in idset.classes.items()}, idset.definition)
    atomic_write_text(path, json.dumps(sorted_set.to_json(), indent=1) + "\n")
    return Path(path)


def load_id_set(path: str | Path, table=None) -> IdSet:
    """The id set stored at ``path``, its hashes verified; with ``table``, every id must name one of
    its records. Each failure is one :class:`IdSetError` line naming the file: not found, not
    JSON, not an id-set file, a class or the whole set whose ids do not match the stored SHA-256
    (edited or damaged), or ids missing from ``table`` (how many, and the first)."""
    from ..data.build import ids_sha256
    from ..io import read_text

    p = Path(path)
    if not p.is_file():
        raise IdSetError(f"{p}: id-set file not found")
    try:
        doc = json.loads(read_text(p))
    except json.JSONDecodeError as exc:
        raise IdSetError(f"{p}: not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("classes"), dict):
        raise IdSetError(f"{p}: not a maskkit id-set file (expected \"format\": \"{FORMAT}\" and \"classes\")")
    classes: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for c, entry in doc["classes"].items():
        ids = entry.get("ids") if isinstance(entry, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise IdSetError(f"{p}: class '{c}' has no list of string ids")
        if ids_sha256(ids) != entry.get("sha256"):
            raise IdSetError(f"{p}: the ids of class '{c}' hash to {ids_sha256(ids)[:12]}, the file records "
                             f"{str(entry.get('sha256'))[:12]}; the file was edited or damaged since it was written")
        for i in ids:
            if i in owner:
                raise IdSetError(f"{p}: id '{i}' is listed twice (class '{owner[i]}' and class '{c}'); an image belongs to one class")
            owner[i] = c
        classes[c] = ids
    idset = IdSet(str(doc.get("name", p.stem)), classes, doc.get("definition") or {})
    if idset.sha256 != doc.get("sha256"):
        raise IdSetError(f"{p}: the set's ids hash to {idset.sha256[:12]}, the file records {str(doc.get('sha256'))[:12]}; "
                         f"the file was edited or damaged since it was written")
    if table is not None:
        have = {r.id for r in table.records}
        label = idset.label_of()
        missing = [i for i in idset.ids if i not in have]
        if missing:
            raise IdSetError(f"{p}: {len(missing)} of {len(idset.ids)} ids are not in table {table.name} "
                             f"({len(have)} records), e.g. '{missing[0]}' ({label[missing[0]]}); the set was drawn from other data")
    return idset


def select(table, idset: IdSet):
    """A :class:`~maskkit.data.records.Table` of ``table``'s records named by ``idset``, in the set's
    order (class by class); an id the table lacks is a one-line :class:`IdSetError`."""
    from ..data.records import Table

    by_id = {r.id: r for r in table.records}
    missing = [i for i in idset.ids if i not in by_id]
    if missing:
        raise IdSetError(f"id set {idset.name}: {len(missing)} ids are not in table {table.name}, e.g. '{missing[0]}'")
    return Table(f"{table.name}:{idset.name}", [by_id[i] for i in idset.ids], table.label_names)
