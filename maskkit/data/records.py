"""Dataset adapters: the metadata formats users have on disk, read into one record type.

Each adapter reads only metadata (CSV / XML / split files) and returns a :class:`Table` of
:class:`Record` s; images are decoded later, by the dataset, under the skip policy. View filters
and one-image-per-study are options of every adapter that knows views or studies, never silent
defaults. Label values: 1.0 positive, 0.0 negative, NaN unknown.
"""

from __future__ import annotations

import ast
import csv
import math
import operator
import re
import tarfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from xml.etree import ElementTree as ET

from pydantic import BeforeValidator

from ..errors import MaskkitError
from ..findings import CHEXPERT_LABELS, NIH_LABELS, NO_FINDING, is_no_finding, label_key  # noqa: F401  (re-exported)

NAN = float("nan")



class DataError(MaskkitError):
    """A dataset root, metadata file or column that is missing or malformed."""


#: adapter options the single-source form sets as ``data.<key>`` (not ``data.options.<key>``)
DATA_OPTION_KEYS = ("root", "path", "n", "val_n", "p_unpaired", "seed")


def single_source_key(option: str) -> str:
    """How the single-source form spells a source's setting: ``data.root``, ``data.cache`` (the
    source's prepared cache), ``data.options.views``."""
    return f"data.{option}" if option in (*DATA_OPTION_KEYS, "cache") else f"data.options.{option}"


class OptionError(DataError):
    """A bad value of one adapter option, found while the adapter reads its data (a folder that
    does not exist, a policy a file needs): the message names the option by the key the user set.

    ``template`` holds ``{key}`` where that key goes (``{key:other}`` for another option of the
    same adapter); ``str()`` spells it as the single-source form does (``data.root``), and
    :func:`maskkit.data.sources.load_source` as the source's own key (``data.sources[1]
    (padchest).root``, ``--option root``). Adapters (built-in or a plugin's) raise it for an error
    that a setting of theirs must fix.
    """

    def __init__(self, option: str, template: str) -> None:
        self.option, self.template = option, template
        super().__init__(self.named(single_source_key))

    def __reduce__(self):  # picklable (a sweep's worker process sends its error back)
        return type(self), (self.option, self.template)

    def named(self, key_of) -> str:
        """The message with each ``{key}`` / ``{key:NAME}`` spelt by ``key_of(option)``."""
        return re.sub(r"\{key(?::(\w+))?\}", lambda m: key_of(m.group(1) or self.option), self.template)


@dataclass(frozen=True)
class AbsentColumn:
    """An optional column (or key) that a file lacked: the adapter option whose
    :class:`ColumnDefault` named it, that default, the columns the file has, the file, and what
    a column is called there (``column``; ``key`` for a JSON-lines file)."""

    option: str
    default: str
    columns: tuple[str, ...]
    where: str
    what: str = "column"


_absent: ContextVar[list[AbsentColumn] | None] = ContextVar("maskkit_absent_columns", default=None)


@contextmanager
def absent_columns() -> Iterator[list[AbsentColumn]]:
    """Collect the :class:`AbsentColumn` s that :func:`named_column` reads as absent while an
    adapter runs inside the block (a CSV without ``patient_id``): the list it yields fills up.
    :meth:`maskkit.data.sources.SourceSpec.load` keeps them on the table (:attr:`Table.absent`)."""
    found: list[AbsentColumn] = []
    token = _absent.set(found)
    try:
        yield found
    finally:
        _absent.reset(token)


_source: ContextVar[tuple | None] = ContextVar("maskkit_source", default=None)


@contextmanager
def naming_source(label: str, key) -> Iterator[None]:
    """Inside the block, an adapter's notes name its source and its options as the config does
    (``data.sources[1] (csv)``, ``data.sources[1] (csv).label_cols``; ``key(option)`` spells an
    option): :meth:`maskkit.data.sources.SourceSpec.load` sets them (:func:`source_label`)."""
    token = _source.set((label, key))
    try:
        yield
    finally:
        _source.reset(token)


def source_label(default: str, option: str | None = None) -> str:
    """How an adapter's note names the source it reads (or, with ``option``, that option's key):
    what :func:`naming_source` set, else ``default`` (an adapter called directly, ``load_table``)."""
    cur = _source.get()
    if cur is None:
        return default
    return cur[1](option) if option else cur[0]


class ColumnDefault(str):
    """The default of an adapter option that names an optional column (or key) of the files it
    reads: a file without that column simply has none (the ``csv`` adapter's ``report_col``
    default ``report``: no reports), while a name the user gives must be there
    (:func:`named_column`). A plain ``str`` everywhere else (``maskkit datasets`` shows the name).
    An adapter can tell the two apart because it receives only the options that were given."""

    __slots__ = ()


def named_column(option: str, value: str | None, columns: Iterable[str], where: str, required: bool = False,
                 what: str = "column") -> str | None:
    """The column that adapter option ``option`` names, as the file has it (``columns``: its
    header, or the keys its records hold), or None when ``value`` is None (no such column wanted)
    or is the option's :class:`ColumnDefault` and the file lacks it (an optional column).

    A name the user gave that the file lacks is an :class:`OptionError`, one line naming the file
    (``where``), the key as the user set it and the columns there are; so is a ``required`` default
    (``missing column 'image_path'``): nothing is silently read as absent. ``what`` names a
    column in the messages (``key`` for a JSON-lines file's keys).
    """
    columns = list(columns)
    if value is None or value in columns:
        return value
    have = f"it has {', '.join(columns)}" if columns else f"it has no {what}"
    have = have if len(have) < 300 else have[:300] + "..."
    if isinstance(value, ColumnDefault):
        if not required:
            found = _absent.get()
            if found is not None:  # SourceSpec.load: what a source's file lacked, for its messages
                found.append(AbsentColumn(option, str(value), tuple(columns), where, what))
            return None
        raise DataError(f"{where}: missing {what} '{value}'; {have}")
    raise OptionError(option, f"{where}: {{key}}: no {what} {str(value)!r}; {have}")


