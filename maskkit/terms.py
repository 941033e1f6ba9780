"""The table of training terms: the one place a term's name, log key, warm-up role, default
weight and loss module are written.

The model's objectives (:meth:`maskkit.objectives.Objectives.for_model` builds one per row),
the configuration (``objectives.<name>`` weights, defaulting to ``default_weight``), the training
loop, ``metrics.jsonl``, the plots and the generated docs all read this table; nothing else
spells a term name. It has no torch import (a row names its loss module by a ``"module:Class"``
string, imported only when a model's objectives are built), so the configuration reads it cheaply.
XLIP's terms are the rows of :data:`TERMS`, registered through the ``register_terms`` hook like
a plugin's (this module is the built-in plugin); :func:`all_terms` gives them and the plugins'
terms, which the config, the objectives and the logs read the same way (docs/model.md, "Adding
a loss term").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .hookspecs import hookimpl


@dataclass(frozen=True)
class Term:
    """One loss term of XLIP's objective (eq. 14-16).

    ``name`` is the config key (``objectives.<name>`` is its weight); ``log_key`` the key in
    ``metrics.jsonl``, TensorBoard and the progress bar; ``warmup`` whether the term trains
    during the masked-modelling-only warm-up (``train.warmup_steps``, paper section IV-B);
    ``paired`` whether it needs image-report pairs (it is zero on image-only samples);
    ``tune`` whether it trains in the unmasked full-resolution tune that may end a run
    (``train.unmasked_tune``: FLIP's and CLIPA's last phase; A64); ``objective`` the loss module,
    a :class:`maskkit.objectives.Objective` subclass or its ``"module:Class"`` path (its
    ``build`` classmethod makes the term's module for a model, or None when the model lacks
    what the term needs); ``default_weight`` the weight when the configuration does not set
    ``objectives.<name>``: XLIP's terms are 1.0, a new term should be 0.0 (off unless set), so
    that adding it changes no preset.
    """

    name: str
    description: str
    warmup: bool
    objective: str | type
    paired: bool = False
    tune: bool = False
    default_weight: float = 1.0

    def objective_class(self) -> type:
        """The :class:`~maskkit.objectives.Objective` subclass of this term (imports its module);
        a ``"module:Class"`` that does not import or does not name a class is one line naming it
        (:class:`~maskkit.errors.PluginError`, exit 2)."""
        if isinstance(self.objective, type):
            return self.objective
        module, _, qual = self.objective.partition(":")
        try:
            obj = importlib.import_module(module)
            for part in qual.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError, ValueError) as exc:
            from .errors import PluginError

            raise PluginError(f"term '{self.name}': objective {self.objective!r} (expected 'module:Class') "
                              f"cannot be loaded: {exc}") from None
        return obj

    @property
    def log_key(self) -> str:
        return f"{self.name}_loss"


TERMS: tuple[Term, ...] = (
    Term("align", "symmetric InfoNCE between pooled image and report features (CLIP; the loss after eq. 11)", warmup=False,
         paired=True, tune=True, objective="maskkit.objectives:AlignLoss"),
    Term("mim", "AttMIM pixel reconstruction of the masked patches (eq. 12)", warmup=True,
         objective="maskkit.objectives:MIMLoss"),
    Term("mlm", "EntMLM reconstruction of the selected report tokens (eq. 13)", warmup=True, paired=True,
         objective="maskkit.objectives:MLMLoss"),
)
TERM_BY_NAME: dict[str, Term] = {t.name: t for t in TERMS}
# XLIP's own terms (above); plugins add more through the ``register_terms`` hook: all_terms()


@hookimpl
def register_terms(register):
    """The built-in plugin of XLIP's terms (:data:`TERMS`), through the hook third parties use."""
    for t in TERMS:
        register(t)


def all_terms() -> tuple[Term, ...]:
    """Every registered term: :data:`TERMS`, then those plugins register (``register_terms``; a
    plugin's term with a built-in's name is skipped, a failing plugin is skipped whole). Loads the
    plugin registry, not torch (a plugin that imports torch when it is imported still brings it)."""
    from .plugins import get_registry

    return tuple(get_registry("term").terms.values())
