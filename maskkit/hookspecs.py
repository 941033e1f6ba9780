"""The hooks a maskkit plugin can implement (built-ins use the same hooks)."""

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("maskkit")
hookimpl = HookimplMarker("maskkit")


@hookspec
def register_strategies(register):
    """Register MaskStrategy classes: call ``register(StrategyClass)`` once for each."""


@hookspec
def register_presets(register):
    """Register presets: call ``register(name, config_dict, description)`` once for each."""


@hookspec
def register_datasets(register):
    """Register dataset adapters: call ``register(name, load, role="auto", description=None)`` once
    for each. ``load(**options)`` returns a :class:`maskkit.data.records.Table`; its signature and
    type hints are the adapter's typed options (docs/data.md, docs/plugins.md)."""


@hookspec
def register_evaluations(register):
    """Register evaluations: call ``register(name, evaluate, settings=Model, description=None,
    ensemble=False, out=None, end_of_run=None)`` once for each. ``evaluate(run, settings)`` takes a
    :class:`maskkit.eval.contract.EvalRun` and an instance of the pydantic ``settings`` model and
    returns a :class:`maskkit.eval.contract.EvalResult` (flat ``metrics`` prefixed ``"<name>/"``,
    per-item ``details``); docs/plugins.md, docs/eval.md."""


@hookspec
def register_terms(register):
    """Register loss terms: call ``register(Term(...))`` (:class:`maskkit.terms.Term`) once for
    each. The term's ``objective`` names its :class:`maskkit.objectives.Objective` subclass as a
    ``"module:Class"`` string, imported only when a model's objectives are built; its weight is the
    config key ``objectives.<name>`` (default ``default_weight``: give a new term 0.0, off unless
    set) and it logs as ``<name>_loss`` (docs/model.md, "Adding a loss term")."""
