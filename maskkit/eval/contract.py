"""The evaluation contract: what every evaluation takes and returns (built-ins and plugins alike).

An **evaluation** is registered through the ``register_evaluations`` hook
(:mod:`maskkit.hookspecs`) as ``register(name, evaluate, settings=Model, description=...)``:

- ``evaluate(run: EvalRun, settings: Model) -> EvalResult``;
- ``run`` (:class:`EvalRun`) is the run being evaluated: its model, its config, and its data and
  held-out split (the run's own by default, verified against its ``split.json``; or the ``data.*``
  settings given), read through :meth:`EvalRun.held_out` / :meth:`EvalRun.corpus`, the same
  path as every other command (:func:`maskkit.data.build.eval_corpus`);
- ``settings`` is an instance of the evaluation's typed pydantic model (unknown names refused,
  values checked before any work: one line naming the setting and what it accepts).

It returns one :class:`EvalResult`:

- ``metrics``: **one flat dict** ``{name: float}`` (open_clip's ``evaluate()`` convention), every
  key prefixed by the evaluation's name and a slash: ``zeroshot/auc_macro``,
  ``retrieval/image_to_report_R@1``. Undefined values are NaN (``null`` in JSON, empty in CSV).
  Sweep tables and ``runtime.evaluations`` read these keys and nothing else;
- ``details``: per-item rows (a label, an image, a strategy, a query ...), ``list[dict]`` of
  scalars, written as CSV;
- ``data``: which data and split it read (:meth:`maskkit.data.build.Corpus.what`), printed as the
  ``data:`` line every command prints;
- ``extra``: the evaluation's own JSON fields (e.g. the zero-shot table's ``per_label``), kept at
  the top level of its JSON file so files written before the contract read the same.

:meth:`EvalResult.write` writes ``<out>/<name>.json`` and ``<out>/<name>.csv`` plus the
evaluation's own files (``files``) in ``<out>``; when ``out`` ends in ``.json``, that file, a
``.csv`` beside it and the own files in the folder named by its stem (:func:`output_layout`); each
atomically and only after every one of them was rendered: nothing half-done.
"""

from __future__ import annotations

import csv
import io
import json
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..errors import MaskkitError, PluginError

#: how a result's title names its split (:meth:`maskkit.data.build.Corpus.what`'s ``split``)
SPLIT_WORDS = {"run": "the run's held-out split", "run-config": "the run's held-out split, unverified",
               "explicit": "held-out part of the data.* given"}


class EvaluationError(MaskkitError):
    """An evaluation that cannot run on what it was given (its data, its annotation files)."""


def split_words(what: dict | str | None) -> str:
    """``the run's held-out split`` / ``held-out part of the data.* given`` for a result title."""
    if isinstance(what, dict):
        return SPLIT_WORDS.get(what.get("split", ""), str(what.get("split", "")))
    return "" if what is None else str(what)


def _scalar(v: Any) -> Any:
    """A CSV cell: numbers and strings as they are, NaN / None empty, anything else as JSON."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (str, int, float, bool)):
        return v
    return json.dumps(v)


def _json_safe(v: Any) -> Any:
    """``v`` with every NaN / inf float as ``None`` (strict JSON has no NaN), tuples as lists."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:  # a numpy scalar
        return _json_safe(v.item())
    return v


def fmt_number(x: float, decimals: int = 3, sign: bool = False, sig: int = 2) -> str:
    """``x`` with ``decimals`` decimals, or as many more as show ``sig`` significant digits of a
    small nonzero value: ``fmt_number(-0.00004) == "-0.000040"`` (``.3f`` printed ``-0.000``, which
    reads as no difference), ``fmt_number(0.1234) == "0.123"``, ``fmt_number(0.2, sign=True) ==
    "+0.200"``, ``fmt_number(1.2e-12) == "1.2e-12"``. NaN is ``"nan"``. The one number format of result tables (``paired.md``,
    ``results.md``, ``masks.md``, an evaluation's metrics table)."""
    x = float(x)
    if math.isnan(x) or math.isinf(x):
        return str(x)
    d = decimals
    if x != 0:
        d = max(decimals, sig - 1 - math.floor(math.log10(abs(x))))
        if d > 9:  # too small for fixed decimals to read: 1.2e-12
            return f"{x:{'+' if sign else ''}.{sig - 1}e}"
    return f"{x:{'+' if sign else ''}.{d}f}"


