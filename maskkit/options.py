"""The numeric settings of the commands that are not configuration keys (``eval``, ``sweep``,
``visualize``): pydantic models with their allowed ranges, checked before any work starts, and
the shared value types (:data:`Seed`, :data:`LearningRate`) that the configuration uses too.

A value outside its range is one line naming the option and the range, e.g.
``--lr 1e+38: expected a finite number in (0, 1] (learning rate of the head's AdamW)``. The
library functions behind the commands (:func:`maskkit.eval.finetune.run_finetune`, ...) check
the same models, so a script that calls them gets the same line (naming the argument).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import MaskkitError

#: a seed: NumPy's generators and ``np.random.seed`` take [0, 2**32), torch.manual_seed more
Seed = Annotated[int, Field(ge=0, lt=2**32)]
#: a learning rate: positive and finite; above 1 no optimiser maskkit builds converges (A41)
LearningRate = Annotated[float, Field(gt=0, le=1.0)]
#: a loss term's weight: ``>= 0`` and at most 1000; a larger weight is a learning rate in disguise
#: that overflows the loss or the gradient (1e38 x a loss of 10 is inf; A65)
LossWeight = Annotated[float, Field(ge=0, le=1000.0)]
#: the smallest phantom image side the generator draws (its anatomy needs 32 px)
PHANTOM_MIN_SIZE = 32


class OptionValueError(MaskkitError):
    """A command option or function argument outside its allowed range."""


#: the devices maskkit runs on (``runtime.device``, ``maskkit check --device``); ``cuda:N`` picks a GPU
DEVICES = "auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps"


def device_error(name: Any, processes: int = 1) -> str | None:
    """Why ``name`` is not a device this machine can run on, in one line (None when it is): a
    name that is not one of :data:`DEVICES` (``tpu``, ``gpu``, ``xla``), or one whose hardware is
    absent (``cuda`` without a CUDA device, ``cuda:3`` on a machine with one GPU, ``mps`` off a
    Mac); with ``processes`` > 1 (``runtime.devices``) a CUDA run needs that many GPUs. Checked
    when the config resolves, before anything starts."""
    import re

    m = re.fullmatch(r"(auto|cpu|mps|cuda)(?::(\d+))?", name) if isinstance(name, str) else None
    if m is None or (m.group(2) is not None and m.group(1) in ("auto", "cpu")):
        return f"{name!r} is not a device maskkit runs on; expected {DEVICES}"
    import torch

    kind, index = m.groups()
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return f"{name!r} asked for, but MPS (the Apple-silicon GPU) is not available on this machine"
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "cuda" and not n:
        return (f"{name!r} asked for, but no CUDA device is available (torch {torch.__version__}, "
                f"{'CUDA ' + torch.version.cuda if torch.version.cuda else 'built without CUDA'}); use cpu or auto")
    if kind == "cuda" and index is not None and int(index) >= n:
        return f"{name!r} asked for, but this machine has {n} CUDA device{'s' if n != 1 else ''} ({', '.join(f'cuda:{i}' for i in range(n))})"
    if processes > 1 and (kind == "cuda" or (kind == "auto" and n)) and processes > n:
        return (f"{processes} processes on CUDA need {processes} GPUs (one each), this machine has {n}; "
                f"lower runtime.devices or use runtime.device=cpu")
    return None


def _interval(meta: list[Any]) -> str:
    lo = hi = None
    lo_open = hi_open = False
    for m in meta:
        if isinstance(m, at.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, at.Ge):
            lo, lo_open = m.ge, False
        elif isinstance(m, at.Lt):
            hi, hi_open = m.lt, True
        elif isinstance(m, at.Le):
            hi, hi_open = m.le, False
    if lo is None and hi is None:
        return ""

    def num(v):
        return "2**32" if v == 2**32 else f"{v:g}" if isinstance(v, float) else str(v)

    left = "(-inf" if lo is None else ("(" if lo_open else "[") + num(lo)
    right = "inf)" if hi is None else num(hi) + (")" if hi_open else "]")
    return f"{left}, {right}"


def _field_meta(model: type[BaseModel], name: str) -> tuple[Any, list[Any], bool]:
    """Field ``name`` of ``model``: its value type (``Optional`` and ``list`` unwrapped), every
    constraint on it (the field's own and an ``Annotated`` item type's), and whether it is a list."""
    import typing

    f = model.model_fields[name]
    ann, meta, many = f.annotation, list(f.metadata), False
    args = [a for a in typing.get_args(ann) if a is not type(None)] if typing.get_origin(ann) is not Literal else []
    if args and typing.get_origin(ann) is not list and len(args) == 1:  # Optional[X]
        ann = args[0]
    if typing.get_origin(ann) is list:  # list[Annotated[int, ...]]: the items' range
        many, ann = True, typing.get_args(ann)[0]
    if typing.get_origin(ann) is Annotated:
        ann, *extra = typing.get_args(ann)
        meta += [m for x in extra for m in (getattr(x, "metadata", None) or [x])]
    return ann, meta, many


def constraints(model: type[BaseModel], name: str) -> str:
    """The constraints of field ``name`` of ``model`` in short words (``''`` when none): its
    range (``[0, inf)``), length (``length >= 1``), ``multiple of 8``, ``matching ^[a-z]+$``;
    what ``maskkit datasets`` shows beside an option's type (a ``Literal``'s choices are its type)."""
    _, meta, _ = _field_meta(model, name)
    parts = [_interval(meta)]
    for m in meta:
        if isinstance(m, at.MinLen):
            parts.append(f"length >= {m.min_length}")
        elif isinstance(m, at.MaxLen):
            parts.append(f"length <= {m.max_length}")
        elif isinstance(m, at.MultipleOf):
            parts.append(f"multiple of {m.multiple_of:g}")
        elif getattr(m, "pattern", None):
            parts.append(f"matching {m.pattern}")
    return ", ".join(p for p in parts if p)


def allowed(model: type[BaseModel], name: str) -> str:
    """What field ``name`` of ``model`` accepts, in words: ``an integer in [1, 10000]``,
    ``a finite number in (0, 1]``, ``one of probe, finetune``, ``integers in [0, 2**32)``."""
    import typing

    ann, meta, many = _field_meta(model, name)
    if typing.get_origin(ann) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(ann)))
    what = {int: "integers" if many else "an integer", float: "finite numbers" if many else "a finite number"}.get(ann, "a value")
    rng = _interval(meta)
    return what + (f" in {rng}" if rng else "")


def field_default(f) -> Any:
    """The default of pydantic field ``f``, its ``default_factory`` called (``f.default`` is
    ``PydanticUndefined`` then): what help texts and option tables show."""
    return f.get_default(call_default_factory=True)


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_show(x) for x in v) or "(none)"
    return str(v)


def option_help(model: type[BaseModel], name: str) -> str:
    """A command option's help text from its model field: the description and the range."""
    f = model.model_fields[name]
    return f"{f.description}; {allowed(model, name)}"


