"""docs/strategies.md's generated reference: every built-in strategy and every key of its Config."""

import pytest

from maskkit.docgen import BEGIN, END, _equation, strategies_markdown, strategies_reference


def test_the_reference_names_every_builtin_strategy_and_key():
    from maskkit.plugins import get_registry
    from maskkit.testing import only_plugins

    ref = strategies_reference()
    with only_plugins():
        reg = get_registry()
        builtin = {n: c for n, c in reg.strategies.items() if reg.strategy_sources[n] == "maskkit.strategies"}
    assert len(builtin) >= 9
    for name, cls in builtin.items():
        assert f"### `{name}` keys" in ref
        section = ref.split(f"### `{name}` keys", 1)[1].split("###", 1)[0]
        for key in cls.Config.model_fields:
            assert f"| `{key}` |" in section, (name, key)


@pytest.mark.parametrize("description, ref", [
    ("Union of the children's masks (eq. 7), then a λ2 subset of it (eq. 8)", "eq. 7, 8"),
    ("Image self-attention (eq. 6): ...", "eq. 6"),
    ("PaDiM-style; not in the paper", "not in the paper"),
])
def test_equation_reference(description, ref):
    assert _equation(description) == ref


def test_only_the_generated_section_is_rewritten(tmp_path, monkeypatch):
    import maskkit.docgen as docgen

    (tmp_path / "strategies.md").write_text(f"# S\n\nprose before\n\n{BEGIN}\nstale\n{END}\n\nprose after\n")
    monkeypatch.setattr(docgen, "DOCS", tmp_path)
    out = strategies_markdown()
    assert out.startswith("# S\n\nprose before\n\n" + BEGIN) and out.endswith(END + "\n\nprose after\n")
    assert "stale" not in out and "| `union` |" in out
