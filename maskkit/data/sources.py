"""A run's corpus as a list of sources: ``data.sources``, or the single-source form ``data=NAME``.

Each source is a registered dataset adapter with its own options, a role and a sampling weight.
:func:`source_specs` turns ``cfg.data`` into validated :class:`SourceSpec` s (config validation
calls it, so a bad option fails before anything is read); :mod:`maskkit.data.build` reads them.
This module imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import MaskkitError

#: keys of a ``data.sources`` entry that are not adapter options
ENTRY_KEYS = ("name", "role", "weight", "cache", "options")
#: keys of the single-source form passed to the adapter when its options model declares them
SINGLE_SOURCE_KEYS = ("root", "path", "n", "val_n", "p_unpaired", "seed")


class SourceError(MaskkitError):
    """A ``data.sources`` entry (or ``data.*`` single source) that does not validate."""


@dataclass(frozen=True)
class SourceSpec:
    """One validated source: adapter name, role as configured, weight, adapter options, cache."""

    index: int
    name: str
    role: str
    weight: float
    options: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None
    where: str = "data"

    @property
    def label(self) -> str:
        """How messages name this source: ``data.sources[1] (padchest)`` or ``data (mimic)``."""
        return f"{self.where} ({self.name})"

    def describe(self) -> str:
        """``mimic root=/data/mimic`` : the adapter and the options that locate its data."""
        where = " ".join(f"{k}={v}" for k, v in self.options.items() if k in ("root", "path"))
        return f"{self.name} {where}".strip()


def _adapter(name: Any, where: str):
    from ..errors import UnknownNameError
    from .adapters import get_adapter

    if not isinstance(name, str):
        raise SourceError(f"{where}.name: expected a dataset name, got {name!r}")
    try:
        return get_adapter(name)
    except UnknownNameError as exc:
        raise SourceError(f"{where}: {exc}" + ("" if "registered:" in str(exc) else "; `maskkit datasets` lists them")) from None


def _entry_spec(i: int, entry: Any) -> SourceSpec:
    where = f"data.sources[{i}]"
    if not isinstance(entry, dict):
        raise SourceError(f"{where}: expected a mapping such as {{name: mimic, root: /data/mimic, weight: 1.0}}, got {entry!r}")
    if "name" not in entry:
        raise SourceError(f"{where}: no 'name' (the dataset adapter; `maskkit datasets` lists them)")
    name = entry["name"]
    adapter = _adapter(name, where)
    label = f"{where} ({name})"
    role = entry.get("role", "auto")
    from .adapters import ROLES

    if role not in ROLES:
        raise SourceError(f"{label}.role: '{role}' is not a role; expected one of {', '.join(ROLES)}")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 or weight == float("inf"):
        raise SourceError(f"{label}.weight: expected a finite number >= 0, got {weight!r}")
    options = entry.get("options", {}) or {}
    if not isinstance(options, dict):
        raise SourceError(f"{label}.options: expected a mapping of adapter options, got {options!r}")
    opts = dict(options)
    for k, v in entry.items():
        if k in ENTRY_KEYS:
            continue
        if k in opts:
            raise SourceError(f"{label}: '{k}' is given both at the top level and in options")
        opts[k] = v
    cache = entry.get("cache")
    if cache is not None and not isinstance(cache, str):
        raise SourceError(f"{label}.cache: expected a folder path, got {cache!r}")
    opts = adapter.validate(opts, key_name=lambda k: label)
    return SourceSpec(i, name, role, float(weight), opts, cache, where)


def source_specs(d) -> list[SourceSpec]:
    """The validated sources of a :class:`~maskkit.config.DataConfig`; one-line errors.

    ``data.sources`` (a list of entries ``{name, role, weight, cache, options, ...options}``) when
    given, else the single source ``data.name`` with ``data.options`` and those of ``data.root``,
    ``data.path``, ``data.n``, ``data.val_n``, ``data.p_unpaired``, ``data.seed`` that its adapter
    takes (``root`` / ``path`` given to an adapter that takes neither is an error).
    """
    if d.sources:
        if d.name != type(d).model_fields["name"].default:
            raise SourceError(f"data.name={d.name} and data.sources: give one (a data.sources entry names its dataset)")
        if d.root is not None or d.path is not None or d.options:
            raise SourceError("data.sources: give each source its own root/path/options; "
                              "data.root, data.path and data.options are for the single-source form")
        specs = [_entry_spec(i, e) for i, e in enumerate(d.sources)]
        if not any(s.weight > 0 for s in specs):
            raise SourceError("data.sources: every weight is 0; at least one source must be sampled")
        return specs
    adapter = _adapter(d.name, "data")
    opts = dict(d.options)
    for k in SINGLE_SOURCE_KEYS:
        v = getattr(d, k)
        if not adapter.takes(k):
            if k in ("root", "path") and v is not None:
                takes = [t for t in ("root", "path") if adapter.takes(t)]
                raise SourceError(f"data.{k}: dataset '{d.name}' takes no {k}"
                                  + (f"; set data.{takes[0]}" if takes else ""))
            continue
        if k in ("root", "path") and v is None:
            continue
        if k in opts:
            raise SourceError(f"data.options.{k}: set data.{k} instead")
        opts[k] = v

    def key_name(k: str) -> str:
        return f"data.{k}" if k in SINGLE_SOURCE_KEYS else "data.options"

    opts = adapter.validate(opts, key_name=key_name)
    return [SourceSpec(0, d.name, "auto", 1.0, opts, d.cache, "data")]
