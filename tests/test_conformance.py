"""Every registered strategy, built-in or plugin, passes the same conformance checks."""

from __future__ import annotations

import pytest
import torch

from maskkit import list_strategies
from maskkit.plugins import get_registry, reset
from maskkit.testing import check_strategy, only_plugins

#: the built-ins and the plugin this repository ships; another plugin installed in the
#: environment does not change what this suite tests (plugin authors run check_strategy themselves)
SHIPPED = ("maskkit-blockwise",)

with only_plugins(*SHIPPED):
    NAMES = list_strategies()


@pytest.fixture(autouse=True)
def _only_our_plugins(monkeypatch):
    monkeypatch.setenv("MASKKIT_LOAD_PLUGINS", ",".join(SHIPPED))
    reset()


def _spec(name):
    cls = get_registry().strategy(name)
    if cls.composite:  # composites are tested over children of both modalities
        return [{name: {"of": ["image_self", "random"]}}, {name: {"of": ["entity", {"random": {"modality": "text"}}]}},
                {name: {"of": ["entity", "causal"]}}]
    return [name]


@pytest.mark.parametrize("name", NAMES)
def test_conformance(name):
    for spec in _spec(name):
        check_strategy(spec)


@pytest.mark.parametrize("name", NAMES)
def test_conformance_on_cuda(name):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here; run on a GPU machine to check device placement")
    for spec in _spec(name):
        check_strategy(spec, device="cuda")


def test_every_builtin_is_registered():
    assert {"random", "image_self", "report_cross", "prompt_driven", "union", "entity", "causal", "intersect"} <= set(NAMES)
