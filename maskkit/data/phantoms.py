"""Synthetic chest radiograph phantoms with ground-truth lesion masks and templated reports.

The embedded default dataset: what ``maskkit run preset=xlip`` trains on with no download, and
what lets maskkit measure how much of a mask falls on pathology. Deterministic: sample ``i`` of
seed ``s`` depends only on ``(s, i)``, so any subset can be generated in any order.

Image convention: radiological display (the patient's right is on the image's left), values in
``[0, 1]``, bright = dense. Findings: pleural effusion (costophrenic angle), cardiomegaly, lung
nodule / focal opacity, pneumothorax (apical-lateral edge) and a support device line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..findings import NO_FINDING

FINDINGS = ("Pleural Effusion", "Cardiomegaly", "Lung Lesion", "Pneumothorax", "Support Devices")
LABELS = FINDINGS + (NO_FINDING,)
#: generator-index offsets of the phantom splits: training uses 0..n-1; the held-out zero-shot set,
#: the mask-lesion evaluation and development diagnosis (benchmarks only) start here
HELD_OUT_OFFSET, MASK_EVAL_OFFSET, DEV_OFFSET = 10_000_000, 20_000_000, 30_000_000
SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")


@dataclass
class Phantom:
    """One phantom: ``image`` ``[H, W]`` float32 in [0, 1]; one bool mask per present finding."""

    index: int
    image: np.ndarray
    masks: dict[str, np.ndarray]
    findings: list[dict]
    report: str | None
    labels: dict[str, float] = field(default_factory=dict)

    @property
    def lesion_mask(self) -> np.ndarray:
        """``[H, W]`` bool union of every finding's mask (all False for a normal study)."""
        out = np.zeros(self.image.shape, dtype=bool)
        for m in self.masks.values():
            out |= m
        return out


def _ellipse(yy, xx, cy, cx, ry, rx):
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _blur(img: np.ndarray, passes: int = 2) -> np.ndarray:
    out = img
    for _ in range(passes):
        p = np.pad(out, 1, mode="edge")
        out = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] + 4 * p[1:-1, 1:-1]) / 8.0
    return out


def _side_x(side: str, lung_cx: tuple[float, float]) -> float:
    # patient's right lung is on the image's left
    return lung_cx[0] if side == "right" else lung_cx[1]


