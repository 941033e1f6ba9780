"""Medical entity recognition for EntMLM, with a cache keyed by report hash and backend version.

Backends:

- ``lexicon`` (default, offline): spaCy with scispaCy's biomedical tokenizer and a pattern-based
  entity ruler built from the CheXpert labeler's phrase lists plus anatomy/location terms.
  Negated mentions ("no pneumothorax") are still entities: EntMLM reconstructs them too.
- ``scispacy``: a scispaCy (or any spaCy) model by installed name or local path, e.g.
  ``en_core_sci_sm`` or ``en_ner_bc5cdr_md``.

An entity is ``(start, end, label)`` in characters of the report text.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterable
from functools import cached_property
from importlib import resources
from pathlib import Path

from ..errors import MaskkitError, MaskkitWarning, OutputWriteError
from ..io import atomic_write_text

Entity = tuple[int, int, str]

LEXICON_VERSION = "2"


def cache_dir() -> Path:
    """Where maskkit caches derived data: ``$MASKKIT_CACHE`` or ``~/.cache/maskkit``."""
    return Path(os.environ.get("MASKKIT_CACHE") or Path.home() / ".cache" / "maskkit")


def _phrase_regex(phrase: str) -> str:
    """CheXpert phrase syntax: ``_`` is a word boundary, otherwise a case-insensitive substring."""
    parts = [re.escape(p) for p in phrase.strip().lower().split("_")]
    return r"\b".join(parts)


def _read_phrases(folder) -> dict[str, list[str]]:
    out = {}
    for f in sorted(folder.iterdir(), key=lambda p: p.name):
        if f.name.endswith(".txt"):
            lines = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
            out[f.name[:-4].upper()] = lines
    return out


def _read_list(path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def load_lexicon() -> tuple[dict[str, list[str]], list[str]]:
    """(label -> mention phrases, unmention phrases) of the packaged lexicon."""
    root = resources.files("maskkit.data") / "lexicon"
    mentions = _read_phrases(root / "chexpert" / "mention")
    # the labeler's no_finding list holds *other* findings (emphysema, scoliosis, ...)
    mentions["OTHER_FINDING"] = mentions.pop("NO_FINDING", [])
    # post-surgical material and status (clips, sutures, wires, staples, sternotomy, ...): maskkit's
    # own list, before ANATOMY so "sternal wires" is one post-surgical mention
    mentions["POST_SURGICAL"] = _read_list(root / "postsurgical.txt")
    mentions["ANATOMY"] = _read_list(root / "anatomy.txt")
    unmentions = [p for ps in _read_phrases(root / "chexpert" / "unmention").values() for p in ps]
    return mentions, unmentions


class LexiconNER:
    """spaCy + scispaCy tokenizer + a regex entity ruler over the CheXpert phrase lists."""

    name = "lexicon"

    def __init__(self) -> None:
        mentions, unmentions = load_lexicon()
        groups = []
        self._labels = []
        for label, phrases in mentions.items():
            if phrases:
                groups.append(f"(?P<g{len(self._labels)}>{'|'.join(_phrase_regex(p) for p in sorted(phrases, key=len, reverse=True))})")
                self._labels.append(label)
        self._pattern = re.compile("|".join(groups), re.IGNORECASE)
        self._unmention = re.compile("|".join(_phrase_regex(p) for p in unmentions), re.IGNORECASE) if unmentions else None
        digest = hashlib.sha1(self._pattern.pattern.encode()).hexdigest()[:10]
        self.version = f"lexicon-{LEXICON_VERSION}-{digest}"

    @cached_property
    def nlp(self):
        import warnings

        import spacy
        from scispacy.custom_tokenizer import combined_rule_tokenizer

        nlp = spacy.blank("en")
        with warnings.catch_warnings():  # scispaCy's tokenizer regex trips a FutureWarning in re
            warnings.simplefilter("ignore", FutureWarning)
            nlp.tokenizer = combined_rule_tokenizer(nlp)
        return nlp

    def _matches(self, text: str) -> list[tuple[int, int, str]]:
        blocked = [m.span() for m in self._unmention.finditer(text)] if self._unmention else []
        out = []
        for m in self._pattern.finditer(text):
            s, e = m.span()
            if any(bs <= s and e <= be for bs, be in blocked):
                continue
            out.append((s, e, self._labels[int(m.lastgroup[1:])]))
        return out

    def __call__(self, texts: list[str]) -> list[list[Entity]]:
        """Entities of each text; a mention is widened to the whole scispaCy tokens it touches."""
        from spacy.util import filter_spans

        results = []
        for doc in self.nlp.pipe(texts, batch_size=256):
            spans = []
            for s, e, label in self._matches(doc.text):
                span = doc.char_span(s, e, label=label, alignment_mode="expand")
                if span is not None:
                    spans.append(span)
            doc.ents = filter_spans(spans)
            results.append([(ent.start_char, ent.end_char, ent.label_) for ent in doc.ents])
        return results


class ScispacyNER:
    """A named scispaCy/spaCy model (installed package name or a local model folder)."""

    name = "scispacy"

    def __init__(self, model: str = "en_core_sci_sm") -> None:
        import spacy

        self.model = model
        try:
            self.nlp = spacy.load(model, exclude=["parser", "lemmatizer", "tagger", "attribute_ruler"])
        except OSError:
            raise MaskkitError(
                f"ner.model: scispaCy model '{model}' is not installed; install it with "
                f"'pip install <{model} release archive>' as listed at https://allenai.github.io/scispacy/, "
                f"or use ner.backend=lexicon"
            ) from None
        meta = self.nlp.meta
        self.version = f"scispacy-{meta.get('name', model)}-{meta.get('version', '0')}"

    def __call__(self, texts: list[str]) -> list[list[Entity]]:
        return [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in self.nlp.pipe(texts, batch_size=64)]


def make_ner(backend: str = "lexicon", model: str | None = None):
    """The NER backend by name: ``lexicon`` or ``scispacy`` (with ``model``)."""
    if backend == "lexicon":
        return LexiconNER()
    if backend == "scispacy":
        return ScispacyNER(model or "en_core_sci_sm")
    raise MaskkitError(f"ner.backend: unknown backend '{backend}'; expected 'lexicon' or 'scispacy'")


def report_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class CachedNER:
    """Entities computed once per (report text, backend version) and kept on disk as JSON."""

    def __init__(self, backend, directory: str | Path | None = None) -> None:
        self.backend = backend
        self.path = Path(directory or cache_dir() / "ner") / f"{backend.version}.json"
        self._mem: dict[str, list[Entity]] | None = None
        self.dirty = False

    def _load(self) -> dict[str, list[Entity]]:
        if self._mem is None:
            self._mem = {}
            try:
                if self.path.is_file():
                    raw = json.loads(self.path.read_text(encoding="utf-8"))
                    self._mem = {k: [tuple(e) for e in v] for k, v in raw.items()}
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                self._mem = {}  # a damaged cache is rebuilt, never trusted
            except OSError as exc:  # an unreadable cache folder: computed again, as without a cache
                self._mem = {}
                self._unusable(f"cannot read {self.path} ({exc.strerror or exc})")
        return self._mem

    def __call__(self, texts: Iterable[str]) -> list[list[Entity]]:
        texts = list(texts)
        mem = self._load()
        keys = [report_hash(t) for t in texts]
        todo = sorted({k: t for k, t in zip(keys, texts) if k not in mem}.items())
        if todo:
            for (k, _), ents in zip(todo, self.backend([t for _, t in todo])):
                mem[k] = ents
            self.dirty = True
        return [mem[k] for k in keys]

    def save(self) -> None:
        """Write the entities computed so far. The cache is optional: when it cannot be written
        (a read-only ``HOME``, a full disk) a :class:`~maskkit.errors.MaskkitWarning` names
        ``MASKKIT_CACHE`` and the run goes on (entities are computed again by the next run)."""
        if self.dirty and self._mem is not None:
            try:
                atomic_write_text(self.path, json.dumps(self._mem, separators=(",", ":")))
            except OutputWriteError as exc:
                self._unusable(f"cannot write {self.path} ({os.strerror(exc.errno)})" if exc.errno else str(exc))
            self.dirty = False

    def _unusable(self, why: str) -> None:
        warnings.warn(f"entity cache: {why}; going on without it (entities are recomputed each run); set MASKKIT_CACHE "
                      "to a writable folder to keep them", MaskkitWarning, stacklevel=3)
