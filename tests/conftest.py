from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# A suite started in the background by a non-interactive shell (`cmd &`, nohup) inherits SIGINT
# ignored, and so would every `maskkit run` the tests start: the tests that stop a run with SIGINT
# (Ctrl-C) need it delivered. The pytest process takes Python's own handler, so its children start
# with the default disposition; a test of inherited ignored signals sets them itself.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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
