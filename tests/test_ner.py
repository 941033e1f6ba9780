"""NER: the lexicon backend on real Open-i reports, BPE alignment, the cache, a scispaCy model."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import shared_path
from maskkit.data.ner import CachedNER, LexiconNER, ScispacyNER, make_ner
from maskkit.data.records import openi
from maskkit.data.tokenize import ReportTokenizer, entity_positions
from maskkit.errors import MaskkitError

# MeSH major heading -> the phrases in report text that express it
MESH_PHRASES = {
    "Cardiomegaly": r"cardiomegaly|heart|cardiac|cardiomediastinal",
    "Pleural Effusion": r"effusion",
    "Pneumothorax": r"pneumothora",
    "Opacity": r"opaci|density|densities|airspace|air space|infiltrat",
    "Pulmonary Atelectasis": r"atelecta",
}


@pytest.fixture(scope="module")
def openi_table():
    return openi(shared_path("openi", "ecgen-radiology-dev.tgz"))


@pytest.fixture(scope="module")
def lexicon():
    return LexiconNER()


def test_mesh_terms_are_found_as_entities(openi_table, lexicon):
    recs = [r for r in openi_table.records if r.report]
    ents = lexicon([r.report for r in recs])
    for heading, phrase in MESH_PHRASES.items():
        hits = total = 0
        for r, es in zip(recs, ents):
            if not any(m.split("/")[0].strip() == heading for m in r.extra["mesh"]):
                continue
            total += 1
            spans = [m.span() for m in re.finditer(phrase, r.report, re.I)]
            hits += any(s < ee and ss < e for s, e in spans for ss, ee, _ in es)
        assert total >= 20, heading
        assert hits / total >= 0.9, f"{heading}: {hits}/{total} reports with an entity on the phrase"


def test_negated_mentions_are_entities(lexicon):
    text = "No pneumothorax or pleural effusion. Heart size is normal."
    found = {text[s:e].lower() for s, e, _ in lexicon([text])[0]}
    assert {"pneumothorax", "effusion", "heart size"} <= found


def test_post_surgical_material_is_an_entity(lexicon):
    """The reported sentence: clips and sternotomy wires, not only 'right'."""
    text = "Surgical clips in the right upper quadrant. Sternotomy wires are intact."
    got = [(text[s:e], label) for s, e, label in lexicon([text])[0]]
    assert got == [("Surgical clips", "POST_SURGICAL"), ("right", "ANATOMY"), ("quadrant", "ANATOMY"),
                   ("Sternotomy", "POST_SURGICAL"), ("wires", "POST_SURGICAL")]


@pytest.mark.parametrize("text,expected", [
    ("Median sternotomy wires and mediastinal clips.", {"sternotomy", "wires", "clips"}),
    ("Cholecystectomy clips are noted.", {"cholecystectomy", "clips"}),
    ("Skin staples overlie the left chest. Sutures at the apex.", {"staples", "sutures"}),
    ("Status post CABG. Sternal cerclage wires.", {"cabg", "cerclage", "wires"}),
    ("Postoperative changes of right upper lobectomy.", {"postoperative", "lobectomy"}),
    ("Cervical spinal fusion hardware and thoracic rods.", {"spinal fusion", "rods"}),
    ("Bilateral breast implants. Vertebroplasty cement at T12.", {"implants", "vertebroplasty", "cement"}),
    ("Suture line in the left upper lobe from wedge resection.", {"suture", "wedge resection"}),
    ("Postsurgical changes. A stent in the left subclavian.", {"postsurgical", "stent"}),
])
def test_post_surgical_kind(lexicon, text, expected):
    found = {text[s:e].lower() for s, e, label in lexicon([text])[0] if label == "POST_SURGICAL"}
    assert found == expected


def test_no_post_surgical_entity_in_plain_findings(lexicon):
    text = ("The heart is normal in size. The upper lobes and lower lobe are clear. No pneumothorax. "
            "Degenerative changes of the spine. Preoperative chest radiograph.")
    assert [text[s:e] for s, e, label in lexicon([text])[0] if label == "POST_SURGICAL"] == []


def test_alignment_on_real_reports_with_xxxx_and_punctuation(openi_table, lexicon):
    tok = ReportTokenizer(256)
    recs = [r for r in openi_table.records if r.report and "XXXX" in r.report][:200]
    assert len(recs) == 200
    enc = tok([r.report for r in recs])
    for r, spans, ids, es in zip(recs, enc.spans, enc.ids, lexicon([r.report for r in recs])):
        pos = entity_positions(spans, [(s, e) for s, e, _ in es], ids.shape[0])
        assert pos[0] == False  # the start token is never an entity
        for p in torch.nonzero(pos).flatten().tolist():
            word = tok.decode([int(ids[p])]).strip()
            s, e = spans[p]
            assert word and word in r.report[s:e].lower()  # the BPE piece lies in its span
            assert any(s < ee and ss < e for ss, ee, _ in es)
        # every entity's first character is covered by a marked position (unless truncated)
        for ss, ee, _ in es:
            covering = [p for p, (s, e) in enumerate(spans) if s <= ss < e]
            if covering and covering[0] < ids.shape[0] - 1:
                assert pos[covering[0]]


def test_tokenizer_matches_open_clip(openi_table):
    from open_clip.tokenizer import SimpleTokenizer

    ref = SimpleTokenizer()
    tok = ReportTokenizer(77)
    texts = [r.report for r in openi_table.records if r.report][:300]
    assert torch.equal(tok(texts).ids, ref(texts, context_length=77))


def test_cache_is_keyed_by_text_and_version(tmp_path, lexicon):
    calls = []

    class Counting:
        version = lexicon.version

        def __call__(self, texts):
            calls.append(len(texts))
            return lexicon(texts)

    c = CachedNER(Counting(), tmp_path)
    a = c(["No effusion.", "Small pneumothorax.", "No effusion."])
    c.save()
    c2 = CachedNER(Counting(), tmp_path)
    b = c2(["Small pneumothorax.", "No effusion."])
    assert calls == [2] and b == [a[1], a[0]]
    assert (tmp_path / f"{lexicon.version}.json").is_file()


def test_damaged_cache_is_rebuilt(tmp_path, lexicon):
    (tmp_path / f"{lexicon.version}.json").write_text("{not json")
    assert CachedNER(lexicon, tmp_path)(["No effusion."])[0]


def test_scispacy_backend_loads_a_saved_model(tmp_path):
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "DISEASE", "pattern": "pneumothorax"}])
    nlp.to_disk(tmp_path / "tiny_model")
    ner = make_ner("scispacy", str(tmp_path / "tiny_model"))
    assert ner(["Small pneumothorax."]) == [[(6, 18, "DISEASE")]]
    assert ner.version.startswith("scispacy-")


def test_scispacy_missing_model_names_install():
    with pytest.raises(MaskkitError, match="scispaCy model 'en_core_sci_nonexistent' is not installed; install it"):
        ScispacyNER("en_core_sci_nonexistent")
    with pytest.raises(MaskkitError, match="unknown backend 'bert'"):
        make_ner("bert")
