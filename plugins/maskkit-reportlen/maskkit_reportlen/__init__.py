"""Report length vs image-report similarity: the smallest complete maskkit evaluation plugin.

The contract (docs/plugins.md, docs/eval.md): implement ``register_evaluations(register)`` and
call ``register(name, evaluate, settings=Model)``. ``evaluate(run, settings)`` gets the run
(:class:`maskkit.eval.contract.EvalRun`: its model, config, data and held-out split) and an
instance of ``Model``, and returns a :class:`maskkit.eval.contract.EvalResult`: one flat dict of
metrics whose keys start with ``"<name>/"``, and per-item ``details``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from maskkit import hookimpl

__version__ = "0.1.0"


class Settings(BaseModel):
    """The evaluation's settings: each field is a ``--option`` of ``maskkit eval report_length``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(64, ge=1, le=4096, description="images encoded at once")
    min_tokens: int = Field(1, ge=1, description="leave out reports shorter than this many tokens")


def ranks(a):
    """1-based ranks of a 1-D array, tied values sharing their average rank."""
    import numpy as np

    _, inverse, counts = np.unique(np.asarray(a), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2)[inverse]


def spearman(x, y) -> float:
    """Spearman's rank correlation of two 1-D arrays (average ranks for ties); NaN when either is constant."""
    import numpy as np

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def report_length(run, settings: Settings):
    """Spearman correlation of report length (tokens) with image-report similarity on the held-out paired images."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from maskkit.data.dataset import decoded_batches
    from maskkit.eval.contract import EvalResult, EvaluationError

    ds, _, what = run.held_out()
    model = run.model
    rows = []
    with torch.no_grad():
        for items in decoded_batches(ds, list(range(len(ds))), settings.batch_size):
            items = [it for it in items if it.get("report")]
            if not items:
                continue
            enc = model.tokenizer([it["report"] for it in items])
            img, _ = model.encode_image(torch.stack([it["image"] for it in items]).to(run.device))
            txt, _ = model.encode_text(enc.ids.to(run.device))
            sim = (F.normalize(img.float(), dim=-1) * F.normalize(txt.float(), dim=-1)).sum(-1).cpu()
            tokens = enc.valid.sum(1)
            rows += [{"id": str(it["id"]), "tokens": int(n), "similarity": float(s)}
                     for it, n, s in zip(items, tokens.tolist(), sim.tolist()) if n >= settings.min_tokens]
    if len(rows) < 2:
        raise EvaluationError(f"report_length: {len(rows)} held-out images with a report of at least "
                              f"{settings.min_tokens} tokens; need two")
    tok = np.array([r["tokens"] for r in rows], dtype=float)
    sim = np.array([r["similarity"] for r in rows], dtype=float)
    metrics = {"report_length/spearman": spearman(tok, sim), "report_length/mean_similarity": float(sim.mean()),
               "report_length/mean_tokens": float(tok.mean()), "report_length/n": float(len(rows))}
    from rich.table import Table

    t = Table(title=f"report length vs image-report similarity on {len(rows)} held-out images")
    for c in ("spearman", "mean similarity", "mean tokens"):
        t.add_column(c, justify="right")
    t.add_row(*(f"{metrics['report_length/' + k]:.3f}" for k in ("spearman", "mean_similarity", "mean_tokens")))
    return EvalResult("report_length", metrics, rows, data=what, tables=[t])


@hookimpl
def register_evaluations(register):
    register("report_length", report_length, settings=Settings)
