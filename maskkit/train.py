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
import json
import math
import os
import random
import shutil
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape

from .config import ExperimentConfig, flat_items
from .data.build import build_corpus
from .data.dataset import to_device
from .distributed import DistInfo, Gatherer, init_from_env, shutdown, under_torchrun
from .errors import MaskkitError, OutputWriteError, TrainingError, find_in_chain
from .masking import mask_seed
from .objectives import MicroBatches
from .training.checkpointing import Shown, config_differences, entry_differences, find_resume, load_checkpoint, nonfinite_entries, remove_partial_checkpoints, rng_state, run_checkpoints, save_checkpoint, set_rng_state
from .training.metric_logging import LossWindow, MetricLogger, format_loss
from .training.optim import buffers_nonfinite, build_optimizer, finite_buffers, grad_norm, restore_buffers, snapshot_buffers
from .training.preemption import INTERRUPT, RunPreempted, StopRequest, Stopped, stop_signals_blocked
from .training.run_dir import RUN_ID_KEY, claim_run_dir, has_content, new_run_id, prepare_run_dir, read_run_id

__all__ = ["PretrainRecipe", "RunResult", "StepResult", "TrainingError", "run_evaluations", "run_zeroshot", "train", "training_batch"]


def pick_device(name: str) -> torch.device:
    """The device ``runtime.device`` names; one line when this machine has no such device (the
    config checks it when it resolves: :func:`maskkit.options.device_error`)."""
    from .options import device_error

    why = device_error(name)
    if why:
        raise MaskkitError(f"runtime.device: {why}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class RunResult:
    """A finished run: its directory, last step, each logged step's losses (``{"step", "<name>_loss":
    value or None when the step had no target for the term}``), the end-of-run evaluations
    (``runtime.evaluations``: name -> :class:`~maskkit.eval.contract.EvalResult`) and, when
    ``zeroshot`` is one of them, its :class:`~maskkit.eval.zeroshot.ZeroShotResult`."""

    run_dir: Path
    step: int
    losses: list[dict]
    zeroshot: Any = None
    evaluations: dict[str, Any] = field(default_factory=dict)
    #: end-of-run evaluations that failed: name -> one line (nothing of theirs written; the others were)
    failed_evaluations: dict[str, str] = field(default_factory=dict)


# --- the recipe ------------------------------------------------------------------------------

@dataclass
class StepResult:
    """What one optimiser step produced: each term's value (mean over ranks; None when the step
    had no target for the term: no pair to contrast, no masked patch, no MLM target), and
    timings (s). ``finite`` False: the step was skipped because ``nonfinite`` (``"loss"``,
    ``"gradient"`` or ``"buffer"``: a buffer the forward updates, e.g. a BatchNorm running variance)
    was not; ``detail`` names the non-finite buffers."""

    values: dict[str, float | None]
    finite: bool
    samples: int
    data_wait: float = 0.0
    step_time: float = 0.0
    nonfinite: str | None = None
    detail: list[str] = field(default_factory=list)


class PretrainRecipe:
    """The pretraining recipe. ``setup()`` once, then :meth:`train_step` until ``train.steps``;
    :meth:`log`, :meth:`save` and :meth:`load` around it; :meth:`evaluate` at the end."""

    def __init__(self, cfg: ExperimentConfig, sources: dict[str, str] | None = None, console=None) -> None:
        from rich.console import Console

        self.cfg, self.sources = cfg, sources or {}
        self.console = console or Console(stderr=True)
        self.failed_evaluations: dict[str, str] = {}  # end-of-run evaluations that failed (run_evaluations)
        self.step = 0            # optimiser steps done
        self.batches = 0         # micro-batches drawn (the loader's position)
        self.bad_in_row = 0
        self.skipped_steps = {"loss": 0, "gradient": 0, "buffer": 0}  # non-finite steps skipped over the whole run, by cause
        self.window = LossWindow()  # the losses of the steps since the last metrics.jsonl line
        self.losses: list[dict] = []
        self.metrics: MetricLogger | None = None
        self.created_dir: Path | None = None  # the run directory this run made (rank 0; not a resume)
        self.lock = None                      # the run directory's lock (rank 0)
        self.stop = StopRequest()             # the stop signals (preemption.STOP_SIGNALS) seen by this process
        self.stop_agreed = False              # ... by any rank, as of the last step's all-reduce
        self.stop_interrupt_only = False      # ... and every one of them was SIGINT (exit 130, not 75)
        self.phase = "setup"                  # setup, train, evaluate: what a stop message says was cut short
        self.saved_step = -1
        self.resume_from: Path | None = None  # the checkpoint this run continues from (setup)
        self.run_id: str | None = None        # the run directory's id (config.json; in every checkpoint)
        self.writing: Path | None = None      # the checkpoint being written, while it is

    # --- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self.device = pick_device(cfg.runtime.device)
        self.info = init_from_env(self.device.type)
        if self.info.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.info.local_rank)
            torch.cuda.set_device(self.device)
        if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") not in ("", "0") and cfg.runtime.resume is None:
            cfg = self.cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"resume": "auto"})})
        if cfg.train.precision == "fp16" and self.device.type != "cuda":
            raise MaskkitError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
        with self.stop.deferring():  # a signal here waits until the directory and its lock are recorded
            self.out, self.lock = claim_run_dir(cfg, self.info)
            empty = self.info.main and not has_content(self.out)
            if self.info.main and (cfg.runtime.resume is None or empty):  # new, empty or overwritten: nothing in it predates this run
                self.created_dir = self.out
        if self.info.main:  # the lock is held: a temporary file is an earlier process's, killed inside its write
            gone = remove_partial_checkpoints(self.out)
            if gone:
                self.console.print(f"removed {len(gone)} unfinished checkpoint file(s) an earlier process left in "
                                   f"{self.out / 'checkpoints'} ({gone[0].name}{', ...' if len(gone) > 1 else ''})",
                                   highlight=False, soft_wrap=True)
        # a resume is checked before anything in the directory is written: the run the checkpoint
        # belongs to (against the directory's id; a new run has none yet), its config (which names
        # the keys that changed), its world size, then (setup_data) the held-out split it rebuilds
        self.run_id = read_run_id(self.out) if cfg.runtime.resume is not None else None
        ck = self.resume_from = find_resume(cfg, self.out)
        state = self.check_resume(ck) if ck is not None else None
        # a directory without an id (an older maskkit's, or no config.json) takes the id of the
        # checkpoint in its own checkpoints/ that it continues, else a new one
        own = state is not None and Path(ck).resolve().parent == (self.out / "checkpoints").resolve()
        self.run_id = self.run_id or (state.get(RUN_ID_KEY) if own else None) or new_run_id()
        self.setup_model()
        self.setup_data()
        prepare_run_dir(cfg, self.sources, self.info, self.out, self.run_id)
        self.setup_optimizer()
        from .data.dataset import SkipReport

        self.skips = SkipReport(cfg.data.max_skip_fraction)  # a resume continues its counts (load)
        if ck is not None:
            self.load(ck, state)
        self.setup_loader()
        self.gather = Gatherer(self.info)
        from .objectives import Objectives

        self.objectives = Objectives.for_model(self.model, cfg.objectives, self.gather)
        if self.info.main:  # a warm-up that train.steps cuts short: one line each, before step 1
            from .training.optim import schedule_warnings

            for line in schedule_warnings(cfg, self.objectives.terms):
                self.console.print(f"[yellow]warning: {escape(line)}[/]", highlight=False, soft_wrap=True)
        self.check_pairs()
        self.checked_buffers = finite_buffers(self.model)  # the buffers a step must leave finite (after load)
        self.ddp = self.model
        if self.info.enabled:
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.train.compile:  # the forward (and through AOTAutograd its backward); checkpoints keep self.model's keys
            self.ddp = torch.compile(self.ddp)
        self.metrics = MetricLogger(self.out, resume_step=self.step) if self.info.main else None
        if self.info.enabled:
            self.agree_stop_before_start()

    def agree_stop_before_start(self) -> None:
        """Under DDP the ranks set up with the stop signals recorded only, and agree here, once,
        before step 1 (one all-reduce): a rank that stopped alone in the middle of setup would leave
        the others waiting in a collective, and torchrun's agent ends the other ranks with SIGTERM
        when one fails, which must not turn that failure (``maskkit.launch`` exits with the first
        failure's status) into a "stopped by SIGTERM" on rank 0. Raises ``Stopped`` on every rank
        when any rank saw a signal."""
        s = self.stop
        flags = torch.tensor([float(s.requested and not s.interrupt_only), float(s.interrupt_only)], device=self.device)
        requeue, interrupt = (self.gather.sum(flags) > 0).tolist()
        if not (requeue or interrupt):
            return
        self.stop_agreed, self.stop_interrupt_only = True, interrupt and not requeue
        s.acknowledge()
        raise Stopped(self._stop_name())

    def setup_model(self) -> None:
        from .model import XLIP

        torch.manual_seed(self.cfg.train.seed)
        random.seed(self.cfg.train.seed)
        np.random.seed(self.cfg.train.seed)
        self.model = XLIP.from_experiment(self.cfg).to(self.device)
        self.model_build = self.model.build_record()  # in every checkpoint: the run reloads without model.pretrained
        self.model.set_grad_checkpointing(self.cfg.train.grad_checkpointing)
        if self.model.load_report and self.info.main:
            self.console.print(f"model.pretrained: {self.model.load_report}", highlight=False, soft_wrap=True)

    def setup_data(self) -> None:
        from .data.dataset import Collator

        cfg, model = self.cfg, self.model
        image_size = cfg.data.image_size or model.image_size
        if image_size != model.image_size:
            raise MaskkitError(f"data.image_size={image_size} but model.arch {cfg.model.arch} takes {model.image_size} px images")
        self.corpus = build_corpus(cfg, image_size, tokenizer=model.tokenizer)
        self.train_ds, self.val_ds, self.label_names = self.corpus.train, self.corpus.val, self.corpus.label_names
        self.collate = Collator(model.tokenizer)
        if self.info.main:
            record_split(self.out, self.corpus, resumed=self.resume_from is not None)
            for line in self.corpus.summary_lines():
                self.console.print(f"[yellow]{escape(line)}[/]" if line.startswith("warning:") else line,
                                   highlight=False, soft_wrap=True)

    def check_pairs(self) -> None:
        """No paired sample while a term that needs pairs trains: one line before step 1 (an error
        when every weighted term needs pairs: nothing would train)."""
        if self.corpus.has_paired:
            return
        needs = [o.name for o in self.objectives.terms if o.term.paired and o.weight > 0]
        if not needs:
            return
        msg = (f"data: no source of {self.corpus.describe()} holds a paired (image + report) sample, but preset "
               f"'{self.cfg.preset}' trains {', '.join('objectives.' + n for n in needs)}")
        if all(o.term.paired or o.weight == 0 for o in self.objectives.terms):
            raise MaskkitError(msg + "; nothing would train: add a paired source (role: paired) or choose another preset")
        if self.info.main:
            self.console.print(f"[yellow]warning: {msg}; those terms have no targets and are logged null (set their weights to 0 or add a paired source)[/]", highlight=False, soft_wrap=True)

    def setup_loader(self) -> None:
        from .data.loader import make_loader

        d = self.cfg.data
        self.sampler = make_sampler(self.corpus, self.cfg, self.info, start=self.batches)
        self.seen = self.sampler.samples_seen(self.batches)
        self.loader = make_loader(self.train_ds, self.collate, self.sampler, d.num_workers,
                                  pin_memory=d.pin_memory and self.device.type == "cuda", prefetch_factor=d.prefetch_factor,
                                  seed=self.cfg.train.seed)
        with stop_signals_blocked():  # its workers start with them blocked (data.loader.init_worker)
            self.batch_iter = iter(self.loader)

    def setup_optimizer(self) -> None:
        self.opt, self.sched, self.scaler, self.autocast_dtype = build_optimizer(self.model, self.cfg, self.device.type)

    # --- one step ----------------------------------------------------------------------------
    def in_warmup(self, step: int) -> bool:
        """Whether ``step`` is in the masked-modelling-only warm-up (only when such terms exist; the
        unmasked tune, when the two overlap in a short run, takes its steps)."""
        return (step < self.cfg.train.warmup_steps and not self.in_tune(step)
                and any(o.term.warmup for o in self.objectives.terms))

    def in_tune(self, step: int) -> bool:
        """Whether ``step`` (0-based) is in the unmasked full-resolution tune that ends the run
        (the last ``train.tune_steps`` steps, ``train.unmasked_tune``): a function of the step
        alone, so a run resumed inside the tune continues in it."""
        return step >= self.cfg.train.tune_start

    def step_phase(self, step: int) -> str:
        """What step ``step`` (0-based) trains, as metrics.jsonl's ``phase`` says: ``warmup`` (the
        masked-modelling-only warm-up), ``tune`` (the unmasked tune) or ``joint`` (every term)."""
        return "tune" if self.in_tune(step) else "warmup" if self.in_warmup(step) else "joint"

    def next_batch(self) -> dict:
        batch = next(self.batch_iter)
        self.seen = self.seen + self.sampler.batch_sources(self.batches)  # every rank's samples, per source
        self.batches += 1
        return batch

    def samples_seen(self) -> dict[str, int]:
        """Samples read so far per source (every rank), by source name."""
        return dict(zip(self.corpus.names, (int(v) for v in self.seen)))

    def train_step(self) -> StepResult:
        """One optimiser step over ``train.grad_accum`` micro-batches, equal to one step over their
        union (:class:`~maskkit.objectives.MicroBatches`: a forward without gradient of every
        micro-batch first, then each micro-batch's forward and backward). Every rank runs the same
        forward, backward and collectives whatever its batches hold.

        The step is skipped (no change to the weights, the optimiser state or the model's buffers,
        e.g. BatchNorm running statistics; counted by the caller) when a term's loss, the
        gradient norm or a buffer the forward updated (a running variance overflowing to inf) is not
        finite on any rank: one all-reduce per step carries the term values, the skip counts and the
        gradient's and buffers' finiteness, so every rank decides alike. Under fp16 a
        non-finite gradient at a loss scale above 1 is the GradScaler's (it backs off; not counted)."""
        cfg, dev = self.cfg, self.device
        t0 = time.perf_counter()
        self.ddp.train()
        self.opt.zero_grad(set_to_none=True)
        accum = cfg.train.grad_accum
        warm, tune = self.in_warmup(self.step), self.in_tune(self.step)
        sums = {n: torch.zeros((), device=dev) for n in self.objectives.names}
        samples, n_skipped, wait = 0, 0, 0.0
        batches = []
        for _ in range(accum):
            tw = time.perf_counter()
            batch = self.next_batch()
            wait += time.perf_counter() - tw
            self.skips.record(batch["skipped"])
            n_skipped += len(batch["skipped"])
            samples += len(batch["ids"])
            batches.append(to_device(batch, dev))
        autocast = partial(torch.autocast, dev.type, dtype=self.autocast_dtype or torch.float32,
                           enabled=self.autocast_dtype is not None)
        # the buffers a forward updates (BatchNorm running statistics of a conv stem, a plugin tower's
        # state) as they were before the step: a skipped step puts them back, as it leaves the weights
        buffers = snapshot_buffers(self.model)
        cached: dict[str, list[torch.Tensor]] = {n: [] for n in self.objectives.names}
        if accum > 1:  # what each objective needs of every micro-batch, without gradient (BatchNorm statistics untouched)
            with torch.no_grad(), autocast():
                for micro, batch in enumerate(batches):
                    out = self.model(batch, seed=mask_seed(cfg.train.seed, self.step, micro), tune=tune)
                    for n, v in self.objectives.summaries(out, in_tune=tune).items():
                        cached[n].append(v)
            restore_buffers(buffers)
        for micro, batch in enumerate(batches):
            sync = micro == accum - 1 or not self.info.enabled
            with (self.ddp.no_sync() if not sync else contextlib.nullcontext()), autocast():
                out = self.ddp(batch, seed=mask_seed(cfg.train.seed, self.step, micro), tune=tune)
                total, values = self.objectives(out, in_warmup=warm, micro=MicroBatches(cached, micro) if accum > 1 else None,
                                                in_tune=tune)
            self.scaler.scale(total).backward()
            for n, v in values.items():
                sums[n] = sums[n] + v.detach().float()
        if tune:  # the decoders' zero gradients (XLIP.forward's tune anchor): the optimiser leaves them as they are
            for p in self.model.tune_frozen():
                p.grad = None
        self.scaler.unscale_(self.opt)  # fp16: the true gradients (a no-op otherwise)
        norm = grad_norm(self.model)
        # the step's targets per term (global: every rank, every micro-batch; the last pass counted them all)
        targets = self.objectives.targets
        # one all-reduce per step, on every rank: each term's value and target count, the skip counts and
        # whether the gradient is finite, so that every rank takes the same decisions (a skipped step, the skip limit)
        names = list(sums)
        stop = self.stop
        local = torch.stack([*sums.values(), *(targets[n].float().to(dev) for n in names),
                             torch.tensor(float(stop.requested and not stop.interrupt_only), device=dev),
                             torch.tensor(float(stop.interrupt_only), device=dev),
                             torch.tensor(float(samples + n_skipped), device=dev), torch.tensor(float(n_skipped), device=dev),
                             (~torch.isfinite(norm)).float().to(dev), buffers_nonfinite(self.checked_buffers, dev).to(dev)])
        reduced = self.gather.sum(local).tolist()  # the step's one host sync
        T = len(names)
        # a signal seen by any rank stops every rank after this step; a scheduler's (exit 75) wins over SIGINT (130)
        requeue, interrupt = reduced[2 * T] > 0, reduced[2 * T + 1] > 0
        self.stop_agreed, self.stop_interrupt_only = requeue or interrupt, interrupt and not requeue
        self.skips.count(int(reduced[-4]), int(reduced[-3]))
        self.skips.check()
        grads_finite = reduced[-2] == 0
        nonfinite, detail = None, []
        if not all(math.isfinite(reduced[k]) for k in range(T)):  # also a term without targets (NaN · 0 is NaN)
            nonfinite = "loss"
        elif not grads_finite and not (self.scaler.is_enabled() and self.scaler.get_scale() > 1.0):
            nonfinite = "gradient"
        elif reduced[-1] > 0:  # the forward left a buffer non-finite (a BatchNorm running_var at inf): not kept
            nonfinite = "buffer"
            detail = nonfinite_entries(dict(self.checked_buffers))
        # a term with no target in the step (no pair to contrast, no masked patch, no MLM target) has no
        # loss: None (logged as null), not its value 0 (a non-finite value is kept, for the skip's message)
        values = {n: reduced[k] / self.info.world if reduced[T + k] > 0 or not math.isfinite(reduced[k]) else None
                  for k, n in enumerate(names)}
        if nonfinite is None:
            if not grads_finite:  # fp16 overflow: GradScaler skips the step and lowers its scale
                self.opt.zero_grad(set_to_none=True)
            elif cfg.train.clip_grad:
                torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), cfg.train.clip_grad, norm)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.model.constrain_()
        else:
            self.opt.zero_grad(set_to_none=True)
            restore_buffers(buffers)  # a NaN forward would otherwise leave NaN running statistics behind
            self.scaler.update()  # fp16: ends the step unscale_ began (backs off on inf); a no-op otherwise
        with warnings.catch_warnings():  # a skipped step calls no optimizer.step(); the schedule counts steps all the same
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`")
            self.sched.step()
        self.step += 1
        return StepResult(values, nonfinite is None, samples * self.info.world, wait,
                          time.perf_counter() - t0, nonfinite, detail)

    # --- logging, checkpoints ----------------------------------------------------------------------
    def log(self, r: StepResult, rate: float, phase: str) -> str:
        """Record a step (every step in memory; metrics.jsonl every ``train.log_every``, at the last
        step and at the last step before the unmasked tune, so that no line mixes the tune's steps
        with others); ``phase``: the step's :meth:`step_phase`. Returns the bar text."""
        keys = self.objectives.log_keys
        logged = {keys[n]: v for n, v in r.values.items()}  # None: no target at this step
        self.losses.append({"step": self.step, **logged})
        self.window.add(logged)

        def text(losses: dict[str, float | None]) -> str:
            names = {k: n for n, k in keys.items()}
            t = " ".join(f"{names[k]} {format_loss(v)}" for k, v in losses.items()) + f"  {rate:.1f} samples/s"
            return t + {"warmup": "  [warm-up]", "tune": "  [unmasked tune]"}.get(phase, "")

        txt = text(logged)
        t = self.cfg.train
        if self.step % t.log_every == 0 or self.step == t.steps or (t.tune_steps and self.step == t.tune_start):
            means = self.window.take()  # over the steps since the last line that had targets
            if not self.info.main:
                return txt
            if self.cfg.runtime.progress and not self.console.is_terminal:  # logs piped to a file (SLURM): plain lines
                self.console.print(f"step {self.step}/{self.cfg.train.steps} {text(means)}", highlight=False, soft_wrap=True)
            epoch, _ = self.sampler.position(self.batches)
            line = {"step": self.step, **means, "lr": self.sched.get_last_lr()[0], "samples_per_s": rate,
                    "data_wait": r.data_wait / max(r.step_time, 1e-9), "warmup": phase == "warmup", "phase": phase, "epoch": epoch, "time": time.time(),
                    "samples_seen": self.samples_seen()}
            self.metrics.write(line, means)
        return txt

    def save(self) -> None:
        bad = nonfinite_entries(self.model.state_dict())  # on every rank: their weights are the same
        if bad:
            cks = run_checkpoints(self.out)
            kept = (f"the earlier ones in {self.out / 'checkpoints'} (latest {cks[-1].name}) are kept" if cks
                    else "and none had been written before")
            raise TrainingError(f"step {self.step}: the model's weights are not finite ({', '.join(bad[:3])}"
                                + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") + f"); no checkpoint written, {kept}")
        if not self.info.main:
            return
        payload = {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                   "scaler": self.scaler.state_dict(), "step": self.step, "batches": self.batches, "world": self.info.world,
                   "rng": rng_state(), "skips": self.skip_state(), "log_window": self.window.state_dict(), "config_flat": json.dumps(flat_items(self.cfg)),
                   "config": json.dumps(self.cfg.model_dump(mode="json")), "model_build": self.model_build,
                   RUN_ID_KEY: self.run_id}
        self.writing = self.out / "checkpoints" / f"step_{self.step:08d}.pt"  # (kept on a failure: its message names it)
        try:
            save_checkpoint(self.writing, payload)
        except OutputWriteError as exc:  # a full disk, a quota, ... (a signal's or a worker's failure: run())
            self.writing = None
            raise OutputWriteError(f"cannot write checkpoint {exc.path} ({exc.reason}; abandoned whole); "
                                   f"{self.checkpoint_state()}", exc.errno, exc.path, exc.reason) from None
        self.writing = None
        self.saved_step = self.step
        for old in run_checkpoints(self.out)[: -self.cfg.train.keep_last]:
            old.unlink(missing_ok=True)

    def check_resume(self, path: Path) -> dict:
        """The checkpoint a resume continues from, read and checked before anything is written into
        the run directory (config.json, environment.json, split.json): one line when it was written
        by another config (naming each differing key, with both values when they are short), by an
        older maskkit, at a step beyond ``train.steps``, or by another number of processes. Returns
        the checkpoint.

        Checked first: the run the checkpoint belongs to. One whose ``run_id`` differs from the run
        directory's (config.json) is another run's file, copied into ``checkpoints/``: refused for
        ``runtime.resume=auto``/``latest`` (it would continue another model under this run's
        record), and continued with a one-line note when ``runtime.resume`` names the file (a
        deliberate "continue from"; the directory keeps its id). A checkpoint or a directory
        without an id (an older maskkit's) is not checked."""
        ck = load_checkpoint(path)
        self.check_run_id(path, ck)
        saved, now = json.loads(ck["config_flat"]), flat_items(self.cfg)
        diff = [d for k in config_differences(saved, now) for d in entry_differences(k, saved.get(k), now.get(k))]
        if diff:
            def change(d) -> str:  # a data.sources entry is named by index and key (entry_differences)
                k, a, b = d[0], *(v if isinstance(v, Shown) else json.dumps(v) for v in d[1:])
                return f"{k} ({a} in the checkpoint, {b} now)" if len(a) + len(b) <= 60 else k
            raise TrainingError(f"runtime.resume: {path} was written by another config; differing keys: "
                                + ", ".join(change(k) for k in diff[:8])
                                + (f" (+{len(diff) - 8} more)" if len(diff) > 8 else "")
                                + "; resume with the run's settings, or start a new run")
        if "batches" not in ck:
            raise TrainingError(f"runtime.resume: {path} was written by an older maskkit (no loader position); start a new run")
        done = int(ck.get("step", 0))
        if self.cfg.train.steps < done:  # the record would claim fewer steps than the weights have
            raise TrainingError(f"train.steps: {self.cfg.train.steps} is below the step of {path} ({done}); a resume trains on "
                                f"up to train.steps, so give train.steps={saved.get('train.steps', done)} (the run's) or more, "
                                f"or start a new run")
        saved_world = int(ck.get("world", self.info.world))  # checkpoints before the world size was saved: not checked
        if saved_world != self.info.world:
            n = saved_world
            raise TrainingError(f"runtime.resume: {path} was written by {n} process{'es' if n != 1 else ''}, this run has {self.info.world}; the sample "
                                f"order and the global batch depend on the number of processes, so resume it with {n} "
                                f"(runtime.devices={n} or torchrun --nproc_per_node={n}), or start a new run")
        return ck

    def check_run_id(self, path: Path, ck: dict) -> None:
        """The identity check of :meth:`check_resume` (``self.run_id``: the directory's, or None)."""
        theirs = ck.get(RUN_ID_KEY) if isinstance(ck.get(RUN_ID_KEY), str) else None
        if not theirs or not self.run_id or theirs == self.run_id:
            return
        r = self.cfg.runtime.resume
        if r in ("auto", "latest"):
            raise TrainingError(f"runtime.resume={r}: {path} belongs to another run (run id {theirs}; {self.out} is run "
                                f"{self.run_id}, its config.json); move it out of {self.out / 'checkpoints'}, or continue "
                                f"from it on purpose in a new run directory (runtime.name=<new> runtime.resume={path})")
        if self.info.main:
            self.console.print(f"runtime.resume: {path} is a checkpoint of another run (run id {theirs}); {self.out} "
                               f"(run {self.run_id}) continues from it and keeps its id", highlight=False, soft_wrap=True)

    def load(self, path: Path, ck: dict | None = None) -> None:
        """Continue from the checkpoint at ``path`` (``ck``: as :meth:`check_resume` read and checked
        it; read and checked here when None): weights, optimiser, schedule, RNG, loader position."""
        if ck is None:
            ck = self.check_resume(path)
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["optimizer"])
        self.sched.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.step, self.batches = int(ck["step"]), int(ck["batches"])
        set_rng_state(ck["rng"])
        self.load_skip_state(ck.get("skips") or {})
        self.window.load_state_dict(ck.get("log_window") or {})  # older checkpoints: an empty window
        if self.info.main:
            self.console.print(f"resumed from {path} at step {self.step}", highlight=False, soft_wrap=True)
            later = [c for c in run_checkpoints(self.out) if int(c.stem.split("_")[1]) > self.step]
            for c in later:  # an earlier attempt's future: resume=latest must not pick it up again
                c.rename(c.with_name(c.name + ".superseded"))
            if later:
                self.console.print(f"{len(later)} later checkpoint(s) of {self.out} renamed *.pt.superseded "
                                   f"(this run continues from step {self.step})", highlight=False, soft_wrap=True)

    def skip_state(self) -> dict:
        """What was skipped so far over the whole run, for the checkpoint: the images (counts of
        every rank, this process's files), the non-finite steps by cause, and the current run of
        skipped steps in a row (``train.max_bad_steps`` counts across a resume)."""
        return {"images": self.skips.state_dict(), "steps": dict(self.skipped_steps), "bad_in_row": self.bad_in_row}

    def load_skip_state(self, state: dict) -> None:
        """Continue the counts of :meth:`skip_state` (a checkpoint without them: zeros). The file
        list is rank 0's, so only rank 0 takes it."""
        self.skips.load_state_dict(state.get("images") or {}, files=self.info.main)
        steps = state.get("steps") or {}
        self.skipped_steps = {k: int(steps.get(k, 0)) for k in self.skipped_steps}
        self.bad_in_row = int(state.get("bad_in_row", 0))

    def check_trained(self) -> None:
        """At the end of training: a run whose every step was skipped as non-finite (over the whole
        run, every attempt of a resumed one) trained nothing; one line, exit 2, and no final
        checkpoint (a setting that makes every step overflow: a loss weight, the input scale)."""
        n = sum(self.skipped_steps.values())
        if self.step and n >= self.step:
            causes = ", ".join(f"{v} with a non-finite {k}" for k, v in self.skipped_steps.items() if v)
            raise TrainingError(f"train: all {self.step} steps were skipped ({causes}): nothing trained, no final checkpoint "
                                f"written; a setting makes every step non-finite (look at objectives.*, model.image_mean / "
                                f"image_std, train.lr)")

    def skip_summary(self) -> str:
        """The end-of-run lines on what was skipped over the whole run (every attempt of a
        resumed run): images that failed to decode, and non-finite steps by cause."""
        n = sum(self.skipped_steps.values())
        if not n:
            steps = f"non-finite steps: none of {self.step} skipped"
        else:
            causes = [f"{v} with a non-finite {k}" for k, v in self.skipped_steps.items() if v]
            steps = f"non-finite steps: {n} of {self.step} skipped ({', '.join(causes)})"
        return self.skips.summary() + "\n" + steps

    def evaluate(self) -> dict[str, Any]:
        """The end-of-run evaluations (``runtime.evaluations``, rank 0) on the run's held-out split,
        each written to ``<run>/<name>.json`` / ``.csv`` (:func:`run_evaluations`)."""
        what = self.corpus.what("run", f"the held-out split of run {self.out} ({self.corpus.describe()})")
        return run_evaluations(self.model, self.cfg, self.corpus, what, self.out, self.cfg.runtime.evaluations, self.device,
                               failed=self.failed_evaluations, console=self.console)

    # --- the loop ----------------------------------------------------------------------------
    def discard_unstarted_run_dir(self) -> bool:
        """After a failure before any step finished: remove the run directory this run created, so
        it leaves nothing behind and the next run takes its name (not ``<name>-2``). A directory
        that a resume reused is kept, and so is one of a run that finished a step (and may have
        logged it or written a checkpoint). Returns whether it removed one."""
        if self.created_dir is not None and self.step == 0:
            shutil.rmtree(self.created_dir, ignore_errors=True)
            return True
        return False

    def _stop_name(self) -> str:
        """The signal a stop agreed by the ranks is reported as (this rank's, or another rank's)."""
        if self.stop.requested and self.stop.interrupt_only == self.stop_interrupt_only:
            return self.stop.name
        return INTERRUPT.name if self.stop_interrupt_only else "a signal on another rank"

    def continue_advice(self) -> str:
        """How to continue this run: the same command when it resumes by itself already
        (``runtime.resume=auto`` or ``latest``), else the same command with ``runtime.resume=latest``."""
        if self.cfg.runtime.resume in ("auto", "latest"):
            return "run the same command again"
        return "run the same command with runtime.resume=latest"

    def checkpoint_state(self) -> str:
        """What a failure's message says of the run's checkpoints: the one that was being written
        (abandoned whole: :func:`maskkit.io.atomic_open`), the latest one, intact, and how to continue."""
        ck = self._latest_checkpoint()
        cut = f"{self.writing.name} was being written and is abandoned; " if self.writing is not None else ""
        if ck is None:
            again = ("run the same command again" if self.cfg.runtime.resume == "auto"
                     else "run the same command with runtime.resume=auto")
            return cut + f"no checkpoint had been written: {again} to start again in {self.out}"
        return cut + f"the latest checkpoint, {ck}, is intact: {self.continue_advice()} to continue from it"

    def _latest_checkpoint(self) -> Path | None:
        out = getattr(self, "out", None)
        cks = run_checkpoints(out) if out is not None else []
        return cks[-1] if cks else None

    def preempted(self) -> RunPreempted:
        """After a step at which some rank had a stop signal: save the checkpoint of this step
        (unless it was just saved), wait for rank 0 to have written it, and return the error to raise."""
        if self.saved_step != self.step:
            self.save()
        if self.info.enabled:
            torch.distributed.barrier()
        ck = self.out / "checkpoints" / f"step_{self.step:08d}.pt"
        name = self._stop_name()
        done = self.step >= self.cfg.train.steps  # (then only when an evaluation is left: _run)
        again = self.continue_advice()
        then = f"the end-of-run evaluation did not run: {again} to run it" if done else again
        what = f"stopped by {name} after step {self.step} of {self.cfg.train.steps}; saved {ck}"
        return RunPreempted(f"{what}; {then}", INTERRUPT.name if self.stop_interrupt_only else None if name.startswith("a signal") else name,
                            detail=what)

    def stopped(self, exc: Stopped) -> RunPreempted:
        """The error for a :class:`~maskkit.training.preemption.Stopped` raised outside a training
        step (setup, evaluation) or by a second SIGINT; a directory this run made before its first
        step is removed first (:meth:`discard_unstarted_run_dir`)."""
        removed = self.created_dir if self.discard_unstarted_run_dir() else None
        steps, ck = self.cfg.train.steps, self._latest_checkpoint()
        kept = f"the latest checkpoint, {ck}, is intact" if ck is not None else "no checkpoint was written"
        if exc.again:
            where = ("during the end-of-run evaluation" if self.phase == "evaluate" else
                     f"at step {self.step} of {steps}, before the checkpoint of that step was complete")
            what, then = f"stopped at once by a second SIGINT {where}: {kept}", f"{self.continue_advice()} to continue"
        elif self.phase == "evaluate":
            names = ", ".join(f"{n}.json" for n in self.cfg.runtime.evaluations)
            what = (f"stopped by {exc.name} during the end-of-run evaluation: training is done and saved ({ck}), "
                    f"{names} {'was' if len(self.cfg.runtime.evaluations) == 1 else 'were'} not all written")
            then = f"{self.continue_advice()} to evaluate it"
        elif ck is None:
            left = f"{removed} removed" if removed is not None else (
                f"{self.out} kept (it held an earlier attempt)" if getattr(self, "out", None) is not None else "nothing written")
            what = f"stopped by {exc.name} before step 1 of {steps}: nothing to save, {left}"
            then = "run the same command again (with runtime.resume=auto it continues whatever a run left)"
        else:  # a resume, stopped before its first step (its checkpoint loaded or not yet)
            what = f"stopped by {exc.name} before its first step (resuming {self.out}): nothing new to save, {kept}"
            then = "run the same command again"
        return RunPreempted(f"{what}; {then}", exc.name, detail=what)

    def run(self) -> RunResult:
        """Set up, train to ``train.steps``, evaluate. The stop signals are handled from the start
        (:mod:`maskkit.training.preemption`: a signal during setup or evaluation stops the run at
        once, one during a step after that step and its checkpoint). Whatever happens, the run
        directory's lock and the signal handlers are released, and a directory this run made is
        removed when it fails or stops before its first step: the recipe owns what it takes,
        whoever calls it (:func:`train`, a test, a notebook)."""
        # under torchrun with several ranks, setup records the signals and the ranks agree before step 1
        self.stop.install(deferred=under_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
        try:
            return self._run()
        except BaseException as exc:
            # a signal's Stopped and torch's report of a dead DataLoader worker (from its SIGCHLD
            # handler) are raised at whatever line the main process runs then; inside torch.save
            # they come back under the writer's own error: the root cause is looked for in the chain
            stop = find_in_chain(exc, Stopped)
            if stop is not None:
                raise self.stopped(stop) from None
            from .data.loader import worker_death

            d = self.cfg.data
            died = worker_death(exc, getattr(self, "batch_iter", None), d.num_workers, d.prefetch_factor, self.batches,
                                checkpoints=self.checkpoint_state() if getattr(self, "out", None) is not None else "")
            self.discard_unstarted_run_dir()
            if died is None:
                raise
            raise died from None
        finally:
            self.stop.restore()
            if self.lock is not None and getattr(self, "out", None) is not None:
                remove_partial_checkpoints(self.out)  # whatever a failure inside a write left (it holds the lock)
            if self.lock is not None:
                self.lock.release()
                self.lock = None

    def _run(self) -> RunResult:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.setup()
        cfg, info = self.cfg, self.info
        progress = Progress(TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=self.console,
                            disable=not (cfg.runtime.progress and info.main and self.console.is_terminal))  # else plain lines (log)
        t_last, n_last = time.perf_counter(), 0
        self.phase = "train"
        self.stop.deferred = True  # from here a signal is read after the step it arrives in
        try:
            with progress:
                task = progress.add_task("train", total=cfg.train.steps, completed=self.step, info="")
                while self.step < cfg.train.steps:
                    if self.stop_agreed:
                        raise self.preempted()
                    phase = self.step_phase(self.step)
                    r = self.train_step()
                    if not r.finite:
                        self.bad_in_row += 1
                        self.skipped_steps[r.nonfinite] += 1
                        bad = f"non-finite {r.nonfinite} (" + (", ".join(r.detail[:3]) + (f" and {len(r.detail) - 3} more" if len(r.detail) > 3 else "")
                                                               if r.nonfinite == "buffer" else
                                                               ", ".join(f"{self.objectives.log_keys[k]}={'–' if v is None else v}"
                                                                         for k, v in r.values.items())) + ")"
                        if info.main:
                            self.console.print(f"[yellow]step {self.step}: {bad}; step skipped ({self.bad_in_row} in a row)[/]", soft_wrap=True)
                        if self.bad_in_row >= cfg.train.max_bad_steps:
                            raise TrainingError(f"train.max_bad_steps: {self.bad_in_row} steps in a row with a non-finite loss, gradient or buffer, "
                                                f"last at step {self.step}: {bad}")
                        continue
                    self.bad_in_row = 0
                    n_last += r.samples
                    now = time.perf_counter()
                    txt = self.log(r, n_last / max(now - t_last, 1e-9), phase)
                    if self.step % cfg.train.log_every == 0:
                        t_last, n_last = now, 0
                    progress.update(task, completed=self.step, info=txt)
                    if self.step % cfg.train.ckpt_every == 0 and self.step < cfg.train.steps:
                        self.save()
            self.check_trained()
            if self.saved_step != self.step:
                self.save()
            evaluating = bool(cfg.runtime.evaluations and self.val_ds is not None)
            if self.stop_agreed and evaluating:  # at the last step: saved, not evaluated
                raise self.preempted()
        finally:
            if self.metrics is not None:
                self.metrics.close()
        self.phase = "evaluate"
        if info.main and evaluating:  # the evaluation stops at once on a signal (one that came during the final save too);
            self.stop.act_now()      # other ranks only wait for it and keep recording; without it the run is complete
        if info.main:
            self.console.print(self.skip_summary(), highlight=False, soft_wrap=True)
            self.console.print("samples seen per source: " + ", ".join(f"{k} {v}" for k, v in self.samples_seen().items()),
                               highlight=False, soft_wrap=True)
        self.skips.check(final=True)  # a short run on broken data stops too (its checkpoints are kept)
        result = RunResult(self.out, self.step, self.losses)
        if evaluating and info.main:
            result.evaluations = self.evaluate()
            result.failed_evaluations = dict(self.failed_evaluations)
            z = result.evaluations.get("zeroshot")
            result.zeroshot = z.native if z is not None else None
        elif cfg.runtime.evaluations and info.main:
            self.console.print(f"runtime.evaluations ({', '.join(cfg.runtime.evaluations)}) not run: "
                               f"{self.corpus.empty_held_out_line()}", highlight=False, soft_wrap=True)
        if info.enabled:
            torch.distributed.barrier()
        return result


def train(cfg: ExperimentConfig, sources: dict[str, str] | None = None, console=None) -> RunResult:
    """Run the pretraining recipe described by ``cfg``; returns the run directory and losses."""
    try:
        return PretrainRecipe(cfg, sources, console).run()
    finally:
        shutdown()


def training_batch(cfg: ExperimentConfig, model, step: int, micro: int = 0, rank: int = 0, world: int = 1):
    """(the collated batch, the mask seed) that training read at ``step`` (1-based, as logged in
    metrics.jsonl), micro-batch ``micro``, on ``rank`` of ``world`` processes: the same sampler
    and seed rule as :class:`PretrainRecipe`."""
    from .data.dataset import Collator

    if step < 1 or not 0 <= micro < cfg.train.grad_accum:
        raise MaskkitError(f"--step {step} --micro {micro}: expected step >= 1 and 0 <= micro < train.grad_accum={cfg.train.grad_accum}")
    corpus = build_corpus(cfg, model.image_size, tokenizer=model.tokenizer)
    ds = corpus.train
    sampler = make_sampler(corpus, cfg, DistInfo(rank, world))
    idx = sampler.batch_indices((step - 1) * cfg.train.grad_accum + micro)
    return Collator(model.tokenizer)([ds[i] for i in idx]), mask_seed(cfg.train.seed, step - 1, micro)


def make_sampler(corpus, cfg: ExperimentConfig, info: DistInfo, start: int = 0):
    """The training sampler of a corpus (:class:`~maskkit.data.loader.MixtureBatchSampler`; with one
    source of weight 1 it is exactly the single-dataset order)."""
    from .data.loader import MixtureBatchSampler

    return MixtureBatchSampler(corpus.sizes, corpus.weights, cfg.train.batch_size, cfg.train.seed, info, start=start,
                               labels=corpus.labels)


def record_split(out: Path, corpus, resumed: bool) -> None:
    """Rank 0: write the run's split.json at its start; a resume checks the held-out and the
    training ids it rebuilt against the recorded ones (the data must not have changed under the
    run: the saved loader position indexes the training records)."""
    from .data.build import SPLIT_FILE, read_split, verify_split, write_split

    rec = read_split(out) if resumed else None
    if rec is not None:
        verify_split(corpus, rec, out / SPLIT_FILE, train=True)
    else:
        write_split(out, corpus)


def run_evaluations(model, cfg: ExperimentConfig, corpus, what: dict, out: Path, names, device="cpu",
                    failed: dict[str, str] | None = None, console=None) -> dict[str, Any]:
    """A run's end-of-run evaluations: each registered evaluation of ``names`` (``runtime.evaluations``)
    with its ``end_of_run`` settings (zero-shot: 200 bootstrap resamples, the library's protocol
    defaults) on the run's ``corpus`` (its held-out split; ``what`` names it), each written
    atomically to ``out/<name>.json`` and ``out/<name>.csv`` (``zeroshot.json`` keeps every field
    it had). Returns name -> :class:`~maskkit.eval.contract.EvalResult`. Used by the recipe and by
    ``maskkit sweep --rescore``, so a re-scored run is scored exactly as a new one.

    ``failed`` (a dict): each evaluation is isolated: one that raises (any ``Exception``; a stop
    signal still stops) is recorded there as name -> one line (:func:`~maskkit.eval.contract.failure_line`),
    printed at once as a ``warning:`` line on ``console`` when given, writes nothing, and the others
    still run and are written. Without ``failed`` the first failure is raised."""
    from .eval.contract import EvalRun, failure_line
    from .plugins import get_registry

    reg = get_registry()
    run = EvalRun([(Path(out), model, cfg)], out=out, device=device, corpus=(cfg, corpus, what))
    results = {}
    for name in names:
        ev = reg.evaluation(name)
        try:
            res = ev(run, ev.parse(ev.end_of_run))
            res.write(out)
        except Exception as exc:
            if failed is None:
                raise
            failed[name] = failure_line(name, exc)
            if console is not None:
                from rich.markup import escape

                console.print(f"warning: end-of-run {escape(failed[name])}; the other evaluations still run",
                              highlight=False, soft_wrap=True)
            continue
        results[name] = res
    return results


def run_zeroshot(model, cfg: ExperimentConfig, corpus, what: dict, out: Path, device="cpu"):
    """The end-of-run zero-shot evaluation alone (:func:`run_evaluations`): ``out/zeroshot.json``;
    returns the :class:`~maskkit.eval.zeroshot.ZeroShotResult`."""
    return run_evaluations(model, cfg, corpus, what, out, ["zeroshot"], device)["zeroshot"].native
