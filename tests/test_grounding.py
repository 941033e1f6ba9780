"""Grounding metrics of a patch similarity map, and mask-lesion overlap.

Hand-computed on a 4 x 4 map: image 64 x 64, patches of 16 pixels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskkit.data.regions import ImageRegions, Region, patch_coverage
from maskkit.errors import ContextError
from maskkit.eval.grounding import (
    baselines, centre_prior, cnr, grounding_metrics, iou_dice, normalise, pointing_game, random_map, summarise,
    threshold_map,
)
from maskkit.eval.ties import hit_probability
from maskkit.eval.overlap import lesion_overlap, overlap_counts, random_like


def hand_map() -> torch.Tensor:
    """8 at patch 5, 6 at patch 6, 4 at patch 9, 0 elsewhere. Min-max: 1, 0.75, 0.5 -> the
    prediction at >= 0.5 is {5, 6, 9}."""
    s = torch.zeros(1, 16)
    s[0, 5], s[0, 6], s[0, 9] = 8.0, 6.0, 4.0
    return s


def box_region(box) -> torch.Tensor:
    return torch.from_numpy(patch_coverage(ImageRegions("i", (64, 64), [Region("f", box=box)]), 64, 16))[None]


def test_hand_computed_box_on_whole_patches():
    s, r = hand_map(), box_region((16, 16, 32, 16))  # patches 5 and 6
    assert r[0].nonzero().flatten().tolist() == [5, 6]
    m = grounding_metrics(s, r)
    assert m["pointing"].tolist() == [1.0]
    assert m["iou"].item() == pytest.approx(2 / 3)   # |P ∩ R| = 2, |P ∪ R| = 3
    assert m["dice"].item() == pytest.approx(4 / 5)  # 2 * 2 / (3 + 2)
    # inside {8, 6}: mean 7, variance 1; outside 13 zeros and a 4: mean 2/7, variance 16/14 - 4/49 = 52/49
    assert m["cnr"].item() == pytest.approx(47 / math.sqrt(101))  # (7 - 2/7) / sqrt(1 + 52/49)
    assert summarise(m) == pytest.approx({"pointing": 1.0, "iou": 2 / 3, "dice": 0.8, "cnr": 47 / math.sqrt(101),
                                          "n": 1.0, "cnr_infinite": 0.0})


def test_hand_computed_box_on_part_of_a_patch_is_the_pixel_value():
    """x 8..32: half of patch 4 and all of patch 5 (1.5 patches of pixels). The prediction {5, 6, 9}
    meets it on patch 5 only: IoU 1 / (3 + 1.5 - 1) = 2/7, Dice 2 / 4.5 = 4/9 -- the values of the
    map upsampled by nearest neighbour, scored on pixels (checked by brute force)."""
    s, r = hand_map(), box_region((8, 16, 24, 16))
    assert r[0, 4].item() == 0.5 and r[0, 5].item() == 1.0
    m = grounding_metrics(s, r)
    assert m["iou"].item() == pytest.approx(2 / 7) and m["dice"].item() == pytest.approx(4 / 9)
    # brute force on the 64 x 64 pixels
    up = s.reshape(4, 4).repeat_interleave(16, 0).repeat_interleave(16, 1)
    pred = (up - up.min()) / (up.max() - up.min()) >= 0.5
    box = torch.zeros(64, 64, dtype=torch.bool)
    box[16:32, 8:32] = True
    inter, union = (pred & box).sum().item(), (pred | box).sum().item()
    assert m["iou"].item() == pytest.approx(inter / union)
    assert m["dice"].item() == pytest.approx(2 * inter / (pred.sum() + box.sum()).item())
    a, b = up[box].double(), up[~box].double()
    want = (a.mean() - b.mean()).abs() / (a.var(unbiased=False) + b.var(unbiased=False)).sqrt()
    assert m["cnr"].item() == pytest.approx(want.item())
    assert m["pointing"].item() == 1.0


def test_pointing_scores_ties_in_expectation_and_skips_empty_regions():
    s = hand_map()
    assert pointing_game(s, box_region((32, 32, 16, 16))).tolist() == [0.0]  # patch 10: the map's max is patch 5
    tie = torch.zeros(1, 16)
    tie[0, 0] = tie[0, 15] = 1.0
    # patches 0 and 15 tie for the maximum, only 15 is in the box: a random tie-break hits half the time
    assert pointing_game(tie, box_region((48, 48, 16, 16))).tolist() == [0.5]
    assert pointing_game(tie, box_region((0, 0, 64, 64))).tolist() == [1.0]  # both tied maxima inside
    # a constant map scores the share of patches the region touches, never 1: patches 5 and 6 of 16; a box
    # over part of patches 5, 6, 9 and 10 (any overlap counts, as for a single maximum) -> 4/16
    flat = torch.full((2, 16), 0.3)
    regions = torch.cat([box_region((16, 16, 32, 16)), box_region((20, 20, 20, 20))])
    assert pointing_game(flat, regions).tolist() == [2 / 16, 4 / 16]
    # the same number as retrieval's R@1 with (above, tied, relevant) = (0, 14, 2): one tie rule
    assert hit_probability(0, 14, 2, 1) == pytest.approx(2 / 16)
    empty = torch.zeros(1, 16)
    m = grounding_metrics(s, empty)
    assert all(math.isnan(v.item()) for v in m.values())
    both = grounding_metrics(torch.cat([s, s]), torch.cat([box_region((16, 16, 32, 16)), empty]))
    assert summarise(both)["n"] == 1.0 and summarise(both)["iou"] == pytest.approx(2 / 3)


def test_threshold_is_on_the_min_max_normalised_map_and_a_constant_map_predicts_nothing():
    s = torch.tensor([[-1.0, 0.0, 1.0, 3.0]])  # normalised 0, .25, .5, 1
    assert threshold_map(s).tolist() == [[False, False, True, True]]
    assert threshold_map(s * 7 + 2).tolist() == threshold_map(s).tolist()  # scale-free
    assert torch.equal(normalise(torch.full((1, 4), 0.3)), torch.zeros(1, 4))
    r = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    iou, dice = iou_dice(threshold_map(torch.full((1, 4), 0.3)), r)
    assert iou.tolist() == [0.0] and dice.tolist() == [0.0]
    with pytest.raises(ContextError, match=r"threshold 0; expected a fraction in \(0, 1\]"):
        threshold_map(s, 0)


def test_cnr_is_affine_invariant_and_its_edge_cases():
    s, r = hand_map(), box_region((16, 16, 32, 16))
    assert cnr(-3 * s + 5, r).item() == pytest.approx(cnr(s, r).item())
    assert cnr(torch.zeros(1, 16), r).item() == 0.0           # no contrast, no variance
    perfect = r.clone().float()
    assert cnr(perfect, r).item() == math.inf                 # contrast over no variance
    assert math.isnan(cnr(s, torch.ones(1, 16)).item())       # nothing outside
    assert summarise({"cnr": torch.tensor([2.0, math.inf], dtype=torch.float64)}) == {"cnr": 2.0, "n": 2.0,
                                                                                        "cnr_infinite": 1.0}


def test_baselines_random_is_seeded_and_centre_prior_points_at_the_centre():
    r = torch.cat([box_region((16, 16, 32, 32)), box_region((0, 0, 16, 16))])  # centre 2 x 2; a corner
    a = baselines(r, torch.Generator().manual_seed(0))
    b = baselines(r, torch.Generator().manual_seed(0))
    assert all(torch.equal(a["random"][k], b["random"][k]) for k in a["random"])
    assert a["centre"]["pointing"].tolist() == [1.0, 0.0]
    # the four centre patches (5, 6, 9, 10) tie for the prior's maximum: a box on patch 6 alone gets 1/4,
    # one on patches 5 and 6 gets 2/4 (MedKLIP's "any tied maximum" rule would give 1 to both)
    c = baselines(torch.cat([box_region((32, 16, 16, 16)), box_region((16, 16, 32, 16))]), torch.Generator().manual_seed(0))
    assert c["centre"]["pointing"].tolist() == [0.25, 0.5]
    cp = centre_prior(4)
    assert cp.shape == (1, 16) and set(cp[0].argsort(descending=True)[:4].tolist()) == {5, 6, 9, 10}
    # min-max of minus the distance: the prediction >= 0.5 is the centre 2 x 2 (distance .71 vs 1.58, 2.12)
    assert a["centre"]["iou"][0].item() == 1.0
    g = torch.Generator().manual_seed(1)
    assert random_map((2, 16), g).shape == (2, 16)


def test_shape_errors_are_one_line():
    with pytest.raises(ContextError, match=r"region: shape \(1, 9\); expected the similarity map's \(1, 16\)"):
        grounding_metrics(hand_map(), torch.zeros(1, 9))
    with pytest.raises(ContextError, match="not a square grid"):
        baselines(torch.zeros(1, 12), torch.Generator())


# --- mask-lesion overlap -----------------------------------------------------------------------------

def test_overlap_hand_computed_micro_and_macro():
    # image 0: 2 lesion patches, both masked, 2 of 8 tokens masked (ratio 1/4)
    # image 1: 4 lesion patches, 1 masked, 4 of 8 masked (ratio 1/2)
    # image 2: no lesion (left out of the shares), 4 of 8 masked
    masks = torch.zeros(3, 8, dtype=torch.bool)
    lesion = torch.zeros(3, 8, dtype=torch.bool)
    lesion[0, :2] = True
    masks[0, :2] = True
    lesion[1, :4] = True
    masks[1, 3:7] = True
    masks[2, :4] = True
    summary, per = lesion_overlap(masks, lesion)
    assert per["share"][:2].tolist() == [1.0, 0.25] and math.isnan(per["share"][2].item())
    assert per["ratio"].tolist() == [0.25, 0.5, 0.5] and per["lift"][:2].tolist() == [4.0, 0.5]
    assert summary["share_micro"] == pytest.approx(3 / 6)
    assert summary["random_micro"] == pytest.approx((0.25 * 2 + 0.5 * 4) / 6)  # 2.5 / 6
    assert summary["lift_micro"] == pytest.approx(3 / 2.5)
    assert summary["share_macro"] == pytest.approx((1 + 0.25) / 2)
    assert summary["random_macro"] == pytest.approx((0.25 + 0.5) / 2)
    assert summary["lift_macro"] == pytest.approx(0.625 / 0.375)
    assert summary["images"] == 2 and summary["lesion_patches"] == 6
    assert summary["masked_fraction"] == pytest.approx(10 / 24) and summary["lesion_base_rate"] == pytest.approx(6 / 24)


def test_overlap_padding_and_errors():
    masks = torch.tensor([[True, False, False, False]])
    lesion = torch.tensor([[True, True, False, True]])
    valid = torch.tensor([[True, True, True, False]])  # the last token is padding: not lesion
    c = overlap_counts(masks, lesion, valid)
    assert {k: v.tolist() for k, v in c.items()} == {"tokens": [3], "lesion": [2], "masked": [1], "masked_lesion": [1],
                                                    "visible_lesion": [1]}
    with pytest.raises(ContextError, match=r"lesion: expected a \[B, N\] bool tensor"):
        overlap_counts(masks, lesion.float())
    with pytest.raises(ContextError, match=r"valid: shape \(1, 3\); expected the masks' \(1, 4\)"):
        overlap_counts(masks, lesion, valid[:, :3])


def test_random_like_keeps_each_rows_count_and_its_expected_share_is_the_ratio():
    g = torch.Generator().manual_seed(0)
    B, N = 400, 64
    valid = torch.ones(B, N, dtype=torch.bool)
    valid[:, 60:] = False
    masks = torch.zeros(B, N, dtype=torch.bool)
    masks[:, :45] = True  # 45 of 60 valid: ratio 0.75
    r = random_like(masks, g, valid)
    assert (r.sum(1) == 45).all() and not (r & ~valid).any()
    lesion = torch.zeros(B, N, dtype=torch.bool)
    lesion[:, 10:16] = True
    summary, _ = lesion_overlap(masks, lesion, valid, generator=torch.Generator().manual_seed(1))
    assert summary["random_micro"] == pytest.approx(0.75)
    assert summary["random_micro_measured"] == pytest.approx(0.75, abs=0.03)  # 2,400 lesion patches
    assert summary["share_micro"] == 1.0 and summary["lift_micro"] == pytest.approx(4 / 3)
    again, _ = lesion_overlap(masks, lesion, valid, generator=torch.Generator().manual_seed(1))
    assert again == summary


def test_eval_masks_measure_is_the_general_overlap_on_phantom_features():
    """``maskkit eval masks`` reports 1 - lesion_visible = share_micro and lift = lift_micro."""
    from maskkit.compose import build_strategy
    from maskkit.core import MaskContext
    from maskkit.eval.masks import Features, measure
    from maskkit.masking import mask_generator

    g = torch.Generator().manual_seed(0)
    M, N, D = 12, 16, 8
    lesion = torch.rand(M, N, generator=g) < 0.25
    f = Features(torch.randn(M, N, D, generator=g), torch.randn(M, 3, D, generator=g), torch.ones(M, 3, dtype=torch.bool),
                 torch.randn(14, D, generator=g), None, lesion)
    s = build_strategy({"random": {"ratio": 0.5}})
    got = measure(s, f, seed=4)
    mask = s(MaskContext(image_tokens=f.e_img, report_tokens=f.e_rep, report_valid=f.rep_valid,
                         prompt_tokens=f.prompts, generator=mask_generator(4, "image_mask")))
    summary, _ = lesion_overlap(mask, lesion)
    assert 1 - got["lesion_visible"] == pytest.approx(summary["share_micro"])
    assert got["lift"] == pytest.approx(summary["lift_micro"])


def test_mask_coverage_equals_the_patch_mean_eval_masks_used():
    from maskkit.data.regions import lesion_patches, mask_coverage

    g = torch.Generator().manual_seed(0)
    les = torch.rand(5, 96, 96, generator=g) < 0.3
    old = les.float().reshape(5, 6, 16, 6, 16).mean((2, 4)).reshape(5, -1)
    torch.testing.assert_close(mask_coverage(les, 6), old)
    assert torch.equal(lesion_patches(mask_coverage(les, 6), 0.3), old >= 0.3)
    assert np.isclose(old.mean().item(), 0.3, atol=0.01)
