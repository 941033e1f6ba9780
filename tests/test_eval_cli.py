"""`maskkit eval NAME RUN` for every registered evaluation, in process
(CliRunner) on tiny runs: phantoms, and a CSV run whose image ids tiny region files in the real
layouts annotate. Bad annotation files are one line each, with nothing written."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from run_helpers import SMALL  # noqa: E402

from maskkit.cli import app  # noqa: E402
from maskkit.config import resolve  # noqa: E402
from maskkit.errors import MaskkitError  # noqa: E402
from maskkit.train import train  # noqa: E402

TINY = [a for a in SMALL if not a.startswith("data.")]
BUILTIN = ("finetune", "grounding", "masks", "padchest", "retrieval", "zeroshot")


def invoke(*args, ok: bool = True):
    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    if ok and res.exit_code != 0:
        raise AssertionError(f"{args}: exit {res.exit_code}: {res.output[-3000:]} {res.exception!r}")
    return res


def fails(*args, match: str, out: Path | None = None) -> str:
    """The command fails with one line containing ``match``; ``out`` (if given) is not created."""
    res = invoke(*args, ok=False)
    msg = str(res.exception) if isinstance(res.exception, MaskkitError) else res.output
    assert res.exit_code != 0 and match in msg, (res.exit_code, msg[-2000:], repr(res.exception))
    if isinstance(res.exception, MaskkitError):
        assert "\n" not in msg, msg
    if out is not None:
        assert not out.exists(), sorted(out.rglob("*"))
    return msg


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ph")
    cfg, src = resolve([*SMALL, "data.val_n=24", "train.steps=2", f"runtime.out_dir={tmp}", "runtime.name=r"])
    train(cfg, src)
    return tmp / "r"


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A 1-step run on 60 32x32 PNGs (one patient each) with reports and a Pneumonia label; its
    held-out image ids are what region files annotate."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("csvrun")
    rng = np.random.default_rng(0)
    rows = ["image_path,report,patient_id,Pneumonia"]
    for i in range(60):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(tmp / f"i{i}.png")
        rows.append(f"i{i}.png,{'Patchy opacity in the right lower lobe' if i % 2 else 'Clear lungs'} case {i}.,p{i},{i % 2}")
    (tmp / "d.csv").write_text("\n".join(rows) + "\n")
    cfg, src = resolve([*TINY, "data=csv", f"data.path={tmp / 'd.csv'}", "train.steps=1", f"runtime.out_dir={tmp}",
                        "runtime.name=r"])
    train(cfg, src)
    held = json.loads((tmp / "r" / "split.json").read_text())["sources"][0]["held_out_ids"]
    assert len(held) >= 3, held
    train_ids = [f"i{i}.png" for i in range(60) if f"i{i}.png" not in held]
    return tmp / "r", held, train_ids


def write(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


# --- the command group -----------------------------------------------------------------------------

def test_eval_help_lists_every_registered_evaluation_with_its_description():
    from maskkit.plugins import get_registry

    out = invoke("eval", "--help").output
    for name in BUILTIN:
        assert name in out
    assert " ".join(get_registry().evaluation("retrieval").description.split()[:4]) in " ".join(out.split())
    res = invoke("eval", "zeroshoot", "x", ok=False)
    assert res.exit_code == 2 and "eval 'zeroshoot': not a registered evaluation; did you mean 'zeroshot'?" in res.output


def test_every_registered_evaluation_is_in_help_and_its_help_shows_every_setting(tmp_path, monkeypatch):
    """From the registry, not a list: ``eval --help`` names each evaluation (the plugin's included)
    and ``eval NAME --help`` shows an option for every field of its settings, with its description."""
    from test_evaluations import use_reportlen

    from maskkit.evalcli import flag_of
    from maskkit.plugins import get_registry

    use_reportlen(tmp_path, monkeypatch)
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps the help at the terminal width
    reg = get_registry()
    assert set(BUILTIN) | {"report_length"} <= set(reg.evaluations)
    top = " ".join(invoke("eval", "--help").output.split())
    for name, ev in reg.evaluations.items():
        assert name in top
        text = " ".join(invoke("eval", name, "--help").output.replace("│", " ").split())
        assert "--out" in text
        for field, f in ev.settings.model_fields.items():
            assert f"--{flag_of(field, f)}" in text, (name, field)
            assert " ".join((f.description or "").split()[:4]) in text, (name, field)


def test_a_plugin_evaluation_appears_in_help_and_runs(phantom_run, tmp_path, monkeypatch):
    from test_evaluations import use_reportlen

    use_reportlen(tmp_path, monkeypatch)
    assert "report_length" in invoke("eval", "--help").output
    assert "--min-tokens" in invoke("eval", "report_length", "--help").output
    fails("eval", "report_length", phantom_run, "--min-tokens", "0", match="--min-tokens 0: Input should be greater than or equal to 1")
    out = tmp_path / "o"
    invoke("eval", "report_length", phantom_run, "--out", out)
    doc = json.loads((out / "report_length.json").read_text())
    assert doc["evaluation"] == "report_length" and doc["metrics"]["report_length/n"] == 24.0
    assert -1 <= doc["metrics"]["report_length/spearman"] <= 1 and doc["data"]["split"] == "run"
    rows = list(csv.DictReader((out / "report_length.csv").open()))
    assert len(rows) == 24 and set(rows[0]) == {"id", "tokens", "similarity"}


def test_an_evaluation_without_tables_prints_its_flat_metrics(phantom_run, monkeypatch):
    """A plugin's evaluation that returns no tables printed nothing but the data line: its flat
    metrics are printed as a table (NaN as '-', a key with brackets whole)."""
    from maskkit.eval.contract import EvalResult, make_evaluation
    from maskkit.plugins import get_registry

    def quiet(run, s):
        """Two numbers, no table (test plugin)."""
        return EvalResult("quiet", {"quiet/auc [macro]": 0.123456, "quiet/n": 24, "quiet/undefined": float("nan")})

    monkeypatch.setitem(get_registry().evaluations, "quiet", make_evaluation("quiet", quiet, "test-plugin"))
    monkeypatch.setenv("COLUMNS", "200")
    out = invoke("eval", "quiet", phantom_run).output
    assert "quiet: 3 metrics" in out
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 3}
    assert rows == {"quiet/auc [macro]": "0.123", "quiet/n": "24.000", "quiet/undefined": "-"}, out
    # a built-in with tables prints them, not the metrics
    assert "zeroshot/auc_macro" not in invoke("eval", "zeroshot", phantom_run, "--bootstrap", "0").output


def test_help_shows_a_default_factory_value(monkeypatch):
    """A plugin setting with ``default_factory`` showed ``default: PydanticUndefined``."""
    from pydantic import BaseModel, ConfigDict, Field

    from maskkit.eval.contract import EvalResult, make_evaluation
    from maskkit.plugins import get_registry

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        labels: list[str] = Field(default_factory=lambda: ["Edema", "Atelectasis"], description="labels scored")
        scale: float = Field(default_factory=lambda: 0.5, description="a scale")

    ev = make_evaluation("factory", lambda run, s: EvalResult("factory", {}), "test-plugin", settings=Settings)
    monkeypatch.setitem(get_registry().evaluations, "factory", ev)
    monkeypatch.setenv("COLUMNS", "300")
    text = " ".join(invoke("eval", "factory", "--help").output.replace("│", " ").split())
    assert "PydanticUndefined" not in text
    assert "labels scored; default: Edema, Atelectasis (repeatable)" in text and "a scale; a finite number; default: 0.5" in text
    assert [r["default"] for r in ev.option_rows()] == ["['Edema', 'Atelectasis']", "0.5"]


def test_one_run_only_where_an_evaluation_takes_one(phantom_run):
    fails("eval", "retrieval", phantom_run, phantom_run, match="eval retrieval takes one checkpoint, got 2")


@pytest.mark.parametrize("args, line", [
    (["retrieval", "--k", "0"], "--k 0: expected integers in [1, 100000] (the K of R@K (repeatable))"),
    (["padchest", "--subset", "seen8"], "--subset seen8: expected one of seen, unseen10, unseen20, unseen"),
    (["masks", "--strategy", "random", "--ratio", "0"], "--ratio 0: expected finite numbers in (0, 1)"),
    (["masks", "--ratio", "0.5", "--ratio", "1"], "--ratio 0.5,1: expected finite numbers in (0, 1)"),
    (["masks", "--lesion-threshold", "0"], "--lesion-threshold 0: expected a finite number in (0, 1]"),
])
def test_an_option_error_names_the_option_as_typed(tmp_path, args, line):
    assert fails("eval", args[0], tmp_path / "no-run", *args[1:], match=line).startswith(line)


def test_a_value_only_the_data_refuses_names_the_option_too(phantom_run):
    """--absence-ignore is checked against the evaluated findings once the data is read: the line
    names the option (it said absence_ignore); a library call keeps the parameter's name."""
    from maskkit.errors import SettingValueError
    from maskkit.eval.zeroshot import absence_terms

    msg = fails("eval", "zeroshot", phantom_run, "--absence-ignore", "Foo", "--bootstrap", "0",
                match="--absence-ignore Foo: not one of the evaluated findings (")
    assert msg.startswith("--absence-ignore Foo: ") and "absence_ignore" not in msg
    with pytest.raises(SettingValueError, match=r"^absence_ignore='Foo': not one of the evaluated findings \(Edema\)$"):
        absence_terms(["Edema", "No Finding"], absence_ignore=("Foo",))


# --- zero-shot, fine-tuning: today's command lines, the contract's files ---------------------------

def copied_member(run: Path, tmp_path: Path) -> Path:
    """Another checkpoint file with ``run``'s weights (an ensemble refuses one checkpoint given twice)."""
    import shutil

    other = tmp_path / "copy" / "checkpoints" / "step_00000001.pt"
    other.parent.mkdir(parents=True)
    shutil.copy(sorted((run / "checkpoints").glob("step_*.pt"))[-1], other)
    return other


def test_zeroshot_writes_the_legacy_json_with_flat_metrics_and_details(phantom_run, tmp_path):
    res = invoke("eval", "zeroshot", phantom_run, copied_member(phantom_run, tmp_path), "--bootstrap", "0", "--no-finding", "pair",
                 "--out", tmp_path / "z.json")
    assert "zero-shot of 2 checkpoints on 24 images (the run's held-out split)" in " ".join(res.output.split())
    doc = json.loads((tmp_path / "z.json").read_text())
    assert doc["n"] == 24 and doc["no_finding"] == "pair" and "per_label" in doc  # the fields it always had
    assert doc["metrics"]["zeroshot/auc_macro"] == pytest.approx(doc["mean"]["auc"])
    for lab, r in doc["per_label"].items():
        assert doc["metrics"][f"zeroshot/auc/{lab}"] == (None if r is None else pytest.approx(r["auc"]))
    rows = list(csv.DictReader((tmp_path / "z.csv").open()))
    assert [r["label"] for r in rows] == list(doc["per_label"]) and doc["settings"]["no_finding"] == "pair"


def test_finetune_keeps_results_json_and_adds_the_contract_files(phantom_run, tmp_path):
    out = tmp_path / "ft"
    invoke("eval", "finetune", phantom_run, "--epochs", "1", "--out", out)
    legacy = json.loads((out / "results.json").read_text())
    doc = json.loads((out / "finetune.json").read_text())
    assert [r["fraction"] for r in legacy] == ["0.01", "0.1", "1"]
    for r in legacy:
        got = doc["metrics"][f"finetune/probe_{float(r['fraction']) * 100:g}/auc_macro"]
        assert got == (None if r["mean_auc"] is None else pytest.approx(r["mean_auc"]))
    assert (out / "splits" / "test.json").is_file() and len(list(csv.DictReader((out / "finetune.csv").open()))) == 3 * 6


# --- segmentation fine-tuning ------------------------------------------------------------------------

def check_dice_rows(doc: dict, rows: list[dict]) -> None:
    """Every detail row's Dice from its pixel counts, and each fraction's metrics from its rows, by hand."""
    assert rows
    for r in rows:
        inter, pred, les = (int(r[k]) for k in ("overlap_pixels", "predicted_pixels", "lesion_pixels"))
        want = 2 * inter / (pred + les) if les else float(pred == 0)
        assert float(r["dice"]) == pytest.approx(want)
    for frac in {r["fraction"] for r in rows}:
        sub = [r for r in rows if r["fraction"] == frac]
        key = f"finetune/seg_{sub[0]['mode']}_{float(frac) * 100:g}"
        m = doc["metrics"]
        assert m[f"{key}/dice"] == pytest.approx(np.mean([float(r["dice"]) for r in sub]))
        assert m[f"{key}/n_test"] == len(sub) and m[f"{key}/n_train"] == int(sub[0]["n_train"])
        den = sum(int(r["predicted_pixels"]) + int(r["lesion_pixels"]) for r in sub)
        pooled = m[f"{key}/dice_pooled"]
        assert (pooled is None) if den == 0 else pooled == pytest.approx(2 * sum(int(r["overlap_pixels"]) for r in sub) / den)


def test_segmentation_on_the_phantoms_reuses_the_finetune_splits(phantom_run, tmp_path):
    cls = tmp_path / "cls"
    invoke("eval", "finetune", phantom_run, "--epochs", "1", "--out", cls)
    stored = {f.stem: json.loads(f.read_text())["sha256"] for f in (cls / "splits").glob("*.json")}
    out = tmp_path / "seg"
    res = invoke("eval", "finetune", phantom_run, "--task", "segmentation", "--epochs", "2", "--splits", cls / "splits",
                 "--out", out)
    doc = json.loads((out / "finetune.json").read_text())
    assert doc["task"] == "segmentation" and doc["head"] == "setr_naive" and doc["settings"]["task"] == "segmentation"
    assert doc["split_sha256"] == stored  # every phantom has a lesion mask: the classification splits as they are
    assert not (out / "splits").exists() and json.loads((out / "results.json").read_text()) == doc["results"]  # docs/eval.md lists it
    rows = list(csv.DictReader((out / "finetune.csv").open()))
    assert {r["fraction"] for r in rows} == {"0.01", "0.1", "1"} and len(rows) == 3 * 24  # the 24 held-out phantoms
    for frac, pct in (("0.01", "1"), ("0.1", "10"), ("1", "100")):
        for m in ("dice", "dice_pos", "dice_neg", "dice_pooled", "n_train", "n_test"):
            assert f"finetune/seg_probe_{pct}/{m}" in doc["metrics"]
    check_dice_rows(doc, rows)
    assert "segmentation (probe, SETR-naive head) on 24 test images" in " ".join(res.output.split())


def siim_file(path: Path, held: list[str], train_ids: list[str], held_cells: list[str]) -> Path:
    rows = [[h, c] for h, c in zip(held, held_cells)] + [[h, " -1"] for h in held[len(held_cells):]]
    rows += [[t, " 0 524288" if k % 2 else " -1"] for k, t in enumerate(train_ids)]
    return write(path, ["ImageId", " EncodedPixels"], rows)


@pytest.mark.slow
def test_segmentation_on_siim_rle_masks(csv_run, tmp_path):
    run, held, train_ids = csv_run
    # held[0]: the left half of the 1024 x 1024 image -> 48 of the 96 input columns; held[1]: columns 0-5 of 1024 cover
    # 6 / (1024 / 96) = 0.5625 of input column 0 (at least half: lesion); held[2]: 5 columns = 0.47 of it (not); held[3]: -1
    f = siim_file(tmp_path / "train-rle.csv", held, train_ids, [" 0 524288", " 0 6144", " 0 5120", " -1"])
    out = tmp_path / "o"
    res = invoke("eval", "finetune", run, "--task", "segmentation", "--regions", f, "--format", "siim", "--epochs", "2",
                 "--mode", "finetune", "--out", out)
    doc = json.loads((out / "finetune.json").read_text())
    rows = list(csv.DictReader((out / "finetune.csv").open()))
    px = {r["image_id"]: int(r["lesion_pixels"]) for r in rows}
    assert px[held[0]] == 48 * 96 and px[held[1]] == 96 and px[held[2]] == 0 and px[held[3]] == 0
    assert set(px) == set(held)  # the test split is the held-out images, every one annotated
    check_dice_rows(doc, rows)
    assert doc["format"] == "siim" and doc["regions"] == str(f) and (out / "splits" / "test.json").is_file()
    text = " ".join(res.output.split())
    assert "1 images with a lesion in" in text and f"e.g. {held[2]}" in text  # the lesion smaller than half an input pixel
    # what was evaluated is a note, not a warning; results.json is written as docs/eval.md lists it (it was not)
    assert f"note: 60 of the 60 images of the data have a mask in {f} (siim): {len(held)} held out" in text, text
    saved = json.loads((out / "results.json").read_text())
    assert [r["fraction"] for r in saved] == [r["fraction"] for r in doc["results"]] and "dice" in saved[0]


@pytest.mark.parametrize("cell, row_id, match", [
    (" ", "HELD", "column 'EncodedPixels': empty; expected -1"),
    (" 0 10", "nope.png", "image id 'nope.png' is not in the data"),
    (" 1048570 10", "HELD", "past the 1024x1024 = 1048576 pixels of the image"),
    (" 0 10", "", "column 'ImageId': empty image id"),
])
def test_segmentation_bad_annotation_files_are_one_line_and_nothing_is_written(csv_run, tmp_path, cell, row_id, match):
    run, held, train_ids = csv_run
    f = siim_file(tmp_path / "train-rle.csv", held[1:], train_ids, [])
    with f.open("a") as fh:
        fh.write(f"{held[0] if row_id == 'HELD' else row_id},{cell}\n")
    out = tmp_path / "out"
    msg = fails("eval", "finetune", run, "--task", "segmentation", "--regions", f, "--format", "siim", "--out", out,
                match=match, out=out)
    assert str(f) in msg


def test_segmentation_needs_masks_and_regions_need_segmentation(csv_run, tmp_path):
    out = tmp_path / "out"
    fails("eval", "finetune", csv_run[0], "--task", "segmentation", "--out", out, match="has no lesion masks (no phantom source)",
          out=out)
    fails("eval", "finetune", csv_run[0], "--regions", tmp_path / "x.csv", "--format", "siim", "--out", out,
          match="--regions gives the masks of --task segmentation", out=out)
    fails("eval", "finetune", csv_run[0], "--task", "segment", match="--task segment")


# --- mask-lesion overlap ----------------------------------------------------------------------------

def test_masks_strategies_from_the_registry_at_several_ratios(phantom_run, tmp_path):
    out = tmp_path / "m"
    invoke("eval", "masks", phantom_run, "--n", "16", "--seeds", "1", "--ratio", "0.25", "--ratio", "0.5", "--out", out)
    rows = {r["strategy"]: r for r in json.loads((out / "masks.json").read_text())["rows"]}
    # 36 patches: every image masks exactly 9 / 18 of them, so random masking's expected share is the
    # ratio itself and each lift is the share over the ratio
    for r in (0.25, 0.5):
        for name in ("random", "image_self", "preset xlip"):
            row = rows[f"{name} @ {r:g}"]
            assert 0 <= row["share_micro"] <= 1 and row["lift_micro"] == pytest.approx(row["share_micro"] / r)
    assert {"preset xlip @ 0.5", "image_self @ 0.25", "atypical @ 0.5"} <= set(rows)
    from maskkit.plugins import get_registry

    if "blockwise" in get_registry().strategies:  # a plugin's strategy is measured too (installed: CI)
        assert "blockwise @ 0.5" in rows
    doc = json.loads((out / "masks.json").read_text())
    assert doc["evaluation"] == "masks" and doc["metrics"]["masks/random @ 0.5/share_micro"] == rows["random @ 0.5"]["share_micro"]
    # no NaN anywhere: a ratio of 0 (lift 0/0) is refused before the run is loaded
    assert all(v is not None for v in doc["metrics"].values())
    assert len(list(csv.DictReader((out / "masks.csv").open()))) == len(rows) and (out / "masks.md").is_file()


def test_masks_contract_metrics_name_strategy_and_ratio(phantom_run, tmp_path):
    from maskkit.eval.contract import EvalRun
    from maskkit.plugins import get_registry

    res = get_registry().evaluation("masks")(EvalRun.load([phantom_run]), {"n": 8, "seeds": 1, "strategies": ["random"],
                                                                        "ratio": [0.5]})
    assert res.metrics["masks/random/share_micro"] == res.details[0]["share_micro"]
    assert set(res.files) == {"masks.md"} and res.details[0]["strategy"] == "random"


def test_masks_ablation_grid_is_the_grid_before(phantom_run, tmp_path):
    res = invoke("eval", "masks", phantom_run, "--n", "8", "--seeds", "1", "--grid", "ablation", "--out", tmp_path)
    labels = [r["strategy"] for r in json.loads((tmp_path / "masks.json").read_text())["rows"]]
    assert "union uniform λ1=0.7 [l2]" in labels and "report_cross [max_sim]" in labels
    fails("eval", "masks", phantom_run, "--grid", "ablation", "--strategy", "random", match="--grid ablation is a fixed grid")
    fails("eval", "masks", phantom_run, "--strategy", "randm", match="'randm' is neither a registered strategy nor a preset")
    fails("eval", "masks", phantom_run, "--strategy", "union", match="strategy 'union' is a composite: it needs children; "
                                                                     "give a preset that composes it (--strategy xlip)")
    assert res.exit_code == 0


# --- retrieval and id sets --------------------------------------------------------------------------

def test_retrieval_on_held_out_phantoms(phantom_run, tmp_path):
    invoke("eval", "retrieval", phantom_run, "--bootstrap", "20", "--k", "1", "--k", "3", "--out", tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    m = doc["metrics"]
    assert m["retrieval/n_images"] == 24 and doc["ks"] == [1, 3]
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    i2r = [float(r["rank"]) for r in rows if r["direction"] == "image_to_report"]
    r2i = [float(r["rank"]) for r in rows if r["direction"] == "report_to_image"]
    assert len(i2r) == 24 and len(r2i) == m["retrieval/n_reports"]  # every held-out phantom report is distinct or shared
    assert m["retrieval/image_to_report_R@1"] == pytest.approx(np.mean(np.array(i2r) <= 1))
    assert m["retrieval/report_to_image_R@3"] == pytest.approx(np.mean(np.array(r2i) <= 3))
    assert m["retrieval/image_to_report_median_rank"] == np.median(i2r)
    lo, hi = m["retrieval/image_to_report_R@1_ci_lo"], m["retrieval/image_to_report_R@1_ci_hi"]
    assert lo <= m["retrieval/image_to_report_R@1"] <= hi


def test_retrieval_on_a_stored_id_set(phantom_run, tmp_path):
    from maskkit.eval.subsets import IdSet, save_id_set

    held = json.loads((phantom_run / "split.json").read_text())["sources"][0]["held_out_ids"]
    f = save_id_set(IdSet("ph", {"A": held[:5], "B": held[5:10]}), tmp_path / "set.json")
    invoke("eval", "retrieval", phantom_run, "--set", f, "--bootstrap", "0", "--out", tmp_path / "o")
    doc = json.loads((tmp_path / "o" / "retrieval.json").read_text())
    assert doc["n_images"] == 10 and doc["id_set"]["sha256"] == IdSet("ph", {"A": held[:5], "B": held[5:10]}).sha256
    assert doc["id_set"]["in_training_split"] == 0
    # an edited file is one line, nothing written
    d = json.loads(f.read_text())
    d["classes"]["A"]["ids"][0] = held[11]
    f.write_text(json.dumps(d))
    fails("eval", "retrieval", phantom_run, "--set", f, "--out", tmp_path / "bad", match="the file was edited or damaged",
          out=tmp_path / "bad")
    # training images in the set: evaluated, and said
    tr = save_id_set(IdSet("tr", {"A": ["phantom-0-0", "phantom-0-1"], "B": held[:2]}), tmp_path / "tr.json")
    res = invoke("eval", "retrieval", phantom_run, "--set", tr, "--bootstrap", "0")
    assert "2 of the 4 images of id set tr are in the run's training split" in " ".join(res.output.split())


def _chexpert_root(tmp_path: Path, per_class: int = 3) -> Path:
    from maskkit.data.records import CHEXPERT_LABELS
    from maskkit.eval.subsets import FIVE_CLASSES

    root = tmp_path / "CheXpert-v1.0-small"
    root.mkdir()
    rows = []
    for j, c in enumerate([*FIVE_CLASSES, None]):
        for i in range(per_class):
            labels = ["1.0" if lab == c else "0.0" for lab in CHEXPERT_LABELS]
            rows.append([f"CheXpert-v1.0-small/train/patient{j}{i:04d}/study1/view1_frontal.jpg", "Frontal", "PA", *labels])
    write(root / "train.csv", ["Path", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS], rows)
    return root


def test_idset_builder_writes_a_hashed_5x200_file(tmp_path):
    from maskkit.eval.subsets import load_id_set

    root = _chexpert_root(tmp_path)
    res = invoke("idset", "chexpert", "-o", f"root={root}", "--k", "2", "--seed", "3", "--out", tmp_path / "s.json")
    s = load_id_set(tmp_path / "s.json")
    assert len(s.ids) == 10 and all(len(v) == 2 for v in s.classes.values()) and s.definition["seed"] == 3
    assert f"sha256 {s.sha256[:12]}" in res.output
    invoke("idset", "chexpert", "-o", f"root={root}", "--k", "2", "--seed", "3", "--out", tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (tmp_path / "s.json").read_text()  # deterministic
    fails("idset", "chexpert", "-o", f"root={root}", "--k", "4", "--out", tmp_path / "x.json",
          match="fewer than k=4 eligible images", out=tmp_path / "x.json")
    fails("idset", "chexpert", "-o", f"root={root}", "-o", "uncertain=ones", "--out", tmp_path / "x.json",
          match="the 5x200 definition needs uncertain=ignore", out=tmp_path / "x.json")
    fails("idset", "nih", "--out", tmp_path / "x.json", match="expected chexpert or mimic", out=tmp_path / "x.json")


# --- grounding ---------------------------------------------------------------------------------------

def test_grounding_on_phantoms_by_default(phantom_run, tmp_path):
    invoke("eval", "grounding", phantom_run, "--n", "8", "--out", tmp_path)
    doc = json.loads((tmp_path / "grounding.json").read_text())
    m = doc["metrics"]
    for k in ("pointing", "iou", "dice", "cnr"):
        assert 0 <= m[f"grounding/{k}"] or k == "cnr"
        assert f"grounding/random/{k}" in m and f"grounding/centre/{k}" in m
    rows = list(csv.DictReader((tmp_path / "grounding.csv").open()))
    assert len(rows) == m["grounding/n"] and {r["finding"] for r in rows} <= {"Pleural Effusion", "Cardiomegaly", "Lung Lesion",
                                                                              "Pneumothorax", "Support Devices"}
    assert rows[0]["prompt"].endswith(".")  # the finding's positive prompt, sentence style
    assert "warning:" not in invoke("eval", "grounding", phantom_run, "--n", "4", "--out", tmp_path / "again").output


@pytest.mark.parametrize("command", ["grounding", "masks"])
def test_the_phantom_fallback_of_a_run_on_other_data_is_a_warning(csv_run, tmp_path, command):
    """A run trained on a CSV, evaluated without a region file, is scored on synthetic phantoms:
    the numbers are written (a sweep may want them), with a warning saying they are not on its data."""
    run, _, _ = csv_run
    res = invoke("eval", command, run, "--n", "4", "--out", tmp_path)
    assert (f"warning: eval {command}: the run trained on no phantoms, and no region file was given: these numbers are on 4 "
            "synthetic phantoms, not on its data; give --regions FILE --format LAYOUT") in " ".join(res.output.split())
    assert f"eval {command}: the run trained on no phantoms" in " ".join(json.loads((tmp_path / f"{command}.json").read_text())["warnings"])


def test_grounding_rsna_boxes_hand_computed_region(csv_run, tmp_path):
    run, held, train_ids = csv_run
    f = write(tmp_path / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"],
              [[held[0], 0, 0, 512, 512, 1], [held[1], "", "", "", "", 0], [held[2], 512, 0, 512, 1024, 1],
               [train_ids[0], 0, 0, 100, 100, 1]])
    res = invoke("eval", "grounding", run, "--regions", f, "--format", "rsna", "--out", tmp_path / "g")
    rows = {r["image_id"]: r for r in csv.DictReader((tmp_path / "g" / "grounding.csv").open())}
    from maskkit.training.checkpointing import load_model

    n = (load_model(run)[0].image_size // load_model(run)[0].patch) ** 2
    assert set(rows) == {held[0], held[2]}  # the normal image has no region; the training image is not evaluated
    assert float(rows[held[0]]["region_patches"]) == n / 4 and float(rows[held[2]]["region_patches"]) == n / 2
    assert rows[held[0]]["prompt"] == "pneumonia."
    assert json.loads((tmp_path / "g" / "grounding.json").read_text())["ties"] == "expected"  # A60, in every result
    text = " ".join(res.output.split())
    assert f"note: 3 of the 4 images annotated in {f} are held out" in text and "data: the held-out split of run" in text
    assert "1 is a training image, not evaluated" in text and "warning: 3 of the 4" not in text


def test_grounding_ms_cxr_phrases_and_vindr_sizes_from_the_images(csv_run, tmp_path):
    run, held, _ = csv_run
    f = write(tmp_path / "MS_CXR_Local_Alignment_v1.0.0.csv",
              ["dicom_id", "category", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height"],
              [[held[0], "Pneumonia", "patchy right lower opacity", "p", 10, 10, 8, 8, 32, 32]])
    invoke("eval", "grounding", run, "--regions", f, "--format", "ms_cxr", "--out", tmp_path / "m.json")
    (row,) = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert row["prompt"] == "patchy right lower opacity" and row["finding"] == "Pneumonia"
    v = write(tmp_path / "annotations_test.csv", ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
              [[held[1], "R1", "Consolidation", 0, 0, 16, 32], [held[1], "R2", "Consolidation", 0, 0, 16, 16]])
    invoke("eval", "grounding", run, "--regions", v, "--format", "vindr", "--min-raters", "2", "--out", tmp_path / "v.json")
    (row,) = list(csv.DictReader((tmp_path / "v.csv").open()))
    from maskkit.training.checkpointing import load_model

    model = load_model(run)[0]
    n = (model.image_size // model.patch) ** 2
    assert float(row["region_patches"]) == n / 4  # the top-left quarter both radiologists boxed, on the 32x32 PNG


@pytest.mark.parametrize("fmt, name, header, row, match", [
    ("rsna", "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], ["HELD", 900, 900, 200, 200, 1],
     "reaches outside the 1024x1024 image"),
    ("rsna", "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], ["nope.png", 0, 0, 10, 10, 1],
     "image id 'nope.png' is not in the data"),
    ("siim", "train-rle.csv", ["ImageId", " EncodedPixels"], ["HELD", " "], "EncodedPixels"),
    ("nih", "BBox_List_2017.csv", ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"], ["HELD", "Effusion", 10, 10, 0, 5],
     "has a zero size"),
    ("ms_cxr", "MS_CXR_Local_Alignment_v1.0.0.csv",
     ["dicom_id", "category", "label_text", "path", "x", "y", "w", "h", "image_width", "image_height"],
     ["HELD", "Pneumonia", "opacity", "p", 30, 0, 8, 8, 32, 32], "reaches outside the 32x32 image"),
    ("vindr", "annotations_test.csv", ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"],
     ["HELD", "R1", "Nodule", 0, 0, 40, 40], "reaches outside the 32x32 image"),
])
@pytest.mark.parametrize("command", ["grounding", "masks"])
def test_bad_annotation_files_are_one_line_and_nothing_is_written(csv_run, tmp_path, fmt, name, header, row, match, command):
    run, held, _ = csv_run
    f = write(tmp_path / name, header, [[held[0] if c == "HELD" else c for c in row]])
    out = tmp_path / "out"
    msg = fails("eval", command, run, "--regions", f, "--format", fmt, "--out", out, match=match, out=out)
    assert str(f) in msg


@pytest.mark.parametrize("command, fmt, text, match", [
    ("grounding", "rsna", "patientId,x,y,width,height,Target\n", "a header and no rows"),
    ("masks", "nih", "", "the file is empty"),
    ("grounding", "ms_cxr", "dicom_id,category,label_text,path,x,y,w,image_width,image_height\nHELD,P,o,p,1,1,5,32,32\n",
     "missing column 'h'"),
    ("masks", "vindr", "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\nHELD,R1,Nodule,1\n",
     "row 2: the row ends before column 'y_min'"),
    ("grounding", "nih", "Image Index,Finding Label,Bbox [x,y,w,h],,,\nHELD,Effusion,1O,1,5,5,,,\n",
     "row 2, column 'Bbox [x': expected a number of pixels, got '1O'"),
    ("finetune", "siim", "ImageId, EncodedPixels\n", "a header and no rows"),
])
def test_whole_file_faults_are_one_line_and_nothing_is_written(csv_run, tmp_path, command, fmt, text, match):
    run, held, _ = csv_run
    f = tmp_path / f"{fmt}.csv"
    f.write_text(text.replace("HELD", held[0]))
    out = tmp_path / "out"
    task = ["--task", "segmentation"] if command == "finetune" else []
    msg = fails("eval", command, run, *task, "--regions", f, "--format", fmt, "--out", out, match=match, out=out)
    assert msg.startswith(str(f)) or f"{f}:" in msg


def test_regions_need_their_format(csv_run, tmp_path):
    fails("eval", "grounding", csv_run[0], "--regions", tmp_path / "x.csv", match="--regions needs --format")


def test_masks_on_a_region_file(csv_run, tmp_path):
    run, held, _ = csv_run
    f = write(tmp_path / "train-rle.csv", ["ImageId", " EncodedPixels"],
              [[h, " 0 524288"] for h in held[:2]] + [[held[2], " -1"]])  # the left half of each 1024 x 1024 image
    res = invoke("eval", "masks", run, "--regions", f, "--format", "siim", "--strategy", "random", "--strategy", "report_cross",
                 "--ratio", "0.5", "--seeds", "1", "--out", tmp_path / "o")
    doc = json.loads((tmp_path / "o" / "masks.json").read_text())
    rows = {r["strategy"]: r for r in doc["rows"]}
    for r in rows.values():  # every image masks exactly half its patches: random's expected share is 0.5
        assert 0 <= r["share_micro"] <= 1 and r["lift_micro"] == pytest.approx(r["share_micro"] / 0.5)
    assert set(rows) == {"random", "report_cross"} and "image-only data" not in res.output  # paired: both measured
    assert rows["random"]["lesion_base_rate"] == pytest.approx(0.5 * 2 / 3)  # 3 annotated images, 2 with a lesion: half each
    assert doc["metrics"]["masks/images"] == 3.0 and doc["metrics"]["masks/images_with_lesion"] == 2.0
    assert doc["format"] == "siim"
    # the same images without their reports (image-only, as RSNA or SIIM): the strategies that read the
    # report are left out, in one warning line naming them
    lines = [line.split(",") for line in (run.parent / "d.csv").read_text().splitlines()]
    noreport = run.parent / "noreport.csv"  # beside the images: the same relative paths, hence the same ids
    noreport.write_text("\n".join(",".join([c[0], *c[2:]]) for c in lines) + "\n")
    res = invoke("eval", "masks", run, "data=csv", f"data.path={noreport}",
                 "--regions", f, "--format", "siim", "--strategy", "random", "--strategy", "report_cross", "--strategy",
                 "xlip", "--ratio", "0.5", "--seeds", "1", "--out", tmp_path / "o2")
    doc = json.loads((tmp_path / "o2" / "masks.json").read_text())
    assert [r["strategy"] for r in doc["rows"]] == ["random"]
    assert ("warning: image-only data: 2 of the 3 strategies read the report, which not every evaluated image has, and are "
            "not measured: report_cross, preset xlip (a limitation of region data without reports") in " ".join(res.output.split())


# --- PadChest ----------------------------------------------------------------------------------------

PADCHEST_LABELS = ["['pleural effusion']", "['cardiomegaly', 'nodule']", "['normal']", "['nodule']", "['pneumonia', 'kyphosis']"]


def padchest_root(root: Path, labels: list[str] = PADCHEST_LABELS, n: int = 80, images: bool = True) -> Path:
    """A PadChest folder in the real layout: ``n`` 32x32 PNGs in ``0/`` (none with ``images=False``)
    and the labels CSV, image ``i`` labelled ``labels[i % len(labels)]``."""
    from PIL import Image

    (root / "0").mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n):
        if images:
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / "0" / f"im{i}.png")
        rows.append([f"im{i}.png", "0", f"s{i}", f"p{i}", "PA", "Physician", labels[i % len(labels)]])
    write(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
          ["ImageID", "ImageDir", "StudyID", "PatientID", "Projection", "MethodLabel", "Labels"], rows)
    return root


def test_padchest_seen_and_unseen_on_explicit_data(phantom_run, tmp_path):
    root = padchest_root(tmp_path / "padchest")
    fails("eval", "padchest", phantom_run, match="has no padchest source")
    res = invoke("eval", "padchest", phantom_run, "data=padchest", f"data.root={root}", "--bootstrap", "0", "--subset", "seen",
                 "--subset", "unseen10", "--out", tmp_path / "o")
    doc = json.loads((tmp_path / "o" / "padchest.json").read_text())
    # only the seen classes with a positive (and a negative) held-out image are scored; the others are said
    n = int(doc["metrics"]["padchest/n"])
    assert list(doc["protocol"]["seen"]) == ["cardiomegaly", "pleural effusion", "pneumonia"]
    assert doc["protocol"]["excluded"]["fracture"] == "no positive image"
    assert not any("Fracture" in k for k in doc["metrics"]) and "padchest/seen/auc/Pneumonia" in doc["metrics"]
    assert (f"warning: padchest: seen class 'fracture' has no positive image among the {n} evaluated images: it is in "
            f"neither set and not scored") in " ".join(res.output.split())
    assert "padchest/seen/auc_macro" in doc["metrics"] and set(doc["subsets"]) == {"seen", "unseen10"}
    assert doc["data"]["split"] == "explicit" and doc["metrics"]["padchest/n"] == doc["protocol"]["n_images"]


@pytest.mark.parametrize("name", ["padchest", "zeroshot", "retrieval", "finetune"])
def test_no_image_decodes_names_one_file_the_root_and_its_key(phantom_run, tmp_path, name):
    """Every image of the data is a corrupt file: one line naming one file and why, the image root and
    the key that sets it (padchest named no path; zeroshot crashed in torch.cat; retrieval said no
    image had a report; finetune's training set named a file but not where the images are read)."""
    root = padchest_root(tmp_path / "pc", n=40, images=False)
    for i in range(40):
        (root / "0" / f"im{i}.png").write_bytes(b"garbage")
    opt = ["--epochs", "1"] if name == "finetune" else ["--bootstrap", "0"]
    msg = fails("eval", name, phantom_run, "data=padchest", f"data.root={root}", *opt, "--out", tmp_path / "o",
                match=f"eval {name}: ", out=tmp_path / "o")
    assert ("records in a row" if name == "finetune" else " images decodes; e.g. ") in msg, msg
    assert str(root / "0" / "im") in msg and "cannot decode image" in msg, msg
    assert msg.endswith(f"; data (padchest) reads its images under {root} (data.root): set data.root to the folder that "
                        f"holds readable images"), msg


# --- --out FILE.json: one rule for every evaluation ---------------------------------------------------

OWN_FILES = {"finetune": {"results.json", "splits/test.json", "splits/train_0.01.json"}, "masks": {"masks.md"}}


@pytest.mark.parametrize("name, args", [
    ("zeroshot", ["--bootstrap", "0"]),
    ("finetune", ["--epochs", "1"]),
    ("masks", ["--n", "8", "--seeds", "1", "--strategy", "random"]),
    ("retrieval", ["--bootstrap", "0"]),
    ("grounding", ["--n", "8"]),
    ("padchest", ["--bootstrap", "0", "--subset", "seen"]),
])
def test_out_file_json_keeps_the_evaluations_own_files_in_its_stem_folder(phantom_run, tmp_path, name, args):
    """``--out FILE.json``: FILE.json (the document), FILE.csv and the evaluation's own files in
    FILE/ (they were dropped); a folder --out holds the same files under the same names."""
    from maskkit.plugins import get_registry

    assert set(BUILTIN) == set(get_registry().evaluations) - {"report_length"}  # a new built-in gets a row here
    data = ["data=padchest", f"data.root={padchest_root(tmp_path / 'pc')}"] if name == "padchest" else []
    invoke("eval", name, phantom_run, *data, *args, "--out", tmp_path / "res" / "r1.json")
    doc = json.loads((tmp_path / "res" / "r1.json").read_text())
    assert doc["evaluation"] == name and all(k.startswith(f"{name}/") for k in doc["metrics"]) and doc["metrics"]
    assert len(list(csv.DictReader((tmp_path / "res" / "r1.csv").open()))) == len(doc["details"])
    own = {str(p.relative_to(tmp_path / "res" / "r1")) for p in (tmp_path / "res" / "r1").rglob("*") if p.is_file()} \
        if (tmp_path / "res" / "r1").exists() else set()
    assert OWN_FILES.get(name, set()) <= own and (own == set()) == (name not in OWN_FILES), own
    assert {str(p.relative_to(tmp_path / "res")) for p in (tmp_path / "res").iterdir() if p.is_file()} == {"r1.json", "r1.csv"}
    (tmp_path / "dir").mkdir()  # an existing folder is a folder --out (it was refused as "not a file")
    invoke("eval", name, phantom_run, *data, *args, "--out", tmp_path / "dir")
    in_dir = {str(p.relative_to(tmp_path / "dir")) for p in (tmp_path / "dir").rglob("*") if p.is_file()}
    assert in_dir == own | {f"{name}.json", f"{name}.csv"}
    if name == "finetune":  # the splits of FILE.json are its own: the same draw as the folder's
        assert json.loads((tmp_path / "res" / "r1" / "results.json").read_text())[0]["fraction"] == "0.01"
        assert (tmp_path / "res" / "r1" / "splits" / "test.json").read_text() == (tmp_path / "dir" / "splits" / "test.json").read_text()


def test_out_file_json_needs_its_stem_folder_writable(phantom_run, tmp_path):
    (tmp_path / "r1").write_text("a file where the own files go")
    fails("eval", "masks", phantom_run, "--out", tmp_path / "r1.json", match=f"--out {tmp_path / 'r1'}: is a file, not a folder",
          out=tmp_path / "r1.json")


# --- end of run, config, sweeps ----------------------------------------------------------------------

@pytest.mark.slow
def test_end_of_run_evaluations_are_a_list(tmp_path):
    cfg, src = resolve([*SMALL, "data.val_n=12", "train.steps=1", f"runtime.out_dir={tmp_path}", "runtime.name=e",
                        "runtime.evaluations=[zeroshot,retrieval]"])
    r = train(cfg, src)
    assert set(r.evaluations) == {"zeroshot", "retrieval"} and r.zeroshot is r.evaluations["zeroshot"].native
    z = json.loads((tmp_path / "e" / "zeroshot.json").read_text())
    assert z["n_boot"] == 200 and z["n"] == 12 and "zeroshot/auc_macro" in z["metrics"]  # the end-of-run settings
    assert json.loads((tmp_path / "e" / "retrieval.json").read_text())["n_boot"] == 200
    assert (tmp_path / "e" / "retrieval.csv").is_file()


@pytest.mark.parametrize("arg, match", [
    ("runtime.evaluations=[zeroshot,zeroshoot]", "runtime.evaluations: unknown evaluation 'zeroshoot'; did you mean 'zeroshot'?"),
    ("runtime.evaluations=[zeroshot,zeroshot]", "runtime.evaluations: 'zeroshot' is listed twice"),
    ("runtime.eval_zeroshot=false", "runtime.eval_zeroshot was replaced by runtime.evaluations"),
])
def test_evaluations_key_is_checked_at_resolve(arg, match):
    with pytest.raises(MaskkitError) as e:
        resolve([arg])
    assert match in str(e.value) and "\n" not in str(e.value)


def test_a_message_with_brackets_is_printed_whole():
    """The CLI prints errors with rich: '[zeroshot]' in a message is text, not a style tag (it was eaten)."""
    import subprocess

    out = subprocess.run([sys.executable, "-m", "maskkit.cli", "run", "runtime.eval_zeroshot=false"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip() == (
        "error: runtime.eval_zeroshot was replaced by runtime.evaluations, a list of evaluations run at the end: "
        "runtime.evaluations=[] for none, runtime.evaluations=[zeroshot] for the zero-shot table (from cli)"), out.stderr


def test_config_values_and_old_checkpoints():
    from maskkit.config import migrate_saved

    assert resolve(["runtime.evaluations=[]"])[0].runtime.evaluations == []
    assert resolve(['runtime.evaluations=["zeroshot", "masks"]'])[0].runtime.evaluations == ["zeroshot", "masks"]
    assert resolve(["runtime.evaluations=retrieval"])[0].runtime.evaluations == ["retrieval"]
    assert migrate_saved({"runtime": {"eval_zeroshot": False}})["runtime"] == {"evaluations": []}
    assert migrate_saved({"runtime": {"eval_zeroshot": True}})["runtime"] == {"evaluations": ["zeroshot"]}


def test_sweep_tables_take_any_metric_key(tmp_path):
    from maskkit.sweep import SweepSpec, check_metrics, write_results

    rows = [{"preset": p, "seed": s, "run": f"{p}{s}", "steps": 1, "auc": a, "retrieval/image_to_report_R@1": r,
             "retrieval/image_to_report_median_rank": mr}
            for p, s, a, r, mr in [("clip", 0, 0.6, 0.25, 3.0), ("clip", 1, 0.7, 0.35, 2.0),
                                   ("xlip", 0, 0.65, 0.5, 1.0), ("xlip", 1, 0.75, 0.5, 2.0)]]
    spec = SweepSpec(["clip", "xlip"], seeds=[0, 1], metrics=["auc", "retrieval/*_R@1", "retrieval/*median*"])
    write_results(rows, spec, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| preset | seeds | zero-shot AUC | retrieval/image_to_report_R@1 | retrieval/image_to_report_median_rank |" in md
    assert "| clip | 2 | 65.00 ± 7.07 | 0.300 ± 0.071 | 2.500 ± 0.707 |" in md  # AUC in %, an evaluation's metric as it is
    paired = (tmp_path / "paired.md").read_text()
    # xlip - clip on R@1, seed by seed: 0.25 and 0.15 -> mean 0.200, SE 0.05 (sd 0.0707 / sqrt 2): beyond 2 SE
    assert "| xlip | clip | retrieval/image_to_report_R@1 | 2 | +0.200 | 0.050 | yes |" in paired
    head = (tmp_path / "results.csv").read_text().splitlines()[0]
    assert "retrieval/image_to_report_median_rank_mean" in head and "auc_mean" in head
    with pytest.raises(MaskkitError, match=r"^sweep metrics: 'grounding/\*' is a metric of evaluation 'grounding', which "
                                           r"no run of the sweep runs \(runtime.evaluations: zeroshot\)"):
        check_metrics(SweepSpec(["xlip"], metrics=["grounding/*"]), ["zeroshot"])
    check_metrics(SweepSpec(["xlip"], metrics=["probe_*", "auc:Edema", "grounding/pointing"]), ["zeroshot", "grounding"])
    # a difference beyond 2 SE shows its digits (it printed -0.000 | 0.000 | yes)
    tiny = [{"preset": p, "seed": s, "run": f"{p}{s}", "steps": 1, "auc": 0.6, "retrieval/image_to_report_R@1": r}
            for p, s, r in [("clip", 0, 0.5), ("clip", 1, 0.5), ("clip", 2, 0.5),
                            ("xlip", 0, 0.49996), ("xlip", 1, 0.49995), ("xlip", 2, 0.49997)]]
    write_results(tiny, SweepSpec(["clip", "xlip"], seeds=[0, 1, 2], metrics=["retrieval/*_R@1"]), tmp_path)
    # differences -4, -5, -3 (x 1e-5): mean -4e-5, sd 1e-5, SE 1e-5 / sqrt 3 = 5.8e-6
    assert "| xlip | clip | retrieval/image_to_report_R@1 | 3 | -0.000040 | 0.0000058 | yes |" in (tmp_path / "paired.md").read_text()
    assert "| xlip | 3 | 0.500 ± 0.000010 |" in (tmp_path / "results.md").read_text()
    # a typo is not advised as an evaluation to add: only a registered one, or close matches of real names
    with pytest.raises(MaskkitError) as e:
        check_metrics(SweepSpec(["xlip"], metrics=["retreival/*_R@1"]), ["zeroshot"])
    assert str(e.value).startswith("sweep metrics: 'retreival/*_R@1': 'retreival' is not a registered evaluation; did you "
                                   "mean 'retrieval'? (registered: finetune, grounding, masks, padchest, ")
    assert "runtime.evaluations=[zeroshot,retreival]" not in str(e.value)
    with pytest.raises(MaskkitError, match=r"^sweep metrics: 'acu' is neither .*; did you mean 'auc', 'acc'\?$"):
        check_metrics(SweepSpec(["xlip"], metrics=["acu"]), ["zeroshot"])
    with pytest.raises(MaskkitError, match=r"'retr\*/R@1' is a metric of evaluation 'retrieval', .*'runtime.evaluations=\[zeroshot,retrieval\]'"):
        check_metrics(SweepSpec(["xlip"], metrics=["retr*/R@1"]), ["zeroshot"])  # a wildcard: the evaluation it names
    write_results(rows, SweepSpec(["clip", "xlip"], metrics=["masks/*"]), tmp_path)
    assert "No run holds a metric matching 'masks/*'" in (tmp_path / "results.md").read_text()


# --- a failing evaluation (issue 19) -------------------------------------------------------------------

def _boom(run, s):
    """Raises (test plugin)."""
    raise RuntimeError("the plugin broke")


def test_a_plugin_evaluation_that_raises_is_one_line_naming_the_plugin(phantom_run, monkeypatch):
    """It gave a rich traceback (exit 1) that never named the plugin: one line, exit 2."""
    from maskkit.cli import failure_line
    from maskkit.errors import PluginError
    from maskkit.eval.contract import make_evaluation
    from maskkit.plugins import get_registry

    monkeypatch.setitem(get_registry().evaluations, "boom", make_evaluation("boom", _boom, "acme-eval:boom"))
    res = invoke("eval", "boom", phantom_run, ok=False)
    assert isinstance(res.exception, PluginError), repr(res.exception)
    line, code, _ = failure_line(res.exception)
    assert code == 2 and "\n" not in line
    assert line.startswith("evaluation 'boom' (from plugin 'acme-eval:boom') failed: RuntimeError: the plugin broke (at "), line


def test_a_builtin_evaluations_own_error_keeps_its_line(phantom_run):
    from maskkit.eval.contract import EvaluationError

    res = invoke("eval", "padchest", phantom_run, ok=False)
    assert isinstance(res.exception, EvaluationError) and str(res.exception).startswith("eval padchest: "), repr(res.exception)


def test_a_failing_end_of_run_evaluation_is_isolated(tmp_path, monkeypatch):
    """One failing end-of-run evaluation stopped the others (zeroshot.json never written): each is
    isolated, the failure is one warning line naming it, and `maskkit run` exits 3."""
    from maskkit.cli import EVALUATION_FAILED
    from maskkit.eval.contract import make_evaluation
    from maskkit.plugins import get_registry

    monkeypatch.setitem(get_registry().evaluations, "boom", make_evaluation("boom", _boom, "acme-eval:boom"))
    res = invoke("run", *SMALL, "data.val_n=12", "train.steps=1", f"runtime.out_dir={tmp_path}", "runtime.name=e",
                 "runtime.evaluations=[boom,zeroshot,padchest]", ok=False)
    err = res.exception
    assert isinstance(err, MaskkitError) and err.exit_code == EVALUATION_FAILED == 3, (res.output[-2000:], repr(err))
    msg = str(err)
    assert "\n" not in msg and "2 of the 3 end-of-run evaluations failed" in msg
    assert "evaluation 'boom' (from plugin 'acme-eval:boom') failed: RuntimeError: the plugin broke" in msg
    assert "evaluation 'padchest' failed: eval padchest: " in msg
    run = tmp_path / "e"
    assert msg.endswith(f"; the others were written; run them again with maskkit eval boom {run} and maskkit eval padchest {run}")
    assert (run / "zeroshot.json").is_file() and (run / "zeroshot.csv").is_file()  # the others ran after the failure
    assert not (run / "boom.json").exists() and not (run / "padchest.json").exists()
    assert "warning: end-of-run evaluation 'boom' (from plugin 'acme-eval:boom') failed" in res.output


@pytest.mark.parametrize("command", ["grounding", "masks", "finetune", "retrieval"])
def test_an_id_two_sources_share_is_refused_where_an_annotation_names_it(csv_run, tmp_path, command):
    """Two sources sharing an image id: a region file's (or an id set's) annotations went silently
    to the last source's image. An id alone cannot say which sample it means: one line naming both
    sources and the file's row; nothing is written."""
    from maskkit.eval.subsets import IdSet, save_id_set

    run, held, _ = csv_run
    d = run.parent / "d.csv"
    two = "data.sources=" + json.dumps([{"name": "csv", "path": str(d)}, {"name": "csv", "path": str(d)}])
    if command == "retrieval":
        f = save_id_set(IdSet("two", {"A": held[:2]}), tmp_path / "set.json")
        fails("eval", "retrieval", run, two, "--set", f, "--out", tmp_path / "o", out=tmp_path / "o",
              match=f"{f}: image id '{held[0]}' of id set two is an image of 2 sources of the data, csv#0 and csv#1 "
                    f"(shared ids: 2 of its 2)")
        return
    f = write(tmp_path / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"],
              [[held[0], 0, 0, 512, 512, 1]])
    extra = ["--task", "segmentation"] if command == "finetune" else []
    fails("eval", command, run, two, "--regions", f, "--format", "rsna", *extra, "--out", tmp_path / "o", out=tmp_path / "o",
          match=f"{f}: row 2: image id '{held[0]}' is an image of 2 sources of the data, csv#0 and csv#1 "
                f"(shared ids: 1 of the 1 annotated); samples are keyed by (source, id)")


def test_sweep_metrics_are_checked_whatever_the_runs_state(tmp_path):
    """On a finished sweep (every run done) --metrics TYPO exited 0 and rewrote results.md without its
    columns while paired.md kept old comparisons. A grid varying runtime.evaluations was refused a
    metric only some runs compute; it is accepted (missing cells '–'), refused only when none does."""
    from maskkit.sweep import SweepSpec, run_sweep, slug

    grid = {"runtime.evaluations": [["zeroshot"], ["zeroshot", "retrieval"]]}
    spec = SweepSpec(["clip"], grid=grid, seeds=[0, 1])
    for preset, combo, seed in spec.runs():  # a finished sweep: every run has its done.json
        name = slug(preset, combo, seed)
        row = {"preset": preset, **combo, "seed": seed, "run": name, "steps": 1, "auc": 0.5 + 0.1 * seed}
        if "retrieval" in combo["runtime.evaluations"]:
            row["retrieval/image_to_report_R@1"] = 0.25 * (seed + 1)
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "done.json").write_text(json.dumps(row))
    (tmp_path / "paired.md").write_text("| old | comparison |\n")
    with pytest.raises(MaskkitError, match=r"^sweep metrics: 'retreival/\*_R@1': 'retreival' is not a registered evaluation"):
        run_sweep(SweepSpec(["clip"], grid=grid, seeds=[0, 1], metrics=["auc", "retreival/*_R@1"]), tmp_path)
    assert not (tmp_path / "results.md").exists()
    with pytest.raises(MaskkitError, match=r"'grounding/\*' is a metric of evaluation 'grounding', which no run of the sweep "
                                           r"runs \(runtime.evaluations: zeroshot, retrieval\)"):
        run_sweep(SweepSpec(["clip"], grid=grid, seeds=[0, 1], metrics=["grounding/*"]), tmp_path)
    rows = run_sweep(SweepSpec(["clip"], grid=grid, seeds=[0, 1], metrics=["retrieval/*_R@1"]), tmp_path)
    assert len(rows) == 4
    md = (tmp_path / "results.md").read_text()
    assert '| clip | ["zeroshot"] | 2 | – |' in md, md  # its runs do not compute R@1
    assert '| clip | ["zeroshot","retrieval"] | 2 | 0.375 ± 0.177 |' in md, md  # R@1 0.25, 0.5 of the runs that compute it
    paired = (tmp_path / "paired.md").read_text()
    assert paired == ("No paired comparison: fewer than two rows hold a chosen metric on a common seed "
                      "(metrics: retrieval/image_to_report_R@1).\n"), paired


def test_an_ensemble_refuses_a_repeated_run_and_lists_its_members(phantom_run, tmp_path):
    """`eval zeroshot A A B` counted A twice silently; the result named no member."""
    import shutil

    ck = sorted((phantom_run / "checkpoints").glob("step_*.pt"))[-1]
    fails("eval", "zeroshot", phantom_run, phantom_run, "--bootstrap", "0", out=tmp_path / "o", match=(
          f"eval: {phantom_run} and {phantom_run} are the same checkpoint ({ck.resolve()}); an ensemble's members must be "
          f"different checkpoints"))
    fails("eval", "zeroshot", phantom_run, ck, "--bootstrap", "0", match=f"eval: {ck} and {phantom_run} are the same checkpoint")
    other = tmp_path / "b" / "checkpoints" / "step_00000001.pt"
    other.parent.mkdir(parents=True)
    shutil.copy(ck, other)
    invoke("eval", "zeroshot", phantom_run, other, "--bootstrap", "0", "--out", tmp_path / "o")
    doc = json.loads((tmp_path / "o" / "zeroshot.json").read_text())
    assert doc["data"]["members"] == [
        {"path": str(phantom_run), "checkpoint": str(ck.resolve()), "step": 2},
        {"path": str(other), "checkpoint": str(other.resolve()), "step": 1}], doc["data"]


def test_help_shows_an_empty_list_default_as_brackets(monkeypatch):
    """A list field with default_factory=list showed 'default: none'."""
    from pydantic import BaseModel, ConfigDict, Field

    from maskkit.eval.contract import EvalResult, make_evaluation
    from maskkit.evalcli import option_text
    from maskkit.plugins import get_registry

    class Settings(BaseModel):
        model_config = ConfigDict(extra="forbid")
        labels: list[str] = Field(default_factory=list, description="labels scored")

    assert option_text(Settings, "labels") == "labels scored; default: []"
    from maskkit.evaluations import ZeroshotSettings

    assert option_text(ZeroshotSettings, "absence_ignore").endswith("default: []")


def test_a_region_file_of_another_layout_says_which(tmp_path):
    from maskkit.data.regions import RegionError, read_rsna

    f = write(tmp_path / "BBox_List_2017.csv", ["Image Index", "Finding Label", "Bbox [x", "y", "w", "h]"],
              [["00000001_000.png", "Nodule", 1, 1, 2, 2]])
    with pytest.raises(RegionError) as e:
        read_rsna(f)
    assert str(e.value).endswith("; its columns are those of the nih layout (--format nih)"), str(e.value)
