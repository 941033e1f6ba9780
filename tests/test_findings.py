"""The label vocabularies (maskkit.findings): one list per label set, one normal class, one comparison."""

import pytest

from maskkit.findings import CHEXPERT_LABELS, NO_FINDING, is_no_finding, label_key


@pytest.mark.parametrize("label, normal", [
    ("No Finding", True), ("no_finding", True), (" NO FINDING ", True), ("No_Finding", True),
    ("Finding", False), ("No Findings", False), ("Support Devices", False),
])
def test_is_no_finding(label, normal):
    assert is_no_finding(label) is normal


def test_labels_compare_by_one_key():
    assert label_key("Support_Devices") == label_key("support devices ") == "support devices"


def test_every_reader_takes_the_lists_from_the_table():
    from maskkit.data import records
    from maskkit.data.phantoms import LABELS
    from maskkit.eval.zeroshot import SPECIAL_PROMPTS, prompt_pair
    from maskkit.model.config import CHEXPERT_PROMPTS, ModelConfig

    assert records.CHEXPERT_LABELS is CHEXPERT_LABELS
    assert CHEXPERT_PROMPTS == tuple(sorted(CHEXPERT_LABELS)) == ModelConfig().prompts
    assert CHEXPERT_PROMPTS[:3] == ("Atelectasis", "Cardiomegaly", "Consolidation")  # the order the model saw
    assert LABELS[-1] == NO_FINDING and NO_FINDING in SPECIAL_PROMPTS
    assert prompt_pair("no_finding") == prompt_pair(NO_FINDING) != prompt_pair("Finding")


def test_captions_from_labels_leave_the_normal_class_out(tmp_path):
    """records.generic_csv(captions_from_labels=True): findings named by label_key; No Finding is no finding."""
    from maskkit.data.records import generic_csv

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    p = tmp_path / "t.csv"
    p.write_text("image_path,Support_Devices,no_finding\na.png,1,0\nb.png,0,1\n")
    t = generic_csv(str(p), captions_from_labels=True)
    assert [r.report for r in t.records] == ["Findings: support devices.", "No finding."]
