"""Declarative strategy compositions: a strategy tree is data.

A node is a strategy name (``"image_self"``) or a one-key mapping from a name to its config
(``{"image_self": {"ratio": 0.7}}``); composites list their children under ``of``::

    {"union": {"of": ["report_cross", "prompt_driven", "image_self"], "child_ratio": 0.7, "ratio": 0.75}}

The same tree loads from YAML, TOML or JSON files and from pydantic models (their
``model_dump()``). Every node is validated against the registry; errors name the path in the
tree (``image_mask.union.of[1].prompt_driven.ratio``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .core import CompositeStrategy, MaskStrategy
from .errors import CompositionError, MaskkitError
from .plugins import get_registry


def _split(spec: Any, path: str) -> tuple[str, dict[str, Any]]:
    if isinstance(spec, BaseModel):
        spec = spec.model_dump(exclude_unset=True)
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            keys = ", ".join(map(str, spec)) or "nothing"
            raise CompositionError(f"{path}: expected one strategy name as the only key, got {keys}")
        (name, cfg), = spec.items()
        if cfg is None:
            cfg = {}
        if isinstance(cfg, BaseModel):
            cfg = cfg.model_dump(exclude_unset=True)
        if not isinstance(cfg, Mapping):
            raise CompositionError(f"{path}.{name}: expected a mapping of config keys, got {type(cfg).__name__} {cfg!r}")
        return str(name), dict(cfg)
    raise CompositionError(f"{path}: expected a strategy name or {{name: config}}, got {type(spec).__name__} {spec!r}")


def _pydantic_message(err: ValidationError, path: str) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"])
    where = f"{path}.{loc}" if loc else path
    got = e.get("input")
    got_s = "" if isinstance(got, Mapping) else f" (got {got!r})"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{where}: {msg}{got_s}"


def build_strategy(spec: Any, path: str = "strategy", *, defaults: Mapping[str, Any] | None = None) -> MaskStrategy:
    """Build (and validate) a strategy tree from its data form; see the module docstring."""
    if isinstance(spec, MaskStrategy):
        return spec
    name, cfg = _split(spec, path)
    here = f"{path}.{name}"
    try:
        cls = get_registry().strategy(name)
    except MaskkitError as exc:
        raise CompositionError(f"{path}: {exc}") from None
    if defaults:
        for key, value in defaults.items():
            if key in cls.Config.model_fields and key not in cfg:
                cfg[key] = value
    try:
        config = cls.Config(**cfg)
    except ValidationError as exc:
        raise CompositionError(_pydantic_message(exc, here)) from None
    if not issubclass(cls, CompositeStrategy):
        return cls(config)
    kids = config.of
    if not isinstance(kids, list) or not kids:
        raise CompositionError(f"{here}.of: expected a non-empty list of child strategies")
    children = [build_strategy(k, f"{here}.of[{i}]") for i, k in enumerate(kids)]
    child_defaults = cls.child_defaults(config)
    if child_defaults and all(c.output == "tokens" for c in children):
        # defaults such as union's child_ratio apply to token masks only
        children = [build_strategy(k, f"{here}.of[{i}]", defaults=child_defaults) for i, k in enumerate(kids)]
    try:
        return cls(config, children=children)
    except ValueError as exc:
        raise CompositionError(f"{here}: {exc}") from None


def to_spec(strategy: MaskStrategy) -> dict[str, Any]:
    """The data form of a built strategy (children expanded), the inverse of :func:`build_strategy`."""
    cfg = strategy.config.model_dump(mode="json")
    if isinstance(strategy, CompositeStrategy):
        cfg["of"] = [to_spec(c) for c in strategy.children]
    return {strategy.name: cfg}


#: the file formats of a composition (or a config file), by suffix
FORMATS: dict[str, str] = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".json": "JSON"}
COMPOSITION_SUFFIXES: tuple[str, ...] = tuple(FORMATS)


from .io import DuplicateKeyError, load_json, load_yaml  # noqa: E402 (the one YAML/JSON reader; light)


def _parse(fmt: str, text: str) -> Any:
    if fmt == "YAML":
        return load_yaml(text)
    if fmt == "TOML":
        import tomllib

        return tomllib.loads(text)  # TOML itself refuses a key defined twice
    return load_json(text)


def load_spec(path: str | Path) -> Any:
    """Read a composition from a ``.yaml``/``.yml``, ``.toml`` or ``.json`` file (:data:`FORMATS`).
    Raises :class:`CompositionError` (one line naming the file) when it is missing or does not parse."""
    p = Path(path)
    if not p.is_file():
        raise CompositionError(f"{p}: composition file does not exist")
    suffix = p.suffix.lower()
    if suffix not in FORMATS:
        raise CompositionError(f"{p}: unknown composition format '{suffix}'; expected {', '.join(FORMATS)}")
    from .io import read_text

    text = read_text(p)  # UTF-8 with or without a byte-order mark
    try:
        return _parse(FORMATS[suffix], text)
    except DuplicateKeyError as exc:
        raise CompositionError(f"{p}: {exc}") from None
    except Exception as exc:  # parse errors of any of the three formats
        raise CompositionError(f"{p}: cannot parse as {FORMATS[suffix]}: {str(exc).splitlines()[0]}") from None


def parse_spec(spec: str) -> tuple[Any, str] | None:
    """A composition as a command line gives it: ``(tree, where)`` for inline JSON (``{...}``,
    ``[...]``, ``"name"``; where = ``inline``) or a composition file (:data:`FORMATS`; where = the
    path); ``None`` for anything else, a strategy or preset name the caller looks up. Raises
    :class:`CompositionError` in one line for JSON that does not parse and files :func:`load_spec`
    cannot read."""
    if spec.lstrip().startswith(("{", "[", '"')):
        try:
            return load_json(spec), "inline"
        except DuplicateKeyError as exc:
            raise CompositionError(f"inline composition: {exc}") from None
        except json.JSONDecodeError as exc:
            raise CompositionError(f"inline composition is not valid JSON: {exc}") from None
    if Path(spec).suffix.lower() in FORMATS:
        return load_spec(spec), spec
    return None


def load_strategy(path: str | Path) -> MaskStrategy:
    """Build the strategy tree stored in a YAML, TOML or JSON file."""
    return build_strategy(load_spec(path), path=str(path))
