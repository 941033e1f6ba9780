"""Evaluations as an extension point: the contract, the register_evaluations
hook, the registry kind and its collision rule, and the shipped evaluation plugin."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pluggy
import pytest

from maskkit import hookspecs
from maskkit.errors import MaskkitError, PluginError, UnknownNameError
from maskkit.eval.contract import EvalResult, make_evaluation, parse_settings
from maskkit.plugins import BUILTIN_PLUGINS, build_registry, get_registry, reset

BUILTIN = ("zeroshot", "finetune", "masks", "retrieval", "grounding", "padchest")
PLUGIN_DIR = Path(__file__).resolve().parents[1] / "plugins" / "maskkit-reportlen"


def manager(*plugins) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("maskkit")
    pm.add_hookspecs(hookspecs)
    for modname in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)
    for name, mod in plugins:
        pm.register(mod, name=name)
    return pm


def plugin_module(tmp_path, monkeypatch, module: str, code: str):
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    sys.modules.pop(module, None)
    return importlib.import_module(module)


EVAL_PLUGIN = '''
from pydantic import BaseModel, ConfigDict, Field
from maskkit import hookimpl
from maskkit.eval.contract import EvalResult

class S(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(1, ge=1)

def constant(run, s):
    """A constant metric (test plugin)."""
    return EvalResult("{name}", {{"{name}/k": s.k}}, [{{"item": 1}}])

@hookimpl
def register_evaluations(register):
    register("{name}", constant, settings=S)
    register("{extra}", constant, settings=S)
'''


# --- registration ----------------------------------------------------------------------------------

def test_builtins_register_through_the_hook_with_typed_settings():
    reg = build_registry(manager())
    assert set(BUILTIN) <= set(reg.evaluations)
    for name in BUILTIN:
        ev = reg.evaluations[name]
        assert ev.source == "maskkit.evaluations" and reg.holders[("evaluation", name)] == "maskkit.evaluations"
        assert ev.description and "\n" not in ev.description
        ev.parse({})  # every default validates
    assert reg.evaluations["zeroshot"].ensemble and not reg.evaluations["finetune"].ensemble
    assert reg.evaluations["zeroshot"].end_of_run == {"bootstrap": 200}


def test_settings_mirror_the_library_constants():
    """The settings models spell the choices without importing torch; they must be the library's."""
    import typing

    from maskkit.eval.padchest import SUBSETS
    from maskkit.eval.zeroshot import DEFAULT_PROMPT_STYLE, NO_FINDING_MODES, PROMPT_STYLES
    from maskkit.eval.segmentation import TASKS
    from maskkit.evaluations import FinetuneSettings, FinetuneTask, NoFinding, PadChestSubset, PromptStyle, ZeroshotSettings

    assert set(typing.get_args(PromptStyle)) == set(PROMPT_STYLES)
    assert set(typing.get_args(NoFinding)) == set(NO_FINDING_MODES)
    assert set(typing.get_args(PadChestSubset)) == set(SUBSETS)
    assert ZeroshotSettings().prompts == DEFAULT_PROMPT_STYLE
    assert set(typing.get_args(FinetuneTask)) == set(TASKS) and FinetuneSettings().task == "classification"


def test_a_builtin_evaluation_name_taken_by_a_plugin_is_skipped_in_one_line(tmp_path, monkeypatch, capsys):
    mod = plugin_module(tmp_path, monkeypatch, "mk_evshadow", EVAL_PLUGIN.format(name="zeroshot", extra="mine"))
    reg = build_registry(manager(("maskkit-evshadow:ev", mod)))
    assert reg.evaluations["zeroshot"].source == "maskkit.evaluations"
    assert reg.evaluations["mine"].source == "maskkit-evshadow:ev"  # the rest of the plugin registers
    line = "plugin 'maskkit-evshadow:ev' registers evaluation 'zeroshot', a built-in name; its evaluation is skipped"
    assert reg.skipped == [line] and capsys.readouterr().err == f"maskkit: {line}\n"


