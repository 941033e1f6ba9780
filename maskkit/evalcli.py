"""``maskkit eval NAME RUN [settings]``: one command per registered evaluation, made from the registry.

The ``eval`` group lists the evaluations the registry holds when it is asked (``maskkit eval
--help``; a plugin's evaluation appears beside the built-ins, with its description) and builds each
command from its settings model: every field is an option ``--field-name`` (a list field is
repeatable, a bool one is ``--x/--no-x``, a field may name its flag with ``json_schema_extra={"flag":
...}``), with the field's description, range and default as its help. Values are checked by the
settings model before any work (one line naming the option). Then the command loads the run(s),
evaluates, prints the result's tables, the ``data:`` line and warnings, and writes the result
(``--out``, :meth:`maskkit.eval.contract.EvalResult.write`).

Also here: ``maskkit idset``, which writes a 5x200 id set from an adapter (:mod:`maskkit.eval.subsets`).
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Optional

import typer
from typer.core import TyperGroup

from .errors import MaskkitError
from .eval.contract import flag_of  # noqa: F401  (the option name of a settings field: one definition)

#: command-line names an evaluation's settings cannot take (the command's own)
RESERVED = ("out", "help")


def _click():
    """The click that typer's commands are made of (typer >= 0.20 vendors one as ``typer._click``)."""
    import typer.core as core

    return getattr(core, "_click", None) or __import__("click")


def option_text(model, name: str) -> str:
    """An option's help: the field's description, what it accepts (numbers, choices) and its default."""
    from .options import allowed, field_default

    f = model.model_fields[name]
    parts = [f.description or ""]
    try:
        what = allowed(model, name)
    except Exception:  # a plugin's type allowed() does not know
        what = "a value"
    if what not in ("a value", "values"):
        parts.append(what)
    if not f.is_required():
        d = field_default(f)
        shown = (", ".join(map(str, d)) or "[]") if isinstance(d, (list, tuple)) else d  # an empty list is [], not none
        parts.append(f"default: {'none' if shown in (None, '') else shown}")
    return "; ".join(p for p in parts if p)


def metavar_of(annotation) -> str:
    """``INTEGER`` / ``NUMBER`` / ``[a|b]`` / ``TEXT`` for a settings field (a list: its items')."""
    ann = annotation
    for _ in range(3):  # Optional[...], list[...], Annotated[...]
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        origin = typing.get_origin(ann)
        if origin is typing.Literal:
            return "[" + "|".join(map(str, typing.get_args(ann))) + "]"
        if origin is typing.Annotated or origin in (list, tuple, set) or (args and len(args) == 1):
            ann = args[0] if args else ann
            continue
        break
    return {int: "INTEGER", float: "NUMBER", bool: ""}.get(ann, "TEXT")


def evaluation_command(ev):
    """The click command of evaluation ``ev`` (:class:`maskkit.eval.contract.Evaluation`), made
    with typer from a function whose signature is built from ``ev.settings``."""
    from .eval.contract import is_bool, is_list

    P = inspect.Parameter
    params = [P("eval_targets", P.KEYWORD_ONLY, annotation=list[str], default=typer.Argument(
        ..., metavar="RUN" + (" [RUN ...]" if ev.ensemble else "") + " [data.KEY=VALUE ...]",
        help=("run directories or checkpoint files (several: an ensemble)" if ev.ensemble else "a run directory or checkpoint file")
        + ", then data.* settings (default: the run's own data and held-out split, checked against its split.json)"))]
    names: dict[str, str] = {}
    for name, f in ev.settings.model_fields.items():
        flag = flag_of(name, f)
        py = f"s_{name}"
        names[py] = name
        h = option_text(ev.settings, name)
        if is_bool(f.annotation):
            opt, ann = typer.Option(None, f"--{flag}/--no-{flag}", help=h, show_default=False), Optional[bool]
        elif is_list(f.annotation):
            h = h if "repeatable" in h else h + " (repeatable)"
            opt = typer.Option(None, f"--{flag}", help=h, show_default=False, metavar=metavar_of(f.annotation))
            ann = Optional[list[str]]
        else:
            opt = typer.Option(None, f"--{flag}", help=h, show_default=False, metavar=metavar_of(f.annotation))
            ann = Optional[str]
        params.append(P(py, P.KEYWORD_ONLY, annotation=ann, default=opt))
    out_help = ("write the result here: a folder (" + ev.name + ".json, " + ev.name + ".csv and the evaluation's own files) "
                "or FILE.json (FILE.csv and the evaluation's own files in FILE/ beside it)"
                + (f"; default: {ev.out}" if ev.out else "; default: nothing written"))
    params.append(P("eval_out", P.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(ev.out, "--out", help=out_help,
                                                                                               show_default=False, metavar="PATH")))

    def command(**kw: Any) -> None:
        values = {}
        for py, name in names.items():
            v = kw.get(py)
            if v is None or (isinstance(v, (list, tuple)) and not v):
                continue
            values[name] = list(v) if isinstance(v, (list, tuple)) else v
        run_evaluation(ev, kw["eval_targets"], values, kw["eval_out"])

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = f"eval_{ev.name}"
    sub = typer.Typer(add_completion=False)
    sub.command(ev.name, help=f"{ev.description}\n\n(evaluation from {ev.source}; docs/eval.md)", short_help=ev.description)(command)
    return typer.main.get_command(sub)