class Strict(BaseModel):
    """Base of every maskkit settings model (configuration sections, command options): unknown
    names refused, NaN/inf refused, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Options(Strict):
    """Base of the command option models (:class:`Strict`), with :meth:`check`'s one-line errors."""

    @classmethod
    def check(cls, style: str = "--", where: str = "", labels: dict[str, str] | None = None, **values: Any):
        """The model of ``values``, or :class:`OptionValueError` in one line naming the first value out
        of range: ``--lr 1e+38: ...`` (``style="--"``: command options) or ``lr=1e+38: ...``
        (``style="="``: function arguments, file keys), after ``where`` (e.g. the file);
        ``labels`` renames a field in the message (a function argument named otherwise)."""
        try:
            return cls(**values)
        except ValidationError as exc:
            e = exc.errors()[0]
            name = str(e["loc"][0]) if e["loc"] else "?"
            got = values.get(name, e.get("input"))
            shown = (labels or {}).get(name, name)
            label = f"--{shown.replace('_', '-')} {_show(got)}" if style == "--" else f"{shown}={_show(got)}"
            label = where + label
            desc = cls.model_fields[name].description if name in cls.model_fields else None
            what = allowed(cls, name) if name in cls.model_fields else e["msg"]
            raise OptionValueError(f"{label}: expected {what}" + (f" ({desc})" if desc else "")) from None


