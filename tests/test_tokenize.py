"""ReportTokenizer: ids equal open_clip's on a unicode corpus; offsets land on the original text."""

from __future__ import annotations

import html

import ftfy
import open_clip
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import basic_clean, whitespace_clean

from maskkit.data.tokenize import ReportTokenizer, clean_with_map, entity_positions

# Every kind of text that changes under open_clip's cleaning, in report-like sentences.
CORPUS = [
    "He said “no effusion” – it’s fine; ‘mild’ atelectasis.",            # curly quotes, en dash
    "Diﬃcult ﬁndings: ﬂuid in the ﬁssure.",                              # ligatures ﬃ ﬁ ﬂ
    "Heart &amp; lungs &amp;amp; more &lt;3 &#39;x&#39; &#x41;&#65",       # entities, double escaped
    "The lungs are clear. SÃ©vÃ¨re cafÃ© effusion.",                       # UTF-8 read as Latin-1/cp1252
    "Ã¢â‚¬Å“quotedÃ¢â‚¬Â\x9d and Ã¢â‚¬â€œ dash",                             # double mojibake
    "İİİİ heart is enlarged.",                                            # lower case is longer
    "İstanbul İZMİR İ heart",
    "😀 pleural effusion 🫁 👍🏽",                                           # emoji, skin tone modifier
    "cafe\u0301 re\u0301sume\u0301 naïve",                                # combining marks (NFC)
    "肺 心脏 增大 heart 心臓の拡大",                                         # CJK
    "left\u00a0lower\u00a0lobe\u2009opacity\u3000noted",                  # NBSP, thin space, ideographic space
    "a\tb\nc\r\nd\re  f\x0bg",                                            # tabs, newlines, vertical tab
    "ΟΔΟΣ ΣΑΣ σίγμα",                                                     # Greek final sigma
    "Ⅻ ① ＦＵＬＬ ｗｉｄｔｈ ＣＴ",                                            # full width, numerals
    "x\x00y\x7fz \x1b[31mred\x1b[0m text",                                # control chars, terminal escapes
    "&ampfoo &notit; &amp &AMP; &#0; &#xD800; &#1114112;",                # odd entities
    "  leading and trailing  ",
    "",
    "ß straße MASSE ﬀ",
    "Ⓐ ⓑ ﬆ ǅ ǈ",                                                        # titlecase digraphs
    "No pneumothorax. " * 30,                                             # truncated at 77
]


def test_ids_equal_open_clip_tokenize():
    tok = ReportTokenizer(77)
    assert torch.equal(tok(CORPUS).ids, open_clip.tokenize(CORPUS, context_length=77))
    long = ReportTokenizer(256)
    assert torch.equal(long(CORPUS).ids, open_clip.tokenize(CORPUS, context_length=256))


@pytest.mark.parametrize("text", CORPUS)
def test_cleaned_text_and_map(text):
    clean, starts, ends = clean_with_map(text)
    assert clean == whitespace_clean(basic_clean(text)).lower()  # open_clip's clean="lower"
    assert len(starts) == len(ends) == len(clean)
    assert all(0 <= s < e <= len(text) for s, e in zip(starts, ends))
    assert starts == sorted(starts) and ends == sorted(ends)


def _entity_tokens(tok, text, start, end):
    enc = tok([text])
    pos = entity_positions(enc.spans[0], [(start, end)], enc.ids.shape[1])
    return tok.decode([int(i) for i in enc.ids[0][pos]])


@pytest.mark.parametrize("prefix", ["İİİİ ", "“Quoted” ", "ﬁne ﬁ ", "A &amp; B &amp;amp; ", "SÃ©vÃ¨re ", "cafe\u0301 ",
                                    "😀👍🏽 ", "肺 心脏 ", "x\u00a0y\t\n", "ΟΔΟΣ ", "ＦＵＬＬ ", "\x1b[31mred\x1b[0m ",
                                    "x\x0by ", "&ampfoo; ", ""])
