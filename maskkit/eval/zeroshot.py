"""Zero-shot classification, the CheXzero protocol.

For each label a positive and a negative prompt (templates ``"{label}"`` / ``"no {label}"``,
ending with a full stop by default, :data:`PROMPT_STYLES`; several templates are averaged after L2
normalisation); the probability of the label is
the softmax over the pair of cosine similarities. Per-label and mean AUC, F1 and ACC with
bootstrap 95% confidence intervals. F1 and ACC threshold the probability at 0.5, i.e. "the
positive prompt is closer than the negative one" - a rule fixed before seeing any labels, so no
threshold is tuned on the evaluation set; a tie (both prompts equally close) is half a yes and AUC
counts a tied pair 1/2, the expected value of a random tie-break (:mod:`maskkit.eval.ties`) (No
Finding scored as absence: "no finding decided present", :func:`predictions`). Unknown (NaN) labels are left out of that label's
metrics and counted per label; labels with no positives or no negatives are reported as undefined,
left out of every mean, and warned about (a label policy such as ``blank=unknown`` can cause it). ``No Finding`` has its own prompt pair, since
"no No Finding" inverts the label (a CheXzero pitfall). Several checkpoints average their
probabilities (the paper's "+ Ensemble").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MaskkitError
from ..findings import NO_FINDING, is_no_finding, label_key
from .ties import TIES, decision_weights

POSITIVE = ("{label}",)
NEGATIVE = ("no {label}",)
SPECIAL_PROMPTS = {NO_FINDING: (("no acute cardiopulmonary abnormality", "no finding"),
                                  ("acute cardiopulmonary abnormality", "abnormal finding"))}
METRICS = ("auc", "f1", "acc")
THRESHOLD = 0.5  # F1/ACC decision: the positive prompt is closer than the negative one (fixed, never tuned)


# How a prompt ends (appended to every prompt, No Finding's included). "sentence" (default): like a
# report sentence, with the full stop that ends every training report just before the
# <end_of_text> token CLIP's text tower pools (A32; a [CLS]-pooled BERT tower sees the full stop too);
# "chexzero": the bare phrase, as CheXzero wrote it.
PROMPT_STYLES = {"sentence": ".", "chexzero": ""}
DEFAULT_PROMPT_STYLE = "sentence"


def prompt_pair(label: str, positive=POSITIVE, negative=NEGATIVE, style: str = DEFAULT_PROMPT_STYLE) -> tuple[list[str], list[str]]:
    """(positive prompts, negative prompts) of a label, each ending as ``style`` says
    (:data:`PROMPT_STYLES`). Raises ``ValueError`` for an unknown style."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style '{style}': expected one of {', '.join(PROMPT_STYLES)}")
    end = PROMPT_STYLES[style]
    name = label_key(label)
    special = {label_key(k): v for k, v in SPECIAL_PROMPTS.items()}
    if name in special:  # "No Finding", "no_finding", ...
        pos, neg = special[name]
    else:
        pos, neg = [t.format(label=name) for t in positive], [t.format(label=name) for t in negative]
    return [t + end for t in pos], [t + end for t in neg]


@torch.no_grad()
def text_embeddings(model, prompts: list[str], device) -> torch.Tensor:
    """Mean of L2-normalised prompt embeddings, re-normalised: ``[C]``."""
    enc = model.tokenizer(prompts)
    pooled, _ = model.encode_text(enc.ids.to(device))
    e = F.normalize(pooled.float(), dim=-1).mean(0)
    return F.normalize(e, dim=-1).cpu()


