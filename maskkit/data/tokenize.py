"""CLIP BPE tokenization with character offsets, so NER spans map to token positions.

open_clip's ``SimpleTokenizer`` gives ids only. :class:`ReportTokenizer` runs the same word regex
and BPE over the text and keeps each BPE piece's character span (every piece of a word gets the
word's span). Positions are those of the model input: 0 is ``<start_of_text>``.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import lru_cache

import torch


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


class ReportTokenizer:
    """Tokenize reports exactly as open_clip's CLIP tokenizer does, keeping character offsets."""

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
            self._cache[word] = ids
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """BPE ids (no start/end tokens) and the character span in ``text`` of each."""
        # open_clip cleans with ftfy + html.unescape (twice) + whitespace collapse + lower(); the
        # word regex skips whitespace, and lower() keeps offsets for the text of real reports, so
        # matching on the unescaped, lower-cased text gives the same words; offsets are mapped
        # back to ``text`` through the unescaping.
        low, starts, ends = text.lower(), None, None
        for _ in range(2):
            if "&" not in low:
                break
            low, starts, ends = _unescape_with_map(low, starts, ends)
        ids, spans = [], []
        for m in self.tok.pat.finditer(low):
            a, b = m.start(), m.end()
            span = (a, b) if starts is None else (starts[a], ends[b - 1])
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


_ENTITY = re.compile(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);?")


def _unescape_with_map(text: str, starts: list[int] | None, ends: list[int] | None):
    """``html.unescape`` that also maps each output character to its (start, end) in the original."""
    out, s_map, e_map, pos = [], [], [], 0
    def emit(chunk: str, a: int, b: int) -> None:
        for k, ch in enumerate(chunk):
            out.append(ch)
            s_map.append(a if len(chunk) != b - a else a + k)
            e_map.append(b if len(chunk) != b - a else a + k + 1)
    for m in _ENTITY.finditer(text):
        emit(text[pos:m.start()], pos, m.start())
        emit(html.unescape(m.group()), m.start(), m.end())
        pos = m.end()
    emit(text[pos:], pos, len(text))
    if starts is not None:  # compose with an earlier round of unescaping
        s_map = [starts[i] for i in s_map]
        e_map = [ends[i - 1] for i in e_map]
    return "".join(out), s_map, e_map


def entity_positions(token_spans: list[tuple[int, int]], entity_spans: list[tuple[int, int]], length: int) -> torch.Tensor:
    """``[length]`` bool: positions whose character span overlaps any entity span.

    The start/end tokens (span ``(0, 0)``) are never entities.
    """
    out = torch.zeros(length, dtype=torch.bool)
    for pos, (s, e) in enumerate(token_spans[:length]):
        if e > s and any(s < ee and ss < e for ss, ee in entity_spans):
            out[pos] = True
    return out
