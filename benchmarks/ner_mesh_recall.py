"""Per-MeSH-term mention recall of the lexicon NER on the development Open-i reports.

    python benchmarks/ner_mesh_recall.py                       # headings with >= 20 reports
    python benchmarks/ner_mesh_recall.py --min-reports 10 --exclude-label POST_SURGICAL

Reference: each report's manual MeSH major headings (the part before the first "/"). For a
heading, ``n`` counts the reports indexed with it; ``in text`` those whose FINDINGS/IMPRESSION
hold a phrase expressing it (``PHRASES``: surface forms written from each heading's meaning,
before and independently of the lexicon, never adjusted to its output); ``found`` those where a
NER entity overlaps such a phrase. Mention recall = found / in text (the NER's share of the
mentions that are there); found / n also counts reports whose wording the phrase list misses.
Headings that name no finding (``normal``, ``No Indexing``, image quality) are left out.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import Counter
from pathlib import Path

from maskkit.data.ner import LexiconNER
from maskkit.data.records import openi

# MeSH major heading -> the report wording that expresses it (case-insensitive regex)
PHRASES = {
    "Lung": r"lung|pulmonary",
    "Opacity": r"opaci|densit|airspace|air space|infiltrat",
    "Cardiomegaly": r"cardiomegaly|heart|cardiac|cardiomediastinal",
    "Pulmonary Atelectasis": r"atelecta",
    "Calcinosis": r"calcifi|calcinosis",
    "Calcified Granuloma": r"granulom",
    "Thoracic Vertebrae": r"thoracic spine|vertebra|spine|spinal",
    "Cicatrix": r"scar|cicatri",
    "Spine": r"spine|spinal|vertebra",
    "Aorta": r"aort",
    "Markings": r"marking",
    "Pleural Effusion": r"effusion",
    "Diaphragm": r"diaphragm",
    "Atherosclerosis": r"atherosclero|arteriosclero|calcifi",
    "Catheters, Indwelling": r"catheter|picc|\bline|\bport\b|portacath|port-a-cath",
    "Density": r"densit",
    "Deformity": r"deformit",
    "Airspace Disease": r"airspace|air space|consolidat|opaci|infiltrat",
    "Implanted Medical Device": r"pacemaker|pacer|defibrillator|aicd|\bicd\b|device|generator|\blead|stimulator|\bport\b|loop recorder",
    "Nodule": r"nodul",
    "Granulomatous Disease": r"granulom",
    "Surgical Instruments": r"clip|sutur|staple|wire|sternotomy|surgical|cerclage",
    "Aorta, Thoracic": r"aort",
    "Scoliosis": r"scolio|curvature",
    "Costophrenic Angle": r"costophrenic|blunting",
    "Fractures, Bone": r"fracture",
    "Pulmonary Congestion": r"congesti|vascular|vasculature",
    "Infiltrate": r"infiltrat",
    "Osteophyte": r"osteophyt|spur",
    "Spondylosis": r"spondylo|degenerat",
    "Thickening": r"thicken",
    "Cardiac Shadow": r"cardiac|heart",
    "Emphysema": r"emphysem|hyperinflat|hyperexpan|copd",
    "Hernia, Hiatal": r"hiatal|hiatus|hernia",
    "Pulmonary Disease, Chronic Obstructive": r"copd|obstructive|emphysem|hyperinflat|hyperexpan",
    "Pulmonary Edema": r"edema|oedema",
    "Granuloma": r"granulom",
    "Pneumonia": r"pneumonia|infect|consolidat",
    "Pulmonary Emphysema": r"emphysem|hyperinflat|hyperexpan",
    "Tube, Inserted": r"tube",
    "Bone Diseases, Metabolic": r"osteopeni|osteopor|demineraliz|mineraliz",
    "Diaphragmatic Eventration": r"eventration",
    "Consolidation": r"consolidat",
    "Arthritis": r"arthrit|degenerat|arthropath",
    "Pneumothorax": r"pneumothora",
    "Foreign Bodies": r"foreign bod|metallic|bullet|fragment|shrapnel|radiopaque",
    "Kyphosis": r"kypho",
    "Medical Device": r"device|pacemaker|pacer|catheter|tube|\bline|stent|clip|wire",
    "Lucency": r"lucen",
    "Pulmonary Fibrosis": r"fibro|scar|interstitial",
    "Mediastinum": r"mediastin",
    "Stents": r"stent",
    "Lung, Hyperlucent": r"lucen|hyperinflat|hyperexpan|emphysem",
    "Lung Diseases, Interstitial": r"interstitial|fibro|reticul",
    "Mass": r"\bmass",
    "Spinal Fusion": r"fusion|hardware|rod",
    "Shoulder": r"shoulder|humer|glenohumeral|acromio",
    "Epicardial Fat": r"fat pad|epicardial|fat",
    "Pulmonary Artery": r"pulmonary arter|hilar|hila\b|hilum",
    "Heart": r"heart|cardiac",
}
NOT_A_FINDING = {"normal", "No Indexing", "Technical Quality of Image Unsatisfactory"}


def measure(src: Path, min_reports: int, exclude: set[str]) -> tuple[list[tuple], dict]:
    recs = [r for r in openi(src).records if r.report]
    ner = LexiconNER()
    t0 = time.perf_counter()
    ents = ner([r.report for r in recs])
    secs = time.perf_counter() - t0
    counts = Counter(h for r in recs for h in {m.split("/")[0].strip() for m in r.extra["mesh"]})
    rows = []
    for heading, n in counts.most_common():
        if n < min_reports or heading in NOT_A_FINDING:
            continue
        pattern = PHRASES.get(heading)
        if pattern is None:
            rows.append((heading, n, None, None))
            continue
        rx = re.compile(pattern, re.I)
        in_text = found = 0
        for r, es in zip(recs, ents):
            if heading not in {m.split("/")[0].strip() for m in r.extra["mesh"]}:
                continue
            spans = [m.span() for m in rx.finditer(r.report)]
            if not spans:
                continue
            in_text += 1
            found += any(s < ee and ss < e for s, e in spans for ss, ee, lab in es if lab not in exclude)
        rows.append((heading, n, in_text, found))
    return rows, {"reports": len(recs), "seconds": secs, "headings": len(counts)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "openi" / "ecgen-radiology-dev.tgz"))
    ap.add_argument("--min-reports", type=int, default=20, help="headings indexed on at least this many reports")
    ap.add_argument("--exclude-label", action="append", default=[], help="ignore entities of this label (e.g. POST_SURGICAL)")
    args = ap.parse_args()
    src = Path(args.src)
    if not src.is_file():
        raise SystemExit(f"needs {src} (the Open-i report XMLs, the project's ../shared data); not found")
    rows, info = measure(src, args.min_reports, set(args.exclude_label))
    print(f"{info['reports']} Open-i reports with text, {info['headings']} MeSH headings; lexicon NER "
          f"{info['reports'] / info['seconds']:.0f} reports/s" + (f"; entities of {', '.join(args.exclude_label)} ignored" if args.exclude_label else ""))
    print()
    print("| MeSH heading | reports | phrase in text | NER entity on it | mention recall | found / reports |")
    print("|---|---:|---:|---:|---:|---:|")
    tot_t = tot_f = 0
    for heading, n, in_text, found in rows:
        if in_text is None:
            print(f"| {heading} | {n} | no phrase list | | | |")
            continue
        tot_t, tot_f = tot_t + in_text, tot_f + found
        rec = f"{found / in_text:.1%}" if in_text else "-"
        print(f"| {heading} | {n} | {in_text} | {found} | {rec} | {found / n:.1%} |")
    print(f"| **all listed (pooled)** | | {tot_t} | {tot_f} | {tot_f / max(tot_t, 1):.1%} | |")


if __name__ == "__main__":
    main()
