"""The built-in evaluations, registered through the same hook a third-party plugin uses
(:func:`maskkit.hookspecs.register_evaluations`). Names are written here and nowhere else.

Each is ``evaluate(run, settings) -> EvalResult`` (:mod:`maskkit.eval.contract`): ``run`` is the
run evaluated (its model, config, data and split), ``settings`` an instance of the typed model
registered with it. The library code behind them lives in :mod:`maskkit.eval`; this module only
adapts it to the contract (flat ``metrics`` prefixed ``"<name>/"``, per-item ``details``) and keeps
each command's files and table as they were. This module imports no torch (the registry is built
before any evaluation runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

from pydantic import Field, model_validator

from .hookspecs import hookimpl
from .options import FinetuneOptions, MaskEvalOptions, Options, Seed, ZeroShotOptions

NAN = float("nan")
PromptStyle = Literal["sentence", "chexzero"]              # maskkit.eval.zeroshot.PROMPT_STYLES
NoFinding = Literal["absence", "pair"]                      # maskkit.eval.zeroshot.NO_FINDING_MODES
RegionFormat = Literal["rsna", "nih", "siim", "ms_cxr", "vindr"]
PadChestSubset = Literal["seen", "unseen10", "unseen20", "unseen"]  # maskkit.eval.padchest.SUBSETS
FinetuneTask = Literal["classification", "segmentation"]   # maskkit.eval.segmentation.TASKS
Ratio = Annotated[float, Field(gt=0, lt=1)]  # eval masks: at 0 no lesion is masked and the lift is 0/0; at 1 every one
Bootstrap = Annotated[int, Field(ge=0, le=100_000)]
BatchSize = Annotated[int, Field(ge=1, le=65_536)]


# --- settings ------------------------------------------------------------------------------------

class ZeroshotSettings(ZeroShotOptions):
    """``maskkit eval zeroshot`` (docs/eval.md, "Zero-shot")."""

    no_finding: NoFinding = Field("absence", description="how No Finding is scored: absence (of every other finding; A24) "
                                                        "or pair (CheXzero's prompt pair)")
    absence_ignore: list[str] = Field([], description="a label the absence protocol leaves out (repeatable), "
                                                      "e.g. 'Support Devices'")
    prompts: PromptStyle = Field("sentence", description="how each prompt ends: sentence ('no pleural effusion.', like a "
                                                         "report sentence; A32) or chexzero (the bare phrase)")


class RegionSettings(Options):
    """The region annotations an evaluation reads instead of the phantoms' lesion masks."""

    regions: Optional[str] = Field(None, description="a region annotation file in its dataset's layout (default: "
                                                     "the held-out phantoms' lesion masks)")
    format: Optional[RegionFormat] = Field(None, description="the layout of --regions")
    min_raters: int = Field(1, ge=1, le=100, description="VinDr-CXR: a pixel is lesion when boxes of at least this many "
                                                         "radiologists cover it (1: their union)")

    @model_validator(mode="after")
    def _format_with_regions(self):
        if (self.regions is None) != (self.format is None):
            given, missing = ("--regions", "--format") if self.format is None else ("--format", "--regions")
            raise ValueError(f"{given} needs {missing} (a region file and its layout: rsna, nih, siim, ms_cxr or vindr)")
        return self


class FinetuneSettings(RegionSettings, FinetuneOptions):
    """``maskkit eval finetune`` (docs/eval.md, "Fine-tuning" and "Segmentation fine-tuning")."""

    task: FinetuneTask = Field("classification", description="classification: a linear head on the pooled embedding, AUC "
                                                             "per label; segmentation: a SETR-naive head on the patch tokens, "
                                                             "Dice on lesion masks")
    splits: Optional[str] = Field(None, description="folder of split files to use or create (default: OUT/splits; "
                                                    "for --out FILE.json, FILE/splits)")
    regions: Optional[str] = Field(None, description="--task segmentation: a region annotation file in its dataset's "
                                                     "layout, e.g. SIIM-ACR train-rle.csv (default: the phantoms' lesion masks)")

    def output_folders(self) -> list[tuple[str, str]]:
        """The folders these settings make the evaluation write, with their option (``--splits``
        when it holds no split files yet): :func:`maskkit.evalcli.run_evaluation` checks each is
        writable before the run is loaded."""
        if self.splits and not (Path(self.splits) / "test.json").is_file():
            return [(self.splits, "--splits")]
        return []

    @model_validator(mode="after")
    def _regions_are_segmentation_targets(self):
        if self.regions is not None and self.task != "segmentation":
            raise ValueError("--regions gives the masks of --task segmentation; classification trains on the data's labels")
        return self


class MasksSettings(RegionSettings, MaskEvalOptions):
    """``maskkit eval masks`` (docs/eval.md, "Mask-lesion overlap")."""

    ratio: list[Ratio] = Field([0.75], min_length=1, description="final mask ratio, repeatable: one row per strategy and ratio")
    strategies: list[str] = Field([], description="a registered strategy or preset (repeatable; default: every registered "
                                                  "image strategy and every preset's image_mask)", json_schema_extra={"flag": "strategy"})
    grid: Literal["registry", "ablation"] = Field("registry", description="registry: the strategies above; ablation: every "
                                                  "reduction, subset mode and λ1 of the paper's union (the grid before issue 19)")


