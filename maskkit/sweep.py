"""Ablation sweeps: a list of presets and/or a grid of overrides, several seeds, one table.

Each run has its own directory ``OUT/runs/<preset>[-key=value...]-seed<k>``. A run that finished
has ``done.json`` and is never redone; a run that was interrupted is resumed from its latest
checkpoint. Results: ``results.csv`` (mean ± std over seeds of every metric a run holds: the
held-out zero-shot mean AUC, F1 and ACC, per-label zero-shot AUC, with ``probe`` the linear-probe
mean AUC at 1/10/100% of the labels, and every flat metric of the end-of-run evaluations,
``runtime.evaluations``), ``results.md`` (the columns ``metrics:`` chooses, by key or wildcard;
default the zero-shot means and probe AUCs), ``paired.md`` (every row against every earlier one,
seed by seed, on the same metrics) and ``results.png``.

Each run keeps only its latest checkpoint (``SWEEP_RUN_DEFAULTS``; ``train.keep_last=3`` on the
command line keeps more). ``align_steps: N`` matches the budget: every run gets N alignment steps, its warm-up on top
(``train.steps = train.warmup_steps + N``). ``--jobs K`` runs K runs at once in subprocesses.

A stop signal (:data:`~maskkit.training.preemption.STOP_SIGNALS`) stops the sweep as it stops a
run: the run in progress (every one, with ``--jobs K``: the signal is passed on to each child
process) checkpoints at its step, no new run starts, and the sweep exits 75 (130 for SIGINT). The
same sweep command then continues: finished runs are kept, stopped ones resume from their checkpoint.

A run whose end-of-run evaluation failed is finished (``done.json`` names the failure:
:data:`FAILED`); the sweep writes its tables, then exits 3 (:class:`EvaluationsFailed`), and
run again it retries those evaluations on the saved run (:func:`retry_evaluations`), not the training.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any


from .errors import MaskkitError
from .io import atomic_write_bytes, atomic_write_text


@dataclass
class SweepSpec:
    presets: list[str]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    args: list[str] = field(default_factory=list)
    description: str = ""
    align_steps: int | None = None
    probe: bool = False
    #: the columns of results.md and the metrics of paired.md: metric keys or shell wildcards
    #: (``retrieval/*_R@1``); None: the zero-shot means and the probe AUCs (results.csv has every metric)
    metrics: list[str] | None = None

    def runs(self) -> list[tuple[str, dict[str, Any], int]]:
        keys = list(self.grid)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))] or [{}]
        return [(p, c, s) for p in self.presets for c in combos for s in self.seeds]


def builtin_sweeps() -> list[str]:
    return sorted(f.name[:-5] for f in (resources.files("maskkit") / "sweeps").iterdir() if f.name.endswith(".yaml"))


#: built-in sweeps that were renamed after what they measure: old name -> new name
RENAMED = {"issue21": "sparse_equal_steps", "issue21_wallclock": "sparse_equal_wallclock"}


def load_sweep(name_or_path: str) -> SweepSpec:
    from .compose import load_spec

    p = Path(name_or_path)
    if not p.is_file():
        f = resources.files("maskkit") / "sweeps" / f"{name_or_path}.yaml"
        if not f.is_file():
            from .errors import close_matches

            if name_or_path in RENAMED:
                raise MaskkitError(f"sweep '{name_or_path}' was renamed '{RENAMED[name_or_path]}' (what it measures); "
                                   f"built-ins: {', '.join(builtin_sweeps())}")
            raise MaskkitError(f"sweep '{name_or_path}' is neither a file nor a built-in sweep"
                               f"{close_matches(name_or_path, builtin_sweeps()) or ''}; built-ins: {', '.join(builtin_sweeps())}")
        p = Path(str(f))
    data = load_spec(p)
    keys = ("presets", "grid", "seeds", "args", "description", "align_steps", "probe", "metrics")
    unknown = set(data) - set(keys)
    if unknown:
        raise MaskkitError(f"{p}: unknown sweep key '{sorted(unknown)[0]}'; expected {', '.join(keys)}")
    from .options import SweepOptions

    align = data.get("align_steps")
    SweepOptions.check("=", where=f"{p}: ", align_steps=align, seeds=data.get("seeds"))  # one line naming the file and key
    metrics = data.get("metrics")
    if metrics is not None and (not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) and m for m in metrics)):
        raise MaskkitError(f"{p}: metrics: expected a list of metric keys or wildcards (e.g. [auc, 'retrieval/*_R@1']), got {metrics!r}")
    return SweepSpec(list(data.get("presets") or ["xlip"]), dict(data.get("grid") or {}), list(data.get("seeds") or [0]),
                     list(data.get("args") or []), data.get("description", ""), align, bool(data.get("probe", False)), metrics)


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["image_mask.ratio=0.6,0.75"]`` -> ``{"image_mask.ratio": [0.6, 0.75]}``."""
    from .config import parse_value

    out = {}
    for it in items:
        if "=" not in it:
            raise MaskkitError(f"--grid {it!r}: expected key=v1,v2,...")
        k, v = it.split("=", 1)
        out[k.strip()] = [parse_value(x) for x in v.split(",")]
    return out


