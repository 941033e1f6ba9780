"""Fine-tuning and linear probing of the image encoder at 1%, 10% and 100% of the labels.

Splits are patient-level, seeded, nested (the 1% set is inside the 10% set, inside 100%) and
stored as JSON files with a SHA-256 checksum of their ids, so every method is compared on the
same images. Samples of a run's corpus are keyed by ``(source, id)`` (:func:`pretraining_data`):
ids and patients of different sources never meet, even when two sources use the same id. Multi-label BCE (unknown labels masked out); AUC per label and mean on the test split,
with the test samples each label leaves out as unknown (``FinetuneResult.unknown``) and a
``LabelCoverageWarning`` for a label the test split holds with one class.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import SkipReport, decoded_batches
from ..errors import MaskkitError
from ..io import atomic_write_text


Key = str | tuple[str, str]  # a sample: its id, or (source, id) in a corpus of several sources


def _text(key: Key) -> str:
    return key if isinstance(key, str) else "\t".join(key)


def checksum(ids: list[Key]) -> str:
    """SHA-256 of the sorted ids joined by newlines (a ``(source, id)`` key as ``source<TAB>id``)."""
    return hashlib.sha256("\n".join(sorted(map(_text, ids))).encode()).hexdigest()


def make_splits(ids: list[Key], patients: list, seed: int = 0, test_fraction: float = 0.2,
                fractions: tuple[float, ...] = (0.01, 0.1, 1.0), test_ids: list[Key] | None = None) -> dict[str, dict]:
    """Patient-level splits: ``test`` and nested ``train_{pct}`` sets. Deterministic in ``seed``.

    ``ids`` are sample keys (ids, or ``(source, id)`` pairs) and ``patients`` their patients (a
    sample with None is its own patient), of one kind per call. ``test_ids`` fixes the test set
    (e.g. the patients held out from pretraining); their patients never appear in a training split.
    """
    pats = sorted({p or i for p, i in zip(patients, ids)})
    rng = np.random.default_rng(seed)
    order = [pats[i] for i in rng.permutation(len(pats))]
    if test_ids is not None:
        tid = set(test_ids)
        test_p = {p or i for p, i in zip(patients, ids) if i in tid}
        pool = [p for p in order if p not in test_p]
    else:
        n_test = max(1, round(test_fraction * len(order)))
        test_p, pool = set(order[:n_test]), order[n_test:]
    by_patient: dict[str, list[str]] = {}
    for p, i in zip(patients, ids):
        by_patient.setdefault(p or i, []).append(i)
    out = {"test": sorted(i for p in test_p for i in by_patient[p])}
    for f in fractions:
        k = max(1, math.ceil(f * len(pool)))
        out[f"train_{f:g}"] = sorted(i for p in pool[:k] for i in by_patient[p])
    return {name: {"ids": v, "n": len(v), "seed": seed, "sha256": checksum(v)} for name, v in out.items()}


def write_splits(splits: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, s in splits.items():
        atomic_write_text(folder / f"{name}.json", json.dumps(s, indent=1))


def read_splits(folder: Path, source: str | None = None) -> dict:
    """The split files of ``folder`` (``test.json`` required), each checked against its SHA-256.
    A ``[source, id]`` entry is read as the key ``(source, id)``; with ``source``, a plain id (a file
    written before keys named their source, for a corpus of one source) is read as ``(source, id)``."""
    out = {}
    for f in sorted(folder.glob("*.json")):
        from ..io import read_text

        s = json.loads(read_text(f))
        ids = [tuple(i) if isinstance(i, list) else i for i in s["ids"]]
        if checksum(ids) != s["sha256"]:
            raise MaskkitError(f"{f}: ids do not match their sha256; the split file was edited")
        if source is not None:
            ids = [(source, i) if isinstance(i, str) else i for i in ids]
        s["ids"] = ids
        out[f.stem] = s
    if "test" not in out:
        raise MaskkitError(f"{folder}: no test.json split")
    return out


@dataclass
class FinetuneResult:
    fraction: str
    mode: str
    auc: dict[str, float | None]
    n_train: int
    sha256: str
    # test samples left out of each label as unknown, and one line per label the test split
    # holds with a single class (AUC undefined)
    unknown: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def mean_auc(self) -> float | None:
        v = [a for a in self.auc.values() if a is not None]
        return float(np.mean(v)) if v else None


def masked_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    known = ~torch.isnan(y)
    return F.binary_cross_entropy_with_logits(logits[known], y[known])


def _auc(y: np.ndarray, s: np.ndarray, names) -> dict[str, float | None]:
    from sklearn.metrics import roc_auc_score

    out = {}
    for k, n in enumerate(names):
        known = ~np.isnan(y[:, k])
        yk = y[known, k]
        out[n] = float(roc_auc_score(yk, s[known, k])) if 0 < yk.sum() < len(yk) else None
    return out


def pretraining_data(cfg, image_size: int, corpus=None):
    """(one dataset over the pretraining train and held-out parts of ``cfg.data``, every source,
    its label names, the (key, patient) of every sample, the held-out keys): fine-tuning and probing
    train on the first and test on the patients pretraining held out. No NER (no text is read).

    A sample's key is ``(source, id)`` and its patient ``(source, patient id)`` (None without one),
    with ``source`` the corpus's unique source name (:attr:`~maskkit.data.build.Corpus.names`): two
    sources that use the same id or patient id stay apart. The dataset's ``keys`` are these keys, in
    its order. ``corpus``: the :class:`~maskkit.data.build.Corpus` already built (e.g. verified
    against a run's split.json), else it is built from ``cfg``."""
    from ..data.build import ConcatSources, build_corpus

    if corpus is None:
        corpus = build_corpus(cfg, image_size, ner=False)  # fine-tuning reads no entities
    if corpus.val is None:
        raise MaskkitError(f"fine-tuning needs held-out data: {corpus.empty_held_out_line()}")
    parts, names, recs, test_ids = [], [], [], set()
    for name, s in zip(corpus.names, corpus.sources):
        for d, rs in ((s.train, s.train_records), (s.val, s.held_records)):
            if d is not None and len(d):
                parts.append(d)
                names.append(name)
                recs += [((name, r.id), (name, r.patient_id) if r.patient_id else None) for r in rs]
        test_ids |= {(name, r.id) for r in s.held_records}
    ds = ConcatSources(parts, names)
    return ds, corpus.label_names, recs, test_ids


def held_out_splits(recs: list[tuple], test_ids: set, seed: int = 0) -> dict[str, dict]:
    """:func:`make_splits` of ``recs`` ((key, patient) pairs) with the held-out keys as the test set."""
    return make_splits([r[0] for r in recs], [r[1] for r in recs], seed=seed, test_ids=sorted(test_ids))


def dataset_index(dataset) -> dict:
    """Each sample's key -> its row in ``dataset``: ``(source, id)`` for a dataset of several parts
    (:class:`~maskkit.data.build.ConcatSources`, as :func:`pretraining_data` builds), else the id."""
    from ..data.build import ConcatSources
    from ..data.dataset import ReportDataset

    if isinstance(dataset, ConcatSources):  # every sample's (source, id), in order
        return {key: i for i, key in enumerate(dataset.keys)}
    if isinstance(dataset, ReportDataset):  # maskkit's datasets know their ids without decoding
        return {sid: i for i, sid in enumerate(dataset.ids)}
    return {dataset[i]["id"]: i for i in range(len(dataset))}  # any other map-style dataset


def images_of(items, device="cpu") -> torch.Tensor:
    """``[B, 1, S, S]`` float images in [0, 1] of decoded samples, on ``device``: a training
    dataset over a prepared cache returns uint8 images (0-255, ``raw_cache``), divided by 255 here
    as :func:`maskkit.data.dataset.to_device` does for training."""
    x = torch.stack([s["image"] for s in items]).to(device)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def split_rows(dataset, **options):
    """What fine-tuning and segmentation do first: check ``options`` (``mode``, ``epochs``, ``lr``,
    ``batch_size``, ``seed``) against :class:`maskkit.options.FinetuneOptions` (one
    :class:`~maskkit.options.OptionValueError` line naming the argument and its range), then return
    ``rows(ids) -> [dataset row]`` for a split's ids (:func:`dataset_index`); an id the dataset
    lacks is one :class:`MaskkitError` line naming it and how many are missing."""
    from ..options import FinetuneOptions

    FinetuneOptions.check("=", **options)
    index = dataset_index(dataset)

    def rows(ids) -> list[int]:
        missing = [i for i in ids if i not in index]
        if missing:
            raise MaskkitError(f"split id {_text(missing[0])!r} is not in the dataset ({len(missing)} missing)")
        return [index[i] for i in ids]

    return rows


def run_finetune(model, dataset, label_names, splits: dict, mode: str = "probe", epochs: int = 20, lr: float = 1e-3,
                 batch_size: int = 32, seed: int = 0, device="cpu") -> list[FinetuneResult]:
    """Train a linear head (``probe``: encoder frozen; ``finetune``: encoder too) per train split.

    ``mode``, ``epochs``, ``lr``, ``batch_size`` and ``seed`` are checked first against
    :class:`maskkit.options.FinetuneOptions` (an absurd, negative or non-finite value is one
    :class:`~maskkit.options.OptionValueError` line naming the argument and its range)."""
    import copy

    rows = split_rows(dataset, mode=mode, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    skips = SkipReport(max_fraction=1.0)

    def batches(idx, size):
        """(images, labels) of the samples of ``idx`` that decode, ``size`` at a time (skip policy)."""
        for items in decoded_batches(dataset, idx, size, skips):
            yield images_of(items), torch.stack([s["labels"] for s in items]).float()

    @torch.no_grad()
    def features(m, idx):
        feats, ys = [], []
        for x, y in batches(idx, 64):
            feats.append(m.encode_image(x.to(device))[0].float().cpu())
            ys.append(y)
        if not feats:
            raise MaskkitError(f"no image of {len(idx)} in a split decodes ({len(skips.skipped)} skipped; last: {skips.skipped[-1][1]})")
        return torch.cat(feats), torch.cat(ys)

    test_idx = rows(splits["test"]["ids"])
    results = []
    for name in sorted(k for k in splits if k.startswith("train_")):
        torch.manual_seed(seed)
        m = copy.deepcopy(model).to(device)
        head = nn.Linear(m.embed_dim, len(label_names)).to(device)
        tr_idx = rows(splits[name]["ids"])
        if mode == "probe":
            m.eval()
            xtr, ytr = features(m, tr_idx)
            # standardise features with training statistics (MAE's probe puts a BatchNorm before the head)
            mu, sd = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True, correction=0).clamp_min(1e-6)  # defined for one sample too
            xtr = (xtr - mu) / sd
            opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
            g = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                perm = torch.randperm(len(xtr), generator=g)
                for s in range(0, len(perm), batch_size):
                    b = perm[s:s + batch_size]
                    loss = masked_bce(head(xtr[b].to(device)), ytr[b].to(device))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            xte, yte = features(m, test_idx)
            scores = head(((xte - mu) / sd).to(device)).detach().cpu()
        else:
            params = list(m.clip.visual.parameters()) + list(head.parameters())
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
            g = torch.Generator().manual_seed(seed)
            for _ in range(epochs):
                m.train()
                perm = torch.randperm(len(tr_idx), generator=g).tolist()
                for x, y in batches([tr_idx[j] for j in perm], batch_size):
                    loss = masked_bce(head(m.encode_image(x.to(device))[0]), y.to(device))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            m.eval()
            with torch.no_grad():
                xte, yte = features(m, test_idx)
                scores = head(xte.to(device)).cpu()
        if not bool(torch.isfinite(scores).all()):  # a step went non-finite: the head (and encoder) are NaN
            raise MaskkitError(f"eval finetune: the {mode} on split {name.removeprefix('train_')} diverged (non-finite "
                               f"scores after {epochs} epochs at --lr {lr:g}); lower --lr")
        from .labels import label_coverage, one_class_warnings

        cov = label_coverage(yte.numpy(), label_names)
        notes = one_class_warnings(cov, f"{mode} test split", warn=name == min(k for k in splits if k.startswith("train_")))
        results.append(FinetuneResult(name.removeprefix("train_"), mode, _auc(yte.numpy(), scores.numpy(), label_names),
                                      len(tr_idx), splits[name]["sha256"], {n: c["n_unknown"] for n, c in cov.items()}, notes))
    return results