class RetrievalSettings(Options):
    """``maskkit eval retrieval`` (docs/eval.md, "Retrieval")."""

    bootstrap: Bootstrap = Field(1000, description="bootstrap resamples of the reports for the 95% intervals; 0: none")
    ks: list[Annotated[int, Field(ge=1, le=100_000)]] = Field([1, 5, 10], min_length=1, description="the K of R@K (repeatable)",
                                                             json_schema_extra={"flag": "k"})
    id_set: Optional[str] = Field(None, description="a stored id set (maskkit idset, e.g. CheXpert 5x200): evaluate exactly "
                                                    "these images of the data", json_schema_extra={"flag": "set"})
    batch_size: BatchSize = Field(64, description="images encoded at once")
    seed: Seed = Field(0, description="bootstrap seed")


class GroundingSettings(RegionSettings):
    """``maskkit eval grounding`` (docs/eval.md, "Grounding")."""

    n: int = Field(64, ge=1, le=100_000, description="held-out phantoms (without --regions)")
    prompts: PromptStyle = Field("sentence", description="how a finding's prompt ends (as zero-shot's); MS-CXR uses its phrase")
    batch_size: BatchSize = Field(64, description="images encoded at once")
    seed: Seed = Field(0, description="seed of the random-map baseline")


class PadChestSettings(Options):
    """``maskkit eval padchest`` (docs/eval.md, "PadChest")."""

    subsets: list[PadChestSubset] = Field(["seen", "unseen10", "unseen20", "unseen"], min_length=1,
                                          description="the label subsets scored (repeatable)", json_schema_extra={"flag": "subset"})
    physician_only: bool = Field(True, description="only the physician-labelled images (MethodLabel Physician)")
    bootstrap: Bootstrap = Field(1000, description="bootstrap resamples for the 95% intervals; 0: none")
    prompts: PromptStyle = Field("sentence", description="how each prompt ends (as zero-shot's)")
    batch_size: BatchSize = Field(64, description="images encoded at once")


# --- shared helpers ------------------------------------------------------------------------------

def _num(v: Any) -> float:
    return NAN if v is None else float(v)


def _pct(fraction: str) -> str:
    return f"{float(fraction) * 100:g}"


def _phantom_seed(run) -> tuple[int, bool]:
    """(the run's phantom seed, whether it trained on phantoms): seed 0 for a run on other data."""
    from .data.adapters import get_adapter
    from .data.sources import source_specs

    seeds = [s.options.get("seed", 0) for s in source_specs(run.cfg.data) if get_adapter(s.name).load is phantoms_load()]
    return (seeds[0], True) if seeds else (0, False)


def phantoms_load():
    from .datasets import phantoms

    return phantoms


def _mask_eval_phantoms(run, n: int):
    """(phantom dataset, text): ``n`` phantoms of the run's seed from MASK_EVAL_OFFSET, apart from
    every training and held-out phantom (none was trained on)."""
    from .data.dataset import PhantomDataset
    from .data.phantoms import MASK_EVAL_OFFSET

    seed, trained = _phantom_seed(run)
    ds = PhantomDataset(n, seed, run.model.image_size, offset=MASK_EVAL_OFFSET, p_unpaired=0.0)
    what = (f"{n} phantoms of seed {seed} from generator index {MASK_EVAL_OFFSET} "
            f"({'the run trained on phantoms 0..n-1 of that seed' if trained else 'the run trained on no phantoms'}: none trained on)")
    return ds, what


def _phantoms_not_trained_on(run, n: int, evaluation: str) -> list[str]:
    """The warning of an evaluation that fell back to the phantoms for a run trained on none: its
    numbers are on synthetic images and lesions, not on the run's data (a sweep table shows them
    beside real-data numbers)."""
    if _phantom_seed(run)[1]:
        return []
    return [f"{evaluation}: the run trained on no phantoms, and no region file was given: these numbers are on {n} "
            f"synthetic phantoms, not on its data; give --regions FILE --format LAYOUT for its own images "
            f"(docs/eval.md lists the layouts)"]


READERS = {"rsna": "read_rsna", "nih": "read_nih_bbox", "siim": "read_siim", "ms_cxr": "read_ms_cxr", "vindr": "read_vindr"}


