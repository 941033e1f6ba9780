"""ExperimentConfig resolution: layers, sources, shorthands, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from maskkit.config import ConfigError, ExperimentConfig, resolve
from maskkit.errors import MaskkitError


def test_layers_and_sources(tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  lr: 0.002\n  seed: 7\nimage_mask:\n  union:\n    ratio: 0.6\n")
    cfg, src = resolve(["preset=t3_attmim", f"config={tmp_path / 'run.yaml'}", "train.lr=1e-4", "image_mask.child_ratio=0.6"])
    assert cfg.train.lr == 1e-4 and src["train.lr"] == "cli"
    assert cfg.train.seed == 7 and src["train.seed"].startswith("file:")
    assert cfg.image_mask["union"]["ratio"] == 0.6 and cfg.image_mask["union"]["child_ratio"] == 0.6
    assert src["image_mask.child_ratio"] == "cli"
    assert cfg.model.arch == "maskkit-tiny" and src["model.arch"] == "scale:tiny"
    assert src["image_mask"].startswith("file:")  # the file changed part of the preset tree
    assert src["train.momentum"] == "default" and cfg.train.momentum == 0.9


def test_paper_scale_is_the_papers_settings():
    cfg, _ = resolve(["scale=paper"])
    t = cfg.train
    assert (t.optimizer, t.lr, t.momentum, t.warmup_steps, t.batch_size) == ("sgd", 5e-5, 0.9, 15000, 64)
    assert cfg.model.arch == "ViT-B-16" and cfg.model.mim.decoder_depth == 8 and cfg.model.mlm.layers == 3
    assert cfg.image_mask == {"union": {"of": ["report_cross", "prompt_driven", "image_self"], "child_ratio": 0.7, "ratio": 0.75}}


def test_shorthands():
    cfg, src = resolve(["data=mimic", "data.root=/data/mimic", 'data.options.views=["PA"]', "image_mask.of.1=image_self"])
    assert cfg.data.name == "mimic" and src["data.name"] == "cli" and cfg.data.options == {"views": ["PA"]}
    assert cfg.image_mask["union"]["of"][1] == "image_self"


def test_presets_without_warmup():
    cfg, src = resolve(["preset=clip"])
    assert cfg.train.warmup_steps == 0 and cfg.image_mask is None and cfg.text_mask is None
    cfg, _ = resolve(["preset=t3_mim_random"])
    assert cfg.train.warmup_steps == 60  # the tiny scale's warm-up


@pytest.mark.parametrize("args,message", [
    (["train.lrr=1"], "unknown key 'train.lrr'; did you mean 'train.lr'"),
    (["train.lr=fast"], "train.lr: Input should be a valid number, unable to parse string as a number (got 'fast')"),
    (["preset=xlpi"], "unknown preset 'xlpi'; did you mean 'xlip'"),
    (["image_mask.child_ratio=1.5"], "image_mask.union.child_ratio: Input should be less than or equal to 1 (got 1.5)"),
    (["image_mask.of.0=report_crss"], "image_mask.union.of[0]: unknown strategy 'report_crss'; did you mean 'report_cross'?"),
    (["data=mimc"], "data: unknown dataset 'mimc'; did you mean 'mimic'?"),
    (["preset=clip", "image_mask.ratio=0.5"], "image_mask.ratio: image_mask is null here (preset 'clip')"),
    (["scale=huge"], "scale: unknown scale 'huge'"),
    (["lr"], "argument 'lr': expected key=value"),
    (["model.image_mask=random"], "set the strategy tree at top level (image_mask=...), not under model.image_mask"),
    (["model.init_temperature=NaN"], "model.init_temperature: Input should be a finite number"),
    (["model.max_logit_scale=Infinity"], "model.max_logit_scale: Input should be a finite number"),
    (["model.init_temperature=0.005"], "model: init_temperature 0.005 gives a logit scale of 200.0, above max_logit_scale 100"),
    (["data.num_workers=-1"], "data.num_workers: Input should be greater than or equal to 0"),
    (["data.prefetch_factor=0"], "data.prefetch_factor: Input should be greater than or equal to 1"),
])
def test_errors_are_one_line(args, message):
    with pytest.raises(MaskkitError) as e:
        resolve(args)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_frozen_and_strict():
    cfg, _ = resolve([])
    with pytest.raises(Exception):
        cfg.train.lr = 1.0
    with pytest.raises(Exception):
        ExperimentConfig(bogus=1)


def test_generated_docs_are_current():
    out = subprocess.run([sys.executable, "-m", "maskkit.docgen", "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_each_data_option_remembers_where_it_was_set(tmp_path):
    """data.options given whole or key by key, in a file or on the command line: each option's
    source is where it was set (it was 'default' for a dict given on the command line)."""
    from maskkit.config import show_rows

    cfg, src = resolve(["data=csv", "data.path=x.csv", 'data.options={"uncertain": "zeros"}'])
    rows = {k: (v, s) for k, v, s in show_rows(cfg, src)}
    assert src["data.options.uncertain"] == "cli" and rows["data.options.uncertain"] == ("zeros", "cli")
    (tmp_path / "f.yaml").write_text("data:\n  name: csv\n  path: x.csv\n  options:\n    uncertain: zeros\n    report_col: null\n")
    cfg, src = resolve([f"config={tmp_path / 'f.yaml'}", "data.options.label_cols=[\"A\"]"])
    rows = {k: (v, s) for k, v, s in show_rows(cfg, src)}
    f = f"file:{tmp_path / 'f.yaml'}"
    assert rows["data.options.uncertain"] == ("zeros", f) and rows["data.options.report_col"] == (None, f)
    assert rows["data.options.label_cols"] == (["A"], "cli") and "data.options" not in rows
    # a whole mapping on the command line replaces the file's, and so do the sources
    cfg, src = resolve([f"config={tmp_path / 'f.yaml'}", 'data.options={"uncertain": "ones"}'])
    assert cfg.data.options == {"uncertain": "ones"} and {k: s for k, s in src.items() if k.startswith("data.options.")} == \
        {"data.options.uncertain": "cli"}
    # an entry key of data.sources set alone, in a shipped config
    cfg, src = resolve(["config=xlip_paper_corpus", "data.sources.0.root=/m"])
    rows = {k: (v, s) for k, v, s in show_rows(cfg, src)}
    assert rows["data.sources.0.root"] == ("/m", "cli") and rows["data.sources.1.root"] == ("/data/padchest", "config:xlip_paper_corpus")
    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "config", "show", "data=csv", "data.path=X",
                          'data.options={"uncertain":"zeros"}'], capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": "200"})
    (line,) = [l for l in out.stdout.splitlines() if "data.options" in l]
    assert [c.strip() for c in line.strip("│ ").split("│")] == ["data.options.uncertain", '"zeros"', "cli"]


@pytest.mark.parametrize("args,message", [
    (["config=xlip_paper_corpuss"], "config=xlip_paper_corpuss: no such file, nor a config shipped with maskkit; did you mean "
                                    "'xlip_paper_corpus'?; shipped: xlip_paper_corpus"),
    (["config=xlip_paper_corpus", "data.sources.2.root=/x"], "data.sources.2.root: '2' is not an index of data.sources, which has 2 "
                                                             "entries here (from cli)"),
])
def test_config_name_errors(args, message):
    with pytest.raises(ConfigError) as e:
        resolve(args)
    assert str(e.value) == message


def test_an_installed_package_holds_its_shipped_files(tmp_path):
    """A non-editable install (a wheel) holds every file the package reads by name: the shipped
    configs (config=xlip_paper_corpus), the sweeps, the tower configs, the lexicon; and
    config=xlip_paper_corpus resolves from it, run outside the repository."""
    import shutil
    import zipfile
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, src / name)
    shutil.copytree(repo / "maskkit", src / "maskkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w",
                          str(tmp_path / "whl")], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    if out.returncode != 0 and "No module named" in out.stderr:
        pytest.skip(f"cannot build a wheel here: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "whl").glob("*.whl")
    held = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(src).as_posix() for p in (src / "maskkit").rglob("*") if p.is_file() and p.suffix != ".py"}
    assert "maskkit/configs/xlip_paper_corpus.yaml" in shipped and not shipped - held, sorted(shipped - held)
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("import maskkit, json; from maskkit.config import resolve; from maskkit.sweep import builtin_sweeps; "
            "c, s = resolve(['config=xlip_paper_corpus']); "
            "print(json.dumps([maskkit.__file__, s['data.sources'], [e['name'] for e in c.data.sources], builtin_sweeps()]))")
    env = {**__import__("os").environ, "PYTHONPATH": str(target)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    import json

    file, source, names, sweeps = json.loads(res.stdout)
    assert file.startswith(str(target)) and source == "config:xlip_paper_corpus" and names == ["mimic", "padchest"]
    assert sweeps == ["fig6", "fig7", "seeds", "sparse_equal_steps", "sparse_equal_wallclock", "table3", "table4"]


@pytest.mark.slow  # a training run with its end-of-run evaluation (about a minute on 2 shared cores)
def test_the_documented_python_example_trains(tmp_path, monkeypatch):
    """docs/distributed.md's "Training from Python" example (resolve a preset + overrides, train),
    run as written, in an empty folder: it returns the run and its zero-shot result."""
    import contextlib
    import io
    import re
    from pathlib import Path

    doc = (Path(__file__).parent.parent / "docs" / "distributed.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"<!-- python-example: train -->\n```python\n(.*?)```", doc, re.S)
    monkeypatch.chdir(tmp_path)
    out, scope = io.StringIO(), {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/distributed.md", "exec"), scope)
    res = scope["result"]
    assert res.step == 10 and res.run_dir.parent == Path("runs") and (tmp_path / res.run_dir / "checkpoints").is_dir()
    assert (tmp_path / res.run_dir / "zeroshot.json").is_file() and res.evaluations["zeroshot"].native is not None
    assert str(res.run_dir) in out.getvalue()
