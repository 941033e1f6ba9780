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


def test_the_results_table_is_the_csv(tmp_path):
    """docs/results.md's current-results table: one row per CSV line, its section a link to an
    anchor of the page; a short row or an unknown section is one line naming the CSV line."""
    from maskkit.docgen import RESULTS_BEGIN, RESULTS_COLUMNS, results_table

    f = tmp_path / "results.csv"
    f.write_text(",".join(RESULTS_COLUMNS) + "\nmean AUC %,81 ± 2,maskkit run a|b,79 s,2026-11-30,a369421,sentence-prompts\n")
    table = results_table(f, anchors={"sentence-prompts"})
    assert table.startswith(RESULTS_BEGIN) and table.endswith(END)
    assert "| mean AUC % | 81 ± 2 | `maskkit run a\\|b` | 79 s | 2026-11-30 | a369421 | [sentence-prompts](#sentence-prompts) |" in table
    with pytest.raises(SystemExit, match=r"line 2: section 'sentence-prompts' is not an anchor of docs/results.md"):
        results_table(f, anchors={"other"})
    f.write_text(",".join(RESULTS_COLUMNS) + "\nmean AUC %,81,cmd,79 s,2026-11-30,,sentence-prompts\n")
    with pytest.raises(SystemExit, match=r"results.csv, line 2: expected 7 non-empty cells"):
        results_table(f, anchors={"sentence-prompts"})
    f.write_text("result,value\n")
    with pytest.raises(SystemExit, match=r"header 'result,value'; expected result,value,command,wall_time,date,commit,section"):
        results_table(f)


def test_results_csv_gives_auc_in_one_unit():
    """Every AUC in docs/results.csv is in % (0-100; differences in points), never 0-1 beside %
    (an AUC on 0-1 is written with three decimals; λ settings like 0.75 are not AUCs)."""
    import csv
    import re

    from maskkit.docgen import DOCS

    with open(DOCS / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    auc = [r for r in rows if "AUC" in r["result"]]
    assert len(auc) >= 8
    for r in auc:
        assert "AUC %" in r["result"] or "points" in r["result"], r["result"]
        assert not re.search(r"(?<![\d.])0\.\d{3}", r["value"]), (r["result"], r["value"])


def test_every_section_of_the_results_notebook_has_an_anchor():
    """Code and docs cite results by anchor (docs/results.md#guided-masks), not by section number."""
    from maskkit.docgen import DOCS, _anchors

    text = (DOCS / "results.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## "):
            assert lines[i - 1].startswith('<a id="'), line
    assert len(_anchors(text)) == sum(line.startswith("## ") for line in lines)


def test_the_assumptions_index_and_anchors_follow_the_headings():
    from maskkit.docgen import ASSUMPTIONS_BEGIN, assumptions_markdown

    text = (f"# A\n\nprose\n\n{ASSUMPTIONS_BEGIN}\nstale\n{END}\n\n## A1. First (`x|y`)\nbody\n\n"
            '<a id="a7"></a>\n## A2. Second\nbody\n\n## A48c. A helper\'s\n')
    out = assumptions_markdown(text)
    assert "stale" not in out and '<a id="a7"></a>' not in out
    assert ("| [A1](#a1) | First (`x\\|y`) |\n| [A2](#a2) | Second |\n| [A48c](#a48c) | A helper's |" in out)
    assert '<a id="a1"></a>\n## A1. First' in out and '<a id="a48c"></a>\n## A48c.' in out
    assert assumptions_markdown(out) == out  # a second run changes nothing
    with pytest.raises(SystemExit, match=r"assumption A2 is used twice; renumber one of them"):
        assumptions_markdown(text + "\n## A2. Again\n")


def test_record_and_table_fields_are_generated_into_plugins_md():
    """docs/plugins.md lists every field of Record and Table (type, required, meaning) from the
    dataclasses: a field added without its meaning stops docgen."""
    import dataclasses

    from maskkit.data.records import Record, Table
    from maskkit.docgen import plugins_markdown, records_table

    table = records_table()
    for cls in (Record, Table):
        for f in dataclasses.fields(cls):
            assert f"| `{f.name}` |" in table and f.metadata["doc"] in table
    assert "| `id` | `str` | yes |" in table and "| `report` | `str \\| None` | no (default `None`) |" in table
    assert table in plugins_markdown()
