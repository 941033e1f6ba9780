"""XLIP's objectives as loss modules (open_clip's ``ClipLoss`` style): each owns its weight, its
warm-up behaviour and every collective it needs.

The model (:class:`maskkit.model.XLIP`) returns features and masks (:class:`XLIPOutput`), never
losses; :class:`Objectives` turns them into one scalar per term of :data:`maskkit.terms.TERMS`.

Distributed training: every objective runs the **same collectives on every rank at every call**,
whatever a rank's batch holds (all paired, all image-only, a warm-up step). Nothing about a
batch's content decides whether, in which order or with which shapes a collective runs, so ranks
cannot fall out of step (the fault of issue 10.1). A term that does not train in the current
phase is still computed and multiplied by zero, so the autograd graph, and with it DDP's gradient
buckets, is the same at every step (no ``find_unused_parameters``).

Gradient accumulation (``train.grad_accum``): an optimiser step over several micro-batches equals
one step over their union. The recipe first runs every micro-batch forward without gradient and
keeps each objective's :meth:`Objective.summary` of it (the alignment rows, the masked-modelling
counts); then, for each micro-batch in turn, forward with gradient and each objective's
:class:`MicroBatches` share of the whole step's loss (open_clip's ``--accum-freq``, with the
logit scale's gradient and the masked-modelling normalisation corrected; docs/distributed.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import Gatherer
from .model.output import XLIPOutput
from .terms import Term, all_terms


@dataclass
class MicroBatches:
    """The micro-batches of one optimiser step, seen from the forward of micro-batch ``index``.

    ``cached[name]`` holds, for objective ``name``, the detached :meth:`Objective.summary` of
    every micro-batch of the step (this rank's, in order), from a forward without gradient. Under
    it an objective returns micro-batch ``index``'s *share*: the shares' values and gradients,
    summed over the step's micro-batches, are the loss and the gradient of one batch holding them
    all (of every rank, with DDP's gradient average).
    """

    cached: dict[str, list[torch.Tensor]]
    index: int

    @property
    def n(self) -> int:
        """Micro-batches in the step."""
        return len(next(iter(self.cached.values())))

    def substitute(self, name: str, local: torch.Tensor) -> torch.Tensor:
        """Every micro-batch's cached rows of ``name`` concatenated ``[sum B_m, ...]``, with micro-batch
        ``index``'s replaced by ``local`` (which carries the gradient)."""
        parts = self.cached[name]
        return torch.cat([*parts[:self.index], local, *parts[self.index + 1:]])

    def total(self, name: str) -> torch.Tensor:
        """The sum of the cached scalars of ``name`` over the step's micro-batches."""
        return torch.stack(self.cached[name]).sum()


def _grad_times(x: torch.Tensor, f: float) -> torch.Tensor:
    """``x`` with its gradient multiplied by ``f`` (the value is unchanged)."""
    return x.detach() + f * (x - x.detach())


def _value_times(x: torch.Tensor, f: float) -> torch.Tensor:
    """``f · x`` as a value, with the gradient of ``x`` unchanged."""
    return x + (f - 1.0) * x.detach()


class Objective(nn.Module):
    """One term: ``forward(out, micro=None) -> scalar`` (unweighted); :meth:`weight_at` gives its
    weight at a step; :meth:`summary` what the step's other micro-batches need of a micro-batch.

    After each forward, :attr:`targets` (a detached float scalar tensor; no host sync) holds how
    many targets the value is a loss over, counted like the value: over every rank and, under
    ``micro``, every micro-batch of the step. At 0 the value (0) is not a loss of anything: the
    training loop logs it as null, never as a perfect 0.0.

    ``term``: its :class:`~maskkit.terms.Term` (default: the registered term whose ``objective``
    names this class). A subclass whose constructor takes more than ``weight`` and ``gather`` overrides
    :meth:`build`, which reads them from the model."""

    term: Term

    #: whether the term is built (computed, logged, weighted 0) when its configured weight is 0:
    #: True for XLIP's terms, whose model parts (decoders, towers) must stay in DDP's static graph
    #: (docs/distributed.md); False (the default, a plugin's term) makes weight 0 mean "off"
    kept_at_zero: bool = False

    def __init__(self, weight: float, gather: Gatherer | None = None, *, term: Term | None = None) -> None:
        super().__init__()
        self.term = term or term_of(type(self))
        self.weight = float(weight)
        self.gather = gather or Gatherer.local()
        self.targets: torch.Tensor | None = None

    @classmethod
    def build(cls, term: Term, model, weight: float, gather: Gatherer | None = None) -> Objective | None:
        """This objective for ``model`` (an :class:`~maskkit.model.XLIP`), or None when the model
        lacks what it scores (e.g. no MIM decoder); the default: ``cls(weight, gather, term=term)``."""
        return cls(weight, gather, term=term)

    @property
    def name(self) -> str:
        return self.term.name

    def weight_at(self, in_warmup: bool) -> float:
        """The weight of this term at a step: 0 during the warm-up for terms that do not train in it."""
        return 0.0 if in_warmup and not self.term.warmup else self.weight

    def summary(self, out: XLIPOutput) -> torch.Tensor:
        """What this objective needs of a micro-batch to compute the loss of the whole step
        (detached; computed without gradient). Read back through :class:`MicroBatches`."""
        raise NotImplementedError



class AlignLoss(Objective):
    """Symmetric InfoNCE on L2-normalised pooled features of the paired rows of every rank.

    Logits are ``min(exp(logit_scale), max_logit_scale) · img @ txtᵀ`` (CLIP caps the scale at 100).
    Rows whose reports are identical (``out.text_key``) are not negatives of each other: a study's
    images share one report (MIMIC-CXR: about 1.7 images per report), so they are positives of
    the same caption, not contrasts (docs/assumptions.md, A26). Image-only rows take no part.

    Under DDP the features of all ranks are gathered with their gradient (one size exchange and one
    all-gather per call, always), and every rank computes the same global loss, as open_clip's
    ``ClipLoss(gather_with_grad=True, local_loss=False)``.

    Under accumulation (``micro``) the loss is over the pairs of every micro-batch: the cached rows
    with micro-batch ``micro.index``'s substituted by its rows with gradient (open_clip's
    ``--accum-freq``). Each micro-batch's forward then computes the whole loss, so its share is the
    loss's value divided by the micro-batch count with the gradient of its own rows, and the logit
    scale's gradient is divided by the count too (open_clip adds it once per micro-batch).
    """

    kept_at_zero = True

    def __init__(self, weight: float, gather: Gatherer | None = None, max_logit_scale: float = 100.0, *,
                 term: Term | None = None) -> None:
        super().__init__(weight, gather, term=term)
        self.max_logit_scale = float(max_logit_scale)

    @classmethod
    def build(cls, term: Term, model, weight: float, gather: Gatherer | None = None) -> AlignLoss:
        return cls(weight, gather, model.config.max_logit_scale, term=term)

    @staticmethod
    def rows(out: XLIPOutput) -> torch.Tensor:
        """``[B, 2C + 2]`` float64: image features, text features, paired, text key."""
        return torch.cat([out.image_features.double(), out.text_features.double(), out.paired.double()[:, None],
                          out.text_key.double()[:, None]], 1)

    def summary(self, out: XLIPOutput) -> torch.Tensor:
        return self.rows(out).detach()

    def forward(self, out: XLIPOutput, micro: MicroBatches | None = None) -> torch.Tensor:
        C = out.image_features.shape[1]
        local, log_scale = self.rows(out), out.logit_scale
        if micro is not None:
            local, log_scale = micro.substitute(self.name, local), _grad_times(log_scale, 1.0 / micro.n)
        g = self.gather.rows(local)  # [G, 2C + 2]
        img = F.normalize(g[:, :C].float(), dim=-1)
        txt = F.normalize(g[:, C:2 * C].float(), dim=-1)
        paired = g[:, 2 * C] > 0.5
        key = g[:, 2 * C + 1]
        scale = log_scale.float().exp().clamp(max=self.max_logit_scale)
        logits = scale * img @ txt.T  # [G, G]
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        allowed = paired[None, :] & (eye | (key[:, None] != key[None, :]))
        neg = torch.finfo(logits.dtype).min
        labels = torch.arange(logits.shape[0], device=logits.device)
        w = paired.float()
        n = w.sum().clamp_min(1.0)
        # a target: a paired row with at least one negative (one pair alone, or pairs that all hold
        # one report, leave nothing to contrast: the loss is 0 by construction, not a perfect score)
        self.targets = (paired & (allowed.sum(1) > 1)).sum().float().detach()
        i2t = F.cross_entropy(torch.where(paired[:, None], logits.masked_fill(~allowed, neg), 0.0), labels, reduction="none")
        t2i = F.cross_entropy(torch.where(paired[:, None], logits.T.masked_fill(~allowed, neg), 0.0), labels, reduction="none")
        loss = ((i2t * w).sum() + (t2i * w).sum()) / (2 * n)
        return loss if micro is None else _value_times(loss, 1.0 / micro.n)


class MIMLoss(Objective):
    """MSE on the masked patches (eq. 12), the mean over the masked patches of every rank.

    Per-patch normalised targets with ``norm_pix`` (MAE). One all-reduce of the masked-patch count
    per call, always. Rows without a mask (e.g. image-only rows when ``image_only_mask`` is null)
    contribute nothing. Under accumulation (``micro``) the count is that of every micro-batch of
    the step, so each micro-batch's share is its squared error over the step's masked patches.
    """

    kept_at_zero = True

    def __init__(self, weight: float, gather: Gatherer | None = None, norm_pix: bool = False, *,
                 term: Term | None = None) -> None:
        super().__init__(weight, gather, term=term)
        self.norm_pix = norm_pix

    @classmethod
    def build(cls, term: Term, model, weight: float, gather: Gatherer | None = None) -> MIMLoss | None:
        return None if model.decoder is None else cls(weight, gather, model.config.mim.norm_pix, term=term)

    def summary(self, out: XLIPOutput) -> torch.Tensor:
        return out.mim_mask.sum().float().detach()

    def forward(self, out: XLIPOutput, micro: MicroBatches | None = None) -> torch.Tensor:
        target = out.mim_target.float()
        if self.norm_pix:
            mean = target.mean(-1, keepdim=True)
            var = target.var(-1, keepdim=True, unbiased=False)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((out.mim_pred.float() - target) ** 2).mean(-1)  # [B, N]
        m = out.mim_mask.float()
        denom = self.gather.mean_denominator(m.sum() if micro is None else micro.total(self.name))
        self.targets = (denom * self.gather.info.world).detach()  # masked patches of every rank (and micro-batch)
        return (per_patch * m).sum() / denom.clamp_min(1.0)


class MLMLoss(Objective):
    """Cross-entropy of the selected report tokens (eq. 13), the mean over the targets of every rank.

    ``out.mlm_logits`` ``[K, V]`` and ``out.mlm_labels`` ``[K]`` hold only the target positions
    of this rank (``K`` may be 0: an all-image-only batch); one all-reduce of ``K`` per call, always.
    Under accumulation (``micro``) ``K`` is counted over every micro-batch of the step.
    """

    kept_at_zero = True

    @classmethod
    def build(cls, term: Term, model, weight: float, gather: Gatherer | None = None) -> MLMLoss | None:
        return None if model.text_decoder is None else cls(weight, gather, term=term)

    def summary(self, out: XLIPOutput) -> torch.Tensor:
        return torch.tensor(float(out.mlm_labels.shape[0]), device=out.mlm_logits.device)

    def forward(self, out: XLIPOutput, micro: MicroBatches | None = None) -> torch.Tensor:
        nll = F.cross_entropy(out.mlm_logits.float(), out.mlm_labels, reduction="sum")
        k = torch.tensor(float(out.mlm_labels.shape[0]), device=nll.device) if micro is None else micro.total(self.name)
        denom = self.gather.mean_denominator(k)
        self.targets = (denom * self.gather.info.world).detach()  # target tokens of every rank (and micro-batch)
        return nll / denom.clamp_min(1.0)


def term_of(cls: type) -> Term:
    """The registered term (:func:`maskkit.terms.all_terms`) whose ``objective`` names ``cls``."""
    path = f"{cls.__module__}:{cls.__qualname__}"
    for t in all_terms():
        if t.objective is cls or t.objective == path:
            return t
    raise LookupError(f"{path} is the objective of no registered term; pass term=")


class Objectives(nn.Module):
    """The objectives a model has, in :func:`~maskkit.terms.all_terms` order (XLIP's, then plugins').

    ``forward(out, in_warmup, micro=None) -> (total, values)``: ``total`` the weighted sum to
    back-propagate, ``values`` each term's unweighted scalar (for logs), keyed by term name; with
    ``micro`` (:class:`MicroBatches`) both are that micro-batch's shares, which sum over the step.
    """

    def __init__(self, objectives: list[Objective]) -> None:
        super().__init__()
        self.terms = nn.ModuleList(objectives)

    @classmethod
    def for_model(cls, model, weights, gather: Gatherer | None = None,
                  terms: tuple[Term, ...] | None = None) -> Objectives:
        """The objectives that ``model`` (an :class:`~maskkit.model.XLIP`) trains: one per term of
        ``terms`` (default :func:`maskkit.terms.all_terms`: :data:`~maskkit.terms.TERMS` and the
        plugins' terms) whose :meth:`Objective.build` gives one for this model, weighted by
        ``weights`` (an object with one float attribute per term name, e.g. ``cfg.objectives``;
        a term it does not name takes its ``default_weight``). A term weighted 0 is off (not built,
        not computed, not logged) unless its class sets :attr:`Objective.kept_at_zero`."""
        objs = []
        for t in (all_terms() if terms is None else terms):
            weight = float(getattr(weights, t.name, t.default_weight))
            kind = t.objective_class()
            if weight == 0 and not kind.kept_at_zero:
                continue  # off: not computed, not logged (a plugin's NaN at weight 0 cannot stop a run)
            if (o := kind.build(t, model, weight, gather)) is not None:
                objs.append(o)
        return cls(objs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.terms)

    @property
    def log_keys(self) -> dict[str, str]:
        """Each objective's log key (``metrics.jsonl``), keyed by term name."""
        return {o.name: o.term.log_key for o in self.terms}

    @property
    def targets(self) -> dict[str, torch.Tensor]:
        """Each term's :attr:`Objective.targets` of the last forward, keyed by term name: how many
        targets (alignment: paired rows with a negative; MIM: masked patches; MLM: target tokens)
        its value is over; 0 means the term had nothing to score (logged as null)."""
        return {o.name: o.targets for o in self.terms}

    def summaries(self, out: XLIPOutput, in_tune: bool = False) -> dict[str, torch.Tensor]:
        """Each objective's :meth:`Objective.summary` of a micro-batch, keyed by term name (in the
        unmasked tune, ``in_tune``, only those of the terms that train in it)."""
        return {o.name: o.summary(out) for o in self.terms if o.term.tune or not in_tune}

    def forward(self, out: XLIPOutput, in_warmup: bool = False, micro: MicroBatches | None = None,
                in_tune: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``in_tune``: a step of the unmasked tune (``train.unmasked_tune``); the terms that do not
        train in it (:attr:`maskkit.terms.Term.tune`: MIM, MLM) are 0 with no targets (logged
        null) and are not computed (the model's tune forward has no masks)."""
        values = {}
        for o in self.terms:
            if in_tune and not o.term.tune:
                o.targets = torch.zeros((), device=out.image_features.device)
                values[o.name] = torch.zeros((), device=out.image_features.device)
            else:
                values[o.name] = o(out, micro)
        total = sum(o.weight_at(in_warmup) * values[o.name] for o in self.terms)
        return total, values

