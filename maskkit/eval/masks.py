"""Mask-lesion overlap on data with lesion masks (phantoms): the paper's Fig. 3 as numbers.

For each image strategy and ratio, over held-out images:

- ``lesion_visible``: the fraction of lesion tokens left **visible** (random masking at ratio r
  leaves about 1 - r; perfect guidance at a ratio that covers the lesions leaves 0);
- ``masked_on_lesion``: the fraction of masked tokens that fall on a lesion;
- ``lift``: ``masked_on_lesion`` over the lesion-token base rate (random = 1; bounded by 1/base rate
  and, for a masked fraction r of all tokens, by 1/r when lesions cover less than r);
- ``union_coverage`` (union only): the fraction of tokens in the union before the λ2 subset.

A token is a lesion token when at least ``lesion_threshold`` of its pixels are lesion
(:func:`maskkit.data.regions.lesion_patches` of :func:`~maskkit.data.regions.mask_coverage`, the
functions every region annotation goes through); the counts are
:func:`maskkit.eval.overlap.overlap_counts`, the general mask-lesion overlap.

Strategies see the held-out images in batches of ``batch_size`` (16: the tiny training batch),
as in training: ``atypical`` and the guided unions compare a token with the same position in the
other images of its batch. Counts are summed over batches before the fractions are taken.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..compose import build_strategy
from ..masking import mask_generator, role_context
from ..data.regions import lesion_patches, mask_coverage
from .overlap import overlap_counts


@dataclass
class Features:
    """Token features of ``M`` images and their lesion tokens. ``e_rep`` / ``rep_valid`` are None
    when the images have no reports (image-only data: strategies that read a report cannot run)."""

    e_img: torch.Tensor          # [M, N, C]
    e_rep: torch.Tensor | None   # [M, T, C]
    rep_valid: torch.Tensor | None  # [M, T]
    prompts: torch.Tensor        # [P, L, C] or [P, C]
    prompt_valid: torch.Tensor | None
    lesion: torch.Tensor         # [M, N] bool lesion tokens
    ids: list[str] | None = None  # the images' ids, in order (annotated data)

    def available(self) -> frozenset[str]:
        """The MaskContext inputs these features provide."""
        have = {"image_tokens", "prompt_tokens"}
        if self.e_rep is not None:
            have |= {"report_tokens", "report_valid"}
        return frozenset(have)


@torch.no_grad()
def extract(model, dataset, lesion_threshold: float = 0.1, batch_size: int = 64, device="cpu") -> Features:
    """Token features of every (paired) sample and its lesion tokens. The image tokens are those
    training's masks see (:meth:`~maskkit.model.XLIP.mask_image_tokens`: in ``mim.placement=sparse``
    the guide tokens, so a row measures which tokens that model's encoder does not see)."""
    from ..data.dataset import Collator, decoded_batches

    col = Collator(model.tokenizer)
    e_img, e_rep, valid, lesion = [], [], [], []
    p = model.patch
    for items in decoded_batches(dataset, range(len(dataset)), batch_size):
        b = col(items)
        keep = b["paired"]
        if not keep.any():
            continue
        ei = model.mask_image_tokens(b["images"][keep].to(device))  # what training's masks see
        _, er = model.encode_text(b["text"][keep].to(device))
        les = b["lesion"][keep]
        e_img.append(ei.float().cpu())
        e_rep.append(er.float().cpu())
        valid.append(b["text_valid"][keep])
        lesion.append(lesion_patches(mask_coverage(les, les.shape[1] // p), lesion_threshold))
    prompts, pv = model.prompt_features(device)
    return Features(torch.cat(e_img), torch.cat(e_rep), torch.cat(valid), prompts.float().cpu(),
                    None if pv is None else pv.cpu(), torch.cat(lesion))


@torch.no_grad()
def extract_annotated(model, dataset, rows: list[int], lesion_of, batch_size: int = 64, device="cpu") -> Features:
    """Token features of the samples ``rows`` of ``dataset`` (images with region annotations) and
    their lesion tokens ``lesion_of(ids) -> [B, N] bool`` (e.g. from a region file through
    :func:`maskkit.data.regions.coverage_batch` and :func:`~maskkit.data.regions.lesion_patches`).
    Reports are encoded when every decodable sample has one; otherwise ``e_rep`` is None (a
    strategy that reads the report cannot run on image-only data)."""
    from ..data.dataset import Collator, decoded_batches

    col = Collator(model.tokenizer)
    items_all = [s for items in decoded_batches(dataset, rows, batch_size) for s in items]
    if not items_all:
        from ..errors import MaskkitError

        raise MaskkitError(f"none of the {len(rows)} annotated images decodes")
    paired = all(s.get("report") for s in items_all)
    e_img, e_rep, valid, lesion, ids = [], [], [], [], []
    for lo in range(0, len(items_all), batch_size):
        b = col(items_all[lo:lo + batch_size])
        ei = model.mask_image_tokens(b["images"].to(device))
        e_img.append(ei.float().cpu())
        if paired:
            _, er = model.encode_text(b["text"].to(device))
            e_rep.append(er.float().cpu())
            valid.append(b["text_valid"])
        ids += list(b["ids"])
        lesion.append(lesion_of(list(b["ids"])))
    prompts, pv = model.prompt_features(device)
    return Features(torch.cat(e_img), torch.cat(e_rep) if paired else None, torch.cat(valid) if paired else None,
                    prompts.float().cpu(), None if pv is None else pv.cpu(), torch.cat(lesion).to(torch.bool), ids)


def _counts(strategy, f: Features, lo: int, hi: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    rep = None if f.e_rep is None else f.e_rep[lo:hi]
    rv = None if f.rep_valid is None else f.rep_valid[lo:hi]
    role = "image_mask" if rep is not None else "image_only_mask"  # the role these rows would have in training
    ctx = role_context(role, generator, image_tokens=f.e_img[lo:hi], report_tokens=rep, report_valid=rv,
                       prompt_tokens=f.prompts, prompt_valid=f.prompt_valid)
    strategy.check_inputs(ctx)
    if strategy.output == "tokens":
        ex = strategy.explain(ctx)
        mask, union = ex["mask"], ex.get("union")
    else:
        mask, union = strategy(ctx), None
    c = overlap_counts(mask, f.lesion[lo:hi])  # the general mask-lesion counts (eval/overlap.py), [b] each
    if union is not None:
        c["union"] = union.sum(1)
    return c


def measure(strategy, f: Features, seed: int = 0, batch_size: int | None = None) -> dict:
    """Overlap of ``strategy``'s masks with the lesion tokens of ``f``, the images taken in batches
    of ``batch_size`` (None: all at once), one generator seeded with ``seed`` for all batches.

    Returns fractions: ``lesion_visible``, ``masked_on_lesion``, ``lift``, ``masked_fraction``,
    ``lesion_base_rate`` and, for a union, ``union_coverage`` (all in [0, 1] except lift); and the
    general overlap of :func:`maskkit.eval.overlap.summarise` over the images with lesion tokens:
    ``share_micro`` (= ``1 - lesion_visible``), ``random_micro``, ``lift_micro`` (= ``lift`` when
    every image is masked at one ratio), ``share_macro``, ``random_macro``, ``lift_macro``.
    Counts stay on the device until the end.
    """
    from .overlap import summarise

    M = f.e_img.shape[0]
    step = batch_size or M
    g = mask_generator(seed, "image_mask")  # the seed rule training uses (A30)
    parts = [_counts(strategy, f, lo, min(lo + step, M), g) for lo in range(0, M, step)]
    counts = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    sums = torch.stack([v.sum() for v in counts.values()]).tolist()  # one transfer
    tot = dict(zip(counts, map(float, sums)))
    base = tot["lesion"] / tot["tokens"]
    masked_on = tot["masked_lesion"] / max(tot["masked"], 1.0)
    out = {"lesion_visible": tot["visible_lesion"] / max(tot["lesion"], 1.0), "masked_on_lesion": masked_on,
           "lift": masked_on / base if base else float("nan"), "masked_fraction": tot["masked"] / tot["tokens"],
           "lesion_base_rate": base}
    if "union" in tot:
        out["union_coverage"] = tot["union"] / tot["tokens"]
    general = summarise(counts)
    out.update({k: general[k] for k in ("share_micro", "random_micro", "lift_micro", "share_macro", "random_macro", "lift_macro")})
    return out


def default_grid(ratio: float = 0.75) -> list[tuple[str, dict]]:
    """(label, spec): random, each attention strategy per reduction, the union (uniform and
    score_weighted) per reduction and λ1."""
    rows = [("random", {"random": {"ratio": ratio}})]
    from ..strategies._attention import REDUCTIONS

    for red in REDUCTIONS:
        for name in ("report_cross", "prompt_driven", "image_self"):
            rows.append((f"{name} [{red}]", {name: {"ratio": ratio, "reduction": red}}))
        for subset, lam in itertools.product(("uniform", "score_weighted"), (0.5, 0.6, 0.7, 0.8)):
            kids = [{n: {"reduction": red}} for n in ("report_cross", "prompt_driven", "image_self")]
            rows.append((f"union {subset} λ1={lam} [{red}]",
                         {"union": {"of": kids, "child_ratio": lam, "ratio": ratio, "subset": subset}}))
    return rows + guided_grid(ratio)


def guided_grid(ratio: float = 0.75) -> list[tuple[str, dict]]:
    """(label, spec): the issue-12 options beside the paper-faithful union (default reduction):
    ``atypical`` alone, the ranked subset at several temperatures, the max blend, and the union of
    the paper's three children with ``atypical`` under each subset and blend, including the
    "two voices" weights of ``xlip-guided`` (the paper's blend and atypical weighed equally)."""
    kids = ["report_cross", "prompt_driven", "image_self"]
    rows = [("atypical", {"atypical": {"ratio": ratio}}),
            ("union uniform λ1=0.7 (paper)", {"union": {"of": kids, "ratio": ratio}})]
    for tau in (0.0, 0.1, 0.3, 1.0):
        rows.append((f"union ranked τ={tau}", {"union": {"of": kids, "ratio": ratio, "subset": "ranked", "temperature": tau}}))
    rows.append(("union ranked τ=0 blend=max", {"union": {"of": kids, "ratio": ratio, "subset": "ranked", "blend": "max"}}))
    four = kids + ["atypical"]
    rows.append(("union+atypical uniform", {"union": {"of": four, "ratio": ratio}}))
    rows.append(("union+atypical score_weighted", {"union": {"of": four, "ratio": ratio, "subset": "score_weighted"}}))
    for blend in ("mean", "max"):
        for tau in (0.0, 0.1, 0.3):
            rows.append((f"union+atypical ranked τ={tau} blend={blend}",
                         {"union": {"of": four, "ratio": ratio, "subset": "ranked", "temperature": tau, "blend": blend}}))
    rows.append(("union+atypical ranked τ=0 two voices", {"union": {"of": four, "ratio": ratio, "subset": "ranked",
                                                                   "weights": [1.0, 1.0, 1.0, 3.0]}}))
    from ..presets import GUIDED

    rows.append(("xlip-guided (preset image_mask)", {"union": {**GUIDED["union"], "ratio": ratio}}))
    return rows


def with_ratio(tree, ratio: float):
    """A strategy tree (a registered name, or ``{name: {config}}``) with its final ``ratio`` set."""
    if isinstance(tree, str):
        return {tree: {"ratio": ratio}}
    if isinstance(tree, dict) and len(tree) == 1:
        (name, conf), = tree.items()
        return {name: {**(conf or {}), "ratio": ratio}}
    raise ValueError(f"strategy tree {tree!r}: expected a name or a one-key mapping")


def registry_grid(ratios, names=None) -> tuple[list[tuple[str, dict]], list[str]]:
    """((label, spec) rows, skipped lines): every registered image strategy that masks tokens -
    built-in or a plugin's - at its default configuration, and every distinct ``image_mask`` tree
    of the registered presets (labelled ``preset <name>``, the shortest name of the presets that
    share the tree), each at every ratio of ``ratios``. ``names`` (strategy or preset names)
    restricts the list; an unknown one is a one-line :class:`~maskkit.errors.UnknownNameError`.

    A strategy that cannot be built from its defaults alone (a composite, which needs children;
    a plugin's with required settings) is skipped when it was not asked for by name, with one line
    in the second list saying why; asked for by name, it is an error."""
    import json

    from ..compose import build_strategy as build
    from ..errors import MaskkitError, UnknownNameError
    from ..plugins import get_registry

    reg = get_registry()
    trees: dict[str, list[str]] = {}
    for pname, p in sorted(reg.presets.items()):
        t = p.config.get("image_mask")
        if t is not None:
            trees.setdefault(json.dumps(t, sort_keys=True), []).append(pname)
    presets = {min(ps, key=lambda n: (len(n), n)): json.loads(t) for t, ps in trees.items()}
    cand: list[tuple[str, object, bool]] = []  # (label, tree, asked for by name)
    if names:
        for n in names:
            if n in reg.strategies:
                cand.append((n, n, True))
            elif n in reg.presets:
                t = reg.presets[n].config.get("image_mask")
                if t is None:
                    raise MaskkitError(f"strategy list: preset '{n}' masks no image (no image_mask)")
                cand.append((f"preset {n}", t, True))
            else:
                from ..errors import close_matches

                raise UnknownNameError(f"strategy list: '{n}' is neither a registered strategy nor a preset"
                                       f"{close_matches(n, [*reg.strategies, *reg.presets]) or ''}")
    else:
        cand = [(n, n, False) for n in sorted(reg.strategies)] + [(f"preset {n}", t, False) for n, t in presets.items()]
    from ..core import StrategyConfig, declared_modalities

    rows, skipped, composites = [], [], []
    seen: set[str] = set()
    for label, tree, asked in cand:
        cls = reg.strategies.get(tree) if isinstance(tree, str) else None
        if cls is not None and not asked and "image" not in declared_modalities(cls):
            continue  # a text strategy: nothing to measure on image tokens
        if cls is not None and not asked and cls.composite:
            composites.append(label)  # it needs children: measured through the presets that compose it
            continue
        if cls is not None and asked and cls.composite:
            users = sorted((p for p, t in presets.items() if isinstance(t, dict) and tree in t), key=lambda n: (len(n), n))
            raise MaskkitError(f"strategy '{label}' is a composite: it needs children; give a preset that composes it"
                               + (f" (--strategy {users[0]})" if users else ""))
        own = cls is not None and "ratio" not in getattr(cls, "Config", StrategyConfig).model_fields
        try:
            s = build(tree if own else with_ratio(tree, ratios[0]))
            if s.modality != "image" or s.output != "tokens":
                if asked:
                    raise MaskkitError(f"strategy '{label}' masks {s.modality} {s.output}, not image tokens")
                continue
        except MaskkitError as exc:
            if asked:
                raise
            skipped.append(f"{label}: skipped, it cannot be built from its defaults ({' '.join(str(exc).split())})")
            continue
        if own:  # a strategy without a ratio setting masks as many tokens as it decides: one row
            rows.append((f"{label} (its own ratio)", {tree: {}}))
            continue
        key = json.dumps(with_ratio(tree, 0.5), sort_keys=True)
        if key in seen:  # a preset whose image_mask is one strategy's defaults: that strategy's row already
            continue
        seen.add(key)
        for r in ratios:
            rows.append((label if len(ratios) == 1 else f"{label} @ {r:g}", with_ratio(tree, r)))
    if composites:
        skipped.append(f"composite strategies ({', '.join(composites)}) are measured through the presets that compose "
                       f"them (preset rows), or --strategy PRESET")
    return rows, skipped


def evaluate_masks(f: Features, grid: list[tuple[str, dict]], seeds: int = 3, batch_size: int | None = 16,
                   skipped: list[str] | None = None) -> list[dict]:
    """Every strategy of ``grid`` measured on the features in batches of ``batch_size`` (random
    ones averaged over ``seeds``). The strategies that need an input ``f`` lacks (the report, on
    image-only data: ``report_cross``, the ``xlip`` presets' union, ...) are left out, said in one
    line appended to ``skipped`` that names them all (when given; else it raises)."""
    rows = []
    have = f.available()
    left_out: dict[tuple[str, ...], list[str]] = {}
    for label, spec in grid:
        s = build_strategy(spec)
        missing = sorted(s.all_requires - have)
        if missing:
            if skipped is None:
                from ..errors import MissingInputError

                raise MissingInputError(f"strategy '{label}' needs {', '.join(missing)}, which these images do not have")
            left_out.setdefault(tuple(missing), []).append(label)
            continue
        runs = [measure(s, f, seed, batch_size) for seed in range(seeds if s.stochastic else 1)]
        avg = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
        rows.append({"strategy": label, "spec": spec, **avg})
    for missing, labels in left_out.items():
        reads = "the report" if set(missing) <= {"report_tokens", "report_valid"} else ", ".join(missing)
        skipped.append(f"image-only data: {len(labels)} of the {len(grid)} strategies read {reads}, which not every "
                       f"evaluated image has, and are not measured: {', '.join(labels)} (a limitation of region data "
                       f"without reports, e.g. RSNA, SIIM, NIH, VinDr; measure them on paired data: the phantoms, or "
                       f"a paired adapter's images)")
    return rows
