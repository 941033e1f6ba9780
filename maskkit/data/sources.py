"""A run's corpus as a list of sources: ``data.sources``, or the single-source form ``data=NAME``.

Each source is a registered dataset adapter with its own options, a role and a sampling weight.
:func:`source_specs` turns ``cfg.data`` into validated :class:`SourceSpec` s (config validation
calls it, so a bad option fails before anything is read); :mod:`maskkit.data.build` reads them.
This module imports no torch.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..errors import MaskkitError, close_matches
from .records import DATA_OPTION_KEYS, OptionError, single_source_key

#: keys of a ``data.sources`` entry that are not adapter options
ENTRY_KEYS = ("name", "role", "weight", "cache", "options")
#: keys of the single-source form passed to the adapter when its options model declares them
SINGLE_SOURCE_KEYS = DATA_OPTION_KEYS


class SourceError(MaskkitError):
    """A ``data.sources`` entry (or ``data.*`` single source) that does not validate."""


@dataclass(frozen=True)
class SourceSpec:
    """One validated source: adapter name, role as configured, weight, adapter options, cache.

    ``where`` is how the config spells the source: ``data`` (the single-source form),
    ``data.sources[1]`` (an entry) or ``--option`` (``maskkit prepare``); ``nested`` the options an
    entry gave under ``options:``. :meth:`key` spells one of its keys the way the user set it, and
    every error about the source names its key that way.
    """

    index: int
    name: str
    role: str
    weight: float
    options: dict[str, Any] = field(default_factory=dict)
    cache: str | None = None
    where: str = "data"
    nested: frozenset = frozenset()

    @property
    def label(self) -> str:
        """How messages name this source: ``data.sources[1] (padchest)``, ``data (mimic)`` or
        (``maskkit prepare``) ``dataset 'mimic'``."""
        return f"dataset '{self.name}'" if self.where == "--option" else f"{self.where} ({self.name})"

    def key(self, option: str) -> str:
        """The config key of one of this source's settings, as the user spells it:
        ``data.sources[1] (padchest).root``, ``data.sources[0] (csv).options.uncertain``,
        ``data.root``, ``data.options.uncertain``, ``--option root``."""
        if self.where == "data":
            return single_source_key(option)
        if self.where == "--option":
            return f"--option {option}"
        return f"{self.label}.{'options.' if option in self.nested else ''}{option}"

    def describe(self) -> str:
        """``mimic root=/data/mimic`` : the adapter and the options that locate its data."""
        where = " ".join(f"{k}={v}" for k, v in self.options.items() if k in ("root", "path"))
        return f"{self.name} {where}".strip()

    @contextmanager
    def errors(self):
        """Errors raised while this source's data is read or its datasets built name it: an
        :class:`~maskkit.data.records.OptionError` spells its key with :meth:`key`; any other one-line
        error of an entry of ``data.sources`` is prefixed with :attr:`label` (which source)."""
        try:
            yield
        except OptionError as exc:
            raise OptionError(exc.option, exc.named(self.key)) from None
        except MaskkitError as exc:
            if self.where.startswith("data.sources") and not str(exc).startswith(self.label):
                exc.args = (f"{self.label}: {exc}", *exc.args[1:])
            raise

    def load(self):
        """This source's :class:`~maskkit.data.records.Table`: the adapter run on its options, every
        label value checked (:func:`~maskkit.data.records.check_label_values`); one-line errors naming
        the source's keys (:meth:`errors`), and one when the table is empty. The optional columns
        the file lacked are kept as ``table.absent`` (:func:`~maskkit.data.records.absent_columns`)."""
        from .adapters import get_adapter
        from .records import absent_columns, check_label_values, count_missing_patients, drop_duplicate_images, naming_source

        with self.errors(), absent_columns() as absent, naming_source(self.label, self.key):
            table = get_adapter(self.name).load(**self.options)
            check_label_values(table, self.name)
        table.absent = list(absent)  # a default column the file lacked (patient_id): said when the data is built
        drop_duplicate_images(table)  # one image listed twice is sampled once (A67): said when the data is built
        count_missing_patients(table)  # blank patient ids where others have one: said when the data is built
        if not len(table):
            raise MaskkitError(f"{self.label}: {self.describe()} has no records (after filters)")
        return table


def _adapter(name: Any, where: str, key: str):
    from ..errors import UnknownNameError
    from .adapters import get_adapter

    if not isinstance(name, str):
        raise SourceError(f"{key}: expected a dataset name, got {name!r}")
    try:
        return get_adapter(name)
    except UnknownNameError as exc:
        raise SourceError(f"{where}: {exc}" + ("" if "registered:" in str(exc) else "; `maskkit datasets` lists them")) from None


def _entry_spec(i: int, entry: Any) -> SourceSpec:
    where = f"data.sources[{i}]"
    if not isinstance(entry, dict):
        raise SourceError(f"{where}: expected a mapping such as {{name: mimic, root: /data/mimic, weight: 1.0}}, got {entry!r}")
    if "name" not in entry:
        import difflib

        near = difflib.get_close_matches("name", [str(k) for k in entry], n=1, cutoff=0.5)
        raise SourceError(f"{where}: no 'name' (the dataset adapter; `maskkit datasets` lists them)"
                          + (f"; is '{near[0]}' a misspelling of it?" if near else ""))
    name = entry["name"]
    label = f"{where} ({name})"
    adapter = _adapter(name, f"{label}.name", f"{label}.name")
    takes = list(adapter.options.model_fields)
    valid = [*ENTRY_KEYS, *takes]
    for k in entry:
        if k not in ENTRY_KEYS and k not in takes:
            raise SourceError(f"{label}.{k}: not a key of a source entry nor an option of dataset '{name}'"
                              f"{close_matches(str(k), valid) or ''}; an entry takes {', '.join(ENTRY_KEYS)} and the "
                              f"dataset's options: {', '.join(takes) or 'none'}")
    role = entry.get("role", "auto")
    from .adapters import ROLES

    if role not in ROLES:
        raise SourceError(f"{label}.role: '{role}' is not a role{close_matches(str(role), ROLES) or ''}; "
                          f"expected one of {', '.join(ROLES)}")
    weight = entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0 or weight == float("inf"):
        raise SourceError(f"{label}.weight: expected a finite number >= 0, got {weight!r}")
    options = entry.get("options", {}) or {}
    if not isinstance(options, dict):
        raise SourceError(f"{label}.options: expected a mapping of adapter options, got {options!r}")
    for k in options:
        if k in ENTRY_KEYS:
            raise SourceError(f"{label}.options.{k}: '{k}' is a key of the entry, not an adapter option; set it beside name")
    opts = dict(options)
    for k, v in entry.items():
        if k in ENTRY_KEYS:
            continue
        if k in opts:
            raise SourceError(f"{label}.{k}: given both here and as {label}.options.{k}; give one")
        opts[k] = v
    cache = entry.get("cache")
    if cache is not None and not isinstance(cache, str):
        raise SourceError(f"{label}.cache: expected a folder path, got {cache!r}")
    if cache is not None and not adapter.reads_cache:
        raise SourceError(f"{label}.cache: {_no_cache(name)}")
    spec = SourceSpec(i, name, role, float(weight), {}, cache, where, frozenset(options))
    opts = adapter.validate(opts, key_name=spec.key)
    return dataclasses.replace(spec, options=opts)


def source_specs(d) -> list[SourceSpec]:
    """The validated sources of a :class:`~maskkit.config.DataConfig`; one-line errors.

    ``data.sources`` (a list of entries ``{name, role, weight, cache, options, ...options}``) when
    given, else the single source ``data.name`` with ``data.options`` and those of ``data.root``,
    ``data.path``, ``data.n``, ``data.val_n``, ``data.p_unpaired``, ``data.seed`` that its adapter
    takes (``root`` / ``path`` given to an adapter that takes neither is an error). Every error
    names the key as the user set it (:meth:`SourceSpec.key`): ``data.sources[1] (padchest).root``,
    ``data.options.uncertain``.
    """
    if d.sources:
        if d.name != type(d).model_fields["name"].default:
            raise SourceError(f"data.name={d.name} and data.sources: give one (a data.sources entry names its dataset)")
        if d.root is not None or d.path is not None or d.options or d.cache is not None:
            raise SourceError("data.sources: give each source its own root/path/options/cache; "
                              "data.root, data.path, data.options and data.cache are for the single-source form")
        specs = [_entry_spec(i, e) for i, e in enumerate(d.sources)]
        if not any(s.weight > 0 for s in specs):
            raise SourceError("data.sources: every weight is 0; at least one source must be sampled")
        return specs
    adapter = _adapter(d.name, "data", "data.name")
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
    if d.cache is not None and not adapter.reads_cache:
        raise SourceError(f"data.cache: {_no_cache(d.name)}")
    spec = SourceSpec(0, d.name, "auto", 1.0, {}, d.cache, "data")
    return [dataclasses.replace(spec, options=adapter.validate(opts, key_name=spec.key))]


def _no_cache(name: str) -> str:
    return f"dataset '{name}' builds its own images and reads no prepared cache; remove the key"


def unread_data_keys(d) -> dict[str, str]:
    """The ``data.*`` keys that nothing reads with this :class:`~maskkit.config.DataConfig`, each
    with why: with ``data.sources``, the single-source keys (``data.name``, ``root``, ``path``,
    ``options``, ``cache``, ``n``, ``val_n``, ``p_unpaired``, ``seed``); in the single-source form, the
    ``data.n`` / ``val_n`` / ``p_unpaired`` / ``seed`` (and ``root`` / ``path``) that its adapter does
    not take, and ``data.cache`` when it reads no cache; ``data.decode_policy`` and
    ``data.max_skip_fraction`` when no source decodes image files (the phantoms draw theirs), and
    ``data.ner_model`` unless ``data.ner=scispacy``. :func:`maskkit.config.resolve` refuses
    such a key that a user set (command line, config file) and ``maskkit config show`` leaves
    them out."""
    from .adapters import get_adapter

    out = {}
    if d.ner != "scispacy":
        out["data.ner_model"] = f"only data.ner=scispacy reads a model (data.ner is {d.ner})"
    if d.sources:
        why = "not read when data.sources is given (each entry names its dataset and sets its own options)"
        names = [e.get("name") for e in d.sources if isinstance(e, dict)]
        out |= {f"data.{k}": why for k in ("name", "root", "path", "options", "cache", *SINGLE_SOURCE_KEYS)}
    else:
        names = [d.name]
        adapter = get_adapter(d.name)
        takes = list(adapter.options.model_fields)
        out |= {f"data.{k}": f"dataset '{d.name}' takes no option '{k}' (it takes {', '.join(takes) or 'none'})"
                for k in SINGLE_SOURCE_KEYS if not adapter.takes(k)}
        if not adapter.reads_cache:
            out["data.cache"] = _no_cache(d.name)
    if not any(get_adapter(n).reads_cache for n in names):  # no image file is decoded (the phantoms are drawn)
        one = len(set(names)) == 1
        why = (f"no image file is decoded (dataset{'' if one else 's'} {', '.join(repr(n) for n in sorted(set(names)))} "
               f"build{'s its' if one else ' their'} own images)")
        out |= {"data.decode_policy": why, "data.max_skip_fraction": why}
    return out


def option_spec(name: str, options: dict[str, Any]) -> SourceSpec:
    """The source ``maskkit prepare NAME --option k=v ...`` reads: its errors name ``--option k``."""
    adapter = _adapter(name, "prepare", "prepare")
    spec = SourceSpec(0, name, "auto", 1.0, {}, None, "--option")
    return dataclasses.replace(spec, options=adapter.validate(options, key_name=spec.key))
