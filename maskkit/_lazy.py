"""PEP 562 lazy public names: a package's ``__getattr__`` / ``__dir__`` that import a name's
submodule on first use (``import maskkit`` and ``import maskkit.model`` import no torch)."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str], namespace: dict) -> tuple[Callable, Callable]:
    """(``__getattr__``, ``__dir__``) of ``package`` whose public names ``exports`` map to the
    submodule defining each; a resolved name is cached in ``namespace`` (the package's globals)."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
