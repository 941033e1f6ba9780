"""The optimiser, its parameter groups, the learning-rate schedule, and the checks of a step."""

from __future__ import annotations

import math

import torch


def lr_factor(step: int, cfg) -> float:
    """The learning rate at 0-based ``step`` as a fraction of ``train.lr``: a linear warm-up over
    ``train.lr_warmup_steps``, then ``train.schedule`` (cosine to 0 or constant) up to the unmasked
    tune (``train.tune_start``; the run's end without one); the tune's ``train.tune_steps`` then run
    their own schedule from ``train.unmasked_tune_lr`` (cosine to 0, or constant), as FLIP's and
    CLIPA's last phase is a short run of its own (A64)."""
    t = cfg.train
    if t.tune_steps and step >= t.tune_start:
        if t.schedule == "constant":
            return t.unmasked_tune_lr
        return t.unmasked_tune_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - t.tune_start) / t.tune_steps)))
    if t.lr_warmup_steps and step < t.lr_warmup_steps:
        return (step + 1) / t.lr_warmup_steps
    if t.schedule == "constant":
        return 1.0
    span = max(1, t.tune_start - t.lr_warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - t.lr_warmup_steps) / span)))


def schedule_warnings(cfg, objectives) -> list[str]:
    """One line per warm-up that ``train.steps`` cuts short (each a warning, not an error: a short
    test run of a long config is legitimate; A48): ``train.lr_warmup_steps`` above ``train.steps``
    (:func:`lr_factor` rises to ``steps / lr_warmup_steps`` of ``train.lr`` and never reaches it),
    and ``train.warmup_steps`` at or above ``train.steps`` while the model trains a warm-up term
    (the run ends in the masked-modelling-only phase: the weighted terms that wait for it never
    train), and an unmasked tune (``train.unmasked_tune``) that starts inside that warm-up.
    ``objectives``: the recipe's objectives (each with ``term`` and ``weight``)."""
    t, out = cfg.train, []
    if t.lr_warmup_steps > t.steps:
        out.append(f"train.lr_warmup_steps={t.lr_warmup_steps} is more than train.steps={t.steps}: the learning rate rises "
                   f"to {t.steps}/{t.lr_warmup_steps} of train.lr={t.lr:g} and never reaches it (set train.lr_warmup_steps "
                   f"to at most train.steps)")
    waiting = [o.name for o in objectives if not o.term.warmup and o.weight > 0]
    if t.warmup_steps >= t.steps and waiting and any(o.term.warmup for o in objectives):
        out.append(f"train.warmup_steps={t.warmup_steps} is not below train.steps={t.steps}: the run ends in the "
                   f"masked-modelling-only warm-up, so {', '.join('objectives.' + n for n in waiting)} never "
                   f"train{'s' if len(waiting) == 1 else ''} (set train.warmup_steps below train.steps)")
    tune = t.tune_steps
    if tune and t.warmup_steps > t.tune_start and any(o.term.warmup and o.weight > 0 for o in objectives):
        out.append(f"train.unmasked_tune={t.unmasked_tune:g} makes the last {tune} of train.steps={t.steps} an unmasked tune, "
                   f"from step {t.tune_start + 1}, inside the masked-modelling-only warm-up (train.warmup_steps={t.warmup_steps}): "
                   f"the tune takes those steps (set train.warmup_steps to at most {t.tune_start}, or train.unmasked_tune=0)")
    return out


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; gains, biases, embeddings of one vector and the logit scale
    are not decayed (open_clip's rule), so a term that is off in a phase leaves them unchanged."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, cfg, device_type: str):
    """(optimiser, LambdaLR scheduler, GradScaler, autocast dtype or None) for ``cfg.train``."""
    t = cfg.train
    groups = param_groups(model, t.weight_decay)
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    else:
        opt = torch.optim.AdamW(groups, lr=t.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    scaler = torch.amp.GradScaler(device_type, enabled=t.precision == "fp16")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(t.precision)
    return opt, sched, scaler, autocast_dtype


def grad_norm(model: torch.nn.Module) -> torch.Tensor:
    """The L2 norm of all gradients of ``model`` (a 0-d float32 tensor, on their device; 0 without
    any), in one fused pass (``torch.nn.utils.get_total_norm``, what ``clip_grad_norm_`` computes).
    It is finite exactly when every gradient element is finite and the norm does not overflow
    float32 (about 3e38); no host sync."""
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def snapshot_buffers(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A copy of every buffer of ``model`` (BatchNorm running statistics and batch counts, and any
    other state a forward may update in place), for :func:`restore_buffers`. Buffers of maskkit's
    models are small (under 1 MB at ViT-B/16); the copies stay on their device (no host sync)."""
    return [(b, b.detach().clone()) for b in model.buffers()]


def finite_buffers(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The floating-point buffers of ``model`` that are finite now, by name: those a step must
    keep finite (:func:`buffers_nonfinite`). A buffer that already holds ±inf is a constant by
    design (open_clip's causal ``attn_mask`` of -inf) and is not checked. One host sync."""
    named = [(k, b) for k, b in model.named_buffers() if b.is_floating_point() and b.numel()]
    if not named:
        return []
    peaks = torch.stack([n.float() for n in torch._foreach_norm([b for _, b in named], float("inf"))])
    return [kb for kb, ok in zip(named, torch.isfinite(peaks).tolist()) if ok]


@torch.no_grad()
def buffers_nonfinite(buffers: list[tuple[str, torch.Tensor]], device=None) -> torch.Tensor:
    """1.0 when one of ``buffers`` (:func:`finite_buffers`) holds a NaN or ±inf (a BatchNorm
    running variance that overflowed), else 0.0: a 0-d float32 tensor, from one fused max-abs pass
    (no host sync; the step's all-reduce carries it)."""
    if not buffers:
        return torch.zeros((), device=device)
    peaks = torch.stack([n.float() for n in torch._foreach_norm([b for _, b in buffers], float("inf"))])
    return (~torch.isfinite(peaks)).any().float()


@torch.no_grad()
def restore_buffers(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Put buffers back to a :func:`snapshot_buffers` copy, in place (so DDP and the optimiser
    keep referring to the same tensors)."""
    for b, v in saved:
        b.copy_(v)
