"""The atypical strategy, union's ranked subset / blend / weights, the guided preset,
the No Finding zero-shot protocol option and the batched mask-lesion measurement."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from maskkit import MaskContext, build_strategy
from maskkit.core import rank_normalise, topk_count_mask, count_for_ratio
from maskkit.testing import check_strategy

KIDS = ["report_cross", "prompt_driven", "image_self"]


def _ctx(B=4, N=16, D=8, seed=0, **kw):
    g = torch.Generator().manual_seed(seed + 1)
    return MaskContext(image_tokens=torch.randn(B, N, D, generator=g), report_tokens=torch.randn(B, 6, D, generator=g),
                       prompt_tokens=torch.randn(5, D, generator=g), generator=torch.Generator().manual_seed(seed), **kw)


# --- atypical ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["atypical", {"atypical": {"ratio": 0.3}}, {"atypical": {"ratio": 1.0}}])
def test_atypical_conformance(spec):
    check_strategy(spec)


def test_atypical_ranks_the_deviant_token_first():
    e = torch.zeros(6, 9, 4)
    e += torch.randn(6, 9, 4, generator=torch.Generator().manual_seed(0)) * 0.01
    e[2, 5] += 3.0  # one token unlike the same position in the other images
    s = build_strategy({"atypical": {"ratio": 1 / 9}})
    ctx = MaskContext(image_tokens=e)
    scores = s.scores(ctx)
    assert scores.shape == (6, 9)
    assert int(scores[2].argmax()) == 5
    assert s(ctx)[2].nonzero().flatten().tolist() == [5]


def test_atypical_leave_one_out_mean_and_single_image_fallback():
    e = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(3))
    s = build_strategy("atypical").scores(MaskContext(image_tokens=e))
    want = (e[0] - (e[1] + e[2]) / 2).norm(dim=-1)
    assert torch.allclose(s[0], want)
    one = build_strategy("atypical").scores(MaskContext(image_tokens=e[:1]))
    assert torch.allclose(one[0], (e[0] - e[0].mean(0)).norm(dim=-1))


def test_atypical_ignores_padding_rows():
    e = torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(4))
    valid = torch.ones(3, 4, dtype=torch.bool)
    valid[2, 1] = False
    s = build_strategy("atypical").scores(MaskContext(image_tokens=e, image_valid=valid))
    assert torch.allclose(s[0, 1], (e[0, 1] - e[1, 1]).norm())  # row 2 is padding at position 1
    assert s[2, 1] == 0


# --- union: ranked subset, temperature, blend, weights --------------------------------------------

@pytest.mark.parametrize("extra", [{"subset": "ranked"}, {"subset": "ranked", "temperature": 0.1},
                                   {"subset": "ranked", "blend": "max"}, {"blend": "max"},
                                   {"subset": "ranked", "temperature": 0.05, "weights": [1, 1, 1, 3]},
                                   {"subset": "ranked", "temperature": 0.1, "fill": "random"}])
def test_union_options_conformance(extra):
    check_strategy({"union": {"of": KIDS + ["atypical"], **extra}})


def test_ranked_temperature_zero_is_topk_of_the_blended_score_inside_the_union():
    u = build_strategy({"union": {"of": KIDS, "subset": "ranked", "child_ratio": 0.5}})
    assert not u.stochastic
    ctx = _ctx()
    ex = u.explain(ctx)
    valid = torch.ones(4, 16, dtype=torch.bool)
    k = count_for_ratio(valid, 0.75)
    inside = topk_count_mask(ex["blended"], k, ex["union"])
    extra = topk_count_mask(ex["blended"], k - inside.sum(-1), valid & ~ex["union"])
    assert torch.equal(ex["mask"], inside | extra)
    assert torch.equal(u(ctx), u(ctx.replace(generator=torch.Generator().manual_seed(9))))


def test_ranked_high_temperature_approaches_the_uniform_subset():
    """τ → ∞ is eq. 8's uniform subset: every union token about equally often masked."""
    u = build_strategy({"union": {"of": KIDS, "subset": "ranked", "temperature": 1e4, "child_ratio": 0.9}})
    ctx = _ctx(B=1, N=20)
    union = u.explain(ctx)["union"][0]
    freq = torch.stack([u(ctx.replace(generator=torch.Generator().manual_seed(s)))[0] for s in range(600)]).float().mean(0)
    inside = freq[union]
    assert (inside - inside.mean()).abs().max() < 0.08
    cold = build_strategy({"union": {"of": KIDS, "subset": "ranked", "temperature": 0.0, "child_ratio": 0.9}})
    f0 = torch.stack([cold(ctx.replace(generator=torch.Generator().manual_seed(s)))[0] for s in range(5)]).float().mean(0)
    assert set(f0.unique().tolist()) <= {0.0, 1.0}


