"""Figures: mask overlays (the paper's Fig. 3), entity highlighting (Fig. 4), training curves,
sweep plots (Fig. 6/7). The same functions back ``maskkit visualize`` and notebooks.

Overlays are built as pixel arrays with numpy so that what is drawn is exactly the mask:
a masked patch is tinted orange (``MASK_RGB`` at ``MASK_ALPHA``), an unmasked patch keeps its
grey level, lesion outlines are cyan. Composite PNGs place panels on a fixed grid
(:func:`panel_box`), so a test can read back which patches were drawn as masked.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

MASK_RGB = np.array([255, 110, 0], dtype=np.float32)
MASK_ALPHA = 0.6
LESION_RGB = np.array([0, 255, 255], dtype=np.uint8)
SCALE = 3          # panel pixels per image pixel
TITLE_LINES = 3    # column titles wrap to this many lines at most
TITLE_H = 6 + 12 * TITLE_LINES  # title strip height (Pillow's default font: 11 px lines)
GAP = 6            # gap between panels


@dataclass
class Panel:
    title: str
    scores: np.ndarray | None   # [N] float, or None
    mask: np.ndarray            # [N] bool


@dataclass
class SampleView:
    id: str
    image: np.ndarray           # [H, W] float in [0, 1]
    lesion: np.ndarray | None   # [H, W] bool
    panels: list[Panel] = field(default_factory=list)
    report: str | None = None


# --- pixel overlays ---------------------------------------------------------------------------

def _grid(mask_or_scores: np.ndarray, grid: tuple[int, int], patch: int) -> np.ndarray:
    return np.kron(np.asarray(mask_or_scores).reshape(grid), np.ones((patch, patch)))


def _gray_rgb(image: np.ndarray) -> np.ndarray:
    g = np.clip(image, 0, 1) * 255
    return np.repeat(g[..., None], 3, -1).astype(np.float32)


def _outline(lesion: np.ndarray) -> np.ndarray:
    p = np.pad(lesion, 1)
    inner = lesion & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return lesion & ~inner


def _upscale(rgb: np.ndarray, s: int = SCALE) -> np.ndarray:
    return np.kron(rgb, np.ones((s, s, 1))).astype(np.uint8) if rgb.ndim == 3 else np.kron(rgb, np.ones((s, s)))


def _draw_lesion(up: np.ndarray, lesion: np.ndarray | None) -> np.ndarray:
    if lesion is None or not lesion.any():
        return up
    edge = _outline(_upscale(lesion.astype(np.uint8)).astype(bool))
    up = up.copy()
    up[edge] = LESION_RGB
    return up


def mask_overlay(image: np.ndarray, mask: np.ndarray, patch: int, lesion: np.ndarray | None = None) -> np.ndarray:
    """``[H*SCALE, W*SCALE, 3]`` uint8: masked patches tinted orange, lesion outline in cyan."""
    H, W = image.shape
    m = _grid(mask.astype(np.float32), (H // patch, W // patch), patch)[..., None]
    rgb = _gray_rgb(image)
    rgb = rgb * (1 - MASK_ALPHA * m) + MASK_RGB * (MASK_ALPHA * m)
    return _draw_lesion(_upscale(rgb.astype(np.uint8)), lesion)


def heat_overlay(image: np.ndarray, scores: np.ndarray, patch: int, lesion: np.ndarray | None = None) -> np.ndarray:
    """``[H*SCALE, W*SCALE, 3]`` uint8: per-patch scores (min-max, viridis) over the X-ray."""
    from matplotlib import colormaps

    H, W = image.shape
    s = np.asarray(scores, dtype=np.float64)
    s = (s - s.min()) / (s.max() - s.min()) if s.max() > s.min() else np.zeros_like(s)
    heat = colormaps["viridis"](_grid(s, (H // patch, W // patch), patch))[..., :3] * 255
    rgb = 0.45 * _gray_rgb(image) + 0.55 * heat
    return _draw_lesion(_upscale(rgb.astype(np.uint8)), lesion)


# --- what to draw ------------------------------------------------------------------------------

@torch.no_grad()
def sample_views(model, batch: dict, seed: int = 0, random_ratio: float | None = None, rows: int | None = None) -> list[SampleView]:
    """Panels of the first ``rows`` samples of a batch: each child's scores and mask, the union,
    the final AttMIM mask, and random.

    The masks are drawn as training draws them: the whole batch goes through the model's one
    mask-context builder (:meth:`maskkit.model.XLIP.mask_contexts`) with ``seed`` (a training
    step's :func:`maskkit.masking.mask_seed`), so the final panel is the mask that step used.
    """
    from .core import topk_count_mask
    from .masking import mask_generator
    from .roles import IMAGE_ROLES

    dev = next(model.parameters()).device
    images = batch["images"].to(dev)
    paired = batch["paired"].to(dev)
    e_img = model.mask_image_tokens(images)  # what training's masks see (the guide tokens in sparse placement)
    _, e_rep = model.encode_text(batch["text"].to(dev))
    ctxs = model.mask_contexts(e_img.float(), e_rep.float(), batch["text_valid"].to(dev), batch.get("entities"), seed)
    final = model.image_masks(ctxs, paired) if ctxs.keys() & set(IMAGE_ROLES) else None
    explained = {}
    for role in IMAGE_ROLES:
        strat = getattr(model, role)
        if strat is not None and role in ctxs:
            ex = strat.explain(ctxs[role])  # every strategy explains: mask and scores; a union adds its parts
            explained[role] = (strat, ex if "union" in ex else None, ex.get("scores"))
    B, N = e_img.shape[:2]
    noise = torch.rand(B, N, generator=mask_generator(seed, "image_mask", dev), device=dev)  # the random panel
    views = []
    for i in range(B if rows is None else min(rows, B)):
        role = "image_mask" if bool(batch["paired"][i]) else "image_only_mask"
        panels = []
        if role not in explained:
            final_ratio = random_ratio or 0.75
        else:
            strat, ex, scores = explained[role]
            if ex is not None:
                for child, m, sc in zip(strat.children, ex["children"], ex["child_scores"]):
                    panels.append(Panel(child.name, None if sc is None else sc[i].cpu().numpy(), m[i].cpu().numpy()))
                panels.append(Panel("union", ex["blended"][i].cpu().numpy(), ex["union"][i].cpu().numpy()))
                panels.append(Panel("AttMIM (final)", ex["blended"][i].cpu().numpy(), final[i].cpu().numpy()))
            else:
                panels.append(Panel(strat.name, None if scores is None else scores[i].cpu().numpy(), final[i].cpu().numpy()))
            final_ratio = float(final[i].float().mean())
        k = torch.tensor([round((random_ratio or final_ratio) * N)], device=dev)
        rnd = topk_count_mask(noise[i:i + 1], k, torch.ones(1, N, dtype=torch.bool, device=dev))
        panels.append(Panel("random", None, rnd[0].cpu().numpy()))
        lesion = batch["lesion"][i].cpu().numpy() if "lesion" in batch else None
        views.append(SampleView(batch["ids"][i], batch["images"][i, 0].cpu().numpy(), lesion, panels,
                                batch.get("reports", [None] * len(batch["ids"]))[i]))
    return views


# --- composite PNG -------------------------------------------------------------------------------

def panel_box(row: int, col: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) in the composite of the panel at grid ``row``, ``col``."""
    side = size * SCALE
    return TITLE_H + row * (side + GAP), col * (side + GAP), side, side


def panel_columns(views: list[SampleView]) -> list[str]:
    """The composite's column titles after the X-ray: every panel title of the views, in order of
    first appearance (a paired sample's ``report_cross`` comes before ``prompt_driven`` also when
    an image-only sample, which has no such panel, comes first)."""
    cols: list[str] = []
    for v in sorted(views, key=lambda v: -len(v.panels)):
        for k, p in enumerate(v.panels):
            if p.title not in cols:
                nxt = next((q.title for q in v.panels[k + 1:] if q.title in cols), None)
                cols.insert(cols.index(nxt) if nxt else len(cols), p.title)
    return cols


def composite(views: list[SampleView], patch: int) -> np.ndarray:
    """One image: per sample two rows (heat maps, masks); columns: X-ray, then each strategy by
    title (:func:`panel_columns`); a sample without a column's panel leaves it blank."""
    from PIL import Image, ImageDraw

    size = views[0].image.shape[0]
    columns = panel_columns(views)
    cols = 1 + len(columns)
    side = size * SCALE
    H = TITLE_H + 2 * len(views) * (side + GAP)
    W = cols * (side + GAP)
    canvas = np.full((H, W, 3), 255, np.uint8)
    for r, v in enumerate(views):
        t, l, h, w = panel_box(2 * r, 0, size)
        canvas[t:t + h, l:l + w] = _draw_lesion(_upscale(_gray_rgb(v.image).astype(np.uint8)), v.lesion)
        for p in v.panels:
            c = 1 + columns.index(p.title)
            if p.scores is not None:
                t, l, h, w = panel_box(2 * r, c, size)
                canvas[t:t + h, l:l + w] = heat_overlay(v.image, p.scores, patch, v.lesion)
            t, l, h, w = panel_box(2 * r + 1, c, size)
            canvas[t:t + h, l:l + w] = mask_overlay(v.image, p.mask, patch, v.lesion)
    img = Image.fromarray(canvas)
    d = ImageDraw.Draw(img)
    titles = ["X-ray (top: scores, bottom: mask)"] + columns
    for c, title in enumerate(titles):
        for k, line in enumerate(wrap_title(title, side - 4, lambda t: d.textlength(t))):
            d.text((panel_box(0, c, size)[1] + 2, 3 + 12 * k), line, fill=(0, 0, 0))
    return np.asarray(img)


def wrap_title(title: str, width: float, measure) -> list[str]:
    """``title`` in at most :data:`TITLE_LINES` lines of at most ``width`` pixels (``measure``: a
    text's width), broken at spaces, underscores and other punctuation where it can be, else
    anywhere; what does not fit ends in "…"."""
    import re

    pieces = [p for p in re.findall(r"\(?[^ _(),:]*[ _),:]*", title) if p]
    lines: list[str] = []
    cur = ""
    for piece in pieces:
        while piece:
            if measure((cur + piece).rstrip()) <= width:
                cur, piece = cur + piece, ""
            elif cur:
                lines.append(cur.rstrip())
                cur = ""
            else:  # one piece wider than the column: cut it
                n = max(1, max(i for i in range(1, len(piece) + 1) if measure(piece[:i]) <= width or i == 1))
                lines.append(piece[:n])
                piece = piece[n:]
    if cur.strip():
        lines.append(cur.rstrip())
    if len(lines) > TITLE_LINES:
        last = lines[TITLE_LINES - 1]
        while last and measure(last + "…") > width:
            last = last[:-1]
        lines = lines[:TITLE_LINES - 1] + [last + "…"]
    return lines


def save_png(array: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    from .io import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_mask_from_png(path: str | Path, row: int, col: int, size: int, patch: int) -> np.ndarray:
    """``[N]`` bool read back from a composite PNG: a patch is masked when its centre is tinted."""
    from PIL import Image

    arr = np.asarray(Image.open(path).convert("RGB")).astype(int)
    t, l, _, _ = panel_box(row, col, size)
    g = size // patch
    out = np.zeros(g * g, dtype=bool)
    for k in range(g * g):
        y, x = divmod(k, g)
        cy, cx = t + (y * patch + patch // 2) * SCALE + SCALE // 2, l + (x * patch + patch // 2) * SCALE + SCALE // 2
        r_, g_, b_ = arr[cy, cx]
        out[k] = (r_ - b_) > 40
    return out


def mask_figure(views: list[SampleView], patch: int):
    """The composite as a matplotlib figure (for notebooks)."""
    import matplotlib.pyplot as plt

    arr = composite(views, patch)
    fig, ax = plt.subplots(figsize=(arr.shape[1] / 100, arr.shape[0] / 100), dpi=100)
    ax.imshow(arr)
    ax.axis("off")
    fig.tight_layout(pad=0)
    return fig


# --- text -----------------------------------------------------------------------------------------

def text_spans(tokenizer, report: str, entities: list[tuple[int, int, str]], recon: dict | None):
    """(entity spans, selected spans with (truth, predicted) words) in report characters."""
    enc = tokenizer([report])
    spans = enc.spans[0]
    chosen = []
    if recon:
        for pos, t, p in zip(recon["positions"], recon["truth"], recon["predicted"]):
            if pos < len(spans) and spans[pos][1] > spans[pos][0]:
                chosen.append((spans[pos][0], spans[pos][1], tokenizer.decode([t]), tokenizer.decode([p])))
    return entities, chosen


def text_terminal(report: str, entities, chosen):
    """A rich Text with entities underlined and EntMLM-chosen words reversed, plus predictions."""
    from rich.text import Text

    t = Text(report)
    for s, e, label in entities:
        t.stylize("underline cyan", s, e)
    for s, e, truth, pred in chosen:
        t.stylize("reverse bold", s, e)
    lines = Text("\n")
    for s, e, truth, pred in chosen:
        ok = "✓" if truth.strip() == pred.strip() else "✗"
        lines.append(f"  masked {report[s:e]!r}: token {truth!r} -> predicted {pred!r} {ok}\n")
    return t + lines


def text_html(report: str, entities, chosen) -> str:
    marks = {}
    for s, e, label in entities:
        for k in range(s, e):
            marks.setdefault(k, set()).add(("ent", label))
    for s, e, truth, pred in chosen:
        for k in range(s, e):
            marks.setdefault(k, set()).add(("sel", f"{truth} → {pred}"))
    out, k = [], 0
    while k < len(report):
        m = marks.get(k)
        j = k
        while j < len(report) and marks.get(j) == m:
            j += 1
        chunk = html.escape(report[k:j])
        if m:
            cls = " ".join(sorted({kind for kind, _ in m}))
            tip = html.escape("; ".join(sorted(v for _, v in m)))
            chunk = f'<span class="{cls}" title="{tip}">{chunk}</span>'
        out.append(chunk)
        k = j
    preds = "".join(f"<li><b>{html.escape(report[s:e])}</b>: {html.escape(t)} → {html.escape(p)}</li>" for s, e, t, p in chosen)
    return f'<p class="report">{"".join(out)}</p>' + (f"<ul class='preds'>{preds}</ul>" if preds else "")


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A self-contained HTML page (images inlined as data URIs)."""
    css = ("body{font-family:system-ui,sans-serif;margin:20px;background:#fafafa}img{max-width:100%;border:1px solid #ccc}"
           ".sel{background:#ff6e00;color:#fff;padding:0 2px}.ent{border-bottom:2px solid #0aa}"
           "section{background:#fff;padding:12px;margin:12px 0;box-shadow:0 1px 3px #0002}.report{font-size:15px;line-height:1.6}")
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{b}</section>" for h, b in sections)
    legend = ("<p>Masked patches are tinted <b style='color:#ff6e00'>orange</b>; lesion outlines are "
              "<b style='color:#0aa'>cyan</b>. In reports, <span class='ent'>underlined</span> words are NER "
              "entities and <span class='sel'>highlighted</span> ones were masked by EntMLM.</p>")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{css}</style></head><body><h1>{html.escape(title)}</h1>{legend}{body}</body></html>"


def png_data_uri(array: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# --- runs and sweeps ----------------------------------------------------------------------------

def training_curves(run_dir: str | Path):
    """Loss curves per term (warm-up boundary marked) and samples/s of a run directory. A line
    whose loss is null (no target for the term in its window) leaves a gap, not a point at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .errors import MaskkitError

    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise MaskkitError(f"{run_dir}: no metrics.jsonl; is it a maskkit run directory?")
    from .io import read_text

    rows = [json.loads(l) for l in read_text(path).splitlines() if l.strip()]
    if not rows:
        raise MaskkitError(f"{path}: empty")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    from .terms import all_terms

    for k in (t.log_key for t in all_terms()):
        pts = [(r["step"], float("nan") if r[k] is None else r[k]) for r in rows if k in r]  # null: a gap
        if any(v == v for _, v in pts):
            axes[0].plot(*zip(*pts), label=k)
    ends = [r["step"] for r in rows if r.get("warmup")]
    if ends:
        axes[0].axvline(max(ends), color="k", ls="--", lw=1, label="end of warm-up")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot([r["step"] for r in rows], [r.get("samples_per_s", 0) for r in rows])
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("samples/s")
    fig.suptitle(Path(run_dir).name)
    fig.tight_layout()
    return fig


def sweep_figure(sweep_dir: str | Path):
    """Fig. 6/7-style plot of zero-shot AUC and F1 of a sweep directory (its results.csv)."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from .errors import MaskkitError
    from .sweep import plot_results

    path = Path(sweep_dir) / "results.csv"
    if not path.is_file():
        raise MaskkitError(f"{sweep_dir}: no results.csv; run maskkit sweep first")
    from .io import read_text

    rows = list(csv.DictReader(io.StringIO(read_text(path), newline="")))
    fixed = {"preset", "seeds", "auc_mean", "auc_std", "f1_mean", "f1_std", "acc_mean", "acc_std"}
    cols = list(rows[0])
    keys = cols[1:cols.index("seeds")]  # summarise() writes preset, the grid keys, seeds, then the metrics

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None
    summary = [{**{k: (num(r[k]) if num(r[k]) is not None else r[k]) for k in keys}, "preset": r["preset"],
                **{m: num(r[m]) for m in fixed - {"preset", "seeds"}}} for r in rows]
    img = Image.open(io.BytesIO(plot_results(summary, keys)))
    fig, ax = plt.subplots(figsize=(img.width / 110, img.height / 110), dpi=110)
    ax.imshow(img)
    ax.axis("off")
    return fig