class PhantomGenerator:
    """``PhantomGenerator(seed, size)[i]`` -> :class:`Phantom`; ``p_unpaired`` have no report."""

    def __init__(self, seed: int = 0, size: int = 96, p_unpaired: float = 0.2, p_normal: float = 0.3) -> None:
        from ..options import PHANTOM_MIN_SIZE

        if size < PHANTOM_MIN_SIZE:
            raise ValueError(f"phantom size {size} is too small; expected at least {PHANTOM_MIN_SIZE} pixels")
        self.seed, self.size, self.p_unpaired, self.p_normal = seed, size, p_unpaired, p_normal
        lin = (np.arange(size, dtype=np.float64) + 0.5) / size
        self.yy, self.xx = np.meshgrid(lin, lin, indexing="ij")

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index, 0x9E37])

    def __getitem__(self, index: int) -> Phantom:
        rng = self.rng(index)
        yy, xx = self.yy, self.xx
        # anatomy, with per-patient variation
        lung_cx = (0.33 + rng.normal(0, 0.01), 0.67 + rng.normal(0, 0.01))
        lung_cy, lung_ry, lung_rx = 0.48 + rng.normal(0, 0.01), 0.30 + rng.normal(0, 0.01), 0.14 + rng.normal(0, 0.006)
        body = _ellipse(yy, xx, 0.52, 0.5, 0.52, 0.44)
        lungs = [_ellipse(yy, xx, lung_cy, cx, lung_ry, lung_rx) for cx in lung_cx]
        img = np.full(yy.shape, 0.04)
        img[body] = 0.42
        for lung in lungs:
            img[lung] = 0.16
        img[(np.abs(xx - 0.5) < 0.035) & (yy > 0.08)] = 0.62  # spine / mediastinum
        ribs = np.zeros_like(img)
        for k in range(7):
            y0 = 0.22 + 0.075 * k + rng.normal(0, 0.004)
            curve = y0 + 0.10 * (np.abs(xx - 0.5) - 0.12) ** 2 * 6 - 0.02
            ribs += (np.abs(yy - curve) < 0.012) * 0.12
        lung_any = lungs[0] | lungs[1]
        img += ribs * lung_any
        # lung markings (vessels): faint noise inside the lungs
        markings = _blur(rng.normal(0, 1, img.shape), 1) * 0.03
        findings: list[dict] = []
        masks: dict[str, np.ndarray] = {}
        normal = rng.random() < self.p_normal
        present = [] if normal else [f for f in FINDINGS if rng.random() < 0.35]
        if not normal and not present:
            present = [FINDINGS[int(rng.integers(len(FINDINGS)))]]
        heart_r = 0.13 + rng.normal(0, 0.006)
        if "Cardiomegaly" in present:
            heart_r = 0.20 + rng.normal(0, 0.01)
        heart = _ellipse(yy, xx, 0.62, 0.54, heart_r * 0.85, heart_r)
        img[heart] = 0.58
        if "Cardiomegaly" in present:
            masks["Cardiomegaly"] = heart
            findings.append({"finding": "Cardiomegaly", "side": None, "zone": None,
                             "severity": "moderate" if heart_r > 0.205 else "mild"})
        pneumo_mask = np.zeros_like(heart)
        if "Pneumothorax" in present:
            side = SIDES[int(rng.integers(2))]
            lung = lungs[SIDES.index(side)]
            cx = _side_x(side, lung_cx)
            lateral = (xx - cx) * (-1 if side == "right" else 1)
            depth = 0.05 + rng.random() * 0.05
            region = lung & (yy < lung_cy + 0.05) & (lateral > lung_rx - depth - 0.08 * (yy - (lung_cy - lung_ry)))
            if region.sum() < 4:
                region = lung & (yy < lung_cy)
            img[region] = 0.07  # air without lung markings
            edge = region ^ _erode(region)
            img[edge & lung] = 0.33  # visceral pleural line
            pneumo_mask = region
            masks["Pneumothorax"] = region
            findings.append({"finding": "Pneumothorax", "side": side, "zone": "apical", "severity": None})
        img += markings * (lung_any & ~pneumo_mask)
        if "Pleural Effusion" in present:
            side = SIDES[int(rng.integers(2))]
            lung = lungs[SIDES.index(side)]
            cx = _side_x(side, lung_cx)
            level = lung_cy + lung_ry * (0.35 + rng.random() * 0.35)
            meniscus = level - 0.06 * ((xx - cx) * (-1 if side == "right" else 1) / lung_rx)
            region = lung & (yy > meniscus)
            img[region] = 0.55
            masks["Pleural Effusion"] = region
            findings.append({"finding": "Pleural Effusion", "side": side, "zone": "costophrenic angle",
                             "severity": "small" if level > lung_cy + lung_ry * 0.55 else "moderate"})
        if "Lung Lesion" in present:
            side = SIDES[int(rng.integers(2))]
            zone = ZONES[int(rng.integers(3))]
            cx = _side_x(side, lung_cx) + rng.normal(0, 0.03)
            cy = lung_cy + {"upper": -0.18, "middle": 0.0, "lower": 0.14}[zone] + rng.normal(0, 0.02)
            r = 0.03 + rng.random() * 0.04
            blob = np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r * 0.6) ** 2)))
            img += 0.35 * blob
            region = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r ** 2
            masks["Lung Lesion"] = region
            findings.append({"finding": "Lung Lesion", "side": side, "zone": zone,
                             "severity": "nodule" if r < 0.05 else "mass"})
        if "Support Devices" in present:
            x0 = 0.5 + rng.normal(0, 0.01)
            x1 = lung_cx[0] + rng.normal(0, 0.03) + 0.06
            y1 = 0.45 + rng.random() * 0.15
            t = np.clip((yy - 0.05) / (y1 - 0.05), 0, 1)
            path_x = x0 + (x1 - x0) * t ** 2
            line = (np.abs(xx - path_x) < 0.008) & (yy > 0.05) & (yy < y1)
            img[line] = 0.95
            masks["Support Devices"] = _dilate(line)
            findings.append({"finding": "Support Devices", "side": "right", "zone": None, "severity": None})
        img = _blur(img, 1) + rng.normal(0, 0.02, img.shape)
        img = np.clip(img, 0, 1).astype(np.float32)
        labels = {f: float(f in present) for f in FINDINGS}
        labels[NO_FINDING] = float(not present)
        report = None if rng.random() < self.p_unpaired else write_report(findings, rng)
        return Phantom(index, img, masks, findings, report, labels)

    def __len__(self) -> int:  # unbounded; len() is what a Dataset wrapper sets
        raise TypeError("a PhantomGenerator has no length; wrap it in PhantomDataset(n=...)")


