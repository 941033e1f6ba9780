"""The pretraining recipe (torchtune style): a class of small methods over a real DataLoader.

    maskkit run preset=xlip                              # tiny CPU run on phantoms
    maskkit run preset=xlip scale=paper data=mimic data.root=/data/mimic runtime.devices=8

:class:`PretrainRecipe` sets up the run (device, processes, run directory, model, data,
optimiser, objectives), then repeats :meth:`~PretrainRecipe.train_step`, logging and
checkpointing; :func:`train` is ``PretrainRecipe(cfg).run()``. The model returns features and
masks; the objectives (:mod:`maskkit.objectives`) turn them into the terms of
:data:`maskkit.terms.TERMS`, each with its weight and warm-up behaviour.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ExperimentConfig, flat_items
from .distributed import DistInfo, Gatherer, init_from_env, shutdown
from .errors import MaskkitError
from .io import atomic_write_bytes, atomic_write_text
from .data.dataset import to_device
from .masking import mask_seed
from .terms import TERM_BY_NAME

# keys that may differ between a checkpoint and the run resuming from it
RESUMABLE_DIFFERENCES = ("runtime.", "train.steps", "train.log_every", "train.ckpt_every", "train.keep_last",
                         "data.num_workers", "data.pin_memory", "data.prefetch_factor")


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


def build_datasets(cfg: ExperimentConfig, image_size: int, tokenizer=None):
    """(train, held-out) datasets and their label names, from ``cfg.data``.

    The training set replaces a sample that fails to decode by the next one that decodes (the skip
    policy, reported); the held-out set drops it. ``tokenizer`` makes the training set compute
    each record's token fields once (in the DataLoader's workers).
    """
    from .data.dataset import PhantomDataset, XrayDataset
    from .data.ner import CachedNER, make_ner
    from .data.phantoms import HELD_OUT_OFFSET
    from .data.records import Table

    d = cfg.data
    ner = CachedNER(make_ner(d.ner, d.ner_model)) if cfg.text_mask is not None else None  # entities feed EntMLM only
    if d.name == "phantoms":
        train = PhantomDataset(d.n, d.seed, image_size, offset=0, ner=ner, p_unpaired=d.p_unpaired, tokenizer=tokenizer)
        val = PhantomDataset(d.val_n, d.seed, image_size, offset=HELD_OUT_OFFSET, ner=None, p_unpaired=0.0) if d.val_n else None
        return train, val, train.label_names
    table = load_records(cfg)
    tr, va = _split_by_patient(table.records, 0.1, cfg.train.seed)
    train = XrayDataset(Table(table.name, tr, table.label_names), image_size, d.decode_policy, ner=ner, cache=d.cache,
                        tokenizer=tokenizer, on_skip="replace", raw_cache=True)
    val = XrayDataset(Table(table.name, va, table.label_names), image_size, d.decode_policy, cache=d.cache) if va else None
    return train, val, table.label_names


def load_records(cfg: ExperimentConfig):
    """The adapter table of ``cfg.data`` (not phantoms), after filters; one-line errors."""
    from .data.records import load_table

    d = cfg.data
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
    return table


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


# --- the run's record --------------------------------------------------------------------------

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


def installed_plugins() -> list[dict[str, str]]:
    """The plugins this process loaded (plugin name, distribution, version), and the failed ones."""
    from . import __version__
    from .plugins import get_plugin_manager, get_registry

    reg = get_registry()
    out = []
    for name, _ in get_plugin_manager().list_name_plugin():
        dist = name.split(":", 1)[0]
        version = _version_or_none(dist)
        if version is None:  # a built-in module, not a distribution
            dist, version = "maskkit (built-in)", __version__
        out.append({"plugin": name, "distribution": dist, "version": version})
    for dist, why in getattr(reg, "failed_plugins", {}).items():
        out.append({"plugin": dist, "distribution": dist, "version": _version_or_none(dist), "failed": why})
    return out


def _version_or_none(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def resolved_record(cfg: ExperimentConfig, sources: dict[str, str]) -> dict:
    """``config.json``: the config with every strategy tree expanded with its defaults, and sources."""
    from .compose import build_strategy, to_spec
    from .masking import STREAMS

    conf = cfg.model_dump(mode="json")
    for t in STREAMS:
        if conf.get(t) is not None:
            conf[t] = to_spec(build_strategy(conf[t], t))
    return {"config": conf, "sources": sources}


# --- helpers ---------------------------------------------------------------------------------

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


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; gains, biases, embeddings of one vector and the logit scale
    are not decayed (open_clip's rule), so a term that is off in a phase leaves them unchanged."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class RunResult:
    run_dir: Path
    step: int
    losses: list[dict]
    zeroshot: Any = None


def default_run_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.preset}-{cfg.scale}-seed{cfg.train.seed}"


def _numbered(base: Path) -> list[Path]:
    """``base`` and its numbered siblings ``base-2``, ``base-3``, ... that exist, in number order."""
    pat = re.compile(re.escape(base.name) + r"-(\d+)$")
    found = [(1, base)] if base.exists() else []
    if base.parent.is_dir():
        found += [(int(m.group(1)), p) for p in base.parent.iterdir() if (m := pat.match(p.name)) and int(m.group(1)) >= 2]
    return [p for _, p in sorted(found)]


def run_dir_for(cfg: ExperimentConfig) -> Path:
    """The run directory. ``runtime.name`` names it exactly. Without it, a new run gets the first
    free of ``<preset>-<scale>-seed<k>``, ``...-2``, ``...-3`` (as common trainers number runs);
    ``runtime.resume=latest`` continues the highest-numbered one; ``runtime.overwrite`` replaces
    the unnumbered one."""
    base = Path(cfg.runtime.out_dir) / (cfg.runtime.name or default_run_name(cfg))
    if cfg.runtime.name or cfg.runtime.overwrite:
        return base
    existing = [p for p in _numbered(base) if p.is_dir() and any(p.iterdir())]
    if cfg.runtime.resume is not None:
        return existing[-1] if existing else base
    if not existing:
        return base
    n = 2
    while (base.parent / f"{base.name}-{n}").exists():
        n += 1
    return base.parent / f"{base.name}-{n}"


def prepare_run_dir(cfg: ExperimentConfig, sources: dict[str, str], info: DistInfo) -> Path:
    """Choose (rank 0, then shared with every rank) and prepare the run directory."""
    out = run_dir_for(cfg) if info.main else None
    if info.enabled:
        box = [str(out) if out is not None else None]
        torch.distributed.broadcast_object_list(box, src=0)
        out = Path(box[0])
    if not info.main:
        return out
    exists = out.exists() and any(out.iterdir())
    if exists and not cfg.runtime.resume and not cfg.runtime.overwrite:
        raise TrainingError(f"{out}: run directory exists; pass runtime.resume=latest to continue it or "
                            f"runtime.overwrite=true to replace it (or choose another runtime.name)")
    if exists and cfg.runtime.overwrite and not cfg.runtime.resume:
        shutil.rmtree(out)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(resolved_record(cfg, sources), indent=2))
    env = {"python": sys.version, "platform": platform.platform(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "maskkit_revision": git_revision(), "argv": sys.argv,
           "world_size": info.world, "plugins": installed_plugins(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    env_path = out / "environment.json"
    if cfg.runtime.resume and env_path.is_file():  # keep the run's first record; each resume is added to it
        try:
            first = json.loads(env_path.read_text())
        except (OSError, json.JSONDecodeError):
            first = None
        if isinstance(first, dict):
            env = {**first, "resumes": first.get("resumes", []) + [env]}
    atomic_write_text(env_path, json.dumps(env, indent=2))
    return out


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run directory's checkpoint files, oldest first (``checkpoints/step_<8-digit step>.pt``)."""
    return sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a run directory (its latest) or a checkpoint path names; one-line errors."""
    p = Path(path)
    if p.is_dir():
        cks = run_checkpoints(p)
        if not cks:
            raise MaskkitError(f"{p}: no checkpoint in {p / 'checkpoints'}; is it a maskkit run directory?")
        p = cks[-1]
    if not p.is_file():
        raise MaskkitError(f"checkpoint {p} does not exist")
    return p


def find_resume(cfg: ExperimentConfig, out: Path) -> Path | None:
    r = cfg.runtime.resume
    if r is None:
        return None
    if r == "latest":
        cks = run_checkpoints(out)
        if not cks:
            raise TrainingError(f"runtime.resume=latest: no checkpoint in {out / 'checkpoints'}")
        return cks[-1]
    return Path(r)


# --- the recipe ------------------------------------------------------------------------------

@dataclass
class StepResult:
    """What one optimiser step produced: each term's value (mean over ranks), and timings (s)."""

    values: dict[str, float]
    finite: bool
    samples: int
    data_wait: float = 0.0
    step_time: float = 0.0


