"""Compositions as data: YAML / TOML / JSON / pydantic, round trips, and errors with paths."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from maskkit import build_strategy, load_strategy, to_spec
from maskkit.errors import CompositionError
from maskkit.plugins import get_registry

XLIP = {"union": {"of": ["report_cross", "prompt_driven", "image_self"], "child_ratio": 0.7, "ratio": 0.75}}


def test_yaml_toml_json_build_the_same_tree(tmp_path):
    (tmp_path / "m.yaml").write_text("union:\n  of: [report_cross, prompt_driven, image_self]\n  child_ratio: 0.7\n  ratio: 0.75\n")
    (tmp_path / "m.toml").write_text('[union]\nof = ["report_cross", "prompt_driven", "image_self"]\nchild_ratio = 0.7\nratio = 0.75\n')
    (tmp_path / "m.json").write_text(json.dumps(XLIP))
    specs = [to_spec(load_strategy(tmp_path / f"m.{ext}")) for ext in ("yaml", "toml", "json")]
    assert specs[0] == specs[1] == specs[2] == to_spec(build_strategy(XLIP))


def test_round_trip():
    s = build_strategy(XLIP)
    assert to_spec(build_strategy(to_spec(s))) == to_spec(s)


def test_pydantic_models_as_specs():
    class Union(BaseModel):
        of: list
        ratio: float = 0.6

    s = build_strategy({"union": Union(of=["image_self", "prompt_driven"], ratio=0.6)})
    assert s.config.ratio == 0.6 and [c.name for c in s.children] == ["image_self", "prompt_driven"]


@pytest.mark.parametrize("spec,message", [
    ({"union": {"of": ["report_cros"]}}, "image_mask.union.of[0]: unknown strategy 'report_cros'; did you mean 'report_cross'?"),
    ({"union": {"of": ["image_self", {"image_self": {"ratio": 1.5}}]}}, "image_mask.union.of[1].image_self.ratio: Input should be less than or equal to 1 (got 1.5)"),
    ({"union": {"of": ["image_self"], "ratio": -0.1}}, "image_mask.union.ratio: Input should be greater than or equal to 0 (got -0.1)"),
    ({"image_self": {"ratoi": 0.5}}, "image_mask.image_self.ratoi: unknown key (got 0.5)"),
    ({"image_self": {"reduction": "mean"}}, "image_mask.image_self.reduction: Input should be 'l2', 'received', 'max_sim' or 'entry_count' (got 'mean')"),
    ({"union": {"of": []}}, "image_mask.union.of: expected a non-empty list"),
    ({"union": {"of": ["image_self", "causal"]}}, "image_mask.union: 'union' mixes image and text strategies"),
    ({"a": {}, "b": {}}, "image_mask: expected one strategy name as the only key, got a, b"),
    ({"image_self": 0.7}, "image_mask.image_self: expected a mapping of config keys, got float 0.7"),
    (42, "image_mask: expected a strategy name or {name: config}, got int 42"),
])
def test_errors_name_the_path(spec, message):
    with pytest.raises(CompositionError) as e:
        build_strategy(spec, path="image_mask")
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_file_errors(tmp_path):
    with pytest.raises(CompositionError, match="does not exist"):
        load_strategy(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("union: [of: \n")
    with pytest.raises(CompositionError, match=r"bad.yaml: cannot parse as YAML"):
        load_strategy(tmp_path / "bad.yaml")
    (tmp_path / "m.ini").write_text("x")
    with pytest.raises(CompositionError, match="unknown composition format '.ini'"):
        load_strategy(tmp_path / "m.ini")


def test_every_preset_composition_builds():
    reg = get_registry()
    assert {"xlip", "clip", "t3_attmim", "t4_entmlm_0.2", "t4_mlm_full", "t4_mlm_random_0.5"} <= set(reg.presets)
    for name, preset in reg.presets.items():
        for role in ("image_mask", "image_only_mask", "text_mask"):
            tree = preset.config.get(role)
            if tree is not None:
                s = build_strategy(tree, path=f"{name}.{role}")
                assert s.modality == ("text" if role == "text_mask" else "image")
        only = preset.config.get("image_only_mask")
        if only is not None:  # image-only samples have no report (eq. 15)
            assert "report_tokens" not in build_strategy(only).all_requires


# --- a composition file as a strategy-tree override value ----------------

import subprocess  # noqa: E402
import sys  # noqa: E402

from maskkit.compose import load_spec  # noqa: E402
from maskkit.config import ConfigError, resolve  # noqa: E402

IMAGE_ONLY = {"union": {"of": ["prompt_driven", "image_self"], "child_ratio": 0.6, "ratio": 0.5}}
TEXT = {"intersect": {"of": [{"entity": {"ratio": 0.3}}, "causal"]}}
FORMATS = {
    "yaml": lambda t: __import__("yaml").safe_dump(t),
    "yml": lambda t: __import__("yaml").safe_dump(t),
    "json": json.dumps,
    "toml": None,
}


def _write(tmp_path, name, tree):
    p = tmp_path / name
    ext = p.suffix[1:]
    if ext == "toml":
        (n, cfg), = tree.items()
        of = ", ".join(json.dumps(c) if isinstance(c, str) else "{ " + ", ".join(
            f"{k} = {{ ratio = {v['ratio']} }}" for k, v in c.items()) + " }" for c in cfg["of"])
        rest = "".join(f"{k} = {json.dumps(v)}\n" for k, v in cfg.items() if k != "of")
        p.write_text(f"[{n}]\nof = [{of}]\n{rest}")
    else:
        p.write_text(FORMATS[ext](tree))
    assert load_spec(p) == tree
    return p


@pytest.mark.parametrize("ext", ["yaml", "yml", "toml", "json"])
@pytest.mark.parametrize("role, tree", [("image_mask", XLIP), ("image_only_mask", IMAGE_ONLY), ("text_mask", TEXT)])
def test_tree_override_value_may_be_a_composition_file(tmp_path, ext, role, tree):
    path = _write(tmp_path, f"tree.{ext}", tree)
    cfg, sources = resolve([f"{role}={path}", "preset=clip"])
    assert getattr(cfg, role) == tree
    assert sources[role] == "cli"
    assert to_spec(build_strategy(getattr(cfg, role))) == to_spec(load_strategy(path))  # as maskkit compose reads it


def test_keys_set_after_a_tree_file_apply_to_its_tree(tmp_path):
    path = _write(tmp_path, "attmim.yaml", IMAGE_ONLY)
    cfg, _ = resolve([f"image_mask={path}", "image_mask.ratio=0.4"])
    assert cfg.image_mask == {"union": {**IMAGE_ONLY["union"], "ratio": 0.4}}


def test_tree_file_in_a_config_file_is_relative_to_that_file(tmp_path):
    sub = tmp_path / "exp"
    sub.mkdir()
    _write(sub, "mask.json", IMAGE_ONLY)
    (sub / "run.yaml").write_text("image_mask: mask.json\n")
    cfg, sources = resolve([f"config={sub / 'run.yaml'}"])
    assert cfg.image_mask == IMAGE_ONLY and sources["image_mask"] == f"file:{sub / 'run.yaml'}"


@pytest.mark.parametrize("role", ["image_mask", "image_only_mask", "text_mask"])
def test_missing_tree_file_is_one_line_naming_it(tmp_path, role):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        resolve([f"{role}={missing}"])
    assert str(exc.value) == f"{role}={missing}: composition file {missing} does not exist (from cli)"


def test_unparsable_tree_file_names_it(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=rf"^image_mask={bad}: {bad}: cannot parse as JSON: "):
        resolve([f"image_mask={bad}"])


def test_tree_file_with_a_bad_node_names_the_path(tmp_path):
    p = tmp_path / "typo.yaml"
    p.write_text("union:\n  of: [report_cros, image_self]\n")
    with pytest.raises(ConfigError, match=r"image_mask.union.of\[0\]: unknown strategy 'report_cros'; did you mean 'report_cross'\?"):
        resolve([f"image_mask={p}"])


def test_cli_config_show_and_run_take_a_tree_file(tmp_path):
    path = _write(tmp_path, "attmim.toml", IMAGE_ONLY)
    cli = [sys.executable, "-m", "maskkit.cli"]
    out = subprocess.run([*cli, "config", "show", f"image_mask={path}", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["config"]["image_mask"] == IMAGE_ONLY
    missing = tmp_path / "missing.yaml"
    out = subprocess.run([*cli, "run", f"image_mask={missing}"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"error: image_mask={missing}: composition file {missing} does not exist (from cli)"


def test_parse_spec_reads_inline_json_and_files_and_leaves_names(tmp_path):
    from maskkit.compose import parse_spec

    assert parse_spec('{"random": {"ratio": 0.5}}') == ({"random": {"ratio": 0.5}}, "inline")
    assert parse_spec(' ["image_self"]') == (["image_self"], "inline")
    assert parse_spec('"random"') == ("random", "inline")
    assert parse_spec("xlip") is None and parse_spec("report_cross") is None
    f = tmp_path / "m.toml"
    f.write_text('[random]\nratio = 0.5\n')
    assert parse_spec(str(f)) == ({"random": {"ratio": 0.5}}, str(f))
    with pytest.raises(CompositionError, match=r"^inline composition is not valid JSON: Expecting property name"):
        parse_spec("{bad")
    with pytest.raises(CompositionError, match=r"m.txt: unknown composition format '.txt'"):
        from maskkit.compose import load_spec
        (tmp_path / "m.txt").write_text("x")
        load_spec(tmp_path / "m.txt")
