"""The table of strategy roles: the one place the three strategy trees of an experiment are written.

An experiment holds up to three strategy trees (``image_mask``, ``image_only_mask``, ``text_mask``),
each a config key (:class:`maskkit.config.ExperimentConfig`), a random stream of a step
(:func:`maskkit.masking.mask_generator`), a :class:`~maskkit.core.MaskContext` built by
:meth:`maskkit.model.XLIP.mask_contexts`, and a row of the generated docs. All of them read this
table; nothing else spells what a role may hold. It has no torch import, so the configuration
and the command line read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the inputs of a :class:`~maskkit.core.MaskContext` that come from the report
REPORT_INPUTS = frozenset({"report_tokens", "report_valid"})


@dataclass(frozen=True)
class Role:
    """One strategy tree of an experiment.

    ``name`` is the config key and the random stream; ``modality`` and ``output`` what the root
    strategy must declare (``tokens``: a ``[B, N]`` patch mask; ``attention``: a ``[B, T, T]``
    decoder attention mask); ``inputs`` the :class:`~maskkit.core.MaskContext` fields its context
    carries (:func:`maskkit.masking.role_context`; a tree may require no other); ``equation`` the
    paper's; ``description`` one line.
    """

    name: str
    modality: str
    output: str
    inputs: tuple[str, ...]
    equation: str
    description: str

    @property
    def report(self) -> bool:
        """Whether its rows have a report (its context carries :data:`REPORT_INPUTS`)."""
        return bool(REPORT_INPUTS & set(self.inputs))

    @property
    def holds(self) -> str:
        """What the tree must be, in words (error messages and docs)."""
        shape = "a token mask [B, N]" if self.output == "tokens" else "an attention mask [B, T, T]"
        return f"{_a(self.modality)} strategy giving {shape}" + ("" if self.report else ", using no report input")


ROLES: tuple[Role, ...] = (
    Role("image_mask", "image", "tokens", equation="eq. 14",
         inputs=("image_tokens", "report_tokens", "report_valid", "entities", "prompt_tokens", "prompt_valid"),
         description="AttMIM strategy tree of paired samples (null: no MIM, the CLIP baseline)"),
    Role("image_only_mask", "image", "tokens", equation="eq. 15",
         inputs=("image_tokens", "prompt_tokens", "prompt_valid"),
         description="strategy tree of image-only samples: they have no report, so no report_cross (null: not masked)"),
    Role("text_mask", "text", "attention", equation="eq. 10, 13",
         inputs=("report_tokens", "report_valid", "entities"),
         description="EntMLM decoder attention-mask tree, e.g. {intersect: {of: [entity, causal]}} (null: no MLM)"),
)
ROLE_BY_NAME: dict[str, Role] = {r.name: r for r in ROLES}
#: the role names, in table order (config keys, random streams)
ROLE_NAMES: tuple[str, ...] = tuple(r.name for r in ROLES)
#: the roles whose tree masks image patches (one AttMIM mask, row by row: paired or image-only)
IMAGE_ROLES: tuple[str, ...] = tuple(r.name for r in ROLES if r.output == "tokens")


def role_error(role: Role, strategy) -> str | None:
    """Why ``strategy`` (a built root, or None) cannot hold ``role``, in one line; None when it can."""
    if strategy is None:
        return None
    name = getattr(strategy, "name", type(strategy).__name__)
    if strategy.modality != role.modality:
        return f"{role.name}: expected {_a(role.modality)} strategy, got {_a(strategy.modality)} one ({name})"
    if strategy.output != role.output:
        return f"{role.name}: expected {role.holds}, got one whose output is '{strategy.output}' ({name})"
    missing = strategy.all_requires - set(role.inputs)
    if not role.report and missing & REPORT_INPUTS:
        return (f"{role.name}: image-only samples have no report, but {name} needs "
                f"{', '.join(sorted(missing & REPORT_INPUTS))}; use strategies such as prompt_driven and image_self")
    if missing:
        return f"{role.name}: {name} needs {', '.join(sorted(missing))}; this tree's context has {', '.join(role.inputs)}"
    return None


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"