def slug(preset: str, combo: dict[str, Any], seed: int) -> str:
    parts = [preset] + [f"{k.split('.')[-2] if k.count('.') else k}.{k.split('.')[-1]}={v}" for k, v in combo.items()]
    return re.sub(r"[^A-Za-z0-9_.=+-]", "_", "-".join(parts)) + f"-seed{seed}"


# What a sweep run does differently from ``maskkit run`` unless the sweep or the command line says
# otherwise: keep only the latest checkpoint (enough to resume, score and evaluate it again). A tiny
# run's checkpoint is ~200 MB (the optimiser state of a 49,408-token embedding); three per run
# filled 30 GB of disk in a 36-run sweep.
SWEEP_RUN_DEFAULTS = ("train.keep_last=1",)


def run_args(spec: SweepSpec, preset: str, combo: dict[str, Any], seed: int, out: Path, extra_args=()) -> list[str]:
    """The ``maskkit run`` arguments of one run of the sweep (budget matched with ``align_steps``);
    :data:`SWEEP_RUN_DEFAULTS` first, so the sweep's ``args`` and the command line override them."""
    from .config import resolve
    from .training.checkpointing import run_checkpoints

    name = slug(preset, combo, seed)
    run_dir = out / "runs" / name
    args = [f"preset={preset}", *SWEEP_RUN_DEFAULTS, *spec.args, *extra_args, *[f"{k}={json.dumps(v)}" for k, v in combo.items()],
            f"train.seed={seed}", f"runtime.out_dir={out / 'runs'}", f"runtime.name={name}",
            "runtime.progress=false"]
    if spec.align_steps is not None:
        cfg, _ = resolve(args)
        warm = cfg.train.warmup_steps if (cfg.image_mask or cfg.image_only_mask or cfg.text_mask) else 0
        args.append(f"train.steps={warm + spec.align_steps}")
    if run_checkpoints(run_dir):
        args.append("runtime.resume=latest")
    elif run_dir.exists():
        args.append("runtime.overwrite=true")
    return args


def _one_run(args: list[str], row: dict, probe: bool, threads: int | None = None) -> dict:
    """Train one run (in this process) and evaluate it; returns its result row (also ``done.json``)."""
    import torch

    from .config import resolve
    from .train import train

    if threads:
        torch.set_num_threads(threads)
    cfg, sources = resolve(args)
    result = train(cfg, sources)
    row = {**row, "steps": result.step, **zeroshot_fields(result.zeroshot)}
    for res in result.evaluations.values():  # every end-of-run evaluation's flat metrics (runtime.evaluations)
        row.update(res.metrics)
    if result.failed_evaluations:  # name -> one line; retried when the sweep runs again (retry_evaluations)
        row[FAILED] = dict(result.failed_evaluations)
    if probe:
        row.update(probe_aucs(result.run_dir, cfg))
    atomic_write_text(result.run_dir / "done.json", json.dumps(row))
    return row


def zeroshot_fields(z) -> dict[str, float | None]:
    """A result row's zero-shot columns: mean ``auc``/``f1``/``acc`` and ``auc:<label>``."""
    row = {m: z.mean(m) if z else None for m in METRICS}
    if z:
        row.update({f"auc:{k}": (v or {}).get("auc") for k, v in z.per_label.items()})
        row.update({f"protocol:{k}": getattr(z, k) for k in PROTOCOL_FIELDS})
    return row