@torch.no_grad()
def encode_images(model, dataset, device, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2-normalised image embeddings ``[M, C]``, labels ``[M, K]``) of every decodable sample."""
    model.eval()
    from ..data.dataset import decoded_batches

    feats, labels = [], []
    for items in decoded_batches(dataset, range(len(dataset)), batch_size):  # files that fail to decode are left out
        pooled, _ = model.encode_image(torch.stack([s["image"] for s in items]).to(device))
        feats.append(F.normalize(pooled.float(), dim=-1).cpu())
        labels.append(torch.stack([s["labels"] for s in items]).float())
    return torch.cat(feats), torch.cat(labels)


NO_FINDING_MODES = ("absence", "pair")
NO_FINDING_NOTES = {  # the table's caption line per mode
    "absence": "No Finding: absence of every other finding (AUC ranks prod(1 - p); F1/ACC: no finding decided present)",
    "pair": "No Finding: its own prompt pair (CheXzero)",
}


def absence_terms(label_names, no_finding: str = "absence", absence_ignore: tuple[str, ...] = ()) -> list[int] | None:
    """The columns whose absence defines ``No Finding`` under ``no_finding="absence"`` (every other
    label except ``absence_ignore``), or ``None`` when No Finding keeps its own prompt pair (mode
    ``pair``, or no other label to take the absence of). Raises ``ValueError`` for an unknown mode
    and ``MaskkitError`` (a ``ValueError``) for an ``absence_ignore`` that is not an evaluated finding."""
    if no_finding not in NO_FINDING_MODES:
        raise ValueError(f"no_finding: unknown mode '{no_finding}'; expected one of {', '.join(NO_FINDING_MODES)}")
    key = label_key  # "Support_Devices" is "support devices"
    others = [(k, lab) for k, lab in enumerate(label_names) if not is_no_finding(lab)]
    ignore = {key(a) for a in absence_ignore}
    unknown = ignore - {key(lab) for _, lab in others}
    if unknown:
        bad = next(a for a in absence_ignore if key(a) in unknown)
        from ..errors import SettingValueError

        raise SettingValueError("absence_ignore", bad, f"not one of the evaluated findings "
                                                       f"({', '.join(lab for _, lab in others)})")
    findings = [k for k, lab in others if key(lab) not in ignore]
    return findings if no_finding == "absence" and findings else None


@torch.no_grad()
def probabilities(model, images: torch.Tensor, label_names, device="cpu", positive=POSITIVE, negative=NEGATIVE,
                  no_finding: str = "absence", absence_ignore: tuple[str, ...] = (),
                  style: str = DEFAULT_PROMPT_STYLE) -> np.ndarray:
    """``[M, K]`` probability of each label (images: ``[M, C]`` L2-normalised embeddings).

    Each finding: softmax over (cos to its positive prompts, cos to its negative prompts), the
    CheXzero protocol (Tiu et al., Nat. Biomed. Eng. 2022); ``style`` says how each prompt ends
    (:data:`PROMPT_STYLES`, A32). ``No Finding``:

    - ``no_finding="absence"`` (default): the probability that none of the other labels is
      present, ``prod_k (1 - p_k)`` over every other label except ``absence_ignore`` (a
      noisy-OR of independent findings; the CheXpert labeler's definition of No Finding - "no
      finding is positive" - applied to the zero-shot probabilities). Needs at least one other
      label; with none, the pair is used. Its yes/no decision is :func:`predictions`'.
    - ``no_finding="pair"``: its own prompt pair (``SPECIAL_PROMPTS``), as for every label.

    See docs/eval.md and docs/assumptions.md (A24) for why absence is the default.
    Raises ``ValueError`` for an unknown ``no_finding`` or ``style``.
    """
    findings = absence_terms(label_names, no_finding, absence_ignore)
    cols = []
    for lab in label_names:
        if findings is not None and is_no_finding(lab):
            cols.append(None)
            continue
        pos, neg = prompt_pair(lab, positive, negative, style)
        tp, tn = text_embeddings(model, pos, device), text_embeddings(model, neg, device)
        sims = torch.stack([images @ tp, images @ tn], -1)
        cols.append(sims.softmax(-1)[:, 0])
    if findings is not None:
        absent = torch.stack([1 - cols[k] for k in findings], 1).prod(1)
        cols = [absent if c is None else c for c in cols]
    return torch.stack(cols, 1).numpy()


def predictions(prob: np.ndarray, label_names, no_finding: str = "absence",
                absence_ignore: tuple[str, ...] = (), threshold: float = THRESHOLD) -> np.ndarray:
    """``[M, K]`` float64 yes/no decisions behind F1 and ACC, from probabilities ``[M, K]``: 1.0
    (yes), 0.0 (no), or the probability of "yes" when a tie is broken at random
    (:mod:`maskkit.eval.ties`).

    Each label: ``p > threshold``, i.e. its positive prompt is closer than its negative one; a tie
    (``p == threshold``: both prompts equally close) is half a yes.
    ``No Finding`` under ``no_finding="absence"``: *no other finding is decided present*
    (``p_k < threshold`` for every label in the product; with tied findings, the probability that
    none of them is decided present, ``prod (1 - d_k)``) - the CheXpert labeler's rule applied to
    the decisions, as its probability applies it to the probabilities. Thresholding the product
    itself at 0.5 would ask that the findings be absent *jointly* with probability 0.5, which five
    undecided findings (``p_k`` near 0.5, product near 0.03) never are: its F1 was always 0.
    """
    pred = decision_weights(prob, threshold)
    findings = absence_terms(label_names, no_finding, absence_ignore)
    if findings is not None:
        none_present = (1.0 - pred[:, findings]).prod(1)
        for k, lab in enumerate(label_names):
            if is_no_finding(lab):
                pred[:, k] = none_present
    return pred


def point_metrics(y: np.ndarray, p: np.ndarray, threshold: float = THRESHOLD, pred: np.ndarray | None = None) -> dict[str, float]:
    """AUC of the scores ``p`` (scikit-learn; a tied positive-negative pair counts 1/2), F1 and ACC
    of the decisions ``pred`` (``[M]`` bool, or float: the probability of "yes"; default
    :func:`maskkit.eval.ties.decision_weights` of ``p`` at ``threshold``) for one label (no NaN in
    ``y``). A fractional decision counts as a yes and a no weighted by it: ACC is the expected
    accuracy over the tie-breaks, F1 the F1 of the expected counts."""
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    d = decision_weights(p, threshold) if pred is None else np.asarray(pred, dtype=np.float64)
    y2, yes_no = np.concatenate([y, y]), np.repeat([1, 0], len(y))
    w = np.concatenate([d, 1.0 - d])
    return {"auc": float(roc_auc_score(y, p)), "f1": float(f1_score(y2, yes_no, sample_weight=w, zero_division=0)),
            "acc": float(accuracy_score(y2, yes_no, sample_weight=w))}


def bootstrap_ci(y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0, threshold: float = THRESHOLD,
                 pred: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """Percentile 95% intervals from ``n_boot`` resamples of the images (with replacement,
    :func:`maskkit.eval.bootstrap.bootstrap_indices`);
    resamples with a single class are redrawn-free skipped (their AUC is undefined). ``pred``:
    the decisions, as in :func:`point_metrics`."""
    from .bootstrap import bootstrap_indices, percentile_interval

    pred = decision_weights(p, threshold) if pred is None else pred
    vals = {m: [] for m in METRICS}
    for idx in bootstrap_indices(len(y), n_boot, seed):  # the project's one bootstrap (maskkit.eval.bootstrap)
        yb = y[idx]
        if yb.min() == yb.max():
            continue
        for m, v in point_metrics(yb, p[idx], pred=pred[idx]).items():
            vals[m].append(v)
    return {m: percentile_interval(v) for m, v in vals.items()}


@dataclass
class ZeroShotResult:
    labels: list[str]
    per_label: dict[str, dict | None]   # label -> {auc, f1, acc, ci: {metric: (lo, hi)}, n_pos, n} or None
    n: int
    undefined: list[str] = field(default_factory=list)
    # label -> {n_known, n_pos, n_neg, n_unknown} (maskkit.eval.labels.label_coverage), and one line
    # per label left with a single class by the data's label policies
    coverage: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    n_boot: int = 0  # bootstrap resamples behind each interval (0: no intervals)
    no_finding: str = ""  # how No Finding was scored (NO_FINDING_MODES; "" when score() was called directly)
    prompts: str = ""  # the prompt style (PROMPT_STYLES; "" when score() was called directly)
    absence_ignore: list[str] = field(default_factory=list)  # findings left out of No Finding's absence product

    def mean(self, metric: str = "auc") -> float | None:
        vals = [r[metric] for r in self.per_label.values() if r is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def mean_auc(self) -> float | None:
        return self.mean("auc")

    def to_json(self) -> dict:
        return {"n": self.n, "mean": {m: self.mean(m) for m in METRICS}, "per_label": self.per_label,
                "undefined": self.undefined, "threshold": THRESHOLD, "ties": TIES, "coverage": self.coverage,
                "warnings": self.warnings,
                "n_boot": self.n_boot, "no_finding": self.no_finding, "prompts": self.prompts,
                "absence_ignore": self.absence_ignore}

    def table(self, title: str | None = None):
        from rich.table import Table

        ci = f"95% bootstrap CI, {self.n_boot} resamples" if self.n_boot else "no intervals"
        t = Table(title=f"{title or f'zero-shot on {self.n} held-out images'} ({ci})")
        for c in ("label", "positives", "unknown", "AUC", "F1", "ACC"):
            t.add_column(c, justify="left" if c == "label" else "right")
        for lab in self.labels:
            r, cov = self.per_label[lab], self.coverage.get(lab)
            pos = f"{cov['n_pos']}/{cov['n_known']}" if cov else "-"
            unknown = str(cov["n_unknown"]) if cov else "-"  # samples left out of this label as unknown
            if r is None:
                t.add_row(lab, pos, unknown, "undefined", "undefined", "undefined")
                continue
            cells = [f"{r[m]:.3f} [{r['ci'][m][0]:.2f}, {r['ci'][m][1]:.2f}]" if "ci" in r else f"{r[m]:.3f}" for m in METRICS]
            t.add_row(lab, f"{r['n_pos']}/{r['n']}", unknown, *cells)
        means = [self.mean(m) for m in METRICS]
        t.add_row("[bold]mean[/]", "", "", *[("undefined" if v is None else f"[bold]{v:.3f}[/]") for v in means])
        notes = [f"prompts: {self.prompts} ({prompt_pair('Pleural Effusion', style=self.prompts)[1][0]!r})"] if self.prompts else []
        notes += [NO_FINDING_NOTES[self.no_finding]] if self.no_finding in NO_FINDING_NOTES else []
        if self.absence_ignore:
            notes.append(f"No Finding's absence leaves out: {', '.join(self.absence_ignore)}")
        notes += [f"warning: {w}" for w in self.warnings]
        if notes:
            t.caption = "\n".join(notes)
        return t


def score(y: np.ndarray, prob: np.ndarray, label_names, n_boot: int = 1000, seed: int = 0,
          pred: np.ndarray | None = None) -> ZeroShotResult:
    """Metrics of probabilities ``[M, K]`` against labels ``[M, K]`` (NaN = unknown, ignored).

    AUC ranks ``prob``; F1 and ACC score the decisions ``pred`` (``[M, K]`` bool or float in
    ``[0, 1]``, default ``prob`` at ``THRESHOLD`` with a tie half a yes; :func:`predictions` gives
    the protocol's).

    Per label, the samples left out as unknown are counted (``coverage``, a table column); a label
    whose known samples hold one class is undefined and raises a ``LabelCoverageWarning``.
    """
    from .labels import label_coverage, one_class_warnings

    coverage = label_coverage(y, label_names)
    notes = one_class_warnings(coverage, "zero-shot")
    pred = decision_weights(prob, THRESHOLD) if pred is None else pred
    per, undefined = {}, []
    for k, lab in enumerate(label_names):
        known = ~np.isnan(y[:, k])
        yk, pk, dk = y[known, k].astype(int), prob[known, k], pred[known, k]
        pos = int(yk.sum())
        if pos == 0 or pos == len(yk):
            per[lab] = None
            undefined.append(lab)
            continue
        r = point_metrics(yk, pk, pred=dk)
        if n_boot:
            r["ci"] = bootstrap_ci(yk, pk, n_boot, seed + k, pred=dk)
        r["n_pos"], r["n"] = pos, int(len(yk))
        per[lab] = r
    return ZeroShotResult(list(label_names), per, int(prob.shape[0]), undefined, coverage=coverage, warnings=notes,
                          n_boot=int(n_boot))


@torch.no_grad()
def zeroshot_eval(models, dataset, label_names, device="cpu", batch_size: int = 64, n_boot: int = 1000,
                  positive=POSITIVE, negative=NEGATIVE, no_finding: str = "absence",
                  absence_ignore: tuple[str, ...] = (), style: str = DEFAULT_PROMPT_STYLE) -> ZeroShotResult:
    """Evaluate one model or a list (ensemble: probabilities averaged) on a labelled dataset.

    ``no_finding`` / ``absence_ignore``: how No Finding is scored, see :func:`probabilities` and
    :func:`predictions` (an ensemble decides from its averaged probabilities). ``n_boot`` and
    ``batch_size`` are checked first (:class:`maskkit.options.ZeroShotOptions`; one line)."""
    from ..options import ZeroShotOptions

    ZeroShotOptions.check("=", labels={"bootstrap": "n_boot"}, bootstrap=n_boot, batch_size=batch_size)
    models = models if isinstance(models, (list, tuple)) else [models]
    probs, y = [], None
    for m in models:
        img, y = encode_images(m, dataset, device, batch_size)
        probs.append(probabilities(m, img, label_names, device, positive, negative, no_finding, absence_ignore, style))
    prob = np.mean(probs, 0)
    res = score(y.numpy(), prob, label_names, n_boot, pred=predictions(prob, label_names, no_finding, absence_ignore))
    res.no_finding = no_finding if absence_terms(label_names, no_finding, absence_ignore) is not None else "pair"
    res.prompts = style
    res.absence_ignore = list(absence_ignore) if res.no_finding == "absence" else []
    return res
