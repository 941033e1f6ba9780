"""Datasets as an extension point: the register_datasets hook, typed options models, names
written once, `maskkit datasets`, and the shipped third-party plugin (plugins/maskkit-jsonl)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from typing import Annotated

import pytest
from pydantic import Field
from typer.testing import CliRunner

from maskkit.cli import app
from maskkit.config import resolve
from maskkit.data.adapters import DatasetOptionError, options_model
from maskkit.data.records import load_table
from maskkit.errors import MaskkitError
from maskkit.plugins import get_registry, reset

BUILTINS = {"phantoms", "mimic", "padchest", "chexpert", "nih", "rsna", "covidx", "openi", "csv", "folder"}


@pytest.fixture(autouse=True)
def _shipped_plugins_only(monkeypatch):
    monkeypatch.setenv("MASKKIT_LOAD_PLUGINS", "maskkit-blockwise,maskkit-jsonl")
    reset()


def _jsonl_installed() -> bool:
    if "jsonl" in get_registry().datasets:
        return True
    if os.environ.get("MASKKIT_EXPECT_PLUGINS") == "1":
        pytest.fail("MASKKIT_EXPECT_PLUGINS=1 but plugins/maskkit-jsonl is not installed")
    pytest.skip("plugins/maskkit-jsonl is not installed (pip install -e plugins/maskkit-jsonl)")


def test_builtins_register_through_the_hook():
    reg = get_registry()
    assert BUILTINS <= set(reg.datasets)
    assert {reg.datasets[n].source for n in BUILTINS} == {"maskkit.datasets"}
    assert {n: reg.datasets[n].role for n in ("mimic", "padchest", "csv", "phantoms")} == \
        {"mimic": "paired", "padchest": "image_only", "csv": "auto", "phantoms": "auto"}


def test_options_model_is_the_signature():
    def adapter(root: str, views: list[str] | None = None, k: int = 3, flag=False, *, extra: str = "x", **kw):
        ...
    m = options_model(adapter, "t")
    assert list(m.model_fields) == ["root", "views", "k", "flag", "extra"]
    assert m.model_fields["root"].is_required() and m.model_fields["k"].default == 3
    assert m.model_validate({"root": "/r", "views": ["PA"], "k": "4"}).k == 4
    with pytest.raises(Exception):
        m.model_validate({"root": "/r", "nope": 1})


@pytest.mark.parametrize("name,opts,message", [
    ("mimic", {"root": "/x", "veiws": ["PA"]}, "dataset 'mimic' has no option 'veiws'; did you mean 'views'?"),
    ("chexpert", {"root": "/x", "one_per_study": "maybe"}, "dataset 'chexpert' option 'one_per_study': Input should be a valid boolean"),
    ("nih", {}, "dataset 'nih' needs option 'root'"),
    ("mimc", {"root": "/x"}, "unknown dataset 'mimc'; did you mean 'mimic'?"),
])
def test_bad_option_is_one_line_naming_adapter_and_key(name, opts, message):
    with pytest.raises(MaskkitError) as e:
        load_table(name, **opts)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_prepare_refuses_a_bad_option_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "prepare", "nih", "--out", str(tmp_path / "c"),
                          "-o", f"root={tmp_path}", "-o", "view=PA"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --option view: dataset 'nih' has no option 'view'; did you mean 'views'?; it takes root, csv_name, views, one_per_study"]


def test_names_are_written_once():
    """No list of dataset names outside the built-in plugin module: config, records and the CLI
    help read the registry."""
    import maskkit.cli
    import maskkit.config
    import maskkit.data.records

    assert not hasattr(maskkit.config, "DATASETS") and not hasattr(maskkit.data.records, "ADAPTERS")
    res = CliRunner().invoke(app, ["prepare", "--help"])
    assert "padchest, chexpert" not in res.output and "maskkit datasets" in " ".join(res.output.split())


def test_datasets_command_lists_roles_and_typed_options():
    res = CliRunner().invoke(app, ["datasets", "--json"])
    rows = {r["name"]: r for r in json.loads(res.output)}
    assert BUILTINS <= set(rows)
    opts = {o["option"]: o for o in rows["padchest"]["options"]}
    assert opts["views"] == {"option": "views", "type": "list['PA' | 'AP' | 'LATERAL'] | None", "default": "None",
                             "constraints": ""}
    assert opts["root"]["default"] == "required" and rows["padchest"]["role"] == "image_only"
    # options that take a fixed set of values list their choices (Literal in the adapter's signature)
    types = {(n, o["option"]): o["type"] for n, r in rows.items() for o in r["options"]}
    assert types[("chexpert", "uncertain")] == types[("mimic", "uncertain")] == "'ones' | 'zeros' | 'ignore'"
    assert types[("chexpert", "blank")] == types[("mimic", "blank")] == "'negative' | 'unknown'"
    assert types[("csv", "uncertain")] == "'ones' | 'zeros' | 'ignore' | None"
    assert types[("mimic", "split")] == "'train' | 'validate' | 'test' | None"
    assert {types[(n, "views")] for n in ("mimic", "padchest", "chexpert", "nih", "rsna", "openi")} == {"list['PA' | 'AP' | 'LATERAL'] | None"}
    table = CliRunner().invoke(app, ["datasets", "phantoms"], env={"COLUMNS": "200"}).output
    assert "phantoms" in table and "p_unpaired: float = 0.2, [0, 1]" in table and "n: int = 2000, [1, inf)" in table


def test_option_constraints_are_listed():
    """Every pydantic constraint of an option is shown beside its type (range, length, multiple,
    pattern), the adapter's Annotated bounds included (the hints resolve in this module's globals)."""
    from maskkit.options import constraints

    def load(n: Annotated[int, Field(ge=0)] = 0, frac: Annotated[float, Field(gt=0, le=1)] = 0.5,
             tag: Annotated[str, Field(min_length=1, max_length=8, pattern="^[a-z]+$")] = "x",
             step: Annotated[int, Field(multiple_of=8)] = 8, ks: list[Annotated[int, Field(ge=1)]] | None = None,
             plain: str = "y"):
        """test"""

    m = options_model(load, "t")
    assert {k: constraints(m, k) for k in m.model_fields} == {
        "n": "[0, inf)", "frac": "(0, 1]", "tag": "length >= 1, length <= 8, matching ^[a-z]+$",
        "step": "multiple of 8", "ks": "[1, inf)", "plain": ""}
    if _jsonl_installed():
        rows = {r["name"]: r for r in json.loads(CliRunner().invoke(app, ["datasets", "--json"]).output)}
        opts = {o["option"]: o for o in rows["jsonl"]["options"]}
        assert opts["min_report_chars"]["constraints"] == "[0, inf)"


def test_a_plugin_that_registers_a_builtin_dataset_name_is_skipped(tmp_path, monkeypatch, capsys):
    from test_plugins import install_fake_dist

    install_fake_dist(tmp_path, monkeypatch, "maskkit-dupdata", "mk_dupdata", '''
from maskkit import hookimpl
def csv(path: str):
    raise AssertionError("never called")
@hookimpl
def register_datasets(register):
    register("csv", csv)
''')
    reg = get_registry()
    assert reg.datasets["csv"].source == "maskkit.datasets"
    # the collision rule of every kind (Registry.claim): the item is skipped in one line, the plugin stays
    assert "maskkit-dupdata" not in reg.failed_plugins
    assert any("dataset 'csv', a built-in name" in line for line in reg.skipped)
    assert "dataset 'csv'" in capsys.readouterr().err


# --- the shipped JSON-lines plugin -----------------------------------------------------------

def _jsonl(tmp_path, lines):
    from PIL import Image
    import numpy as np

    for i in range(4):
        Image.fromarray(np.full((32, 32), 30 * i, np.uint8)).save(tmp_path / f"i{i}.png")
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x for x in lines) + "\n")
    return p


def test_jsonl_plugin_reads_records_and_trains_as_a_source(tmp_path):
    _jsonl_installed()
    p = _jsonl(tmp_path, [{"image": f"i{i}.png", "report": f"Heart normal {i}." if i % 2 else "", "patient": f"p{i}",
                           "labels": {"Cardiomegaly": i % 2, "Edema": None}} for i in range(4)])
    t = load_table("jsonl", path=str(p))
    assert t.label_names == ("Cardiomegaly", "Edema") and [r.report is not None for r in t.records] == [False, True, False, True]
    assert t.records[1].labels["Cardiomegaly"] == 1.0 and t.records[0].image_path == str(tmp_path / "i0.png")
    cfg, _ = resolve([f"data.sources={json.dumps([{'name': 'jsonl', 'path': str(p), 'weight': 1.0}])}"])
    from maskkit.data.build import build_corpus

    c = build_corpus(cfg, 96)
    assert c.sources[0].role == "paired" and c.sources[0].adapter.source == "maskkit-jsonl:jsonl"


@pytest.mark.parametrize("opts,line,message", [
    ({"on_missing_image": "ignore"}, None, "dataset 'jsonl' option 'on_missing_image': 'ignore' is not one of 'error', 'skip'"),
    ({"min_report_chars": -1}, None, "dataset 'jsonl' option 'min_report_chars': Input should be greater than or equal to 0"),
    ({"image_kye": "file"}, None, "dataset 'jsonl' has no option 'image_kye'; did you mean 'image_key'"),
    ({}, {"image": "i0.png", "labels": {"Edema": -1}}, "c.jsonl:1: label 'Edema': expected 0, 1 or null, got -1"),
    ({}, "{not json", "c.jsonl:1: not a JSON object"),
])
def test_jsonl_plugin_errors_are_one_line(tmp_path, opts, line, message):
    _jsonl_installed()
    p = _jsonl(tmp_path, [line or {"image": "i0.png"}])
    with pytest.raises(MaskkitError) as e:
        load_table("jsonl", path=str(p), **opts)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
