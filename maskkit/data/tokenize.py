"""CLIP BPE tokenization with character offsets, so NER spans map to token positions.

open_clip's ``SimpleTokenizer`` gives ids only. :class:`ReportTokenizer` runs the same word regex
and BPE over the text and keeps each BPE piece's character span (every piece of a word gets the
word's span). Positions are those of the model input: 0 is ``<start_of_text>``.
"""

from __future__ import annotations

import html
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
        # open_clip cleans with ftfy + html.unescape + whitespace collapse + lower(); the word
        # regex skips whitespace, and lower() keeps offsets for the text of real reports, so
        # matching on text.lower() gives the same words at their original positions.
        low = text.lower()
        if html.unescape(low) != low:
            low = html.unescape(low)  # offsets then refer to the unescaped text (rare in reports)
        ids, spans = [], []
        for m in self.tok.pat.finditer(low):
            for i in self._word_ids(m.group()):
                ids.append(i)
                spans.append((m.start(), m.end()))
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
