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

#: the findings NIH ChestX-ray14's ``BBox_List_2017.csv`` boxes (``Infiltrate`` there is ``Infiltration``)
NIH_BBOX_FINDINGS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule", "Pneumonia", "Pneumothorax",
)

#: MS-CXR's eight ``category`` values
MS_CXR_CATEGORIES: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Lung Opacity", "Pleural Effusion", "Pneumonia",
    "Pneumothorax",
)

#: VinDr-CXR's local labels (the ``class_name`` of a box; PhysioNet release, 22, of which Kaggle's train.csv uses 14)
VINDR_LABELS: tuple[str, ...] = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Clavicle fracture", "Consolidation", "Edema",
    "Emphysema", "Enlarged PA", "ILD", "Infiltration", "Lung Opacity", "Lung cavity", "Lung cyst", "Mediastinal shift",
    "Nodule/Mass", "Other lesion", "Pleural effusion", "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis",
    "Rib fracture",
)


def label_key(label: str) -> str:
    """How labels compare: underscores as spaces, lower case, no outer space
    (``"Support_Devices"`` and ``"support devices"`` are one label)."""
    return label.replace("_", " ").strip().lower()


def is_no_finding(label: str) -> bool:
    """Whether ``label`` names the normal class (``No Finding``, ``no_finding``, any case)."""
    return label_key(label) == label_key(NO_FINDING)