PROTOCOL_FIELDS = ("prompts", "no_finding")  # how a row's zero-shot was scored (ZeroShotResult fields)


def protocol_line(rows: list[dict]) -> str:
    """One line saying how the rows' zero-shot was scored, e.g. ``prompts: sentence; No Finding:
    absence``; a field the rows disagree on lists its values, and rows scored before maskkit
    recorded it count as ``not recorded``."""
    parts = []
    for k in PROTOCOL_FIELDS:
        vals = sorted({str(r.get(f"protocol:{k}") or "not recorded") for r in rows})
        name = "No Finding" if k == "no_finding" else k
        parts.append(f"{name}: {vals[0]}" if len(vals) == 1 else f"{name}: MIXED ({', '.join(vals)}; `--rescore` makes them one)")
    return "Zero-shot protocol: " + "; ".join(parts) + " (docs/eval.md)."


#: a result row's (and ``done.json``'s) end-of-run evaluations that failed: name -> one line
FAILED = "failed_evaluations"


def rescore_run(run_dir: Path, row: dict, console=None) -> dict:
    """Score a finished run's zero-shot again with the current protocol (its latest checkpoint, its
    own held-out data, as at the end of training: :func:`maskkit.train.run_evaluations`); rewrites
    ``zeroshot.json`` / ``zeroshot.csv`` and ``done.json``. Other columns are kept (probe AUCs do
    not depend on prompts); the evaluations that failed before (``row[FAILED]``) are retried too.
    ``console``: where to print the ``data:`` line (:func:`maskkit.data.build.data_line`)."""
    return evaluate_again(run_dir, row, ["zeroshot", *[n for n in row.get(FAILED, {}) if n != "zeroshot"]], console,
                          isolate=False)


def retry_evaluations(run_dir: Path, row: dict, console=None) -> dict:
    """Run again the end-of-run evaluations of a finished run that failed (``row[FAILED]``), on its
    latest checkpoint and held-out split, as at the end of training (no retraining); those that
    pass add their metrics and leave ``row[FAILED]``, the others stay there with their new line.
    Rewrites ``done.json``."""
    return evaluate_again(run_dir, row, list(row.get(FAILED, {})), console)


def evaluate_again(run_dir: Path, row: dict, names: list[str], console=None, isolate: bool = True) -> dict:
    """The end-of-run evaluations ``names`` of a finished run again (:func:`rescore_run`,
    :func:`retry_evaluations`): returns the updated row, also written to ``done.json``. Each one is
    isolated (a failure: a warning line, recorded in ``row[FAILED]``) unless ``isolate`` is False
    and it is the zero-shot (``--rescore``'s own evaluation: its failure is raised)."""
    from .data.build import data_line, eval_corpus
    from .train import run_evaluations
    from .training.checkpointing import load_model

    model, cfg = load_model(run_dir)
    _, corpus, what = eval_corpus(run_dir, cfg, model.image_size, tokenizer=model.tokenizer)  # verified against split.json
    if console is not None:
        console.print(data_line(what), highlight=False, soft_wrap=True)
    failed: dict[str, str] = {}
    res = {}
    if not isolate and "zeroshot" in names:
        res = run_evaluations(model, cfg, corpus, what, run_dir, ["zeroshot"])
        names = [n for n in names if n != "zeroshot"]
    res.update(run_evaluations(model, cfg, corpus, what, run_dir, names, failed=failed, console=console))
    still = {n: v for n, v in {**dict(row.get(FAILED) or {}), **failed}.items() if n not in res}
    row = {k: v for k, v in row.items() if k != FAILED}
    for name, r in res.items():
        row = {k: v for k, v in row.items() if not k.startswith(f"{name}/")}
        if name == "zeroshot":
            row.update(zeroshot_fields(r.native))
        row.update(r.metrics)
    if still:
        row[FAILED] = still
    atomic_write_text(run_dir / "done.json", json.dumps(row))
    return row