class FinetuneOptions(Options):
    """``maskkit eval finetune`` / :func:`maskkit.eval.finetune.run_finetune`."""

    mode: Literal["probe", "finetune"] = Field("probe", description="probe: encoder frozen; finetune: encoder trained too")
    epochs: int = Field(20, ge=1, le=10_000, description="passes over each training split")
    lr: LearningRate = Field(1e-3, description="learning rate of the head's AdamW, and of the encoder's with mode finetune")
    batch_size: int = Field(32, ge=1, le=65_536, description="samples per optimiser step")
    seed: Seed = Field(0, description="split and training seed")


class ZeroShotOptions(Options):
    """``maskkit eval zeroshot`` / :func:`maskkit.eval.zeroshot.zeroshot_eval`."""

    bootstrap: int = Field(1000, ge=0, le=100_000, description="bootstrap resamples for the 95% intervals; 0: none")
    batch_size: int = Field(64, ge=1, le=65_536, description="images encoded at once")


class MaskEvalOptions(Options):
    """``maskkit eval masks``."""

    n: int = Field(256, ge=1, le=100_000, description="held-out phantoms")
    ratio: float = Field(0.75, gt=0, lt=1, description="final mask ratio (0 masks nothing: no lift; 1 everything)")
    seeds: int = Field(3, ge=1, le=1000, description="seeds averaged for random strategies")
    lesion_threshold: float = Field(0.1, gt=0, le=1, description="fraction of a patch's pixels that makes it a lesion token")


class SweepOptions(Options):
    """``maskkit sweep``."""

    jobs: int = Field(1, ge=1, le=256, description="runs at once")
    align_steps: Optional[int] = Field(None, ge=1, le=10**9, description="alignment steps per run, warm-up on top")
    seeds: Optional[list[Seed]] = Field(None, min_length=1, description="train.seed of the runs")


class VisualizeOptions(Options):
    """``maskkit visualize masks`` / ``visualize text``."""

    n: int = Field(4, ge=1, le=1024, description="samples drawn")
    index: int = Field(0, ge=0, description="first sample index in the held-out split")
    seed: Seed = Field(0, description="mask seed")
    step: Optional[int] = Field(None, ge=1, description="draw the batch and masks of this training step, 1-based as in metrics.jsonl")
    micro: int = Field(0, ge=0, description="micro-batch of --step (train.grad_accum > 1)")


class CheckOptions(Options):
    """``maskkit check``."""

    n: int = Field(16, ge=1, le=65_536, description="image tokens N of the test contexts")
    t: int = Field(12, ge=1, le=65_536, description="report length T of the test contexts")
    b: int = Field(3, ge=1, le=4096, description="batch size B of the test contexts")
    seed: Seed = Field(0, description="seed of the test contexts' data")


class PhantomsOptions(Options):
    """``maskkit phantoms``."""

    n: int = Field(2000, ge=1, le=10_000_000, description="number of phantoms")
    seed: Seed = Field(0, description="generator seed")
    size: int = Field(224, ge=PHANTOM_MIN_SIZE, le=4096, description="image side in pixels")
    unpaired: float = Field(0.2, ge=0, le=1, description="fraction of phantoms without a report")


class PrepareOptions(Options):
    """``maskkit prepare``."""

    size: int = Field(224, ge=16, le=4096, description="training resolution, the square side in pixels")
