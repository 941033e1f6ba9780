"""Settings a fresh user found silently accepted: a device this machine does not
have, a warm-up longer than the run, and data keys that nothing reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from maskkit.config import ConfigError, resolve, show_rows
from maskkit.options import DEVICES

# --- 5. runtime.device: checked when the config resolves ------------------------------------


@pytest.mark.parametrize("name", ["tpu", "gpu", "xla", "meta", "cpu:0", "cuda:x", "CUDA", ""])
def test_a_device_maskkit_does_not_run_on_is_refused_at_resolve(name):
    with pytest.raises(ConfigError) as e:
        resolve([f"runtime.device={name}"])
    assert str(e.value) == f"runtime.device: {name!r} is not a device maskkit runs on; expected {DEVICES}"


def test_a_device_this_machine_lacks_is_refused_at_resolve():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError) as e:
        resolve([f"runtime.device=cuda:{n}"])
    msg = str(e.value)
    assert msg.startswith(f"runtime.device: 'cuda:{n}' asked for, but ") and "\n" not in msg
    assert ("no CUDA device is available" in msg) if not n else (f"this machine has {n} CUDA device" in msg)
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match=r"^runtime.device: 'mps' asked for, but MPS \(the Apple-silicon GPU\) is not available"):
            resolve(["runtime.device=mps"])
    with pytest.raises(ConfigError) as e:
        resolve(["runtime.device=cuda", f"runtime.devices={n + 1}"])
    assert str(e.value).startswith("runtime.device" + (": 'cuda' asked for" if not n else
                                                        f"s={n + 1}: {n + 1} processes on CUDA need {n + 1} GPUs"))
    assert resolve(["runtime.device=cpu", "runtime.devices=2"])[0].runtime.device == "cpu"
    # a checkpoint's config is not checked against this machine (a GPU run evaluated on a laptop)
    from maskkit.config import ExperimentConfig

    saved = resolve([])[0].model_dump(mode="json")
    saved["runtime"]["device"] = "cuda:7"
    assert ExperimentConfig.model_validate(saved, context={"saved": True}).runtime.device == "cuda:7"


def test_the_cli_says_so_in_one_line():
    for args, line in ((["run", "runtime.device=tpu", "runtime.out_dir=/nonexistent/x"],
                        f"error: runtime.device: 'tpu' is not a device maskkit runs on; expected {DEVICES}"),
                       (["check", "random", "--device", "tpu"],
                        f"error: --device: 'tpu' is not a device maskkit runs on; expected {DEVICES}")):
        out = subprocess.run([sys.executable, "-m", "maskkit.cli", *args], capture_output=True, text=True, timeout=600)
        assert out.returncode == 2 and out.stderr.strip().splitlines() == [line], out.stderr


# --- 6. a warm-up longer than the run ---------------------------------------------------------

def test_warmups_longer_than_the_run_are_one_line_each():
    from maskkit.objectives import AlignLoss, MIMLoss, MLMLoss
    from maskkit.training.optim import lr_factor, schedule_warnings

    xlip = [AlignLoss(1.0), MIMLoss(1.0), MLMLoss(1.0)]
    cfg = resolve(["scale=paper", "train.steps=100"])[0]  # the paper's 15,000 masked-modelling steps, lr warm-up 0
    assert schedule_warnings(cfg, xlip) == [
        "train.warmup_steps=15000 is not below train.steps=100: the run ends in the masked-modelling-only warm-up, so "
        "objectives.align never trains (set train.warmup_steps below train.steps)"]
    cfg = resolve(["train.steps=8", "train.lr_warmup_steps=10", "train.warmup_steps=2"])[0]
    (line,) = schedule_warnings(cfg, xlip)
    assert line == ("train.lr_warmup_steps=10 is more than train.steps=8: the learning rate rises to 8/10 of train.lr=0.0005 "
                    "and never reaches it (set train.lr_warmup_steps to at most train.steps)")
    assert max(lr_factor(s, cfg) for s in range(8)) == pytest.approx(8 / 10)  # what the line says
    ok = resolve(["train.steps=10", "train.lr_warmup_steps=10", "train.warmup_steps=9"])[0]
    assert max(lr_factor(s, ok) for s in range(10)) == 1.0 and schedule_warnings(ok, xlip) == []
    # no term waits for the warm-up (clip), or the one that would is weighted 0: nothing to say
    assert schedule_warnings(resolve(["train.steps=8", "train.warmup_steps=60", "train.lr_warmup_steps=0"])[0], [AlignLoss(1.0)]) == []
    assert schedule_warnings(resolve(["train.steps=8", "train.warmup_steps=60", "train.lr_warmup_steps=0"])[0], [AlignLoss(0.0), MIMLoss(1.0)]) == []


@pytest.mark.slow
def test_the_run_prints_the_warning_before_step_1(tmp_path):
    from rich.console import Console

    from maskkit.train import train

    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        train(*resolve(["data.n=8", "data.val_n=0", "train.batch_size=4", "train.steps=2", "train.warmup_steps=60",
                        "runtime.progress=false", "runtime.evaluations=[]", "model.mim.decoder_depth=1",
                        "model.mim.decoder_width=32", "model.mlm.layers=1", "model.mim.decoder_heads=2",
                        f"runtime.out_dir={tmp_path}"]), console=Console(file=f, width=400))
    lines = log.read_text().splitlines()
    assert ("warning: train.warmup_steps=60 is not below train.steps=2: the run ends in the masked-modelling-only warm-up, "
            "so objectives.align never trains (set train.warmup_steps below train.steps)") in lines
    # scale=tiny's 10 learning-rate warm-up steps are more than 2 too
    assert ("warning: train.lr_warmup_steps=10 is more than train.steps=2: the learning rate rises to 2/10 of "
            "train.lr=0.0005 and never reaches it (set train.lr_warmup_steps to at most train.steps)") in lines
    warned = max(i for i, l in enumerate(lines) if l.startswith("warning: train."))
    assert warned < lines.index(next(l for l in lines if l.startswith("non-finite steps:")))  # before the run's end summary


# --- 7. keys nothing reads --------------------------------------------------------------------

def test_a_key_nothing_reads_is_refused_when_set_and_not_shown(tmp_path):
    src = json.dumps([{"name": "csv", "path": "a.csv"}])
    for args, message in (
        (["data=phantoms", "data.cache=/c"], "data.cache: dataset 'phantoms' builds its own images and reads no prepared cache; remove the key"),
        ([f'data.sources=[{{"name": "phantoms", "cache": "/c"}}]'],
         "data.sources[0] (phantoms).cache: dataset 'phantoms' builds its own images and reads no prepared cache; remove the key"),
        (["data.name=phantoms", f"data.sources={src}"],
         "data.name: not read when data.sources is given (each entry names its dataset and sets its own options); remove data.name (from cli)"),
        ([f"data.sources={src}", "data.n=5"],
         "data.n: not read when data.sources is given (each entry names its dataset and sets its own options); remove data.n (from cli)"),
        ([f"data.sources={src}", "data.cache=/c"], "data.sources: give each source its own root/path/options/cache; data.root, "
                                                   "data.path, data.options and data.cache are for the single-source form"),
        (["data=csv", "data.path=a.csv", "data.val_n=3"],
         "data.val_n: dataset 'csv' takes no option 'val_n' (it takes path, image_col, report_col, label_cols, patient_col, "
         "image_root, captions_from_labels, uncertain); remove data.val_n (from cli)"),
    ):
        with pytest.raises(ConfigError) as e:
            resolve(args)
        assert str(e.value) == message
    for args, message in ((["data.decode_policy=raise"], "data.decode_policy: no image file is decoded (dataset 'phantoms' "
                                                          "builds its own images); remove data.decode_policy (from cli)"),
                          (["data.ner_model=en_core_sci_sm"], "data.ner_model: only data.ner=scispacy reads a model (data.ner is "
                                                              "lexicon); remove data.ner_model (from cli)")):
        with pytest.raises(ConfigError) as e:
            resolve(args)
        assert str(e.value) == message
    assert resolve(["data=csv", "data.path=a.csv", "data.decode_policy=raise"])[0].data.decode_policy == "raise"
    mixed = json.dumps([{"name": "phantoms"}, {"name": "csv", "path": "a.csv"}])
    assert resolve([f"data.sources={mixed}", "data.max_skip_fraction=0.5"])[0].data.max_skip_fraction == 0.5
    (tmp_path / "f.yaml").write_text(f"data:\n  name: csv\n  path: a.csv\n  p_unpaired: 0.5\n")
    with pytest.raises(ConfigError, match=rf"^data.p_unpaired: dataset 'csv' takes no option 'p_unpaired' .*; remove "
                                          rf"data.p_unpaired \(from file:{tmp_path / 'f.yaml'}\)$"):
        resolve([f"config={tmp_path / 'f.yaml'}"])
    # what a scale or preset set and nothing reads is not shown (scale=tiny sets data.n for the phantoms)
    cfg, s = resolve([f"data.sources={src}"])
    keys = [k for k, _, _ in show_rows(cfg, s)]
    single = {f"data.{k}" for k in ("name", "root", "path", "options", "cache", "n", "val_n", "p_unpaired", "seed")}
    assert "data.sources.0.path" in keys and not single & set(keys) and "data.num_workers" in keys
    keys = [k for k, _, _ in show_rows(*resolve(["data=csv", "data.path=a.csv"]))]
    assert "data.path" in keys and "data.cache" in keys and not {"data.n", "data.val_n", "data.root", "data.seed"} & set(keys)
    keys = [k for k, _, _ in show_rows(*resolve([]))]
    assert {"data.n", "data.val_n", "data.seed"} <= set(keys) and not {"data.cache", "data.decode_policy", "data.ner_model"} & set(keys)


# --- settings that make every step non-finite: refused when the config resolves -------------------

@pytest.mark.parametrize("setting,message", [
    ("model.image_std=[0,0,0]", "model.image_std: expected 3 numbers > 0 (pixels are divided by them; 0 makes every input "
                                "inf and every step non-finite), got [0.0, 0.0, 0.0]"),
    ("model.image_std=[0.2,-0.1,0.2]", "model.image_std: expected 3 numbers > 0 (pixels are divided by them; 0 makes every "
                                       "input inf and every step non-finite), got [0.2, -0.1, 0.2]"),
    ("objectives.mim=1e38", "objectives.mim: Input should be less than or equal to 1000 (got 1e+38); expected a finite "
                            "number in [0, 1000]"),
    ("objectives.align=1001", "objectives.align: Input should be less than or equal to 1000 (got 1001); expected a finite "
                              "number in [0, 1000]"),
    ("model.max_logit_scale=1e38", "model.max_logit_scale: Input should be less than or equal to 10000 (got 1e+38); "
                                   "expected a finite number in (1, 10000]"),
])
def test_settings_that_make_every_step_non_finite_are_refused_at_resolve(setting, message):
    with pytest.raises(ConfigError) as e:
        resolve([setting])
    assert str(e.value) == message
    assert resolve(["objectives.mim=1000", "model.image_std=[1e-3,1e-3,1e-3]"])[0].objectives.mim == 1000


def test_a_yaml_flow_value_on_the_command_line_reads_as_in_a_config_file():
    cfg = resolve(["data.sources=[{name: csv, path: /x/d.csv, weight: 0.5}, {name: phantoms, role: image_only}]"])[0]
    assert cfg.data.sources == [{"name": "csv", "path": "/x/d.csv", "weight": 0.5}, {"name": "phantoms", "role": "image_only"}]
    assert resolve(["model.image_std=[1e-3,1e-3,1e-3]"])[0].model.image_std == (1e-3, 1e-3, 1e-3)  # JSON first: 1e-3 a number
    with pytest.raises(ConfigError) as e:
        resolve(["data.sources=[{name: csv, path: x.csv"])
    assert str(e.value) == ("data.sources: '[{name: csv, path: x.csv' starts with '[' but is neither JSON nor YAML flow style "
                            "(expected ',' or '}', but got '<stream end>' at character 25); e.g. [{name: csv, path: x.csv}] or [1, 2]")


@pytest.mark.parametrize("how", ["file", "cli", "cli-mapping"])
def test_an_empty_data_sources_is_refused_not_trained_on_phantoms(tmp_path, how):
    """``data.sources: []`` used to fall back to the single-source default (phantoms) silently."""
    f = tmp_path / "cfg.yaml"
    f.write_text("data:\n  sources: []\n")
    args = {"file": [f"config={f}"], "cli": ["data.sources=[]"], "cli-mapping": ['data={"sources": []}']}[how]
    src = f"file:{f}" if how == "file" else "cli"
    with pytest.raises(ConfigError) as e:
        resolve(args)
    assert str(e.value) == ("data.sources is empty; expected at least one entry such as {name: csv, path: x.csv} (or leave "
                            f"data.sources out for the single-source form data=NAME) (from {src})")


def test_a_duplicate_key_is_refused_in_config_files_cli_values_compositions_and_sweeps(tmp_path):
    """YAML (and JSON) let the last of two equal keys win: ``{name: csv, path: a.csv, path: b.csv}``
    read b.csv silently. Every reader of maskkit's YAML refuses it in one line: file, line, key."""
    from maskkit.compose import load_spec
    from maskkit.errors import MaskkitError
    from maskkit.sweep import load_sweep

    f = tmp_path / "cfg.yaml"
    f.write_text("data:\n  sources:\n    - {name: csv, path: a.csv, path: b.csv}\n")
    with pytest.raises(MaskkitError) as e:
        resolve([f"config={f}"])
    assert str(e.value) == f"{f}: line 3: key 'path' given twice in one mapping; give each key once"
    f.write_text("train:\n  lr: 1.0e-4\n  steps: 3\n  lr: 1.0e-3\n")
    with pytest.raises(MaskkitError) as e:
        resolve([f"config={f}"])
    assert str(e.value) == f"{f}: line 4: key 'lr' given twice in one mapping (first on line 2); give each key once"
    j = tmp_path / "cfg.json"
    j.write_text('{"train": {"lr": 0.1, "lr": 0.2}}')
    with pytest.raises(MaskkitError, match=r"cfg.json: key 'lr' given twice in one mapping; give each key once$"):
        resolve([f"config={j}"])
    # a YAML-flow value on the command line, and JSON
    with pytest.raises(ConfigError) as e:
        resolve(["data.sources=[{name: csv, path: a.csv, path: b.csv}]"])
    assert str(e.value) == ("data.sources: '[{name: csv, path: a.csv, path: b.csv}]': at character 27: key 'path' given twice "
                            "in one mapping; give each key once")
    with pytest.raises(ConfigError, match=r"""^data.sources: '\[{"name": "csv", "name": "x"}\]': key 'name' given twice"""):
        resolve(['data.sources=[{"name": "csv", "name": "x"}]'])
    # a composition file and a sweep file
    c = tmp_path / "tree.yaml"
    c.write_text("random:\n  ratio: 0.5\n  ratio: 0.7\n")
    with pytest.raises(MaskkitError, match=rf"^{c}: line 3: key 'ratio' given twice in one mapping \(first on line 2\)"):
        load_spec(c)
    s = tmp_path / "sweep.yaml"
    s.write_text("presets: [xlip]\nseeds: [0]\nseeds: [1]\n")
    with pytest.raises(MaskkitError, match=rf"^{s}: line 3: key 'seeds' given twice"):
        load_sweep(str(s))
    # a merge key may be overridden, as YAML defines
    from maskkit.compose import load_yaml

    assert load_yaml("a: &b {lr: 1, steps: 2}\nc: {<<: *b, lr: 3}\n")["c"] == {"lr": 3, "steps": 2}


