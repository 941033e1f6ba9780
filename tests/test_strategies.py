"""Each built-in strategy's semantics, pinned on small hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit import build_strategy
from maskkit.core import MaskContext
from maskkit.strategies._attention import REDUCTIONS
from maskkit.strategies.causal import causal_mask
from maskkit.testing import check_mask, make_context


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# A 2 x 4 x 3 case. Report keys e1, e2. An image token whose similarity to one key dominates
# gets a peaked softmax, so |A_n|_2 = sqrt(w1^2 + w2^2) is large; equal similarity gives 1/sqrt(2).
IMG = torch.tensor([
    [[5.0, 0, 0], [0, 0, 0], [0, 5.0, 0], [1.0, 1.0, 0]],
    [[0, 0, 0], [0, 0, 3.0], [0, 4.0, 0], [6.0, 0, 0]],
])
REP = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]] * 2)


def l2_by_hand(q, keys):
    logits = torch.tensor([float(q @ k) / math.sqrt(3) for k in keys])
    w = logits.softmax(0)
    return float(torch.linalg.vector_norm((w[:, None] * keys).sum(0)))


def test_report_cross_l2_hand_computed():
    ctx = MaskContext(image_tokens=IMG, report_tokens=REP)
    s = build_strategy({"report_cross": {"ratio": 0.5, "reduction": "l2"}})
    scores = s.scores(ctx)
    expected = torch.tensor([[l2_by_hand(q, REP[b]) for q in IMG[b]] for b in range(2)])
    torch.testing.assert_close(scores, expected)
    assert s(ctx).tolist() == [[True, False, True, False], [False, False, True, True]]


def test_report_cross_excludes_padding():
    pad = torch.cat([REP, torch.tensor([[[0, 0, 100.0]]] * 2)], 1)  # a huge padding token
    valid = torch.tensor([[True, True, False]] * 2)
    s = build_strategy({"report_cross": {"ratio": 0.5, "reduction": "l2"}})
    a = s.scores(MaskContext(image_tokens=IMG, report_tokens=pad, report_valid=valid))
    b = s.scores(MaskContext(image_tokens=IMG, report_tokens=REP))
    torch.testing.assert_close(a, b)


def test_received_reduction_counts_attention_each_token_gets():
    # one text key pointing at token 2: token 2 receives nearly all of its attention
    img = torch.tensor([[[1.0, 0], [0, 1.0], [8.0, 0], [0, 0]]])
    rep = torch.tensor([[[1.0, 0]]])
    s = build_strategy({"report_cross": {"ratio": 0.25, "reduction": "received"}})
    sc = s.scores(MaskContext(image_tokens=img, report_tokens=rep))
    logits = torch.tensor([1.0, 0, 8.0, 0]) / math.sqrt(2)
    torch.testing.assert_close(sc[0], logits.softmax(0))
    assert s(MaskContext(image_tokens=img, report_tokens=rep)).tolist() == [[False, False, True, False]]


def test_default_reduction_is_max_sim():
    # settled by the mask-lesion measurement in docs/results.md#mask-lesion-overlap (assumption A1)
    for name in ("image_self", "report_cross", "prompt_driven"):
        assert build_strategy(name).config.reduction == "max_sim"


def test_max_sim_and_entry_count():
    ctx = MaskContext(image_tokens=IMG, report_tokens=REP)
    ms = build_strategy({"report_cross": {"ratio": 0.25, "reduction": "max_sim"}}).scores(ctx)
    torch.testing.assert_close(ms, torch.tensor([[5, 0, 5, 1], [0, 0, 4, 6]]) / math.sqrt(3))
    # entry_count at ratio 1/6: the top 2 of the 12 entries of A are A[3, 0] ~ 0.97 and
    # A[2, 1] ~ 0.91 (row 1); tokens 2 and 3 hold one each, the L2 norm breaks the tie -> token 3
    ec = build_strategy({"report_cross": {"ratio": 1 / 6, "reduction": "entry_count"}})(ctx)
    assert ec[1].tolist() == [False, False, False, True]


def test_image_self_eq6():
    x = torch.randn(2, 5, 4, generator=gen())
    s = build_strategy({"image_self": {"ratio": 0.4, "reduction": "l2"}})
    A = (x @ x.transpose(1, 2) / 2.0).softmax(-1) @ x
    torch.testing.assert_close(s.scores(MaskContext(image_tokens=x)), A.norm(dim=-1))


def test_prompt_driven_pooled_and_per_token_agree_when_one_token_each():
    x = torch.randn(2, 6, 4, generator=gen(1))
    p = torch.randn(14, 4, generator=gen(2))
    s = build_strategy({"prompt_driven": {"ratio": 0.5, "reduction": "l2"}})
    a = s.scores(MaskContext(image_tokens=x, prompt_tokens=p))
    per = torch.cat([p[:, None], torch.full((14, 2, 4), 50.0)], 1)  # two padding tokens each
    valid = torch.tensor([[True, False, False]] * 14)
    b = s.scores(MaskContext(image_tokens=x, prompt_tokens=per, prompt_valid=valid))
    torch.testing.assert_close(a, b)
    A = (x @ p.T / 2.0).softmax(-1) @ p
    torch.testing.assert_close(a, A.norm(dim=-1))


def test_random_is_uniform_over_positions():
    ctx = MaskContext(image_tokens=torch.zeros(3000, 8, 1), generator=gen())
    freq = build_strategy({"random": {"ratio": 0.25}})(ctx).float().mean(0)
    torch.testing.assert_close(freq, torch.full((8,), 0.25), atol=0.03, rtol=0)


def test_random_text_respects_padding():
    valid = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    m = build_strategy({"random": {"modality": "text", "ratio": 0.6}})(MaskContext(report_valid=valid, generator=gen()))
    assert m.sum(-1).tolist() == [3, 5] and not (m & ~valid).any()


def test_entity_picks_round_lambda3_of_entities():
    ents = torch.tensor([[1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0], [0] * 12], dtype=torch.bool)
    m = build_strategy("entity")(MaskContext(entities=ents, generator=gen()))
    assert m.sum(-1).tolist() == [round(0.2 * 8), 0]
    assert not (m & ~ents).any()


def test_causal_is_strict_upper_triangle():
    m = build_strategy("causal")(MaskContext(report_valid=torch.ones(2, 4, dtype=torch.bool)))
    assert m.shape == (2, 4, 4)
    assert m[0].tolist() == [[False, True, True, True], [False, False, True, True],
                             [False, False, False, True], [False, False, False, False]]


def test_entmlm_intersect_eq10():
    ents = torch.tensor([[0, 1, 1, 0, 1]], dtype=torch.bool)
    ctx = MaskContext(entities=ents, generator=gen())
    s = build_strategy({"intersect": {"of": [{"entity": {"ratio": 1.0}}, "causal"]}})
    m = s(ctx)
    expected = causal_mask(5) & ents[:, None, :]
    assert torch.equal(m, expected)
    # query 0 cannot see the later entities 1, 2, 4 but sees the later non-entity token 3
    assert m[0, 0].tolist() == [False, True, True, False, True]


def test_mlm_full_is_plain_causal_captioning():
    valid = torch.ones(2, 6, dtype=torch.bool)
    s = build_strategy({"intersect": {"of": [{"random": {"modality": "text", "ratio": 1.0}}, "causal"]}})
    assert torch.equal(s(MaskContext(report_valid=valid, generator=gen())), causal_mask(6).expand(2, 6, 6))


def test_text_union_is_or():
    ents = torch.tensor([[0, 1, 0, 1]], dtype=torch.bool)
    s = build_strategy({"union": {"of": [{"entity": {"ratio": 1.0}}, "causal"]}})
    assert torch.equal(s(MaskContext(entities=ents, generator=gen())), causal_mask(4) | ents[:, None, :])


def test_union_ratio_rejected_for_attention_masks():
    from maskkit.errors import CompositionError

    with pytest.raises(CompositionError, match="applies to token masks"):
        build_strategy({"union": {"of": ["entity", "causal"], "ratio": 0.5}})


# --- union (eq. 7-8) -----------------------------------------------------------------------

def _ctx(seed=0, B=4, N=20):
    return make_context(B=B, N=N, seed=seed)


def test_union_plain_is_or_of_children():
    ctx = _ctx()
    u = build_strategy({"union": {"of": ["report_cross", "prompt_driven", "image_self"], "ratio": None, "child_ratio": 0.3}})
    kids = [build_strategy({n: {"ratio": 0.3}})(ctx) for n in ("report_cross", "prompt_driven", "image_self")]
    assert torch.equal(u(ctx), kids[0] | kids[1] | kids[2])


def test_union_subset_is_inside_union_with_exact_count():
    ctx = _ctx()
    u = build_strategy({"union": {"of": ["report_cross", "prompt_driven", "image_self"], "child_ratio": 0.7, "ratio": 0.5}})
    out = u.explain(ctx)
    assert (out["union"].sum(-1) >= 10).all()
    assert not (out["mask"] & ~out["union"]).any()
    assert out["mask"].sum(-1).tolist() == [10] * 4


def test_union_smaller_than_ratio_fills_by_score():
    ctx = _ctx()
    # two copies of image_self: the union is just image_self's top 30%; 75% is asked
    u = build_strategy({"union": {"of": ["image_self", "image_self"], "child_ratio": 0.3, "ratio": 0.75, "fill": "score"}})
    top75 = build_strategy({"image_self": {"ratio": 0.75}})(ctx)
    assert torch.equal(u(ctx), top75)
    r = build_strategy({"union": {"of": ["image_self", "image_self"], "child_ratio": 0.3, "ratio": 0.75, "fill": "random"}})
    m = r(ctx)
    top30 = build_strategy({"image_self": {"ratio": 0.3}})(ctx)
    assert m.sum(-1).tolist() == [15] * 4 and not (top30 & ~m).any()


def test_union_score_weighted_prefers_high_blended_scores():
    ctx = _ctx(B=1, N=20)
    spec = {"of": ["report_cross", "prompt_driven", "image_self"], "child_ratio": 0.7, "ratio": 0.4}
    uni = build_strategy({"union": {**spec, "subset": "uniform"}})
    sw = build_strategy({"union": {**spec, "subset": "score_weighted"}})
    blended = uni.explain(ctx)["blended"][0]
    def mean_blended(s):
        tot = 0.0
        for k in range(200):
            tot += float(blended[s(ctx.replace(generator=gen(k)))[0]].mean())
        return tot / 200
    assert mean_blended(sw) > mean_blended(uni) + 0.02


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(2, 30), T=st.integers(1, 12), seed=st.integers(0, 10_000),
       child=st.floats(0, 1), ratio=st.floats(0, 1), subset=st.sampled_from(["uniform", "score_weighted"]),
       fill=st.sampled_from(["score", "random"]))
def test_union_properties(B, N, T, seed, child, ratio, subset, fill):
    ctx = make_context(B=B, N=N, T=T, seed=seed)
    s = build_strategy({"union": {"of": ["report_cross", "prompt_driven", "image_self"], "child_ratio": child,
                                  "ratio": ratio, "subset": subset, "fill": fill}})
    check_mask(s, ctx, s(ctx))


@settings(max_examples=40, deadline=None)
@given(B=st.integers(1, 3), N=st.integers(1, 30), T=st.integers(1, 12), seed=st.integers(0, 10_000),
       ratio=st.floats(0, 1), name=st.sampled_from(["random", "image_self", "report_cross", "prompt_driven", "entity"]),
       reduction=st.sampled_from(REDUCTIONS), pad=st.booleans())
def test_leaf_properties(B, N, T, seed, ratio, name, reduction, pad):
    ctx = make_context(B=B, N=N, T=T, seed=seed, pad=pad)
    cfg = {"ratio": ratio}
    if name in ("image_self", "report_cross", "prompt_driven"):
        cfg["reduction"] = reduction
    s = build_strategy({name: cfg})
    m = s(ctx)
    check_mask(s, ctx, m)
    # a mask is a function of the context: the same generator state gives the same mask, and a
    # strategy that declares itself not stochastic ignores the generator altogether
    assert torch.equal(s(ctx.replace(generator=gen(seed + 1))), s(ctx.replace(generator=gen(seed + 1))))
    if not s.stochastic:
        assert torch.equal(m, s(ctx.replace(generator=gen(seed + 1))))


def test_child_ratio_reaches_token_children_only():
    u = build_strategy({"union": {"of": ["image_self", {"prompt_driven": {"ratio": 0.2}}], "child_ratio": 0.6}})
    assert [c.config.ratio for c in u.children] == [0.6, 0.2]  # an explicit child ratio wins
    t = build_strategy({"union": {"of": ["entity", "causal"]}})
    assert t.children[0].config.ratio == 0.2  # λ3 untouched by the image default λ1


# --- a composite gets each child's mask from the child -----------------

def _bottom_self():
    from maskkit.core import topk_mask
    from maskkit.strategies.image_self import ImageSelf

    class BottomSelf(ImageSelf):
        """image_self's scores, but mask() masks the LOWEST-scoring tokens."""

        name = "bottom_self"

        def mask(self, ctx):
            return topk_mask(-self.scores(ctx), self.config.ratio, self.valid(ctx))

    return BottomSelf


