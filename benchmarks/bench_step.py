"""One training step of the full XLIP preset as a ratio to a plain CLIP step (same towers, batch).

    python benchmarks/bench_step.py                          # CPU: maskkit-tiny, batch 16
    python benchmarks/bench_step.py --device cuda --arch ViT-B-16 --batch 64 --bf16 \\
        --decoder-depth 8 --decoder-width 512               # the paper's scale, on a GPU

Prints seconds per step (median) and samples/s for: CLIP (alignment only), XLIP with
``mim.placement=feature`` (paper) and ``input`` (MAE), and the ratios to CLIP. The goal for
``feature`` is at most 1.4x a CLIP step (its extra FLOPs are about 1.3x at ViT-B/16 scale).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from maskkit.model import MIMConfig, MLMConfig, ModelConfig, XLIP
from maskkit.presets import PRESETS


def batch_for(model: XLIP, B: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    T = model.context_length
    lengths = torch.randint(T // 3, T, (B,), generator=g)
    valid = torch.arange(T)[None] < lengths[:, None]
    ids = torch.randint(1, 40000, (B, T), generator=g) * valid
    ids[:, 0] = model.tokenizer.sot
    ids[torch.arange(B), lengths - 1] = model.tokenizer.eot
    return {"images": torch.rand(B, 1, model.image_size, model.image_size, generator=g).to(device),
            "text": ids.to(device), "text_valid": valid.to(device), "paired": torch.ones(B, dtype=torch.bool, device=device),
            "entities": ((torch.rand(B, T, generator=g) < 0.25) & valid).to(device)}


def step_time(model: XLIP, batch: dict, steps: int, device: str, bf16: bool) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    times = []
    for i in range(steps + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            out = model(batch, seed=i)
        loss = sum(v for k, v in out.items() if k.endswith("_loss"))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="maskkit-tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--decoder-depth", type=int, default=2)
    ap.add_argument("--decoder-width", type=int, default=128)
    ap.add_argument("--decoder-heads", type=int, default=4)
    ap.add_argument("--mlm-layers", type=int, default=3)
    args = ap.parse_args()
    xl, clip = PRESETS["xlip"][0], PRESETS["clip"][0]
    results = {}
    for label, preset, placement in (("clip", clip, "feature"), ("xlip feature", xl, "feature"), ("xlip input", xl, "input")):
        cfg = ModelConfig(arch=args.arch, image_mask=preset["image_mask"], image_only_mask=preset["image_only_mask"],
                          text_mask=preset["text_mask"],
                          mim=MIMConfig(placement=placement, decoder_depth=args.decoder_depth, decoder_width=args.decoder_width,
                                        decoder_heads=args.decoder_heads),
                          mlm=MLMConfig(layers=args.mlm_layers))
        torch.manual_seed(0)
        model = XLIP(cfg).to(args.device)
        results[label] = step_time(model, batch_for(model, args.batch, args.device), args.steps, args.device, args.bf16)
        print(f"{label:14s} {results[label]:8.3f} s/step  {args.batch / results[label]:8.1f} samples/s", flush=True)
        del model
    print(f"device={args.device} arch={args.arch} batch={args.batch} bf16={args.bf16} decoder={args.decoder_depth}x{args.decoder_width}")
    for label in ("xlip feature", "xlip input"):
        print(f"{label} / clip = {results[label] / results['clip']:.2f}")


if __name__ == "__main__":
    main()