def test_two_plugins_registering_one_evaluation_name_are_both_refused(tmp_path, monkeypatch):
    a = plugin_module(tmp_path, monkeypatch, "mk_eva", EVAL_PLUGIN.format(name="shared", extra="a_only"))
    b = plugin_module(tmp_path, monkeypatch, "mk_evb", EVAL_PLUGIN.format(name="shared", extra="b_only"))
    reg = build_registry(manager(("maskkit-b:b", b), ("maskkit-a:a", a)))
    assert "shared" not in reg.evaluations and {"a_only", "b_only"} <= set(reg.evaluations)
    assert reg.conflicts == {("evaluation", "shared"): ["maskkit-a:a", "maskkit-b:b"]}
    with pytest.raises(UnknownNameError, match=r"^evaluation 'shared' is registered by plugins 'maskkit-a:a' and 'maskkit-b:b'"):
        reg.evaluation("shared")
    with pytest.raises(UnknownNameError, match=r"^unknown evaluation 'zeroshoot'; did you mean 'zeroshot'\?$"):
        reg.evaluation("zeroshoot")


@pytest.mark.parametrize("call, msg", [
    (lambda: make_evaluation("a/b", lambda r, s: None, "p"), "plugin 'p' registered an evaluation named 'a/b'"),
    (lambda: make_evaluation("ok", 3, "p"), "plugin 'p' registered evaluation 'ok' with 3, which is not callable"),
    (lambda: make_evaluation("ok", lambda r, s: None, "p", settings=dict), "expected a pydantic BaseModel subclass"),
    (lambda: make_evaluation("zeroshot2", lambda r, s: None, "p", settings=__import__("maskkit.evaluations").evaluations.ZeroshotSettings,
                             end_of_run={"bootstrap": -1}), "end_of_run settings that do not validate"),
])
def test_a_bad_registration_is_one_line(call, msg):
    with pytest.raises(PluginError) as e:
        call()
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_a_plugin_whose_registration_is_bad_is_skipped_whole(tmp_path, monkeypatch, capsys):
    mod = plugin_module(tmp_path, monkeypatch, "mk_evbad", '''
from maskkit import hookimpl
@hookimpl
def register_evaluations(register):
    register("fine", lambda run, s: None)
    register("bad name!", lambda run, s: None)
''')
    reg = build_registry(manager(("maskkit-evbad:b", mod)))
    assert "fine" not in reg.evaluations  # undone with the rest of the plugin
    assert "plugin 'maskkit-evbad' failed in register_evaluations" in capsys.readouterr().err


# --- the contract ----------------------------------------------------------------------------------

@pytest.mark.parametrize("metrics, details, msg", [
    ({"k": 1.0}, [], "returned metric 'k'; expected keys 'x/<name>'"),
    ({"y/k": 1.0}, [], "returned metric 'y/k'"),
    ({"x/k": "high"}, [], "returned metric 'x/k' = 'high'; expected a number"),
    ({"x/k": True}, [], "expected a number"),
    ({"x/k": 1.0}, [1, 2], "details that are not a list of dicts"),
])
def test_the_contract_is_enforced_in_one_line(metrics, details, msg):
    with pytest.raises(PluginError) as e:
        EvalResult("x", metrics, details).check("plug")
    assert msg in str(e.value) and "(from plugin 'plug')" in str(e.value) and "\n" not in str(e.value)


def test_result_files_json_and_csv(tmp_path):
    res = EvalResult("x", {"x/a": 1, "x/b": float("nan")}, [{"id": "i1", "v": 0.5}, {"id": "i2", "w": [1, 2], "v": None}],
                     data={"text": "t"}, extra={"legacy": 3}, files={"x.md": "# x\n"}).check()
    written = res.write(tmp_path / "o")
    assert sorted(p.name for p in written) == ["x.csv", "x.json", "x.md"]
    doc = json.loads((tmp_path / "o" / "x.json").read_text())
    assert doc["metrics"] == {"x/a": 1.0, "x/b": None} and doc["legacy"] == 3 and doc["evaluation"] == "x"
    assert doc["data"] == {"text": "t"} and doc["details"][1]["v"] is None
    assert (tmp_path / "o" / "x.csv").read_text().splitlines() == ["id,v,w", "i1,0.5,", "i2,,\"[1, 2]\""]
    # a .json path: that file, the details beside it, no other files
    res.write(tmp_path / "r.json")
    assert (tmp_path / "r.csv").is_file() and not (tmp_path / "x.md").exists()