def probe_aucs(run_dir: Path, cfg) -> dict[str, float | None]:
    """Linear-probe mean AUC at 1/10/100% of the labels on the run's held-out split (``probe_<pct>``),
    as ``maskkit eval finetune`` computes it."""
    from .eval.finetune import held_out_splits, pretraining_data, run_finetune
    from .training.checkpointing import load_model

    from .data.build import eval_corpus

    model, _ = load_model(run_dir)
    _, corpus, _ = eval_corpus(run_dir, cfg, model.image_size, ner=False)  # the run's split, verified; no entities read
    ds, names, recs, test_ids = pretraining_data(cfg, model.image_size, corpus=corpus)
    res = run_finetune(model, ds, names, held_out_splits(recs, test_ids, cfg.train.seed), mode="probe", epochs=20,
                       seed=cfg.train.seed)
    return {f"probe_{float(r.fraction) * 100:g}": r.mean_auc for r in res}


def run_sweep(spec: SweepSpec, out: Path, extra_args: list[str] = (), console=None, jobs: int = 1,
              rescore: bool = False) -> list[dict]:
    """Run every (preset, grid point, seed) of ``spec`` not done before; ``jobs`` at once.
    ``rescore``: runs done before get their zero-shot scored again (:func:`rescore_run`), e.g.
    after a protocol change, without retraining.

    Raises :class:`~maskkit.training.preemption.RunPreempted` (exit 75, 130 for SIGINT) when a stop
    signal stopped it: the runs in progress checkpointed at their step and none started after."""
    from .config import resolve
    from .training.preemption import StopRequest, Stopped

    stop = StopRequest().install()  # a signal between runs (or in a probe, a rescore) stops the sweep at once
    rows, todo, plan = [], [], spec.runs()
    try:
        evaluations: list[str] = []  # what any run of the sweep evaluates, done or not: --metrics is checked against it
        for preset, combo, seed in plan:  # every run's settings are checked before the first one starts (one line, nothing written)
            cfg, _ = resolve(run_args(spec, preset, combo, seed, out, extra_args))
            evaluations += [e for e in cfg.runtime.evaluations if e not in evaluations]
        check_metrics(spec, evaluations)
        for n, (preset, combo, seed) in enumerate(plan, 1):
            name = slug(preset, combo, seed)
            done = out / "runs" / name / "done.json"
            if done.is_file():
                kept = json.loads(done.read_text(encoding="utf-8"))
                retry = list(kept.get(FAILED) or {})  # end-of-run evaluations that failed: run again, no retraining
                if console:
                    what = ("re-scoring" if rescore else "kept") + (f", retrying its failed evaluations ({', '.join(retry)})" if retry else "")
                    console.print(f"[{n}/{len(plan)}] {name}: done before, {what}", highlight=False, soft_wrap=True)
                rows.append(rescore_run(done.parent, kept, console) if rescore else
                            retry_evaluations(done.parent, kept, console) if retry else kept)
                continue
            row = {"preset": preset, **{k: v for k, v in combo.items()}, "seed": seed, "run": name}
            todo.append((run_args(spec, preset, combo, seed, out, extra_args), row))
        out.mkdir(parents=True, exist_ok=True)
        if jobs <= 1:
            stopped = _run_in_process(todo, spec.probe, rows, console)
        else:
            stopped = _run_in_pool(todo, spec.probe, jobs, rows, stop, console)
    except Stopped as exc:
        raise _sweep_stopped(out, exc.name, len(rows), len(plan), [], exc.again) from None
    finally:
        stop.restore()
    if stopped is not None:
        name, said = stopped
        raise _sweep_stopped(out, name, len(rows), len(plan), said)
    write_results(rows, spec, out)
    failed = [r for r in rows if r.get(FAILED)]
    if failed:
        raise EvaluationsFailed(out, failed, len(rows))
    return rows


class EvaluationsFailed(MaskkitError):
    """Every run of a sweep trained and was saved (``results.*`` written) but some end-of-run
    evaluations failed (``done.json``'s ``failed_evaluations``): exit 3, as ``maskkit run``.
    ``rows``: the result rows of the runs concerned."""

    def __init__(self, out: Path, rows: list[dict], total: int) -> None:
        from .errors import EVALUATION_FAILED

        first = rows[0]
        name = next(iter(first[FAILED]))
        lines = "; ".join(f"{r['run']}: {'; '.join(r[FAILED].values())}" for r in rows)
        super().__init__(f"sweep {out}: every run trained and saved, but end-of-run evaluations failed in {len(rows)} of "
                         f"{total} runs ({lines}); results.md lists them; run the same sweep command again to retry them "
                         f"(no retraining), or one alone: maskkit eval {name} {out / 'runs' / first['run']}")
        self.rows = rows
        self.exit_code = EVALUATION_FAILED