def test_union_uses_a_scored_childs_own_mask():
    ctx = make_context(B=2, N=10, seed=4)
    child = _bottom_self()({"ratio": 0.3})
    own = child(ctx)
    top = build_strategy({"image_self": {"ratio": 0.3}})(ctx)
    assert own.sum(-1).tolist() == [3, 3] and not (own & top).any()   # the override really differs
    u = build_strategy({"union": {"of": [child], "child_ratio": None, "ratio": None}})
    assert torch.equal(u(ctx), own)
    ex = u.explain(ctx)
    assert torch.equal(ex["children"][0], own)
    assert torch.equal(ex["child_scores"][0], child.scores(ctx))  # its scores still blend


def test_union_uses_a_plain_childs_own_mask():
    from maskkit.core import MaskStrategy

    class FirstTwo(MaskStrategy):
        name = "first_two"
        requires = frozenset({"image_tokens"})
        stochastic = False

        def mask(self, ctx):
            B, N = ctx.image_tokens.shape[:2]
            return (torch.arange(N) < 2).expand(B, N).clone()

    ctx = make_context(B=2, N=6)
    u = build_strategy({"union": {"of": [FirstTwo()], "child_ratio": None, "ratio": None}})
    assert u(ctx).tolist() == [[True, True, False, False, False, False]] * 2


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("pad", [True, False])
def test_union_of_builtin_scored_children_unchanged(reduction, pad):
    """Built-in scored children give exactly what union gave before: top-k of their scores."""
    from maskkit.core import topk_mask

    kids = [{n: {"reduction": reduction}} for n in ("report_cross", "prompt_driven", "image_self")]
    u = build_strategy({"union": {"of": kids, "child_ratio": 0.7, "ratio": 0.75}})
    ctx = make_context(B=3, N=20, seed=2, pad=pad, prompt_tokens_per=0 if pad else 4)
    ex = u.explain(ctx)
    valid = ctx.image_valid_mask()
    for c, m in zip(u.children, ex["children"]):
        assert torch.equal(m, topk_mask(c.scores(ctx), 0.7, valid))
    assert torch.equal(ex["union"], torch.stack(ex["children"]).any(0))
