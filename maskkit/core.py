"""The MaskStrategy engine: the mask convention, the context strategies read, and shared helpers.

Mask convention (the one rule every strategy, model and plot in maskkit holds to)
--------------------------------------------------------------------------------
A mask is a ``torch.bool`` tensor and ``True`` means *masked* (hidden / to be reconstructed).

- image token masks have shape ``[B, N]`` (N patch tokens, no CLS token);
- text token masks have shape ``[B, T]`` (T token positions of the report, the text tower's tokenizer's);
- attention masks have shape ``[B, T, T]``: ``mask[b, i, j] == True`` means query ``i`` may
  *not* attend to key ``j`` (PyTorch's ``attn_mask`` convention for booleans is the opposite,
  so pass ``~mask`` to ``scaled_dot_product_attention``).

Padding is never masked: a position that is padding (``valid == False``) is always ``False``
in a token mask. Token masks of strategies with a ``ratio`` hold exactly
``round(ratio * n_valid)`` ``True`` values per row (Python's round-half-to-even).

Strategies never mutate their inputs, never call ``.item()`` or otherwise sync with the host,
take all randomness from ``MaskContext.generator``, and loop over no samples in Python.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict

from .errors import ContextError, MissingInputError

Modality = Literal["image", "text"]
Output = Literal["tokens", "attention"]

#: The inputs a strategy may declare in ``requires``.
CONTEXT_INPUTS = (
    "image_tokens",
    "report_tokens",
    "report_valid",
    "prompt_tokens",
    "entities",
    "attention",
)


#: Shapes of ``MaskContext.attention`` entries: ``name -> (queries, keys)``; an entry is
#: ``[B, Q, K]`` or ``[B, H, Q, K]`` (H heads) float. Other names are checked for B only.
ATTENTION_SHAPES: dict[str, tuple[str, str]] = {
    "image_self": ("N", "N"),    # image tokens attending to image tokens
    "report_cross": ("N", "T"),  # image tokens (queries) attending to report positions (keys), as eq. 4
    "report_self": ("T", "T"),   # report positions attending to report positions
}


@dataclasses.dataclass(frozen=True, eq=False)
class MaskContext:
    """What mask strategies may read. Immutable; missing inputs are ``None``.

    Shapes (B batch, N image tokens, T text positions, P prompts, L prompt tokens, D width):

    - ``image_tokens``: ``[B, N, D]`` projected image token features (E_img, eq. 1)
    - ``image_valid``: ``[B, N]`` bool, ``True`` = real token (``None``: all real)
    - ``report_tokens``: ``[B, T, D]`` projected report token features (E_report, eq. 2)
    - ``report_valid``: ``[B, T]`` bool, ``True`` = real token, ``False`` = padding
    - ``prompt_tokens``: ``[P, D]`` pooled disease-prompt features, or ``[P, L, D]`` per token
    - ``prompt_valid``: ``[P, L]`` bool validity of per-token prompt features
    - ``entities``: ``[B, T]`` bool, ``True`` = the position belongs to a NER entity
    - ``attention``: attention maps a model already computed, by name: ``[B, Q, K]`` or
      ``[B, H, Q, K]`` float; ``image_self`` is ``[.., N, N]``, ``report_cross`` ``[.., N, T]``,
      ``report_self`` ``[.., T, T]`` (``ATTENTION_SHAPES``); held read-only
    - ``generator``: the only source of randomness, on the same device as the tensors
    """

    image_tokens: torch.Tensor | None = None
    image_valid: torch.Tensor | None = None
    report_tokens: torch.Tensor | None = None
    report_valid: torch.Tensor | None = None
    prompt_tokens: torch.Tensor | None = None
    prompt_valid: torch.Tensor | None = None
    entities: torch.Tensor | None = None
    attention: Mapping[str, torch.Tensor] | None = None
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.attention is not None and isinstance(self.attention, Mapping):
            object.__setattr__(self, "attention", MappingProxyType(dict(self.attention)))
        _check_context(self)

    # --- derived views -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for t in self._tensors():
            return t.device
        return torch.device("cpu")

    @property
    def batch_size(self) -> int:
        for name in ("image_tokens", "report_tokens", "report_valid", "entities", "image_valid"):
            t = getattr(self, name)
            if t is not None:
                return t.shape[0]
        raise MissingInputError("the mask context holds no batched input (image_tokens, report_tokens, ...)")

    def image_valid_mask(self) -> torch.Tensor:
        """``[B, N]`` bool validity of image tokens (all ``True`` when ``image_valid`` is None)."""
        if self.image_valid is not None:
            return self.image_valid
        if self.image_tokens is None:
            raise MissingInputError("image validity needs image_tokens")
        B, N = self.image_tokens.shape[:2]
        return torch.ones(B, N, dtype=torch.bool, device=self.image_tokens.device)

    def text_valid_mask(self) -> torch.Tensor:
        """``[B, T]`` bool validity of report positions, from ``report_valid`` or the shapes."""
        if self.report_valid is not None:
            return self.report_valid
        ref = self.report_tokens if self.report_tokens is not None else self.entities
        if ref is None:
            raise MissingInputError("text validity needs report_valid, report_tokens or entities")
        B, T = ref.shape[:2]
        return torch.ones(B, T, dtype=torch.bool, device=ref.device)

    def has(self, name: str) -> bool:
        """Whether input ``name`` (one of ``CONTEXT_INPUTS``) is present or derivable."""
        if name == "report_valid":
            return any(getattr(self, n) is not None for n in ("report_valid", "report_tokens", "entities"))
        return getattr(self, name) is not None

    def require(self, names: frozenset[str] | set[str], who: str) -> None:
        """Raise ``MissingInputError`` naming ``who`` and the first absent input."""
        for name in sorted(names):
            if not self.has(name):
                hint = ""
                if name in ("report_tokens", "report_valid"):
                    hint = " (an image-only batch? mask it with prompt_driven and image_self instead)"
                raise MissingInputError(f"strategy '{who}' needs '{name}' but the mask context has none{hint}")

    def replace(self, **changes: Any) -> MaskContext:
        """A copy with some fields changed (the context itself never changes)."""
        return dataclasses.replace(self, **changes)

    def _tensors(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                yield v
        if self.attention:
            yield from self.attention.values()


def _check_context(ctx: MaskContext) -> None:
    """Validate shapes, dtypes and devices once, with messages that name the field."""

    def dims(name: str, t: torch.Tensor | None, ndim: tuple[int, ...]) -> None:
        if t is not None and t.dim() not in ndim:
            want = " or ".join(f"{n}-D" for n in ndim)
            raise ContextError(f"MaskContext.{name}: expected a {want} tensor, got shape {tuple(t.shape)}")

    def boolean(name: str, t: torch.Tensor | None) -> None:
        if t is not None and t.dtype != torch.bool:
            raise ContextError(f"MaskContext.{name}: expected dtype torch.bool, got {t.dtype}")

    dims("image_tokens", ctx.image_tokens, (3,))
    dims("image_valid", ctx.image_valid, (2,))
    dims("report_tokens", ctx.report_tokens, (3,))
    dims("report_valid", ctx.report_valid, (2,))
    dims("prompt_tokens", ctx.prompt_tokens, (2, 3))
    dims("prompt_valid", ctx.prompt_valid, (2,))
    dims("entities", ctx.entities, (2,))
    for name in ("image_valid", "report_valid", "prompt_valid", "entities"):
        boolean(name, getattr(ctx, name))
    for name in ("image_tokens", "report_tokens", "prompt_tokens"):
        t = getattr(ctx, name)
        if t is not None and not t.is_floating_point():
            raise ContextError(f"MaskContext.{name}: expected floating-point features, got {t.dtype}")

    def same(a: str, ai: int, b: str, bi: int, what: str) -> None:
        ta, tb = getattr(ctx, a), getattr(ctx, b)
        if ta is not None and tb is not None and ta.shape[ai] != tb.shape[bi]:
            raise ContextError(
                f"MaskContext.{b}: {what} {tb.shape[bi]} does not match {a} ({ta.shape[ai]}); "
                f"shapes {tuple(ta.shape)} and {tuple(tb.shape)}"
            )

    batched = [n for n in ("image_tokens", "image_valid", "report_tokens", "report_valid", "entities")
               if getattr(ctx, n) is not None]
    for n in batched[1:]:
        same(batched[0], 0, n, 0, "batch size")
    same("image_tokens", 1, "image_valid", 1, "token count")
    same("report_tokens", 1, "report_valid", 1, "length")
    same("report_tokens", 1, "entities", 1, "length")
    same("report_valid", 1, "entities", 1, "length")
    same("image_tokens", 2, "report_tokens", 2, "feature width")
    same("image_tokens", 2, "prompt_tokens", -1, "feature width")
    if ctx.prompt_valid is not None:
        if ctx.prompt_tokens is None or ctx.prompt_tokens.dim() != 3:
            raise ContextError("MaskContext.prompt_valid: given without per-token prompt_tokens [P, L, D]")
        if tuple(ctx.prompt_valid.shape) != tuple(ctx.prompt_tokens.shape[:2]):
            raise ContextError(
                f"MaskContext.prompt_valid: shape {tuple(ctx.prompt_valid.shape)} does not match "
                f"prompt_tokens [P, L] = {tuple(ctx.prompt_tokens.shape[:2])}"
            )
    _check_attention(ctx)
    devices = {t.device for t in ctx._tensors()}
    if len(devices) > 1:
        raise ContextError(f"MaskContext: tensors are on several devices {sorted(map(str, devices))}")
    if ctx.generator is not None and devices:
        dev = next(iter(devices))
        if torch.device(ctx.generator.device).type != dev.type:
            raise ContextError(
                f"MaskContext.generator: on {ctx.generator.device} but the tensors are on {dev}; "
                f"create it with torch.Generator(device='{dev}')"
            )


class declared:
    """A class-level declaration of several values, resolved to one per instance.

    ``RandomMask.modality`` (the class) is the declaration ``("image", "text")``: what
    ``list_strategies(modality=...)`` and registration read. ``RandomMask(...).modality`` (an
    instance) is the one modality this instance masks: ``resolved_modality``. An instance never
    assigns the attribute; it only resolves it (from its config or its children).
    """

    def __init__(self, *values: str) -> None:
        self.values = tuple(values)

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self.values
        return getattr(obj, f"resolved_{self.attr}")


def declared_values(cls: type, attr: str) -> tuple[str, ...]:
    """The values class ``cls`` declares for ``modality`` or ``output`` (always a tuple)."""
    v = getattr(cls, attr)
    return (v,) if isinstance(v, str) else tuple(v)


def declared_modalities(cls: type) -> tuple[str, ...]:
    """The modalities strategy class ``cls`` can mask (``random``: both)."""
    return declared_values(cls, "modality")


def _check_attention(ctx: MaskContext) -> None:
    """Each ``attention`` entry: a float ``[B, Q, K]`` / ``[B, H, Q, K]`` tensor matching the batch."""
    att = ctx.attention
    if att is None:
        return
    if not isinstance(att, Mapping):
        raise ContextError(f"MaskContext.attention: expected a mapping of name -> tensor, got {type(att).__name__}")
    B = next((getattr(ctx, n).shape[0] for n in ("image_tokens", "image_valid", "report_tokens", "report_valid", "entities")
              if getattr(ctx, n) is not None), None)
    size = {
        "N": next((getattr(ctx, n).shape[1] for n in ("image_tokens", "image_valid") if getattr(ctx, n) is not None), None),
        "T": next((getattr(ctx, n).shape[1] for n in ("report_tokens", "report_valid", "entities") if getattr(ctx, n) is not None), None),
    }
    for key, t in att.items():
        where = f"MaskContext.attention[{key!r}]"
        if not isinstance(key, str):
            raise ContextError(f"MaskContext.attention: keys are names (str), got {type(key).__name__} {key!r}")
        if not isinstance(t, torch.Tensor):
            raise ContextError(f"{where}: expected a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ContextError(f"{where}: expected floating-point attention weights, got {t.dtype}")
        q, k = ATTENTION_SHAPES.get(key, ("Q", "K"))
        dims = ["B" if B is None else str(B), str(size.get(q) or q), str(size.get(k) or k)]
        ok = t.dim() in (3, 4) and (B is None or t.shape[0] == B)
        ok = ok and all(size.get(n) is None or t.shape[i] == size[n] for n, i in ((q, -2), (k, -1)))
        if not ok:
            want = f"[{dims[0]}, {dims[1]}, {dims[2]}] or [{dims[0]}, H, {dims[1]}, {dims[2]}]"
            raise ContextError(f"{where}: expected shape {want} ([B, {q}, {k}] or [B, H, {q}, {k}]), got {tuple(t.shape)}")


class StrategyConfig(BaseModel):
    """Base of every strategy's pydantic ``Config``: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MaskStrategy(ABC):
    """One way of choosing what to mask. The contract (docs/plugins.md) in brief:

    A subclass **declares**, at class level (checked when it is registered):

    - ``name``: the registry name;
    - ``modality``: ``"image"`` or ``"text"``, or ``declared("image", "text")`` when the config
      (a ``Config`` field named ``modality``) or the children decide per instance;
    - ``output``: ``"tokens"`` (``[B, L]``) or ``"attention"`` (``[B, T, T]``);
    - ``requires``: a frozenset of names from ``CONTEXT_INPUTS``;
    - ``stochastic``: whether the mask depends on ``ctx.generator``: ``True`` on
      ``MaskStrategy`` (a deterministic subclass sets ``False``), ``False`` on
      :class:`ScoredStrategy` (its top-k reads no generator; a subclass whose scores draw from
      ``ctx.generator`` sets ``True``);
    - ``description`` and a nested pydantic ``Config`` (a ``StrategyConfig``);

    and **implements** :meth:`mask`. An instance never assigns these; what one instance masks is
    ``resolved_modality`` / ``resolved_output`` (also read as ``instance.modality`` / ``.output``).

    The base class **provides**: ``__call__`` (checks ``requires`` and the generator, then calls
    ``mask``), :meth:`valid`, :meth:`candidates`, :meth:`expected_count`,
    :meth:`mask_and_scores`, :meth:`explain`, ``all_requires`` and :meth:`check_inputs`.
    """

    name: ClassVar[str]
    modality: ClassVar[Modality | tuple[Modality, ...]] = "image"
    output: ClassVar[Output | tuple[Output, ...]] = "tokens"
    requires: ClassVar[frozenset[str]] = frozenset()
    description: ClassVar[str] = ""
    #: whether the mask depends on ``ctx.generator`` (deterministic strategies set False)
    stochastic: ClassVar[bool] = True
    #: composites (union, intersect) take built children in ``__init__``
    composite: ClassVar[bool] = False

    class Config(StrategyConfig):
        pass

    def __init__(self, config: StrategyConfig | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if config is None:
            config = self.Config(**kwargs)
        elif isinstance(config, Mapping):
            config = self.Config(**{**config, **kwargs})
        elif kwargs:
            config = config.model_copy(update=kwargs)
        self.config = config

    # --- what subclasses implement --------------------------------------------------------
    @abstractmethod
    def mask(self, ctx: MaskContext) -> torch.Tensor:
        """Return the bool mask (``True`` = masked): ``[B, N]``, ``[B, T]`` or ``[B, T, T]``."""

    # --- what callers use -------------------------------------------------------------------
    def _resolved(self, attr: str):
        """A declaration of one value, or (declared with several) the value the config chose."""
        declared_ = declared_values(type(self), attr)
        return declared_[0] if len(declared_) == 1 else getattr(self.config, attr)

    @property
    def resolved_modality(self) -> Modality:
        """The modality this instance masks: the declaration, or the config's ``modality``."""
        return self._resolved("modality")

    @property
    def resolved_output(self) -> Output:
        """The kind of mask this instance returns: ``"tokens"`` or ``"attention"``."""
        return self._resolved("output")

    @property
    def all_requires(self) -> frozenset[str]:
        """Inputs this strategy and (for composites) all of its children need."""
        return self.requires

    def valid(self, ctx: MaskContext) -> torch.Tensor:
        """``[B, L]`` bool: the real (non-padding) tokens of this strategy's modality."""
        return ctx.image_valid_mask() if self.resolved_modality == "image" else ctx.text_valid_mask()

    def candidates(self, ctx: MaskContext) -> torch.Tensor:
        """``[B, L]`` bool: the positions this strategy may mask (default: every valid token)."""
        return self.valid(ctx)

    def expected_count(self, ctx: MaskContext) -> torch.Tensor | None:
        """``[B]`` long: how many tokens each row's mask holds, or None when it is not fixed."""
        ratio = getattr(self.config, "ratio", None)
        if self.resolved_output != "tokens" or ratio is None:
            return None
        return count_for_ratio(self.candidates(ctx), ratio)

    def mask_and_scores(self, ctx: MaskContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This strategy's mask (what :meth:`mask` returns) and the ``[B, L]`` float scores it
        ranked tokens by, or ``None`` when it has none. Composites read children through this."""
        return self.mask(ctx), None

    def explain(self, ctx: MaskContext) -> dict[str, Any]:
        """Intermediate results, for figures and measurements (never needed to mask).

        Always holds ``"mask"`` (what :meth:`mask` returns) and ``"scores"`` (``[B, L]`` float
        the strategy ranked by, or ``None``). Composites add ``"children"`` (each child's mask)
        and ``"child_scores"``; ``union`` adds ``"union"`` (M_b, eq. 7) and ``"blended"``.
        """
        mask, scores = self.mask_and_scores(ctx)
        return {"mask": mask, "scores": scores}

    def check_inputs(self, ctx: MaskContext) -> None:
        """Raise ``MissingInputError`` before any compute if the context lacks a required input."""
        ctx.require(self.all_requires, self.name)

    def __call__(self, ctx: MaskContext) -> torch.Tensor:
        self.check_inputs(ctx)
        if self.stochastic and ctx.generator is None:
            raise MissingInputError(f"strategy '{self.name}' is random and needs MaskContext.generator")
        return self.mask(ctx)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.model_dump().items())
        return f"{type(self).__name__}({args})"


class ScoredStrategy(MaskStrategy):
    """A strategy that scores every token and masks the top ``ratio`` of the valid ones.

    Deterministic by default (``stochastic = False``: the top-k reads no generator); a subclass
    whose :meth:`scores` draw from ``ctx.generator`` sets ``stochastic = True``."""

    stochastic: ClassVar[bool] = False

    @abstractmethod
    def scores(self, ctx: MaskContext) -> torch.Tensor:
        """Return float scores ``[B, N]`` (higher = masked first); detached from autograd."""

    def mask(self, ctx: MaskContext) -> torch.Tensor:
        return topk_mask(self.scores(ctx), self.config.ratio, self.valid(ctx))

    def mask_and_scores(self, ctx: MaskContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The scores, computed once, and the mask: the top ``ratio`` of them, or, when a
        subclass overrides :meth:`mask`, whatever that override returns."""
        s = self.scores(ctx)
        if type(self).mask is ScoredStrategy.mask:
            return topk_mask(s, self.config.ratio, self.valid(ctx)), s
        return self.mask(ctx), s


# --- shared helpers ------------------------------------------------------------------------

def count_for_ratio(valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """``[B]`` long: ``round(ratio * n_valid)`` per row, rounding half to even like Python."""
    n = valid.sum(dim=-1)
    dtype = torch.float32 if valid.device.type == "mps" else torch.float64
    return torch.round(n.to(dtype) * ratio).long()


def rank_desc(scores: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rank of each position by descending score, ``[B, N]`` long; padding ranks last.

    Ties are broken by position (the lower index ranks first), so the result is reproducible.
    NaN scores rank after every finite score of a valid token.
    """
    s = torch.nan_to_num(scores.detach().float(), nan=float("-inf"))
    order = torch.sort(s, dim=-1, descending=True, stable=True).indices
    if valid is not None:
        # second, stable key: valid positions first, keeping the score order within each group
        v = torch.gather(valid, -1, order)
        order = torch.gather(order, -1, torch.sort(v.to(torch.uint8), dim=-1, descending=True, stable=True).indices)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return ranks


def topk_mask(scores: torch.Tensor, ratio: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mask the ``round(ratio * n_valid)`` highest-scoring valid positions of each row.

    scores: ``[B, N]`` float; valid: ``[B, N]`` bool or None (all valid). Returns ``[B, N]`` bool.
    Padding is never selected; ties go to the lower index.
    """
    if valid is None:
        valid = torch.ones_like(scores, dtype=torch.bool)
    k = count_for_ratio(valid, ratio)
    return rank_desc(scores, valid) < k.unsqueeze(-1)


def topk_count_mask(scores: torch.Tensor, k: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mask the ``min(k[b], n_valid[b])`` highest-scoring valid positions of row ``b`` (``k`` ``[B]`` long)."""
    return (rank_desc(scores, valid) < k.unsqueeze(-1)) & valid


def uniform_noise(shape: tuple[int, ...], ctx: MaskContext) -> torch.Tensor:
    """``U[0, 1)`` noise of ``shape`` on the context's device, drawn from ``ctx.generator``."""
    return torch.rand(shape, generator=ctx.generator, device=ctx.device)


def random_subset(candidates: torch.Tensor, k: torch.Tensor, ctx: MaskContext,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pick exactly ``min(k[b], |candidates[b]|)`` positions of each row among ``candidates``.

    candidates: ``[B, N]`` bool; k: ``[B]`` long. Uniform without replacement, or, with
    ``weights`` ``[B, N]`` (non-negative), without replacement in proportion to the weights
    (Gumbel-top-k). Returns ``[B, N]`` bool, a subset of ``candidates``.
    """
    u = uniform_noise(tuple(candidates.shape), ctx)
    if weights is None:
        key = u
    else:
        gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))
        key = torch.log(weights.detach().float().clamp_min(1e-12)) + gumbel
    return topk_count_mask(key, k, candidates)


def masked_softmax(logits: torch.Tensor, key_valid: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` ignoring invalid keys; a row with no valid key gives all zeros."""
    if key_valid is None:
        return logits.softmax(dim)
    neg = torch.finfo(logits.dtype).min
    w = logits.masked_fill(~key_valid, neg).softmax(dim)
    return w * key_valid


def rank_normalise(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Map scores to ``(0, 1]`` by rank among the valid positions of each row (1 = top); padding 0."""
    n = valid.sum(-1, keepdim=True).clamp_min(1)
    r = rank_desc(scores, valid)
    return ((n - r).clamp_min(0).float() / n.float()) * valid


class CompositeStrategy(MaskStrategy):
    """A strategy built from child strategies (``of`` in a composition).

    The composition builder builds the children first, applies :meth:`child_defaults` to the
    child specs that leave those keys unset, and passes the built children to ``__init__``.
    Modality and output kind resolve from the children (the class declares both of each).

    What a composite may assume of a child: it is a built ``MaskStrategy`` of the composite's
    resolved modality; its inputs were checked (``check_inputs`` covers every child); its
    mask, obtained through ``child.mask_and_scores(ctx)`` (or ``child.mask(ctx)``), holds the
    mask convention and its own ``expected_count``. A composite never re-derives a child's mask
    (a child that overrides ``mask()`` is honoured); scores are an optional extra.
    """

    composite: ClassVar[bool] = True
    modality = declared("image", "text")
    output = declared("tokens", "attention")

    def __init__(self, config=None, *, children: list[MaskStrategy], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        if not children:
            raise ValueError(f"'{self.name}' needs at least one child strategy in 'of'")
        self.children = list(children)
        mods = {c.resolved_modality for c in self.children}
        if len(mods) > 1:
            raise ValueError(f"'{self.name}' mixes {' and '.join(sorted(mods))} strategies; children must share a modality")
        self._modality = mods.pop()
        if self._modality not in declared_modalities(type(self)):
            raise ValueError(f"'{self.name}' masks {' or '.join(declared_modalities(type(self)))} tokens; "
                             f"its children are {self._modality} strategies")
        self._output = "attention" if any(c.resolved_output == "attention" for c in self.children) else "tokens"

    @property
    def resolved_modality(self) -> Modality:
        return self._modality  # type: ignore[return-value]

    @property
    def resolved_output(self) -> Output:
        return self._output  # type: ignore[return-value]

    @classmethod
    def child_defaults(cls, config: StrategyConfig) -> dict[str, Any]:
        """Config values handed to children that do not set them themselves."""
        return {}

    @property
    def all_requires(self) -> frozenset[str]:
        out = frozenset(self.requires)
        for c in self.children:
            out |= c.all_requires
        return out

    def check_inputs(self, ctx: MaskContext) -> None:
        ctx.require(self.requires, self.name)
        for c in self.children:
            c.check_inputs(ctx)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return any(c.stochastic for c in self.children) or self.self_stochastic()

    def self_stochastic(self) -> bool:
        """Whether the composite itself draws random numbers (beyond its children)."""
        return False

    def child_masks(self, ctx: MaskContext) -> list[torch.Tensor]:
        return [c.mask(ctx) for c in self.children]

    def explain(self, ctx: MaskContext) -> dict[str, Any]:
        kids = [c.mask_and_scores(ctx) for c in self.children]
        return {"children": [m for m, _ in kids], "child_scores": [s for _, s in kids],
                "mask": self.mask(ctx), "scores": None}


#: what each declaration may hold
_MODALITIES = ("image", "text")
_OUTPUTS = ("tokens", "attention")


def check_declarations(cls: type, source: str) -> None:
    """Check a strategy class's declarations when it is registered; one-line ``PluginError``."""
    import inspect

    from .errors import PluginError

    who = f"plugin '{source}': strategy '{getattr(cls, 'name', cls.__qualname__)}'"
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise PluginError(f"{who} does not implement {missing}")
    for attr, allowed in (("modality", _MODALITIES), ("output", _OUTPUTS)):
        raw = getattr(cls, attr)
        values = declared_values(cls, attr)
        if not values or any(v not in allowed for v in values):
            raise PluginError(f"{who} declares {attr} = {raw!r}; expected one of {', '.join(allowed)} "
                              f"(or declared({', '.join(repr(a) for a in allowed)}) when instances decide)")
        if len(values) > 1 and not cls.composite and attr not in cls.Config.model_fields \
                and getattr(cls, f"resolved_{attr}") is getattr(MaskStrategy, f"resolved_{attr}"):
            raise PluginError(f"{who} declares several values of {attr} {values} but its Config has no "
                              f"'{attr}' field (and it does not override resolved_{attr}) to choose one")
    req = cls.requires
    if isinstance(req, str) or not isinstance(req, (set, frozenset, tuple, list)):
        raise PluginError(f"{who} declares requires = {req!r}; expected a frozenset of input names, "
                          f"e.g. frozenset({{'image_tokens'}})")
    for r in req:
        if r not in CONTEXT_INPUTS:
            from .errors import close_matches

            hint = close_matches(str(r), CONTEXT_INPUTS, n=1) or f"; expected one of {', '.join(CONTEXT_INPUTS)}"
            raise PluginError(f"{who} requires unknown input {r!r}{hint}")
    if not isinstance(cls.__dict__.get("stochastic", cls.stochastic), (bool, property)):
        raise PluginError(f"{who} declares stochastic = {cls.stochastic!r}; expected True or False")
    if not (isinstance(cls.Config, type) and issubclass(cls.Config, StrategyConfig)):
        raise PluginError(f"{who}: Config must subclass maskkit.StrategyConfig")
    if not isinstance(cls.description, str):
        raise PluginError(f"{who} declares description = {cls.description!r}; expected a string")


def as_attention(mask: torch.Tensor, T: int) -> torch.Tensor:
    """A token mask ``[B, T]`` as a key mask ``[B, T, T]`` (every query hides those keys)."""
    if mask.dim() == 3:
        return mask
    return mask.unsqueeze(1).expand(mask.shape[0], T, T)
