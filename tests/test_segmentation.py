"""Segmentation fine-tuning's pieces: Dice by hand, the SETR-naive head, the
split restriction and the mask checks. The command itself: tests/test_eval_cli.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskkit.errors import MaskkitError
from maskkit.eval.finetune import checksum
from maskkit.eval.segmentation import SETRNaive, dice_scores, mask_targets, restrict, segmentation_loss, summarise


def masks(*pixels: list[tuple[int, int]]) -> torch.Tensor:
    out = torch.zeros(len(pixels), 4, 4, dtype=torch.bool)
    for b, px in enumerate(pixels):
        for r, c in px:
            out[b, r, c] = True
    return out


def test_dice_by_hand():
    # A: lesion 3 px, predicted 2 px, 1 in common -> 2*1/(2+3) = 0.4
    # B: no lesion, nothing predicted -> 1;  C: no lesion, 1 px predicted -> 0;  D: lesion 2 px, nothing predicted -> 0
    target = masks([(0, 0), (0, 1), (0, 2)], [], [], [(3, 3), (2, 3)])
    pred = masks([(0, 0), (1, 1)], [], [(2, 2)], [])
    per = dice_scores(pred, target)
    assert per["dice"].tolist() == pytest.approx([0.4, 1.0, 0.0, 0.0])
    assert per["inter"].tolist() == [1, 0, 0, 0] and per["pred_px"].tolist() == [2, 0, 1, 0] and per["target_px"].tolist() == [3, 0, 0, 2]
    s = summarise(per)
    assert s["dice"] == pytest.approx(0.35)           # (0.4 + 1 + 0 + 0) / 4
    assert s["dice_pos"] == pytest.approx(0.2)        # A and D
    assert s["dice_neg"] == pytest.approx(0.5)        # B and C: the share predicted empty
    assert s["dice_pooled"] == pytest.approx(0.25)    # 2 * 1 / ((2 + 0 + 1 + 0) + (3 + 0 + 0 + 2))
    assert (s["n_test"], s["n_pos"], s["n_neg"]) == (4, 2, 2)


def test_dice_undefined_parts_are_nan():
    empty = masks([], [])
    s = summarise(dice_scores(empty, empty))
    assert s["dice"] == 1.0 and s["dice_neg"] == 1.0 and math.isnan(s["dice_pos"]) and math.isnan(s["dice_pooled"])
    with pytest.raises(MaskkitError, match="expected one shape"):
        dice_scores(masks([]), torch.zeros(1, 2, 2, dtype=torch.bool))


def test_setr_naive_head_maps_tokens_to_pixels():
    head = SETRNaive(8, (3, 3), 4, hidden=5)
    out = head(torch.randn(2, 9, 8))
    assert out.shape == (2, 12, 12)
    assert sum(p.numel() for p in head.parameters()) == 8 * 5 + 5 + 5 + 5 + 5 + 1  # 1x1 conv, BatchNorm, 1x1 conv
    with pytest.raises(MaskkitError, match=r"10 tokens; expected the 3x3 = 9 patch tokens"):
        head(torch.randn(1, 10, 8))
    # the loss falls when the logits agree with the target
    t = torch.zeros(1, 4, 4, dtype=torch.bool)
    t[0, :2] = True
    good = torch.where(t, 5.0, -5.0)
    assert segmentation_loss(good, t) < segmentation_loss(-good, t)


def test_restrict_cuts_each_split_and_recomputes_its_checksum():
    sp = {"test": {"ids": [("s", "a"), ("s", "b")], "n": 2, "sha256": "x"},
          "train_1": {"ids": [("s", "c"), ("s", "d"), ("s", "e")], "n": 3, "sha256": "y", "seed": 0}}
    out = restrict(sp, {("s", "a"), ("s", "d")})
    assert out["test"]["ids"] == [("s", "a")] and out["train_1"]["ids"] == [("s", "d")]
    assert out["train_1"]["n"] == 1 and out["train_1"]["sha256"] == checksum([("s", "d")]) and out["train_1"]["seed"] == 0
    assert sp["train_1"]["n"] == 3  # the stored splits are untouched


def test_a_mask_of_the_wrong_size_is_one_line():
    ok = mask_targets([np.ones((4, 4), bool)], 4, ["sample a"])
    assert ok.dtype == torch.bool and ok.shape == (1, 4, 4)
    with pytest.raises(MaskkitError, match=r"^sample b: lesion mask of 4x5 pixels; expected the 4x4 of the model's input$"):
        mask_targets([np.ones((4, 4), bool), np.ones((4, 5), bool)], 4, ["sample a", "sample b"])


def test_uint8_images_of_a_prepared_cache_are_read_as_their_floats():
    """A training dataset over a prepared cache yields uint8 images (0-255): fine-tuning (both tasks)
    scores them exactly as the same images in [0, 1]."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from model_helpers import tiny_model

    from maskkit.eval.finetune import make_splits, run_finetune
    from maskkit.eval.segmentation import run_segmentation

    model = tiny_model("clip")
    S = model.image_size
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (12, 1, S, S), dtype=np.uint8)
    lesion = np.zeros((12, S, S), bool)
    lesion[::2, : S // 2] = True

    def dataset(as_uint8):
        return [{"image": torch.from_numpy(raw[i]) if as_uint8 else torch.from_numpy(raw[i]).float() / 255,
                 "labels": torch.tensor([float(i % 2)]), "id": f"i{i}", "lesion": torch.from_numpy(lesion[i])}
                for i in range(12)]

    ids = [f"i{i}" for i in range(12)]
    splits = make_splits(ids, [None] * 12, seed=0, test_ids=ids[:6], fractions=(1.0,))
    a, b = (run_finetune(model, dataset(u), ["L"], splits, epochs=2) for u in (False, True))
    assert a[0].auc == b[0].auc and a[0].auc["L"] is not None

    def target_of(items):
        return torch.ones(len(items), dtype=torch.bool), torch.stack([it["lesion"] for it in items])

    a, b = (run_segmentation(model, dataset(u), splits, target_of, lambda it: it["id"], epochs=2) for u in (False, True))
    assert a[0].summary == b[0].summary and [r["dice"] for r in a[0].per_image] == [r["dice"] for r in b[0].per_image]


def test_both_fine_tunings_map_split_ids_and_check_options_through_one_function():
    """split_rows: the part fine-tuning and segmentation shared, written twice before: each split id
    to its dataset row, an unknown id and a bad option one line each, alike in both."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from model_helpers import tiny_model

    from maskkit.eval.finetune import make_splits, run_finetune, split_rows
    from maskkit.eval.segmentation import run_segmentation
    from maskkit.options import OptionValueError

    data = [{"id": f"i{i}"} for i in range(5)]
    assert split_rows(data, mode="probe", epochs=1, lr=1e-3, batch_size=2, seed=0)(["i3", "i0"]) == [3, 0]
    with pytest.raises(OptionValueError, match=r"^epochs=0: expected an integer in \[1, 10000\]"):
        split_rows(data, mode="probe", epochs=0, lr=1e-3, batch_size=2, seed=0)
    model = tiny_model("clip")
    splits = make_splits(["i0", "i1", "zz"], [None] * 3, seed=0, test_ids=["zz"], fractions=(1.0,))
    for run in (lambda: run_finetune(model, data, ["L"], splits, epochs=1),
                lambda: run_segmentation(model, data, splits, None, None, epochs=1)):
        with pytest.raises(MaskkitError, match=r"^split id 'zz' is not in the dataset \(1 missing\)$"):
            run()