def test_nothing_is_written_when_a_file_cannot_be_rendered(tmp_path):
    res = EvalResult("x", {"x/a": 1.0}, [{"id": "i"}], extra={"bad": object()})
    with pytest.raises(TypeError):
        res.write(tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_settings_errors_are_one_line_for_options_and_plain_models():
    from pydantic import BaseModel, ConfigDict, Field

    from maskkit.evaluations import GroundingSettings, RetrievalSettings

    ev = get_registry().evaluation("retrieval")
    with pytest.raises(MaskkitError, match=r"^--bootstrap -1: expected an integer in \[0, 100000\] \(bootstrap resamples"):
        ev.parse({"bootstrap": -1}, style="--")  # a command option names itself
    with pytest.raises(MaskkitError, match=r"^eval retrieval: bootstrap=-1: expected an integer in \[0, 100000\]"):
        ev.parse({"bootstrap": -1})  # a library call or end_of_run names the evaluation
    with pytest.raises(MaskkitError, match=r"^--regions needs --format \(a region file and its layout"):
        parse_settings(GroundingSettings, {"regions": "x.csv"}, "--")
    with pytest.raises(MaskkitError, match=r"^--k 0: expected integers in \[1, 100000\]"):  # the option, not the field ks
        parse_settings(RetrievalSettings, {"ks": [0]}, "--")

    class Plain(BaseModel):
        model_config = ConfigDict(extra="forbid")
        k: int = Field(1, ge=1)

    with pytest.raises(MaskkitError, match=r"^--k 0: Input should be greater than or equal to 1$"):
        parse_settings(Plain, {"k": 0}, "--")
    with pytest.raises(MaskkitError, match=r"^--j 1: not a setting of this evaluation \(settings: --k\)$"):
        parse_settings(Plain, {"j": 1}, "--")

    class Flagged(BaseModel):
        model_config = ConfigDict(extra="forbid")
        top_ks: list[int] = Field([1], json_schema_extra={"flag": "k"})

    with pytest.raises(MaskkitError, match=r"^--k x: Input should be a valid integer"):  # a plugin's flag too
        parse_settings(Flagged, {"top_ks": ["x"]}, "--")


def test_every_evaluation_option_error_names_the_option_as_typed():
    """For every registered evaluation and setting, a refused value's line starts with the command
    option (``--k``, ``--subset``, ``--set``, ``--batch-size``), never the field's name (``--ks``)."""
    from maskkit.eval.contract import flag_of, is_bool, is_list

    checked = set()
    for ev in get_registry().evaluations.values():
        for name, f in ev.settings.model_fields.items():
            if is_bool(f.annotation):
                continue
            for bad in ("zzz", "-1e30", "1e30", "nan"):
                value = [bad] if is_list(f.annotation) else bad
                try:
                    ev.parse({name: value}, style="--")
                except MaskkitError as e:
                    assert str(e).startswith(f"--{flag_of(name, f)} "), (ev.name, name, str(e))
                    checked.add((ev.name, flag_of(name, f)))
                    break
    assert {("retrieval", "k"), ("padchest", "subset"), ("masks", "ratio"), ("finetune", "batch-size"),
            ("grounding", "min-raters")} <= checked, checked


# --- the shipped plugin ----------------------------------------------------------------------------

def use_reportlen(tmp_path, monkeypatch):
    """plugins/maskkit-reportlen as an installed distribution: the installed one when it is (CI
    installs it, README's test command), else the source folder behind a dist-info of our own."""
    try:
        importlib.metadata.distribution("maskkit-reportlen")
        return
    except importlib.metadata.PackageNotFoundError:
        if os.environ.get("MASKKIT_EXPECT_PLUGINS") == "1":
            pytest.fail("MASKKIT_EXPECT_PLUGINS=1 but plugins/maskkit-reportlen is not installed")
    info = tmp_path / "site" / "maskkit_reportlen-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: maskkit-reportlen\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[maskkit]\nreportlen = maskkit_reportlen\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    importlib.invalidate_caches()
    reset()


def test_reportlen_plugin_registers_through_its_entry_point(tmp_path, monkeypatch):
    use_reportlen(tmp_path, monkeypatch)
    reg = get_registry()
    ev = reg.evaluation("report_length")
    assert ev.source == "maskkit-reportlen:reportlen"
    assert ev.description.startswith("Spearman correlation of report length")
    assert [r["setting"] for r in ev.option_rows()] == ["batch_size", "min_tokens"]


def test_reportlen_spearman_by_hand():
    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        from maskkit_reportlen import ranks, spearman
    finally:
        sys.path.remove(str(PLUGIN_DIR))
    assert ranks([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [1,2,3] vs [1,3,2]: d = (0, -1, 1), 1 - 6 * 2 / (3 * 8) = 0.5
    assert spearman([1, 2, 3], [5, 9, 7]) == pytest.approx(0.5)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


# --- the strategy list of eval masks comes from the registry ---------------------------------------

def test_masks_strategy_list_is_the_registry(tmp_path, monkeypatch):
    from maskkit.eval.masks import registry_grid

    mod = plugin_module(tmp_path, monkeypatch, "mk_stripes", '''
import torch
from maskkit import hookimpl, MaskStrategy

class Stripes(MaskStrategy):
    name = "stripes"
    requires = frozenset({"image_tokens"})
    def mask(self, ctx):
        B, N = ctx.image_tokens.shape[:2]
        return (torch.arange(N, device=ctx.device) % 2 == 0).expand(B, N).clone()

@hookimpl
def register_strategies(register):
    register(Stripes)
''')
    from maskkit import plugins

    reg = build_registry(manager(("maskkit-stripes:s", mod)))
    monkeypatch.setattr(plugins, "_registry", reg)  # what get_registry() returns (build_strategy reads it)
    rows, skipped = registry_grid([0.5, 0.75])
    labels = [label for label, _ in rows]
    assert "stripes (its own ratio)" in labels and "random @ 0.75" in labels and "preset xlip @ 0.75" in labels
    assert not any(label.startswith(("entity", "causal")) for label in labels)  # text strategies are not measured
    assert not any(label.startswith("preset t3_image_self") for label in labels)  # the image_self row already
    assert skipped == ["composite strategies (intersect, union) are measured through the presets that compose them "
                       "(preset rows), or --strategy PRESET"]
    assert dict(rows)["preset xlip @ 0.5"]["union"]["ratio"] == 0.5
    rows, _ = registry_grid([0.6], ["stripes", "xlip-guided"])
    assert [label for label, _ in rows] == ["stripes (its own ratio)", "preset xlip-guided"]
    with pytest.raises(UnknownNameError, match=r"^strategy list: 'stripe' is neither a registered strategy nor a preset; did you mean 'stripes'"):
        registry_grid([0.6], ["stripe"])
    with pytest.raises(MaskkitError, match=r"^strategy 'entity' masks text tokens, not image tokens$"):
        registry_grid([0.6], ["entity"])


@pytest.mark.parametrize("x, kw, shown", [
    (-0.00004, {}, "-0.000040"),          # .3f gave -0.000
    (0.1234, {}, "0.123"),
    (0.2, {"sign": True}, "+0.200"),
    (0.0, {"sign": True}, "+0.000"),
    (-0.000996, {}, "-0.00100"),
    (12.3456, {"decimals": 2}, "12.35"),
    (0.0012, {"decimals": 2}, "0.0012"),
    (1.2e-12, {}, "1.2e-12"),
    (float("nan"), {}, "nan"),
])
def test_fmt_number_shows_two_significant_digits_of_a_small_value(x, kw, shown):
    from maskkit.eval.contract import fmt_number

    assert fmt_number(x, **kw) == shown
