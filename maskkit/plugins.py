"""The plugin manager and the registries it fills (lazily, on first use, never on import).

Built-ins are plugins like any other: ``maskkit.strategies``, ``maskkit.presets``, ``maskkit.datasets``,
``maskkit.evaluations`` and ``maskkit.terms`` implement
the hooks of :mod:`maskkit.hookspecs`; third-party packages add modules to the entry-point group
``maskkit``. ``MASKKIT_DISABLE_PLUGINS=1`` (or ``all`` / ``*``) loads no third-party plugin; a
comma-separated list skips the named entry points or distributions. ``MASKKIT_LOAD_PLUGINS``,
when set, is the opposite: only the listed distributions or entry points load (empty: none).

One failing plugin never takes the host down: a plugin that cannot be imported, or whose
registration hook raises (a bad ``requires``, any exception), is skipped as a whole - its partial
registrations are undone - recorded in ``Registry.failed_plugins`` and reported once on stderr in
one line. Built-ins go through exactly the same path.

Name collisions (``Registry.claim``, one rule for every kind of registered item): built-ins
register first, in ``BUILTIN_PLUGINS`` order, then third-party plugins sorted by their
``dist:entry-point`` name, whatever ``tryfirst`` / ``trylast`` their hooks ask for. A built-in
keeps every name it registers: a third-party item with a built-in's name is skipped with one line
(the rest of that plugin registers). Two third-party plugins registering one name are both
refused that name (one line each; ``Registry.conflicts``): which one would win is not the user's
choice, and a name whose meaning changes with what else is installed would change runs silently.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError, UnknownNameError, close_matches

ENTRY_POINT_GROUP = "maskkit"
BUILTIN_PLUGINS = ("maskkit.strategies", "maskkit.presets", "maskkit.datasets", "maskkit.evaluations", "maskkit.terms")


@dataclass
class Preset:
    name: str
    config: dict[str, Any]
    description: str
    source: str


@dataclass
class Registry:
    """Everything plugins registered: strategies and presets by name, each with its source."""

    strategies: dict[str, type] = field(default_factory=dict)
    strategy_sources: dict[str, str] = field(default_factory=dict)
    presets: dict[str, Preset] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)  # name -> maskkit.data.adapters.DatasetAdapter
    evaluations: dict[str, Any] = field(default_factory=dict)  # name -> maskkit.eval.contract.Evaluation
    terms: dict[str, Any] = field(default_factory=dict)  # name -> maskkit.terms.Term (built-ins first)
    failed_plugins: dict[str, str] = field(default_factory=dict)
    #: the sources whose names no third-party plugin can take (``claim``)
    builtin: frozenset[str] = field(default_factory=lambda: frozenset(BUILTIN_PLUGINS))
    #: (kind, name) -> the source holding it, for every kind (strategy, preset, ...)
    holders: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (kind, name) -> the third-party sources that registered it; none of them holds it
    conflicts: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    #: one line per third-party item skipped by the collision rule (also printed once on stderr)
    skipped: list[str] = field(default_factory=list)

    def claim(self, kind: str, name: str, source: str) -> bool:
        """Whether ``source`` may register ``name`` of ``kind`` (the module's collision rule).

        True: the name is now held by ``source``. False: the item is skipped, with one line in
        ``skipped`` (a built-in holds the name; or another third-party plugin registered it too,
        whose item is then removed as well). Raises :class:`PluginError` when two built-ins
        register one name (a maskkit bug).
        """
        key = (kind, name)
        if key in self.conflicts:
            self.conflicts[key].append(source)
            self._skip(f"plugin '{source}' registers {kind} '{name}', which {_quoted(self.conflicts[key][:-1])} "
                       f"also register; the name is refused to all of them")
            return False
        held = self.holders.get(key)
        if held is None:
            self.holders[key] = source
            return True
        if held in self.builtin and source in self.builtin:
            raise PluginError(f"{kind} '{name}' is registered twice: by '{held}' and by '{source}'")
        if held in self.builtin:
            self._skip(f"plugin '{source}' registers {kind} '{name}', a built-in name; its {kind} is skipped")
            return False
        if held == source:
            raise PluginError(f"{kind} '{name}' is registered twice by '{source}'")
        if source in self.builtin:  # only when a caller registered a third party before the built-ins
            self._skip(f"plugin '{held}' registers {kind} '{name}', a built-in name; its {kind} is skipped")
            self._drop(kind, name)
            self.holders[key] = source
            return True
        self._drop(kind, name)
        self.conflicts[key] = [held, source]
        self._skip(f"plugins '{held}' and '{source}' both register {kind} '{name}'; the name is refused to both "
                   f"(disable one with MASKKIT_DISABLE_PLUGINS)")
        return False

    def _skip(self, line: str) -> None:
        self.skipped.append(line)
        _note(line)

    def _drop(self, kind: str, name: str) -> None:
        """Remove the registered item ``name`` of ``kind`` (and who held it)."""
        self.holders.pop((kind, name), None)
        if kind == "strategy":
            self.strategies.pop(name, None)
            self.strategy_sources.pop(name, None)
        elif kind == "preset":
            self.presets.pop(name, None)
        elif kind == "dataset":
            self.datasets.pop(name, None)
        elif kind == "evaluation":
            self.evaluations.pop(name, None)
        elif kind == "term":
            self.terms.pop(name, None)

    def add_strategy(self, cls: type, source: str) -> None:
        from .core import MaskStrategy, check_declarations

        if not (isinstance(cls, type) and issubclass(cls, MaskStrategy)):
            raise PluginError(f"plugin '{source}' registered {cls!r}, which is not a MaskStrategy subclass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{source}' registered {cls.__qualname__} without a string 'name'")
        check_declarations(cls, source)
        if not self.claim("strategy", name, source):
            return
        self.strategies[name] = cls
        self.strategy_sources[name] = source

    def add_preset(self, name: str, config: dict[str, Any], description: str, source: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{source}' registered a preset named {name!r}; expected a non-empty string")
        if not self.claim("preset", name, source):
            return
        self.presets[name] = Preset(name, dict(config), description, source)

    def add_dataset(self, name: str, load, source: str, **kw: Any) -> None:
        """A dataset adapter (:func:`maskkit.data.adapters.make_adapter`: its options model from ``load``)."""
        from .data.adapters import make_adapter

        adapter = make_adapter(name, load, source=source, **kw)  # a bad registration fails before it claims the name
        if not self.claim("dataset", name, source):
            return
        self.datasets[name] = adapter

    def add_evaluation(self, name: str, evaluate, source: str, **kw: Any) -> None:
        """An evaluation (:func:`maskkit.eval.contract.make_evaluation`: checked before it claims the name)."""
        from .eval.contract import make_evaluation

        ev = make_evaluation(name, evaluate, source, **kw)
        if not self.claim("evaluation", name, source):
            return
        self.evaluations[name] = ev

    def add_term(self, term: Any, source: str) -> None:
        """A loss term (:class:`maskkit.terms.Term`): its name a config key (an identifier), its
        default weight in [0, 1000], its objective a ``"module:Class"`` path or a class; checked
        before it claims the name (its module is imported only when objectives are built)."""
        from .terms import Term

        if not isinstance(term, Term):
            raise PluginError(f"plugin '{source}' registered {term!r} as a term; expected a maskkit.terms.Term")
        if not term.name.isidentifier():
            raise PluginError(f"plugin '{source}' registered a term named {term.name!r}; expected an identifier "
                              f"(it is the config key objectives.<name>)")
        if not (isinstance(term.default_weight, (int, float)) and 0 <= term.default_weight <= 1000):
            raise PluginError(f"plugin '{source}': term '{term.name}' default_weight {term.default_weight!r}; "
                              f"expected a number in [0, 1000]")
        if not (isinstance(term.objective, type) or (isinstance(term.objective, str) and ":" in term.objective)):
            raise PluginError(f"plugin '{source}': term '{term.name}' objective {term.objective!r}; expected "
                              f"'module:Class' or an Objective subclass")
        if not self.claim("term", term.name, source):
            return
        self.terms[term.name] = term

    def remove_source(self, source: str) -> None:
        """Undo everything plugin ``source`` registered (after one of its hooks failed)."""
        for kind, name in [k for k, src in self.holders.items() if src == source]:
            self._drop(kind, name)

    def _refused(self, kind: str, name: str) -> None:
        """Raise the one line for a name two third-party plugins registered (``conflicts``)."""
        srcs = self.conflicts.get((kind, name))
        if srcs:
            raise UnknownNameError(f"{kind} '{name}' is registered by plugins {_quoted(srcs)} and refused to all of "
                                   f"them; keep one with MASKKIT_DISABLE_PLUGINS")

    def _lookup(self, kind: str, table: dict[str, Any], name: str) -> Any:
        """``table[name]``; else one line: refused to colliding plugins, or unknown (close matches, or every name)."""
        try:
            return table[name]
        except KeyError:
            self._refused(kind, name)
            raise UnknownNameError(
                f"unknown {kind} '{name}'{close_matches(name, table) or '; registered: ' + ', '.join(sorted(table))}"
            ) from None

    def strategy(self, name: str) -> type:
        return self._lookup("strategy", self.strategies, name)

    def dataset(self, name: str):
        """The :class:`~maskkit.data.adapters.DatasetAdapter` registered as ``name``."""
        return self._lookup("dataset", self.datasets, name)

    def preset(self, name: str) -> Preset:
        return self._lookup("preset", self.presets, name)

    def evaluation(self, name: str):
        """The :class:`~maskkit.eval.contract.Evaluation` registered as ``name``."""
        return self._lookup("evaluation", self.evaluations, name)


_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_partial: dict[str, Registry] = {}  # kind -> a registry of that kind's hook alone (get_registry(kind))
_failed: dict[str, str] = {}


def _disabled() -> tuple[bool, set[str]]:
    raw = os.environ.get("MASKKIT_DISABLE_PLUGINS", "").strip()
    if raw.lower() in ("1", "all", "*", "true", "yes"):
        return True, set()
    return False, {p.strip() for p in raw.split(",") if p.strip()}


def _allowed() -> set[str] | None:
    """``MASKKIT_LOAD_PLUGINS``: the only distributions / entry points to load (None: unset, all)."""
    raw = os.environ.get("MASKKIT_LOAD_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, the whole message kept (newlines folded to spaces)."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _quoted(names) -> str:
    return " and ".join(f"'{n}'" for n in names)


_noted: set[str] = set()


def _note(line: str) -> None:
    """Print a collision line on stderr once per process."""
    if line not in _noted:
        _noted.add(line)
        print(f"maskkit: {line}", file=sys.stderr)


def _report(dist: str, why: str, what: str) -> None:
    if dist not in _failed:
        _failed[dist] = why
        print(f"maskkit: plugin '{dist}' {what} and is skipped ({why})", file=sys.stderr)


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    disable_all, skip = _disabled()
    if disable_all:
        return
    allow = _allowed()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else ep.value
        if ep.name in skip or dist in skip:
            continue
        if allow is not None and ep.name not in allow and dist not in allow:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            _report(dist, _one_line(exc), "failed to load")
            continue
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=f"{dist}:{ep.name}")


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager: built-ins first, then entry points of group 'maskkit'."""
    global _pm
    with _lock:
        if _pm is None:
            pm = pluggy.PluginManager("maskkit")
            pm.add_hookspecs(hookspecs)
            for modname in BUILTIN_PLUGINS:
                pm.register(importlib.import_module(modname), name=modname)
            _load_entry_points(pm)
            _pm = pm
        return _pm


HOOKS = ("register_strategies", "register_presets", "register_datasets", "register_evaluations", "register_terms")
#: the kind of item each hook registers (``get_registry(kind)``)
KINDS = {"strategy": "register_strategies", "preset": "register_presets", "dataset": "register_datasets",
         "evaluation": "register_evaluations", "term": "register_terms"}


def build_registry(pm: pluggy.PluginManager | None = None, hooks: tuple[str, ...] = HOOKS) -> Registry:
    """Call every plugin's ``hooks`` (default: all) with a ``register`` callback that records the
    plugin as source.

    A plugin's hooks run as one unit: if any of them raises, everything that plugin registered
    is undone and it is recorded in ``failed_plugins`` (the others, built-ins included, stay).
    Plugins run built-ins first (``BUILTIN_PLUGINS`` order), then the others sorted by name, so
    a hook's ``tryfirst`` / ``trylast`` never decides who holds a name (``Registry.claim``).
    """
    pm = pm or get_plugin_manager()
    reg = Registry()
    impls: dict[str, dict[str, Any]] = {}  # plugin name -> hook name -> impl
    for hook in hooks:
        for impl in getattr(pm.hook, hook).get_hookimpls():
            impls.setdefault(impl.plugin_name, {})[hook] = impl
    builtin_order = {name: i for i, name in enumerate(BUILTIN_PLUGINS)}
    order = sorted(impls, key=lambda src: (0, builtin_order[src], "") if src in reg.builtin else (1, 0, src))
    for source in order:
        mine = impls[source]
        calls = {
            "register_strategies": lambda cls, _src=source: reg.add_strategy(cls, _src),
            "register_presets": lambda name, config, description="", _src=source: reg.add_preset(
                name, config, description, _src),
            "register_datasets": lambda name, load, _src=source, **kw: reg.add_dataset(name, load, _src, **kw),
            "register_evaluations": lambda name, evaluate, _src=source, **kw: reg.add_evaluation(name, evaluate, _src, **kw),
            "register_terms": lambda term, _src=source: reg.add_term(term, _src),
        }
        for hook in HOOKS:
            if hook not in mine:
                continue
            try:
                mine[hook].function(register=calls[hook])
            except Exception as exc:  # one failing plugin never takes the host down
                reg.remove_source(source)
                _report(source.split(":")[0], _one_line(exc), f"failed in {hook}")
                break
    reg.failed_plugins = dict(_failed)
    return reg


def get_registry(kind: str | None = None) -> Registry:
    """The registry, built on first use and cached.

    ``kind`` (a key of :data:`KINDS`): a caller that needs one kind of item only gets, until the
    whole registry is built, one built from that kind's hook alone (cached too). ``maskkit eval
    --help`` lists the evaluations this way without calling any plugin's ``register_strategies``,
    whose classes subclass the torch-based ``MaskStrategy``: the built-ins answer without torch
    (a plugin that imports torch when it is imported still brings it). The one difference: a plugin
    one of whose *other* hooks raises is undone whole in the full registry, not in this one; run
    anything through the full registry (``maskkit eval NAME RUN`` does).
    """
    global _registry
    if _registry is not None:
        return _registry
    if kind is not None:
        if kind not in KINDS:
            raise ValueError(f"get_registry(kind={kind!r}): expected one of {', '.join(KINDS)}")
        if kind not in _partial:
            reg = build_registry(hooks=(KINDS[kind],))
            with _lock:
                _partial.setdefault(kind, reg)
        return _partial[kind]
    reg = build_registry()
    with _lock:
        if _registry is None:
            _registry = reg
    return _registry


def reset() -> None:
    """Forget the plugin manager and registry (tests; after installing a plugin at run time)."""
    global _pm, _registry
    with _lock:
        _pm = None
        _registry = None
        _partial.clear()
        _failed.clear()
        _noted.clear()


def get_strategy(name: str) -> type:
    """The strategy class registered as ``name``."""
    return get_registry().strategy(name)


def get_evaluation(name: str):
    """The :class:`~maskkit.eval.contract.Evaluation` registered as ``name``."""
    return get_registry().evaluation(name)


def list_strategies(pattern: str = "*", modality: str | None = None) -> list[str]:
    """Sorted names of registered strategies matching a shell-style wildcard ``pattern``.

    ``modality`` keeps the strategies that can mask that modality (their class declaration:
    ``random`` and the composites declare both).
    """
    from .core import declared_modalities

    reg = get_registry()
    return sorted(
        n for n, cls in reg.strategies.items()
        if fnmatch.fnmatchcase(n, pattern) and (modality is None or modality in declared_modalities(cls))
    )
