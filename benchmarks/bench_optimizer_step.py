"""The optimiser step's own costs, on the real recipe: gradient accumulation and the finiteness check.

    python benchmarks/bench_optimizer_step.py                       # CPU, tiny preset=xlip, batch 8
    python benchmarks/bench_optimizer_step.py runtime.device=cuda model.arch=ViT-B-16 ...   # any run settings

Two recipes on the same samples per step, ``train.batch_size=B`` and ``B/2 × train.grad_accum=2``,
step in turn (so machine drift lands on both); reported: their median step times, the ratio, and
the share of the accumulated step taken by its first pass (every micro-batch forward without
gradient, timed alone). Then the finiteness check (``maskkit.training.optim.grad_norm`` and its
``isfinite``, on the real gradients after a step) against the step time, with
``train.clip_grad=null`` (with clipping the norm is computed anyway and the check adds nothing).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from maskkit.config import resolve
from maskkit.data.dataset import to_device
from maskkit.masking import mask_seed
from maskkit.train import PretrainRecipe
from maskkit.training.optim import grad_norm


def recipe(out: str, name: str, *settings: str) -> PretrainRecipe:
    cfg, src = resolve(["data.n=64", "data.val_n=0", "train.warmup_steps=0", "runtime.progress=false",
                        "runtime.evaluations=[]", "train.steps=1000", f"runtime.out_dir={out}", f"runtime.name={name}", *settings])
    r = PretrainRecipe(cfg, src)
    r.setup()
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("settings", nargs="*", help="run settings (key=value) for both recipes")
    ap.add_argument("--batch", type=int, default=8, help="samples per step (the accumulated run takes half per micro-batch)")
    ap.add_argument("--steps", type=int, default=9, help="timed steps (the first 2 are warm-up)")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as out:
        one = recipe(out, "one", f"train.batch_size={a.batch}", "train.clip_grad=null", *a.settings)
        acc = recipe(out, "acc", f"train.batch_size={a.batch // 2}", "train.grad_accum=2", *a.settings)
        t1, t2, tp, tc = [], [], [], []
        for _ in range(a.steps):
            for r, ts in ((one, t1), (acc, t2)):
                t = time.perf_counter()
                r.train_step()
                ts.append(time.perf_counter() - t)
            for _ in range(3):  # the check alone, on one's real gradients
                t = time.perf_counter()
                bool(~torch.isfinite(grad_norm(one.model)))
                tc.append(time.perf_counter() - t)
            batches = [to_device(one.collate([acc.train_ds[i] for i in range(k * (a.batch // 2), (k + 1) * (a.batch // 2))]),
                                 acc.device) for k in range(2)]
            t = time.perf_counter()
            with torch.no_grad():
                for m, b in enumerate(batches):
                    acc.objectives.summaries(acc.model(b, seed=mask_seed(0, 0, m)))
            tp.append(time.perf_counter() - t)
        m1, m2, mp, mc = (statistics.median(x[2:]) for x in (t1, t2, tp, tc[6:]))
        print(f"batch {a.batch} x 1: {m1 * 1e3:.0f} ms/step; batch {a.batch // 2} x grad_accum 2: {m2 * 1e3:.0f} ms/step "
              f"(ratio {m2 / m1:.2f}); its no-grad first pass: {mp * 1e3:.0f} ms ({mp / m2:.0%} of the step)")
        print(f"finiteness check: {mc * 1e3:.2f} ms against a {m1 * 1e3:.0f} ms step without clipping "
              f"(step time with / without the check: {m1 / (m1 - mc):.3f})")
        for r in (one, acc):
            r.metrics.close()


if __name__ == "__main__":
    main()
