"""Write phantoms to disk in maskkit's generic CSV format (``maskkit phantoms``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from ..io import atomic_directory
from .phantoms import LABELS, PhantomGenerator


def write_phantoms(out: str | Path, n: int, seed: int = 0, size: int = 224, p_unpaired: float = 0.2,
                   overwrite: bool = False, progress: bool = True) -> Path:
    """Write ``images/``, ``masks/`` (lesion union), ``phantoms.csv`` and ``findings.jsonl``.

    Written into a temporary sibling folder and renamed, so a stopped run leaves nothing half-done.
    """
    with atomic_directory(out, overwrite) as tmp:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        gen = PhantomGenerator(seed, size, p_unpaired=p_unpaired)
        from rich.progress import track

        with open(tmp / "phantoms.csv", "w", newline="", encoding="utf-8") as fc, \
                open(tmp / "findings.jsonl", "w", encoding="utf-8") as fj:
            w = csv.writer(fc)
            w.writerow(["image_path", "report", *LABELS, "mask_path"])
            from ..streams import progress_console

            console, live = progress_console()
            for i in track(range(n), description="phantoms", disable=not (progress and live), console=console):
                p = gen[i]
                name = f"phantom_{seed}_{i:06d}.png"
                Image.fromarray(np.rint(p.image * 255).astype(np.uint8)).save(tmp / "images" / name, optimize=False)
                Image.fromarray(p.lesion_mask.astype(np.uint8) * 255).save(tmp / "masks" / name)
                w.writerow([f"images/{name}", p.report or "", *[int(p.labels[k]) for k in LABELS], f"masks/{name}"])
                fj.write(json.dumps({"image": f"images/{name}", "findings": p.findings}) + "\n")
    return Path(out)