def image_size_of(path: str) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header (DICOM ``Columns``/``Rows``, else PIL)."""
    from .data.regions import RegionError

    p = Path(path)
    try:
        if p.suffix.lower() in (".dcm", ".dicom"):
            import pydicom

            ds = pydicom.dcmread(str(p), stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        from PIL import Image

        with Image.open(p) as im:
            return im.size
    except Exception as exc:  # a file that cannot be read: one line
        raise RegionError(f"{p}: cannot read the image size ({type(exc).__name__}: {' '.join(str(exc).split())}); "
                          f"the region file gives none") from None


def _region_file(s: RegionSettings, corpus):
    """(the RegionSet of ``s.regions`` read in its ``s.format`` layout, the corpus's records by id):
    every annotated id must be an image of the data (train or held out), else one line naming the
    file's row."""
    from .data import regions as R

    rs = getattr(R, READERS[s.format])(s.regions)
    records = {r.id: r for src in corpus.sources for r in (*src.train_records, *src.held_records)}
    rs.require_ids(records, f"the data ({corpus.describe()})")
    shared = _shared_ids(corpus, rs.images)
    if shared:
        iid, names = next(iter(shared.items()))
        im = rs.images[iid]
        raise R.RegionError(f"{im.where}: image id {iid!r} is an image of {len(names)} sources of the data, "
                            f"{' and '.join(names)} (shared ids: {len(shared)} of the {len(rs)} annotated); samples are "
                            f"keyed by (source, id) and a region file names no source, so its regions would go to "
                            f"either: evaluate one source (data=... with that source's data.* settings)")
    return rs, records


def _shared_ids(corpus, ids) -> dict[str, list[str]]:
    """Each of ``ids`` that is an image of more than one source of ``corpus`` (train or held out)
    -> those sources' names, in the order of ``ids``: an id alone cannot say which sample it means (docs/eval.md, samples
    are keyed by (source, id))."""
    owners: dict[str, list[str]] = {}
    held = [(name, {r.id for r in (*src.train_records, *src.held_records)}) for name, src in zip(corpus.names, corpus.sources)]
    for iid in dict.fromkeys(ids):  # in the order of ``ids`` (the file's): the first one named is the file's first
        names = [name for name, have in held if iid in have]
        if len(names) > 1:
            owners[iid] = names
    return owners


def _with_image_sizes(rs, records, ids):
    """``rs`` with the size of each of ``ids`` the file does not give (VinDr-CXR) read from its image's header."""
    sizes = {i: image_size_of(records[i].image_path) for i in ids if rs.images[i].size is None and records[i].image_path}
    return rs.with_sizes(sizes) if sizes else rs


def _annotated(run, s: RegionSettings, text: bool):
    """The held-out images of the run's data (or the data.* given) that the region file annotates.

    Returns (dataset, rows of its annotated held-out samples, RegionSet with sizes, what, note).
    Every annotated id must be an image of the data (train or held out; else one line naming the
    file's row); the images evaluated are the held-out ones, never trained on."""
    from .eval.contract import EvaluationError
    from .eval.finetune import dataset_index

    cfg, corpus, what = run.corpus(text=text)
    rs, records = _region_file(s, corpus)
    ds = corpus.val
    if ds is None or not len(ds):
        raise EvaluationError(f"the evaluation split of {what['data']} is empty")
    index = {(k[1] if isinstance(k, tuple) else k): i for k, i in dataset_index(ds).items()}
    held = [i for i in rs.images if i in index]
    if not held:
        raise EvaluationError(f"{s.regions}: none of its {len(rs)} annotated images is in {what['text']} "
                              f"({len(ds)} held-out images); the images evaluated are always held out")
    rs = _with_image_sizes(rs, records, held)
    rest = len(rs) - len(held)
    note = (f"{len(held)} of the {len(rs)} images annotated in {s.regions} {'is' if len(held) == 1 else 'are'} held out "
            f"({what['text']}); " + (f"{rest} {'is a training image' if rest == 1 else 'are training images'}, not evaluated"
                                     if rest else "none is a training image"))
    return ds, [index[i] for i in held], rs, what, note


# --- zero-shot -----------------------------------------------------------------------------------

def zeroshot_metrics(res, prefix: str = "zeroshot") -> tuple[dict[str, float], list[dict]]:
    """(flat metrics, one detail row per label) of a :class:`~maskkit.eval.zeroshot.ZeroShotResult`:
    ``<prefix>/<auc|f1|acc>_macro`` (the mean over defined labels), ``<prefix>/n``, and per label
    ``<prefix>/<metric>/<label>`` with ``_ci_lo`` / ``_ci_hi`` when there are intervals."""
    from .eval.zeroshot import METRICS

    m: dict[str, float] = {f"{prefix}/n": float(res.n)}
    for k in METRICS:
        m[f"{prefix}/{k}_macro"] = _num(res.mean(k))
    rows = []
    for lab in res.labels:
        r, cov = res.per_label[lab], res.coverage.get(lab, {})
        row = {"label": lab, "defined": r is not None, "n_known": cov.get("n_known"), "n_pos": cov.get("n_pos"),
               "n_unknown": cov.get("n_unknown")}
        for k in METRICS:
            v = _num(r[k]) if r else NAN
            m[f"{prefix}/{k}/{lab}"] = row[k] = v
            if r and "ci" in r:
                lo, hi = r["ci"][k]
                m[f"{prefix}/{k}/{lab}_ci_lo"] = row[f"{k}_ci_lo"] = _num(lo)
                m[f"{prefix}/{k}/{lab}_ci_hi"] = row[f"{k}_ci_hi"] = _num(hi)
        rows.append(row)
    return m, rows


def zeroshot(run, s: ZeroshotSettings):
    """Zero-shot AUC/F1/ACC (CheXzero protocol) on the run's held-out split; several runs are ensembled."""
    from .eval.contract import EvalResult, split_words
    from .eval.zeroshot import zeroshot_eval

    ds, names, what = run.held_out()
    res = zeroshot_eval(run.models, ds, names, device=run.device, batch_size=s.batch_size, n_boot=s.bootstrap,
                        no_finding=s.no_finding, absence_ignore=tuple(s.absence_ignore), style=s.prompts)
    k = len(run.members)
    metrics, details = zeroshot_metrics(res)
    title = f"zero-shot of {k} checkpoint{'s' if k > 1 else ''} on {res.n} images ({split_words(what)})"
    return EvalResult("zeroshot", metrics, details, data=what, extra=res.to_json(), tables=[res.table(title=title)], native=res)


# --- fine-tuning ---------------------------------------------------------------------------------

def finetune(run, s: FinetuneSettings):
    """Linear probe / fine-tuning at 1/10/100% of the labels on stored patient-level splits, tested on the held-out patients (--task segmentation: Dice of a SETR-naive head on lesion masks)."""
    import json

    from rich.table import Table

    from .errors import MaskkitError
    from .eval.contract import EvalResult, split_words
    from .eval.finetune import held_out_splits, pretraining_data, read_splits, run_finetune, write_splits

    cfg, corpus, what = run.corpus(text=False)
    ds, names, recs, test_ids = pretraining_data(cfg, run.model.image_size, corpus=corpus)
    folder = Path(s.splits) if s.splits else (run.out_dir / "splits" if run.out_dir is not None else None)
    new_splits = folder is None or not (folder / "test.json").is_file()
    if not new_splits:
        sp = read_splits(folder, source=corpus.names[0] if len(corpus.sources) == 1 else None)
        if set(sp["test"]["ids"]) != test_ids:
            raise MaskkitError(f"{folder / 'test.json'}: its {sp['test']['n']} test ids are not the {len(test_ids)} held-out ids "
                               f"of {what['text']}; use another --splits folder")
    else:
        sp = held_out_splits(recs, test_ids, s.seed)

    def store_splits():
        """New split files are written once the evaluation has succeeded: a failure writes nothing."""
        if folder is not None and new_splits:
            write_splits(sp, folder)

    if s.task == "segmentation":
        res = _segmentation(run, s, corpus, what, ds, recs, sp, folder)
        store_splits()
        return res
    results = run_finetune(run.model, ds, names, sp, mode=s.mode, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
                           seed=s.seed, device=run.device)
    t = Table(title=f"{s.mode} on {sp['test']['n']} test images ({split_words(what)}; "
                    f"{f'splits {folder}' if folder is not None else 'splits not stored'})")
    t.add_column("labels")
    t.add_column("train images", justify="right")
    for n in names:
        t.add_column(n, justify="right")
    t.add_column("mean AUC", justify="right")
    metrics: dict[str, float] = {}
    details = []
    for r in results:
        t.add_row(r.fraction, str(r.n_train), *["-" if r.auc[n] is None else f"{r.auc[n]:.3f}" for n in names],
                  "-" if r.mean_auc is None else f"{r.mean_auc:.3f}")
        key = f"finetune/{r.mode}_{_pct(r.fraction)}"
        metrics[f"{key}/auc_macro"] = _num(r.mean_auc)
        metrics[f"{key}/n_train"] = float(r.n_train)
        for n in names:
            metrics[f"{key}/auc/{n}"] = _num(r.auc[n])
            details.append({"mode": r.mode, "fraction": r.fraction, "n_train": r.n_train, "label": n, "auc": _num(r.auc[n]),
                            "unknown_test": r.unknown.get(n, 0), "split_sha256": r.sha256})
    if results:  # the test split is the same for every row: how many test samples each label left out
        t.add_row("unknown (test)", "", *[str(results[0].unknown.get(n, 0)) for n in names], "")
    store_splits()
    legacy = json.dumps([{**r.__dict__, "mean_auc": r.mean_auc, "data": what} for r in results], indent=2)
    return EvalResult("finetune", metrics, details, data=what, tables=[t],
                      warnings=list(dict.fromkeys(w for r in results for w in r.warnings)),
                      extra={"splits": str(folder) if folder is not None else None,
                             "split_sha256": {k: v["sha256"] for k, v in sp.items()}, "results": json.loads(legacy)},
                      files={"results.json": legacy}, native=results)


def _segmentation(run, s: FinetuneSettings, corpus, what, ds, recs, sp: dict, folder):
    """``eval finetune --task segmentation``: a SETR-naive head on the patch tokens, Dice at each
    label fraction of the finetune splits ``sp``, cut to the samples that have a lesion mask (the
    phantoms' own, or ``--regions``)."""
    import torch
    from rich.table import Table

    from .data.regions import coverage_batch
    import json

    from .eval.contract import EvalResult, EvaluationError, _json_safe, split_words
    from .eval.segmentation import METRICS, PIXEL_COVERAGE, THRESHOLD, mask_targets, restrict, run_segmentation

    S = run.model.image_size
    notes: list[str] = []   # warnings
    info: list[str] = []    # notes: what was evaluated

    def key_of(item):
        return (ds.names[item["source"]], str(item["id"]))

    if s.regions is None:
        load = phantoms_load()
        phantom = {n for n, src in zip(corpus.names, corpus.sources) if src.adapter.load is load}
        if not phantom:
            raise EvaluationError(f"eval finetune --task segmentation: {corpus.describe()} has no lesion masks (no phantom "
                                  f"source); give a region file, e.g. --regions train-rle.csv --format siim")
        keep = {k for k, _ in recs if k[0] in phantom}
        masks_of = "the phantoms' lesion masks"

        def target_of(items):
            has = torch.tensor([it.get("lesion") is not None for it in items], dtype=torch.bool)
            return has, mask_targets([it["lesion"] for it in items if it.get("lesion") is not None], S,
                                     [f"sample {it['id']}" for it in items if it.get("lesion") is not None])
    else:
        rs, records = _region_file(s, corpus)
        keep = {k for k, _ in recs if k[1] in rs.images}
        rs = _with_image_sizes(rs, records, sorted({k[1] for k in keep}))
        masks_of = f"{s.regions} ({s.format})"
        cache: dict[str, torch.Tensor] = {}

        def target_of(items):
            ids = [str(it["id"]) for it in items]
            has = torch.tensor([i in rs.images for i in ids], dtype=torch.bool)
            ids = [i for i in ids if i in rs.images]
            need = list(dict.fromkeys(i for i in ids if i not in cache))
            if need:  # the area of each input pixel the annotation covers, on the model's S x S input
                cov = coverage_batch(rs, need, S, 1, None, s.min_raters).reshape(len(need), S, S) >= PIXEL_COVERAGE
                cache.update(zip(need, cov))
            return has, torch.stack([cache[i] for i in ids]) if ids else torch.zeros(0, S, S, dtype=torch.bool)

    seg = restrict(sp, keep)
    if not seg["test"]["n"]:
        raise EvaluationError(f"eval finetune --task segmentation: none of the {sp['test']['n']} held-out images of "
                              f"{what['text']} has a mask in {masks_of}; the test images are always held out")
    if s.regions is not None:
        info.append(f"{len(keep)} of the {len(recs)} images of the data {'has' if len(keep) == 1 else 'have'} a mask in {masks_of}: {seg['test']['n']} "
                     f"held out (the test split), the rest cut the training splits")
    results = run_segmentation(run.model, ds, seg, target_of, key_of, mode=s.mode, epochs=s.epochs, lr=s.lr,
                               batch_size=s.batch_size, seed=s.seed, device=run.device)
    if s.regions is not None:
        lost = [i for i, t in cache.items() if rs.images[i].regions and not bool(t.any())]
        if lost:
            notes.append(f"{len(lost)} images with a lesion in {s.regions} have no lesion pixel at the model's {S}x{S} input "
                         f"(the lesion covers less than {PIXEL_COVERAGE:g} of every input pixel), e.g. {lost[0]}: they count "
                         f"as lesion-free")
    t = Table(title=f"segmentation ({s.mode}, SETR-naive head) on {seg['test']['n']} test images, masks: {masks_of} "
                    f"({split_words(what)}; {f'splits {folder}' if folder is not None else 'splits not stored'})")
    for c in ("labels", "train images", "Dice", "Dice (lesion)", "Dice (no lesion)", "pooled Dice"):
        t.add_column(c, justify="left" if c == "labels" else "right")
    metrics: dict[str, float] = {}
    details, summaries = [], []
    for r in results:
        key = f"finetune/seg_{r.mode}_{_pct(r.fraction)}"
        for m in METRICS:
            metrics[f"{key}/{m}"] = float(r.summary[m])
        metrics[f"{key}/n_train"] = float(r.n_train)
        metrics[f"{key}/n_test"] = float(r.summary.get("n_test", NAN))
        t.add_row(r.fraction, str(r.n_train), *["-" if r.summary[m] != r.summary[m] else f"{r.summary[m]:.3f}" for m in METRICS])
        summaries.append({"fraction": r.fraction, "mode": r.mode, "n_train": r.n_train, "sha256": r.sha256, **r.summary})
        for row in r.per_image:
            src, iid = row["key"]
            details.append({"task": "segmentation", "mode": r.mode, "fraction": r.fraction, "n_train": r.n_train, "source": src,
                            "image_id": iid, "dice": row["dice"], "lesion_pixels": row["lesion_pixels"],
                            "predicted_pixels": row["predicted_pixels"], "overlap_pixels": row["overlap_pixels"],
                            "split_sha256": r.sha256})
        notes += r.warnings
    if results:
        n = results[0].summary
        t.caption = (f"Dice per test image at probability {THRESHOLD}, averaged ({int(n.get('n_pos', 0))} images with a lesion, "
                     f"{int(n.get('n_neg', 0))} without: 1 when nothing is predicted, else 0); pooled: one Dice over every pixel")
    return EvalResult("finetune", metrics, details, data=what, tables=[t], warnings=notes, notes=info,
                      extra={"task": "segmentation", "head": "setr_naive", "threshold": THRESHOLD, "masks": masks_of,
                             "regions": s.regions, "format": s.format, "splits": str(folder) if folder is not None else None,
                             "split_sha256": {k: v["sha256"] for k, v in seg.items()}, "results": summaries},
                      files={"results.json": json.dumps(_json_safe(summaries), indent=2)}, native=results)


# --- mask-lesion overlap -------------------------------------------------------------------------

MASK_COLUMNS = ["share_micro", "lift_micro", "share_macro", "lift_macro", "lesion_visible", "masked_on_lesion", "lift",
                "union_coverage"]


def masks(run, s: MasksSettings):
    """Mask-lesion overlap of every registered image strategy: the share of lesion patches it masks and its lift over random."""
    from rich.markup import escape
    from rich.table import Table

    from .data.regions import coverage_batch, lesion_patches
    from .eval.contract import EvalResult
    from .eval.masks import default_grid, evaluate_masks, extract, extract_annotated, registry_grid

    skipped: list[str] = []
    if s.grid == "ablation":
        if s.strategies:
            from .errors import MaskkitError

            raise MaskkitError("eval masks: --grid ablation is a fixed grid; --strategy chooses from the registry (--grid registry)")
        grid = [(f"{label} @ {r:g}" if len(s.ratio) > 1 else label, spec) for r in s.ratio for label, spec in default_grid(r)]
    else:
        grid, skipped = registry_grid(list(s.ratio), s.strategies or None)
    notes, info = [], []  # warnings, notes (what was evaluated)
    if s.regions is None:
        ds, what = _mask_eval_phantoms(run, s.n)
        notes += _phantoms_not_trained_on(run, s.n, "eval masks")
        feats = extract(run.model, ds, s.lesion_threshold, device=run.device)
        where = f"{s.n} held-out phantoms"
    else:
        model = run.model
        ds, rows, rs, what, note = _annotated(run, s, text=True)
        info.append(note)

        def lesion_of(ids):
            return lesion_patches(coverage_batch(rs, ids, model.image_size, model.patch, None, s.min_raters), s.lesion_threshold)

        feats = extract_annotated(model, ds, rows, lesion_of, device=run.device)
        has = feats.lesion.any(1)
        if not bool(has.any()):
            from .eval.contract import EvaluationError

            raise EvaluationError(f"{s.regions}: no held-out annotated image has a lesion patch at --lesion-threshold "
                                  f"{s.lesion_threshold:g}")
        where = f"{int(has.sum())} held-out images with lesions in {s.regions} ({s.format})"
    rows_out = evaluate_masks(feats, grid, s.seeds, skipped=skipped)
    if not rows_out:
        from .eval.contract import EvaluationError

        raise EvaluationError("eval masks: no strategy could be measured (" + "; ".join(skipped) + ")")
    text = what if isinstance(what, str) else what["text"]
    for r in rows_out:
        r["data"] = text
    base = rows_out[0]["lesion_base_rate"]
    ratios = ", ".join(f"{r:g}" for r in s.ratio)
    t = Table(title=f"mask-lesion overlap, ratio {ratios}, {where} (lesion base rate {base:.3f})")
    cols = ["lesion_visible", "masked_on_lesion", "lift", "union_coverage"] if s.regions is None and s.grid == "ablation" \
        else ["share_micro", "lift_micro", "share_macro", "lift_macro", "union_coverage"]
    t.add_column("strategy")
    for c in cols:
        t.add_column(c.replace("_", " "), justify="right")
    for r in rows_out:
        t.add_row(escape(r["strategy"]), *[f"{r[c]:.3f}" if c in r else "" for c in cols])  # "[l2]" is not markup
    t.caption = "share: masked lesion patches / lesion patches (micro: pooled; macro: per image); lift: over random masking at the same ratio"
    metrics: dict[str, float] = {"masks/lesion_base_rate": float(base), "masks/images": float(feats.lesion.shape[0]),
                                 "masks/images_with_lesion": float(feats.lesion.any(1).sum())}
    for r in rows_out:
        for c in MASK_COLUMNS:
            if c in r:
                metrics[f"masks/{r['strategy']}/{c}"] = float(r[c])
    md_cols = ["lesion_visible", "masked_on_lesion", "lift", "union_coverage", "share_micro", "lift_micro", "share_macro", "lift_macro"]
    md = ["| strategy | " + " | ".join(md_cols) + " |", "|---|" + "---|" * len(md_cols)]
    from .eval.contract import fmt_number

    md += ["| " + r["strategy"] + " | " + " | ".join(fmt_number(r[c]) if c in r else "" for c in md_cols) + " |" for r in rows_out]
    details = [{k: v for k, v in r.items()} for r in rows_out]
    return EvalResult("masks", metrics, details, data=what, tables=[t], warnings=notes + skipped, notes=info,
                      extra={"rows": rows_out, "regions": s.regions, "format": s.format},
                      files={"masks.md": "\n".join(md) + "\n"}, native=rows_out)


# --- retrieval -----------------------------------------------------------------------------------

def _idset_dataset(run, path: str):
    """(dataset of the id set's images, the set, what, ids of the set in the run's training split)."""
    from .data.build import ConcatSources, _default_dataset
    from .data.records import Table
    from .errors import MaskkitError
    from .eval.subsets import load_id_set

    cfg, corpus, what = run.corpus()
    owner, in_train = {}, set()
    for k, src in enumerate(corpus.sources):
        for r in src.train_records:
            owner.setdefault(r.id, (k, r))
            in_train.add(r.id)
        for r in src.held_records:
            owner.setdefault(r.id, (k, r))
    table = Table(corpus.describe(), [r for _, r in owner.values()], corpus.label_names)
    idset = load_id_set(path, table)
    shared = _shared_ids(corpus, idset.ids)
    if shared:
        iid, names = next(iter(shared.items()))
        raise MaskkitError(f"{path}: image id {iid!r} of id set {idset.name} is an image of {len(names)} sources of the "
                           f"data, {' and '.join(names)} (shared ids: {len(shared)} of its {len(idset.ids)}); samples are "
                           f"keyed by (source, id) and an id set names no source: evaluate one source "
                           f"(data=... with that source's data.* settings)")
    parts, names = [], []
    for k, src in enumerate(corpus.sources):
        recs = [owner[i][1] for i in idset.ids if owner[i][0] == k]
        if not recs:
            continue
        make = src.adapter.dataset or _default_dataset
        kw = {"data": cfg.data} if src.adapter.dataset else {"data": cfg.data, "cache": src.spec.cache}
        try:
            chunks = [make(Table(src.spec.name, recs, corpus.label_names), run.model.image_size, train=False, **kw)]
        except MaskkitError:
            if src.adapter.dataset is None:
                raise
            # an adapter's own dataset may take only some subsets (the phantoms: consecutive generator
            # indices): one dataset per record then
            chunks = [make(Table(src.spec.name, [r], corpus.label_names), run.model.image_size, train=False, **kw) for r in recs]
        parts += chunks
        names += [corpus.names[k]] * len(chunks)
    ds = parts[0] if len(parts) == 1 else ConcatSources(parts, names)
    return ds, idset, what, sorted(set(idset.ids) & in_train)


def retrieval(run, s: RetrievalSettings):
    """Image-report and report-image retrieval: R@K, median and mean rank with bootstrap intervals."""
    import torch
    import torch.nn.functional as F

    from .data.dataset import decoded_batches
    from .eval.contract import EvalResult, EvaluationError, split_words
    from .eval.retrieval import report_groups, retrieval_metrics

    model = run.model
    warnings: list[str] = []
    extra: dict[str, Any] = {}
    if s.id_set:
        ds, idset, what, trained = _idset_dataset(run, s.id_set)
        extra["id_set"] = {"path": s.id_set, "name": idset.name, "sha256": idset.sha256, "n": len(idset.ids),
                           "in_training_split": len(trained)}
        if trained and not run.data:
            warnings.append(f"{len(trained)} of the {len(idset.ids)} images of id set {idset.name} are in the run's training "
                            f"split (e.g. {trained[0]}); its retrieval is not on unseen images")
        keep_unpaired = False
    else:
        ds, _, what = run.held_out()
        keep_unpaired = True
    feats, reports, ids = [], [], []
    unpaired = 0
    with torch.no_grad():
        for items in decoded_batches(ds, list(range(len(ds))), s.batch_size):
            if keep_unpaired:
                unpaired += sum(not it.get("report") for it in items)
                items = [it for it in items if it.get("report")]
                if not items:
                    continue
            pooled, _ = model.encode_image(torch.stack([it["image"] for it in items]).to(run.device))
            feats.append(F.normalize(pooled.float(), dim=-1).cpu())
            reports += [it.get("report") for it in items]
            ids += [str(it["id"]) for it in items]
    if not ids:
        raise EvaluationError(f"retrieval: no held-out image of {what['text'] if isinstance(what, dict) else what} has a report; "
                              f"retrieval needs paired data")
    if unpaired:
        warnings.append(f"{unpaired} held-out images without a report (image-only) are left out of retrieval")
    texts, image_report = report_groups(reports, ids)
    rep = []
    with torch.no_grad():
        for lo in range(0, len(texts), s.batch_size):
            enc = model.tokenizer(texts[lo:lo + s.batch_size])
            pooled, _ = model.encode_text(enc.ids.to(run.device))
            rep.append(F.normalize(pooled.float(), dim=-1).cpu())
    sim = (torch.cat(feats) @ torch.cat(rep).T).double().numpy()
    res = retrieval_metrics(sim, image_report, ks=tuple(s.ks), n_boot=s.bootstrap, seed=s.seed)
    metrics = {f"retrieval/{k}": v for k, v in res.metrics().items()}
    metrics["retrieval/n_images"], metrics["retrieval/n_reports"] = float(res.n_images), float(res.n_reports)
    details = [{"direction": "image_to_report", "query": i, "report_column": int(c), "rank": float(r)}
               for i, c, r in zip(ids, image_report, res.image_ranks)]  # expected rank (ties: maskkit.eval.ties)
    details += [{"direction": "report_to_image", "query": f"report {int(q)}", "report_column": int(q), "rank": float(r)}
                for q, r in zip(res.report_queries, res.report_ranks)]
    title = f"retrieval on {res.n_images} images and {res.n_reports} reports ({split_words(what)})"
    extra.update(res.to_json())
    extra["ids"] = ids
    return EvalResult("retrieval", metrics, details, data=what, tables=[res.table(title=title)], warnings=warnings,
                      extra=extra, native=res)


# --- grounding -----------------------------------------------------------------------------------

def grounding(run, s: GroundingSettings):
    """Zero-shot grounding: pointing game, IoU, Dice and CNR of the patch-prompt similarity map, against a random map and a centre prior."""
    import torch
    from rich.table import Table

    from .data.dataset import decoded_batches
    from .data.regions import coverage_batch, from_phantoms
    from .eval.contract import EvalResult, EvaluationError
    from .eval.grounding import METRICS, THRESHOLD, baselines, grounding_metrics, patch_similarity, summarise
    from .eval.ties import TIES
    from .eval.zeroshot import prompt_pair, text_embeddings

    model = run.model
    notes: list[str] = []  # warnings
    info: list[str] = []  # notes: what was evaluated
    if s.regions is None:
        ds, what = _mask_eval_phantoms(run, s.n)
        notes += _phantoms_not_trained_on(run, s.n, "eval grounding")
        rs = from_phantoms((ds._phantom(i) for i in range(len(ds))), name=f"phantoms seed {ds.gen.seed}")
        rows = list(range(len(ds)))
        row_id = {i: str(ds.offset + i) for i in rows}
        where = f"{s.n} held-out phantoms"
    else:
        ds, rows, rs, what, note = _annotated(run, s, text=False)
        info.append(note)
        row_id = None
        where = f"{s.regions} ({s.format})"
    phrase = s.format == "ms_cxr"
    tokens, ids = [], []
    with torch.no_grad():
        for items in decoded_batches(ds, rows, s.batch_size):
            _, tok = model.encode_image(torch.stack([it["image"] for it in items]).to(run.device))
            tokens.append(tok.float().cpu())
            ids += [row_id[it["index"]] if row_id is not None else str(it["id"]) for it in items]
    tok = torch.cat(tokens)                                        # [M, N, C]
    pos = {iid: k for k, iid in enumerate(ids)}
    pairs = [(i, lab) for i, lab in rs.pairs("label") if i in pos]
    if not pairs:
        raise EvaluationError(f"grounding: no held-out image of {where} has an annotated region (all are normal)")
    labels = list(dict.fromkeys(lab for _, lab in pairs))
    prompts = {lab: [lab] if phrase else prompt_pair(lab, style=s.prompts)[0] for lab in labels}
    with torch.no_grad():
        temb = {lab: text_embeddings(model, p, run.device) for lab, p in prompts.items()}   # [C] each
    sim = patch_similarity(tok[[pos[i] for i, _ in pairs]], torch.stack([temb[lab] for _, lab in pairs]))  # [P, N]
    region = coverage_batch(rs, [i for i, _ in pairs], model.image_size, model.patch, [lab for _, lab in pairs],
                            s.min_raters).to(sim.dtype)
    per = grounding_metrics(sim, region)
    base = baselines(region, torch.Generator().manual_seed(s.seed))
    finding = {lab: next((r.finding or r.label) for im in rs.images.values() for r in im.regions if r.label == lab) for lab in labels}
    metrics: dict[str, float] = {}
    overall = summarise(per)
    for k in (*METRICS, "n"):
        metrics[f"grounding/{k}"] = overall[k]
    for b, vals in base.items():
        sb = summarise(vals)
        for k in METRICS:
            metrics[f"grounding/{b}/{k}"] = sb[k]
    t = Table(title=f"zero-shot grounding on {where}: {len(pairs)} image-{'phrase' if phrase else 'finding'} pairs "
                    f"(IoU/Dice at {THRESHOLD} of the min-max normalised map)")
    for c in ("finding", "n", *METRICS, "random pointing", "centre pointing"):
        t.add_column(c, justify="left" if c == "finding" else "right")
    groups = list(dict.fromkeys(finding[lab] for _, lab in pairs))
    for g in groups:
        sel = torch.tensor([finding[lab] == g for _, lab in pairs])
        sg = summarise({k: v[sel] for k, v in per.items()})
        rnd, cen = summarise({k: v[sel] for k, v in base["random"].items()}), summarise({k: v[sel] for k, v in base["centre"].items()})
        for k in METRICS:
            metrics[f"grounding/{k}/{g}"] = sg[k]
        t.add_row(g, f"{int(sg['n'])}", *[f"{sg[k]:.3f}" for k in METRICS], f"{rnd['pointing']:.3f}", f"{cen['pointing']:.3f}")
    t.add_row("[bold]all[/]", f"{int(overall['n'])}", *[f"[bold]{overall[k]:.3f}[/]" for k in METRICS],
              f"{metrics['grounding/random/pointing']:.3f}", f"{metrics['grounding/centre/pointing']:.3f}")
    if overall.get("cnr_infinite"):
        notes.append(f"{int(overall['cnr_infinite'])} pairs have an infinite CNR (a contrast over no variance), left out of its mean")
    details = []
    for k, (iid, lab) in enumerate(pairs):
        row = {"image_id": iid, "label": lab, "finding": finding[lab], "prompt": prompts[lab][0],
               "region_patches": float(region[k].sum())}
        row.update({m: float(per[m][k]) for m in METRICS})
        row.update({f"random_{m}": float(base["random"][m][k]) for m in METRICS})
        row.update({f"centre_{m}": float(base["centre"][m][k]) for m in METRICS})
        details.append(row)
    return EvalResult("grounding", metrics, details, data=what, tables=[t], warnings=notes, notes=info,
                      extra={"threshold": THRESHOLD, "ties": TIES, "regions": s.regions, "format": s.format,
                             "prompts": prompts})


# --- PadChest ------------------------------------------------------------------------------------

def padchest(run, s: PadChestSettings):
    """PadChest zero-shot as in the XLIP paper's Tables I-II: the seen 8 and the unseen 10 / 20 / all by frequency."""
    import torch
    import torch.nn.functional as F

    from .data.dataset import decoded_batches
    from .data.records import Table as RTable
    from .eval.contract import EvalResult, EvaluationError, split_words
    from .eval.padchest import padchest_protocol
    from .eval.zeroshot import predictions, probabilities, score

    _, corpus, what = run.corpus(text=False)
    srcs = [(n, src) for n, src in zip(corpus.names, corpus.sources) if src.adapter.name == "padchest"]
    if not srcs:
        raise EvaluationError(f"eval padchest: {corpus.describe()} has no padchest source; give one with data=padchest "
                              f"data.root=... (its held-out part is evaluated)")
    name, src = srcs[0]
    if src.val is None or not len(src.val):
        raise EvaluationError(f"eval padchest: the held-out part of {src.spec.describe()} is empty")
    table = RTable("padchest", src.held_records, tuple(n for n in corpus.label_names
                                                        if any(n in r.labels for r in src.held_records)))
    proto = padchest_protocol(table, physician_only=s.physician_only)
    index = {r.id: i for i, r in enumerate(src.val.table.records)}
    feats, ids = [], []
    with torch.no_grad():
        for items in decoded_batches(src.val, [index[i] for i in proto.ids], s.batch_size):
            pooled, _ = run.model.encode_image(torch.stack([it["image"] for it in items]).to(run.device))
            feats.append(F.normalize(pooled.float(), dim=-1).cpu())
            ids += [str(it["id"]) for it in items]
    img = torch.cat(feats)
    rows = [proto.ids.index(i) for i in ids]
    tables, metrics, details, per_subset = [], {"padchest/n": float(len(ids))}, [], {}
    for sub in s.subsets:
        labs, y, names = proto.subset(sub)
        if not labs:
            per_subset[sub] = None
            continue
        prob = probabilities(run.model, img, names, run.device, no_finding="pair", style=s.prompts)
        res = score(y[rows], prob, names, s.bootstrap, pred=predictions(prob, names, "pair"))
        res.prompts = s.prompts
        m, d = zeroshot_metrics(res, prefix=f"padchest/{sub}")
        m.pop(f"padchest/{sub}/n", None)
        metrics.update(m)
        for row, lab in zip(d, labs):
            details.append({"subset": sub, "padchest_label": lab, **row})
        per_subset[sub] = res.to_json()
        tables.append(res.table(title=f"PadChest {sub}: {len(labs)} labels on {res.n} images ({split_words(what)})"))
    return EvalResult("padchest", metrics, details, data=what, tables=tables, warnings=list(proto.warnings),
                      extra={"protocol": proto.to_json(), "subsets": per_subset})


# --- registration --------------------------------------------------------------------------------

@hookimpl
def register_evaluations(register):
    register("zeroshot", zeroshot, settings=ZeroshotSettings, ensemble=True, end_of_run={"bootstrap": 200})
    register("finetune", finetune, settings=FinetuneSettings, out="finetune")
    register("masks", masks, settings=MasksSettings)
    register("retrieval", retrieval, settings=RetrievalSettings, end_of_run={"bootstrap": 200})
    register("grounding", grounding, settings=GroundingSettings)
    register("padchest", padchest, settings=PadChestSettings)