def test_blend_mean_max_and_weights():
    ctx = _ctx()
    valid = torch.ones(4, 16, dtype=torch.bool)
    base = build_strategy({"union": {"of": KIDS + ["atypical"]}}).explain(ctx)
    parts = torch.stack([rank_normalise(s, valid) for s in base["child_scores"]])
    assert torch.allclose(base["blended"], parts.mean(0))
    mx = build_strategy({"union": {"of": KIDS + ["atypical"], "blend": "max"}}).explain(ctx)
    assert torch.allclose(mx["blended"], parts.amax(0))
    w = build_strategy({"union": {"of": KIDS + ["atypical"], "weights": [1, 1, 1, 3]}}).explain(ctx)
    assert torch.allclose(w["blended"], 0.5 * parts[:3].mean(0) + 0.5 * parts[3])


@pytest.mark.parametrize("weights, msg", [([1, 1], "2 weights for 3 children"), ([1, -1, 1], "non-negative"), ([0, 0, 0], "non-negative")])
def test_union_weights_are_validated(weights, msg):
    with pytest.raises(Exception, match=msg):
        build_strategy({"union": {"of": KIDS, "weights": weights}})


def test_ranked_deterministic_refuses_a_random_fill():
    with pytest.raises(Exception, match="fill: random"):
        build_strategy({"union": {"of": KIDS, "subset": "ranked", "fill": "random"}})


def test_union_temperature_must_be_finite_and_non_negative():
    for t in (-1.0, float("inf")):
        with pytest.raises(Exception):
            build_strategy({"union": {"of": KIDS, "subset": "ranked", "temperature": t}})


def test_paper_union_unchanged_by_the_new_options():
    """The defaults (uniform subset, mean blend) give the masks they gave before the options."""
    u = build_strategy({"union": {"of": KIDS}})
    assert u.config.subset == "uniform" and u.config.blend == "mean" and u.config.weights is None
    assert u.stochastic


# --- presets ----------------------------------------------------------------------------------------

def test_guided_preset_and_xlip_stays_paper_faithful():
    from maskkit.config import resolve

    cfg, _ = resolve(["preset=xlip-guided"])
    u = cfg.image_mask["union"]
    assert u["of"][-1] == "atypical" and u["subset"] == "ranked" and u["weights"] == [1.0, 1.0, 1.0, 3.0]
    assert "report_cross" not in cfg.image_only_mask["union"]["of"]
    check_strategy(cfg.image_mask)
    check_strategy(cfg.image_only_mask)
    t3, _ = resolve(["preset=t3_guided"])
    assert t3.image_mask == cfg.image_mask and t3.text_mask is None
    xlip, _ = resolve(["preset=xlip"])
    assert xlip.image_mask == {"union": {"of": KIDS, "child_ratio": 0.7, "ratio": 0.75}}


# --- zero-shot: No Finding protocol ----------------------------------------------------------------

class _FakeModel:
    """Text embeddings from a fixed table: enough for :func:`probabilities`."""

    def __init__(self, table):
        self.table = table
        self.names = list(table)

    def tokenizer(self, prompts):
        return types.SimpleNamespace(ids=torch.tensor([self.names.index(p) for p in prompts]))

    def encode_text(self, ids):
        return torch.stack([self.table[self.names[i]] for i in ids.tolist()]), None


def _fake():
    from maskkit.eval.zeroshot import prompt_pair

    labels = ["Cardiomegaly", "Pneumothorax", "No Finding"]
    g = torch.Generator().manual_seed(0)
    table = {}
    for lab in labels:
        pos, neg = prompt_pair(lab)
        for p in pos + neg:
            table[p] = torch.randn(6, generator=g)
    return _FakeModel(table), labels


