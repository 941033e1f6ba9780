"""Generate docs/config.md and docs/cli.md from the pydantic models and the typer app, the
reference section of docs/strategies.md from the strategy registry, the table of loss terms in
docs/model.md from :data:`maskkit.terms.TERMS`, the fields of ``Record`` and ``Table`` in
docs/plugins.md from the dataclasses, the current-results
table of docs/results.md from docs/results.csv, and the index of docs/assumptions.md from its
headings.

    python -m maskkit.docgen          # rewrite them
    python -m maskkit.docgen --check  # exit 1 if any is out of date (the test suite does this)

docs/strategies.md, docs/model.md, docs/plugins.md, docs/results.md and docs/assumptions.md are hand-written prose around one
generated section, between :data:`BEGIN` (:data:`TERMS_BEGIN`, :data:`RECORDS_BEGIN`, :data:`RESULTS_BEGIN`, :data:`ASSUMPTIONS_BEGIN`) and
:data:`END`: only that section is rewritten (and, in docs/assumptions.md, the anchor line before
each heading).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _type_name(ann) -> str:
    s = str(ann).replace("typing.", "")
    for a, b in (("<class '", ""), ("'>", ""), ("NoneType", "null"), ("Literal", "one of ")):
        s = s.replace(a, b)
    return s


def _rows(model: type[BaseModel], prefix: str, defaults: dict, tiny: dict):
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = f.annotation
        sub = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if sub is not None:
            yield from _rows(sub, key + ".", defaults.get(name, {}), tiny.get(name, {}) if isinstance(tiny, dict) else {})
            continue
        d = defaults.get(name)
        t = tiny.get(name, "") if isinstance(tiny, dict) else ""
        yield key, _type_name(ann), json.dumps(d), "" if t == "" else json.dumps(t), _cell(f.description or "")


def config_markdown() -> str:
    from .config import SCALES, ExperimentConfig, _defaults
    from .roles import ROLES

    lines = [
        "# Configuration keys",
        "",
        "Generated from the pydantic models by `python -m maskkit.docgen`; a test fails when this file",
        "drifts from the code. Set any key on the command line (`maskkit run train.lr=1e-4`), in a",
        "config file (`config=run.yaml`, or a config shipped with maskkit by name: `config=xlip_paper_corpus`),",
        "or in a preset. Resolution order: default → scale → preset → file → command line;",
        "`maskkit config show ...` prints every value with its source (`file:PATH` or `config:NAME` for",
        "`config=`), each `data.options` option and each key of each `data.sources` entry on its own row.",
        "",
        "Shorthands: `data=mimic` is `data.name=mimic`; inside a strategy tree the strategy name may be",
        "skipped (`image_mask.child_ratio=0.6` sets `image_mask.union.child_ratio`); list items are",
        "addressed by index (`image_mask.of.0.ratio=0.5`), and so are the entries of `data.sources`",
        "(`data.sources.1.root=/data/padchest`: one key of an entry a config file gave).",
        "",
        "Values on the command line are JSON when they parse (`train.lr=1e-4`, `model.image_std=[0.2,0.2,0.2]`,",
        "`runtime.evaluations=[]`); a value that starts with `[` or `{` and is not JSON is read as YAML flow",
        "style, as a config file writes it: `'data.sources=[{name: csv, path: x.csv, weight: 0.5}]'`. One that",
        "parses as neither is one line naming the key and where it stopped. (YAML 1.1, as PyYAML reads it:",
        "`1e9` without a dot is text there; write `1.0e9`, or JSON.) A key given twice in one mapping",
        "(`{name: csv, path: a.csv, path: b.csv}`), in a config file, such a value, a sweep or a composition,",
        "is refused in one line naming the file, the line and the key, never \"the last one wins\".",
        "A value of the wrong shape names its key, what it takes and what it got: `data: expected a mapping",
        "of its keys or a dataset name (data=mimic), got a list`, `data.sources: expected a list of entries",
        "...`, `data.sources[0]: expected a mapping such as {name: csv, path: x.csv}, got null`.",
        "",
        "A key nothing reads with the rest of the config is refused when you set it (command line, config",
        "file) and left out of `maskkit config show` when a scale or preset did: with `data.sources`, the",
        "single-source keys (`data.name`, `root`, `path`, `options`, `cache`, `n`, `val_n`, `p_unpaired`,",
        "`seed`); in the single-source form, the phantoms' `data.n` / `val_n` / `p_unpaired` / `seed` for",
        "a dataset that takes no such option, and `data.cache`, `data.decode_policy` and",
        "`data.max_skip_fraction` for the phantoms (they draw their images; no file is decoded);",
        "`data.ner_model` unless `data.ner=scispacy`:",
        "`data.n: dataset 'csv' takes no option 'n' (it takes path, ...); remove data.n (from cli)`.",
        "`runtime.device` is checked when the config resolves, against this machine: a name maskkit does",
        "not run on (`tpu`), or hardware it lacks (`cuda` without a GPU, `cuda:3` with one, `mps` off a",
        "Mac, `runtime.devices` above the GPUs there are) is one line (a checkpoint's saved config is not",
        "checked: it is evaluated wherever it is). A warm-up longer than the run (`train.lr_warmup_steps`",
        "> `train.steps`: the learning rate never reaches `train.lr`; `train.warmup_steps` >= `train.steps`",
        "with a term that waits for it: that term never trains) is a one-line warning before step 1.",
        "",
        "| key | type | default (`scale=paper`) | `scale=tiny` | description |",
        "|---|---|---|---|---|",
    ]
    for key, typ, d, t, desc in _rows(ExperimentConfig, "", _defaults(), SCALES["tiny"]):
        typ = _cell(typ)
        tiny_cell = f"`{t}`" if t else ""
        lines.append(f"| `{key}` | {typ} | `{d}` | {tiny_cell} | {desc} |")
    lines += ["", "## Strategy trees", "",
              "The strategy trees (" + ", ".join(f"`{r.name}`" for r in ROLES) + ") use the composition",
              "format of `docs/composition.md`; their defaults come from the preset (`maskkit presets`). What",
              "each may hold (`maskkit/roles.py`; a tree that holds anything else is one line when the model is built):", "",
              "| tree | holds | paper |", "|---|---|---|"]
    lines += [f"| `{r.name}` | {r.holds} | {r.equation} |" for r in ROLES]
    lines.append("")
    return "\n".join(lines)


def cli_markdown() -> str:
    import typer.main

    from .cli import app

    root = typer.main.get_command(app)
    lines = [
        "# Command line",
        "",
        "Generated from the typer app by `python -m maskkit.docgen`; a test fails when this file drifts.",
        "Every command prints a one-line error and exits 2 on bad input; `maskkit --debug COMMAND ...`",
        "shows the traceback instead.",
        "",
        "**Exit status.** 0: done. 2: bad input, or a failure the command cannot go past, in one line naming",
        "the file or key and the cause: an output it cannot write, a full disk (`cannot write checkpoint",
        "runs/x/checkpoints/step_00000004.pt (No space left on device; abandoned whole); the latest checkpoint,",
        "... step_00000002.pt, is intact: ...`), a DataLoader worker that died (`data.num_workers: ...`). The",
        "cause is looked for under whatever a library raised over it (torch's checkpoint writer reports",
        "`unexpected pos` over a full disk or a dead worker): the line names the cause, not the library's",
        "error. 3 (`run`, `sweep`): trained and saved, but an end-of-run evaluation (`runtime.evaluations`)",
        "failed; each is named, the others written; a sweep lists them in `results.md` and, run again,",
        "retries them without retraining (docs/eval.md). 75 / 130: stopped by a signal (below). 1, with a",
        "traceback: a fault in maskkit itself;",
        "please report it (with `--debug`). No exit is silent: what typer and click end without a word is",
        "one line too, naming what and where (`error: broken pipe (BrokenPipeError at loader.py:88: Broken",
        "pipe): something this command wrote to was closed`, exit 1; a `KeyboardInterrupt` not raised by the",
        "stop handler, exit 130; an `EOFError`, exit 1; a torchrun launcher killed by a signal), and a line",
        "the console cannot print (a full non-blocking stderr under load) is written to file descriptor 2.",
        "",
        "**Outputs.** Every command that writes checks where it writes before any work: `runtime.out_dir`",
        "of `maskkit run`, `--out` of `phantoms`, `prepare`, `sweep`, `idset`, every `eval` and",
        "`visualize` command. A place it cannot write is one line naming the option, the path and why",
        "(`--out /data/ro/x: cannot write in /data/ro (Permission denied)`, `... cannot make it: runs is",
        "a file, not a folder`, a read-only file system), and nothing is written. Each file is written",
        "atomically (a temporary file renamed over it): a checkpoint that cannot be finished leaves the",
        "earlier ones as they were. A new run without `runtime.name` claims its numbered directory",
        "(`<preset>-<scale>-seed<k>`, `-2`, `-3`, ...) atomically: runs started at once get one each.",
        "",
        "**A closed output.** When the reader of stdout or stderr goes away (`maskkit run ... | head -1`,",
        "a killed `| tee`, a closed ssh session) the command goes on: what it writes to that stream is",
        "dropped from then on (it says so once on the other stream when that one is open), a run trains",
        "to its end and exits as it would have; its run directory (`metrics.jsonl`, checkpoints,",
        "evaluation files) holds everything it printed. To stop it, send a stop signal. Live progress bars",
        "are drawn on a terminal only; in a file (a SLURM log, `2> log`) commands write plain lines.",
        "",
        "**Signals.** SIGTERM, SIGUSR1, SIGUSR2 (what schedulers send before they stop a job) and SIGINT",
        "(Ctrl-C) stop every command cleanly, from its start: the `maskkit` script (`maskkit.__main__`) and",
        "`python -m maskkit.cli` install the handlers before importing anything slow, about 30 ms after the",
        "process starts (20 ms of which are Python's own start; it was about 220 ms, after typer, rich,",
        "pydantic and numpy); a signal during the imports that follow stops the command once it can say",
        "so. A signal in Python's own start (the first ~20 ms) still ends the process (exit 143 for",
        "SIGTERM): no handler can run then. `maskkit run` writes the checkpoint",
        "of the step it is in and exits **75** (run the same command again, with `runtime.resume=auto`",
        "or `latest`; a SLURM requeue script is in `docs/distributed.md`); stopped before step 1 it has",
        "nothing to save, says so in one line, removes the run directory it created and exits 75 too.",
        "SIGINT does the same but exits **130** (an interrupt is not a requeue); a second Ctrl-C a second",
        "or more later stops at once (the checkpoint being written is abandoned; earlier ones are intact).",
        "`maskkit sweep` passes the signal on to the runs it started (each checkpoints), starts no other",
        "and exits 75 / 130; the same sweep command continues it. Any other command (`eval`, `prepare`,",
        "`visualize` ...) stops at once with one line and exit 75 / 130: its files are written atomically,",
        "so none is left half-written. A signal ignored when maskkit starts (`nohup`) stays ignored.",
        "",
        "**Evaluations.** `maskkit eval NAME RUN [data.* settings] [--options]` exists for every registered",
        "evaluation: the built-ins below and any a plugin registers (`maskkit eval --help` lists them all, with",
        "their descriptions; docs/eval.md, docs/plugins.md). Each command's options are its settings model's",
        "fields, checked before the run is loaded; `--out` writes `NAME.json` and `NAME.csv` (docs/eval.md).",
        "",
    ]

    from .evalcli import _click

    def walk(cmd, path: list[str]):
        if hasattr(cmd, "list_commands"):  # a group; eval's commands are the registered evaluations
            ctx = _click().Context(cmd)
            for name in sorted(cmd.list_commands(ctx)):
                yield from walk(cmd.get_command(ctx, name), path + [name])
        else:
            yield path, cmd

    from .testing import only_plugins

    with only_plugins():  # the built-in evaluations only, whatever plugins are installed here
        commands = list(walk(root, []))
    for path, cmd in commands:
        lines.append(f"## `maskkit {' '.join(path)}`")
        lines.append("")
        lines.append((cmd.help or "").strip().split("\n\n")[0])
        lines.append("")
        params = [p for p in cmd.params if p.name != "help"]
        if params:
            lines.append("| argument / option | default | help |")
            lines.append("|---|---|---|")
            for p in params:
                is_arg = getattr(p, "param_type_name", "") == "argument"
                if is_arg:
                    meta = getattr(p, "metavar", None)
                    name = meta or p.name.upper() + (" ..." if p.nargs == -1 else "")
                else:
                    name = ", ".join(p.opts)
                default = "" if is_arg or p.default in (None, (), []) or callable(p.default) else json.dumps(p.default)
                help_ = _cell(getattr(p, "help", None) or "")
                lines.append(f"| `{name}` | {default} | {help_} |")
            lines.append("")
    lines += _cli_examples()
    return "\n".join(lines)


def _cli_examples() -> list[str]:
    return [
        "## Examples",
        "",
        "```bash",
        "maskkit run preset=xlip                                   # tiny CPU run on phantoms: 2–3 min on 2 idle cores",
        "maskkit run preset=t3_attmim train.seed=1 runtime.name=attmim-s1",
        "maskkit run preset=xlip scale=paper data=mimic data.root=/data/mimic-cxr-jpg runtime.devices=8",
        "maskkit run preset=xlip runtime.resume=latest             # continue the newest runs/xlip-tiny-seed0[-N]",
        "maskkit config show preset=xlip image_mask.child_ratio=0.6",
        "maskkit strategies 'report*'",
        "maskkit compose xlip --role text_mask",
        "maskkit phantoms --n 2000 --out /data/phantoms",
        "maskkit prepare nih --option root=/data/nih --out /data/cache/nih224 --size 224",
        "maskkit eval --help                                       # every registered evaluation (plugins' too)",
        "maskkit eval zeroshot runs/xlip-tiny-seed0 --out eval/    # eval/zeroshot.json, eval/zeroshot.csv",
        "maskkit eval retrieval runs/xlip-tiny-seed0               # the run's held-out paired images",
        "maskkit idset mimic -o root=/data/mimic-cxr-jpg --out mimic_5x200.json",
        "maskkit eval retrieval RUN data=mimic data.root=/data/mimic-cxr-jpg --set mimic_5x200.json",
        "maskkit eval grounding RUN data=rsna data.root=/data/rsna --regions /data/rsna/stage_2_train_labels.csv --format rsna",
        "maskkit eval masks RUN --ratio 0.5 --ratio 0.75 --strategy random --strategy xlip",
        "maskkit run preset=xlip 'runtime.evaluations=[zeroshot,retrieval,grounding]'",
        "```",
        "",
    ]


BEGIN = "<!-- BEGIN generated by `python -m maskkit.docgen` from the strategy registry: edit the strategies, not this section -->"
END = "<!-- END generated -->"


def _equation(description: str) -> str:
    """The paper's equation(s) a strategy's description cites (``eq. 4``, ``eq. 7-8``), or
    "not in the paper"."""
    import re

    m = re.findall(r"eq\. ?(\d+(?:[-–]\d+)?)", description)
    return "eq. " + ", ".join(m) if m else "not in the paper"


def strategies_reference() -> str:
    """The generated section of docs/strategies.md: every built-in strategy (the registry's, no
    plugin's) with its declarations, the paper's equation its description cites, and every key of
    its ``Config`` with type, default and description."""
    from .core import declared_values
    from .plugins import get_registry
    from .testing import only_plugins

    with only_plugins():
        reg = get_registry()
        classes = {n: c for n, c in reg.strategies.items() if reg.strategy_sources[n] == "maskkit.strategies"}
    lines = [BEGIN, "", "## Reference", "",
             "Every built-in strategy, from its class (`maskkit strategies` lists a plugin's too). *inputs*:",
             "the `MaskContext` fields it requires (a composite's are its children's); a `Config` key without",
             "a default is required.", "",
             "| strategy | paper | modality | output | inputs | what it does |", "|---|---|---|---|---|---|"]
    for name, cls in sorted(classes.items()):
        inputs = "(its children's)" if cls.composite else ", ".join(f"`{r}`" for r in sorted(_inputs(cls))) or "-"
        desc, modality, output = (_cell(cls.description), _cell("|".join(declared_values(cls, "modality"))),
                                  _cell("|".join(declared_values(cls, "output"))))
        lines.append(f"| `{name}` | {_equation(cls.description)} | {modality} | {output} | {inputs} | {desc} |")
    for name, cls in sorted(classes.items()):
        fields = cls.Config.model_fields
        lines += ["", f"### `{name}` keys", ""]
        if not fields:
            lines.append("No keys.")
            continue
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for key, f in fields.items():
            default = "(required)" if f.is_required() else f"`{json.dumps(f.get_default(call_default_factory=True))}`"
            lines.append(f"| `{key}` | {_cell(_type_name(f.annotation))} | {default} | {_cell(f.description or '')} |")
    return "\n".join(lines + ["", END])


def _cell(text: str) -> str:
    """``text`` safe in a Markdown table cell."""
    return text.replace("|", "\\|")


def _inputs(cls) -> frozenset[str]:
    """The inputs of ``cls`` at its default config (they may depend on it: ``random``'s modality)."""
    try:
        return cls(None).all_requires
    except Exception:
        return cls.requires


def _splice(path: Path, begin: str, section: str, empty: str) -> str:
    """The text of ``path`` (``empty`` with the markers if it does not exist) with the part from
    ``begin`` to :data:`END` replaced by ``section`` (which holds both markers)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else empty
    if begin not in text or END not in text.split(begin, 1)[-1]:
        raise SystemExit(f"{path}: the markers of the generated section are missing ({begin} ... {END})")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(END, 1)
    return head + section + tail


def strategies_markdown() -> str:
    """docs/strategies.md with its generated section (:func:`strategies_reference`) current."""
    return _splice(DOCS / "strategies.md", BEGIN, strategies_reference(), f"# Strategies\n\n{BEGIN}\n{END}\n")


RESULTS_BEGIN = "<!-- BEGIN generated by `python -m maskkit.docgen` from docs/results.csv: edit the CSV, not this table -->"
#: the columns of docs/results.csv, in order
RESULTS_COLUMNS = ("result", "value", "command", "wall_time", "date", "commit", "section")


def _anchors(text: str) -> set[str]:
    """The explicit anchors (``<a id="NAME"></a>``) of a Markdown text."""
    import re

    return set(re.findall(r'<a (?:id|name)="([^"]+)"', text))


def results_table(csv_path: Path | None = None, anchors: set[str] | None = None) -> str:
    """The generated table of docs/results.md: one row per line of docs/results.csv (each number,
    the command that gives it, its measured wall time (``not recorded`` when the section gives
    none), the date it was measured, the commit that recorded it and the
    section of the notebook that holds the details). A row with missing cells, or whose section is
    not an anchor of docs/results.md (``anchors``), is one line naming the file, row and column."""
    import csv

    csv_path = csv_path or DOCS / "results.csv"
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = tuple(next(reader, ()))
        if header != RESULTS_COLUMNS:
            raise SystemExit(f"{csv_path}: header {','.join(header)!r}; expected {','.join(RESULTS_COLUMNS)}")
        rows = list(reader)
    lines = [RESULTS_BEGIN, "",
             "| result | value | command | wall time | measured | commit | details |", "|---|---|---|---|---|---|---|"]
    for i, row in enumerate(rows, start=2):
        if len(row) != len(RESULTS_COLUMNS) or not all(c.strip() for c in row):
            raise SystemExit(f"{csv_path}, line {i}: expected {len(RESULTS_COLUMNS)} non-empty cells "
                             f"({', '.join(RESULTS_COLUMNS)}), got {len(row)}")
        result, value, command, wall, date, commit, section = row
        if anchors is not None and section not in anchors:
            raise SystemExit(f"{csv_path}, line {i}: section {section!r} is not an anchor of docs/results.md "
                             f"(<a id=\"{section}\"></a>)")
        lines.append(f"| {_cell(result)} | {_cell(value)} | `{_cell(command)}` | {_cell(wall)} | {date} | {commit} | "
                     f"[{section}](#{section}) |")
    return "\n".join(lines + ["", END])


def results_markdown() -> str:
    """docs/results.md with its generated table (:func:`results_table`) current."""
    path = DOCS / "results.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return _splice(path, RESULTS_BEGIN, results_table(anchors=_anchors(text)), f"# Results\n\n{RESULTS_BEGIN}\n{END}\n")


TERMS_BEGIN = "<!-- BEGIN generated by `python -m maskkit.docgen` from maskkit.terms.TERMS: edit the table, not this section -->"


def terms_table() -> str:
    """The generated table of docs/model.md: one row per term of :data:`maskkit.terms.TERMS`
    (config key, log key, default weight, phases, objective module, description)."""
    from .terms import TERMS

    yes = {True: "yes", False: "no"}
    lines = [TERMS_BEGIN, "",
             "| term (`objectives.<name>`) | log key | default weight | in warm-up | needs pairs | in unmasked tune | objective | loss |",
             "|---|---|---|---|---|---|---|---|"]
    for t in TERMS:
        obj = t.objective if isinstance(t.objective, str) else f"{t.objective.__module__}:{t.objective.__qualname__}"
        lines.append(f"| `{t.name}` | `{t.log_key}` | {t.default_weight:g} | {yes[t.warmup]} | {yes[t.paired]} | "
                     f"{yes[t.tune]} | `{obj}` | {_cell(t.description)} |")
    return "\n".join(lines + ["", END])


def model_markdown() -> str:
    """docs/model.md with its generated terms table (:func:`terms_table`) current."""
    return _splice(DOCS / "model.md", TERMS_BEGIN, terms_table(), f"# Model\n\n{TERMS_BEGIN}\n{END}\n")


RECORDS_BEGIN = "<!-- BEGIN generated by `python -m maskkit.docgen` from maskkit.data.records.Record and Table: edit their fields, not this section -->"


def records_table() -> str:
    """The generated fields of :class:`maskkit.data.records.Record` and ``Table`` for
    docs/plugins.md: name, type, required or its default, and meaning (each field's ``doc``
    metadata; a field without one is a maskkit bug, raised here)."""
    import dataclasses

    from .data.records import Record, Table

    lines = [RECORDS_BEGIN]
    for cls in (Record, Table):
        lines += ["", f"`{cls.__module__}.{cls.__name__}`:", "", "| field | type | required | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if "doc" not in f.metadata:
                raise SystemExit(f"{cls.__name__}.{f.name}: no field(metadata={{'doc': ...}}) for docs/plugins.md")
            if f.default is not dataclasses.MISSING:
                need = f"no (default `{f.default!r}`)"
            elif f.default_factory is not dataclasses.MISSING:
                need = f"no (default `{f.default_factory()!r}`)"
            else:
                need = "yes"
            typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            lines.append(f"| `{f.name}` | `{_cell(typ)}` | {need} | {_cell(f.metadata['doc'])} |")
    return "\n".join(lines + ["", END])


def plugins_markdown() -> str:
    """docs/plugins.md with its generated Record / Table fields (:func:`records_table`) current."""
    return _splice(DOCS / "plugins.md", RECORDS_BEGIN, records_table(), f"# Writing a plugin\n\n{RECORDS_BEGIN}\n{END}\n")


ASSUMPTIONS_BEGIN = "<!-- BEGIN generated by `python -m maskkit.docgen` from the headings below: edit them, not this index -->"
_ASSUMPTION = r"^## (A\d+[a-z]?)\. (.+)$"


def assumptions_markdown(text: str | None = None) -> str:
    """docs/assumptions.md with its index current: between :data:`ASSUMPTIONS_BEGIN` and
    :data:`END` one row per ``## AN. title`` heading (number, title, link), and an explicit anchor
    ``<a id="aN"></a>`` on the line before each heading, so that ``assumptions.md#a25`` links stay
    put when a title changes. A number used twice is one line naming it."""
    import re

    path = DOCS / "assumptions.md"
    if text is None:
        text = path.read_text(encoding="utf-8") if path.is_file() else f"# Assumptions\n\n{ASSUMPTIONS_BEGIN}\n{END}\n"
    lines = [line for line in text.split("\n") if not re.fullmatch(r'<a id="a\d+[a-z]?"></a>', line)]
    out, rows, seen = [], [], set()
    for line in lines:
        m = re.match(_ASSUMPTION, line)
        if m:
            number, title = m.groups()
            if number in seen:
                raise SystemExit(f"{path}: assumption {number} is used twice; renumber one of them")
            seen.add(number)
            out.append(f'<a id="{number.lower()}"></a>')
            rows.append(f"| [{number}](#{number.lower()}) | {_cell(title)} |")
        out.append(line)
    section = "\n".join([ASSUMPTIONS_BEGIN, "", "| | assumption |", "|---|---|", *rows, "", END])
    text = "\n".join(out)
    if ASSUMPTIONS_BEGIN not in text or END not in text.split(ASSUMPTIONS_BEGIN, 1)[-1]:
        raise SystemExit(f"{path}: the markers of the generated index are missing ({ASSUMPTIONS_BEGIN} ... {END})")
    head, rest = text.split(ASSUMPTIONS_BEGIN, 1)
    return head + section + rest.split(END, 1)[1]


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for name, text in (("config.md", config_markdown()), ("cli.md", cli_markdown()), ("strategies.md", strategies_markdown()),
                       ("results.md", results_markdown()), ("assumptions.md", assumptions_markdown()),
                       ("model.md", model_markdown()), ("plugins.md", plugins_markdown())):
        path = DOCS / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python -m maskkit.docgen", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
