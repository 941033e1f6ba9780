"""The pretraining recipe: a small loop separate from the model.

    maskkit run preset=xlip                              # tiny CPU run on phantoms
    maskkit run preset=xlip scale=paper data=mimic data.root=/data/mimic runtime.devices=8

The model returns a dict of losses; this loop weights and sums the ``*_loss`` terms (only the
masked-modelling terms during the warm-up), steps the optimiser, logs, checkpoints and resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ExperimentConfig, flat_items
from .distributed import DistInfo, Gatherer, init_from_env
from .errors import MaskkitError
from .io import atomic_write_bytes, atomic_write_text

# keys that may differ between a checkpoint and the run resuming from it
RESUMABLE_DIFFERENCES = ("runtime.", "train.steps", "train.log_every", "train.ckpt_every", "train.keep_last")


class TrainingError(MaskkitError):
    """The run cannot go on (NaN losses in a row, a refused checkpoint, a bad run directory)."""


# --- data ------------------------------------------------------------------------------------

def _split_by_patient(records, val_fraction: float, seed: int):
    def bucket(r):
        key = f"{seed}:{r.patient_id or r.id}".encode()
        return int(hashlib.sha1(key).hexdigest()[:8], 16) / 0xFFFFFFFF
    train = [r for r in records if bucket(r) >= val_fraction]
    val = [r for r in records if bucket(r) < val_fraction]
    return train, val


def build_datasets(cfg: ExperimentConfig, image_size: int):
    """(train, held-out) datasets and their label names, from ``cfg.data``."""
    from .data.dataset import PhantomDataset, XrayDataset
    from .data.ner import CachedNER, make_ner
    from .data.records import Table, load_table

    d = cfg.data
    ner = CachedNER(make_ner(d.ner, d.ner_model)) if cfg.text_mask is not None else None  # entities feed EntMLM only
    if d.name == "phantoms":
        train = PhantomDataset(d.n, d.seed, image_size, offset=0, ner=ner, p_unpaired=d.p_unpaired)
        val = PhantomDataset(d.val_n, d.seed, image_size, offset=10_000_000, ner=None, p_unpaired=0.0) if d.val_n else None
        return train, val, train.label_names
    opts = dict(d.options)
    if d.name == "csv":
        if not d.path:
            raise MaskkitError("data.path: data=csv needs data.path=/path/to/file.csv")
        opts["path"] = d.path
    else:
        if not d.root:
            raise MaskkitError(f"data.root: data={d.name} needs data.root=/path/to/{d.name}")
        opts["root"] = d.root
    try:
        table = load_table(d.name, **opts)
    except TypeError as exc:
        raise MaskkitError(f"data.options: {exc}") from None
    if not len(table):
        raise MaskkitError(f"data: {d.name} at {d.root or d.path} has no records (after filters)")
    tr, va = _split_by_patient(table.records, 0.1, cfg.train.seed)
    train = XrayDataset(Table(table.name, tr, table.label_names), image_size, d.decode_policy, ner=ner, cache=d.cache)
    val = XrayDataset(Table(table.name, va, table.label_names), image_size, d.decode_policy, cache=d.cache) if va else None
    return train, val, table.label_names


class BatchOrder:
    """The data order: a seeded permutation per epoch (DistributedSampler), resumable mid-epoch."""

    def __init__(self, n: int, batch: int, seed: int, info: DistInfo) -> None:
        from torch.utils.data import DistributedSampler

        self.n, self.batch, self.info = n, batch, info
        self.sampler = DistributedSampler(range(n), num_replicas=info.world, rank=info.rank, shuffle=True, seed=seed, drop_last=True)
        self.per_epoch = max(1, len(self.sampler) // batch)
        if len(self.sampler) < batch:
            raise MaskkitError(f"train.batch_size: {batch} per process is more than the {len(self.sampler)} samples each process gets")

    def batches(self, epoch: int, start: int):
        self.sampler.set_epoch(epoch)
        idx = list(self.sampler)
        for b in range(start, self.per_epoch):
            yield idx[b * self.batch:(b + 1) * self.batch]


# --- checkpoints -----------------------------------------------------------------------------

def rng_state() -> dict:
    np_state = np.random.get_state()
    py = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [int(x) for x in py[1]], "python_gauss": py[2],
             "numpy": [int(x) for x in np_state[1]] + [int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n[:624], dtype=np.uint32), int(n[624]), int(n[625]), float(n[626])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict) -> None:
    import io

    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise TrainingError(f"runtime.resume: checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"runtime.resume: {path} is not a readable maskkit checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})") from None


def config_differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if not k.startswith(RESUMABLE_DIFFERENCES) and saved.get(k) != current.get(k)]


# --- the run ---------------------------------------------------------------------------------

def git_revision() -> str:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    from . import __version__

    return f"maskkit {__version__} (not a git checkout)"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MaskkitError(f"runtime.device: '{name}' asked for, but no CUDA device is available")
    return dev


def lr_factor(step: int, cfg) -> float:
    t = cfg.train
    if t.lr_warmup_steps and step < t.lr_warmup_steps:
        return (step + 1) / t.lr_warmup_steps
    if t.schedule == "constant":
        return 1.0
    span = max(1, t.steps - t.lr_warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - t.lr_warmup_steps) / span)))


def active_terms(step: int, cfg: ExperimentConfig) -> tuple[str, ...]:
    """The loss terms that train at ``step``: masked modelling only during the warm-up."""
    masked = tuple(t for t, on in (("mim", cfg.image_mask is not None or cfg.image_only_mask is not None),
                                   ("mlm", cfg.text_mask is not None)) if on)
    if step < cfg.train.warmup_steps and masked:
        return masked
    return ("align",) + masked


@dataclass
class RunResult:
    run_dir: Path
    step: int
    losses: list[dict]
    zeroshot: Any = None


def run_dir_for(cfg: ExperimentConfig) -> Path:
    name = cfg.runtime.name or f"{cfg.preset}-{cfg.scale}-seed{cfg.train.seed}"
    return Path(cfg.runtime.out_dir) / name


def prepare_run_dir(cfg: ExperimentConfig, sources: dict[str, str], info: DistInfo) -> Path:
    out = run_dir_for(cfg)
    resume = cfg.runtime.resume
    if info.main:
        exists = out.exists() and any(out.iterdir())
        if exists and not resume and not cfg.runtime.overwrite:
            raise TrainingError(f"{out}: run directory exists; pass runtime.resume=latest to continue it or "
                                f"runtime.overwrite=true to replace it (or choose runtime.name=...)")
        if exists and cfg.runtime.overwrite and not resume:
            import shutil

            shutil.rmtree(out)
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
        resolved = {"config": cfg.model_dump(mode="json"), "sources": sources}
        atomic_write_text(out / "config.json", json.dumps(resolved, indent=2))
        env = {"python": sys.version, "platform": platform.platform(), "torch": torch.__version__,
               "cuda": torch.version.cuda, "maskkit_revision": git_revision(), "argv": sys.argv,
               "world_size": info.world, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(out / "environment.json", json.dumps(env, indent=2))
    return out


def find_resume(cfg: ExperimentConfig, out: Path) -> Path | None:
    r = cfg.runtime.resume
    if r is None:
        return None
    if r == "latest":
        cks = sorted((out / "checkpoints").glob("step_*.pt"))
        if not cks:
            raise TrainingError(f"runtime.resume=latest: no checkpoint in {out / 'checkpoints'}")
        return cks[-1]
    return Path(r)


def train(cfg: ExperimentConfig, sources: dict[str, str] | None = None, console=None) -> RunResult:
    """Run the pretraining recipe described by ``cfg``; returns the run directory and losses."""
    from rich.console import Console

    from .data.dataset import Collator, SkipReport
    from .data.tokenize import ReportTokenizer
    from .model import XLIP

    console = console or Console(stderr=True)
    device = pick_device(cfg.runtime.device)
    info = init_from_env(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0") and cfg.runtime.resume is None:
        cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"resume": "latest"})})
    if cfg.train.precision == "fp16" and device.type != "cuda":
        raise MaskkitError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    sources = sources or {}
    out = prepare_run_dir(cfg, sources, info)
    ckpt_path = find_resume(cfg, out)
    torch.manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    model = XLIP(cfg.model_config_full()).to(device)
    if model.load_report and info.main:
        console.print(f"model.pretrained: {model.load_report}", highlight=False)
    image_size = cfg.data.image_size or model.image_size
    if image_size != model.image_size:
        raise MaskkitError(f"data.image_size={image_size} but model.arch {cfg.model.arch} takes {model.image_size} px images")
    train_ds, val_ds, label_names = build_datasets(cfg, image_size)
    order = BatchOrder(len(train_ds), cfg.train.batch_size, cfg.train.seed, info)
    collate = Collator(ReportTokenizer(model.context_length))
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.train.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.train.lr, momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
    step, epoch, batch_in_epoch = 0, 0, 0
    if ckpt_path is not None:
        ck = load_checkpoint(ckpt_path)
        diff = config_differences(json.loads(ck["config_flat"]), {k: v for k, v in flat_items(cfg).items()})
        if diff:
            raise TrainingError(f"runtime.resume: {ckpt_path} was written by another config; differing keys: {', '.join(diff[:8])}"
                                + (f" (+{len(diff) - 8} more)" if len(diff) > 8 else ""))
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        step, epoch, batch_in_epoch = int(ck["step"]), int(ck["epoch"]), int(ck["batch_in_epoch"])
        set_rng_state(ck["rng"])
        if info.main:
            console.print(f"resumed from {ckpt_path} at step {step}", highlight=False)
    gather = Gatherer(info)
    ddp = model
    if info.enabled:
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=True)
    weights = {"align_loss": cfg.objectives.align, "mim_loss": cfg.objectives.mim, "mlm_loss": cfg.objectives.mlm}
    skips = SkipReport(cfg.data.max_skip_fraction)
    metrics_f = open(out / "metrics.jsonl", "a", encoding="utf-8") if info.main else None
    tb = _tensorboard(out) if info.main else None
    losses_seen: list[dict] = []
    bad_in_row = 0
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)

    def next_batch():
        nonlocal epoch, batch_in_epoch
        while True:
            for idx in order.batches(epoch, batch_in_epoch):
                batch_in_epoch += 1
                return collate([train_ds[i] for i in idx])
            epoch, batch_in_epoch = epoch + 1, 0

    def checkpoint(final: bool = False) -> None:
        if not info.main:
            return
        payload = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                   "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
                   "rng": rng_state(), "config_flat": json.dumps(flat_items(cfg)), "config": json.dumps(cfg.model_dump(mode="json"))}
        save_checkpoint(out / "checkpoints" / f"step_{step:08d}.pt", payload)
        cks = sorted((out / "checkpoints").glob("step_*.pt"))
        for old in cks[: -cfg.train.keep_last]:
            old.unlink(missing_ok=True)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                        disable=not (cfg.runtime.progress and info.main))
    t_last, n_last = time.perf_counter(), 0
    with progress:
        task = progress.add_task("train", total=cfg.train.steps, completed=step, info="")
        while step < cfg.train.steps:
            terms = active_terms(step, cfg)
            ddp.train()
            opt.zero_grad(set_to_none=True)
            parts: dict[str, float] = {}
            finite = True
            n_samples = 0
            for micro in range(cfg.train.grad_accum):
                batch = next_batch()
                skips.update(len(batch["ids"]), batch["skipped"])
                batch = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
                n_samples += len(batch["ids"])
                sync = micro == cfg.train.grad_accum - 1 or not info.enabled
                ctx = ddp.no_sync() if not sync else _null()
                with ctx, torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                    outd = ddp(batch, seed=cfg.train.seed * 1_000_003 + step * 17 + micro, terms=terms, gather=gather)
                    losses = {k: v for k, v in outd.items() if k.endswith("_loss")}
                    total = sum(weights[k] * v for k, v in losses.items()) / cfg.train.grad_accum
                for k, v in losses.items():
                    parts[k] = parts.get(k, 0.0) + float(v.detach()) / cfg.train.grad_accum
                if not all(math.isfinite(float(v.detach())) for v in losses.values()):
                    finite = False
                if isinstance(total, torch.Tensor):
                    scaler.scale(total).backward()
            finite = bool(gather.mean(torch.tensor(float(finite))) == 1.0) if info.enabled else finite
            if not finite:
                bad_in_row += 1
                opt.zero_grad(set_to_none=True)
                bad = ", ".join(f"{k}={v}" for k, v in parts.items())
                if info.main:
                    console.print(f"[yellow]step {step}: non-finite loss ({bad}); step skipped ({bad_in_row} in a row)[/]")
                if bad_in_row >= cfg.train.max_bad_steps:
                    raise TrainingError(f"train.max_bad_steps: {bad_in_row} non-finite losses in a row, last at step {step} ({bad})")
                step += 1
                sched.step()
                continue
            bad_in_row = 0
            if cfg.train.clip_grad:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad)
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            logged = {k: float(gather.mean(torch.tensor(parts.get(k, 0.0)))) for k in ("align_loss", "mim_loss", "mlm_loss")}
            logged = {k: v for k, v in logged.items() if k in parts or info.enabled and v != 0.0}
            losses_seen.append({"step": step, **logged})
            n_last += n_samples * info.world
            if info.main:
                now = time.perf_counter()
                rate = n_last / max(now - t_last, 1e-9)
                txt = " ".join(f"{k[:-5]} {v:.3f}" for k, v in logged.items()) + f"  {rate:.1f} samples/s"
                if step <= cfg.train.warmup_steps and "align" not in terms:
                    txt += "  [warm-up]"
                progress.update(task, completed=step, info=txt)
                if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                    if cfg.runtime.progress and not console.is_terminal:  # logs piped to a file (SLURM): plain lines
                        console.print(f"step {step}/{cfg.train.steps} {txt}", highlight=False)
                    line = {"step": step, **logged, "lr": sched.get_last_lr()[0], "samples_per_s": rate,
                            "warmup": "align" not in terms, "epoch": epoch, "time": time.time()}
                    metrics_f.write(json.dumps(line) + "\n")
                    metrics_f.flush()
                    if tb is not None:
                        for k, v in logged.items():
                            tb.add_scalar(f"loss/{k}", v, step)
                        tb.add_scalar("samples_per_s", rate, step)
                    t_last, n_last = now, 0
                if step % cfg.train.ckpt_every == 0 and step < cfg.train.steps:
                    checkpoint()
    checkpoint(final=True)
    if metrics_f:
        metrics_f.close()
    if tb is not None:
        tb.close()
    if info.main:
        console.print(skips.summary(), highlight=False)
    result = RunResult(out, step, losses_seen)
    if cfg.runtime.eval_zeroshot and val_ds is not None and info.main:
        from .eval.zeroshot import zeroshot_eval

        result.zeroshot = zeroshot_eval(model, val_ds, label_names, device=device, batch_size=max(cfg.train.batch_size, 32),
                                        n_boot=200)
        atomic_write_text(out / "zeroshot.json", json.dumps(result.zeroshot.to_json(), indent=2))
    if info.enabled:
        torch.distributed.barrier()
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(XLIP model in eval mode, its ExperimentConfig) from a run directory (latest checkpoint)
    or a checkpoint file; loaded with ``weights_only``."""
    from .model import XLIP

    p = Path(path)
    if p.is_dir():
        cks = sorted((p / "checkpoints").glob("step_*.pt"))
        if not cks:
            raise MaskkitError(f"{p}: no checkpoint in {p / 'checkpoints'}; is it a maskkit run directory?")
        p = cks[-1]
    if not p.is_file():
        raise MaskkitError(f"checkpoint {p} does not exist")
    ck = load_checkpoint(p)
    if "config" not in ck or "model" not in ck:
        raise MaskkitError(f"{p}: not a maskkit training checkpoint (no config / model state)")
    cfg = ExperimentConfig.model_validate(json.loads(ck["config"]))
    model = XLIP(cfg.model_config_full())
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), cfg