@pytest.mark.parametrize("text,line", [
    ("data: [1, 2]", "data: expected a mapping of its keys or a dataset name (data=mimic), got a list"),
    ("train: [seed, 1]", "train: expected a mapping of its keys, got a list"),
    ("model:\n  mim: 3", "model.mim: expected a mapping of its keys, got a number (3)"),
    ("data:\n  sources:\n    name: csv\n    path: x.csv", "data.sources: expected a list of entries such as [{name: csv, path: x.csv}], got a mapping"),
    ("data:\n  sources: [null]", "data.sources[0]: expected a mapping such as {name: csv, path: x.csv}, got null"),
    ("data:\n  sources: [{name: phantoms}, csv]", "data.sources[1]: expected a mapping such as {name: csv, path: x.csv}, got a string ('csv')"),
    ("data:\n  options: [views]", "data.options: expected a mapping of adapter options such as {uncertain: zeros}, got a list"),
])
def test_a_value_of_the_wrong_shape_says_what_was_expected(tmp_path, text, line):
    """``data:`` as a list read "unknown key 'data'", ``sources:`` as a mapping "'name' is not an index
    of data.sources", ``sources: [null]`` pydantic's "data.sources.0: Input should be a valid
    dictionary": one place (config._check_shape) now says the key, what it takes and what it got."""
    f = tmp_path / "cfg.yaml"
    f.write_text(text + "\n")
    with pytest.raises(ConfigError) as e:
        resolve([f"config={f}"])
    assert str(e.value) == f"{line} (from file:{f})"


def test_shape_errors_on_the_command_line_and_the_bracket_notation_of_list_items():
    with pytest.raises(ConfigError, match=r"^train: expected a mapping of its keys, got a list \(from cli\)$"):
        resolve(["train=[1]"])
    with pytest.raises(ConfigError, match=r"^data.sources: expected a list of entries .*, got a mapping \(from cli\)$"):
        resolve(['data={"sources": {"name": "csv"}}'])
    # pydantic's own errors inside a list name the item as data.sources[0] does
    from pydantic import BaseModel, ValidationError

    from maskkit.config import _one_line

    class M(BaseModel):
        xs: list[int]

    with pytest.raises(ValidationError) as e:
        M(xs=[1, "a"])
    assert _one_line(e.value, set()).startswith("xs[1]: ")
