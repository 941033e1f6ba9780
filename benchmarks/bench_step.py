"""One training step of XLIP as a ratio to a plain CLIP step (same towers, batch), in time and FLOPs.

    python benchmarks/bench_step.py                          # CPU: maskkit-tiny, batch 16
    python benchmarks/bench_step.py --arch ViT-B-16 --batch 8 --decoder-depth 8 --decoder-width 512 --decoder-heads 16
    python benchmarks/bench_step.py --device cuda --arch ViT-B-16 --batch 64 --bf16 \\
        --decoder-depth 8 --decoder-width 512 --decoder-heads 16    # the paper's scale, on a GPU

The configurations are timed interleaved (CLIP, XLIP-feature, XLIP-input, CLIP, ...), so machine
drift lands in every configuration alike; each XLIP/CLIP ratio is taken round by round and the
median is reported, beside the FLOP ratio counted with ``torch.utils.flop_counter`` for one full
step (forward + backward). A label may end in ``+compile`` (``train.compile``), ``+gc``
(``train.grad_checkpointing``) or ``+tune`` (a step of the unmasked tune, ``train.unmasked_tune``:
every patch at full resolution, the alignment only); ``--unmasked-tune F`` then prints each
configuration's cost per step over a run whose last F of the steps are the tune; ``--memory`` prints the activations each step keeps for its backward. ``--breakdown`` adds FLOPs of the ablations that isolate what each
extra term costs: the MIM decoder (with its mask scoring), the prompt pass, the text decoder and
the second text-tower pass of ``mlm.mode=input``. On a GPU it also prints MFU against ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from maskkit.config import ObjectivesConfig
from maskkit.model import MIMConfig, MLMConfig, ModelConfig, XLIP
from maskkit.objectives import Objectives
from maskkit.presets import IMAGE_ONLY, PRESETS, SPARSE_MODEL, attmim, guided

CONFIGS = {  # label: (strategy trees, model keys over the preset's and the command line's)
    "clip": (PRESETS["clip"][0], {}),
    "clip-flip": (PRESETS["clip-flip"][0], PRESETS["clip-flip"][0]["model"]),
    "xlip-feature": (PRESETS["xlip"][0], {}),
    "xlip-input": (PRESETS["xlip"][0], {"mim": {"placement": "input"}}),
    "xlip-mlm-loss": (PRESETS["xlip"][0], {"mlm": {"mode": "loss"}}),
    "xlip-sparse": (PRESETS["xlip-sparse"][0], SPARSE_MODEL),
    # xlip-sparse with one of its choices undone (docs/assumptions.md A58)
    "sparse-mae-decoder": (PRESETS["xlip-sparse"][0], {**SPARSE_MODEL, "mim": {**SPARSE_MODEL["mim"], "decoder_queries": "all"}}),
    "sparse-mlm-input": (PRESETS["xlip-sparse"][0], {**SPARSE_MODEL, "mlm": {"mode": "input"}}),
    "sparse-ratio-0.7": ({**PRESETS["xlip-sparse"][0], "image_mask": guided(ratio=0.7),
                          "image_only_mask": guided(["prompt_driven", "image_self"], ratio=0.7)}, SPARSE_MODEL),
    "sparse-lowres-0.6": (PRESETS["xlip-sparse"][0], {**SPARSE_MODEL, "mim": {**SPARSE_MODEL["mim"], "lowres_scale": 0.6}}),
    # ablations for the breakdown
    "mim-only": ({"image_mask": attmim(), "image_only_mask": IMAGE_ONLY, "text_mask": None}, {}),
    "mim-no-prompt": ({"image_mask": attmim(["report_cross", "image_self"]), "image_only_mask": {"image_self": {"ratio": 0.75}},
                       "text_mask": None}, {}),
}
#: a label may end in +compile (train.compile: torch.compile of the model's forward), +gc
#: (train.grad_checkpointing) and/or +tune (a step of the unmasked tune, train.unmasked_tune), e.g.
#: clip+compile, xlip-sparse+gc+compile, xlip-sparse+tune
SUFFIXES = ("+compile", "+gc", "+tune")


def parse_label(label: str) -> tuple[str, set[str]]:
    base, flags = label, set()
    while base.endswith(SUFFIXES):
        suf = next(x for x in SUFFIXES if base.endswith(x))
        base, flags = base[: -len(suf)], flags | {suf[1:]}
    if base not in CONFIGS:
        raise SystemExit(f"--configs: unknown configuration '{base}'; expected one of {', '.join(CONFIGS)} (each optionally +compile, +gc, +tune)")
    return base, flags


def batch_for(model: XLIP, B: int, device: str, p_unpaired: float = 0.0) -> dict:
    """A random batch of ``B`` rows (token ids, a quarter of them entities); the first
    ``round(p_unpaired · B)`` rows image-only."""
    g = torch.Generator().manual_seed(0)
    T = model.context_length
    lengths = torch.randint(T // 3, T, (B,), generator=g)
    valid = torch.arange(T)[None] < lengths[:, None]
    tok = model.tokenizer
    ids = torch.randint(1, tok.vocab_size - 1, (B, T), generator=g).masked_fill(~valid, tok.pad_id)
    ids[:, 0] = tok.start_id
    ids[torch.arange(B), lengths - 1] = tok.end_id
    return {"images": torch.rand(B, 1, model.image_size, model.image_size, generator=g).to(device),
            "text": ids.to(device), "text_valid": valid.to(device), "paired": (torch.arange(B) >= round(p_unpaired * B)).to(device),
            "entities": ((torch.rand(B, T, generator=g) < 0.25) & valid).to(device)}


class Runner:
    """A model, its objectives, an optimiser and a batch: ``step()`` is one timed training step."""

    def __init__(self, label: str, args) -> None:
        base, flags = parse_label(label)
        trees, model_keys = CONFIGS[base]
        mim = {"decoder_depth": args.decoder_depth, "decoder_width": args.decoder_width, "decoder_heads": args.decoder_heads,
               **model_keys.get("mim", {})}
        if args.lowres_scale is not None and "lowres_scale" not in model_keys.get("mim", {}):
            mim["lowres_scale"] = args.lowres_scale
        mlm = {"layers": args.mlm_layers, **model_keys.get("mlm", {})}
        rest = {k: v for k, v in model_keys.items() if k not in ("mim", "mlm")}
        cfg = ModelConfig(arch=args.arch, mim=MIMConfig(**mim), mlm=MLMConfig(**mlm), **rest)
        torch.manual_seed(0)
        self.model = XLIP(cfg, **{k: trees.get(k) for k in ("image_mask", "image_only_mask", "text_mask")}).to(args.device)
        self.model.set_grad_checkpointing("gc" in flags)
        self.forward = torch.compile(self.model) if "compile" in flags else self.model
        self.objectives = Objectives.for_model(self.model, ObjectivesConfig())
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-5, momentum=0.9)
        self.batch = batch_for(self.model, args.batch, args.device, args.p_unpaired)
        self.device, self.bf16, self.i = args.device, args.bf16, 0
        self.clock = args.clock
        self.tune = "tune" in flags

    def loss(self, forward, seed: int):
        return self.objectives(forward(self.batch, seed=seed, tune=self.tune), in_tune=self.tune)[0]

    def step(self) -> float:
        if self.device == "cuda":
            torch.cuda.synchronize()
        clock = time.process_time if self.clock == "process" else time.perf_counter
        t0 = clock()
        with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=self.bf16):
            total = self.loss(self.forward, self.i)
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        self.i += 1
        return clock() - t0

    def saved_bytes(self) -> int:
        """Bytes of the tensors one step's forward keeps for its backward (distinct storages): the
        activation memory ``train.grad_checkpointing`` trades for recomputation."""
        seen: dict[int, int] = {}

        def pack(t):
            try:
                st = t.untyped_storage()
                seen[st.data_ptr()] = st.nbytes()
            except (RuntimeError, NotImplementedError):
                pass
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=self.bf16):
                total = self.loss(self.model, 0)
        total.backward()
        self.opt.zero_grad(set_to_none=True)
        return sum(seen.values())

    def flops(self) -> int:
        with FlopCounterMode(display=False) as fc:
            with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=self.bf16):
                total = self.loss(self.model, 0)
            total.backward()
        self.opt.zero_grad(set_to_none=True)
        return fc.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="maskkit-tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7, help="interleaved rounds (after 2 warm-up steps each)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--decoder-depth", type=int, default=2)
    ap.add_argument("--decoder-width", type=int, default=128)
    ap.add_argument("--decoder-heads", type=int, default=4)
    ap.add_argument("--mlm-layers", type=int, default=3)
    ap.add_argument("--configs", default="clip,xlip-feature,xlip-input,xlip-sparse,clip-flip",
                    help=f"comma-separated: {', '.join(CONFIGS)}; each may end in +compile and/or +gc")
    ap.add_argument("--p-unpaired", type=float, default=0.0, help="fraction of image-only rows in the batch")
    ap.add_argument("--breakdown", action="store_true", help="FLOPs of the ablations that isolate each extra term")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak for MFU (H100/H200 dense bf16: 989)")
    ap.add_argument("--flops-only", action="store_true", help="count FLOPs, time nothing")
    ap.add_argument("--clock", choices=("wall", "process"), default="wall",
                    help="wall: elapsed time; process: this process's CPU time (user + sys), steadier on a CPU shared "
                         "with other jobs (use with --threads 1, so that no thread waits spinning)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--memory", action="store_true", help="also the activation memory a step keeps for its backward")
    ap.add_argument("--lowres-scale", type=float, default=None,
                    help="mim.lowres_scale of the sparse configurations that do not set their own (default: the model's, 0.5; "
                         "scale=tiny runs use 0.67, a 4x4 view)")
    ap.add_argument("--unmasked-tune", type=float, default=None, metavar="F",
                    help="also each configuration's cost per step over a run whose last F of the steps are the unmasked "
                         "tune (train.unmasked_tune), from its +tune label's times (time it too: --configs clip,xlip-sparse,xlip-sparse+tune)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = args.configs.split(",")
    for lab in labels:
        parse_label(lab)
    runners = {lab: Runner(lab, args) for lab in labels}
    flops = {lab: r.flops() for lab, r in runners.items()}
    if args.memory:
        for lab, r in runners.items():
            print(f"{lab:24s} {r.saved_bytes() / 2**20:10.1f} MiB kept for the backward")
    if args.flops_only:
        for lab in labels:
            print(f"{lab:24s} {flops[lab] / 1e9:10.1f} GFLOP/step" + (f"  {flops[lab] / flops['clip']:.3f}x clip" if "clip" in flops else ""))
        return
    import sys

    def progress(msg: str) -> None:  # on stderr as it happens: a run stopped by a time limit still says where it was
        print(msg, file=sys.stderr, flush=True)

    for lab, r in runners.items():
        t0 = time.perf_counter()
        r.step(), r.step()  # warm-up (allocators, kernels; torch.compile's compilation for +compile)
        progress(f"{lab}: warm-up (2 steps) {time.perf_counter() - t0:.1f} s")
    times: dict[str, list[float]] = {lab: [] for lab in labels}
    for i in range(args.rounds):
        for lab in labels:
            times[lab].append(runners[lab].step())
        progress(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{lab} {times[lab][-1]:.3f} s" for lab in labels))
    import os

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"device={args.device} arch={args.arch} batch={args.batch} bf16={args.bf16} "
          f"decoder={args.decoder_depth}x{args.decoder_width}/{args.decoder_heads} rounds={args.rounds} (interleaved) "
          f"clock={args.clock} threads={torch.get_num_threads()} load average at the end={load:.1f}")
    for lab in labels:
        t = statistics.median(times[lab])
        line = f"{lab:24s} {t:8.3f} s/step  {args.batch / t:8.1f} samples/s  {flops[lab] / 1e9:10.1f} GFLOP/step"
        if args.device == "cuda":
            line += f"  MFU {flops[lab] / t / (args.peak_tflops * 1e12):.1%}"
        print(line)
    if "clip" in labels:
        for lab in labels:
            if lab == "clip":
                continue
            ratios = [a / b for a, b in zip(times[lab], times["clip"])]
            print(f"{lab} / clip: time {statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f}), "
                  f"FLOPs {flops[lab] / flops['clip']:.2f}x")
    if args.unmasked_tune is not None and "clip" in labels:
        F = args.unmasked_tune
        for lab in labels:
            tl = lab + "+tune"
            if lab == "clip" or lab.endswith("+tune") or tl not in labels:
                continue
            ratio = statistics.median((1 - F) * a / c + F * t / c for a, t, c in zip(times[lab], times[tl], times["clip"]))
            fl = ((1 - F) * flops[lab] + F * flops[tl]) / flops["clip"]
            print(f"{lab} with train.unmasked_tune={F:g} / clip: time {ratio:.2f}x, FLOPs {fl:.2f}x "
                  f"(a CLIP budget of N steps buys N / {ratio:.2f} of its steps)")
    if args.breakdown:
        need = ["clip", "mim-only", "mim-no-prompt", "xlip-mlm-loss", "xlip-feature"]
        f = {lab: flops[lab] if lab in flops else Runner(lab, args).flops() for lab in need}
        base = f["clip"]
        parts = {"MIM decoder + mask scoring (mim-only - clip - prompt pass)": f["mim-only"] - base - (f["mim-only"] - f["mim-no-prompt"]),
                 "prompt pass (mim-only - mim-no-prompt)": f["mim-only"] - f["mim-no-prompt"],
                 "text decoder (xlip mlm.mode=loss - mim-only)": f["xlip-mlm-loss"] - f["mim-only"],
                 "second text pass (mlm.mode=input - loss)": f["xlip-feature"] - f["xlip-mlm-loss"]}
        print(f"breakdown, FLOPs relative to a CLIP step ({base / 1e9:.1f} GFLOP):")
        for k, v in parts.items():
            print(f"  + {v / base:6.3f}  {k}")


if __name__ == "__main__":
    main()