class PretrainRecipe:
    """The pretraining recipe. ``setup()`` once, then :meth:`train_step` until ``train.steps``;
    :meth:`log`, :meth:`save` and :meth:`load` around it; :meth:`evaluate` at the end."""

    def __init__(self, cfg: ExperimentConfig, sources: dict[str, str] | None = None, console=None) -> None:
        from rich.console import Console

        self.cfg, self.sources = cfg, sources or {}
        self.console = console or Console(stderr=True)
        self.step = 0            # optimiser steps done
        self.batches = 0         # micro-batches drawn (the loader's position)
        self.bad_in_row = 0
        self.losses: list[dict] = []
        self.created_dir: Path | None = None  # the run directory this run made (rank 0; not a resume)

    # --- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self.device = pick_device(cfg.runtime.device)
        self.info = init_from_env(self.device.type)
        if self.info.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.info.local_rank)
            torch.cuda.set_device(self.device)
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0") and cfg.runtime.resume is None:
            cfg = self.cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"resume": "latest"})})
        if cfg.train.precision == "fp16" and self.device.type != "cuda":
            raise MaskkitError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        self.out = prepare_run_dir(cfg, self.sources, self.info)
        if self.info.main and cfg.runtime.resume is None:  # new, empty or overwritten: nothing in it predates this run
            self.created_dir = self.out
        self.setup_model()
        self.setup_data()
        self.setup_optimizer()
        ck = find_resume(cfg, self.out)
        if ck is not None:
            self.load(ck)
        self.setup_loader()
        self.gather = Gatherer(self.info)
        from .objectives import Objectives

        self.objectives = Objectives.for_model(self.model, cfg.objectives, self.gather)
        self.ddp = self.model
        if self.info.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        from .data.dataset import SkipReport

        self.skips = SkipReport(cfg.data.max_skip_fraction)
        self.metrics_f = open(self.out / "metrics.jsonl", "a", encoding="utf-8") if self.info.main else None
        self.tb = _tensorboard(self.out) if self.info.main else None

    def setup_model(self) -> None:
        from .model import XLIP

        torch.manual_seed(self.cfg.train.seed)
        random.seed(self.cfg.train.seed)
        np.random.seed(self.cfg.train.seed)
        self.model = XLIP.from_experiment(self.cfg).to(self.device)
        if self.model.load_report and self.info.main:
            self.console.print(f"model.pretrained: {self.model.load_report}", highlight=False)

    def setup_data(self) -> None:
        from .data.dataset import Collator

        cfg, model = self.cfg, self.model
        image_size = cfg.data.image_size or model.image_size
        if image_size != model.image_size:
            raise MaskkitError(f"data.image_size={image_size} but model.arch {cfg.model.arch} takes {model.image_size} px images")
        self.train_ds, self.val_ds, self.label_names = build_datasets(cfg, image_size, tokenizer=model.tokenizer)
        self.collate = Collator(model.tokenizer)

    def setup_loader(self) -> None:
        from .data.loader import ResumableBatchSampler, make_loader

        d = self.cfg.data
        self.sampler = ResumableBatchSampler(len(self.train_ds), self.cfg.train.batch_size, self.cfg.train.seed, self.info,
                                             start=self.batches)
        self.loader = make_loader(self.train_ds, self.collate, self.sampler, d.num_workers,
                                  pin_memory=d.pin_memory and self.device.type == "cuda", prefetch_factor=d.prefetch_factor,
                                  seed=self.cfg.train.seed)
        self.batch_iter = iter(self.loader)

    def setup_optimizer(self) -> None:
        t = self.cfg.train
        groups = param_groups(self.model, t.weight_decay)
        if t.optimizer == "sgd":
            self.opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
        else:
            self.opt = torch.optim.AdamW(groups, lr=t.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, self.cfg))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.precision == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)

    # --- one step ----------------------------------------------------------------------------
    def in_warmup(self, step: int) -> bool:
        """Whether ``step`` is in the masked-modelling-only warm-up (only when such terms exist)."""
        return step < self.cfg.train.warmup_steps and any(o.term.warmup for o in self.objectives.terms)

    def next_batch(self) -> dict:
        batch = next(self.batch_iter)
        self.batches += 1
        return batch

    def train_step(self) -> StepResult:
        """One optimiser step over ``train.grad_accum`` micro-batches. Every rank runs the same
        forward, backward and collectives whatever its batches hold."""
        cfg, dev = self.cfg, self.device
        t0 = time.perf_counter()
        self.ddp.train()
        self.opt.zero_grad(set_to_none=True)
        accum = cfg.train.grad_accum
        warm = self.in_warmup(self.step)
        sums = {n: torch.zeros((), device=dev) for n in self.objectives.names}
        samples, n_skipped, wait = 0, 0, 0.0
        for micro in range(accum):
            tw = time.perf_counter()
            batch = self.next_batch()
            wait += time.perf_counter() - tw
            self.skips.record(batch["skipped"])
            n_skipped += len(batch["skipped"])
            samples += len(batch["ids"])
            batch = to_device(batch, dev)
            sync = micro == accum - 1 or not self.info.enabled
            with (self.ddp.no_sync() if not sync else contextlib.nullcontext()), \
                    torch.autocast(dev.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
                out = self.ddp(batch, seed=mask_seed(cfg.train.seed, self.step, micro))
                total, values = self.objectives(out, in_warmup=warm)
            self.scaler.scale(total / accum).backward()
            for n, v in values.items():
                sums[n] = sums[n] + v.detach().float() / accum
        # one all-reduce per step, on every rank: each term's value and the skip counts, so that
        # every rank takes the same decisions (a non-finite step, the skip limit)
        names = list(sums)
        local = torch.stack([*sums.values(), torch.tensor(float(samples + n_skipped), device=dev),
                             torch.tensor(float(n_skipped), device=dev)])
        reduced = self.gather.sum(local)
        values = {n: reduced[k] / self.info.world for k, n in enumerate(names)}
        self.skips.count(int(reduced[-2]), int(reduced[-1]))
        self.skips.check()
        finite = bool(torch.isfinite(reduced[:len(names)]).all())
        if finite:
            if cfg.train.clip_grad:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.train.clip_grad)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.model.constrain_()
        else:
            self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        self.step += 1
        return StepResult({n: float(v) for n, v in values.items()}, finite, samples * self.info.world, wait,
                          time.perf_counter() - t0)

    # --- logging, checkpoints ----------------------------------------------------------------------
    def log(self, r: StepResult, rate: float, warm: bool) -> str:
        """Record a step (every step in memory; metrics.jsonl every ``train.log_every``); returns the bar text."""
        logged = {TERM_BY_NAME[n].log_key: v for n, v in r.values.items()}
        self.losses.append({"step": self.step, **logged})
        txt = " ".join(f"{n} {v:.3f}" for n, v in r.values.items()) + f"  {rate:.1f} samples/s"
        if warm:
            txt += "  [warm-up]"
        if not self.info.main:
            return txt
        if self.step % self.cfg.train.log_every == 0 or self.step == self.cfg.train.steps:
            if self.cfg.runtime.progress and not self.console.is_terminal:  # logs piped to a file (SLURM): plain lines
                self.console.print(f"step {self.step}/{self.cfg.train.steps} {txt}", highlight=False)
            epoch, _ = self.sampler.position(self.batches)
            line = {"step": self.step, **logged, "lr": self.sched.get_last_lr()[0], "samples_per_s": rate,
                    "data_wait": r.data_wait / max(r.step_time, 1e-9), "warmup": warm, "epoch": epoch, "time": time.time()}
            self.metrics_f.write(json.dumps(line) + "\n")
            self.metrics_f.flush()
            if self.tb is not None:
                for k, v in logged.items():
                    self.tb.add_scalar(f"loss/{k}", v, self.step)
                self.tb.add_scalar("samples_per_s", rate, self.step)
        return txt

    def save(self) -> None:
        if not self.info.main:
            return
        payload = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                   "scaler": self.scaler.state_dict(), "step": self.step, "batches": self.batches,
                   "rng": rng_state(), "config_flat": json.dumps(flat_items(self.cfg)),
                   "config": json.dumps(self.cfg.model_dump(mode="json"))}
        ckdir = self.out / "checkpoints"
        save_checkpoint(ckdir / f"step_{self.step:08d}.pt", payload)
        for old in run_checkpoints(self.out)[: -self.cfg.train.keep_last]:
            old.unlink(missing_ok=True)

    def load(self, path: Path) -> None:
        ck = load_checkpoint(path)
        diff = config_differences(json.loads(ck["config_flat"]), flat_items(self.cfg))
        if diff:
            raise TrainingError(f"runtime.resume: {path} was written by another config; differing keys: {', '.join(diff[:8])}"
                                + (f" (+{len(diff) - 8} more)" if len(diff) > 8 else ""))
        if "batches" not in ck:
            raise TrainingError(f"runtime.resume: {path} was written by an older maskkit (no loader position); start a new run")
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.batches = int(ck["step"]), int(ck["batches"])
        set_rng_state(ck["rng"])
        if self.info.main:
            self.console.print(f"resumed from {path} at step {self.step}", highlight=False)

    def evaluate(self):
        """The zero-shot table on the held-out set (rank 0), written to zeroshot.json."""
        return run_zeroshot(self.model, self.cfg, self.val_ds, self.label_names, self.out, self.device)

    # --- the loop ----------------------------------------------------------------------------
    def discard_unstarted_run_dir(self) -> None:
        """After a failure before any step finished: remove the run directory this run created, so
        it leaves nothing behind and the next run takes its name (not ``<name>-2``). A directory
        that a resume reused is kept, and so is one of a run that finished a step (and may have
        logged it or written a checkpoint)."""
        if self.created_dir is not None and self.step == 0:
            shutil.rmtree(self.created_dir, ignore_errors=True)

    def run(self) -> RunResult:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.setup()
        cfg, info = self.cfg, self.info
        progress = Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console,
                            disable=not (cfg.runtime.progress and info.main))
        t_last, n_last = time.perf_counter(), 0
        try:
            with progress:
                task = progress.add_task("train", total=cfg.train.steps, completed=self.step, info="")
                while self.step < cfg.train.steps:
                    warm = self.in_warmup(self.step)
                    r = self.train_step()
                    if not r.finite:
                        self.bad_in_row += 1
                        bad = ", ".join(f"{TERM_BY_NAME[k].log_key}={v}" for k, v in r.values.items())
                        if info.main:
                            self.console.print(f"[yellow]step {self.step - 1}: non-finite loss ({bad}); step skipped ({self.bad_in_row} in a row)[/]")
                        if self.bad_in_row >= cfg.train.max_bad_steps:
                            raise TrainingError(f"train.max_bad_steps: {self.bad_in_row} non-finite losses in a row, last at step {self.step - 1} ({bad})")
                        continue
                    self.bad_in_row = 0
                    n_last += r.samples
                    now = time.perf_counter()
                    txt = self.log(r, n_last / max(now - t_last, 1e-9), warm)
                    if self.step % cfg.train.log_every == 0:
                        t_last, n_last = now, 0
                    progress.update(task, completed=self.step, info=txt)
                    if self.step % cfg.train.ckpt_every == 0 and self.step < cfg.train.steps:
                        self.save()
            self.save()
        finally:
            if self.metrics_f:
                self.metrics_f.close()
            if self.tb is not None:
                self.tb.close()
        if info.main:
            self.console.print(self.skips.summary(), highlight=False)
        self.skips.check(final=True)  # a short run on broken data stops too (its checkpoints are kept)
        result = RunResult(self.out, self.step, self.losses)
        if cfg.runtime.eval_zeroshot and self.val_ds is not None and info.main:
            result.zeroshot = self.evaluate()
        if info.enabled:
            torch.distributed.barrier()
        return result


