"""The table of training terms: the one place a term's name, log key and warm-up role are written.

The model's objectives (:mod:`maskkit.objectives`), the configuration (``objectives.<name>``
weights), the training loop, ``metrics.jsonl`` and the plots all read this table; nothing else
spells a term name. It has no torch import, so the configuration can read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Term:
    """One loss term of XLIP's objective (eq. 14-16).

    ``name`` is the config key (``objectives.<name>`` is its weight); ``log_key`` the key in
    ``metrics.jsonl``, TensorBoard and the progress bar; ``warmup`` whether the term trains
    during the masked-modelling-only warm-up (``train.warmup_steps``, paper section IV-B);
    ``paired`` whether it needs image-report pairs (it is zero on image-only samples);
    ``tune`` whether it trains in the unmasked full-resolution tune that may end a run
    (``train.unmasked_tune``: FLIP's and CLIPA's last phase; A64).
    """

    name: str
    description: str
    warmup: bool
    paired: bool = False
    tune: bool = False

    @property
    def log_key(self) -> str:
        return f"{self.name}_loss"


TERMS: tuple[Term, ...] = (
    Term("align", "symmetric InfoNCE between pooled image and report features (CLIP; the loss after eq. 11)", warmup=False, paired=True, tune=True),
    Term("mim", "AttMIM pixel reconstruction of the masked patches (eq. 12)", warmup=True),
    Term("mlm", "EntMLM reconstruction of the selected report tokens (eq. 13)", warmup=True, paired=True),
)
TERM_BY_NAME: dict[str, Term] = {t.name: t for t in TERMS}
LOG_KEYS: tuple[str, ...] = tuple(t.log_key for t in TERMS)
TERM_BY_LOG_KEY: dict[str, Term] = {t.log_key: t for t in TERMS}
