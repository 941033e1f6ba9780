"""Reports/s of the lexicon NER backend on the real Open-i reports (one core).

    python benchmarks/bench_ner.py        # goal: over 1,000 reports/s on one core
"""

from __future__ import annotations

import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from maskkit.data.ner import LexiconNER  # noqa: E402
from maskkit.data.records import openi  # noqa: E402


def main() -> None:
    src = Path(__file__).resolve().parents[2] / "shared" / "data" / "openi" / "ecgen-radiology-dev.tgz"
    if not src.is_file():
        raise SystemExit(f"needs {src} (the project's ../shared data); not found")
    texts = [r.report for r in openi(src).records if r.report]
    ner = LexiconNER()
    ner(texts[:50])  # build the pipeline
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        ents = ner(texts)
        best = max(best, len(texts) / (time.perf_counter() - t0))
    print(f"lexicon NER: {len(texts)} reports, {sum(map(len, ents))} entities, {best:.0f} reports/s on one core")


if __name__ == "__main__":
    main()
