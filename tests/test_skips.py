"""The skip policy wherever a batch is formed: evaluation and fine-tuning drop a file that fails to
decode and leave out a batch it empties; the training set replaces it (tests/test_run.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maskkit.data.dataset import SkipReport, XrayDataset, decoded_batches
from maskkit.data.records import Record, Table
from model_helpers import tiny_model


def _table(tmp_path, n=6, bad=(2,)):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        p = tmp_path / f"x{i}.png"
        Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(p)
        if i in bad:
            p.write_bytes(p.read_bytes()[:100])  # truncated
        recs.append(Record(f"x{i}", str(p), f"report {i}", labels={"A": float(i % 2), "B": float(i // 3 % 2)}, patient_id=f"p{i}"))
    return Table("t", recs, ("A", "B"))


def test_decoded_batches_drop_and_count(tmp_path):
    ds = XrayDataset(_table(tmp_path), 96)
    skips = SkipReport(max_fraction=1.0)
    batches = list(decoded_batches(ds, list(range(6)), 1, skips))
    assert [[s["id"] for s in b] for b in batches] == [["x0"], ["x1"], ["x3"], ["x4"], ["x5"]]  # the emptied batch is left out
    assert skips.seen == 6 and [p for p, _ in skips.skipped] == [str(tmp_path / "x2.png")]


def test_training_set_replaces_a_skipped_file(tmp_path):
    ds = XrayDataset(_table(tmp_path), 96, on_skip="replace")
    s = ds[2]
    assert s["id"] == "x3" and s["skipped"][0][0] == str(tmp_path / "x2.png")
    with pytest.raises(Exception, match=r"3 records in a row from index 0 \(of 6\) failed to decode"):
        XrayDataset(_table(tmp_path, n=6, bad=(0, 1, 2)), 96, on_skip="replace", max_replace=3)[0]
    with pytest.raises(Exception, match="none of the 3 records decodes"):  # not "32 in a row" of 3
        XrayDataset(_table(tmp_path, n=3, bad=(0, 1, 2)), 96, on_skip="replace")[0]


@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_finetune_survives_a_batch_emptied_by_skips(tmp_path, mode):
    from maskkit.eval.finetune import run_finetune

    table = _table(tmp_path, n=8, bad=(2,))
    ds = XrayDataset(table, 96)
    ids = [r.id for r in table.records]
    splits = {"test": {"ids": ids[4:]}, "train_100": {"ids": ids[:4], "sha256": "x"}}
    res = run_finetune(tiny_model("clip"), ds, ["A", "B"], splits, mode=mode, epochs=1, batch_size=1)
    assert len(res) == 1 and res[0].n_train == 4


def test_zeroshot_survives_a_batch_emptied_by_skips(tmp_path):
    from maskkit.eval.zeroshot import zeroshot_eval

    ds = XrayDataset(_table(tmp_path, n=8, bad=(2,)), 96)
    res = zeroshot_eval(tiny_model("clip"), ds, ["A", "B"], batch_size=1, n_boot=10)
    assert res is not None
