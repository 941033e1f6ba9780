"""Time of the full XLIP AttMIM composition against one ViT-B/16 image-tower forward pass.

    python benchmarks/bench_masks.py                 # paper shapes: B=64 N=196 T=128 P=14 D=512
    python benchmarks/bench_masks.py --device cuda   # on a GPU (checks for host syncs too)

Prints milliseconds per call (median of --repeat runs) for each strategy alone, the XLIP union
(paired samples) and the image-only union, and the ratio of the XLIP union to the tower forward.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from maskkit import build_strategy
from maskkit.core import MaskContext
from maskkit.presets import IMAGE_ONLY, attmim


def timed(fn, repeat: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=196)
    ap.add_argument("--text", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=14)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-tower", action="store_true", help="skip the ViT-B/16 forward (mask timings only)")
    args = ap.parse_args()
    dev = args.device
    B, N, T, P, D = args.batch, args.tokens, args.text, args.prompts, args.dim
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    ctx = MaskContext(
        image_tokens=torch.randn(B, N, D, generator=g).to(dev),
        report_tokens=torch.randn(B, T, D, generator=g).to(dev),
        report_valid=(torch.arange(T)[None] < lengths[:, None]).to(dev),
        prompt_tokens=torch.randn(P, D, generator=g).to(dev),
        entities=(torch.rand(B, T, generator=g) < 0.3).to(dev),
        generator=torch.Generator(device=dev).manual_seed(0),
    )
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}, B={B} N={N} T={T} P={P} D={D}")
    cases = {
        "random": "random",
        "image_self": {"image_self": {"ratio": 0.7}},
        "report_cross": {"report_cross": {"ratio": 0.7}},
        "prompt_driven": {"prompt_driven": {"ratio": 0.7}},
        "xlip union (paired)": attmim(),
        "image-only union": IMAGE_ONLY,
        "xlip union, score_weighted": {"union": {**attmim()["union"], "subset": "score_weighted"}},
        "entmlm (entity ∩ causal)": {"intersect": {"of": [{"entity": {"ratio": 0.2}}, "causal"]}},
    }
    results = {}
    if dev == "cuda":
        torch.cuda.set_sync_debug_mode("error")  # any host sync in mask code raises
    with torch.no_grad():
        for label, spec in cases.items():
            s = build_strategy(spec)
            results[label] = timed(lambda: s(ctx), args.repeat, dev)
            print(f"  {label:32s} {results[label]:9.2f} ms")
    if dev == "cuda":
        torch.cuda.set_sync_debug_mode(0)
    if args.no_tower:
        return
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None).visual.to(dev).eval()
    x = torch.randn(B, 3, 224, 224, device=dev)
    with torch.no_grad():
        tower = timed(lambda: model(x), max(1, args.repeat // 2), dev)
    print(f"  {'ViT-B/16 image tower forward':32s} {tower:9.2f} ms")
    print(f"XLIP AttMIM mask / tower forward = {results['xlip union (paired)'] / tower:.4f}")


if __name__ == "__main__":
    main()