def _sweep_stopped(out: Path, name: str | None, done: int, total: int, said: list[str], again: bool = False):
    """The one-line error of a sweep stopped by the signal ``name``; ``said``: each stopped run's line."""
    from .training.preemption import RunPreempted

    return RunPreempted(f"sweep {out}: stopped by {name}{' (a second SIGINT: at once)' if again else ''}, {done} of {total} "
                        f"runs done" + "".join(f"; {x}" for x in said) + "; run the same sweep command again to continue "
                        "(finished runs are kept, stopped ones resume from their checkpoint)", name)


def _run_in_process(todo: list, probe: bool, rows: list, console) -> tuple[str | None, list[str]] | None:
    """The runs one after the other in this process. Returns ``None`` when all finished, or (the
    signal, [the stopped run's line]) when a signal stopped a run (no run starts after it)."""
    from .training.preemption import RunPreempted

    for i, (args, row) in enumerate(todo, 1):
        if console:
            console.print(f"[{i}/{len(todo)}] {row['run']}", highlight=False, soft_wrap=True)
        try:
            rows.append(_one_run(args, row, probe))
        except RunPreempted as exc:
            return exc.signal_name, [f"{row['run']}: {exc.detail}"]
    return None


def _run_in_pool(todo: list, probe: bool, jobs: int, rows: list, stop, console) -> tuple[str | None, list[str]] | None:
    """The runs ``jobs`` at once in child processes (spawned); returns as :func:`_run_in_process`.
    A stop signal to this process is passed on to every child (each run checkpoints at its step,
    :func:`_pool_task` starts none after it); a child that a signal reached directly (a scheduler
    signals every process of a job) stops the others alike. The other failures are raised after
    every child ended (the first of them)."""
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    from .training.preemption import RunPreempted, Stopped, stop_signals_blocked

    threads = max(1, (os.cpu_count() or 1) // jobs)
    said: list[str] = []
    failures: list[BaseException] = []
    told = False
    with stop.deferring():  # signals are recorded here, and acted on by telling the children
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_pool_worker_init) as pool:
            with stop_signals_blocked():  # the children start with them blocked, until their handlers are in place
                futures = {pool.submit(_pool_task, args, row, probe, threads): (i, row) for i, (args, row) in enumerate(todo)}
            finished: dict[int, dict] = {}  # rows in the sweep's order (results.md, paired.md), not as they finish
            pending = set(futures)
            while pending:
                try:
                    done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)  # (a signal is passed on within 0.05 s)
                except Stopped:  # a second SIGINT: pass it on, the children stop at once
                    _signal_children(pool, "SIGINT")
                    continue
                for f in done:
                    i, row = futures[f]
                    if f.cancelled():
                        continue
                    exc = f.exception()
                    if exc is None:
                        finished[i] = f.result()
                        if console:
                            console.print(f"[{len(finished)}/{len(todo)}] {row['run']} done", highlight=False, soft_wrap=True)
                    elif isinstance(exc, RunPreempted):
                        stop.note(exc.signal_name or "SIGTERM")
                        said.append(f"{row['run']}: {exc.detail}")
                    elif isinstance(exc, Stopped):  # before it started, or in its probe
                        stop.note(exc.name)
                    elif isinstance(exc, BrokenProcessPool) and stop.requested:
                        continue  # a child the signal reached before it could handle it: nothing of its run to save
                    else:
                        failures.append(exc)
                if stop.requested and not told:  # (a run that failed does not stop the others: they are independent)
                    told = True
                    for f in pending:
                        f.cancel()  # not started yet: never will be
                    _signal_children(pool, stop.name)
            if stop.requested:
                stop.acknowledge()  # acted on: the children were told (leaving deferring() must not raise)
    rows.extend(finished[i] for i in sorted(finished))
    if failures:
        raise failures[0]
    return (stop.name, said) if stop.requested else None


def _signal_children(pool, name: str | None) -> None:
    """Send the stop signal ``name`` to every live child process of ``pool``."""
    import os

    from .training.preemption import forwarded_signal

    sig = forwarded_signal(name)
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        if p.is_alive():
            try:
                os.kill(p.pid, sig)
            except OSError:
                pass