def _erode(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1)
    return m & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]


def _dilate(m: np.ndarray) -> np.ndarray:
    p = np.pad(m, 1)
    return m | p[:-2, 1:-1] | p[2:, 1:-1] | p[1:-1, :-2] | p[1:-1, 2:]


# --- reports ---------------------------------------------------------------------------------

_POSITIVE = {
    "Pleural Effusion": ["There is a {severity} {side} pleural effusion.", "{Severity} {side} pleural effusion blunting the {side} costophrenic angle.",
                         "A {severity} {side} effusion is present at the costophrenic angle."],
    "Cardiomegaly": ["The heart is enlarged.", "Cardiomegaly is present.", "{Severity} cardiomegaly.", "The cardiac silhouette is enlarged."],
    "Lung Lesion": ["There is a {severity} in the {side} {zone} lung zone.", "A {side} {zone} lobe {severity} is noted.",
                    "{Severity} in the {zone} {side} lung."],
    "Pneumothorax": ["There is a {side} apical pneumothorax.", "Small {side} pneumothorax.", "A {side} pneumothorax is seen at the apex."],
    "Support Devices": ["A right-sided central venous catheter is in place.", "Support line projects over the right chest.",
                        "Right central line with tip in the mid SVC."],
}
_NEGATIVE = {
    "Pleural Effusion": ["No pleural effusion.", "There is no pleural effusion.", "No effusion."],
    "Cardiomegaly": ["The heart size is normal.", "Heart size is within normal limits.", "No cardiomegaly."],
    "Lung Lesion": ["No focal nodule or mass.", "No suspicious pulmonary nodule."],
    "Pneumothorax": ["No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."],
    "Support Devices": [],
}
_NORMAL = ["No acute cardiopulmonary abnormality.", "The lungs are clear.", "Normal chest radiograph."]


def write_report(findings: list[dict], rng: np.random.Generator) -> str:
    """A report that names every finding (side, location, size) and negates some absent ones."""
    present = {f["finding"] for f in findings}
    sentences = []
    for f in findings:
        t = _POSITIVE[f["finding"]][int(rng.integers(len(_POSITIVE[f["finding"]])))]
        sev = f.get("severity") or ""
        sentences.append(t.format(side=f.get("side") or "", zone=f.get("zone") or "", severity=sev,
                                  Severity=sev.capitalize()).replace("  ", " "))
    for name in FINDINGS:
        if name not in present and _NEGATIVE[name] and rng.random() < 0.6:
            opts = _NEGATIVE[name]
            sentences.append(opts[int(rng.integers(len(opts)))])
    order = rng.permutation(len(sentences))
    findings_text = " ".join(sentences[i] for i in order)
    impression = _NORMAL[int(rng.integers(len(_NORMAL)))] if not present else \
        ", ".join(sorted(p.lower() for p in present)).capitalize() + "."
    return f"FINDINGS: {findings_text} IMPRESSION: {impression}"
