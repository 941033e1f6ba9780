"""The label vocabularies: the one place the CheXpert and NIH label lists and the normal class are written.

Dataset adapters (:mod:`maskkit.data.records`), the model's default prompts
(``model.prompts``: :data:`maskkit.model.config.CHEXPERT_PROMPTS`) and the evaluations
(:mod:`maskkit.eval.zeroshot`, :mod:`maskkit.eval.subsets`) read them here; a label is compared
by :func:`label_key` everywhere (``Support_Devices`` is ``support devices``). No imports: the
configuration reads it cheaply.
"""

from __future__ import annotations

#: the normal class of CheXpert-style label sets
NO_FINDING = "No Finding"

#: CheXpert's 14 observations, in its CSV's column order (MIMIC-CXR-JPG's ``chexpert.csv`` too)
CHEXPERT_LABELS: tuple[str, ...] = (
    NO_FINDING, "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
    "Fracture", "Support Devices",
)

#: NIH ChestX-ray14's 14 findings, in its ``Finding Labels`` order
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
    "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia",
)


def label_key(label: str) -> str:
    """How labels compare: underscores as spaces, lower case, no outer space
    (``"Support_Devices"`` and ``"support devices"`` are one label)."""
    return label.replace("_", " ").strip().lower()


def is_no_finding(label: str) -> bool:
    """Whether ``label`` names the normal class (``No Finding``, ``no_finding``, any case)."""
    return label_key(label) == label_key(NO_FINDING)
