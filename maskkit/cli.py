"""The ``maskkit`` command line (typer + rich)."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import MaskkitError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="maskkit: masking strategies for medical vision-language pretraining (XLIP).")
console = Console()
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
    from .plugins import get_registry, list_strategies

    reg = get_registry()
    rows = []
    for name in list_strategies(pattern, modality):
        cls = reg.strategies[name]
        if cls.composite:
            inputs = "(its children's)"
        elif name == "random" or not cls.requires:
            inputs = ", ".join(sorted(cls(None).all_requires)) or "-"
        else:
            inputs = ", ".join(sorted(cls.requires))
        modal = "image|text" if "modality" in cls.Config.model_fields else ("(children's)" if cls.composite else cls.modality)
        rows.append({"name": name, "source": reg.strategy_sources[name], "modality": modal,
                     "output": cls.output, "inputs": inputs, "description": cls.description})
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
        err_console.print(f"[yellow]plugin '{dist}' failed to load: {why}[/]")


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


@app.command("compose")
def compose_cmd(
    spec: str = typer.Argument(..., help="A preset name, a .yaml/.toml/.json file, or an inline JSON tree."),
    role: str = typer.Option("image_mask", help="Which tree of a preset: image_mask, image_only_mask or text_mask."),
) -> None:
    """Validate a composition and print it fully resolved (every default filled in)."""
    from pathlib import Path

    from .compose import build_strategy, load_spec, to_spec
    from .plugins import get_registry

    if spec.lstrip().startswith(("{", "[", '"')):
        try:
            tree, where = json.loads(spec), "inline"
        except json.JSONDecodeError as exc:
            raise MaskkitError(f"inline composition is not valid JSON: {exc}") from None
    elif Path(spec).suffix.lower() in (".yaml", ".yml", ".toml", ".json"):
        tree, where = load_spec(spec), spec
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
    spec: str = typer.Argument(..., help="A strategy name or an inline JSON composition."),
) -> None:
    """Run maskkit's conformance checks on a strategy (what a plugin author runs)."""
    from .testing import check_strategy

    tree = json.loads(spec) if spec.lstrip().startswith("{") else spec
    try:
        check_strategy(tree)
    except AssertionError as exc:
        raise MaskkitError(f"conformance failed: {exc}") from None
    console.print(f"[green]ok[/]: {spec} passes the maskkit conformance checks")


@app.command("phantoms")
def phantoms_cmd(
    n: int = typer.Option(2000, "--n", min=1, help="Number of phantoms."),
    out: str = typer.Option(..., "--out", help="Output folder (created; must not exist unless --overwrite)."),
    seed: int = typer.Option(0, help="Generator seed; the same seed gives identical files."),
    size: int = typer.Option(224, help="Image side in pixels."),
    unpaired: float = typer.Option(0.2, min=0.0, max=1.0, help="Fraction of phantoms without a report."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Write the synthetic chest X-ray phantom dataset (images, lesion masks, reports, labels) to disk."""
    from .data.export import write_phantoms

    path = write_phantoms(out, n=n, seed=seed, size=size, p_unpaired=unpaired, overwrite=overwrite)
    console.print(f"wrote {n} phantoms to {path} (read it back with data=csv data.path={path / 'phantoms.csv'})")


@app.command("prepare")
def prepare_cmd(
    dataset: str = typer.Argument(..., help="Adapter: mimic, padchest, chexpert, nih, rsna, covidx, openi, csv, folder."),
    out: str = typer.Option(..., "--out", help="Cache folder to create."),
    size: int = typer.Option(224, help="Training resolution (square side in pixels)."),
    option: list[str] = typer.Option([], "--option", "-o", help="Adapter option KEY=VALUE (e.g. root=/data/nih, views=[\"PA\"])."),
    overwrite: bool = typer.Option(False, help="Replace an existing cache folder."),
) -> None:
    """Resize every image of a dataset once and store it as a uint8 memory-mapped cache."""
    from .data.cache import prepare_cache
    from .data.records import load_table

    opts = {}
    for item in option:
        if "=" not in item:
            raise MaskkitError(f"--option {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            opts[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            opts[k.strip()] = v
    try:
        table = load_table(dataset, **opts)
    except TypeError as exc:
        raise MaskkitError(f"{dataset}: bad adapter option ({exc})") from None
    index = prepare_cache(table, out, size=size, overwrite=overwrite)
    console.print(f"cached {len(table)} images of {dataset} at {size}px in {out}; {len(index['skipped'])} skipped")
    for i, why in list(index["skipped"].items())[:20]:
        err_console.print(f"  skipped: {why}", highlight=False)


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_cmd(args: list[str] = typer.Argument(None, help="key=value settings: preset=xlip scale=tiny config=file.yaml train.lr=1e-4 ...")) -> None:
    """Pretrain: resolve preset -> config file -> key=value, then run the training recipe."""
    import os
    import subprocess

    from .config import resolve
    from .distributed import under_torchrun

    cfg, sources = resolve(list(args or []))
    if cfg.runtime.devices > 1 and not under_torchrun():
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.runtime.devices}",
               "-m", "maskkit.cli", *(["--debug"] if _state["debug"] else []), "run", *(args or [])]
        err_console.print(f"launching {cfg.runtime.devices} processes with torchrun", highlight=False)
        raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))
    from .train import train

    result = train(cfg, sources, console=err_console)
    if os.environ.get("RANK", "0") != "0":
        return
    console.print(f"run directory: {result.run_dir}  (step {result.step})", highlight=False)
    if result.zeroshot is not None:
        console.print(result.zeroshot.table())


config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def config_show_cmd(
    args: list[str] = typer.Argument(None, help="the same key=value settings maskkit run takes"),
    as_json: bool = typer.Option(False, "--json", help="Print the resolved config as JSON."),
) -> None:
    """Print the resolved config and where each value came from (default, scale, preset, file, cli)."""
    from .config import flat_items, resolve

    cfg, sources = resolve(list(args or []))
    if as_json:
        print(json.dumps({"config": cfg.model_dump(mode="json"), "sources": sources}, indent=2))
        return
    table = Table(title=f"resolved config (preset={cfg.preset}, scale={cfg.scale})")
    for col in ("key", "value", "source"):
        table.add_column(col, overflow="fold")
    for key, value in flat_items(cfg).items():
        src = sources.get(key) or next((v for k, v in sources.items() if k.startswith(key + ".")), "default")
        table.add_row(key, json.dumps(value), src)
    console.print(table)


def main() -> None:
    try:
        app(standalone_mode=False)
    except MaskkitError as exc:
        if _state["debug"]:
            raise
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
