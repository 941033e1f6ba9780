"""Ablation sweeps: a list of presets and/or a grid of overrides, several seeds, one table.

Each run has its own directory ``OUT/runs/<preset>[-key=value...]-seed<k>``. A run that finished
has ``done.json`` and is never redone; a run that was interrupted is resumed from its latest
checkpoint. Results: ``results.csv`` / ``results.md`` (mean ± std over seeds of the held-out
zero-shot mean AUC, F1 and ACC) and ``results.png``.
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

import numpy as np

from .errors import MaskkitError
from .io import atomic_write_bytes, atomic_write_text


@dataclass
class SweepSpec:
    presets: list[str]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    args: list[str] = field(default_factory=list)
    description: str = ""

    def runs(self) -> list[tuple[str, dict[str, Any], int]]:
        keys = list(self.grid)
        combos = [dict(zip(keys, vals)) for vals in itertools.product(*(self.grid[k] for k in keys))] or [{}]
        return [(p, c, s) for p in self.presets for c in combos for s in self.seeds]


def builtin_sweeps() -> list[str]:
    return sorted(f.name[:-5] for f in (resources.files("maskkit") / "sweeps").iterdir() if f.name.endswith(".yaml"))


def load_sweep(name_or_path: str) -> SweepSpec:
    from .compose import load_spec

    p = Path(name_or_path)
    if not p.is_file():
        f = resources.files("maskkit") / "sweeps" / f"{name_or_path}.yaml"
        if not f.is_file():
            from .errors import close_matches

            raise MaskkitError(f"sweep '{name_or_path}' is neither a file nor a built-in sweep"
                               f"{close_matches(name_or_path, builtin_sweeps()) or ''}; built-ins: {', '.join(builtin_sweeps())}")
        p = Path(str(f))
    data = load_spec(p)
    unknown = set(data) - {"presets", "grid", "seeds", "args", "description"}
    if unknown:
        raise MaskkitError(f"{p}: unknown sweep key '{sorted(unknown)[0]}'; expected presets, grid, seeds, args, description")
    return SweepSpec(list(data.get("presets") or ["xlip"]), dict(data.get("grid") or {}), list(data.get("seeds") or [0]),
                     list(data.get("args") or []), data.get("description", ""))


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


def run_sweep(spec: SweepSpec, out: Path, extra_args: list[str] = (), console=None) -> list[dict]:
    from .config import resolve
    from .train import train

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    plan = spec.runs()
    for n, (preset, combo, seed) in enumerate(plan, 1):
        name = slug(preset, combo, seed)
        run_dir = out / "runs" / name
        done = run_dir / "done.json"
        if done.is_file():
            rows.append(json.loads(done.read_text()))
            if console:
                console.print(f"[{n}/{len(plan)}] {name}: done before, kept", highlight=False)
            continue
        args = [f"preset={preset}", *spec.args, *extra_args, *[f"{k}={json.dumps(v)}" for k, v in combo.items()],
                f"train.seed={seed}", f"runtime.out_dir={out / 'runs'}", f"runtime.name={name}", "runtime.eval_zeroshot=true"]
        if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").glob("step_*.pt")):
            args.append("runtime.resume=latest")
        elif run_dir.exists():
            args.append("runtime.overwrite=true")
        cfg, sources = resolve(args)
        if console:
            console.print(f"[{n}/{len(plan)}] {name}", highlight=False)
        result = train(cfg, sources, console=console)
        z = result.zeroshot
        row = {"preset": preset, **{k: v for k, v in combo.items()}, "seed": seed, "run": name, "steps": result.step,
               "auc": z.mean("auc") if z else None, "f1": z.mean("f1") if z else None, "acc": z.mean("acc") if z else None}
        atomic_write_text(done, json.dumps(row))
        rows.append(row)
    write_results(rows, spec, out)
    return rows


def summarise(rows: list[dict], spec: SweepSpec) -> list[dict]:
    keys = list(spec.grid)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["preset"], *[r.get(k) for k in keys]), []).append(r)
    out = []
    for g, rs in groups.items():
        row = {"preset": g[0], **dict(zip(keys, g[1:])), "seeds": len(rs)}
        for m in ("auc", "f1", "acc"):
            v = np.array([r[m] for r in rs if r.get(m) is not None], dtype=float)
            row[f"{m}_mean"] = float(v.mean()) if len(v) else None
            row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0 if len(v) else None
        out.append(row)
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
    head = ["preset", *keys, "seeds", "zero-shot AUC", "F1", "ACC"]
    md = [f"# {spec.description or 'sweep'}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    fmt = lambda r, m: "n/a" if r[f"{m}_mean"] is None else f"{100 * r[f'{m}_mean']:.2f} ± {100 * r[f'{m}_std']:.2f}"
    for r in summary:
        md.append("| " + " | ".join([r["preset"], *[str(r[k]) for k in keys], str(r["seeds"]), fmt(r, "auc"), fmt(r, "f1"), fmt(r, "acc")]) + " |")
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
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