def test_no_finding_absence_is_the_product_of_the_other_labels_absences():
    from maskkit.eval.zeroshot import probabilities

    model, labels = _fake()
    img = torch.nn.functional.normalize(torch.randn(10, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    pair = probabilities(model, img, labels, no_finding="pair")
    absent = probabilities(model, img, labels)  # the default
    assert np.allclose(absent[:, :2], pair[:, :2])
    assert np.allclose(absent[:, 2], (1 - pair[:, 0]) * (1 - pair[:, 1]), atol=1e-6)
    ign = probabilities(model, img, labels, absence_ignore=("Pneumothorax",))
    assert np.allclose(ign[:, 2], 1 - pair[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="no_finding"):
        probabilities(model, img, labels, no_finding="nope")
    with pytest.raises(ValueError, match="absence_ignore='Support Device': not one of the evaluated findings"):
        probabilities(model, img, labels, absence_ignore=("Support Device",))


def test_no_finding_alone_falls_back_to_its_pair():
    from maskkit.eval.zeroshot import probabilities

    model, labels = _fake()
    img = torch.nn.functional.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(2)), dim=-1)
    assert np.allclose(probabilities(model, img, ["No Finding"]), probabilities(model, img, ["No Finding"], no_finding="pair"))


# --- mask-lesion measurement in batches ----------------------------------------------------------------

def test_measure_in_batches_sums_counts():
    from maskkit.eval.masks import Features, guided_grid, measure

    g = torch.Generator().manual_seed(5)
    M, N, D = 10, 12, 4
    f = Features(torch.randn(M, N, D, generator=g), torch.randn(M, 5, D, generator=g), torch.ones(M, 5, dtype=torch.bool),
                 torch.randn(3, D, generator=g), None, torch.rand(M, N, generator=g) < 0.2)
    s = build_strategy({"image_self": {"ratio": 0.5}})
    whole, parts = measure(s, f), measure(s, f, batch_size=3)
    for k in whole:
        assert whole[k] == pytest.approx(parts[k])
    assert parts["masked_fraction"] == pytest.approx(0.5)
    for label, spec in guided_grid(0.75):
        r = measure(build_strategy(spec), f, batch_size=4)
        assert 0 <= r["lesion_visible"] <= 1, label


def test_no_finding_under_absence_is_decided_present_when_no_finding_is_decided_present():
    """F1/ACC of No Finding (absence) use "no other finding decided present", not the product at
    0.5: with two undecided findings (p = 0.4 and 0.3) the product is 0.42, yet no finding is
    decided present, so No Finding is."""
    from maskkit.eval.zeroshot import predictions, score

    labels = ["Pneumothorax", "Cardiomegaly", "No Finding"]
    prob = np.array([[0.4, 0.3, 0.6 * 0.7], [0.9, 0.2, 0.1 * 0.8], [0.2, 0.6, 0.8 * 0.4], [0.45, 0.45, 0.55 ** 2]])
    y = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    pred = predictions(prob, labels)
    assert pred[:, 2].tolist() == [True, False, False, True]
    assert pred[:, :2].tolist() == (prob[:, :2] >= 0.5).tolist()  # the findings keep their own 0.5 rule
    r = score(y, prob, labels, n_boot=50, pred=pred)
    assert r.per_label["No Finding"]["f1"] == pytest.approx(1.0) and r.per_label["No Finding"]["acc"] == pytest.approx(1.0)
    assert r.per_label["No Finding"]["ci"]["f1"] == (1.0, 1.0)
    # the product at 0.5 (the old rule) calls every one of these studies abnormal: F1 0
    assert score(y, prob, labels, n_boot=0).per_label["No Finding"]["f1"] == 0.0
    # ignored labels do not block No Finding; the pair mode thresholds its own column
    assert predictions(prob, labels, absence_ignore=("Cardiomegaly",))[:, 2].tolist() == [True, False, True, True]
    assert predictions(prob, labels, no_finding="pair")[:, 2].tolist() == (prob[:, 2] >= 0.5).tolist()
    from maskkit.eval.zeroshot import NO_FINDING_MODES, NO_FINDING_NOTES

    assert set(NO_FINDING_NOTES) == set(NO_FINDING_MODES)  # every mode says in the table how it scored No Finding
