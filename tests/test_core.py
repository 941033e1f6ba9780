"""The shared helpers and MaskContext: hand-computed cases and properties (hypothesis)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from maskkit.core import (MaskContext, count_for_ratio, masked_softmax, random_subset, rank_desc,
                          rank_normalise, topk_mask)
from maskkit.errors import ContextError, MissingInputError


def test_topk_mask_hand_computed():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [3.0, 1.0, 2.0, 0.0]])
    m = topk_mask(scores, 0.5)
    assert m.tolist() == [[False, True, False, True], [True, False, True, False]]


def test_topk_mask_never_selects_padding_even_with_top_scores():
    scores = torch.tensor([[9.0, 8.0, 1.0, 2.0, 3.0]])
    valid = torch.tensor([[False, False, True, True, True]])
    m = topk_mask(scores, 2 / 3, valid)
    assert m.tolist() == [[False, False, False, True, True]]


def test_ties_go_to_lower_index_reproducibly():
    scores = torch.zeros(2, 6)
    m = topk_mask(scores, 0.5)
    assert m.tolist() == [[True, True, True, False, False, False]] * 2


def test_nan_scores_rank_last_among_valid():
    scores = torch.tensor([[float("nan"), 1.0, 2.0, float("-inf")]])
    assert rank_desc(scores).tolist() == [[2, 1, 0, 3]] or rank_desc(scores).tolist() == [[3, 1, 0, 2]]
    m = topk_mask(scores, 0.5)
    assert m.tolist() == [[False, True, True, False]]


@pytest.mark.parametrize("ratio,n,expected", [(0.75, 196, 147), (0.7, 5, 4), (0.5, 5, 2), (0.25, 2, 0), (0.5, 3, 2), (1.0, 7, 7), (0.0, 7, 0)])
def test_count_rounds_like_python(ratio, n, expected):
    assert expected == round(ratio * n)
    assert count_for_ratio(torch.ones(1, n, dtype=torch.bool), ratio).tolist() == [expected]


def test_masked_softmax_excludes_padding_and_zeroes_empty_rows():
    logits = torch.tensor([[1.0, 100.0, 1.0], [5.0, 5.0, 5.0]])
    valid = torch.tensor([[True, False, True], [False, False, False]])
    w = masked_softmax(logits, valid)
    torch.testing.assert_close(w, torch.tensor([[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]))


def test_rank_normalise():
    s = torch.tensor([[0.2, 0.9, 0.5, 7.0]])
    v = torch.tensor([[True, True, True, False]])
    torch.testing.assert_close(rank_normalise(s, v), torch.tensor([[1 / 3, 1.0, 2 / 3, 0.0]]))


def test_random_subset_uniform_is_subset_with_exact_count():
    g = torch.Generator().manual_seed(0)
    ctx = MaskContext(image_tokens=torch.zeros(2, 8, 1), generator=g)
    cand = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    m = random_subset(cand, torch.tensor([3, 5]), ctx)
    assert not (m & ~cand).any()
    assert m.sum(-1).tolist() == [3, 2]  # row 1 has only 2 candidates


def test_random_subset_weighted_prefers_heavy_positions():
    g = torch.Generator().manual_seed(0)
    ctx = MaskContext(image_tokens=torch.zeros(4000, 4, 1), generator=g)
    cand = torch.ones(4000, 4, dtype=torch.bool)
    w = torch.tensor([1.0, 2.0, 4.0, 8.0]).expand(4000, 4)
    freq = random_subset(cand, torch.ones(4000, dtype=torch.long), ctx, weights=w).float().mean(0)
    # one draw in proportion to the weights: 1/15, 2/15, 4/15, 8/15
    torch.testing.assert_close(freq, torch.tensor([1, 2, 4, 8]) / 15.0, atol=0.03, rtol=0)


@settings(max_examples=60, deadline=None)
@given(B=st.integers(1, 4), N=st.integers(1, 40), ratio=st.floats(0, 1), seed=st.integers(0, 2**31 - 1),
       pad_p=st.floats(0, 0.9))
def test_topk_mask_properties(B, N, ratio, seed, pad_p):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, N, generator=g).round(decimals=1)  # rounding makes ties common
    valid = torch.rand(B, N, generator=g) >= pad_p
    before = scores.clone()
    m = topk_mask(scores, ratio, valid)
    assert torch.equal(scores, before)
    assert m.dtype == torch.bool and m.shape == (B, N)
    assert not (m & ~valid).any()
    assert m.sum(-1).tolist() == [round(ratio * int(n)) for n in valid.sum(-1)]
    # every selected valid score >= every unselected valid score
    for b in range(B):
        sel, rest = scores[b][m[b]], scores[b][valid[b] & ~m[b]]
        if len(sel) and len(rest):
            assert sel.min() >= rest.max()
    assert torch.equal(m, topk_mask(scores, ratio, valid))


def test_context_rejects_bad_shapes_with_the_field_named():
    with pytest.raises(ContextError, match="report_tokens: batch size 3 does not match image_tokens"):
        MaskContext(image_tokens=torch.zeros(2, 4, 8), report_tokens=torch.zeros(3, 5, 8))
    with pytest.raises(ContextError, match="report_valid: expected dtype torch.bool"):
        MaskContext(report_tokens=torch.zeros(2, 5, 8), report_valid=torch.ones(2, 5))
    with pytest.raises(ContextError, match="prompt_tokens: feature width 4 does not match image_tokens"):
        MaskContext(image_tokens=torch.zeros(2, 4, 8), prompt_tokens=torch.zeros(14, 4))
    with pytest.raises(ContextError, match="image_tokens: expected a 3-D tensor"):
        MaskContext(image_tokens=torch.zeros(4, 8))


def test_context_is_immutable_and_replace_copies():
    ctx = MaskContext(image_tokens=torch.zeros(1, 4, 2))
    with pytest.raises(Exception):
        ctx.image_tokens = None
    ctx2 = ctx.replace(entities=torch.zeros(1, 3, dtype=torch.bool))
    assert ctx.entities is None and ctx2.entities is not None


def test_missing_input_error_before_compute():
    from maskkit import build_strategy

    ctx = MaskContext(image_tokens=torch.randn(2, 4, 8), prompt_tokens=torch.randn(14, 8),
                      generator=torch.Generator().manual_seed(0))
    s = build_strategy({"union": {"of": ["report_cross", "prompt_driven", "image_self"]}})
    with pytest.raises(MissingInputError, match="strategy 'report_cross' needs 'report_tokens'.*image-only"):
        s(ctx)
    # the image-only composition of eq. (15) works on the same batch
    m = build_strategy({"union": {"of": ["prompt_driven", "image_self"]}})(ctx)
    assert m.sum(-1).tolist() == [3, 3]


def test_random_strategy_needs_a_generator():
    from maskkit import build_strategy

    with pytest.raises(MissingInputError, match="generator"):
        build_strategy("random")(MaskContext(image_tokens=torch.randn(1, 4, 2)))


# --- MaskContext.attention is checked against the batch -----------------

def _img(B=2, N=4):
    return torch.randn(B, N, 8)


@pytest.mark.parametrize("entry, message", [
    ({"image_self": torch.rand(3, 5)},
     "MaskContext.attention['image_self']: expected shape [2, 4, 4] or [2, H, 4, 4] ([B, N, N] or [B, H, N, N]), got (3, 5)"),
    ({"image_self": torch.rand(3, 4, 4)},
     "MaskContext.attention['image_self']: expected shape [2, 4, 4] or [2, H, 4, 4] ([B, N, N] or [B, H, N, N]), got (3, 4, 4)"),
    ({"image_self": torch.rand(2, 4, 5)},
     "MaskContext.attention['image_self']: expected shape [2, 4, 4] or [2, H, 4, 4] ([B, N, N] or [B, H, N, N]), got (2, 4, 5)"),
    ({"report_cross": torch.rand(2, 4, 5)},
     "MaskContext.attention['report_cross']: expected shape [2, 4, 6] or [2, H, 4, 6] ([B, N, T] or [B, H, N, T]), got (2, 4, 5)"),
    ({"my_map": torch.rand(3, 7, 7)},
     "MaskContext.attention['my_map']: expected shape [2, Q, K] or [2, H, Q, K] ([B, Q, K] or [B, H, Q, K]), got (3, 7, 7)"),
    ({"image_self": torch.ones(2, 4, 4, dtype=torch.long)},
     "MaskContext.attention['image_self']: expected floating-point attention weights, got torch.int64"),
    ({"image_self": [[0.5]]}, "MaskContext.attention['image_self']: expected a tensor, got list"),
    ({0: torch.rand(2, 4, 4)}, "MaskContext.attention: keys are names (str), got int 0"),
])
def test_attention_entries_are_checked_against_the_batch(entry, message):
    with pytest.raises(ContextError) as exc:
        MaskContext(image_tokens=_img(), report_valid=torch.ones(2, 6, dtype=torch.bool), attention=entry)
    assert str(exc.value) == message


def test_attention_entries_of_the_right_shape_are_accepted_and_read_only():
    maps = {"image_self": torch.rand(2, 3, 4, 4), "report_cross": torch.rand(2, 4, 6), "report_self": torch.rand(2, 6, 6),
            "anything": torch.rand(2, 9, 2)}
    ctx = MaskContext(image_tokens=_img(), report_valid=torch.ones(2, 6, dtype=torch.bool), attention=maps)
    assert set(ctx.attention) == set(maps) and ctx.attention["image_self"] is maps["image_self"]
    with pytest.raises(TypeError):
        ctx.attention["image_self"] = torch.rand(2, 4, 4)  # type: ignore[index]
    assert ctx.replace(generator=torch.Generator()).attention["anything"] is maps["anything"]
    with pytest.raises(ContextError, match="is not a mapping|expected a mapping"):
        MaskContext(image_tokens=_img(), attention=[torch.rand(2, 4, 4)])  # type: ignore[arg-type]
