"""Region annotations (boxes and masks) in their real file layouts, and their patch grid.

Every reader returns one :class:`RegionSet`: per image id an :class:`ImageRegions` (the original
image's ``(width, height)`` in pixels where the format gives it, and a list of :class:`Region`),
each region a finding or phrase ``label`` with either a box ``(x, y, w, h)`` in pixels of the
original image (x to the right, y down, origin at the top-left corner; the box covers
``[x, x + w) x [y, y + h)``) or a binary mask of the original image. Images annotated as normal
(RSNA ``Target`` 0, SIIM ``-1``, VinDr ``No finding``) are kept with an empty list: they are
annotated, just without a lesion.

One function maps regions onto a model's patch grid, :func:`patch_coverage` (one image) /
:func:`coverage_batch` (several): the **fraction of each patch covered** by the union of the
regions, ``[G * G]`` floats in ``[0, 1]``, patches in row-major order (the ViT's token order), with
``G = image_size // patch``. maskkit resizes every image to ``image_size x image_size`` without
keeping the aspect ratio (``data.images.resize``), so patch ``(r, c)`` is the rectangle
``[c W / G, (c + 1) W / G) x [r H / G, (r + 1) H / G)`` of the original ``W x H`` image. Boxes are
mapped exactly (areas of the box/patch intersections, fractional coordinates included; several
boxes are unioned, not added); masks by the exact area of their pixels in each patch. A patch
*is lesion* when its fraction is **at least** :data:`LESION_THRESHOLD` (0.1, the threshold
``maskkit eval masks`` has used on phantoms), see :func:`lesion_patches`.

Bad files are one-line :class:`RegionError` s naming the file, the row (the header is row 1), the
value and what was expected: a box outside the image (by more than :data:`EDGE_TOLERANCE`
pixels), a zero or negative size, a non-number, an empty / odd-length / out-of-range RLE, a
missing column, an empty file or one with only its header, an empty image id, an image id not in
the dataset (:meth:`RegionSet.require_ids`). Nothing is skipped: a reader returns every row or raises.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..findings import MS_CXR_CATEGORIES, NIH_BBOX_FINDINGS, VINDR_LABELS
from .records import DataError, read_csv

#: A patch is a lesion patch when at least this fraction of its area is lesion.
LESION_THRESHOLD = 0.1
#: A box may overhang the image edge by this many pixels (annotation-tool rounding); it is clipped.
#: A box further out is an error.
EDGE_TOLERANCE = 1.0
#: The size of RSNA Pneumonia, NIH ChestX-ray14 and SIIM-ACR images: 1024 x 1024 pixels.
SIZE_1024 = (1024, 1024)
#: NIH ``BBox_List_2017.csv`` names one finding differently from ``Data_Entry_2017``.
NIH_BBOX_LABELS = {"Infiltrate": "Infiltration"}


class RegionError(DataError):
    """A region-annotation file, row or value that is missing or malformed (one line)."""


@dataclass(frozen=True, eq=False)
class Region:
    """One annotated region of one image.

    - ``label``: the finding (``"Pneumonia"``, ``"Effusion"``, ...) or, for MS-CXR, the phrase;
    - ``box``: ``(x, y, w, h)`` pixels of the original image, or None;
    - ``runs``: SIIM masks as ``[K, 2]`` int64 (0-based flat start, length) runs over the image's
      pixels in **column-major** order (already made absolute), or None;
    - ``mask``: ``[H, W]`` bool mask of the original image (phantoms), or None;
    - ``finding``: the finding of a phrase (MS-CXR ``category``); else the label;
    - ``rater``: who drew it (VinDr ``rad_id``), or None;
    - ``where``: ``"file: row N"``, for error messages.
    """

    label: str
    box: tuple[float, float, float, float] | None = None
    runs: np.ndarray | None = None
    mask: np.ndarray | None = None
    finding: str | None = None
    rater: str | None = None
    where: str = ""

    def pixels(self, size: tuple[int, int]) -> np.ndarray:
        """``[H, W]`` bool mask of this region on a ``size = (W, H)`` image (boxes: the pixels whose
        centre lies inside the box)."""
        W, H = size
        if self.mask is not None:
            return self.mask
        if self.runs is not None:
            return decode_runs(self.runs, size)
        x, y, w, h = self.box
        cx, cy = np.arange(W) + 0.5, np.arange(H) + 0.5
        return ((y <= cy) & (cy < y + h))[:, None] & ((x <= cx) & (cx < x + w))[None, :]


@dataclass
class ImageRegions:
    """The regions of one image: ``size`` is ``(width, height)`` of the original image in pixels
    (None where the format does not give it, e.g. VinDr-CXR without ``sizes``)."""

    image_id: str
    size: tuple[int, int] | None
    regions: list[Region] = field(default_factory=list)
    where: str = ""

    def of(self, label: str | None = None) -> list[Region]:
        """The regions with ``label`` (matched against the label, then the finding), all when None."""
        if label is None:
            return list(self.regions)
        return [r for r in self.regions if r.label == label or (r.finding or r.label) == label]


@dataclass
class RegionSet:
    """The region annotations of one file: ``images`` by image id, in file order."""

    name: str
    path: str
    images: dict[str, ImageRegions]

    def __len__(self) -> int:
        return len(self.images)

    def labels(self) -> list[str]:
        """Every region label, in order of first appearance."""
        return list(dict.fromkeys(r.label for im in self.images.values() for r in im.regions))

    def findings(self) -> list[str]:
        """Every finding (MS-CXR ``category``; else the label), in order of first appearance."""
        return list(dict.fromkeys((r.finding or r.label) for im in self.images.values() for r in im.regions))

    def pairs(self, by: str = "label") -> list[tuple[str, str]]:
        """``(image_id, label)`` for every image and distinct label (``by="finding"``: finding) it
        has a region of: the units a grounding evaluation scores, in file order."""
        if by not in ("label", "finding"):
            raise ValueError(f"by: expected 'label' or 'finding', got {by!r}")
        out = []
        for iid, im in self.images.items():
            keys = (r.label if by == "label" else (r.finding or r.label) for r in im.regions)
            out.extend((iid, k) for k in dict.fromkeys(keys))
        return out

    def positives(self, label: str | None = None) -> list[str]:
        """Ids of the images with at least one region (of ``label``)."""
        return [i for i, im in self.images.items() if im.of(label)]

    def negatives(self) -> list[str]:
        """Ids of the images annotated with no region (annotated as normal)."""
        return [i for i, im in self.images.items() if not im.regions]

    def require_ids(self, known: Collection[str], what: str = "the dataset") -> None:
        """Every annotated image id is one of ``known`` (the ids of the images the evaluation has);
        else a one-line :class:`RegionError` naming the file, the first row of the missing id, the
        id and how many are missing."""
        known = known if isinstance(known, (set, frozenset, dict)) else set(known)
        missing = [im for im in self.images.values() if im.image_id not in known]
        if missing:
            m = missing[0]
            raise RegionError(f"{m.where}: image id {m.image_id!r} is not in {what} ({len(missing)} of "
                              f"{len(self.images)} annotated ids are not); expected the ids of {what}")

    def with_sizes(self, sizes: Mapping[str, tuple[int, int]]) -> RegionSet:
        """A copy with each image's ``(width, height)`` taken from ``sizes`` where given (e.g. the
        DICOM ``Columns``/``Rows`` of VinDr-CXR images); each box is checked against it."""
        out = {}
        for iid, im in self.images.items():
            size = sizes.get(iid, im.size)
            if size is not None:
                size = _check_size(size, im.where, iid)
                for r in im.regions:
                    if r.box is not None:
                        _check_inside(r.box, size, r.where)
            out[iid] = replace(im, size=size)
        return RegionSet(self.name, self.path, out)


# --- helpers -------------------------------------------------------------------------------------

def _where(path: Path | str, line: int) -> str:
    return f"{path}: row {line}"


def _known_finding(value: str, known: tuple[str, ...], where: str, col: str, strict: bool = True) -> str:
    """``value`` if it is one of the format's ``known`` findings (compared by
    :func:`~maskkit.findings.label_key`; returned as written there); else one :class:`RegionError`
    line naming the file, row, column and value with close matches (a misspelt finding would be
    scored with a prompt of that misspelling). ``strict=False`` (a format whose releases add labels):
    only a value close to a known one is refused, any other is kept as written."""
    import difflib

    from ..findings import label_key

    by_key = {label_key(k): k for k in known}
    if label_key(value) in by_key:
        return by_key[label_key(value)]
    close = difflib.get_close_matches(label_key(value), list(by_key), n=3, cutoff=0.75)
    if not strict and not close:
        return value
    hint = f"; did you mean {', '.join(repr(by_key[c]) for c in close)}?" if close else ""
    raise RegionError(f"{where}, column '{col}': {value!r} is not a finding of this format (expected one of "
                      f"{', '.join(known)}){hint}")


def _number(raw: str | None, where: str, col: str) -> float:
    s = (raw or "").strip()
    try:
        v = float(s)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise RegionError(f"{where}, column '{col}': expected a number of pixels, got {raw!r}")
    return v


def _blank(*cells: str | None) -> bool:
    return all((c or "").strip() in ("", "nan", "NaN") for c in cells)


def _check_size(size, where: str, iid: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size)
    except (TypeError, ValueError):
        raise RegionError(f"{where}: image {iid!r} size {size!r}; expected (width, height) in pixels") from None
    if w <= 0 or h <= 0:
        raise RegionError(f"{where}: image {iid!r} size {w}x{h}; expected a positive width and height")
    return w, h


def _check_box(box: tuple[float, float, float, float], where: str) -> None:
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise RegionError(f"{where}: box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) has a {'zero' if min(w, h) == 0 else 'negative'} "
                          f"size; expected a positive width and height")


def _check_inside(box: tuple[float, float, float, float], size: tuple[int, int], where: str) -> None:
    x, y, w, h = box
    W, H = size
    t = EDGE_TOLERANCE
    if x < -t or y < -t or x + w > W + t or y + h > H + t:
        raise RegionError(f"{where}: box (x={x:g}, y={y:g}, w={w:g}, h={h:g}) reaches outside the {W}x{H} image; "
                          f"expected 0 <= x, x + w <= {W}, 0 <= y, y + h <= {H} (pixels)")


def _box(x: float, y: float, w: float, h: float, size: tuple[int, int] | None, where: str):
    box = (x, y, w, h)
    _check_box(box, where)
    if size is not None:
        _check_inside(box, size, where)
    return box


def _add(images: dict[str, ImageRegions], iid: str, size, where: str, region: Region | None) -> None:
    im = images.get(iid)
    if im is None:
        im = images[iid] = ImageRegions(iid, size, [], where)
    if region is not None:
        im.regions.append(region)


#: the columns each region layout (``--format``) needs: its reader reads these, and a file missing
#: one is told which layout its columns are (NIH's ``Bbox [x,y,w,h]`` arrives split by its commas)
LAYOUT_COLUMNS: dict[str, tuple[str, ...]] = {
    "rsna": ("patientId", "x", "y", "width", "height", "Target"),
    "nih": ("Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"),
    "siim": ("ImageId", "EncodedPixels"),
    "ms_cxr": ("dicom_id", "category", "label_text", "x", "y", "w", "h", "image_width", "image_height"),
    "vindr": ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max"),
}


def _layout_hint(path: Path, required: list[str]) -> str:
    """``; its columns are those of the nih layout (--format nih)`` when the file's header holds
    every column of another layout than the one read ("" otherwise, or when it cannot be read)."""
    from .records import read_csv_columns

    try:
        header = set(read_csv_columns(path)[0])
    except Exception:  # the error being reported says what is wrong with the file
        return ""
    fits = [f for f, cols in LAYOUT_COLUMNS.items() if list(cols) != required and set(cols) <= header]
    return f"; its columns are those of the {fits[0]} layout (--format {fits[0]})" if fits else ""


def _read(path: Path, required: list[str]) -> list[dict[str, str]]:
    """The rows of a region CSV (plain or .gz, BOM, CRLF: :func:`~maskkit.data.records.read_csv`);
    a missing file, an empty file, a missing column or a file with a header and no row is a
    :class:`RegionError` naming the file (and the column)."""
    if not path.is_file():
        raise RegionError(f"{path}: no such file; expected the annotation CSV")
    try:
        rows = read_csv(path, required)
    except RegionError:
        raise
    except DataError as exc:
        raise RegionError(f"{exc}{_layout_hint(path, required)}") from None
    if not rows:
        raise RegionError(f"{path}: a header and no rows; expected one row per annotation after the header "
                          f"({', '.join(required)})")
    for i, row in enumerate(rows):  # read_csv leaves the cells of a short row None
        short = next((c for c in required if row.get(c) is None), None)
        if short is not None:
            raise RegionError(f"{_where(path, i + 2)}: the row ends before column '{short}' "
                              f"({sum(v is not None for v in row.values())} cells); expected a cell for each of "
                              f"{', '.join(required)}")
    return rows


def _id(row: dict, col: str, where: str) -> str:
    v = (row.get(col) or "").strip()
    if not v:
        raise RegionError(f"{where}, column '{col}': empty image id; expected an image id")
    return v


# --- readers -------------------------------------------------------------------------------------

def read_rsna(path: str | Path, size: tuple[int, int] = SIZE_1024) -> RegionSet:
    """RSNA Pneumonia Detection Challenge ``stage_2_train_labels.csv``:
    ``patientId,x,y,width,height,Target``, one row per box (several per patient), ``Target`` 0 rows
    with empty box cells (no pneumonia). Images are 1024 x 1024 DICOMs (``size``). Label:
    ``"Pneumonia"`` (the name maskkit's ``rsna`` adapter gives the label)."""
    path = Path(path)
    rows = _read(path, list(LAYOUT_COLUMNS["rsna"]))
    images: dict[str, ImageRegions] = {}
    for i, row in enumerate(rows):
        where = _where(path, i + 2)
        iid = _id(row, "patientId", where)
        target = (row["Target"] or "").strip()
        cells = [row[c] for c in ("x", "y", "width", "height")]
        if target == "0":
            if not _blank(*cells):
                raise RegionError(f"{where}: Target 0 with a box ({', '.join(c or '' for c in cells)}); "
                                  f"expected empty x, y, width, height")
            _add(images, iid, size, where, None)
        elif target == "1":
            x, y, w, h = (_number(c, where, k) for c, k in zip(cells, ("x", "y", "width", "height")))
            _add(images, iid, size, where, Region("Pneumonia", box=_box(x, y, w, h, size, where), where=where))
        else:
            raise RegionError(f"{where}, column 'Target': expected 1 or 0, got {row['Target']!r}")
    return RegionSet("rsna", str(path), images)


def read_nih_bbox(path: str | Path, size: tuple[int, int] = SIZE_1024) -> RegionSet:
    """NIH ChestX-ray14 ``BBox_List_2017.csv``. Its header is ``Image Index,Finding Label,Bbox
    [x,y,w,h],,,``: the bracketed name is split by the commas into the columns ``Bbox [x``, ``y``,
    ``w``, ``h]``, and three unnamed empty columns follow (ignored). Boxes are in pixels of the
    1024 x 1024 released PNGs (``size``). The file's ``Infiltrate`` is renamed ``Infiltration``,
    the name of that finding in ``Data_Entry_2017`` (:data:`NIH_BBOX_LABELS`)."""
    path = Path(path)
    cols = ("Bbox [x", "y", "w", "h]")
    rows = _read(path, list(LAYOUT_COLUMNS["nih"]))
    images: dict[str, ImageRegions] = {}
    for i, row in enumerate(rows):
        where = _where(path, i + 2)
        iid = _id(row, "Image Index", where)
        label = (row["Finding Label"] or "").strip()
        if not label:
            raise RegionError(f"{where}, column 'Finding Label': empty; expected a finding name")
        label = _known_finding(label, NIH_BBOX_FINDINGS, where, "Finding Label")
        x, y, w, h = (_number(row[c], where, c) for c in cols)
        _add(images, iid, size, where, Region(NIH_BBOX_LABELS.get(label, label), box=_box(x, y, w, h, size, where),
                                              where=where))
    return RegionSet("nih_bbox", str(path), images)


def parse_siim_rle(text: str | None, size: tuple[int, int], where: str) -> np.ndarray | None:
    """One SIIM-ACR ``EncodedPixels`` cell: None for ``-1`` (no pneumothorax), else ``[K, 2]`` int64
    absolute runs ``(start, length)`` over the ``W * H`` pixels in column-major order.

    The encoding is the competition's *relative* RLE, defined by ``rle2mask(rle, width, height)``
    in the ``mask_functions.py`` the organisers shipped with ``train-rle.csv`` (SIIM-ACR
    Pneumothorax Segmentation, Kaggle 2019; the data page: "a relative form of RLE (meaning that
    pixel locations are measured from the end of the previous run)"): space-separated pairs
    ``offset length``; the first offset is a 0-based pixel index, each later one counts from the
    end of the previous run (``position += offset; mask[position:position + length] = 1;
    position += length``), over a flat array that ``rle2mask`` reshapes to ``(width, height)`` and
    its callers transpose: pixel ``p`` is column ``p // H``, row ``p % H`` (column-major). Kaggle's
    usual RLE (absolute, 1-based starts) is another encoding, not read here. Raises
    :class:`RegionError` for an empty cell, an odd number of values, a non-integer, a negative
    offset, a length below 1 or a run past the last pixel."""
    s = (text or "").strip()
    if s == "-1":
        return None
    if not s:
        raise RegionError(f"{where}, column 'EncodedPixels': empty; expected -1 (no pneumothorax) or "
                          f"run-length pairs 'offset length ...'")
    parts = s.split()
    if len(parts) % 2:
        raise RegionError(f"{where}, column 'EncodedPixels': {len(parts)} values (odd); expected pairs "
                          f"'offset length' (value {s[:40]!r}{'...' if len(s) > 40 else ''})")
    try:
        v = np.array([int(p) for p in parts], dtype=np.int64).reshape(-1, 2)
    except ValueError:
        bad = next(p for p in parts if not p.lstrip("-").isdigit())
        raise RegionError(f"{where}, column 'EncodedPixels': {bad!r} is not an integer; expected run-length "
                          f"pairs of integers") from None
    off, length = v[:, 0], v[:, 1]
    if (off < 0).any():
        raise RegionError(f"{where}, column 'EncodedPixels': offset {int(off[off < 0][0])} is negative; "
                          f"expected offsets >= 0")
    if (length < 1).any():
        raise RegionError(f"{where}, column 'EncodedPixels': run length {int(length[length < 1][0])}; "
                          f"expected lengths >= 1")
    start = np.cumsum(off + length) - length
    end = int(start[-1] + length[-1])
    W, H = size
    if end > W * H:
        raise RegionError(f"{where}, column 'EncodedPixels': the runs end at pixel {end}, past the "
                          f"{W}x{H} = {W * H} pixels of the image; expected runs inside the image")
    return np.stack([start, length], 1)


def decode_runs(runs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool mask of absolute column-major runs (:func:`parse_siim_rle`)."""
    W, H = size
    diff = np.zeros(W * H + 1, dtype=np.int32)
    np.add.at(diff, runs[:, 0], 1)
    np.add.at(diff, runs[:, 0] + runs[:, 1], -1)
    flat = np.cumsum(diff[:-1]) > 0
    return flat.reshape(W, H).T  # column-major: pixel p is column p // H, row p % H


def read_siim(path: str | Path, size: tuple[int, int] = SIZE_1024) -> RegionSet:
    """SIIM-ACR Pneumothorax ``train-rle.csv``: ``ImageId, EncodedPixels`` (the real header has a
    space before ``EncodedPixels``; so do its cells), ``-1`` for no pneumothorax, else the relative
    column-major RLE of :func:`parse_siim_rle` on the 1024 x 1024 image (``size``). Several rows of
    one image are several regions, unioned by :func:`patch_coverage`. Label ``"Pneumothorax"``."""
    path = Path(path)
    rows = _read(path, list(LAYOUT_COLUMNS["siim"]))
    images: dict[str, ImageRegions] = {}
    for i, row in enumerate(rows):
        where = _where(path, i + 2)
        iid = _id(row, "ImageId", where)
        runs = parse_siim_rle(row["EncodedPixels"], size, where)
        _add(images, iid, size, where, None if runs is None else Region("Pneumothorax", runs=runs, where=where))
    return RegionSet("siim", str(path), images)


def read_ms_cxr(path: str | Path) -> RegionSet:
    """MS-CXR ``MS_CXR_Local_Alignment_v1.0.0.csv`` (v1.1.0 adds a ``split`` column): one row per
    box with ``dicom_id, category, label_text, path, x, y, w, h, image_width, image_height``.
    ``label_text`` (the phrase) is the region's label, ``category`` (one of eight findings) its
    finding; rows of one ``dicom_id`` and phrase are the boxes of that phrase. The image size comes
    from each row (and must agree between the rows of one image)."""
    path = Path(path)
    rows = _read(path, list(LAYOUT_COLUMNS["ms_cxr"]))
    images: dict[str, ImageRegions] = {}
    for i, row in enumerate(rows):
        where = _where(path, i + 2)
        iid = _id(row, "dicom_id", where)
        phrase = " ".join((row["label_text"] or "").split())
        if not phrase:
            raise RegionError(f"{where}, column 'label_text': empty; expected the phrase of the box")
        size = (_number(row["image_width"], where, "image_width"), _number(row["image_height"], where, "image_height"))
        if size[0] != int(size[0]) or size[1] != int(size[1]):
            raise RegionError(f"{where}: image size {size[0]:g}x{size[1]:g}; expected whole pixels")
        size = _check_size(size, where, iid)
        if iid in images and images[iid].size != size:
            W, H = images[iid].size
            raise RegionError(f"{where}: image {iid!r} is {size[0]}x{size[1]} here and {W}x{H} at {images[iid].where}; "
                              f"expected one size per image")
        x, y, w, h = (_number(row[c], where, c) for c in ("x", "y", "w", "h"))
        _add(images, iid, size, where, Region(phrase, box=_box(x, y, w, h, size, where),
                                              finding=_category(row["category"], where), where=where))
    return RegionSet("ms_cxr", str(path), images)


def _category(raw: str | None, where: str) -> str | None:
    """An MS-CXR ``category`` cell: one of its eight findings (:data:`~maskkit.findings.MS_CXR_CATEGORIES`), or None when empty."""
    cat = (raw or "").strip()
    return _known_finding(cat, MS_CXR_CATEGORIES, where, "category") if cat else None


VINDR_NO_FINDING = "No finding"


def read_vindr(path: str | Path, sizes: Mapping[str, tuple[int, int]] | None = None) -> RegionSet:
    """VinDr-CXR ``annotations_train.csv`` / ``annotations_test.csv`` (PhysioNet; Kaggle's
    ``train.csv`` has the same columns in another order): ``image_id, rad_id, class_name, x_min,
    y_min, x_max, y_max[, class_id]``, one row per box and radiologist; ``No finding`` rows have empty
    coordinates. Boxes become ``(x_min, y_min, x_max - x_min, y_max - y_min)`` with ``rater`` =
    ``rad_id`` (``rad_id`` may be absent, as in the consensus test labels).

    **Several radiologists** (three per training image) are kept as separate regions; how they are
    combined is chosen where they are mapped to patches (:func:`patch_coverage` ``min_raters``): by
    default 1, the union (a pixel is lesion if any radiologist boxed it). An image is annotated as
    normal (no region) only when every row is ``No finding``.

    The file does not give image sizes (the DICOMs vary): pass ``sizes`` (``{image_id: (width,
    height)}``, e.g. from the DICOM ``Columns`` / ``Rows``), or :meth:`RegionSet.with_sizes` later;
    boxes are checked against the image once its size is known."""
    path = Path(path)
    rows = _read(path, list(LAYOUT_COLUMNS["vindr"]))
    sizes = sizes or {}
    images: dict[str, ImageRegions] = {}
    for i, row in enumerate(rows):
        where = _where(path, i + 2)
        iid = _id(row, "image_id", where)
        size = sizes.get(iid)
        if size is not None:
            size = _check_size(size, where, iid)
        cls = (row["class_name"] or "").strip()
        cells = [row[c] for c in ("x_min", "y_min", "x_max", "y_max")]
        if not cls:
            raise RegionError(f"{where}, column 'class_name': empty; expected a finding or '{VINDR_NO_FINDING}'")
        if cls == VINDR_NO_FINDING:
            if not _blank(*cells):
                raise RegionError(f"{where}: '{VINDR_NO_FINDING}' with coordinates ({', '.join(c or '' for c in cells)}); "
                                  f"expected empty x_min, y_min, x_max, y_max")
            _add(images, iid, size, where, None)
            continue
        cls = _known_finding(cls, VINDR_LABELS, where, "class_name", strict=False)
        x0, y0, x1, y1 = (_number(c, where, k) for c, k in zip(cells, ("x_min", "y_min", "x_max", "y_max")))
        rater = (row.get("rad_id") or "").strip() or None
        _add(images, iid, size, where, Region(cls, box=_box(x0, y0, x1 - x0, y1 - y0, size, where), rater=rater,
                                              where=where))
    return RegionSet("vindr", str(path), images)


def from_phantoms(phantoms: Iterable, name: str = "phantoms") -> RegionSet:
    """The lesion masks of :class:`~maskkit.data.phantoms.Phantom` s: image id ``str(index)``, one
    mask region per present finding (label = finding), size = the phantom's ``(W, H)``; normal
    phantoms have no region."""
    images: dict[str, ImageRegions] = {}
    for p in phantoms:
        H, W = p.image.shape
        iid = str(p.index)
        images[iid] = ImageRegions(iid, (W, H), [Region(k, mask=np.asarray(m, dtype=bool), where=f"{name}: phantom {iid}")
                                                 for k, m in p.masks.items() if np.any(m)], f"{name}: phantom {iid}")
    return RegionSet(name, name, images)


def phantom_regions(seed: int, indices: Iterable[int], size: int = 96) -> RegionSet:
    """:func:`from_phantoms` of phantoms ``indices`` of ``PhantomGenerator(seed, size)``."""
    from .phantoms import PhantomGenerator

    gen = PhantomGenerator(seed, size)
    return from_phantoms((gen[i] for i in indices), name=f"phantoms seed {seed}")


# --- the patch grid ------------------------------------------------------------------------------

def grid_size(image_size: int, patch: int) -> int:
    """``G = image_size // patch`` (patches per side); a one-line error when it does not divide."""
    if patch <= 0 or image_size <= 0 or image_size % patch:
        raise RegionError(f"image size {image_size} is not a positive multiple of the patch size {patch}; "
                          f"expected image_size % patch == 0")
    return image_size // patch


def _band_weights(n: int, grid: int) -> np.ndarray:
    """``[grid, n]``: the share of band ``g`` (``[g n / grid, (g + 1) n / grid)``) that pixel ``i``
    (``[i, i + 1)``) covers."""
    edges = np.arange(grid + 1) * (n / grid)
    i = np.arange(n)
    lo = np.maximum(i[None, :], edges[:-1, None])
    hi = np.minimum(i[None, :] + 1, edges[1:, None])
    return np.clip(hi - lo, 0, None) / (n / grid)


def mask_coverage(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """``[B, G * G]`` float fraction of each patch of a ``G x G`` grid covered by ``masks``
    (``[B, H, W]`` bool or float in [0, 1], the original images' pixels): exact pixel areas, also
    when ``G`` does not divide ``H`` or ``W``. Vectorised over the batch."""
    if masks.dim() != 3:
        raise RegionError(f"masks of shape {tuple(masks.shape)}; expected [B, H, W]")
    B, H, W = masks.shape
    ay = torch.as_tensor(_band_weights(H, grid), dtype=torch.float32, device=masks.device)
    ax = torch.as_tensor(_band_weights(W, grid), dtype=torch.float32, device=masks.device)
    frac = torch.einsum("gy,byx,cx->bgc", ay, masks.to(torch.float32), ax)
    return frac.clamp_(0.0, 1.0).reshape(B, grid * grid)


def _boxes_coverage(boxes: np.ndarray, raters: np.ndarray, size: tuple[int, int], grid: int,
                    min_raters: int) -> np.ndarray:
    """Exact ``[grid, grid]`` area fraction of the pixels inside boxes of at least ``min_raters``
    raters, by coordinate compression: the box and patch edges cut the image into cells that lie
    in one patch each and are either inside or outside each box."""
    W, H = size
    x0 = np.clip(boxes[:, 0], 0, W)
    y0 = np.clip(boxes[:, 1], 0, H)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, W)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, H)
    xs = np.unique(np.concatenate([x0, x1, np.arange(grid + 1) * (W / grid)]))
    ys = np.unique(np.concatenate([y0, y1, np.arange(grid + 1) * (H / grid)]))
    cx, cy = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inx = (x0[:, None] <= cx) & (cx < x1[:, None])                      # [K, nx]
    iny = (y0[:, None] <= cy) & (cy < y1[:, None])                      # [K, ny]
    cover = iny[:, :, None] & inx[:, None, :]                           # [K, ny, nx]
    _, r = np.unique(raters, return_inverse=True)
    onehot = np.eye(r.max() + 1, dtype=np.int64)[r]                     # [K, R]
    per_rater = np.einsum("kr,kyx->ryx", onehot, cover.astype(np.int64)) > 0
    inside = per_rater.sum(0) >= min_raters                             # [ny, nx]
    area = inside * np.diff(ys)[:, None] * np.diff(xs)[None, :]
    row = np.minimum((cy * grid / H).astype(np.int64), grid - 1)
    col = np.minimum((cx * grid / W).astype(np.int64), grid - 1)
    out = np.zeros((grid, grid))
    np.add.at(out, (np.broadcast_to(row[:, None], area.shape), np.broadcast_to(col[None, :], area.shape)), area)
    return np.clip(out / ((W / grid) * (H / grid)), 0.0, 1.0)


def patch_coverage(image: ImageRegions, image_size: int, patch: int, label: str | None = None,
                   min_raters: int = 1) -> np.ndarray:
    """``[G * G]`` float32 fraction of each patch (row-major) covered by the union of ``image``'s
    regions (those of ``label`` when given: the label, or the finding), ``G = image_size // patch``.

    Boxes are exact (fractional coordinates, overlaps counted once); masks are exact pixel areas;
    an image with both has its boxes drawn on its pixels (pixel centres inside) first.
    ``min_raters``: a pixel counts when boxes of at least that many distinct ``rater`` s cover it
    (1: the union of all raters; regions without a rater are one rater). All zeros when the image
    has no such region. Raises :class:`RegionError` when the image size is unknown (VinDr without
    ``sizes``) or ``min_raters < 1``."""
    grid = grid_size(image_size, patch)
    if min_raters < 1:
        raise RegionError(f"min_raters: {min_raters}; expected at least 1")
    regs = image.of(label)
    if not regs:
        return np.zeros(grid * grid, dtype=np.float32)
    size = image.size
    if size is None:
        m = next((r.mask for r in regs if r.mask is not None), None)
        if m is None:
            raise RegionError(f"{image.where}: image {image.image_id!r} has no size; expected (width, height) from the "
                              f"file or from sizes= / RegionSet.with_sizes()")
        size = (m.shape[1], m.shape[0])
    if all(r.box is not None for r in regs):
        boxes = np.array([r.box for r in regs], dtype=np.float64)
        raters = np.array([r.rater or "" for r in regs])
        return _boxes_coverage(boxes, raters, size, grid, min_raters).astype(np.float32).reshape(-1)
    W, H = size
    by_rater: dict[str, np.ndarray] = {}
    for r in regs:
        px = r.pixels(size)
        if px.shape != (H, W):
            raise RegionError(f"{r.where}: mask of {px.shape[1]}x{px.shape[0]} pixels on a {W}x{H} image; "
                              f"expected the image's size")
        k = r.rater or ""
        by_rater[k] = by_rater[k] | px if k in by_rater else px.copy()
    count = np.sum(list(by_rater.values()), axis=0)
    m = torch.from_numpy(count >= min_raters)[None]
    return mask_coverage(m, grid)[0].numpy()


def coverage_batch(regions: RegionSet, ids: Iterable[str], image_size: int, patch: int,
                   labels: Iterable[str | None] | str | None = None, min_raters: int = 1) -> torch.Tensor:
    """``[B, G * G]`` float32 :func:`patch_coverage` of the images ``ids`` (with ``labels``: one
    label per id, or one for all; None: every region). An id not in ``regions`` is a one-line
    :class:`RegionError`."""
    ids = list(ids)
    labs = [labels] * len(ids) if labels is None or isinstance(labels, str) else list(labels)
    if len(labs) != len(ids):
        raise RegionError(f"coverage_batch: {len(ids)} ids and {len(labs)} labels; expected one label per id")
    rows = []
    for iid, lab in zip(ids, labs):
        im = regions.images.get(iid)
        if im is None:
            raise RegionError(f"{regions.path}: no annotation of image {iid!r}; expected one of the {len(regions)} "
                              f"annotated ids")
        rows.append(patch_coverage(im, image_size, patch, lab, min_raters))
    grid = grid_size(image_size, patch)
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, grid * grid)


def lesion_patches(coverage: torch.Tensor, threshold: float = LESION_THRESHOLD) -> torch.Tensor:
    """``[..., N]`` bool: a patch is lesion when its covered fraction is at least ``threshold``
    (in ``(0, 1]``; default :data:`LESION_THRESHOLD`)."""
    if not 0.0 < threshold <= 1.0:
        raise RegionError(f"lesion threshold {threshold}; expected a fraction in (0, 1]")
    return coverage >= threshold
