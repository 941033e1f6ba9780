"""CLIP BPE tokenization with character offsets, so NER spans map to token positions.

open_clip's ``SimpleTokenizer`` gives ids only. :class:`ReportTokenizer` applies open_clip's exact
cleaning (``clean="lower"``: ``ftfy.fix_text``, ``html.unescape`` twice, strip, whitespace
collapse, ``str.lower``), then the same word regex and BPE, and carries a character map through
every step: each position's span is a ``(start, end)`` range of characters of the ORIGINAL text
(every BPE piece of a word gets the word's span). Steps that change lengths — mojibake repair,
ligatures (``ﬁ`` -> ``fi``), NFC, entities (``&amp;``), whitespace runs, ``İ`` whose lower case
is two characters — map their output to the input characters they came from, so an entity's
span lands on the entity's own tokens. Positions are those of the model input: 0 is
``<start_of_text>``.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache

import torch

# Text whose cleaning is only whitespace collapse (tested): printable ASCII, tab, CR, LF, no "&".
# ftfy changes such ASCII only in whitespace (CR -> LF); it changes other ASCII through HTML
# entities, terminal escapes and control characters (it deletes e.g. \x0b), all outside this set.
_PLAIN = re.compile(r"[\t\n\r\x20-\x25\x27-\x7e]*")
# CPython's html._charref (Lib/html/__init__.py): html.unescape(s) == _CHARREF.sub(<unescape each match>, s)
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")
_WORD = re.compile(r"\S+")  # the same whitespace as str.split() (both use str.isspace)


@dataclass
class Encoded:
    """ids ``[B, L]`` long, valid ``[B, L]`` bool, and per row the (start, end) char span of each position."""

    ids: torch.Tensor
    valid: torch.Tensor
    spans: list[list[tuple[int, int]]]


@lru_cache(maxsize=1)
def _simple_tokenizer():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


# A character map: for each character of a derived string, the [start, end) range of the
# original text it came from (two lists, non-decreasing).
Map = tuple[list[int], list[int]]


def _compose(prev: Map, starts: list[int], ends: list[int]) -> Map:
    """Compose a step's map (output char -> [start, end) of the step's input) with ``prev``."""
    ps, pe = prev
    return [ps[a] for a in starts], [pe[b - 1] for b in ends]


def _difflib_map(src: str, dst: str, offset: int = 0) -> tuple[list[int], list[int]]:
    """Map each character of ``dst`` to the characters of ``src`` it replaced (difflib alignment):
    kept characters 1:1, a replaced block of equal length 1:1, otherwise to the whole source
    block; inserted characters join the character before them. Indices are shifted by ``offset``."""
    starts, ends = [], []
    for op, i1, i2, j1, j2 in SequenceMatcher(None, src, dst, autojunk=False).get_opcodes():
        n = j2 - j1
        if op == "equal" or (op == "replace" and i2 - i1 == n):
            starts.extend(range(offset + i1, offset + i2))
            ends.extend(range(offset + i1 + 1, offset + i2 + 1))
        elif op == "replace":
            starts.extend([offset + i1] * n)
            ends.extend([offset + i2] * n)
        elif op == "insert":
            k = i1 - 1 if i1 > 0 else 0
            starts.extend([offset + k] * n)
            ends.extend([offset + min(k + 1, len(src))] * n)
    return starts, ends


def _aligned(src: str, dst: str) -> tuple[list[int], list[int]]:
    """Map each character of ``dst`` (``src`` repaired by ftfy) to the ``src`` characters it came from.

    ftfy's repairs are local, so when both hold the same number of whitespace-separated words, the
    words are paired in order and only changed words are aligned character by character
    (fast); otherwise the whole strings are aligned by difflib. Whitespace between words maps to
    the whitespace between the paired source words.
    """
    sw = [m.span() for m in _WORD.finditer(src)]
    dw = [m.span() for m in _WORD.finditer(dst)]
    if len(sw) != len(dw):
        return _difflib_map(src, dst)
    starts, ends = [], []
    s_prev = d_prev = 0
    for (sa, sb), (da, db) in zip(sw + [(len(src), len(src))], dw + [(len(dst), len(dst))]):
        if da > d_prev:  # whitespace (or nothing) between words
            lo = min(s_prev, max(len(src) - 1, 0))
            hi = max(sa, lo + 1)
            starts.extend([lo] * (da - d_prev))
            ends.extend([hi] * (da - d_prev))
        if db > da:
            if sb - sa == db - da:
                starts.extend(range(sa, sb))
                ends.extend(range(sa + 1, sb + 1))
            else:
                s, e = _difflib_map(src[sa:sb], dst[da:db], sa)
                starts.extend(s)
                ends.extend(e)
        s_prev, d_prev = sb, db
    return starts, ends


def _unescape(text: str) -> tuple[str, list[int], list[int]]:
    """``html.unescape`` with a map: each output character -> the input range it came from."""
    out, starts, ends, pos = [], [], [], 0
    for m in _CHARREF.finditer(text):
        a, b = m.span()
        out.append(text[pos:a])
        starts.extend(range(pos, a))
        ends.extend(range(pos + 1, a + 1))
        rep = html.unescape(m.group())
        out.append(rep)
        starts.extend([a] * len(rep))
        ends.extend([b] * len(rep))
        pos = b
    out.append(text[pos:])
    starts.extend(range(pos, len(text)))
    ends.extend(range(pos + 1, len(text) + 1))
    return "".join(out), starts, ends


def clean_with_map(text: str) -> tuple[str, list[int], list[int]]:
    """open_clip's ``lower`` cleaning of ``text`` and, per cleaned character, its ``[start, end)``
    in ``text``: ``(cleaned, starts, ends)``. ``cleaned`` equals
    ``open_clip.tokenizer._clean_lower(text)``: ``ftfy.fix_text``, ``html.unescape`` twice,
    whitespace collapse (``" ".join(s.split())``), ``str.lower``."""
    import ftfy

    n = len(text)
    cur = ftfy.fix_text(text)
    if cur == text:
        m: Map = (list(range(n)), list(range(1, n + 1)))
    else:
        m = _aligned(text, cur)
    for _ in range(2):
        if "&" in cur:
            cur, s, e = _unescape(cur)
            m = _compose(m, s, e)
    words = [w.span() for w in _WORD.finditer(cur)]
    s, e = [], []
    for k, (a, b) in enumerate(words):
        if k:  # the single space stands for the whitespace run it replaced
            s.append(words[k - 1][1])
            e.append(a)
        s.extend(range(a, b))
        e.extend(range(a + 1, b + 1))
    cur = " ".join(cur[a:b] for a, b in words)
    m = _compose(m, s, e)
    low = cur.lower()
    if len(low) != len(cur):  # e.g. "İ".lower() == "i̇" (2 characters): repeat the source index
        s, e = [], []
        for k, ch in enumerate(cur):
            w = len(ch.lower())
            s.extend([k] * w)
            e.extend([k + 1] * w)
        m = _compose(m, s, e)
    return low, m[0], m[1]


class ReportTokenizer:
    """Tokenize reports exactly as open_clip's CLIP tokenizer does, keeping character offsets.

    ``context_length`` (≥ 3) is the model's text length ``L``: start token, up to ``L - 2`` BPE
    ids, end token (longer texts are truncated as open_clip truncates them).
    """

    def __init__(self, context_length: int = 77) -> None:
        if context_length < 3:
            raise ValueError(f"context_length {context_length} is too short; expected at least 3")
        self.tok = _simple_tokenizer()
        self.context_length = context_length
        self.sot, self.eot = self.tok.sot_token_id, self.tok.eot_token_id
        self.vocab_size = self.tok.vocab_size
        self._cache: dict[str, list[int]] = {}

    def _word_ids(self, word: str) -> list[int]:
        ids = self._cache.get(word)
        if ids is None:
            t = self.tok
            token = "".join(t.byte_encoder[b] for b in word.encode("utf-8"))
            ids = [t.encoder[p] for p in t.bpe(token).split(" ")]
            if len(self._cache) < 200_000:
                self._cache[word] = ids
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """BPE ids (no start/end tokens) equal to open_clip's ``SimpleTokenizer.encode(text)``, and
        for each the ``(start, end)`` character span in ``text`` (the original, uncleaned text)."""
        ids, spans = [], []
        if _PLAIN.fullmatch(text):
            # fast path (most reports): cleaning is whitespace collapse + ASCII lower, which keep
            # every non-space character in place; the word regex never crosses whitespace
            for m in self.tok.pat.finditer(text.lower()):
                span = m.span()
                for i in self._word_ids(m.group()):
                    ids.append(i)
                    spans.append(span)
            return ids, spans
        clean, starts, ends = clean_with_map(text)
        for m in self.tok.pat.finditer(clean):
            a, b = m.span()
            span = (starts[a], ends[b - 1])
            for i in self._word_ids(m.group()):
                ids.append(i)
                spans.append(span)
        return ids, spans

    def __call__(self, texts: list[str | None]) -> Encoded:
        """Tokenize a batch; ``None`` or empty text gives a row of only start/end tokens."""
        L = self.context_length
        ids = torch.zeros(len(texts), L, dtype=torch.long)
        valid = torch.zeros(len(texts), L, dtype=torch.bool)
        all_spans = []
        for b, text in enumerate(texts):
            body, spans = self.encode_with_offsets(text or "")
            body, spans = body[: L - 2], spans[: L - 2]
            row = [self.sot] + body + [self.eot]
            ids[b, : len(row)] = torch.tensor(row)
            valid[b, : len(row)] = True
            all_spans.append([(0, 0)] + spans + [(0, 0)])
        return Encoded(ids, valid, all_spans)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i not in (0, self.sot, self.eot)]).strip()


def entity_positions(token_spans: list[tuple[int, int]], entity_spans: list[tuple[int, int]], length: int) -> torch.Tensor:
    """``[length]`` bool: positions whose character span overlaps any entity span.

    The start/end tokens (span ``(0, 0)``) are never entities.
    """
    out = torch.zeros(length, dtype=torch.bool)
    for pos, (s, e) in enumerate(token_spans[:length]):
        if e > s and any(s < ee and ss < e for ss, ee in entity_spans):
            out[pos] = True
    return out
