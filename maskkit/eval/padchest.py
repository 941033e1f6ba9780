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
  - labels of the study, not findings; plus every label, seen ones included, that does not appear
  (no positive, or no negative: :func:`maskkit.eval.labels.undefined_reason`) among the evaluated
  images: "do not appear in the test set". On PadChest's physician-labelled set, 8 absent labels
  would make the paper's 12. A seen label left out this way is said in one warning line
  (``warnings``): Seen 8 then scores fewer than 8.
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
    (ranked). ``seen``: the seen labels scored (those with a positive and a negative image).
    ``positives``: positive images per label of the table and per seen label; ``excluded``: label
    -> why it is neither seen nor unseen; ``warnings``: one line per seen label left out, and one
    for the unseen ones.
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
    warnings: list[str] = field(default_factory=list)

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
                "excluded": self.excluded, "warnings": self.warnings}


def padchest_protocol(table, physician_only: bool = True, seen: dict[str, str] | None = None,
                      not_findings=NOT_FINDINGS) -> PadChestProtocol:
    """The seen / unseen classes and the per-image label matrix of a PadChest ``table``.

    ``seen`` (default :data:`SEEN`) maps PadChest labels to findings; ``not_findings`` are left
    out; every label, seen or not, needs a positive and a negative image among the evaluated ones
    to be scored (:func:`maskkit.eval.labels.undefined_reason`, the rule zero-shot reports
    undefined labels by), else it is in neither set (``excluded`` says why; a seen label also in
    ``warnings``, one line naming it). ``physician_only`` keeps the images whose ``MethodLabel`` is
    ``Physician``.

    Raises :class:`MaskkitError` (one line) for a table without labels (loaded with
    ``labels=[]``), ``physician_only`` on records that carry no ``MethodLabel``, or no image left.
    """
    from .labels import undefined_reason

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
    pos = np.nansum(y == 1.0, axis=0).astype(int)
    neg = np.nansum(y == 0.0, axis=0).astype(int)
    positives = dict(zip(names, map(int, pos)))
    count = dict(zip(names, zip(map(int, pos), map(int, neg))))
    seen_names = [by_key.get(_key(s), s) for s in seen]
    for s in seen_names:  # a seen label no image has: no positive
        positives.setdefault(s, 0)
    seen_keys, other_keys = {_key(s) for s in seen}, {_key(s) for s in not_findings}
    excluded, candidates, scored_seen, warnings = {}, [], [], []
    for n in seen_names:
        why = undefined_reason(*count.get(n, (0, len(recs))))
        if why is None:
            scored_seen.append(n)
            continue
        excluded[n] = why
        warnings.append(f"padchest: seen class '{n}' has {why} among the {len(recs)} evaluated images: it is in neither "
                        f"set and not scored")
    for j, n in enumerate(names):
        if _key(n) in seen_keys:
            continue
        if _key(n) in other_keys:
            excluded[n] = "not a finding"
            continue
        why = undefined_reason(pos[j], neg[j])
        if why is not None:
            excluded[n] = why
            continue
        candidates.append(n)
    absent = [n for n in names if _key(n) not in seen_keys and excluded.get(n, "not a finding") != "not a finding"]
    if absent:
        warnings.append(f"padchest: {len(absent)} other labels have no positive or no negative among the {len(recs)} "
                        f"evaluated images and are in neither set (e.g. '{absent[0]}'; the JSON's protocol.excluded lists them)")
    unseen = sorted(candidates, key=lambda n: (-positives[n], _key(n)))
    classes = scored_seen + unseen
    cols = [names.index(c) for c in classes]
    return PadChestProtocol([r.id for r in recs], classes, y[:, cols], scored_seen, unseen, positives, excluded,
                            physician_only, {by_key.get(_key(s), s): f for s, f in seen.items()}, warnings)
