"""Building a run's datasets from ``cfg.data``: the adapter table, the patient split, the
training and held-out datasets. Used by training, evaluation, visualisation and sweeps alike
(evaluation does not import training)."""

from __future__ import annotations

import hashlib

from ..config import ExperimentConfig
from ..errors import MaskkitError


def split_by_patient(records, val_fraction: float, seed: int):
    """(train, held-out) records: a patient (or, without one, a record) goes to held-out when the
    SHA-1 bucket of ``"{seed}:{patient}"`` falls below ``val_fraction``."""
    def bucket(r):
        key = f"{seed}:{r.patient_id or r.id}".encode()
        return int(hashlib.sha1(key).hexdigest()[:8], 16) / 0xFFFFFFFF
    train = [r for r in records if bucket(r) >= val_fraction]
    val = [r for r in records if bucket(r) < val_fraction]
    return train, val


def build_datasets(cfg: ExperimentConfig, image_size: int, tokenizer=None):
    """(train, held-out) datasets and their label names, from ``cfg.data``.

    The training set replaces a sample that fails to decode by the next one that decodes (the skip
    policy, reported); the held-out set drops it. ``tokenizer`` makes the training set compute
    each record's token fields once (in the DataLoader's workers).
    """
    from .dataset import PhantomDataset, XrayDataset
    from .ner import CachedNER, make_ner
    from .phantoms import HELD_OUT_OFFSET
    from .records import Table

    d = cfg.data
    ner = CachedNER(make_ner(d.ner, d.ner_model)) if cfg.text_mask is not None else None  # entities feed EntMLM only
    if d.name == "phantoms":
        train = PhantomDataset(d.n, d.seed, image_size, offset=0, ner=ner, p_unpaired=d.p_unpaired, tokenizer=tokenizer)
        val = PhantomDataset(d.val_n, d.seed, image_size, offset=HELD_OUT_OFFSET, ner=None, p_unpaired=0.0) if d.val_n else None
        return train, val, train.label_names
    table = load_records(cfg)
    tr, va = split_by_patient(table.records, 0.1, cfg.train.seed)
    train = XrayDataset(Table(table.name, tr, table.label_names), image_size, d.decode_policy, ner=ner, cache=d.cache,
                        tokenizer=tokenizer, on_skip="replace", raw_cache=True)
    val = XrayDataset(Table(table.name, va, table.label_names), image_size, d.decode_policy, cache=d.cache) if va else None
    return train, val, table.label_names


def load_records(cfg: ExperimentConfig):
    """The adapter table of ``cfg.data`` (not phantoms), after filters; one-line errors."""
    from .records import load_table

    d = cfg.data
    opts = dict(d.options)
    if d.name == "csv":
        if not d.path:
            raise MaskkitError("data.path: data=csv needs data.path=/path/to/file.csv")
        opts["path"] = d.path
    else:
        if not d.root:
            raise MaskkitError(f"data.root: data={d.name} needs data.root=/path/to/{d.name}")
        opts["root"] = d.root
    try:
        table = load_table(d.name, **opts)
    except TypeError as exc:
        raise MaskkitError(f"data.options: {exc}") from None
    if not len(table):
        raise MaskkitError(f"data: {d.name} at {d.root or d.path} has no records (after filters)")
    return table
