"""The plugin manager and the registries it fills (lazily, on first use, never on import).

Built-ins are plugins like any other: ``maskkit.strategies`` and ``maskkit.presets`` implement
the hooks of :mod:`maskkit.hookspecs`; third-party packages add modules to the entry-point group
``maskkit``. ``MASKKIT_DISABLE_PLUGINS=1`` (or ``all`` / ``*``) loads no third-party plugin; a
comma-separated list skips the named entry points or distributions.
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
BUILTIN_PLUGINS = ("maskkit.strategies", "maskkit.presets")


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
    failed_plugins: dict[str, str] = field(default_factory=dict)

    def add_strategy(self, cls: type, source: str) -> None:
        from .core import MaskStrategy

        if not (isinstance(cls, type) and issubclass(cls, MaskStrategy)):
            raise PluginError(f"plugin '{source}' registered {cls!r}, which is not a MaskStrategy subclass")
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin '{source}' registered {cls.__qualname__} without a string 'name'")
        if name in self.strategies:
            raise PluginError(
                f"strategy '{name}' is registered twice: by '{self.strategy_sources[name]}' "
                f"({self.strategies[name].__module__}.{self.strategies[name].__qualname__}) and by "
                f"'{source}' ({cls.__module__}.{cls.__qualname__})"
            )
        self.strategies[name] = cls
        self.strategy_sources[name] = source

    def add_preset(self, name: str, config: dict[str, Any], description: str, source: str) -> None:
        if name in self.presets:
            raise PluginError(f"preset '{name}' is registered twice: by '{self.presets[name].source}' and by '{source}'")
        self.presets[name] = Preset(name, dict(config), description, source)

    def strategy(self, name: str) -> type:
        try:
            return self.strategies[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown strategy '{name}'{close_matches(name, self.strategies) or '; registered: ' + ', '.join(sorted(self.strategies))}"
            ) from None

    def preset(self, name: str) -> Preset:
        try:
            return self.presets[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown preset '{name}'{close_matches(name, self.presets) or '; registered: ' + ', '.join(sorted(self.presets))}"
            ) from None


_lock = threading.Lock()
_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_failed: dict[str, str] = {}


def _disabled() -> tuple[bool, set[str]]:
    raw = os.environ.get("MASKKIT_DISABLE_PLUGINS", "").strip()
    if raw.lower() in ("1", "all", "*", "true", "yes"):
        return True, set()
    return False, {p.strip() for p in raw.split(",") if p.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    disable_all, skip = _disabled()
    if disable_all:
        return
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else ep.value
        if ep.name in skip or dist in skip:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            if dist not in _failed:
                _failed[dist] = f"{type(exc).__name__}: {exc}"
                print(f"maskkit: plugin '{dist}' failed to load and is skipped ({_failed[dist]})", file=sys.stderr)
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


def build_registry(pm: pluggy.PluginManager | None = None) -> Registry:
    """Call every plugin's hooks with a ``register`` callback that records the plugin as source."""
    pm = pm or get_plugin_manager()
    reg = Registry(failed_plugins=dict(_failed))
    for impl in pm.hook.register_strategies.get_hookimpls():
        impl.function(register=lambda cls, _src=impl.plugin_name: reg.add_strategy(cls, _src))
    for impl in pm.hook.register_presets.get_hookimpls():
        impl.function(
            register=lambda name, config, description="", _src=impl.plugin_name: reg.add_preset(
                name, config, description, _src
            )
        )
    return reg


def get_registry() -> Registry:
    """The registry, built on first use and cached."""
    global _registry
    if _registry is None:
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
        _failed.clear()


def get_strategy(name: str) -> type:
    """The strategy class registered as ``name``."""
    return get_registry().strategy(name)


def list_strategies(pattern: str = "*", modality: str | None = None) -> list[str]:
    """Sorted names of registered strategies matching a shell-style wildcard ``pattern``."""
    reg = get_registry()
    return sorted(
        n for n, cls in reg.strategies.items()
        if fnmatch.fnmatchcase(n, pattern) and (modality is None or cls.modality == modality)
    )