#: canonical view names (``views=`` options): ``norm_view`` spellings such as ``pa`` or ``lateral`` are read as them
View = Annotated[Literal["PA", "AP", "LATERAL"], BeforeValidator(lambda v: norm_view(v) if isinstance(v, str) else v)]
UncertainPolicy = Literal["ones", "zeros", "ignore"]
#: the ``AbstractText`` sections of an Open-i report XML (any case is read as upper case)
OpeniSection = Annotated[Literal["COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"],
                         BeforeValidator(lambda v: v.upper() if isinstance(v, str) else v)]
BlankPolicy = Literal["negative", "unknown"]


def _doc(text: str) -> dict[str, str]:
    """A dataclass field's meaning (``field(metadata=_doc(...))``), which docs/plugins.md's
    generated table of :class:`Record` and :class:`Table` shows (:mod:`maskkit.docgen`)."""
    return {"doc": text}


@dataclass
class Record:
    """One image (and its report, if any); the fields' meanings are in their metadata (docs/plugins.md)."""

    id: str = field(metadata=_doc("the image's id, unique within the table (split.json lists the held-out ones)"))
    image_path: str | None = field(metadata=_doc("absolute path of the image file; None for generated data (phantoms)"))
    report: str | None = field(default=None, metadata=_doc("the report text; None (or empty) for an image without one"))
    labels: dict[str, float] = field(default_factory=dict, metadata=_doc(
        "label name (one of the table's label_names) -> 1.0 positive, 0.0 negative, NaN unknown"))
    patient_id: str | None = field(default=None, metadata=_doc(
        "the patient: each source is split by patient (train.seed, 10% held out); None: the record is its own patient"))
    study_id: str | None = field(default=None, metadata=_doc(
        "the study (one exam's images share it): one_per_study keeps the first image of each; None: its own study"))
    view: str | None = field(default=None, metadata=_doc(
        "PA, AP or LATERAL (maskkit.data.records.norm_view), read by the views filters; None: unknown"))
    extra: dict[str, Any] = field(default_factory=dict, metadata=_doc(
        "anything else the adapter keeps for its own split / dataset hooks or an evaluation"))


@dataclass
class Table:
    """The records of one dataset and the ordered names of its labels (fields: docs/plugins.md)."""

    name: str = field(metadata=_doc("the dataset's name (the adapter's, shown in messages and results)"))
    records: list[Record] = field(metadata=_doc("one Record per image, in the file's order"))
    label_names: tuple[str, ...] = field(metadata=_doc(
        "the label names, in the order evaluations report them; a record's labels use these keys; () for none"))
    #: the optional columns (or keys) named by an option's default that the file lacked
    #: (:func:`absent_columns`; filled by :meth:`maskkit.data.sources.SourceSpec.load`)
    absent: list[AbsentColumn] = field(default_factory=list, repr=False, metadata=_doc(
        "filled by maskkit, not by load: the optional columns named by an option's ColumnDefault that the file lacked"))
    patient_field: str | None = field(default=None, metadata=_doc(
        "the column (or key) the records' patient ids were read from, named by the warning about records without one; None: not said"))
    no_patient: int = field(default=0, metadata=_doc(
        "filled by maskkit: how many records carry no patient id (a blank cell) where others carry one"))
    duplicates: int = field(default=0, metadata=_doc(
        "filled by maskkit: records dropped because an earlier record has the same image file (A67)"))
    duplicate_example: str | None = field(default=None, metadata=_doc("filled by maskkit: the first such image"))

    def __len__(self) -> int:
        return len(self.records)


def count_missing_patients(table: Table) -> int:
    """The records of ``table`` without a patient id in a table where others have one (a blank
    ``patient_id`` cell of a CSV that has the column, a JSON line without the key): each such id,
    ``None`` or blank, is set to ``None`` (so :func:`maskkit.data.build.split_by_patient` splits each
    such record by itself, never all of them as one patient ``""``), and the count is kept as
    ``table.no_patient`` for the warning and the split record. 0 when every record has an id, or
    none does (a source split image by image, said elsewhere). Every adapter's table passes here
    (:meth:`maskkit.data.sources.SourceSpec.load`)."""
    missing = [r for r in table.records if r.patient_id is None or not str(r.patient_id).strip()]
    for r in missing:
        r.patient_id = None
    table.no_patient = len(missing) if len(missing) < len(table.records) else 0
    return table.no_patient


def drop_duplicate_images(table: Table) -> int:
    """Drop the records of ``table`` whose image file an earlier record already has (two rows of one
    CSV naming one image, ``a.png`` and ``./a.png`` alike: the absolute, normalised path), keeping
    the first; each would otherwise be sampled twice as often (docs/assumptions.md A67). The count
    and the first such image are kept as ``table.duplicates`` / ``table.duplicate_example`` for the
    warning and the split record. Records without an image file (the phantoms) are kept. Every
    adapter's table passes here (:meth:`maskkit.data.sources.SourceSpec.load`)."""
    import os

    seen: set[str] = set()
    keep, dropped = [], []
    for r in table.records:
        k = os.path.abspath(r.image_path) if r.image_path is not None else None
        if k is not None and k in seen:
            dropped.append(r)
            continue
        if k is not None:
            seen.add(k)
        keep.append(r)
    if dropped:
        table.records = keep
        table.duplicates, table.duplicate_example = len(dropped), dropped[0].image_path
    return len(dropped)


# --- shared helpers --------------------------------------------------------------------------

def _need_dir(root: str | Path, option: str = "root") -> Path:
    """The folder adapter option ``option`` names; one line naming the key when it does not exist or
    is a file (``{key}: /d/x.csv is a file; expected a folder``)."""
    p = Path(root).expanduser()
    if p.is_file():
        raise OptionError(option, f"{{key}}: {p} is a file; expected a folder")
    if not p.is_dir():
        raise OptionError(option, f"{{key}}: folder {p} does not exist")
    return p


