"""Loss terms: XLIP's in the one table maskkit.terms.TERMS, a plugin's through the register_terms
hook (docs/model.md, "Adding a loss term", followed here): each term adds a module, a config
weight with its default, a log key and (built-ins) a docs row; presets are unaffected."""

from __future__ import annotations

import pytest
import torch

from maskkit.config import ObjectivesConfig, objectives_model
from maskkit.objectives import AlignLoss, MIMLoss, MLMLoss, Objective, Objectives
from maskkit.errors import PluginError
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
        assert off.names == ("align", "mim", "mlm")  # weight 0: off, not built
        total, values = off(out)
        assert float(total) == pytest.approx(float(base_total))  # presets unaffected
        small = Objectives.for_model(m, objectives_model(terms)(feat_l2=1e-9), terms=terms)
        _, values = small(out)
        want = float(out.image_features.float().pow(2).sum(-1).mean())
        assert float(values["feat_l2"]) == pytest.approx(want) and want > 0
        assert int(small.targets["feat_l2"]) == 4
        on = Objectives.for_model(m, objectives_model(terms)(feat_l2=0.5), terms=terms)
        total_on, _ = on(out)
        assert float(total_on) == pytest.approx(float(base_total) + 0.5 * want, rel=1e-5)
    assert {t.log_key for t in terms} >= {"feat_l2_loss"}


def test_a_term_whose_objective_does_not_load_is_one_line():
    bad = Term("nope", "x", warmup=False, objective="maskkit.objectives:NoSuchLoss")
    with pytest.raises(PluginError, match=r"term 'nope': objective 'maskkit.objectives:NoSuchLoss'"):
        bad.objective_class()


def test_the_docs_terms_table_lists_every_term():
    from maskkit.docgen import terms_table

    table = terms_table()
    for t in TERMS:
        assert f"| `{t.name}` | `{t.log_key}` |" in table


# docs/model.md's plugin, verbatim in substance: the hook module light, the loss in its own module
PLUGIN_INIT = '''
from maskkit import hookimpl
from maskkit.terms import Term


@hookimpl
def register_terms(register):
    register(Term("feat_l2", "mean squared L2 norm of the pooled image features", warmup=False,
                  objective="maskkit_featl2.loss:FeatureL2", default_weight=0.0))
'''
PLUGIN_LOSS = '''
import torch

from maskkit.objectives import Objective


class FeatureL2(Objective):
    def summary(self, out):
        return torch.zeros((), device=out.image_features.device)

    def forward(self, out, micro=None):
        value = out.image_features.float().pow(2).sum(-1).mean()
        rows = out.image_features.shape[0] * self.gather.info.world
        self.targets = torch.tensor(float(rows), device=value.device)
        return value if micro is None else value / micro.n
'''


@pytest.fixture
def featl2(tmp_path, monkeypatch):
    """The docs' plugin installed as a distribution (entry point group maskkit), alone."""
    from maskkit.plugins import reset
    from test_plugins import install_fake_dist

    monkeypatch.setenv("MASKKIT_LOAD_PLUGINS", "")
    install_fake_dist(tmp_path, monkeypatch, "maskkit-featl2", "maskkit_featl2", PLUGIN_INIT,
                      package={"loss.py": PLUGIN_LOSS})
    yield
    reset()