def run_evaluation(ev, targets: list[str], values: dict[str, Any], out: str | None) -> Any:
    """What ``maskkit eval NAME`` does: settings checked first (one line, nothing loaded), then the
    run(s) loaded, evaluated, printed and written; returns the :class:`~maskkit.eval.contract.EvalResult`."""
    from .cli import _data_settings, _say_data, _split_targets, console, err_console
    from .eval.contract import EvalRun

    settings = ev.parse(values, style="--")  # before any work
    paths, data = _split_targets(list(targets), f"eval {ev.name}")
    _data_settings(data, f"eval {ev.name}")
    if len(paths) > 1 and not ev.ensemble:
        raise MaskkitError(f"eval {ev.name} takes one checkpoint, got {len(paths)}: {' '.join(paths)}")
    from pathlib import Path

    from .io import check_writable_dir, check_writable_file

    for folder, option in getattr(settings, "output_folders", lambda: [])():  # other folders it writes (--splits)
        check_writable_dir(folder, option)
    if out:  # before the run is loaded: a folder, or a .json file and the folder of its own files (output_layout)
        from .eval.contract import output_layout

        js, _, own = output_layout(out, ev.name)
        if js == Path(out):  # --out FILE.json
            check_writable_file(out, "--out")
        check_writable_dir(own, "--out")
    from .plugins import get_registry

    ev = get_registry().evaluation(ev.name)  # the whole registry runs things (a plugin with a failed hook is undone)
    run = EvalRun.load(paths, data, out=out)
    from .errors import SettingValueError

    try:
        res = ev(run, settings)
    except SettingValueError as exc:  # a value only the data refuses: named as the option typed
        f = ev.settings.model_fields.get(exc.setting)
        if f is None:
            raise
        raise exc.as_option(flag_of(exc.setting, f)) from None
    for t in res.shown_tables():  # its tables, or its flat metrics as one
        console.print(t)
    if res.data is not None:
        _say_data(res.data)
    from rich.markup import escape

    for line in res.notes:
        err_console.print(f"note: {escape(line)}", highlight=False, soft_wrap=True)
    for line in res.warnings:
        err_console.print(f"warning: {escape(line)}", highlight=False, soft_wrap=True)
    if out:
        res.write(out)
    return res


class EvalGroup(TyperGroup):
    """The ``eval`` group: its commands are the registered evaluations, looked up when asked."""

    def list_commands(self, ctx) -> list[str]:
        from .plugins import get_registry

        return sorted(get_registry("evaluation").evaluations)

    def get_command(self, ctx, cmd_name: str):
        from .plugins import get_registry

        ev = get_registry("evaluation").evaluations.get(cmd_name)
        return None if ev is None else evaluation_command(ev)

    def resolve_command(self, ctx, args):
        from .errors import close_matches
        from .plugins import get_registry

        if args and not args[0].startswith("-"):
            reg = get_registry("evaluation")
            if args[0] not in reg.evaluations:
                srcs = reg.conflicts.get(("evaluation", args[0]))
                why = (f"registered by plugins {' and '.join(repr(s) for s in srcs)} and refused to all of them; keep one "
                       f"with MASKKIT_DISABLE_PLUGINS") if srcs else \
                    f"not a registered evaluation{close_matches(args[0], reg.evaluations) or ''} (maskkit eval --help lists them)"
                raise _click().exceptions.UsageError(f"eval {args[0]!r}: {why}", ctx)
        return super().resolve_command(ctx, args)


def idset_cmd(
    dataset: str = typer.Argument(..., help="chexpert or mimic: the adapter whose table the 5x200 set is drawn from"),
    out: str = typer.Option(..., "--out", help="the id-set file to write (JSON, atomically)"),
    option: list[str] = typer.Option([], "--option", "-o", help="adapter option KEY=VALUE (e.g. root=/data/CheXpert-v1.0-small, csv_name=train.csv)"),
    seed: int = typer.Option(0, help="the draw's seed (each class draws from its own generator [seed, class index])"),
    k: int = typer.Option(200, help="images per class"),
) -> None:
    """Write a CheXpert or MIMIC-CXR 5x200 id set (200 frontal images per class, the GLoRIA / MGCA / BenchX
    rule; docs/eval.md) with its SHA-256, for `maskkit eval retrieval RUN --set FILE`."""
    from pathlib import Path

    from .eval.subsets import K, chexpert_5x200, mimic_5x200, save_id_set, table_for_5x200
    from .options import Options, Seed

    class IdsetOptions(Options):
        seed: Seed = 0
        k: typing.Annotated[int, __import__("pydantic").Field(ge=1, le=100_000)] = K

    IdsetOptions.check(seed=seed, k=k)
    from .io import check_writable_file

    check_writable_file(out, "--out")  # before the dataset is read
    builders = {"chexpert": chexpert_5x200, "mimic": mimic_5x200}
    if dataset not in builders:
        raise MaskkitError(f"idset {dataset!r}: expected chexpert or mimic (the datasets a 5x200 set is defined on)")
    from .cli import option_values

    opts = option_values(option)
    idset = builders[dataset](table_for_5x200(dataset, **opts), seed=seed, k=k)
    path = save_id_set(idset, Path(out))
    from .cli import console

    counts = ", ".join(f"{c} {len(v)}" for c, v in idset.classes.items())
    console.print(f"wrote {path}: id set {idset.name}, {len(idset.ids)} images ({counts}), sha256 {idset.sha256[:12]}",
                  highlight=False, soft_wrap=True)