_POOL_STOP = None  # the stop request of a sweep's child process (_pool_worker_init)


def _pool_worker_init() -> None:
    """A sweep's child process: record the stop signals from the start (it was started with them
    blocked); a run's recipe installs its own on top and reports what it saw back to this one."""
    global _POOL_STOP
    from .training.preemption import StopRequest, unblock_stop_signals

    _POOL_STOP = StopRequest().install(deferred=True)
    unblock_stop_signals()


def _pool_task(args: list[str], row: dict, probe: bool, threads: int) -> dict:
    """One run of a sweep in a child process; none starts once the process was asked to stop. A
    signal in the run's probe stops it at once (``Stopped``); idle, the process only records it."""
    from .training.preemption import Stopped

    stop = _POOL_STOP
    if stop is not None and stop.requested:
        raise Stopped(stop.name)
    if stop is not None:
        stop.deferred = False
    try:
        return _one_run(args, row, probe, threads)
    finally:
        if stop is not None:
            stop.deferred = True


METRICS = ("auc", "f1", "acc")


def _metric_keys(rows: list[dict]) -> list[str]:
    """The legacy metrics the rows hold: zero-shot mean AUC/F1/ACC, then probe and per-label AUCs."""
    extra = sorted({k for r in rows for k in r if k.startswith(("probe_", "auc:"))},
                   key=lambda k: (not k.startswith("probe_"), int(k[6:]) if k[6:].isdigit() else 0, k))
    return [*METRICS, *extra]


#: the fields of a result row that are not metrics
ROW_FIELDS = ("preset", "seed", "run", "steps", FAILED)


def numeric_keys(rows: list[dict], spec: SweepSpec) -> list[str]:
    """Every metric the rows hold (results.csv): the legacy ones (:func:`_metric_keys`), then every
    other key whose values are numbers - the evaluations' flat metrics (``zeroshot/auc_macro``,
    ``retrieval/image_to_report_R@1``, ...) - in order of first appearance."""
    legacy = _metric_keys(rows)
    skip = set(ROW_FIELDS) | set(spec.grid) | set(legacy)
    out: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k in skip or k in out or k.startswith("protocol:"):
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append(k)
    return [*legacy, *out]


def chosen_metrics(rows: list[dict], spec: SweepSpec) -> tuple[list[str], list[str]]:
    """(the metrics results.md shows and paired.md compares, the patterns that matched none):
    ``spec.metrics`` (keys or shell wildcards matched against every metric the rows hold, in the
    spec's order), else the zero-shot means and the probe AUCs."""
    import fnmatch

    if spec.metrics is None:
        return [m for m in _metric_keys(rows) if not m.startswith("auc:")], []
    have = numeric_keys(rows, spec)
    out: list[str] = []
    missing: list[str] = []
    for pat in spec.metrics:
        hits = [k for k in have if fnmatch.fnmatchcase(k, pat)]
        if not hits:
            missing.append(pat)
        out += [k for k in hits if k not in out]
    return out, missing


def check_metrics(spec: SweepSpec, evaluations: list[str], registered: list[str] | None = None) -> None:
    """Before any run (whether the sweep's runs are done or not): each pattern of ``spec.metrics``
    names a legacy column (``auc``, ``f1``, ``acc``, ``probe_*``, ``auc:*``) or a metric of an
    evaluation at least one run runs (``name/...``: its name in ``evaluations``, the union of the
    runs' ``runtime.evaluations``; a run that does not compute it shows ``–``); else one line. Its advice names only what exists: a
    registered evaluation (``registered``, default: the registry's) to add to
    ``runtime.evaluations``, or close matches among the registered evaluations and the legacy columns."""
    import fnmatch

    from .errors import close_matches

    if registered is None:
        from .plugins import get_registry

        registered = list(get_registry().evaluations)
    legacy = ["auc", "f1", "acc", "probe_1", "probe_10", "probe_100", "auc:x"]
    for pat in spec.metrics or []:
        head = pat.split("/", 1)[0]
        if "/" in pat:
            if any(fnmatch.fnmatchcase(e, head) for e in evaluations):
                continue
            known = [e for e in registered if fnmatch.fnmatchcase(e, head)]
            if not known:
                raise MaskkitError(f"sweep metrics: '{pat}': '{head}' is not a registered evaluation"
                                   f"{close_matches(head, registered) or ''} (registered: {', '.join(sorted(registered))}; "
                                   f"maskkit eval --help lists them)")
            raise MaskkitError(f"sweep metrics: '{pat}' is a metric of evaluation '{known[0]}', which no run of the sweep runs "
                               f"(runtime.evaluations: {', '.join(evaluations) or 'none'}); add it, e.g. "
                               f"'runtime.evaluations=[{','.join([*evaluations, known[0]])}]' in the sweep's args")
        elif not (pat.startswith(("probe_", "auc:")) or any(fnmatch.fnmatchcase(k, pat) for k in legacy)):
            hint = close_matches(pat, [k for k in legacy if k != "auc:x"] + [f"{e}/" for e in evaluations]) or ""
            raise MaskkitError(f"sweep metrics: '{pat}' is neither a zero-shot / probe column (auc, f1, acc, probe_1, "
                               f"probe_10, probe_100, auc:<label>) nor an evaluation's metric ('<evaluation>/<metric>', "
                               f"of runtime.evaluations: {', '.join(evaluations) or 'none'}){hint}")