def test_a_plugin_adds_a_term_without_editing_maskkit(featl2, tmp_path):
    """The docs' plugin: registered after XLIP's terms, its weight a config key (default 0: the
    presets train as before), validated, built into the objectives, logged as feat_l2_loss."""
    import json
    import os

    from rich.console import Console

    from maskkit.config import ConfigError, resolve
    from maskkit.terms import all_terms
    from maskkit.train import PretrainRecipe

    assert [t.name for t in all_terms()] == ["align", "mim", "mlm", "feat_l2"]
    cfg, _ = resolve([])
    assert getattr(cfg.objectives, "feat_l2", None) is None  # not set: the term's default_weight, 0
    assert resolve(["objectives.feat_l2=0.5"])[0].objectives.feat_l2 == 0.5
    with pytest.raises(ConfigError, match=r"objectives.feat_l3.*did you mean 'objectives.feat_l2'"):
        resolve(["objectives.feat_l3=0.5"])
    with pytest.raises(ConfigError, match=r"objectives.feat_l2: .*expected a number in \[0, 1000\]"):
        resolve(["objectives.feat_l2=-1"])
    small = ["data.n=8", "data.val_n=0", "train.batch_size=4", "train.steps=2", "train.warmup_steps=0", "train.log_every=1",
             "runtime.progress=false", "runtime.evaluations=[]", "model.mim.decoder_depth=1", "model.mim.decoder_width=32",
             "model.mlm.layers=1", "model.mim.decoder_heads=2", f"runtime.out_dir={tmp_path}"]
    cfg, src = resolve(small)  # the weight unset: 0, the term off (not built, not logged)
    recipe = PretrainRecipe(cfg, src, console=Console(file=open(os.devnull, "w")))
    recipe.run()
    assert recipe.objectives.names == ("align", "mim", "mlm")
    cfg, src = resolve([*small, "objectives.feat_l2=0.5", "runtime.name=on"])
    recipe = PretrainRecipe(cfg, src, console=Console(file=open(os.devnull, "w")))
    res = recipe.run()
    assert recipe.objectives.names == ("align", "mim", "mlm", "feat_l2") and recipe.objectives.terms[-1].weight == 0.5
    lines = [json.loads(l) for l in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(line["feat_l2_loss"] > 0 for line in lines) and len(lines) == 2
    from maskkit.objectives import Objectives

    on = Objectives.for_model(recipe.model, resolve(["objectives.feat_l2=0.5"])[0].objectives)
    assert on.terms[-1].weight == 0.5 and type(on.terms[-1]).__module__ == "maskkit_featl2.loss"


def test_plugin_terms_follow_the_collision_and_failure_rules(tmp_path, monkeypatch, capsys):
    """A plugin's term with a built-in's name is skipped in one line; a plugin whose
    register_terms raises is skipped whole; XLIP's terms stay."""
    from maskkit.plugins import get_registry, reset
    from maskkit.terms import all_terms
    from test_plugins import install_fake_dist

    monkeypatch.setenv("MASKKIT_LOAD_PLUGINS", "")
    install_fake_dist(tmp_path, monkeypatch, "maskkit-alignclash", "maskkit_alignclash", '''
from maskkit import hookimpl
from maskkit.terms import Term

@hookimpl
def register_terms(register):
    register(Term("align", "a different align", warmup=True, objective="x:Y"))
    register(Term("extra_ok", "kept", warmup=True, objective="x:Y", default_weight=0.0))
''')
    install_fake_dist(tmp_path, monkeypatch, "maskkit-badterm", "maskkit_badterm", '''
from maskkit import hookimpl

@hookimpl
def register_terms(register):
    register("not a term")
''')
    try:
        terms = {t.name: t for t in all_terms()}
        assert list(terms) == ["align", "mim", "mlm", "extra_ok"] and terms["align"].warmup is False
        err = capsys.readouterr().err
        assert "registers term 'align', a built-in name; its term is skipped" in err
        assert "plugin 'maskkit-badterm' failed in register_terms and is skipped (PluginError: " in err
        assert "maskkit-badterm" in get_registry("term").failed_plugins
    finally:
        reset()


class _NaNLoss(Objective):
    """A plugin's broken term: NaN whatever it is given."""

    def forward(self, out, micro=None):
        return torch.tensor(float("nan"))


def test_a_plugin_term_weighted_0_is_off_so_its_nan_stops_nothing():
    """Weight 0 means off for a plugin's term (not built, not computed, not logged): an installed
    plugin whose term returns NaN cannot skip the steps of runs that never turned it on. XLIP's
    own terms stay built at weight 0 (their model parts must stay in DDP's static graph)."""
    nan = Term("broken", "NaN", warmup=True, objective=_NaNLoss, default_weight=0.0)
    weights = objectives_model((*TERMS, nan))
    assert Objectives.for_model(None, weights(), terms=(nan,)).names == ()
    assert Objectives.for_model(None, weights(broken=0.5), terms=(nan,)).names == ("broken",)
    assert AlignLoss.kept_at_zero and MIMLoss.kept_at_zero and MLMLoss.kept_at_zero and not _NaNLoss.kept_at_zero
