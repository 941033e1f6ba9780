"""The ``maskkit`` command line (typer + rich)."""

from __future__ import annotations

if __name__ == "__main__":  # python -m maskkit.cli: the stop-signal handlers before the slow imports below
    from maskkit.training.preemption import cli_stop_request  # (the maskkit script: maskkit.__main__)

    cli_stop_request()

import json
import re
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape  # messages are text: "runtime.evaluations=[zeroshot]" is not a style tag
from rich.table import Table

from .errors import EVALUATION_FAILED, MaskkitError  # exit 3: trained and saved, an end-of-run evaluation failed
from .roles import ROLE_NAMES
from .options import CheckOptions, PhantomsOptions, PrepareOptions, SweepOptions, VisualizeOptions, allowed, option_help
from .sweep import builtin_sweeps

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="maskkit: masking strategies for medical vision-language pretraining (XLIP).")
console = Console(width=None if sys.stdout.isatty() else 160)  # wide tables when piped to a file
err_console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


@app.command("strategies")
def strategies_cmd(
    pattern: str = typer.Argument("*", help="Shell-style wildcard on the name, e.g. 'report*'."),
    modality: Optional[str] = typer.Option(None, help="Only strategies of this modality (image or text)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List every registered strategy with its plugin, modality, inputs and description."""
    from .core import declared_values
    from .plugins import get_registry, list_strategies

    reg = get_registry()
    rows = []
    for name in list_strategies(pattern, modality):
        cls = reg.strategies[name]
        if cls.composite:
            inputs = "(its children's)"
        else:
            try:  # an instance with the default config knows its inputs (they may depend on the config)
                req = cls(None).all_requires
            except Exception:  # a plugin whose Config has required fields
                req = cls.requires
            inputs = ", ".join(sorted(req)) or "-"
        modal = "|".join(declared_values(cls, "modality"))  # the class's declaration
        rows.append({"name": name, "source": reg.strategy_sources[name], "modality": modal,
                     "output": "|".join(declared_values(cls, "output")), "inputs": inputs,
                     "description": cls.description})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"maskkit strategies ({len(rows)})")
    for col in ("name", "source", "modality", "output", "inputs", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*(str(r[c]) for c in ("name", "source", "modality", "output", "inputs", "description")))
    console.print(table)
    for dist, why in reg.failed_plugins.items():
        err_console.print(f"[yellow]plugin '{escape(dist)}' failed to load: {escape(why)}[/]")


@app.command("presets")
def presets_cmd(pattern: str = typer.Argument("*", help="Shell-style wildcard on the preset name.")) -> None:
    """List the registered presets (XLIP and the Table III/IV rows)."""
    import fnmatch

    from .plugins import get_registry

    table = Table(title="maskkit presets")
    for col in ("name", "source", "description"):
        table.add_column(col, overflow="fold")
    for name, p in sorted(get_registry().presets.items()):
        if fnmatch.fnmatchcase(name, pattern):
            table.add_row(name, p.source, p.description)
    console.print(table)


@app.command("datasets")
def datasets_cmd(
    pattern: str = typer.Argument("*", help="Shell-style wildcard on the dataset name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """List the registered dataset adapters: plugin, role (paired / image_only / auto) and options."""
    import fnmatch

    from .plugins import get_registry

    reg = get_registry()
    rows = [{"name": n, "source": a.source, "role": a.role, "description": a.description, "options": a.option_rows()}
            for n, a in sorted(reg.datasets.items()) if fnmatch.fnmatchcase(n, pattern)]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"maskkit datasets ({len(rows)})")
    for col in ("name", "source", "role", "options (type = default, constraints)", "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        from rich.markup import escape

        opts = "\n".join(f"{o['option']}: {o['type']} = {o['default']}" + (f", {o['constraints']}" if o["constraints"] else "")
                         for o in r["options"])
        table.add_row(r["name"], r["source"], r["role"], escape(opts), escape(r["description"]))  # list[str] is not markup
    console.print(table)


@app.command("compose")
def compose_cmd(
    spec: str = typer.Argument(..., help="A preset name, a strategy name, a .yaml/.toml/.json file, or an inline JSON tree."),
    role: str = typer.Option("image_mask", help="Which tree of a preset: " + ", ".join(ROLE_NAMES) + "."),
) -> None:
    """Validate a composition and print it fully resolved (every default filled in)."""
    from .compose import build_strategy, parse_spec, to_spec
    from .plugins import get_registry

    parsed = parse_spec(spec)  # inline JSON or a composition file; else a name
    if parsed is not None:
        tree, where = parsed
    elif spec in get_registry().strategies and spec not in get_registry().presets:
        tree, where = spec, spec  # a bare strategy name is a composition (docs/composition.md)
    else:
        preset = get_registry().preset(spec)
        if role not in preset.config:
            raise MaskkitError(f"preset '{spec}' has no '{role}'; it has {', '.join(preset.config)}")
        tree, where = preset.config[role], f"{spec}.{role}"
    if tree is None:
        console.print(f"{where}: none (this preset does not use it)")
        return
    strategy = build_strategy(tree, path=where)
    console.print_json(json.dumps(to_spec(strategy)))
    console.print(f"modality={strategy.modality} output={strategy.output} "
                  f"requires={', '.join(sorted(strategy.all_requires))}")


@app.command("check")
def check_cmd(
    spec: str = typer.Argument(..., help="A strategy name, an inline JSON composition or a composition file."),
    n: int = typer.Option(16, "--n", "-N", help="Image tokens N of the test contexts (e.g. 196 for a 14x14 grid)."),
    t: int = typer.Option(12, "--t", "-T", help="Report length T of the test contexts."),
    b: int = typer.Option(3, "--b", "-B", help="Batch size B of the test contexts."),
    seed: int = typer.Option(0, help="Seed of the test contexts' data."),
    device: str = typer.Option("cpu", help="Device of the test contexts (cpu, cuda, cuda:N, mps, auto)."),
) -> None:
    """Run maskkit's conformance checks on a strategy (what a plugin author runs)."""
    from .compose import parse_spec
    from .testing import check_strategy

    CheckOptions.check(n=n, t=t, b=b, seed=seed)
    from .options import device_error

    if device_error(device):
        raise MaskkitError(f"--device: {device_error(device)}")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    parsed = parse_spec(spec)  # inline JSON or a composition file, as `maskkit compose` reads them
    tree = parsed[0] if parsed is not None else spec
    import warnings

    from .testing import ConformanceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConformanceWarning)
        try:
            check_strategy(tree, device=device, B=b, N=n, T=t, seed=seed)
        except AssertionError as exc:
            raise MaskkitError(f"conformance failed: {exc}") from None
    notes = [str(w.message) for w in caught if issubclass(w.category, ConformanceWarning)]
    for w in caught:  # other warnings are shown as Python would have
        if not issubclass(w.category, ConformanceWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for line in notes:
        err_console.print(f"[yellow]warning[/]: {escape(line)}", highlight=False, soft_wrap=True)
    also = f"; {len(notes)} warning{'s' if len(notes) > 1 else ''} above" if notes else ""
    console.print(f"[green]ok[/]: {spec} passes the maskkit conformance checks (B={b}, N={n}, T={t}, seed={seed}, {device}){also}")


@app.command("phantoms")
def phantoms_cmd(
    n: int = typer.Option(2000, "--n", help="Number of phantoms; " + allowed(PhantomsOptions, "n") + "."),
    out: str = typer.Option(..., "--out", help="Output folder (created; must not exist unless --overwrite)."),
    seed: int = typer.Option(0, help="Generator seed; the same seed gives identical files; " + allowed(PhantomsOptions, "seed") + "."),
    size: int = typer.Option(224, help="Image side in pixels; " + allowed(PhantomsOptions, "size") + "."),
    unpaired: float = typer.Option(0.2, help="Fraction of phantoms without a report; " + allowed(PhantomsOptions, "unpaired") + "."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Write the synthetic chest X-ray phantom dataset (images, lesion masks, reports, labels) to disk."""
    from .data.export import write_phantoms
    from .io import check_writable_dir

    PhantomsOptions.check(n=n, seed=seed, size=size, unpaired=unpaired)
    check_writable_dir(out, "--out")  # before any work
    path = write_phantoms(out, n=n, seed=seed, size=size, p_unpaired=unpaired, overwrite=overwrite)
    console.print(f"wrote {n} phantoms to {path} (read it back with data=csv data.path={path / 'phantoms.csv'})")


@app.command("prepare")
def prepare_cmd(
    dataset: str = typer.Argument(..., help="A registered dataset adapter (`maskkit datasets` lists them)."),
    out: str = typer.Option(..., "--out", help="Cache folder to create."),
    size: int = typer.Option(224, help="Training resolution (square side in pixels); " + allowed(PrepareOptions, "size") + "."),
    option: list[str] = typer.Option([], "--option", "-o", help="Adapter option KEY=VALUE (e.g. root=/data/nih, views=[\"PA\"])."),
    overwrite: bool = typer.Option(False, help="Replace an existing cache folder."),
) -> None:
    """Resize every image of a dataset once and store it as a uint8 memory-mapped cache."""
    from .data.cache import prepare_cache
    from .io import check_writable_dir

    PrepareOptions.check(size=size)
    check_writable_dir(out, "--out")  # before reading the dataset
    opts = option_values(option)
    from .data.sources import option_spec

    table = option_spec(dataset, opts).load()  # one line naming the key (--option root: folder ... does not exist)
    index = prepare_cache(table, out, size=size, overwrite=overwrite)
    console.print(f"cached {len(table)} images of {dataset} at {size}px in {out}; {len(index['skipped'])} skipped")
    for i, why in list(index["skipped"].items())[:20]:
        err_console.print(f"  skipped: {why}", highlight=False)


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_cmd(args: list[str] = typer.Argument(None, help="key=value settings: preset=xlip scale=tiny config=file.yaml train.lr=1e-4 ... (config= also takes a config shipped with maskkit by name: xlip_paper_corpus)")) -> None:
    """Pretrain: resolve preset -> config file -> key=value, then run the training recipe.

    Exit status: 0 done; 2 bad input or a run that cannot go on (one line); 3 trained and saved, but an
    end-of-run evaluation (runtime.evaluations) failed: each failure is a warning line, the others are
    written, and a last line names them; 75 stopped by SIGTERM,
    SIGUSR1 or SIGUSR2 after writing the checkpoint of its current step (or before step 1, with
    nothing to save): run the same command with runtime.resume=auto or latest (docs/distributed.md
    has a SLURM requeue script); 130 stopped by SIGINT (Ctrl-C) the same way."""
    import os

    from .config import resolve

    # a stop signal before the recipe installs its own handler: main()'s, one line (_stopped_line)
    cfg, sources = resolve(list(args or []))
    from .distributed import under_torchrun  # (imports torch: after the config's one-line errors)
    from .io import check_writable_dir

    check_writable_dir(cfg.runtime.out_dir, "runtime.out_dir")  # before torch is imported or processes started
    if cfg.runtime.devices > 1 and not under_torchrun():
        from .data.build import load_records

        load_records(cfg)  # a bad data.path / data.root fails here, in one line, before any process starts
        cmd = [sys.executable, "-m", "maskkit.launch", "--standalone", f"--nproc_per_node={cfg.runtime.devices}",
               "-m", "maskkit.cli", *(["--debug"] if _state["debug"] else []), "run", *(args or [])]
        err_console.print(f"launching {cfg.runtime.devices} processes with torchrun", highlight=False)
        rc = _run_forwarding(cmd)
        if rc < 0:  # the launcher itself was killed (by the OOM killer, SIGKILL): it said nothing
            import signal

            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else f"signal {-rc}"
            err = MaskkitError(f"the torchrun launcher was killed by {name} (the OOM killer sends SIGKILL): "
                               f"its processes ended without a word; resume with runtime.resume=latest")
            err.exit_code = 128 - rc
            raise err
        raise typer.Exit(rc)
    from .train import train

    result = train(cfg, sources, console=err_console)
    if os.environ.get("RANK", "0") != "0":
        return
    console.print(f"run directory: {result.run_dir}  (step {result.step})", highlight=False)
    for res in result.evaluations.values():  # runtime.evaluations, each written to <run>/<name>.json
        for t in res.shown_tables():
            console.print(t)
        for line in res.notes:
            err_console.print(f"note: {escape(line)}", highlight=False, soft_wrap=True)
        for line in res.warnings:
            err_console.print(f"warning: {escape(line)}", highlight=False, soft_wrap=True)
    if result.failed_evaluations:  # the run is trained and saved; what failed is said, and the exit status says it
        names = list(result.failed_evaluations)
        err = MaskkitError(f"training done and saved ({result.run_dir}, step {result.step}), but {len(names)} of the "
                           f"{len(cfg.runtime.evaluations)} end-of-run evaluations failed: "
                           + "; ".join(result.failed_evaluations.values())
                           + "; the others were written; run " + ("it" if len(names) == 1 else "them") + " again with "
                           + " and ".join(f"maskkit eval {n} {result.run_dir}" for n in names))
        err.exit_code = EVALUATION_FAILED
        raise err


def _run_forwarding(cmd: list[str]) -> int:
    """Run ``cmd`` (``python -m maskkit.launch ...``) and pass every stop signal this process gets on
    to it (whose agent passes it to the workers, which checkpoint); returns its exit status. A
    signal that comes while it is being started is passed on once it exists."""
    import os
    import signal
    import subprocess

    from .training.preemption import STOP_SIGNALS

    box: dict = {"proc": None, "pending": []}

    def forward(signum, frame):
        if box["proc"] is None:
            box["pending"].append(signum)
        else:
            box["proc"].send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        proc = subprocess.Popen(cmd, env=os.environ.copy())
        box["proc"] = proc
        for signum in box["pending"]:
            proc.send_signal(signum)
        return proc.wait()
    finally:  # called in a Python process (a test): its handlers as they were, not a forward to a process that ended
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


@app.command("export")
def export_cmd(
    run: str = typer.Argument(..., help="a run directory (its latest checkpoint) or a checkpoint file"),
    fmt: str = typer.Option(..., "--format", help="open_clip (open_clip's HF-hub folder: both towers) or timm (the image tower as a timm ViT)"),
    out: str = typer.Option(..., "--out", help="folder to create (must not exist or be empty unless --overwrite)"),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder (after the new one is complete)."),
) -> None:
    """Write a run's towers in a layout open_clip or timm loads without maskkit, with a model card (README.md).

    The folder is checked before it appears: open_clip / timm load it and compute maskkit's embeddings
    (max abs difference at most 1e-5). Runs with a convolutional stem (model.patch_embed=conv_stem, the
    tiny scale's default) are refused: neither library's plain ViT has one (docs/model.md, "Export")."""
    from .export import export

    done = export(run, fmt, out, overwrite=overwrite)
    diffs = ", ".join(f"{k} {v:.1e}" for k, v in done.max_diff.items())
    console.print(f"wrote {done.path} ({fmt}: {', '.join(done.files)}); load-back check: max abs diff {diffs}", highlight=False)


config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def config_show_cmd(
    args: list[str] = typer.Argument(None, help="the same key=value settings maskkit run takes"),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved config as JSON."),
) -> None:
    """Print the resolved config and where each value came from (default, scale, preset, file, cli)."""
    from .config import resolve, show_rows

    cfg, sources = resolve(list(args or []))
    if as_json:
        print(json.dumps({"config": cfg.model_dump(mode="json"), "sources": sources}, indent=2))
        return
    table = Table(title=f"resolved config (preset={cfg.preset}, scale={cfg.scale})")
    for col in ("key", "value", "source"):
        table.add_column(col, overflow="fold")
    for key, value, src in show_rows(cfg, sources):
        table.add_row(key, json.dumps(value), src)
    console.print(table)


from .evalcli import EvalGroup, idset_cmd  # noqa: E402  (imports no torch)

eval_app = typer.Typer(cls=EvalGroup, no_args_is_help=True,
                       help="Evaluate a run: `maskkit eval NAME RUN [data.* settings] [--options]` for every registered "
                            "evaluation (built-ins and plugins'; docs/eval.md).")
app.add_typer(eval_app, name="eval")
app.command("idset")(idset_cmd)


_SETTING = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=")


def _split_targets(items: list[str] | None, what: str, required: bool = True) -> tuple[list[str], list[str]]:
    """(paths, ``key=value`` settings) of a command's positional arguments. A setting starts with a
    dotted key (``data.root=...``); anything else, and anything that exists on disk, is a path, so
    a sweep's run directory such as ``runs/xlip-entity.ratio=0.2-seed0`` stays a path. Raises a
    one-line error when ``required`` and no path is given."""
    from pathlib import Path

    paths, settings = [], []
    for it in items or []:
        (settings if _SETTING.match(it) and not Path(it).exists() else paths).append(it)
    if required and not paths:
        raise MaskkitError(f"{what}: give a run directory or checkpoint file first (got only settings, none of them an "
                           f"existing file or folder: {' '.join(settings)})")
    return paths, settings


def _data_settings(settings: list[str], what: str) -> list[str]:
    """The ``data.*`` settings of an evaluation command; any other setting is refused in one line
    (evaluation reads only which data to use; a mistyped checkpoint path lands here too)."""
    for it in settings:
        if not it.startswith(("data.", "data=")):
            raise MaskkitError(f"{what}: {it!r} is not an existing run directory or checkpoint, nor a data.* setting "
                               "(evaluation takes only data.* settings)")
    return settings


def _say_data(what: dict | str) -> None:
    """Print which data and split a command read (:func:`maskkit.data.build.data_line`): every
    command that evaluates a run or draws samples from it says it the same way."""
    from .data.build import data_line

    console.print(data_line(what), highlight=False, soft_wrap=True)


def _eval_data(path: str, model, run_cfg, args: list[str], held_out_ner: bool = False):
    """(held-out dataset, label names, config, what) an evaluation reads: the run's own data and
    split by default (verified against its split.json), or the explicit data.* settings
    (:func:`maskkit.data.build.eval_corpus`); ``what`` names the data and split in the result."""
    from .data.build import eval_corpus

    cfg, corpus, what = eval_corpus(path, run_cfg, model.image_size, args, held_out_ner=held_out_ner)
    if corpus.val is None or len(corpus.val) == 0:
        raise MaskkitError(f"the evaluation split is empty: {corpus.empty_held_out_line()}")
    return corpus.val, corpus.label_names, cfg, what


@app.command("sweep", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep_cmd(
    spec: list[str] = typer.Argument(None, help=f"a built-in sweep ({', '.join(builtin_sweeps())}) or a YAML file, then key=value settings for every run"),
    presets: Optional[str] = typer.Option(None, help="comma-separated presets (instead of a sweep file, or in place of its presets)"),
    grid: list[str] = typer.Option([], "--grid", help="KEY=v1,v2,... (repeatable): a grid of overrides"),
    seeds: Optional[str] = typer.Option(None, help="comma-separated seeds (default: the sweep's); " + allowed(SweepOptions, "seeds")),
    out: str = typer.Option("sweeps", help="sweep folder (resumable: finished runs are kept)"),
    jobs: int = typer.Option(1, help="runs at once (subprocesses; CPU threads are shared out); " + allowed(SweepOptions, "jobs")),
    align_steps: Optional[int] = typer.Option(None, help="budget-matched: every run gets this many alignment steps, warm-up on top; " + allowed(SweepOptions, "align_steps")),
    probe: bool = typer.Option(False, help="also a linear probe at 1/10/100% of the labels per run"),
    rescore: bool = typer.Option(False, help="score the zero-shot of runs done before again with the current protocol (no retraining)"),
    metrics: Optional[str] = typer.Option(None, help="comma-separated metric keys or wildcards for results.md and paired.md, e.g. "
                                                     "'auc,retrieval/*_R@1' (default: the sweep's metrics:, else the zero-shot means and probe AUCs)"),
) -> None:
    """Run presets x grid x seeds, each in its own run directory; write results.csv/.md/.png and paired.md.

    Exit status: 0 done; 2 bad input (one line); 3 every run trained and saved, but an end-of-run
    evaluation (runtime.evaluations) of some run failed: results.md lists them, and the same command
    retries them without retraining; 75 / 130 stopped by a signal (the same command continues)."""
    from pathlib import Path

    from .sweep import SweepSpec, load_sweep, parse_grid, run_sweep

    seed_list = None
    if seeds:
        try:
            seed_list = [int(x) for x in seeds.split(",")]
        except ValueError:
            from .options import OptionValueError

            raise OptionValueError(f"--seeds {seeds}: expected comma-separated {allowed(SweepOptions, 'seeds')}") from None
    SweepOptions.check(jobs=jobs, align_steps=align_steps, seeds=seed_list)  # before any work
    names, extra = _split_targets(spec, "sweep", required=False)
    if names:
        sp = load_sweep(names[0])
        out_dir = Path(out) / Path(names[0]).stem if out == "sweeps" else Path(out)
    else:
        if not presets and not grid:
            raise MaskkitError("maskkit sweep needs a sweep name/file, --presets or --grid" + (
                f" (took {' '.join(extra)} as settings: a sweep file's path must exist)" if extra else ""))
        sp = SweepSpec((presets or "xlip").split(","))
        out_dir = Path(out)
    if presets and names:  # over the sweep file's, as --seeds and --align-steps are
        sp.presets = [p.strip() for p in presets.split(",") if p.strip()]
    if grid:
        sp.grid.update(parse_grid(grid))
    if seed_list:
        sp.seeds = seed_list
    if align_steps is not None:
        sp.align_steps = align_steps
    sp.probe = sp.probe or probe
    if metrics:
        sp.metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    from .io import check_writable_dir

    check_writable_dir(out_dir, "--out")  # before any run starts
    from .sweep import EvaluationsFailed

    try:
        run_sweep(sp, out_dir, extra, console=err_console, jobs=jobs, rescore=rescore)
    except EvaluationsFailed:  # every run trained; the table (naming what failed) still shown, then exit 3
        console.print((out_dir / "results.md").read_text(), highlight=False)
        raise
    console.print((out_dir / "results.md").read_text(), highlight=False)


viz_app = typer.Typer(help="Figures: mask overlays, entity highlighting, training curves.", no_args_is_help=True)
app.add_typer(viz_app, name="visualize")


def _adapter_load(name: str):
    """The load function of the registered dataset ``name``."""
    from .data.adapters import get_adapter

    return get_adapter(name).load


def _viz_batch(path: str, model, run_cfg, images: list[str], reports: list[str], args: list[str], n: int, index: int):
    """(a collated batch, what data it is) from image files (+ report files) or from a dataset: the
    run's held-out split by default, or the data.* settings' held-out part (:func:`_eval_data`)."""
    from pathlib import Path

    from .data.dataset import Collator, XrayDataset
    from .data.ner import CachedNER, LexiconNER
    from .data.records import Record, Table

    _data_settings(args, "visualize")
    if images and args:
        raise MaskkitError(f"visualize: {args[0]!r}: data.* settings choose a dataset, and --images replaces it; give one or the other")
    if images:
        if reports and len(reports) != len(images):
            raise MaskkitError(f"--reports: {len(reports)} files for {len(images)} images; give one per image or none")
        from .io import read_text

        recs = [Record(Path(p).name, str(p), read_text(reports[i]) if reports else None)
                for i, p in enumerate(images)]
        ds = XrayDataset(Table("files", recs, ()), model.image_size, policy="raise", ner=CachedNER(LexiconNER()))
        items = [ds[i] for i in range(len(ds))]
        what = f"the {len(images)} --images file{'s' if len(images) != 1 else ''} given (not the run's data)"
    else:
        ds, _, _, what = _eval_data(path, model, run_cfg, args, held_out_ner=True)
        if index + n > len(ds):
            raise MaskkitError(f"--index {index} --n {n}: the held-out set has {len(ds)} samples")
        items = [ds[i] for i in range(index, index + n)]
    return Collator(model.tokenizer)([s for s in items if "image" in s]), what


def _checkpoint_step(path: str) -> int | None:
    """The step of the checkpoint ``load_model`` reads from a run directory or checkpoint file."""
    import re

    from .training.checkpointing import checkpoint_file

    m = re.match(r"step_(\d+)\.pt$", checkpoint_file(path).name)
    return int(m.group(1)) if m else None


def _check_trained_step(path: str, step: int) -> None:
    """``--step`` must be a step the run trained (1 to the last one logged in its metrics.jsonl or
    checkpointed); one line naming them otherwise."""
    from .data.build import run_dir_of
    from .training.checkpointing import run_checkpoints

    run = run_dir_of(path)
    done = [int(c.stem.split("_")[1]) for c in run_checkpoints(run)]
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                s = json.loads(line).get("step")
            except (ValueError, AttributeError):
                continue
            if isinstance(s, int):
                done.append(s)
    last = max(done, default=None)
    if last is not None and step > last:
        raise MaskkitError(f"visualize masks --step {step}: run {run} trained steps 1 to {last} "
                           f"(its metrics.jsonl and checkpoints); give --step between 1 and {last}")


@viz_app.command("masks", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def viz_masks_cmd(
    checkpoint: list[str] = typer.Argument(..., help="a run directory or checkpoint, then optional data.* settings (default: the run's held-out split)"),
    images: list[str] = typer.Option([], "--images", help="image files to draw (repeatable)"),
    reports: list[str] = typer.Option([], "--reports", help="report text files, one per image"),
    n: int = typer.Option(4, help="samples from the held-out split (when no --images); " + allowed(VisualizeOptions, "n")),
    index: int = typer.Option(0, help=option_help(VisualizeOptions, "index")),
    seed: int = typer.Option(0, help="mask seed (ignored with --step); " + allowed(VisualizeOptions, "seed")),
    step: Optional[int] = typer.Option(None, help=option_help(VisualizeOptions, "step")),
    micro: int = typer.Option(0, help=option_help(VisualizeOptions, "micro")),
    out: str = typer.Option("viz", help="output folder: masks.png and masks.html"),
) -> None:
    """Per image: the X-ray, then each strategy's attention heat map and mask (lesion outlines on phantoms).

    With ``--step K`` the figure shows the first ``--n`` samples of the batch training read at step
    K and the masks it drew there (the same sampler and mask seed); attention-guided masks equal
    training's when the checkpoint holds the weights before step K (``step_<K-1>``)."""
    from pathlib import Path

    from .io import atomic_write_text, check_writable_dir
    from .train import training_batch
    from .training.checkpointing import load_model
    from .viz import composite, html_page, png_data_uri, sample_views, save_png, text_html

    VisualizeOptions.check(n=n, index=index, seed=seed, step=step, micro=micro)
    check_writable_dir(out, "--out")  # before the model is loaded
    paths, settings = _split_targets(checkpoint, "visualize masks")
    if step is not None:
        _check_trained_step(paths[0], step)  # before the model is loaded
    model, run_cfg = load_model(paths[0])
    if step is not None:
        if settings or images:
            raise MaskkitError(f"visualize masks --step {step}: draws the batch training read at that step; "
                               f"{'--images' if images else repr(settings[0])} chooses other data, give one or the other")
        from .data.build import run_dir_of
        from .data.sources import source_specs

        batch, seed = training_batch(run_cfg, model, step, micro)
        what = (f"the training batch of step {step} (micro-batch {micro}) of run {run_dir_of(paths[0])} "
                f"({' + '.join(s.describe() for s in source_specs(run_cfg.data))}; the run's training split)")
        ck_step = _checkpoint_step(paths[0])
        if ck_step is not None and ck_step != step - 1 and model.image_mask is not None:
            err_console.print(f"note: weights from step {ck_step}; attention-guided masks equal training's with the checkpoint "
                              f"of step {step - 1} (random draws are identical either way)", highlight=False, soft_wrap=True)
    else:
        batch, what = _viz_batch(paths[0], model, run_cfg, images, reports, settings, n, index)
    views = sample_views(model, batch, seed=seed, rows=n if step is not None else None)
    arr = composite(views, model.patch)
    o = Path(out)
    save_png(arr, o / "masks.png")
    sections = []
    for v, rep, ents in zip(views, batch["reports"], batch["entity_spans"]):
        body = f"<img src='{png_data_uri(composite([v], model.patch))}'>"
        if rep:
            body += text_html(rep, [(s, e, "") for s, e in ents], [])
        sections.append((v.id, body))
    atomic_write_text(o / "masks.html", html_page("maskkit: AttMIM masks", sections))
    console.print(f"wrote {o / 'masks.png'} and {o / 'masks.html'} ({len(views)} images)")
    _say_data(what)


@viz_app.command("text", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def viz_text_cmd(
    checkpoint: list[str] = typer.Argument(..., help="a run directory or checkpoint, then optional data.* settings (default: the run's held-out split)"),
    images: list[str] = typer.Option([], "--images", help="image files (repeatable)"),
    reports: list[str] = typer.Option([], "--reports", help="report text files, one per image"),
    n: int = typer.Option(3, help="samples from the dataset (when no --images); " + allowed(VisualizeOptions, "n")),
    index: int = typer.Option(0, help=option_help(VisualizeOptions, "index")),
    seed: int = typer.Option(0, help=option_help(VisualizeOptions, "seed")),
    out: str = typer.Option("viz", help="output folder for text.html"),
) -> None:
    """Reports with NER entities, the EntMLM-masked words, and the decoder's reconstruction of them."""
    from pathlib import Path

    from .data.ner import LexiconNER
    from .io import atomic_write_text, check_writable_dir
    from .model.xlip import reconstruct_text
    from .training.checkpointing import load_model
    from .viz import html_page, text_html, text_spans, text_terminal

    VisualizeOptions.check(n=n, index=index, seed=seed)
    check_writable_dir(out, "--out")  # before the model is loaded
    paths, settings = _split_targets(checkpoint, "visualize text")
    model, run_cfg = load_model(paths[0])
    batch, what = _viz_batch(paths[0], model, run_cfg, images, reports, settings, n, index)
    ner = LexiconNER()
    recon = {r["index"]: r for r in reconstruct_text(model, batch, seed)} if model.text_decoder is not None else {}
    sections = []
    for i, rep in enumerate(batch["reports"]):
        if not rep:
            continue
        ents, chosen = text_spans(model.tokenizer, rep, ner([rep])[0], recon.get(i))
        console.rule(batch["ids"][i])
        console.print(text_terminal(rep, ents, chosen))
        sections.append((batch["ids"][i], text_html(rep, ents, chosen)))
    if not sections:
        raise MaskkitError("no sample with a report to show")
    atomic_write_text(Path(out) / "text.html", html_page("maskkit: EntMLM", sections))
    console.print(f"wrote {Path(out) / 'text.html'}")
    _say_data(what)


@viz_app.command("run")
def viz_run_cmd(
    path: str = typer.Argument(..., help="a run directory (loss curves) or a sweep directory (AUC/F1 vs ratios)"),
    out: Optional[str] = typer.Option(None, help="PNG file (default: PATH/curves.png or PATH/sweep.png)"),
) -> None:
    """Training curves of a run (warm-up boundary marked, samples/s) or the plots of a sweep."""
    from pathlib import Path

    from .io import check_writable_file
    from .viz import sweep_figure, training_curves

    p = Path(path)
    sweep = (p / "results.csv").is_file()
    target = Path(out) if out else p / ("sweep.png" if sweep else "curves.png")
    if out or p.is_dir():  # (a PATH that is no run is said by training_curves)
        check_writable_file(target, "--out" if out else "the figure")
    fig = sweep_figure(p) if sweep else training_curves(p)
    buf = __import__("io").BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    from .io import atomic_write_bytes

    atomic_write_bytes(target, buf.getvalue())
    console.print(f"wrote {target}")


def option_values(items: list[str]) -> dict:
    """``--option KEY=VALUE`` items as a dict: each value parsed as JSON when it is JSON
    (numbers, lists, true/false), else kept as text. Raises MaskkitError (one line) for an item
    without ``=``."""
    opts: dict = {}
    for item in items:
        if "=" not in item:
            raise MaskkitError(f"--option {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            opts[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            opts[k.strip()] = v
    return opts


def _one_line_warnings() -> None:
    """Print each :class:`~maskkit.errors.MaskkitWarning` as one line ``warning: ...`` (on rank 0
    under torchrun); other warnings as Python prints them."""
    import os
    import warnings

    from .errors import MaskkitWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, MaskkitWarning):
            return shown(message, category, filename, lineno, file, line)
        if os.environ.get("RANK", "0") == "0":
            err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)

    warnings.showwarning = show


def _stopped_line(exc) -> str:
    """The line of a command stopped by a signal outside a run's recipe (which says its own)."""
    words = [a for a in sys.argv[1:] if not a.startswith("-")]
    how = f"{exc.name}{' (again: at once)' if exc.again else ''}"
    if words[:1] == ["run"]:
        return f"stopped by {how} before step 1 (reading the config): nothing to save, nothing written; run the same command again"
    groups = {g.name for g in app.registered_groups}  # eval, config, visualize: their subcommand too
    cmd = " ".join(words[:2] if words[:1] and words[0] in groups else words[:1]) or "the command"
    return (f"stopped by {how} before `maskkit {cmd}` finished: each file it writes is written whole or not at all "
            "(atomically), so none is half-written; run the same command again")


def failure_line(exc: BaseException) -> tuple[str, int, bool] | None:
    """(one line, exit status, whether only this rank sees it) for a failure the CLI reports without a
    traceback, or None (a bug: the traceback is shown). The root cause is looked for through
    ``__cause__`` / ``__context__`` (:func:`~maskkit.errors.exception_chain`), since a library may
    raise its own error over it (torch's checkpoint writer: ``unexpected pos`` over a full disk's
    ``OSError`` or over a signal's :class:`~maskkit.training.preemption.Stopped`):

    - a stop signal (:class:`~maskkit.training.preemption.Stopped`): 75 / 130 (:func:`_stopped_line`);
    - a :class:`~maskkit.errors.MaskkitError`: its message, its ``exit_code`` (2 unless it says otherwise);
    - an ``OSError`` (a file that cannot be read or written: the file and the OS's reason): 2.
    """
    from .errors import exception_chain, os_error_line
    from .training.preemption import Stopped

    for e in exception_chain(exc):  # the outermost of these kinds
        if isinstance(e, Stopped):
            return _stopped_line(e), e.exit_code, False
        if isinstance(e, MaskkitError):
            return str(e), getattr(e, "exit_code", 2), bool(getattr(e, "rank_local", False))
        if isinstance(e, OSError):
            return os_error_line(e), 2, False
    return None


def _where(exc: BaseException) -> str:
    """``file.py:123`` of the innermost frame ``exc`` was raised in ("" without a traceback)."""
    import traceback
    from pathlib import Path

    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    return f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""


def abort_line(exc: BaseException) -> tuple[str, int]:
    """(one line, exit status) of click's ``Abort``: what it stands for (``__cause__``), where it was
    raised. A ``KeyboardInterrupt`` (not the CLI's SIGINT handler's stop: an interrupt raised some
    other way) exits 130; an ``EOFError`` (input ended) and anything else 1. It used to exit 1 with
    no line at all."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, KeyboardInterrupt):
        return f"interrupted (KeyboardInterrupt{_where(cause)}): nothing more was done; run the same command again", 130
    if isinstance(cause, EOFError):
        return f"input ended (EOFError{_where(cause)}{': ' + str(cause) if str(cause) else ''})", 1
    return f"aborted ({type(cause or exc).__name__}{_where(cause or exc)})", 1


def silent_exit_line(raised: BaseException | None, code) -> str | None:
    """The line for an exit that would otherwise say nothing, from the error the command raised
    (``raised``, recorded by :func:`_invoke_app`): typer ends a command whose write hit a closed pipe
    (``EPIPE``: a child process, a socket, a stream that ended) with ``sys.exit(1)``, and one that
    raised ``KeyboardInterrupt`` (an interrupt that is not the stop handler's: raised some other way)
    with exit 130, both without a word, even outside its standalone mode. None for every other exit
    (each says its own)."""
    import errno

    if not code or raised is None:
        return None
    if isinstance(raised, OSError) and raised.errno == errno.EPIPE:
        return (f"broken pipe ({type(raised).__name__}{_where(raised)}: {raised.strerror or raised}): something this "
                f"command wrote to was closed")
    if isinstance(raised, KeyboardInterrupt):
        return f"interrupted (KeyboardInterrupt{_where(raised)}): nothing more was done; run the same command again"
    return None


def _invoke_app():
    """``app(standalone_mode=False)``, recording the exception a command raised (``_state["raised"]``)
    before typer turns it into a bare exit status (:func:`silent_exit_line`)."""
    command = typer.main.get_command(app)
    inner = command.invoke

    def invoke(ctx):
        try:
            return inner(ctx)
        except BaseException as exc:
            _state["raised"] = exc
            raise

    command.invoke = invoke
    _state["raised"] = None
    return command(standalone_mode=False)


def _say(line: str, rank_prefix: str = "") -> None:
    """Print ``error: LINE`` on stderr; if the console cannot (a stderr pipe that is full and
    non-blocking under load raises ``BlockingIOError``; a logging failure), straight to file
    descriptor 2, retried for up to a second: the one line of a failing command is never lost to
    the failure of printing it (that exited 1 with no output)."""
    import os
    import time

    try:
        err_console.print(f"[red]error:[/] {rank_prefix}{escape(line)}", highlight=False, soft_wrap=True)
        return
    except Exception:
        pass
    data = f"error: {rank_prefix}{line}\n".encode(errors="replace")
    deadline = time.monotonic() + 1.0
    while data:
        try:
            data = data[os.write(2, data):]
        except BlockingIOError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        except OSError:
            return


def reflow(text: str) -> str:
    """A help text with each paragraph on one line (list items, ``- `` / ``* `` / ``1. ``, each
    on its own; a paragraph starting with click's ``\\b`` kept as written). typer's rich help keeps
    a docstring's single line breaks after the first paragraph, so a hard-wrapped docstring would
    break mid-sentence ("stopped by SIGTERM,⏎ SIGUSR1") at any terminal width; rich wraps the
    paragraphs at the terminal's instead."""
    import inspect

    out = []
    for para in inspect.cleandoc(text).split("\n\n"):
        if para.startswith("\b"):
            out.append(para)
            continue
        lines: list[str] = []
        for line in para.split("\n"):
            if lines and not re.match(r"\s*([-*]|\d+\.) ", line):
                lines[-1] += " " + line.strip()
            else:
                lines.append(line.strip())
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _reflow_help(t: typer.Typer) -> None:
    """:func:`reflow` the help of every command and group of ``t`` (its docstring when no
    ``help=`` was given), recursively; run once, after every command is registered."""
    import inspect

    for c in t.registered_commands:
        doc = c.help or inspect.getdoc(c.callback)
        if doc:
            c.help = reflow(doc)
    for g in t.registered_groups:
        if g.typer_instance.info.help:
            g.typer_instance.info.help = reflow(g.typer_instance.info.help)
        _reflow_help(g.typer_instance)


_reflow_help(app)


def main() -> None:
    """The ``maskkit`` command: one-line errors and the exit status (``sys.exit``). The stop-signal
    handlers are the entry point's (installed before the slow imports); ``main()`` called from
    Python installs them itself and puts the process's own back when it returns, however it returns."""
    from .training import preemption

    entry_point = preemption._CLI_REQUEST is not None  # the maskkit script / python -m: the process ends with main()
    stop = preemption.cli_stop_request()  # installed first thing by the entry point (maskkit.__main__) or python -m maskkit.cli; else here
    try:
        _main(stop)
    finally:
        if not entry_point:
            preemption.release_cli_stop_request()


def _main(stop) -> None:
    import os
    import warnings

    from .errors import LabelCoverageWarning
    from .streams import survive_closed_streams

    survive_closed_streams()  # `maskkit run ... | head -1`: output to a closed pipe is dropped, the command goes on
    warnings.filterwarnings("ignore", category=LabelCoverageWarning)  # the CLI prints them under its tables, once
    _one_line_warnings()
    try:
        stop.act_now()  # a signal during the imports stops here; from here on at once
        rc = _invoke_app()  # click returns a command's typer.Exit code instead of exiting
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        silent = silent_exit_line(_state.get("raised"), code)
        if silent is not None and os.environ.get("RANK", "0") == "0":  # typer's own exit over a KeyboardInterrupt (130) or a broken pipe (1)
            _say(silent)
        sys.exit(code)
    except BaseException as exc:
        if _state["debug"]:
            raise
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()  # click's ClickException protocol (of click or of the click typer vendors): a one-line usage error
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":  # click's word for a KeyboardInterrupt or an EOFError in the command
            line, code = abort_line(exc)
            if os.environ.get("RANK", "0") == "0":
                _say(line)
            sys.exit(code)
        failed = failure_line(exc)
        if failed is None:
            raise  # a bug: the traceback
        line, code, rank_local = failed
        rank = os.environ.get("RANK", "0")
        if rank == "0":  # under torchrun every rank fails alike: one line, from rank 0
            _say(line)
        elif rank_local:  # ... except what only one rank sees (its loader worker died)
            _say(line, f"rank {rank}: ")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # a torchrun worker leaves at once: finalising the interpreter beside the backend's threads
            # can abort it ("terminate called ..."), which would hide this exit status
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)


if __name__ == "__main__":
    main()
