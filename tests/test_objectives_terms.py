"""Loss terms come from the one table maskkit.terms.TERMS: adding a row (docs/model.md, "Adding a
loss term") adds a module, a config weight with its default, a log key and a docs row."""

from __future__ import annotations

import pytest
import torch

from maskkit.config import ObjectivesConfig, objectives_model
from maskkit.objectives import AlignLoss, MIMLoss, MLMLoss, Objective, Objectives
from maskkit.terms import TERMS, Term


class FeatureL2(Objective):
    """docs/model.md's example, verbatim."""

    def summary(self, out):
        return torch.zeros((), device=out.image_features.device)

    def forward(self, out, micro=None):
        value = out.image_features.float().pow(2).sum(-1).mean()
        rows = out.image_features.shape[0] * self.gather.info.world
        self.targets = torch.tensor(float(rows), device=value.device)
        return value if micro is None else value / micro.n


FEAT_L2 = Term("feat_l2", "mean squared L2 norm of the pooled image features", warmup=False,
               objective="test_objectives_terms:FeatureL2", default_weight=0.0)


def test_for_model_builds_one_objective_per_row_of_terms():
    from model_helpers import tiny_model

    m = tiny_model("xlip")
    objs = Objectives.for_model(m, ObjectivesConfig())
    assert objs.names == tuple(t.name for t in TERMS) == ("align", "mim", "mlm")
    assert [type(o) for o in objs.terms] == [AlignLoss, MIMLoss, MLMLoss]
    assert [o.term for o in objs.terms] == list(TERMS)
    assert objs.terms[0].max_logit_scale == m.config.max_logit_scale


def test_default_weights_come_from_the_table():
    assert [t.default_weight for t in TERMS] == [1.0, 1.0, 1.0]
    assert ObjectivesConfig().model_dump() == {t.name: t.default_weight for t in TERMS}
    cfg = objectives_model(TERMS + (FEAT_L2,))
    assert cfg().feat_l2 == 0.0 and cfg(feat_l2=0.25).feat_l2 == 0.25
    with pytest.raises(Exception, match="feat_l2"):
        cfg(feat_l2=-1.0)


def test_a_new_term_per_the_docs_example():
    """The row and class of docs/model.md: built, off by default (the total is XLIP's), weighted
    when set, logged under its log key."""
    from model_helpers import phantom_batch, tiny_model

    m = tiny_model("xlip")
    terms = TERMS + (FEAT_L2,)
    b = phantom_batch(4)
    with torch.no_grad():
        out = m(b, seed=0)
        base_total, base = Objectives.for_model(m, ObjectivesConfig())(out)
        off = Objectives.for_model(m, objectives_model(terms)(), terms=terms)
        assert off.names == ("align", "mim", "mlm", "feat_l2") and off.terms[-1].weight == 0.0
        total, values = off(out)
        want = float(out.image_features.float().pow(2).sum(-1).mean())
        assert float(values["feat_l2"]) == pytest.approx(want) and want > 0
        assert float(total) == pytest.approx(float(base_total))  # presets unaffected
        assert int(off.targets["feat_l2"]) == 4
        on = Objectives.for_model(m, objectives_model(terms)(feat_l2=0.5), terms=terms)
        total_on, _ = on(out)
        assert float(total_on) == pytest.approx(float(base_total) + 0.5 * want, rel=1e-5)
    assert {t.log_key for t in terms} >= {"feat_l2_loss"}


def test_a_term_whose_objective_does_not_load_is_one_line():
    bad = Term("nope", "x", warmup=False, objective="maskkit.objectives:NoSuchLoss")
    with pytest.raises(ImportError, match=r"term 'nope': objective 'maskkit.objectives:NoSuchLoss'"):
        bad.objective_class()


def test_the_docs_terms_table_lists_every_term():
    from maskkit.docgen import terms_table

    table = terms_table()
    for t in TERMS:
        assert f"| `{t.name}` | `{t.log_key}` |" in table
