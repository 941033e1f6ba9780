"""PadChest zero-shot as in the XLIP paper's Tables I-II: 8 seen classes, unseen classes by frequency.

What the paper says (Wu et al., arXiv:2407.19546, Sec. V-A and Tables I-II): "Only 8 categories in
PadChest strictly match the visible categories in the MIMIC data"; "12 categories that either
cannot be strictly matched, but cannot be counted as unseen classes, or do not appear in the test
set"; "at most 173 unseen classes"; Unseen 10 / 20 are "the 10 [20] categories with the highest
number" of images. 8 + 12 + 173 = 193, the size of PadChest's label vocabulary as KAD scores it
(xiaoman-zhang/KAD, ``A3_CLIP/test_padchest.py``: 193 names, ``normal`` to ``lipomatosis``), whose
PadChest test set is the physician-labelled images (n = 39,053). The paper names none of the 8
or the 12; maskkit's reading (docs/assumptions.md, A38) is:

- **Seen 8** (:data:`SEEN`): the PadChest labels whose name *is* a MIMIC-CXR/CheXpert finding -
  atelectasis, cardiomegaly, consolidation, fracture, pleural effusion, pneumonia, pneumothorax -
  and ``pulmonary edema`` for Edema (CheXpert's Edema is pulmonary edema, Irvin et al. 2019).
  Subtypes (``laminar atelectasis``, ``rib fracture``, ...) are not the finding and stay unseen.
- **Neither** (:data:`NOT_FINDINGS`): ``normal``, ``unchanged``, ``exclude``, ``suboptimal study``
  - labels of the study, not findings; plus every label that does not appear (no positive, or no
  negative) among the evaluated images: "do not appear in the test set". On PadChest's
  physician-labelled set, 8 absent labels would make the paper's 12.
- **Unseen**: every other label, ranked by the number of positive images among the evaluated
  ones (ties by name); Unseen 10 / 20 are the first 10 / 20, Unseen all is every one.

Images: the physician-labelled ones (``MethodLabel == "Physician"``, the adapter's
``extra["method_label"]``), every projection unless the adapter's ``views`` option filtered them
(neither CheXzero nor KAD says it filtered views). Labels come from the PadChest adapter
(:func:`maskkit.data.records.padchest`, which parses ``Labels`` with
:func:`maskkit.data.records.padchest_labels`); load it without a ``labels`` restriction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import MaskkitError

#: PadChest label -> the MIMIC-CXR / CheXpert finding it strictly matches (the paper's seen 8)
SEEN = {
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "fracture": "Fracture",
    "pleural effusion": "Pleural Effusion",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "pulmonary edema": "Edema",
}
#: PadChest labels that describe the study, not a finding: neither seen nor unseen
NOT_FINDINGS = ("normal", "unchanged", "exclude", "suboptimal study")
PHYSICIAN = "Physician"
SUBSETS = {"seen": None, "unseen10": 10, "unseen20": 20, "unseen": None}


def _key(label: str) -> str:
    return " ".join(label.split()).casefold()


@dataclass
class PadChestProtocol:
    """The evaluated images and their labels under the protocol.

    ``labels`` ``[n_images, len(classes)]``: 1.0 / 0.0 / NaN (a ``Labels`` cell the adapter could
    not parse) per image (``ids``, table order) and class; ``classes`` = ``seen`` then ``unseen``
    (ranked). ``positives``: positive images per label of the table; ``excluded``: label -> why
    it is neither seen nor unseen.
    """

    ids: list[str]
    classes: list[str]
    labels: np.ndarray
    seen: list[str]
    unseen: list[str]
    positives: dict[str, int]
    excluded: dict[str, str] = field(default_factory=dict)
    physician_only: bool = True
    findings: dict[str, str] = field(default_factory=dict)  # seen PadChest label -> the finding it matches

    def subset(self, name: str) -> tuple[list[str], np.ndarray, list[str]]:
        """(PadChest labels, their label columns ``[n_images, c]``, prompt names) of ``seen``,
        ``unseen10``, ``unseen20`` or ``unseen`` (all). A seen label's prompt name is the
        MIMIC-CXR finding it matches (``pulmonary edema`` -> ``Edema``), an unseen one's its own
        name. Fewer unseen labels than 10 / 20 give what there is. Unknown name: ``MaskkitError``."""
        if name not in SUBSETS:
            raise MaskkitError(f"padchest: unknown subset '{name}'; expected one of {', '.join(SUBSETS)}")
        labs = self.seen if name == "seen" else self.unseen[:SUBSETS[name]]
        cols = [self.classes.index(c) for c in labs]
        prompts = [self.findings.get(c, c) for c in labs]
        return list(labs), self.labels[:, cols], prompts

    def to_json(self) -> dict:
        return {"n_images": len(self.ids), "physician_only": self.physician_only,
                "seen": {c: self.findings[c] for c in self.seen}, "unseen": self.unseen,
                "unseen10": self.unseen[:10], "unseen20": self.unseen[:20], "positives": self.positives,
                "excluded": self.excluded}


def padchest_protocol(table, physician_only: bool = True, seen: dict[str, str] | None = None,
                      not_findings=NOT_FINDINGS) -> PadChestProtocol:
    """The seen / unseen classes and the per-image label matrix of a PadChest ``table``.

    ``seen`` (default :data:`SEEN`) maps PadChest labels to findings; ``not_findings`` are left
    out; labels with no positive or no negative image are left out of the unseen ranking
    (``excluded`` says why); seen labels always stay (a seen label without both classes is then
    undefined to score, as zero-shot reports it). ``physician_only`` keeps the images whose
    ``MethodLabel`` is ``Physician``.

    A seen label that no image of the table has is a column of negatives (unknown where a
    ``Labels`` cell could not be read): the adapter's vocabulary is the labels it found.

    Raises :class:`MaskkitError` (one line) for a table without labels (loaded with
    ``labels=[]``), ``physician_only`` on records that carry no ``MethodLabel``, or no image left.
    """
    seen = dict(SEEN if seen is None else seen)
    names = list(table.label_names)
    if not names:
        raise MaskkitError(f"padchest: table {table.name} has no labels; load PadChest without the labels option "
                           f"(labels=[] drops them)")
    recs = table.records
    if physician_only:
        if recs and all(r.extra.get("method_label") is None for r in recs):
            raise MaskkitError(f"padchest: no record of table {table.name} carries a MethodLabel (the CSV column); "
                               f"pass physician_only=False to evaluate every image")
        recs = [r for r in recs if r.extra.get("method_label") == PHYSICIAN]
    if not recs:
        raise MaskkitError(f"padchest: no image of table {table.name} left to evaluate"
                           + (" (none is physician-labelled)" if physician_only else ""))
    by_key = {_key(n): n for n in names}
    y = np.array([[r.labels.get(n, math.nan) for n in names] for r in recs], dtype=np.float64).reshape(len(recs), len(names))
    absent = [s for s in seen if _key(s) not in by_key]
    if absent:  # a seen label no image has: negative wherever the Labels cell was read, unknown where it was not
        parsed = ~np.isnan(y).all(1)
        y = np.concatenate([y, np.where(parsed, 0.0, math.nan)[:, None].repeat(len(absent), 1)], axis=1)
        names = names + absent
        by_key.update({_key(s): s for s in absent})
    pos = np.nansum(y == 1.0, axis=0).astype(int)
    neg = np.nansum(y == 0.0, axis=0).astype(int)
    positives = dict(zip(names, map(int, pos)))
    seen_names = [by_key[_key(s)] for s in seen]
    seen_keys, other_keys = {_key(s) for s in seen}, {_key(s) for s in not_findings}
    excluded, candidates = {}, []
    for j, n in enumerate(names):
        if _key(n) in seen_keys:
            continue
        if _key(n) in other_keys:
            excluded[n] = "not a finding"
            continue
        if pos[j] == 0 or neg[j] == 0:
            excluded[n] = "no positive image" if pos[j] == 0 else "no negative image"
            continue
        candidates.append(n)
    unseen = sorted(candidates, key=lambda n: (-positives[n], _key(n)))
    classes = seen_names + unseen
    cols = [names.index(c) for c in classes]
    return PadChestProtocol([r.id for r in recs], classes, y[:, cols], seen_names, unseen, positives, excluded,
                            physician_only, {by_key[_key(s)]: f for s, f in seen.items()})
