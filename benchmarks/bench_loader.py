"""Samples/s one DataLoader worker delivers: 224 px images from a prepared cache, real Open-i
reports with lexicon entities, tokenization and entity alignment, collation included.

    python benchmarks/bench_loader.py [--n 2000] [--batch 64] [--size 224] [--epochs 3]

Builds a prepared cache of ``--n`` phantom images at ``--size`` px in a temporary folder, pairs
them with the real Open-i reports of ../shared/data/openi (the development part), and reads
``--epochs`` epochs through the training loader (``maskkit.data.loader``) with one worker, and in
the main process (``num_workers=0``). Epoch 1 tokenizes and aligns every report (cold); later
epochs reuse each record's kept token fields (warm). The goal (docs/benchmarks.md) is at least
5,000 samples/s per worker, warm.

Then the mixture sampler (``MixtureBatchSampler``, ``data.sources``): the same records as two
sources (half paired, half image-only at weight 0.5) through the loader, and the sampler alone
on the paper corpus's sizes (about 243,000 frontal MIMIC-CXR + 110,000 PadChest images, weights
1 and 0.5, batch 64 per rank, 8 ranks): indices per second, every epoch order computed.
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
from maskkit.data.dataset import Collator, XrayDataset
from maskkit.data.build import ConcatSources
from maskkit.data.loader import MixtureBatchSampler, make_loader
from maskkit.data.ner import LexiconNER
from maskkit.data.phantoms import PhantomGenerator
from maskkit.data.records import Record, Table, openi
from maskkit.data.tokenize import ReportTokenizer
from maskkit.distributed import DistInfo

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "openi" / "ecgen-radiology-dev.tgz"


def reports(n: int) -> list[str | None]:
    if not SHARED.is_file():
        raise SystemExit(f"needs the Open-i reports at {SHARED} (the project's ../shared folder)")
    rs = [r.report for r in openi(SHARED).records]
    return [rs[i % len(rs)] for i in range(n)]


def loader_rates(ds, collate, sampler, workers: int, epochs: int) -> list[float]:
    """Samples/s of each of ``epochs`` epochs read through the training loader in ``sampler``'s order."""
    it = iter(make_loader(ds, collate, sampler, workers))
    out = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        n = 0
        for _ in range(sampler.per_epoch):
            n += len(next(it)["ids"])
        out.append(n / (time.perf_counter() - t0))
    return out


def epochs_rate(ds, collate, batch: int, workers: int, epochs: int) -> list[float]:
    sampler = MixtureBatchSampler([len(ds)], [1.0], batch, 0, DistInfo())  # one source: the single-dataset order
    return loader_rates(ds, collate, sampler, workers, epochs)


def mixture_rates(ds, collate, batch: int, workers: int, epochs: int) -> list[float]:
    """Samples/s through the loader with two sources of ``ds``'s records (half, weights 1 and 0.5)."""
    half = len(ds) // 2
    a = XrayDataset(Table("a", ds.table.records[:half], ()), ds.image_size, cache=ds.cache.folder, tokenizer=ds.tokenizer,
                    on_skip="replace", raw_cache=True)
    b = XrayDataset(Table("b", ds.table.records[half:], ()), ds.image_size, cache=ds.cache.folder, tokenizer=ds.tokenizer,
                    on_skip="replace", raw_cache=True)
    b.reports = [None] * len(b)  # the image-only source
    mixed = ConcatSources([a, b], ["a", "b"])
    sampler = MixtureBatchSampler([len(a), len(b)], [1.0, 0.5], batch, 0, DistInfo())
    return loader_rates(mixed, collate, sampler, workers, epochs)


def sampler_rate(sizes=(243_000, 110_000), weights=(1.0, 0.5), batch: int = 64, world: int = 8, epochs: int = 3) -> float:
    """Indices/s of MixtureBatchSampler alone (rank 0 of ``world``), epoch orders included."""
    s = MixtureBatchSampler(list(sizes), list(weights), batch, 0, DistInfo(0, world))
    it = iter(s)
    t0 = time.perf_counter()
    n = 0
    for _ in range(epochs * s.per_epoch):
        n += len(next(it))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    texts = reports(args.n)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        gen = PhantomGenerator(0, args.size)
        recs = []
        for i in range(min(args.n, 64)):  # 64 distinct images, reused: the cache holds n rows either way
            Image.fromarray((gen[i].image * 255).astype(np.uint8)).save(d / f"{i}.png")
        for i in range(args.n):
            recs.append(Record(f"r{i}", str(d / f"{i % 64}.png"), texts[i], patient_id=f"p{i}"))
        table = Table("bench", recs, ())
        prepare_cache(table, d / "cache", args.size, progress=False)
        tok = ReportTokenizer(77)
        t0 = time.perf_counter()
        ds = XrayDataset(table, args.size, cache=d / "cache", ner=LexiconNER(), tokenizer=tok, on_skip="replace", raw_cache=True)
        print(f"setup: NER of {len(set(texts))} distinct reports in {time.perf_counter() - t0:.1f} s")
        collate = Collator(tok)
        for workers in (0, 1):
            ds._encoded.clear()
            rates = epochs_rate(ds, collate, args.batch, workers, args.epochs)
            where = "main process" if workers == 0 else "1 worker    "
            print(f"{where}: " + "  ".join(f"epoch {e + 1} {r:8.0f} samples/s" for e, r in enumerate(rates)))
        print(f"n={args.n} batch={args.batch} size={args.size}px (uint8 from the cache, as training reads it), context 77, real Open-i reports")
        for workers in (0, 1):
            ds._encoded.clear()
            rates = mixture_rates(ds, collate, args.batch, workers, args.epochs)
            where = "main process" if workers == 0 else "1 worker    "
            print(f"two sources (weights 1, 0.5), {where}: " + "  ".join(f"epoch {e + 1} {r:8.0f} samples/s" for e, r in enumerate(rates)))
    print(f"MixtureBatchSampler alone, 243,000 + 110,000 samples, weights 1 / 0.5, batch 64, rank 0 of 8: "
          f"{sampler_rate():,.0f} indices/s")


if __name__ == "__main__":
    main()
