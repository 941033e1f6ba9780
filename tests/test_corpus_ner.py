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
