"""Whether a corpus runs NER is an argument of build_corpus / eval_corpus, never a config edited to
look like one without a text_mask tree."""

import pytest

from maskkit.config import resolve
from maskkit.data import build


@pytest.mark.parametrize("preset, ner, held_out_ner, runs", [
    ("xlip", None, False, True),    # a text_mask tree: training reads entities
    ("clip", None, False, False),   # no text_mask: no NER
    ("xlip", False, False, False),  # an evaluation that reads no training entities
    ("clip", False, True, True),    # ... but the held-out reports' entities
])
def test_build_corpus_runs_ner_when_asked(monkeypatch, preset, ner, held_out_ner, runs):
    calls = []
    import maskkit.data.ner as ner_mod

    real = ner_mod.make_ner
    monkeypatch.setattr(ner_mod, "make_ner", lambda *a, **k: calls.append(a) or real(*a, **k))
    cfg, _ = resolve([f"preset={preset}", "data.n=8", "data.val_n=4", "runtime.evaluations=[]"])
    assert build.train_ner(cfg) is (preset == "xlip")
    build.build_corpus(cfg, 96, ner=ner, held_out_ner=held_out_ner)
    assert bool(calls) is runs


def test_the_datasets_of_a_corpus_share_one_interface():
    """ReportDataset (ids, drop_reports), not attributes probed with hasattr."""
    from maskkit.data.dataset import ReportDataset
    from maskkit.eval.finetune import dataset_index

    cfg, _ = resolve(["preset=xlip", "data.n=8", "data.val_n=4", "runtime.evaluations=[]"])
    corpus = build.build_corpus(cfg, 96)
    for ds in (corpus.sources[0].train, corpus.sources[0].val):
        assert isinstance(ds, ReportDataset)
        assert ds.ids == [ds[i]["id"] for i in range(len(ds))]
        assert dataset_index(ds) == {sid: i for i, sid in enumerate(ds.ids)}
    ds = corpus.sources[0].val
    assert any(ds.reports)
    ds.drop_reports()
    assert ds[0]["report"] is None and ds.entity_spans[0] == [] and len(ds.reports) == len(ds)
