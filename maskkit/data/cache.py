"""The preprocessing cache (``maskkit prepare``): images resized once, stored as uint8.

Layout of a cache folder::

    images.npy    uint8 [N, S, S], memory-mapped when read
    index.json    {"size": S, "ids": [...], "paths": [...], "skipped": {index: reason}, "version": 1}

It is written into a temporary sibling folder and renamed into place, so an interrupted
``prepare`` never leaves a half-written cache behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import MaskkitError
from ..io import atomic_directory
from .images import DecodeError, read_image, resize
from .records import OptionError, Table

CACHE_VERSION = 1


def prepare_cache(table: Table, out: str | Path, size: int, progress: bool = True, overwrite: bool = False) -> dict:
    """Decode, resize and store every image of ``table``; returns the index (with skipped files)."""
    with atomic_directory(out, overwrite) as tmp:
        n = len(table.records)
        arr = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
        skipped: dict[int, str] = {}
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        cols = [TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeRemainingColumn()]
        from ..streams import progress_console

        console, live = progress_console()
        with Progress(*cols, disable=not (progress and live), transient=False, console=console) as bar:
            task = bar.add_task("prepare", total=n, rate="")
            for i, rec in enumerate(table.records):
                try:
                    if rec.image_path is None:
                        raise DecodeError(f"{rec.id}: record has no image")
                    img = resize(read_image(rec.image_path), size)
                    arr[i] = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
                except DecodeError as exc:
                    skipped[i] = str(exc)
                    arr[i] = 0
                bar.update(task, advance=1, rate=f"{len(skipped)} skipped")
                if progress and not live and ((i + 1) % max(1, n // 10) == 0 or i + 1 == n):  # a log: plain lines
                    console.print(f"prepare: {i + 1}/{n} images, {len(skipped)} skipped", highlight=False)
        arr.flush()
        del arr
        index = {"version": CACHE_VERSION, "size": size, "dataset": table.name, "ids": [r.id for r in table.records],
                 "paths": [r.image_path for r in table.records], "skipped": {str(k): v for k, v in skipped.items()}}
        (tmp / "index.json").write_text(json.dumps(index), encoding="utf-8")
    return index


class PreparedCache:
    """Read access to a prepared cache; checks it matches the dataset and size it serves (an
    :class:`~maskkit.data.records.OptionError` of the ``cache`` key: ``data.cache``, or the
    source's ``data.sources[i] (name).cache``)."""

    def __init__(self, folder: str | Path, expect_size: int | None = None, expect_ids: list[str] | None = None) -> None:
        self.folder = Path(folder)
        idx = self.folder / "index.json"
        if not idx.is_file():
            raise OptionError("cache", f"{{key}}: {self.folder} is not a prepared cache (no index.json); run maskkit prepare")
        try:
            self.index = json.loads(idx.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise MaskkitError(f"{idx}: damaged cache index ({exc}); run maskkit prepare --overwrite") from None
        if expect_size is not None and self.index["size"] != expect_size:
            raise OptionError("cache", f"{{key}}: {self.folder} holds {self.index['size']} px images, the run needs {expect_size}")
        self.row = {rid: i for i, rid in enumerate(self.index["ids"])}
        if expect_ids is not None:
            missing = [r for r in expect_ids if r not in self.row]
            if missing:
                raise OptionError("cache", f"{{key}}: {self.folder} does not hold record '{missing[0]}' ({len(missing)} of "
                                  f"{len(expect_ids)} missing); run maskkit prepare for this dataset")
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")
        self.skipped = {int(k): v for k, v in self.index["skipped"].items()}

    def __len__(self) -> int:
        return len(self.index["ids"])

    def image(self, record_id: str) -> np.ndarray:
        """The cached ``[S, S]`` float image of a record (by id) in [0, 1]; DecodeError if it was skipped."""
        return self.raw(record_id).astype(np.float32) / 255.0

    def raw(self, record_id: str) -> np.ndarray:
        """The cached ``[S, S]`` uint8 image of a record (0-255, as stored); DecodeError if it was skipped."""
        i = self.row[record_id]
        if i in self.skipped:
            raise DecodeError(self.skipped[i])
        return np.array(self.images[i])  # a writable copy (the memmap is read-only)