def train(cfg: ExperimentConfig, sources: dict[str, str] | None = None, console=None) -> RunResult:
    """Run the pretraining recipe described by ``cfg``; returns the run directory and losses."""
    recipe = PretrainRecipe(cfg, sources, console)
    try:
        return recipe.run()
    except BaseException:
        recipe.discard_unstarted_run_dir()
        raise
    finally:
        shutdown()


def training_batch(cfg: ExperimentConfig, model, step: int, micro: int = 0, rank: int = 0, world: int = 1):
    """(the collated batch, the mask seed) that training read at ``step`` (1-based, as logged in
    metrics.jsonl), micro-batch ``micro``, on ``rank`` of ``world`` processes: the same sampler
    and seed rule as :class:`PretrainRecipe`."""
    from .data.dataset import Collator
    from .data.loader import ResumableBatchSampler

    if step < 1 or not 0 <= micro < cfg.train.grad_accum:
        raise MaskkitError(f"--step {step} --micro {micro}: expected step >= 1 and 0 <= micro < train.grad_accum={cfg.train.grad_accum}")
    ds, _, _ = build_datasets(cfg, model.image_size, tokenizer=model.tokenizer)
    sampler = ResumableBatchSampler(len(ds), cfg.train.batch_size, cfg.train.seed, DistInfo(rank, world))
    idx = sampler.batch_indices((step - 1) * cfg.train.grad_accum + micro)
    return Collator(model.tokenizer)([ds[i] for i in idx]), mask_seed(cfg.train.seed, step - 1, micro)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