def need_file(path: str | Path, option: str = "path", what: str = "CSV file", suffixes: tuple[str, ...] = (".csv", ".csv.gz")) -> Path:
    """The file adapter option ``option`` names (``what``: how messages call it). One line naming the
    key as the user set it (:class:`OptionError`) when it does not exist, or is a folder: then the
    files in it that look like one (``suffixes``) are named, ``{key}: /data/nih is a folder; expected
    a CSV file (it holds Data_Entry_2017.csv)``. Every adapter's file option (and a plugin's) goes here."""
    p = Path(path).expanduser()
    if p.is_dir():
        like = sorted(c.name for c in p.iterdir() if c.is_file() and c.name.lower().endswith(suffixes))[:3] if suffixes else []
        held = f" (it holds {', '.join(like)})" if like else ""
        raise OptionError(option, f"{{key}}: {p} is a folder; expected a {what}{held}")
    if not p.is_file():
        raise OptionError(option, f"{{key}}: {what} {p} does not exist")
    return p


def _find(root: Path, names: Iterable[str], what: str) -> Path:
    """The first of ``names`` (or its ``.gz``) under ``root`` (a name may be absolute); one line when
    none is there, or when a name given is a folder (``/d/labels is a folder; expected the RSNA
    labels CSV``)."""
    names = list(names)
    for n in names:
        for cand in (root / n, root / (n + ".gz")):
            if cand.is_file():
                return cand
    for n in names:
        if n and (root / n).is_dir():
            raise DataError(f"{root / n} is a folder; expected the {what}")
    raise DataError(f"{root}: no {what} found; expected one of {', '.join(names)} (optionally .gz)")


def read_csv(path: Path, required: Iterable[str] = ()) -> list[dict[str, str]]:
    """Rows of a CSV (plain or .gz) as dicts; a missing required column is a one-line error
    (:func:`read_csv_columns`, which also returns the header's column names)."""
    return read_csv_columns(path, required)[1]


def read_csv_columns(path: Path, required: Iterable[str] = (), expected: Iterable[str] = ()) -> tuple[list[str], list[dict[str, str]]]:
    """(the header's column names, the rows as dicts) of a CSV (plain or .gz); a missing required
    column is a one-line error (``expected``: columns an empty file's message names besides them).

    UTF-8 with or without a byte-order mark (Excel's "CSV UTF-8"; ``maskkit.io.read_text``), LF
    or CRLF line ends, cells quoted as the ``csv`` module reads them. Header names are stripped
    of surrounding whitespace (``" report "`` is the column ``report``); a header cell left empty
    names no column (its cells are ignored: Excel's trailing commas); two header cells with one
    name are an error. A row shorter than the header has None in the missing cells; a row with
    non-empty cells beyond the header is an error naming the row. A file with no header row (empty,
    or only blank lines) and a header that is one column holding a ``;``, tab or ``|`` (a CSV
    saved with another separator, as Excel does in locales whose decimal mark is a comma) are
    one-line errors naming the file and what was expected.
    """
    import io

    from ..io import read_text

    required = list(required)
    text = read_text(path)
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next((cells for cells in reader if any(c.strip() for c in cells)), None)
        if header is None:
            want = [*required, *(c for c in expected if c not in required)]
            want = f" ({', '.join(want)}, ...)" if want else ""
            raise DataError(f"{path}: the file is empty; expected a CSV header row naming its columns{want}, then one row per record")
        names = [h.strip() for h in header]
        other = next((sep for sep in (";", "\t", "|") if len(names) == 1 and sep in names[0]), None)
        if other is not None:
            shown = {"\t": "tab"}.get(other, repr(other))
            raise DataError(f"{path}: the header is one column, {names[0][:80]!r}; expected comma-separated columns "
                            f"(the file looks {shown}-separated: save it as CSV with commas)")
        seen: dict[str, int] = {}
        for i, h in enumerate(names):
            if h and h in seen:
                raise DataError(f"{path}: column '{h}' appears twice in the header (cells {seen[h] + 1} and {i + 1})")
            seen.setdefault(h, i)
        cols = [h for h in names if h]
        missing = [c for c in required if c not in seen]
        if missing:
            raise DataError(f"{path}: missing column '{missing[0]}'; it has {', '.join(cols)[:300]}")
        keep = [(i, h) for i, h in enumerate(names) if h]
        width = len(names)
        rows = []
        for cells in reader:
            if not cells:
                continue  # a blank line (csv.DictReader skips them too)
            if len(cells) > width and any(c.strip() for c in cells[width:]):
                raise DataError(f"{path}: row {len(rows) + 2} has {len(cells)} cells, the header {width}; "
                                f"quote a cell that holds a comma")
            rows.append({h: cells[i] if i < len(cells) else None for i, h in keep})
        return cols, rows
    except csv.Error as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None


def image_cell(value: str | None, where: str) -> str:
    """The image file name or path of one metadata cell; an empty cell, or one ending in a path
    separator (a folder), is a one-line :class:`DataError` naming ``where`` (file, row, column):
    resolved against the image folder it would be that folder, not an image."""
    if value is None or not value.strip():
        raise DataError(f"{where}: empty; expected an image file name or path")
    if value.rstrip().endswith(("/", "\\")):
        raise DataError(f"{where}: {value!r} names a folder; expected an image file name or path")
    return value


def norm_view(v: str | None) -> str | None:
    """Canonical view names: PA, AP, LATERAL (or None when unknown)."""
    if not v:
        return None
    u = v.strip().upper().replace("-", "_")
    if u in ("PA", "POSTEROANTERIOR"):
        return "PA"
    if u.startswith("AP") or u in ("ANTEROPOSTERIOR",):
        return "AP"
    if u in ("L", "LL", "RL", "LATERAL", "LAT", "LEFT LATERAL", "RIGHT LATERAL", "LAO", "RAO"):
        return "LATERAL"
    return u


def apply_filters(records: list[Record], views: Iterable[str] | None, one_per_study: bool) -> list[Record]:
    """Keep the listed views (PA / AP / LATERAL) and, optionally, the first image of each study."""
    if views:
        want = {norm_view(v) for v in views}
        records = [r for r in records if r.view in want]
    if one_per_study:
        seen, kept = set(), []
        for r in records:
            key = r.study_id or r.id
            if key not in seen:
                seen.add(key)
                kept.append(r)
        records = kept
    return records


UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")
BLANK_POLICIES = ("negative", "unknown")


def chexpert_value(raw: str | None, uncertain: str | None, blank: str = "negative") -> float:
    """One CheXpert-labeler cell (``1`` / ``0`` / ``-1`` / blank, also ``1.0`` ...) as a label value.

    ``-1`` (uncertain mention) follows ``uncertain``: ``ones`` -> 1.0, ``zeros`` -> 0.0,
    ``ignore`` -> NaN; ``None`` (no policy chosen, the ``csv`` adapter's default) makes it an
    error that names the policy. A blank cell - also ``nan`` / ``NaN``, how pandas and NumPy write
    a missing value - follows ``blank``, a separate policy: ``negative`` -> 0.0 (the labeler's
    meaning: the observation is not mentioned in the report; Irvin et al., AAAI 2019),
    ``unknown`` -> NaN. Raises ``ValueError`` for any other value, :class:`OptionError` (a
    ``ValueError``) for a ``-1`` without a policy (adapters name file, row, column: :func:`cell_error`).
    """
    raw = (raw or "").strip()
    if raw == "" or raw.lower() == "nan":
        return 0.0 if blank == "negative" else NAN
    try:
        v = float(raw)
    except ValueError:
        v = NAN
    if v == -1:
        if uncertain is None:
            raise OptionError("uncertain", f"got {raw!r} (uncertain) and no uncertain policy; set {{key}} "
                                           f"to ones, zeros or ignore")
        return {"ones": 1.0, "zeros": 0.0, "ignore": NAN}[uncertain]
    if v not in (0.0, 1.0):
        raise ValueError(f"expected 1, 0, -1 or blank, got {raw!r}")
    return v


def _check_policy(uncertain: str | None, blank: str = "negative", allow_none: bool = False) -> None:
    """The policies of an adapter called directly (the options model checks them when a config resolves)."""
    if not (uncertain is None and allow_none) and uncertain not in UNCERTAIN_POLICIES:
        raise OptionError("uncertain", f"{{key}}: '{uncertain}' is not a policy; expected ones, zeros or ignore")
    if blank not in BLANK_POLICIES:
        raise OptionError("blank", f"{{key}}: '{blank}' is not a policy; expected negative (blank = not mentioned) or unknown")


def check_label_values(table: "Table", where: str = "") -> None:
    """Every label value of ``table`` is 1.0, 0.0 or NaN (unknown), what training, zero-shot and
    fine-tuning expect; else a one-line :class:`DataError` naming the dataset, record, label and
    value. Adapters check their cells as they parse them (naming file, row and column); this is
    the check every table passes on its way out of :func:`load_table`, whatever adapter made it.
    """
    allowed = (0.0, 1.0)
    for r in table.records:
        for k, v in r.labels.items():
            if not (isinstance(v, (int, float)) and (v in allowed or v != v)):
                raise DataError(f"{where or table.name}: record '{r.id}', label '{k}' is {v!r}; expected 1, 0 or "
                                f"unknown (NaN)")


def cell_error(exc: ValueError, where: str) -> DataError:
    """The one-line error of a bad label cell: ``where`` (file, row, column) and the cell's
    reason; an :class:`OptionError` (a policy the cell needs) stays one, so its key is spelt as set."""
    if isinstance(exc, OptionError):
        return OptionError(exc.option, f"{where}: {exc.template}")
    return DataError(f"{where}: {exc}")


def chexpert_labels(row: dict[str, str], path: Path, line: int, uncertain: str, blank: str) -> dict[str, float]:
    """The 14 CheXpert labels of one CSV row; a bad cell is a one-line error naming file, row and column."""
    out = {}
    for k in CHEXPERT_LABELS:
        try:
            out[k] = chexpert_value(row.get(k), uncertain, blank)
        except ValueError as exc:
            raise cell_error(exc, f"{path}: row {line}, column '{k}'") from None
    return out


# De-identification marks: MIMIC-CXR ``___``, Open-i ``XXXX``, MIMIC-II style ``[**Name**]``
_DEID = re.compile(r"\[\*\*.*?\*\*\]|_{2,}|X{2,}")


def has_content(text: str | None) -> bool:
    """Whether a report body says anything: a letter left once de-identification marks are removed
    (``___``, ``XXXX``, ``[**...**]``); only marks, digits, punctuation or whitespace is no content."""
    return bool(text) and any(c.isalpha() for c in _DEID.sub(" ", text))


def join_sections(sections: Iterable[tuple[str, str | None]]) -> str | None:
    """``"HEADING: body HEADING: body"`` from the sections whose *body* has content, or None.

    Whether a report is missing is decided here, on the bodies, before any heading is written: a
    report whose sections hold only de-identification marks and punctuation is no report (the
    sample is image-only), not a caption made of its headings.
    """
    parts = [f"{head}: {' '.join(body.split())}" for head, body in sections if has_content(body)]
    return " ".join(parts) or None


# --- adapters --------------------------------------------------------------------------------

#: the report sections the ``mimic`` adapter reads by default
MIMIC_SECTIONS = ("findings", "impression")