def _percent(metric: str) -> bool:
    """Whether a column is shown in % (the legacy AUC/F1/ACC and probe columns); an evaluation's
    metric is shown as it is (a rank is not a fraction)."""
    return metric in METRICS or metric.startswith(("probe_", "auc:"))


def grid_cell(v: Any) -> Any:
    """A grid value as a row's key and a table cell: a list or mapping (``runtime.evaluations``
    varied by the grid) as its compact JSON, anything else as it is."""
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) else v


def summarise(rows: list[dict], spec: SweepSpec) -> list[dict]:
    """Mean and sample std over seeds of every metric, per (preset, grid point); the std of a
    single seed is ``None`` (no spread to report), not 0."""
    import numpy as np

    keys = list(spec.grid)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["preset"], *[grid_cell(r.get(k)) for k in keys]), []).append(r)
    out = []
    for g, rs in groups.items():
        row = {"preset": g[0], **dict(zip(keys, g[1:])), "seeds": len(rs)}
        for m in numeric_keys(rows, spec):
            v = np.array([r[m] for r in rs if r.get(m) is not None], dtype=float)
            row[f"{m}_mean"] = float(v.mean()) if len(v) else None
            row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else None  # one seed has no spread
        out.append(row)
    return out


def paired(rows: list[dict], spec: SweepSpec, metric: str = "auc") -> list[dict]:
    """Every (preset, grid point) against every earlier one, on the seeds both ran: the mean
    difference of ``metric``, its standard error over seeds, and whether it exceeds twice the SE
    (a paired t-like margin: the difference is larger than the seed-to-seed spread)."""
    import numpy as np

    keys = list(spec.grid)
    groups: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r.get(metric) is not None:
            groups.setdefault((r["preset"], *[grid_cell(r.get(k)) for k in keys]), {})[r["seed"]] = r[metric]
    items = list(groups.items())
    out = []
    for j, (g, vals) in enumerate(items):
        for base_key, base in items[:j]:
            seeds = sorted(set(vals) & set(base))
            d = np.array([vals[s] - base[s] for s in seeds], dtype=float)
            se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
            out.append({"row": " ".join(map(str, g)), "against": " ".join(map(str, base_key)), "metric": metric,
                        "seeds": len(d), "mean_diff": float(d.mean()) if len(d) else float("nan"), "se": se,
                        "exceeds_2se": bool(len(d) > 1 and abs(d.mean()) > 2 * se)})
    return out