def run_zeroshot(model, cfg: ExperimentConfig, val_ds, label_names, out: Path, device="cpu"):
    """A run's end-of-run zero-shot evaluation (200 bootstrap resamples, the library's protocol
    defaults) on its held-out set, written atomically to ``out/zeroshot.json``; returns the
    :class:`~maskkit.eval.zeroshot.ZeroShotResult`. Used by the recipe and by ``maskkit sweep
    --rescore``, so a re-scored run is scored exactly as a new one."""
    from .eval.zeroshot import zeroshot_eval

    res = zeroshot_eval(model, val_ds, label_names, device=device, batch_size=max(cfg.train.batch_size, 32), n_boot=200)
    atomic_write_text(Path(out) / "zeroshot.json", json.dumps(res.to_json(), indent=2))
    return res


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(XLIP model in eval mode, its ExperimentConfig) from a run directory (latest checkpoint)
    or a checkpoint file; loaded with ``weights_only``."""
    from .model import XLIP

    p = checkpoint_file(path)
    ck = load_checkpoint(p)
    if "config" not in ck or "model" not in ck:
        raise MaskkitError(f"{p}: not a maskkit training checkpoint (no config / model state)")
    saved = json.loads(ck["config"])
    for t in ("image_mask", "image_only_mask", "text_mask"):  # checkpoints before the trees moved out of model.
        if saved.get("model", {}).get(t) is None:
            saved.get("model", {}).pop(t, None)
    cfg = ExperimentConfig.model_validate(saved)
    model = XLIP.from_experiment(cfg)
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), cfg
