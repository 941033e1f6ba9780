"""Report tokenization with character offsets, so NER spans map to the text tower's own tokens.

One interface, :class:`TextTokenizer`, derived from the text tower
(:func:`maskkit.model.towers.tower_tokenizer`): ``__call__`` (ids, validity, special positions
and each position's character span), ``vocab_size``, the pad/mask/start/end ids, ``pooling`` and
``context_length``. Two implementations: :class:`ReportTokenizer` (CLIP's BPE, below) and
:class:`HFReportTokenizer` (a Hugging Face fast tokenizer, e.g. BERT's WordPiece, whose
``offset_mapping`` gives the spans).

CLIP's BPE: open_clip's ``SimpleTokenizer`` gives ids only. :class:`ReportTokenizer` applies open_clip's exact
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
    """ids ``[B, L]`` long, valid ``[B, L]`` bool (a token, special or not, rather than padding),
    per row the (start, end) char span of each position (``(0, 0)`` for special tokens and
    padding), and special ``[B, L]`` bool (the tokenizer's own tokens: start/CLS, end/SEP, padding)."""

    ids: torch.Tensor
    valid: torch.Tensor
    spans: list[list[tuple[int, int]]]
    special: torch.Tensor

    def __getitem__(self, cols: slice) -> Encoded:
        """The positions ``cols`` of every row (e.g. ``enc[:, :w]`` is written ``enc[:w]``)."""
        return Encoded(self.ids[:, cols], self.valid[:, cols], [s[cols] for s in self.spans], self.special[:, cols])


class TextTokenizer:
    """What maskkit needs of a text tower's tokenizer (CLIP's BPE, a Hugging Face fast tokenizer).

    Attributes: ``context_length`` ``L`` (positions of every row, special tokens included),
    ``vocab_size`` (ids are below it; the EntMLM decoder's output size), ``pad_id``, ``start_id``
    (CLIP's ``<start_of_text>``, BERT's ``[CLS]``), ``end_id`` (``<end_of_text>``, ``[SEP]``),
    ``mask_id`` (BERT's ``[MASK]``; None when the vocabulary has none, as CLIP's), ``pooling``
    (how the tower pools a text: ``eot`` the end-of-text position, ``cls`` the first, ``mean``
    the valid positions; informational, the tower pools), ``name`` (which tokenizer, one line).
    """

    context_length: int
    vocab_size: int
    pad_id: int
    start_id: int
    end_id: int
    mask_id: int | None = None
    pooling: str = "eot"
    name: str = ""

    def __call__(self, texts: list[str | None]) -> Encoded:
        """Tokenize a batch into ``[B, L]`` rows; ``None`` or empty text gives only the special tokens."""
        raise NotImplementedError

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of ``text`` without special tokens or truncation, and each one's ``(start, end)``
        character span in ``text``."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """The text of ``ids``, special tokens left out."""
        raise NotImplementedError


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


class ReportTokenizer(TextTokenizer):
    """CLIP's BPE (:class:`TextTokenizer`): reports tokenized exactly as open_clip's CLIP
    tokenizer does, keeping character offsets.

    ``context_length`` (≥ 3) is the model's text length ``L``: start token, up to ``L - 2`` BPE
    ids, end token, padding with id 0 (longer texts are truncated as open_clip truncates them).
    ``pooling`` is the tower's (``eot`` for CLIP: the end-of-text position, the highest id).
    """

    def __init__(self, context_length: int = 77, pooling: str = "eot") -> None:
        if context_length < 3:
            raise ValueError(f"context_length {context_length} is too short; expected at least 3")
        self.tok = _simple_tokenizer()
        self.context_length = context_length
        self.start_id, self.end_id = self.tok.sot_token_id, self.tok.eot_token_id
        self.pad_id, self.mask_id, self.pooling = 0, None, pooling
        self.vocab_size = self.tok.vocab_size
        self.name = f"CLIP BPE (vocabulary {self.vocab_size}, {context_length} positions)"
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
        ids = torch.full((len(texts), L), self.pad_id, dtype=torch.long)
        valid = torch.zeros(len(texts), L, dtype=torch.bool)
        special = torch.ones(len(texts), L, dtype=torch.bool)
        all_spans = []
        for b, text in enumerate(texts):
            body, spans = self.encode_with_offsets(text or "")
            body, spans = body[: L - 2], spans[: L - 2]
            row = [self.start_id] + body + [self.end_id]
            ids[b, : len(row)] = torch.tensor(row)
            valid[b, : len(row)] = True
            special[b, 1: len(row) - 1] = False
            all_spans.append([(0, 0)] + spans + [(0, 0)] * (L - 1 - len(spans)))
        return Encoded(ids, valid, all_spans, special)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode([i for i in ids if i not in (self.pad_id, self.start_id, self.end_id)]).strip()


class HFReportTokenizer(TextTokenizer):
    """A Hugging Face fast tokenizer (:class:`TextTokenizer`), e.g. BERT's WordPiece, read from a
    local folder (``tokenizer.json``, or a ``vocab.txt`` a fast tokenizer is built from); never
    downloads.

    Rows are what the tokenizer's own template makes of a text (``[CLS] ... [SEP]`` for BERT),
    truncated to ``context_length`` and padded with its pad token; spans come from its
    ``offset_mapping`` (through its normaliser: lower-casing, accent stripping), so an entity's
    span lands on its WordPiece tokens. ``vocab_size`` is ``len(tokenizer)`` (added tokens
    included). Raises :class:`~maskkit.errors.MaskkitError` for a folder without a tokenizer, a
    slow (Python) tokenizer without offsets, or one without pad or start/end tokens.
    """

    def __init__(self, folder: str, context_length: int, pooling: str = "cls") -> None:
        from ..errors import MaskkitError

        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise MaskkitError("an HF text tower needs the transformers package: pip install 'maskkit[hf]'") from None
        try:
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            msg = " ".join(str(exc).split())[:300]
            raise MaskkitError(f"text tower tokenizer: cannot read a tokenizer from {folder} ({type(exc).__name__}: {msg}); "
                               f"expected a local folder with tokenizer.json or vocab.txt and tokenizer_config.json") from None
        if not getattr(tok, "is_fast", False):
            raise MaskkitError(f"text tower tokenizer: {folder} gives a slow {type(tok).__name__}, which has no character "
                               f"offsets; expected a fast tokenizer (tokenizer.json)")
        self.tok, self.folder = tok, str(folder)
        probe = tok("", add_special_tokens=True, return_special_tokens_mask=True)
        if tok.pad_token_id is None:
            raise MaskkitError(f"text tower tokenizer: {folder} has no pad token; expected one (e.g. [PAD])")
        if context_length < len(probe["input_ids"]) + 1:
            raise MaskkitError(f"text tower tokenizer: context length {context_length} leaves no room for text after "
                               f"{len(probe['input_ids'])} special tokens")
        self.context_length = context_length
        self.vocab_size = len(tok)
        self.pad_id = int(tok.pad_token_id)
        start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
        end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        if start is None or end is None:
            raise MaskkitError(f"text tower tokenizer: {folder} has no start/end tokens (cls/bos, sep/eos); expected both")
        self.start_id, self.end_id = int(start), int(end)
        self.mask_id = int(tok.mask_token_id) if tok.mask_token_id is not None else None
        self.pooling = pooling
        self.name = f"{type(tok).__name__} from {folder} (vocabulary {self.vocab_size}, {context_length} positions)"

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        e = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(e["input_ids"]), [tuple(o) for o in e["offset_mapping"]]

    def __call__(self, texts: list[str | None]) -> Encoded:
        e = self.tok([t or "" for t in texts], add_special_tokens=True, truncation=True, max_length=self.context_length,
                     padding="max_length", return_offsets_mapping=True, return_special_tokens_mask=True,
                     return_attention_mask=True, return_token_type_ids=False)
        ids = torch.tensor(e["input_ids"], dtype=torch.long).reshape(len(texts), self.context_length)
        valid = torch.tensor(e["attention_mask"], dtype=torch.bool).reshape(ids.shape)
        special = torch.tensor(e["special_tokens_mask"], dtype=torch.bool).reshape(ids.shape)
        spans = [[(0, 0) if s else (int(a), int(b)) for (a, b), s in zip(o, m)]
                 for o, m in zip(e["offset_mapping"], e["special_tokens_mask"])]
        return Encoded(ids, valid, spans, special)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True).strip()


def entity_positions(token_spans: list[tuple[int, int]], entity_spans: list[tuple[int, int]], length: int) -> torch.Tensor:
    """``[length]`` bool: positions whose character span overlaps any entity span (every
    BPE/WordPiece piece of an entity word is one).

    Special tokens and padding (span ``(0, 0)``) are never entities.
    """
    out = torch.zeros(length, dtype=torch.bool)
    for pos, (s, e) in enumerate(token_spans[:length]):
        if e > s and any(s < ee and ss < e for ss, ee in entity_spans):
            out[pos] = True
    return out