def write_results(rows: list[dict], spec: SweepSpec, out: Path) -> None:
    summary = summarise(rows, spec)
    if not summary:
        return
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(summary[0]))
    w.writeheader()
    w.writerows(summary)
    atomic_write_text(out / "results.csv", buf.getvalue())
    keys = list(spec.grid)
    metrics = _metric_keys(rows)
    shown, missing = chosen_metrics(rows, spec)
    head = ["preset", *keys, "seeds", *[("zero-shot " + m.upper()) if m in METRICS else m for m in shown]]
    md = [f"# {spec.description or 'sweep'}", "", protocol_line(rows), "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if any(not _percent(m) for m in shown):
        md[3:3] = ["Columns of the zero-shot means and probe AUCs are in %; an evaluation's metric (`name/...`) as it is.", ""]
    if missing:
        md[3:3] = [f"No run holds a metric matching {', '.join(repr(m) for m in missing)} (results.csv lists every metric).", ""]
    failed = [r for r in rows if r.get(FAILED)]
    if failed:  # a `–` that is a failure, not an evaluation the run does not run
        md[3:3] = ["End-of-run evaluations that failed (their metrics are `–` or leave out those runs; the same sweep command "
                   "retries them without retraining, or run one alone):", "",
                   *[f"- `{r['run']}`: {name} (`maskkit eval {name} {out / 'runs' / r['run']}`): {line}"
                     for r in failed for name, line in r[FAILED].items()], ""]
    from .eval.contract import fmt_number

    def fmt(r, m):
        mean, std = r.get(f"{m}_mean"), r.get(f"{m}_std")
        if mean is None:  # no run of the row computes it (its runtime.evaluations do not run it)
            return "–"
        k, d = (100, 2) if _percent(m) else (1, 3)
        return fmt_number(k * mean, d) + ("" if std is None else " ± " + fmt_number(k * std, d))
    for r in summary:
        md.append("| " + " | ".join([r["preset"], *[str(r[k]) for k in keys], str(r["seeds"]), *[fmt(r, m) for m in shown]]) + " |")
    labels = [m for m in metrics if m.startswith("auc:")]
    if labels:
        md += ["", "Zero-shot AUC per label (mean ± std over seeds, %):", "",
               "| preset | " + " | ".join([*keys, *[m[4:] for m in labels]]) + " |", "|" + "---|" * (1 + len(keys) + len(labels))]
        for r in summary:
            md.append("| " + " | ".join([r["preset"], *[str(r[k]) for k in keys], *[fmt(r, m) for m in labels]]) + " |")
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    compared = [*METRICS[:1], *[m for m in metrics if m.startswith("probe_")]] if spec.metrics is None else shown
    pl = [p for m in compared for p in paired(rows, spec, m)]
    if pl:
        def num(p, v, sign=False):  # enough digits that a difference beyond 2 SE never reads 0.000
            k, d = (100, 2) if _percent(p["metric"]) else (1, 3)
            return fmt_number(k * v, d, sign=sign)

        lines = ["| row | against | metric | seeds | mean difference | SE | beyond 2 SE |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['row']} | {p['against']} | {p['metric']} | {p['seeds']} | {num(p, p['mean_diff'], True)} | "
                  + (f"{num(p, p['se'])} | {'yes' if p['exceeds_2se'] else 'no'} |" if p["seeds"] > 1
                     else "n/a | n/a (one seed: no spread) |") for p in pl]
    else:  # never an earlier sweep's comparisons under this one's results.md
        why = ("no metric chosen is held by any run" if not compared else
               "fewer than two rows hold a chosen metric on a common seed" if len(summary) > 1 else "one row: nothing to compare")
        lines = [f"No paired comparison: {why} (metrics: {', '.join(compared) or 'none'})."]
    atomic_write_text(out / "paired.md", "\n".join(lines) + "\n")
    atomic_write_bytes(out / "results.png", plot_results(summary, keys))


def plot_results(summary: list[dict], keys: list[str]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, m in zip(axes, ("auc", "f1")):
        if len(keys) >= 1:
            x = keys[0]
            series: dict[tuple, list] = {}
            for r in summary:
                series.setdefault((r["preset"], *[r[k] for k in keys[1:]]), []).append(r)
            for label, rs in series.items():
                rs = sorted(rs, key=lambda r: r[x])
                ax.errorbar([r[x] for r in rs], [100 * (r[f"{m}_mean"] or 0) for r in rs],
                            yerr=[100 * (r[f"{m}_std"] or 0) for r in rs], marker="o", capsize=3,
                            label=", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys[1:], label[1:])) or label[0])
            ax.set_xlabel(x)
            ax.legend(fontsize=7)
        else:
            names = [r["preset"] for r in summary]
            ax.bar(range(len(names)), [100 * (r[f"{m}_mean"] or 0) for r in summary],
                   yerr=[100 * (r[f"{m}_std"] or 0) for r in summary], capsize=3)
            ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel(f"zero-shot {m.upper()} (%)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
