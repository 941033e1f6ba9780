"""Images/s per core: decode + resize from PNG versus reading the prepared uint8 cache.

    python benchmarks/bench_data.py [--n 200] [--source-size 1024] [--size 224]

Writes ``--n`` 16-bit PNGs of ``--source-size`` (the size of real CXR PNGs) in a temporary
folder, prepares a cache, and times one pass of each path on one thread (one core). Uses the
real NIH images in ../shared/data/nih1000 too, when present.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maskkit.data.cache import prepare_cache
from maskkit.data.dataset import XrayDataset
from maskkit.data.phantoms import PhantomGenerator
from maskkit.data.records import Record, Table


def rate(ds, n) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--source-size", type=int, default=1024)
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        gen = PhantomGenerator(0, args.source_size)
        recs = []
        for i in range(args.n):
            img = (gen[i].image * 65535).astype(np.uint16)
            Image.fromarray(img).save(d / f"{i}.png")
            recs.append(Record(str(i), str(d / f"{i}.png")))
        table = Table("bench", recs, ())
        prepare_cache(table, d / "cache", args.size, progress=False)
        png = rate(XrayDataset(table, args.size), args.n)
        cached = rate(XrayDataset(table, args.size, cache=d / "cache"), args.n)
        print(f"16-bit PNG {args.source_size}px -> {args.size}px: {png:8.1f} images/s/core")
        print(f"prepared cache ({args.size}px uint8):  {cached:8.1f} images/s/core   speed-up {cached / png:.0f}x")
        nih = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih1000"
        if nih.is_dir():
            files = sorted((nih / "dev").glob("*.png"))[: args.n]
            t = Table("nih", [Record(f.name, str(f)) for f in files], ())
            prepare_cache(t, d / "nih", 64, progress=False)
            a, b = rate(XrayDataset(t, 64), len(files)), rate(XrayDataset(t, 64, cache=d / "nih"), len(files))
            print(f"real NIH 8-bit 64px PNG: {a:8.1f} images/s/core; cache {b:8.1f}  speed-up {b / a:.0f}x")


if __name__ == "__main__":
    main()
