from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch):
    """Every test sees the registry as plugins installed now define it."""
    from maskkit import plugins

    monkeypatch.delenv("MASKKIT_DISABLE_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when it is absent (a user's checkout)."""
    p = SHARED.joinpath("data", *parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the project's ../shared data folder), absent in this checkout")
    return p