def test_entity_lands_on_its_own_tokens(prefix):
    """'heart' and 'enlarged' after every kind of prefix map to exactly their tokens."""
    tok = ReportTokenizer(77)
    text = prefix + "The heart is enlarged. No pneumothorax."
    for word in ("heart", "enlarged", "pneumothorax"):
        s = text.index(word)
        assert _entity_tokens(tok, text, s, s + len(word)) == word
    ids, spans = tok.encode_with_offsets(text)
    heart = [p for p, sp in enumerate(spans) if sp == (text.index("heart"), text.index("heart") + 5)]
    assert [tok.decode([ids[p]]) for p in heart] == ["heart"]


def test_the_reported_case_istanbul_prefix():
    tok = ReportTokenizer(77)
    text = "İİİİ heart is enlarged, no effusion."
    enc = tok([text])
    s = text.index("heart")
    pos = entity_positions(enc.spans[0], [(s, s + 5)], 77)
    assert [tok.decode([int(i)]) for i in enc.ids[0][pos]] == ["heart"]
    assert not any(tok.decode([int(i)]) in ("no", ".", "is") for i in enc.ids[0][pos])


_PIECES = ["“", "”", "’", "ﬁ", "&amp;", "&lt;", "&amp;amp;", "Ã©", "Ã¢â‚¬â„¢", "İ", "😀", "\u0301", "肺", "\u00a0",
           "\t", "\n", "\r\n", "Σ", "ＦＵ", "\x0b", "\x00", "ß", "é", "-", ".", ",", "1", "'s", "x"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12), st.lists(st.sampled_from(_PIECES), max_size=12))
def test_random_unicode_texts(before, after):
    """Ids equal open_clip's, and the word 'pneumothorax' between random tricky pieces keeps its tokens."""
    tok = ReportTokenizer(128)
    text = "".join(before) + " pneumothorax " + "".join(after)
    assert tok.encode_with_offsets(text)[0] == tok.tok.encode(text)
    s = text.index("pneumothorax")
    assert _entity_tokens(tok, text, s, s + 12) == "pneumothorax"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([chr(c) for c in range(0x20, 0x7f) if chr(c) != "&"] + ["\t", "\n", "\r"]),
               max_size=80))
def test_fast_path_text_is_unchanged_by_ftfy_and_unescape(text):
    """The fast path assumes ftfy and html.unescape change printable ASCII without '&' at most in
    its whitespace (ftfy turns CR into LF), which the whitespace collapse then removes."""
    assert whitespace_clean(basic_clean(text)) == " ".join(text.split())
    assert ftfy.fix_text(text).split() == text.split() and html.unescape(text) == text
    tok = ReportTokenizer(128)
    assert tok.encode_with_offsets(text)[0] == tok.tok.encode(text)


def test_context_length_error():
    with pytest.raises(ValueError, match="context_length 2 is too short; expected at least 3"):
        ReportTokenizer(2)


def test_clip_text_tower_is_unchanged_through_the_interface():
    """CLIP's path: the same tokenizer ids and pooled features as open_clip's own."""
    from maskkit.model.towers import create_clip, text_tokens, tower_tokenizer

    clip = create_clip("maskkit-tiny").eval()
    tok = tower_tokenizer(clip)
    assert (tok.vocab_size, tok.start_id, tok.end_id, tok.pad_id, tok.mask_id, tok.pooling) == (49408, 49406, 49407, 0, None, "eot")
    enc = tok(["Mild CARDIOMEGALY; no pleural effusion.", None])
    assert torch.equal(enc.ids, open_clip.tokenize(["Mild CARDIOMEGALY; no pleural effusion.", ""], context_length=64))
    assert enc.special[0].tolist() == [not (0 < i < int(enc.valid[0].sum()) - 1) for i in range(64)]
    torch.testing.assert_close(text_tokens(clip, enc.ids)[0], clip.encode_text(enc.ids), rtol=0, atol=1e-6)
