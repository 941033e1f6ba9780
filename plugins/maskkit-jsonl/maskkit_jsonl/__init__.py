"""A JSON-lines dataset adapter: the smallest complete maskkit dataset plugin.

The contract (docs/plugins.md): implement ``register_datasets(register)`` and call
``register(name, load, role=...)``. ``load``'s keyword parameters are the adapter's options; their
type hints (``Annotated`` constraints included) become a pydantic model that maskkit checks every
option against, so a mistyped option is one line naming this adapter and the key.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from maskkit import hookimpl
from maskkit.data.records import ColumnDefault, DataError, OptionError, Record, Table, has_content, image_cell, named_column, need_file

__version__ = "0.1.0"


def jsonl(path: str, image_key: str = "image", report_key: str | None = ColumnDefault("report"),
          patient_key: str | None = ColumnDefault("patient"), labels_key: str | None = ColumnDefault("labels"),
          image_root: str | None = None,
          min_report_chars: Annotated[int, Field(ge=0)] = 0,
          on_missing_image: Literal["error", "skip"] = "error") -> Table:
    """A JSON-lines file, one object per image: image path, optional report, patient and labels.

    ``labels_key`` holds ``{name: 0 | 1 | null}``; label names are the union over the file in
    first-seen order, a name absent from a line is unknown (NaN). A report shorter than
    ``min_report_chars`` or without content is no report (the sample is image-only). A line
    without ``image_key`` is an error, or skipped with ``on_missing_image=skip``. The default
    ``report``, ``patient`` and ``labels`` keys are optional; a key named by an option that no line
    has is an error naming the file, the key and the keys the lines have (the
    :class:`~maskkit.data.records.ColumnDefault` contract), and so is an ``image_root`` that is
    not a folder. Raises :class:`maskkit.data.records.DataError` naming the file and line, and
    :class:`maskkit.data.records.OptionError` for a bad option value (named as the user set it).
    """
    p = need_file(path, "path", "JSON-lines file", (".jsonl", ".jsonl.gz", ".json"))  # {key}: data.path, data.sources[i] (jsonl).path
    base = Path(image_root).expanduser() if image_root else p.parent
    if image_root and not base.is_dir():
        raise OptionError("image_root", f"{{key}}: folder {base} does not exist")
    rows, names, keys = [], [], {}
    with p.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{n}: not a JSON object ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{p}:{n}: expected a JSON object, got {type(obj).__name__}")
            keys.update(dict.fromkeys(obj))
            if image_key not in obj:
                if on_missing_image == "skip":
                    continue
                raise DataError(f"{p}:{n}: no '{image_key}' key (set image_key=, or on_missing_image=skip)")
            image_cell(obj[image_key] if isinstance(obj[image_key], str) else str(obj[image_key]), f"{p}:{n}: '{image_key}'")
            labels = (obj.get(labels_key) if labels_key else None) or {}
            if not isinstance(labels, dict):
                raise DataError(f"{p}:{n}: '{labels_key}' must be an object of label: 0 | 1 | null")
            for k, v in labels.items():
                if v not in (0, 1, None) or isinstance(v, bool):
                    raise DataError(f"{p}:{n}: label '{k}': expected 0, 1 or null, got {v!r}")
                if k not in names:
                    names.append(k)
            rows.append((n, obj, labels))
    for option, key in (("report_key", report_key), ("patient_key", patient_key), ("labels_key", labels_key)):
        if rows:  # a key you name that no line has: one line
            named_column(option, key, keys, str(p), what="key")
    recs = []
    for n, obj, labels in rows:
        img = Path(str(obj[image_key]))
        rep = obj.get(report_key) if report_key else None
        rep = rep if isinstance(rep, str) and has_content(rep) and len(rep.strip()) >= min_report_chars else None
        recs.append(Record(id=str(obj[image_key]), image_path=str(img if img.is_absolute() else base / img), report=rep,
                           labels={k: (math.nan if labels.get(k) is None else float(labels[k])) for k in names},
                           patient_id=str(obj[patient_key]) if patient_key and obj.get(patient_key) is not None else None,
                           extra={"line": n}))
    return Table("jsonl", recs, tuple(names), patient_field=patient_key if patient_key in keys else None)


@hookimpl
def register_datasets(register):
    register("jsonl", jsonl, role="auto")
