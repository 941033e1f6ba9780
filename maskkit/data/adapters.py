"""Dataset adapters as an extension point: what the ``register_datasets`` hook registers.

An adapter is a function ``load(**options) -> Table`` (:mod:`maskkit.data.records`) with a
declared role and a typed options model derived from the function's signature: each parameter is
an option, its type hint the option's type, its default the option's default (a parameter without
a default is required). Adding a parameter to an adapter is therefore one edit, and an option the
function does not take is refused in one line naming the adapter and the key.

Two optional hooks let an adapter build its own torch datasets and its own held-out split (the
phantoms use both: their held-out phantoms are generated apart, and a phantom dataset is not a
list of image files); every other adapter uses :class:`~maskkit.data.dataset.XrayDataset` and
:func:`~maskkit.data.build.split_by_patient`.

This module imports no torch: config validation reads the options models.
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from ..errors import MaskkitError, close_matches

ROLES = ("paired", "image_only", "auto")
Role = Literal["paired", "image_only", "auto"]


class DatasetOptionError(MaskkitError):
    """An adapter option that the adapter does not take, or whose value does not validate."""


def _hint(tp: Any) -> Any:
    """A type hint as pydantic should validate it: ``Iterable[X]`` / ``Sequence[X]`` become
    ``list[X]`` (pydantic's ``Iterable`` is a one-shot generator)."""
    origin = typing.get_origin(tp)
    if origin in (collections.abc.Iterable, collections.abc.Sequence, collections.abc.Collection):
        (arg,) = typing.get_args(tp) or (Any,)
        return list[_hint(arg)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        args = tuple(_hint(a) for a in typing.get_args(tp))
        return typing.Union[args]  # noqa: UP007
    return tp


def options_model(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    """A pydantic model of ``fn``'s keyword options (extra keys forbidden).

    A parameter without a type hint takes the type of its default (``Any`` when the default is
    None or absent); ``*args`` / ``**kwargs`` are not options.
    """
    try:
        hints = typing.get_type_hints(fn, include_extras=True)  # Annotated[int, Field(ge=1)] keeps its constraint
    except Exception:  # an unresolvable annotation: validate that parameter as Any
        hints = {}
    fields: dict[str, Any] = {}
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        default = ... if p.default is p.empty else p.default
        tp = hints.get(p.name)
        if tp is None:
            tp = type(default) if default not in (..., None) else Any
            if default is None:
                tp = Any
        fields[p.name] = (_hint(tp), default)
    return create_model(f"{name}_options", __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True), **fields)


def type_name(tp: Any) -> str:
    """A short readable form of a type hint: ``list[str] | None``, ``'error' | 'skip'``."""
    import types

    if tp is Any:
        return "any"
    if tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    return tp.__name__ if isinstance(tp, type) else str(tp)


@dataclass(frozen=True)
class DatasetAdapter:
    """One registered dataset.

    ``load(**options) -> Table``; ``role``: ``paired`` (image-report pairs), ``image_only`` or
    ``auto`` (decided by the records: paired when any has a report). ``split(records, seed)``
    returns (train, held-out) records (default: by patient, 10% held out); ``dataset(table,
    image_size, *, train, ner, tokenizer, data)`` builds the torch dataset (default: XrayDataset),
    a :class:`~maskkit.data.dataset.ReportDataset` (its ``ids`` and ``drop_reports`` are what
    the corpus reads).
    """

    name: str
    load: Callable[..., Any]
    role: str
    description: str
    options: type[BaseModel]
    source: str = "maskkit"
    split: Callable[..., Any] | None = None
    dataset: Callable[..., Any] | None = None

    def takes(self, key: str) -> bool:
        return key in self.options.model_fields

    @property
    def reads_cache(self) -> bool:
        """Whether a prepared cache (``data.cache``, an entry's ``cache``) is read for this dataset:
        the default dataset reads one; an adapter that builds its own (the phantoms) reads none."""
        return self.dataset is None

    def validate(self, options: dict[str, Any], key_name: Callable[[str], str] | None = None) -> dict[str, Any]:
        """The options given, validated and coerced; raises :class:`DatasetOptionError` in one line
        naming the adapter and the key (``key_name(option)``: the key as the caller's config spells
        it, e.g. ``data.options.uncertain``); a value outside a ``Literal`` option's set names the
        value and the allowed ones."""
        def where(k: str) -> str:
            return f"{key_name(k)}: " if key_name else ""

        try:
            model = self.options.model_validate(options)
        except ValidationError as exc:
            e = exc.errors()[0]
            key = str(e["loc"][0]) if e["loc"] else "?"
            if e["type"] == "extra_forbidden":
                raise DatasetOptionError(
                    f"{where(key)}dataset '{self.name}' has no option '{key}'"
                    f"{close_matches(key, self.options.model_fields) or ''}; it takes {', '.join(self.options.model_fields)}") from None
            if e["type"] == "missing":
                raise DatasetOptionError(f"{where(key)}dataset '{self.name}' needs option '{key}'") from None
            got = e.get("input")
            if e["type"] == "literal_error":
                item = "".join(f"[{p}]" for p in e["loc"][1:] if isinstance(p, int))
                raise DatasetOptionError(f"{where(key)}dataset '{self.name}' option '{key}{item}': {got!r} is not one of "
                                         f"{e['ctx']['expected'].replace(' or ', ', ')}") from None
            raise DatasetOptionError(f"{where(key)}dataset '{self.name}' option '{key}': "
                                     f"{e['msg'].removeprefix('Value error, ')} (got {got!r})") from None
        return {k: getattr(model, k) for k in model.model_fields_set}

    def __call__(self, **options: Any):
        """Validate ``options`` and run the adapter (a :class:`~maskkit.data.records.Table`)."""
        return self.load(**self.validate(options))

    def option_rows(self) -> list[dict[str, str]]:
        """Each option: name, type, default (``required`` when it has none) and constraints
        (:func:`maskkit.options.constraints`: ``[0, inf)``; ``''`` when none)."""
        from ..options import constraints, field_default

        rows = []
        for k, f in self.options.model_fields.items():
            default = "required" if f.is_required() else repr(field_default(f))
            rows.append({"option": k, "type": type_name(f.annotation), "default": default,
                         "constraints": constraints(self.options, k)})
        return rows


def make_adapter(name: str, load: Callable[..., Any], role: str = "auto", description: str | None = None,
                 source: str = "maskkit", split: Callable | None = None, dataset: Callable | None = None) -> DatasetAdapter:
    """A :class:`DatasetAdapter` with its options model derived from ``load``'s signature."""
    if not isinstance(name, str) or not name:
        raise MaskkitError(f"plugin '{source}' registered a dataset without a string name")
    if role not in ROLES:
        raise MaskkitError(f"dataset '{name}' (plugin '{source}'): role '{role}' is not one of {', '.join(ROLES)}")
    if not callable(load):
        raise MaskkitError(f"dataset '{name}' (plugin '{source}'): {load!r} is not a function")
    doc = description if description is not None else " ".join((inspect.getdoc(load) or "").split("\n\n")[0].split())
    return DatasetAdapter(name, load, role, doc, options_model(load, name), source, split, dataset)


def get_adapter(name: str) -> DatasetAdapter:
    """The adapter registered as ``name``; an unknown name is one line naming the registered ones."""
    from ..plugins import get_registry

    return get_registry().dataset(name)


def dataset_names() -> list[str]:
    """Every registered dataset name, sorted."""
    from ..plugins import get_registry

    return sorted(get_registry().datasets)