@dataclass
class EvalResult:
    """What an evaluation returns (the module docstring): ``metrics`` (flat, prefixed by the
    evaluation's name), ``details`` (per-item rows), ``data`` (which data and split), ``settings``
    (the settings used, filled in by :class:`Evaluation`), ``extra`` (the evaluation's own JSON
    fields), ``files`` (other files to write beside: name -> text), ``tables`` (rich renderables
    the command prints), ``warnings`` (lines printed under them, ``warning:``), ``notes``
    (informational lines, ``note:``) and ``native`` (the evaluation's
    own result object, e.g. a :class:`~maskkit.eval.zeroshot.ZeroShotResult`; not serialised)."""

    evaluation: str
    metrics: dict[str, float]
    details: list[dict[str, Any]] = field(default_factory=list)
    data: dict | str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    tables: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: informational lines (what was evaluated and why some was not), printed as ``note:``, not ``warning:``
    notes: list[str] = field(default_factory=list)
    native: Any = None

    def check(self, source: str = "") -> EvalResult:
        """Enforce the contract: every metric key is ``"<evaluation>/..."``, every value a real number
        (NaN allowed), ``details`` a list of dicts. A violation is one :class:`PluginError` line
        naming the evaluation and its source (a plugin bug, not bad input). Values become floats."""
        who = f"evaluation '{self.evaluation}'" + (f" (from plugin '{source}')" if source else "")
        if not isinstance(self.metrics, dict):
            raise PluginError(f"{who} returned metrics of type {type(self.metrics).__name__}; expected a dict of floats")
        out = {}
        for k, v in self.metrics.items():
            if not isinstance(k, str) or not k.startswith(f"{self.evaluation}/") or k == f"{self.evaluation}/":
                raise PluginError(f"{who} returned metric {k!r}; expected keys '{self.evaluation}/<name>'")
            if isinstance(v, bool) or not isinstance(v, (int, float)) and not (hasattr(v, "item") and getattr(v, "ndim", 1) == 0):
                raise PluginError(f"{who} returned metric {k!r} = {v!r}; expected a number (NaN when undefined)")
            out[k] = float(v)
        self.metrics = out
        if not isinstance(self.details, list) or not all(isinstance(r, dict) for r in self.details):
            raise PluginError(f"{who} returned details that are not a list of dicts (one row per item)")
        return self

    def shown_tables(self) -> list[Any]:
        """What a command prints for this result: its ``tables``, or, for an evaluation that gives
        none (a plugin's may not), one table of its flat metrics (``maskkit eval``, ``maskkit run``)."""
        if self.tables:
            return list(self.tables)
        from rich.markup import escape
        from rich.table import Table

        t = Table(title=f"{self.evaluation}: {len(self.metrics)} metrics" + (f" ({split_words(self.data)})" if self.data else ""))
        t.add_column("metric")
        t.add_column("value", justify="right")
        for k, v in self.metrics.items():
            t.add_row(escape(k), "-" if math.isnan(v) else fmt_number(v))
        return [t]

    def to_json(self) -> dict[str, Any]:
        """The JSON document: the evaluation's own fields (``extra``), then ``evaluation``,
        ``metrics``, ``details``, ``data``, ``settings`` and, when there are any, ``warnings`` (what a
        reader of the numbers alone should know; NaN written as ``null``)."""
        doc = {**self.extra, "evaluation": self.evaluation, "metrics": self.metrics, "details": self.details,
               "settings": self.settings}
        if self.data is not None:
            doc["data"] = self.data
        if self.warnings:
            doc["warnings"] = list(self.warnings)
        return _json_safe(doc)

    def details_csv(self) -> str:
        """The details as CSV: one row per item, the columns in order of first appearance."""
        cols: list[str] = []
        for r in self.details:
            cols += [k for k in r if k not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for r in self.details:
            w.writerow({k: _scalar(r.get(k)) for k in cols})
        return buf.getvalue()

    def outputs(self, out: str | Path) -> dict[Path, str]:
        """path -> text of every file :meth:`write` writes for ``out`` (:func:`output_layout`, the one
        rule): a folder holds ``<evaluation>.json``, ``<evaluation>.csv`` and ``files``; a ``.json``
        path is the JSON document, its details beside it as ``<stem>.csv`` and ``files`` in the folder
        ``<stem>/`` beside it."""
        doc = json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n"
        js, details, own = output_layout(out, self.evaluation)
        files = {js: doc, details: self.details_csv()}
        files.update({own / name: text for name, text in self.files.items()})
        return files

    def write(self, out: str | Path) -> list[Path]:
        """Write :meth:`outputs` (each file atomically, after all were rendered); returns the paths."""
        from ..io import atomic_write_text

        files = self.outputs(out)
        for path, text in files.items():
            atomic_write_text(path, text)
        return list(files)


def output_layout(out: str | Path, evaluation: str) -> tuple[Path, Path, Path]:
    """Where ``--out OUT`` puts an evaluation's result: ``(JSON document, details CSV, folder of the
    evaluation's own files)`` (``masks.md``, fine-tuning's ``results.json`` and ``splits/``, a
    plugin's ``files``). ``OUT`` a folder: ``OUT/<evaluation>.json``, ``OUT/<evaluation>.csv``,
    ``OUT``. ``OUT`` ending in ``.json``: ``OUT``, ``OUT`` with ``.csv``, and the folder named by its
    stem beside it (``ft.json`` -> ``ft.csv``, ``ft/results.json``, ``ft/splits/``), so two results
    written into one folder never share their own files."""
    out = Path(out)
    if out.suffix.lower() == ".json":
        return out, out.with_suffix(".csv"), out.with_suffix("")
    return out / f"{evaluation}.json", out / f"{evaluation}.csv", out


def _raised_at(exc: BaseException) -> str:
    """`` at file.py:123`` of the innermost frame ``exc`` was raised in ("" without a traceback)."""
    import traceback

    tb = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    return f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""


def failure_line(name: str, exc: BaseException) -> str:
    """One line for evaluation ``name`` that raised ``exc`` at the end of a run: a
    :class:`~maskkit.errors.MaskkitError`'s own message (a plugin's fault is one already,
    :meth:`Evaluation.__call__`), else ``Type: message`` and where it was raised."""
    from ..plugins import _one_line

    if isinstance(exc, MaskkitError):
        msg = " ".join(str(exc).split())
        return msg if msg.startswith(f"evaluation '{name}' ") else f"evaluation '{name}' failed: {msg}"
    return f"evaluation '{name}' failed: {_one_line(exc)}{_raised_at(exc)}"


def _field_name(model: type[BaseModel], loc: Sequence[Any]) -> str:
    return str(loc[0]) if loc else "?"


def flag_of(name: str, field) -> str:
    """The command-line option of settings field ``name``, without its dashes: the field's
    ``json_schema_extra={"flag": ...}``, else its name, dashes for underscores (``ks`` -> ``k``,
    ``batch_size`` -> ``batch-size``). Every message about a command option names it so."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return str(extra.get("flag", name)).replace("_", "-")


def parse_settings(model: type[BaseModel], values: dict[str, Any], style: str = "=", where: str = "") -> BaseModel:
    """``model(**values)``; a value it refuses is one :class:`~maskkit.errors.MaskkitError` line
    naming the setting as the user wrote it (``--lr 1e+38: ...`` for ``style="--"``, ``lr=...``
    otherwise) and what it accepts. :class:`maskkit.options.Options` models give their own line
    (the range in words); any other pydantic model a plugin registers gets pydantic's message."""
    from ..options import Options, _show

    flags = {n: flag_of(n, f) for n, f in model.model_fields.items()} if style == "--" else {}
    try:
        return model(**values)
    except ValidationError as exc:
        e = exc.errors()[0]
        if not e["loc"]:  # a check of the whole model (two settings that go together): its own words
            msg = str(e.get("ctx", {}).get("error", e["msg"]))
            raise MaskkitError(f"{where}{msg}") from None
        if isinstance(model, type) and issubclass(model, Options):
            model.check(style=style, where=where, labels=flags, **values)  # raises its one line (the range in words)
        name = _field_name(model, e["loc"])
        got = values.get(name, e.get("input"))
        label = f"--{flags.get(name, name.replace('_', '-'))} {_show(got)}" if style == "--" else f"{name}={got!r}"
        if e["type"] == "extra_forbidden":
            known = ", ".join(f"--{v}" for v in flags.values()) if style == "--" else ", ".join(model.model_fields)
            raise MaskkitError(f"{where}{label}: not a setting of this evaluation (settings: {known or 'none'})") from None
        raise MaskkitError(f"{where}{label}: {e['msg']}") from None


@dataclass
class Evaluation:
    """A registered evaluation: ``evaluate(run, settings) -> EvalResult``, its settings model, a
    one-line description, the plugin that registered it (``source``), ``ensemble`` (takes several
    runs, e.g. zero-shot's "+ Ensemble"), ``out`` (the command's default output, None: nothing is
    written unless ``--out`` is given) and ``end_of_run`` (settings used when a run evaluates
    itself at the end of training, ``runtime.evaluations``)."""

    name: str
    evaluate: Callable[[Any, Any], EvalResult]
    settings: type[BaseModel]
    description: str = ""
    source: str = ""
    ensemble: bool = False
    out: str | None = None
    end_of_run: dict[str, Any] = field(default_factory=dict)

    def parse(self, values: dict[str, Any] | None = None, style: str = "=") -> BaseModel:
        """This evaluation's settings from ``values`` (one line per refused value, :func:`parse_settings`)."""
        where = "" if style == "--" else f"eval {self.name}: "  # a command option names itself
        return parse_settings(self.settings, dict(values or {}), style, where=where)

    def __call__(self, run: EvalRun, settings: BaseModel | dict[str, Any] | None = None) -> EvalResult:
        """Run the evaluation on ``run`` (settings: a model instance, or values to parse) and check
        its result against the contract (:meth:`EvalResult.check`)."""
        if not isinstance(settings, self.settings):
            if settings is not None and not isinstance(settings, dict):
                raise MaskkitError(f"eval {self.name}: settings of type {type(settings).__name__}; expected "
                                   f"{self.settings.__name__} or a dict of its fields")
            settings = self.parse(settings)
        if len(run.members) > 1 and not self.ensemble:
            raise MaskkitError(f"eval {self.name} takes one run, got {len(run.members)}: "
                               f"{' '.join(str(p) for p, _, _ in run.members)}")
        from ..data.dataset import NothingDecodes, SkipLimitExceeded

        try:
            res = self.evaluate(run, settings)
        except (NothingDecodes, SkipLimitExceeded) as exc:  # add where the images are read and the key that places them
            if getattr(exc, "where", "") or getattr(exc, "path", None) is None:
                raise
            from ..data.build import image_root_hint

            hint = next((h for h in (image_root_hint(c[1], exc.path) for c in run._corpus.values()) if h), "")
            if isinstance(exc, NothingDecodes):
                raise exc.with_hint(hint, f"eval {self.name}: ") from None
            raise SkipLimitExceeded(f"eval {self.name}: {exc}{hint}", exc.path) from None
        except MaskkitError:  # its own line (a built-in's or a plugin's)
            raise
        except Exception as exc:  # a plugin's fault never takes the host down: one line naming the plugin
            from ..plugins import BUILTIN_PLUGINS, _one_line

            if self.source in BUILTIN_PLUGINS:  # a fault of maskkit itself: the traceback
                raise
            raise PluginError(f"evaluation '{self.name}' (from plugin '{self.source}') failed: {_one_line(exc)}"
                              f"{_raised_at(exc)}") from exc
        if not isinstance(res, EvalResult):
            raise PluginError(f"evaluation '{self.name}' (from plugin '{self.source}') returned {type(res).__name__}; "
                              f"expected a maskkit.eval.contract.EvalResult")
        if res.evaluation != self.name:
            raise PluginError(f"evaluation '{self.name}' (from plugin '{self.source}') returned a result named '{res.evaluation}'")
        res.settings = settings.model_dump(mode="json")
        if len(run.members) > 1:  # an ensemble: which checkpoints it averaged
            members = run.member_records()
            res.data = {**res.data, "members": members} if isinstance(res.data, dict) else {"what": res.data, "members": members}
        return res.check(self.source)

    def option_rows(self) -> list[dict[str, str]]:
        """One row per setting: name, type, default, constraints (:func:`maskkit.options.constraints`)
        and description (``maskkit eval NAME --help``, docs)."""
        from ..data.adapters import type_name
        from ..options import constraints, field_default

        rows = []
        for name, f in self.settings.model_fields.items():
            default = "required" if f.is_required() else repr(field_default(f))
            rows.append({"setting": name, "type": type_name(f.annotation), "default": default,
                         "constraints": constraints(self.settings, name), "description": f.description or ""})
        return rows


def make_evaluation(name: str, evaluate: Callable, source: str, settings: type[BaseModel] | None = None,
                    description: str | None = None, ensemble: bool = False, out: str | None = None,
                    end_of_run: dict[str, Any] | None = None) -> Evaluation:
    """Check one registration and build its :class:`Evaluation` (a bad registration is one
    :class:`PluginError` line naming the plugin). ``description`` defaults to the first line of
    ``evaluate``'s docstring; ``settings`` to a model with no field. ``end_of_run`` must validate."""
    from pydantic import ConfigDict, create_model

    if not isinstance(name, str) or not name or "/" in name or not name.replace("_", "").replace("-", "").isalnum():
        raise PluginError(f"plugin '{source}' registered an evaluation named {name!r}; expected letters, digits, '_' or '-'")
    if not callable(evaluate):
        raise PluginError(f"plugin '{source}' registered evaluation '{name}' with {evaluate!r}, which is not callable")
    if settings is None:
        settings = create_model(f"{name}_settings", __config__=ConfigDict(extra="forbid"))
    if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
        raise PluginError(f"plugin '{source}' registered evaluation '{name}' with settings {settings!r}; "
                          f"expected a pydantic BaseModel subclass")
    for field_name, f in settings.model_fields.items():
        flag = flag_of(field_name, f)
        if flag in ("out", "help"):
            raise PluginError(f"plugin '{source}' registered evaluation '{name}' with a setting named --{flag}, "
                              f"which is the command's own option; rename it")
    if description is None:
        import inspect

        description = (inspect.getdoc(evaluate) or "").split("\n\n")[0].replace("\n", " ").strip()
    ev = Evaluation(name, evaluate, settings, description, source, bool(ensemble), out, dict(end_of_run or {}))
    try:
        ev.parse(ev.end_of_run)
    except MaskkitError as exc:
        raise PluginError(f"plugin '{source}' registered evaluation '{name}' with end_of_run settings that do not "
                          f"validate: {exc}") from None
    return ev


class EvalRun:
    """The run an evaluation evaluates: its model(s), config, data and split.

    ``members``: ``(path, model, cfg)`` per run given (several: an ensemble, for evaluations that
    take one); ``model`` / ``cfg`` / ``path`` are the first's. ``data``: the ``data.*`` settings
    (empty: the run's own data and split). ``out``: where the result will be written (None:
    nowhere), for evaluations that store inputs (fine-tuning's split files). ``device``: where to
    compute. ``corpus`` (optional): ``(cfg, Corpus, what)`` already built (training's end-of-run
    evaluation passes its own, so nothing is rebuilt). Every member model is put in eval mode
    (training's end-of-run evaluation passes the model it trained, in train mode).
    """

    def __init__(self, members: Sequence[tuple[Path, Any, Any]], data: Sequence[str] = (), out: str | Path | None = None,
                 device: Any = "cpu", corpus: tuple | None = None) -> None:
        if not members:
            raise MaskkitError("an evaluation needs a run (a run directory or a checkpoint file)")
        self.members = [(Path(p), m, c) for p, m, c in members]
        for _, m, _ in self.members:  # dropout (0.1 in BERT towers) and patch dropout off: every evaluation is deterministic
            if hasattr(m, "eval"):
                m.eval()
        self.path, self.model, self.cfg = self.members[0]
        self.data = list(data)
        self.out = Path(out) if out is not None else None
        self.device = device
        self._corpus: dict[tuple, tuple] = {}
        self.checkpoints: list[Path] | None = None  # the checkpoint file of each member (load)
        if corpus is not None:
            self._corpus[(False, True)] = corpus

    @classmethod
    def load(cls, paths: Sequence[str | Path], data: Sequence[str] = (), out: str | Path | None = None,
             device: Any = "cpu") -> EvalRun:
        """Load each run directory / checkpoint (:func:`maskkit.training.checkpointing.load_model`).
        Several runs must share data and ``train.seed`` unless ``data.*`` is given (one member's
        held-out patients must not be another's training patients): else one line."""
        from ..training.checkpointing import checkpoint_file, load_model

        files: dict[Path, str] = {}
        for p in paths:  # an ensemble counts each member once: the same checkpoint twice is refused
            ck = checkpoint_file(p).resolve()
            if ck in files:
                raise MaskkitError(f"eval: {p} and {files[ck]} are the same checkpoint ({ck}); an ensemble's members "
                                   f"must be different checkpoints (one given twice counts twice)")
            files[ck] = str(p)
        members = []
        for p in paths:
            model, cfg = load_model(p, device)
            members.append((Path(p), model, cfg))
        first = members[0]
        for p, _, c in members[1:]:
            if not data and (c.data != first[2].data or c.train.seed != first[2].train.seed):
                raise MaskkitError(f"eval: {p} was trained on other data or another train.seed than {first[0]}; "
                                   "its held-out split differs, so one member's test data may be another's training data")
        run = cls(members, data, out, device)
        run.checkpoints = list(files)
        return run

    def member_records(self) -> list[dict[str, Any]]:
        """Each member as ``{"path": as given, "checkpoint": the file read, "step": its training step}``
        (an ensemble's result lists them in its ``data``; step None for a file not named ``step_<n>.pt``)."""
        import re

        out = []
        for (p, _, _), ck in zip(self.members, self.checkpoints or [None] * len(self.members)):
            m = re.fullmatch(r"step_(\d+)\.pt", ck.name) if ck is not None else None
            out.append({"path": str(p), "checkpoint": str(ck) if ck is not None else None,
                        "step": int(m.group(1)) if m else None})
        return out

    @property
    def run_dir(self) -> Path:
        from ..data.build import run_dir_of

        return run_dir_of(self.path)

    @property
    def out_dir(self) -> Path | None:
        """The folder the evaluation's own files go to (:func:`output_layout`: ``out`` itself, or for
        ``--out FILE.json`` the folder ``FILE/`` beside it); None: nowhere."""
        if self.out is None:
            return None
        return output_layout(self.out, "")[2]

    @property
    def models(self) -> list[Any]:
        return [m for _, m, _ in self.members]

    def corpus(self, held_out_ner: bool = False, text: bool = True) -> tuple[Any, Any, dict]:
        """``(cfg, Corpus, what)`` of the run's data and split, or of the ``data.*`` given
        (:func:`maskkit.data.build.eval_corpus`: verified against the run's split.json), built once
        per ``(held_out_ner, text)``; ``text=False`` builds no NER (evaluations that read no report)."""
        key = (held_out_ner, text)
        if key not in self._corpus:
            if not text and (False, True) in self._corpus and not held_out_ner:
                return self._corpus[(False, True)]
            from ..data.build import eval_corpus

            self._corpus[key] = eval_corpus(self.path, self.cfg, self.model.image_size, self.data, held_out_ner=held_out_ner,
                                            ner=None if text else False)
        return self._corpus[key]

    def held_out(self, held_out_ner: bool = False, text: bool = True) -> tuple[Any, tuple[str, ...], dict]:
        """(held-out dataset, label names, what): :meth:`corpus`'s held-out part; an empty one is one line."""
        _, corpus, what = self.corpus(held_out_ner, text)
        if corpus.val is None or len(corpus.val) == 0:
            raise MaskkitError(f"the evaluation split is empty: {corpus.empty_held_out_line()}")
        return corpus.val, corpus.label_names, what


def settings_fields(model: type[BaseModel]) -> list[tuple[str, Any, Any]]:
    """(name, annotation, FieldInfo) of every setting of ``model``, in order."""
    return [(n, f.annotation, f) for n, f in model.model_fields.items()]


def is_list(annotation: Any) -> bool:
    """Whether a settings field holds a list (a repeatable command-line option)."""
    ann = annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)) and len(args) == 1:
        ann = args[0]
    return typing.get_origin(ann) in (list, tuple, set, frozenset)


def is_bool(annotation: Any) -> bool:
    """Whether a settings field is a bool (an on/off command-line flag)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation is bool or (len(args) == 1 and args[0] is bool)