def mimic(root: str, split: Literal["train", "validate", "test"] | None = None, views: list[View] | None = None,
          one_per_study: bool = False, uncertain: UncertainPolicy = "ones", sections: tuple[str, ...] = MIMIC_SECTIONS,
          blank: BlankPolicy = "negative") -> Table:
    """MIMIC-CXR-JPG: metadata, CheXpert labels, split CSVs and the ``files/p1x/pNNN/sNNN.txt`` reports.

    Labels: ``mimic-cxr-2.0.0-chexpert.csv`` cells under ``uncertain`` (-1) and ``blank`` (not
    mentioned) policies, see :func:`chexpert_value`; a study absent from that file (or no such
    file) has every label unknown (NaN). The report is the ``sections`` whose bodies have content
    (:func:`join_sections`); a study whose sections hold only ``___`` marks is image-only. A
    section named in ``sections`` (other than the default) that no report has is one line naming
    the key and the sections the reports have: a misspelt heading is not read as an absent one.
    """
    _check_policy(uncertain, blank)
    root = _need_dir(root)
    meta_path = _find(root, ["mimic-cxr-2.0.0-metadata.csv"], "metadata CSV")
    meta = read_csv(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition"])
    labels = {}
    if any((root / n).is_file() for n in ("mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-chexpert.csv.gz")):
        lab_path = _find(root, ["mimic-cxr-2.0.0-chexpert.csv"], "CheXpert label CSV")
        for i, row in enumerate(read_csv(lab_path, ["subject_id", "study_id"])):
            labels[(row["subject_id"], row["study_id"])] = chexpert_labels(row, lab_path, i + 2, uncertain, blank)
    splits = {}
    if split is not None:
        for row in read_csv(_find(root, ["mimic-cxr-2.0.0-split.csv"], "split CSV"), ["dicom_id", "split"]):
            splits[row["dicom_id"]] = row["split"]
    recs = []
    for i, row in enumerate(meta):
        if split is not None and splits.get(row["dicom_id"]) != split:
            continue
        image_cell(row["dicom_id"], f"{meta_path}: row {i + 2}, column 'dicom_id'")
        sid, st = row["subject_id"], row["study_id"]
        folder = root / "files" / f"p{sid[:2]}" / f"p{sid}"
        recs.append(Record(
            id=row["dicom_id"], image_path=str(folder / f"s{st}" / f"{row['dicom_id']}.jpg"),
            report=None, labels=labels.get((sid, st), {k: NAN for k in CHEXPERT_LABELS}),
            patient_id=sid, study_id=st, view=norm_view(row["ViewPosition"]),
            extra={"report_path": str(folder / f"s{st}.txt")},
        ))
    recs = apply_filters(recs, views, one_per_study)
    cache: dict[str, str | None] = {}
    heads: set[str] = set()  # every section heading of the reports read
    for r in recs:
        p = r.extra["report_path"]
        if p not in cache:
            cache[p] = mimic_report(Path(p), sections, heads) if Path(p).is_file() else None
        r.report = cache[p]
    absent = [x for x in sections if x.lower() not in heads]
    if heads and absent and tuple(s.lower() for s in sections) != MIMIC_SECTIONS:  # a section you name that no report has
        from ..errors import close_matches

        raise OptionError("sections", f"{root}: {{key}}: no report has a section {absent[0]!r}"
                                      f"{close_matches(absent[0].lower(), heads) or ''}; the reports have "
                                      f"{', '.join(sorted(heads)[:12])}")
    return Table("mimic", recs, CHEXPERT_LABELS, patient_field="subject_id")



_SECTION = re.compile(r"^\s*([A-Z][A-Z /]+):", re.M)


def mimic_report(path: Path, sections: tuple[str, ...] = MIMIC_SECTIONS, seen: set[str] | None = None) -> str | None:
    """The named sections of a MIMIC-CXR free-text report, ``"FINDINGS: ... IMPRESSION: ..."``;
    sections with no content (only ``___`` marks, punctuation) are left out, None when none is left.
    ``seen``: a set the report's section headings (lower case) are added to."""
    from ..io import read_text

    text = read_text(path, errors="replace")
    heads = list(_SECTION.finditer(text))
    parts = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        parts[m.group(1).strip().lower()] = text[m.end():end]
    if seen is not None:
        seen.update(parts)
    return join_sections((s.upper(), parts.get(s.lower())) for s in sections)


def padchest(root: str, csv_name: str | None = None, views: list[View] | None = None, one_per_study: bool = False,
             labels: Iterable[str] | None = None) -> Table:
    """PadChest: image-only in XLIP; ``Labels`` (a Python list string, :func:`padchest_labels`)
    becomes multi-hot labels (``labels``: the set, in that order; a label you name that no row has
    is one line, not an all-negative column). ``extra["method_label"]``: the CSV's ``MethodLabel`` (``Physician``
    for the radiologist-labelled images, ``RNN_model`` for the rest; None when the CSV has no such
    column), which the PadChest zero-shot protocol filters on (:mod:`maskkit.eval.padchest`)."""
    root = _need_dir(root)
    path = Path(csv_name) if csv_name and Path(csv_name).is_file() else _find(
        root, [csv_name] if csv_name else ["PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"], "PadChest labels CSV")
    rows = read_csv(path, ["ImageID", "ImageDir", "Projection", "Labels", "StudyID", "PatientID"])
    parsed = [padchest_labels(row["Labels"]) for row in rows]
    found = {l for labs in parsed if labs for l in labs}
    names = tuple(labels) if labels is not None else tuple(sorted(found))
    absent = [n for n in names if n not in found] if labels is not None and rows else []
    if absent:  # a label you name that no row has would be an all-negative column
        from ..errors import close_matches

        raise OptionError("labels", f"{path}: {{key}}: no row has the label {absent[0]!r}"
                                    f"{close_matches(absent[0], found) or ''} ({len(absent)} of {len(names)} named are absent; "
                                    f"labels are the strings of the Labels lists, e.g. {', '.join(repr(l) for l in sorted(found)[:3])})")
    recs = []
    for i, (row, labs) in enumerate(zip(rows, parsed)):
        image_cell(row["ImageID"], f"{path}: row {i + 2}, column 'ImageID'")
        lab = {n: NAN for n in names} if labs is None else {n: float(n in labs) for n in names}
        recs.append(Record(id=row["ImageID"], image_path=str(root / row["ImageDir"] / row["ImageID"]), report=None,
                           labels=lab, patient_id=row["PatientID"], study_id=row["StudyID"],
                           view=norm_view(row["Projection"]), extra={"method_label": row.get("MethodLabel")}))
    return Table("padchest", apply_filters(recs, views, one_per_study), names, patient_field="PatientID")


def padchest_labels(cell: str | None) -> list[str] | None:
    """The labels of one PadChest ``Labels`` cell, a Python list literal (``"['normal']"``):
    each string stripped, empty strings and non-strings left out; ``None`` when the cell cannot be
    parsed (the record's labels are then all unknown). A blank cell is no label (``[]``)."""
    try:
        value = ast.literal_eval(cell or "[]")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # what literal_eval raises on non-literals
        return None
    if not isinstance(value, (list, tuple)):
        return None
    return [s.strip() for s in value if isinstance(s, str) and s.strip()]


def chexpert(root: str, csv_name: str = "train.csv", views: list[View] | None = None, one_per_study: bool = False,
             uncertain: UncertainPolicy = "ones", blank: BlankPolicy = "negative") -> Table:
    """CheXpert: ``Path`` plus the 14 labels: ``-1`` under the ``uncertain`` policy, blank cells under
    the separate ``blank`` policy (default ``negative``: not mentioned), see :func:`chexpert_value`."""
    _check_policy(uncertain, blank)
    root = _need_dir(root)
    path = Path(csv_name) if Path(csv_name).is_file() else _find(root, [csv_name], "CheXpert CSV")
    rows = read_csv(path, ["Path", "Frontal/Lateral", *CHEXPERT_LABELS])
    recs = []
    for i, row in enumerate(rows):
        rel = Path(image_cell(row["Path"], f"{path}: row {i + 2}, column 'Path'"))
        # paths start with the release folder name (CheXpert-v1.0-small/...): resolve beside it
        parts = rel.parts
        img = root.joinpath(*parts[1:]) if parts and parts[0] == root.name else root / rel
        m = re.search(r"(patient\d+)/(study\d+)", row["Path"])
        view = "LATERAL" if row["Frontal/Lateral"].strip().lower() == "lateral" else norm_view(row.get("AP/PA") or "")
        recs.append(Record(id=row["Path"], image_path=str(img),
                           labels=chexpert_labels(row, path, i + 2, uncertain, blank),
                           patient_id=m.group(1) if m else None, study_id="/".join(m.groups()) if m else None, view=view))
    return Table("chexpert", apply_filters(recs, views, one_per_study), CHEXPERT_LABELS, patient_field="Path")


def nih(root: str, csv_name: str | None = None, views: list[View] | None = None, one_per_study: bool = False) -> Table:
    """NIH ChestX-ray14: ``Data_Entry_2017*.csv`` with ``|``-separated ``Finding Labels``.

    Images are looked up in ``images/`` and the release's ``images_*/images/`` folders.
    """
    root = _need_dir(root)
    path = Path(csv_name) if csv_name and Path(csv_name).is_file() else _find(
        root, [csv_name] if csv_name else ["Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv"], "NIH Data_Entry CSV")
    rows = read_csv(path, ["Image Index", "Finding Labels", "Patient ID", "View Position", "Follow-up #"])
    dirs = [root / "images"] + sorted(root.glob("images_*/images"))
    def locate(name: str) -> str:
        for d in dirs[1:]:
            if (d / name).is_file():
                return str(d / name)
        return str(dirs[0] / name)
    recs = []
    for i, row in enumerate(rows):
        image_cell(row["Image Index"], f"{path}: row {i + 2}, column 'Image Index'")
        found = {s.strip() for s in row["Finding Labels"].split("|")}
        recs.append(Record(id=row["Image Index"], image_path=locate(row["Image Index"]) if len(dirs) > 1 else str(dirs[0] / row["Image Index"]),
                           labels={k: float(k in found) for k in NIH_LABELS} | {NO_FINDING: float(NO_FINDING in found)},
                           patient_id=row["Patient ID"], study_id=f"{row['Patient ID']}_{row['Follow-up #']}",
                           view=norm_view(row["View Position"])))
    return Table("nih", apply_filters(recs, views, one_per_study), NIH_LABELS + (NO_FINDING,), patient_field="Patient ID")


def rsna(root: str, labels_csv: str = "stage_2_train_labels.csv", headers_csv: str | None = None,
         image_dir: str = "stage_2_train_images", views: list[View] | None = None) -> Table:
    """RSNA Pneumonia: DICOMs named ``{patientId}.dcm`` and ``Target`` (several box rows per patient).

    Views come from a DICOM-header CSV (``Filename``/``PatientID``, ``ViewPosition``) when given.
    """
    if views and not headers_csv:
        raise OptionError("views", "{key}: filtering RSNA by view needs {key:headers_csv} (the DICOM-header CSV)")
    root = _need_dir(root)
    path = Path(labels_csv) if Path(labels_csv).is_file() else _find(root, [labels_csv], "RSNA labels CSV")
    target: dict[str, float] = {}
    for i, row in enumerate(read_csv(path, ["patientId", "Target"])):
        if (row["Target"] or "").strip() not in ("0", "1"):
            raise DataError(f"{path}: row {i + 2}, column 'Target': expected 1 or 0, got {row['Target']!r}")
        target[row["patientId"]] = max(target.get(row["patientId"], 0.0), float(row["Target"]))
    view = {}
    if headers_csv:
        hp = Path(headers_csv) if Path(headers_csv).is_file() else _find(root, [headers_csv], "RSNA DICOM-header CSV")
        for row in read_csv(hp, ["PatientID", "ViewPosition"]):
            view[row["PatientID"]] = norm_view(row["ViewPosition"])
    recs = [Record(id=p, image_path=str(root / image_dir / f"{p}.dcm"), labels={"Pneumonia": t}, patient_id=p,
                   study_id=p, view=view.get(p)) for p, t in target.items()]
    return Table("rsna", apply_filters(recs, views, False), ("Pneumonia",))


def covidx(root: str, split_file: str = "train.txt", image_dir: str | None = None) -> Table:
    """COVIDx: split text files, one ``patient_id filename class source`` line per image."""
    root = _need_dir(root)
    path = Path(split_file) if Path(split_file).is_file() else _find(root, [split_file], "COVIDx split file")
    folder = _need_dir(root / image_dir, "image_dir") if image_dir else root / Path(split_file).stem
    recs = []
    from ..io import read_text

    for n, line in enumerate(read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3:
            raise DataError(f"{path}:{n}: expected 'patient_id filename class [source]', got {line!r}")
        cls = parts[2].lower()
        if cls not in ("positive", "negative", "covid-19", "normal", "pneumonia"):
            raise DataError(f"{path}:{n}: unknown class '{parts[2]}'; expected positive or negative (or covid-19/normal/pneumonia)")
        recs.append(Record(id=parts[1], image_path=str(folder / parts[1]), labels={"COVID-19": float(cls in ("positive", "covid-19"))},
                           patient_id=parts[0], study_id=parts[0], extra={"source": parts[3] if len(parts) > 3 else None}))
    return Table("covidx", recs, ("COVID-19",))


OPENI_MESH = {  # MeSH major heading -> CheXpert-style label
    "Cardiomegaly": "Cardiomegaly", "Pleural Effusion": "Pleural Effusion", "Pneumothorax": "Pneumothorax",
    "Opacity": "Lung Opacity", "Pulmonary Atelectasis": "Atelectasis", "Pulmonary Edema": "Edema",
    "Pneumonia": "Pneumonia", "Consolidation": "Consolidation", "Nodule": "Lung Lesion", "Mass": "Lung Lesion",
    "Fractures, Bone": "Fracture", "normal": NO_FINDING,
}


def _openi_files(root: Path) -> Iterator[tuple[str, bytes]]:
    if root.is_file() and root.name.endswith((".tgz", ".tar.gz")):
        with tarfile.open(root) as tf:
            for m in tf:
                if m.isfile() and m.name.endswith(".xml"):
                    yield m.name, tf.extractfile(m).read()
        return
    root = _need_dir(root)
    for p in sorted(root.rglob("*.xml")):
        yield str(p), p.read_bytes()


def openi(root: str, image_dir: str | None = None, sections: tuple[OpeniSection, ...] = ("FINDINGS", "IMPRESSION"),
          views: list[View] | None = None) -> Table:
    """Open-i / IU X-ray report XMLs (a folder or the ``.tgz``): FINDINGS + IMPRESSION and MeSH.

    One record per ``parentImage`` when ``image_dir`` is given (``{id}.png``), else one per report.
    Labels are derived from the manual MeSH major headings (``OPENI_MESH``). The report holds the
    sections whose bodies have content (:func:`join_sections`): only ``XXXX`` marks is no report.
    """
    if views:
        raise OptionError("views", "{key}: Open-i XMLs carry no view; filter with the Open-i image metadata instead")
    root = Path(root).expanduser()
    if not root.exists():
        raise OptionError("root", f"{{key}}: {root} does not exist")
    if image_dir:
        _need_dir(image_dir, "image_dir")
    names = tuple(sorted(set(OPENI_MESH.values())))
    recs = []
    for name, data in _openi_files(root):
        try:
            doc = ET.fromstring(data)
        except ET.ParseError as exc:
            raise DataError(f"{name}: not valid XML ({exc})") from None
        texts = {a.get("Label"): a.text for a in doc.iter("AbstractText")}
        report = join_sections((s, texts.get(s)) for s in sections)
        mesh = [m.text.strip() for m in doc.iter("major") if m.text]
        heads = {m.split("/")[0].strip() for m in mesh}
        labels = {n: 0.0 for n in names}
        for h in heads:
            if h in OPENI_MESH:
                labels[OPENI_MESH[h]] = 1.0
        uid = doc.find("uId")
        rid = uid.get("id") if uid is not None else Path(name).stem
        images = [p.get("id") for p in doc.iter("parentImage")]
        extra = {"mesh": mesh, "file": name}
        if image_dir and images:
            for img in images:
                recs.append(Record(id=img, image_path=str(Path(image_dir) / f"{img}.png"), report=report, labels=dict(labels),
                                   patient_id=rid, study_id=rid, extra=extra))
        else:
            recs.append(Record(id=rid, image_path=None, report=report, labels=labels, patient_id=rid, study_id=rid,
                               extra=extra | {"images": images}))
    return Table("openi", recs, names)


def generic_csv(path: str, image_col: str = ColumnDefault("image_path"), report_col: str | None = ColumnDefault("report"),
                label_cols: Iterable[str] | str | None = None, patient_col: str | None = ColumnDefault("patient_id"),
                image_root: str | None = None, captions_from_labels: bool = False,
                uncertain: UncertainPolicy | None = None) -> Table:
    """A CSV with an image path column, an optional report column and label columns.

    Label columns: ``label_cols`` (a list of names, or one name) when given; otherwise every
    column other than the image, report and patient columns whose non-blank cells are all 1, 0
    or -1 over **all** rows, with at least one non-blank cell (``csv_label_columns``); numeric
    columns left out by that rule (an age, a study number) are named in one line on stderr.
    Label cells (:func:`chexpert_value`, ``blank=unknown``): ``1`` / ``0`` (also ``1.0``), blank
    or ``nan`` = unknown, ``-1`` under the ``uncertain`` policy (``ones`` / ``zeros`` /
    ``ignore``; without one, a ``-1`` is an error naming the policy); any other value is a one-line
    error naming the file, row, column, value and what was expected.

    Relative image paths are resolved against ``image_root`` (default: the CSV's folder; one you
    give must be a folder); an empty image cell is an error naming the row.
    ``patient_col`` (default ``patient_id``, when the CSV has it) keeps a
    patient's images on one side of every split. The default ``report`` and ``patient_id``
    columns are optional; a column named by an option (``image_col``, ``report_col``,
    ``patient_col``, ``label_cols``) that the CSV lacks is an error naming the file, the key and
    the columns it has (:func:`named_column`), never read as absent. A report with no content (only de-identification marks and
    punctuation, :func:`has_content`) is None. ``captions_from_labels`` writes a report from the
    labels for data that has labels but no text: "Findings: cardiomegaly, effusion." from the
    positives; "No finding." when every finding label is known and negative or a ``No Finding`` /
    ``no_finding`` column is 1; otherwise None (image-only): a caption claims nothing unknown.
    """
    _check_policy(uncertain, "unknown", allow_none=True)
    path = need_file(path, "path", "CSV file")
    if isinstance(label_cols, str):
        label_cols = [label_cols]
    if image_root is not None:
        _need_dir(image_root, "image_root")
    cols, rows = read_csv_columns(path, expected=[image_col])
    image_col = named_column("image_col", image_col, cols, str(path), required=True)
    for c in label_cols or ():
        named_column("label_cols", c, cols, str(path))
    report_col = named_column("report_col", report_col, cols, str(path))  # the default: optional
    patient_col = named_column("patient_col", patient_col, cols, str(path))  # absent: splits per image
    if label_cols is None:
        label_cols, left_out = csv_label_columns(rows, [c for c in cols if c not in {image_col, report_col, patient_col}], path)
        if left_out:
            _note_once(f"{source_label('data=csv')} {path.name}: label columns are those whose cells are all 1, 0, -1 or blank "
                       f"({', '.join(label_cols) or 'none'}); numeric columns left out: "
                       f"{', '.join(f'{c} (e.g. {v!r})' for c, v in left_out)}; choose them with "
                       f"{source_label('the label_cols option', 'label_cols')}")
    label_cols = tuple(label_cols)
    base = Path(image_root).expanduser() if image_root else path.parent
    recs = []
    for i, row in enumerate(rows):
        img = Path(image_cell(row[image_col], f"{path}: row {i + 2}, column '{image_col}'"))
        img = img if img.is_absolute() else base / img
        labels = {}
        for c in label_cols:
            try:
                labels[c] = chexpert_value(row.get(c), uncertain, blank="unknown")
            except ValueError as exc:
                raise cell_error(exc, f"{path}: row {i + 2}, column '{c}'") from None
        rep = (row.get(report_col) or "").strip() if report_col else ""
        rep = rep if has_content(rep) else None
        if captions_from_labels:
            findings = [c for c in label_cols if not is_no_finding(c)]
            pos = [label_key(c) for c in findings if labels.get(c) == 1.0]
            known = bool(findings) and all(not math.isnan(labels[c]) for c in findings)
            normal = any(labels.get(c) == 1.0 for c in label_cols if c not in findings)
            rep = f"Findings: {', '.join(pos)}." if pos else ("No finding." if known or normal else None)
        recs.append(Record(id=row[image_col], image_path=str(img), report=rep, labels=labels,
                           patient_id=row.get(patient_col) if patient_col else None))
    return Table("csv", recs, label_cols, patient_field=patient_col)


#: the values a label cell may hold besides blank (``-1``: uncertain, under a policy)
LABEL_CELL_VALUES = (1.0, 0.0, -1.0)


def csv_label_columns(rows: list[dict[str, str]], candidates: Iterable[str],
                      path: str | Path = "CSV") -> tuple[list[str], list[tuple[str, str]]]:
    """(label columns, numeric columns left out with one of their other values) of CSV ``rows``.

    A label column has at least one non-blank cell and every non-blank cell (blank: empty or
    ``nan``) one of ``LABEL_CELL_VALUES`` (``1.0`` counts as 1), over all rows. A column whose
    cells are all numbers but not all of those (an age, a study number) is left out and
    returned with its first other value; a column holding only text (a sex, a view) or text and
    other numbers is left out silently. A column whose cells are label values except some text
    (``yes``, ``?``: a label column with a typo) is neither: a one-line :class:`DataError`
    naming the file (``path``), row, column and value, rather than the column leaving the labels.
    """
    labels, left_out = [], []
    for c in candidates:
        first = dict.fromkeys(map(operator.itemgetter(c), rows))  # distinct cells, in order of first appearance
        cells = [v for v in ((x or "").strip() for x in first) if v and v.lower() != "nan"]
        other, text, label = None, None, False
        for cell in cells:
            try:
                v = float(cell)
            except ValueError:
                text = cell if text is None else text
                continue
            label = label or v in LABEL_CELL_VALUES
            if v not in LABEL_CELL_VALUES and other is None:
                other = cell
        if not cells or (text is not None and (other is not None or not label)):
            continue
        if text is not None:  # label values and text: a label column with a bad cell
            row = next(i for i, r in enumerate(rows) if (r[c] or "").strip() == text)
            raise DataError(f"{path}: row {row + 2}, column '{c}': expected 1, 0, -1 or blank (its other cells are "
                            f"label values), got {text!r}; correct the cell, or choose the label columns with the "
                            f"label_cols option")
        if other is None:
            labels.append(c)
        else:
            left_out.append((c, other))
    return labels, left_out


_noted: set[str] = set()


def _note_once(line: str) -> None:
    """A one-line note on stderr, once per process and only on rank 0 (every rank loads the table)."""
    import os
    import sys

    if line not in _noted and os.environ.get("RANK", "0") == "0":
        _noted.add(line)
        print(f"note: {line}", file=sys.stderr)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")


def image_folder(root: str) -> Table:
    """Every image under ``root``; images in class subfolders get one-hot labels by folder name."""
    root = _need_dir(root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    classes = tuple(sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1}))
    recs = []
    for p in files:
        rel = p.relative_to(root)
        cls = rel.parts[0] if len(rel.parts) > 1 else None
        recs.append(Record(id=str(rel), image_path=str(p), labels={c: float(c == cls) if cls else NAN for c in classes}))
    return Table("folder", recs, classes)


def load_table(name: str, **options: Any) -> Table:
    """Run the registered dataset adapter ``name`` (:mod:`maskkit.datasets`, plugins) with its
    options, validated against its options model; an unknown adapter or option is one line."""
    from ..errors import UnknownNameError
    from .adapters import get_adapter

    try:
        adapter = get_adapter(name)
    except UnknownNameError as exc:
        raise DataError(f"data: {exc}") from None
    table = adapter(**options)
    check_label_values(table, name)  # every table, whatever adapter made it
    return table
