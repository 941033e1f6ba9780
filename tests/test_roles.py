"""The strategy roles table (maskkit.roles): what each of an experiment's trees may hold, written once."""

import pytest

from maskkit.compose import build_strategy
from maskkit.roles import ROLE_BY_NAME, ROLE_NAMES, role_error


def test_every_reader_takes_its_roles_from_the_table():
    from maskkit.config import ExperimentConfig
    from maskkit.masking import STREAMS

    assert ROLE_NAMES == ("image_mask", "image_only_mask", "text_mask")
    assert STREAMS == ROLE_NAMES
    for name in ROLE_NAMES:
        assert ExperimentConfig.model_fields[name].description == ROLE_BY_NAME[name].description


@pytest.mark.parametrize("role, tree, why", [
    ("image_mask", {"union": {"of": ["report_cross", "image_self"]}}, None),
    ("image_only_mask", {"union": {"of": ["prompt_driven", "image_self"]}}, None),
    ("text_mask", {"intersect": {"of": ["entity", "causal"]}}, None),
    ("image_only_mask", {"union": {"of": ["report_cross", "image_self"]}},
     "image_only_mask: image-only samples have no report, but union needs report_tokens; "
     "use strategies such as prompt_driven and image_self"),
    ("text_mask", "image_self", "text_mask: expected a text strategy, got an image one (image_self)"),
    ("image_mask", "entity", "image_mask: expected an image strategy, got a text one (entity)"),
    ("text_mask", "entity", "text_mask: expected a text strategy giving an attention mask [B, T, T], "
                            "got one whose output is 'tokens' (entity)"),
])
def test_role_error_names_the_role_and_what_it_holds(role, tree, why):
    assert role_error(ROLE_BY_NAME[role], build_strategy(tree, role)) == why


def test_role_context_carries_only_what_the_role_sees():
    import torch

    from maskkit.masking import role_context

    t = torch.zeros(2, 4, 8)
    given = dict(image_tokens=t, report_tokens=t, report_valid=torch.ones(2, 4, dtype=torch.bool),
                 prompt_tokens=torch.zeros(3, 8), entities=torch.zeros(2, 4, dtype=torch.bool))
    only = role_context("image_only_mask", None, **given)
    assert only.image_tokens is t and only.prompt_tokens is not None
    assert only.report_tokens is None and only.report_valid is None and only.entities is None
    text = role_context("text_mask", None, **given)
    assert text.image_tokens is None and text.report_tokens is t and text.entities is not None
    full = role_context("image_mask", None, **given)
    assert all(getattr(full, k) is given[k] for k in given)


def test_a_tree_needing_an_input_its_role_lacks_is_one_line():
    from types import SimpleNamespace

    text_on_image = SimpleNamespace(name="peek", modality="text", output="attention",
                                    all_requires=frozenset({"report_valid", "image_tokens"}))
    assert role_error(ROLE_BY_NAME["text_mask"], text_on_image) == (
        "text_mask: peek needs image_tokens; this tree's context has report_tokens, report_valid, entities")


def test_reductions_are_written_once():
    import typing

    from maskkit.eval.masks import default_grid
    from maskkit.strategies._attention import REDUCTIONS, Reduction

    assert typing.get_args(Reduction) == REDUCTIONS
    assert {lab.split("[")[1].rstrip("]") for lab, _ in default_grid() if lab.startswith("report_cross [")} == set(REDUCTIONS)


def test_each_tree_is_built_once_per_run(monkeypatch):
    """resolve() builds each tree when the config validates; the model and config.json reuse it."""
    import maskkit.compose as compose
    from maskkit.config import resolve
    from maskkit.model import XLIP
    from maskkit.training.run_dir import resolved_record

    built = []
    real = compose._split  # every build of a tree's root goes through it, whoever imported build_strategy
    monkeypatch.setattr(compose, "_split", lambda spec, path: (built.append(path) if path in ROLE_NAMES else None)
                        or real(spec, path))
    cfg, sources = resolve(["preset=xlip", "runtime.evaluations=[]"])
    model = XLIP.from_experiment(cfg, weights=False)
    rec = resolved_record(cfg, sources)
    assert sorted(built) == sorted(ROLE_NAMES)  # xlip sets all three trees, each built once
    assert model.image_mask is cfg.strategy("image_mask") and rec["config"]["text_mask"]["intersect"]["of"][1] == {"causal": {}}
    copy = cfg.model_copy(update={"image_mask": "random"})  # a copy whose tree was replaced builds its own
    assert copy.strategy("image_mask").name == "random" and cfg.strategy("image_mask").name == "union"
