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
