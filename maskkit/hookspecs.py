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
