"""Checkpoints: what one holds, writing it atomically, reading it back, RNG state, which
checkpoint a run directory or ``runtime.resume`` names, and loading a trained model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from ..config import ExperimentConfig
from ..errors import MaskkitError, TrainingError, first_sentence
from ..io import atomic_open

# keys that may differ between a checkpoint and the run resuming from it
RESUMABLE_DIFFERENCES = ("runtime.", "train.steps", "train.log_every", "train.ckpt_every", "train.keep_last",
                         "data.num_workers", "data.pin_memory", "data.prefetch_factor")


def rng_state() -> dict:
    np_state = np.random.get_state()
    py = random.getstate()
    state = {"torch": torch.get_rng_state(), "python": [int(x) for x in py[1]], "python_gauss": py[2],
             "numpy": [int(x) for x in np_state[1]] + [int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(int(x) for x in state["python"]), state["python_gauss"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", np.array(n[:624], dtype=np.uint32), int(n[624]), int(n[625]), float(n[626])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def nonfinite_entries(state: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors of a state dict that hold a NaN or ±inf (one fused
    max-abs pass and one host sync; names are looked up only when one is found)."""
    items = [(k, v) for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel()]
    if not items:
        return []
    peaks = torch.stack([n.float() for n in torch._foreach_norm([v for _, v in items], float("inf"))])
    if bool(torch.isfinite(peaks).all()):
        return []
    return [k for (k, _), ok in zip(items, torch.isfinite(peaks).tolist()) if not ok]


def save_checkpoint(path: Path, payload: dict) -> None:
    """``torch.save`` streamed through :func:`maskkit.io.atomic_open`: a reader (a resume, ``keep_last``)
    sees the previous checkpoint or this whole one, and no second copy is held in memory (a
    ViT-B/16 XLIP checkpoint with AdamW's moments is about 2 GB)."""
    with atomic_open(path) as f:
        torch.save(payload, f)


def load_checkpoint(path: Path, key: str | None = "runtime.resume") -> dict:
    """A checkpoint's contents (``weights_only``). Errors are one line, prefixed with ``key`` (the
    setting that named the file; None for a command's argument): a missing file, a file that is no
    ``torch.save`` archive (a CSV given where a run goes), an unreadable one, non-finite weights."""
    at = f"{key}: " if key else ""
    if not path.is_file():
        raise TrainingError(f"{at}checkpoint {path} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise TrainingError(f"{at}{path}: cannot read ({exc.strerror or exc})") from None
    if head[:2] != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (a pickle before torch 1.6)
        text = head and all(32 <= b < 127 or b in (9, 10, 13) for b in head)
        raise TrainingError(f"{at}{path} is not a readable maskkit checkpoint: not a torch.save file"
                            f"{' (it starts as text: a CSV or a report?)' if text else ''}; give a run directory "
                            "or one of its checkpoints/step_*.pt")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        from ..errors import weights_only_line, weights_only_refusal

        why = weights_only_refusal(exc)
        if why:
            raise TrainingError(f"{at}{weights_only_line(path, 'maskkit checkpoint', why)}") from None
        raise TrainingError(f"{at}{path} is not a readable maskkit checkpoint ({type(exc).__name__}: "
                            f"{first_sentence(str(exc))}){_earlier_hint(path, key)}") from None
    bad = nonfinite_entries(ck["model"]) if isinstance(ck, dict) and isinstance(ck.get("model"), dict) else []
    if bad:  # written before maskkit refused to save such weights
        raise TrainingError(f"{path}: the model's weights are not finite ({', '.join(bad[:3])}"
                            + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") + ")" + (_earlier_hint(path, key) or "; use an earlier checkpoint"))
    return ck


def _earlier_hint(path: Path, key: str | None) -> str:
    """For a checkpoint that cannot be used (cut short by a copy or a disk fault, non-finite): the
    earlier ones of its run to continue from instead (``runtime.resume=auto`` would pick the same
    file at every requeue). Empty when there are none."""
    earlier = [p for p in sorted(path.parent.glob("step_*.pt")) if p.name < path.name] if path.name.startswith("step_") else []
    if not earlier:
        return ""
    use = f"continue from an earlier checkpoint with {key}={earlier[-1]}" if key else f"give an earlier checkpoint, {earlier[-1]}"
    return (f"; {use}"
            + (f" (others before it: {', '.join(p.name for p in earlier[-3:-1])})" if len(earlier) > 1 else "")
            + f", or move {path.name} out of the folder")


def config_differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if not k.startswith(RESUMABLE_DIFFERENCES) and saved.get(k) != current.get(k)]


class Shown(str):
    """A value :func:`entry_differences` has already written out (``(unset)``, ``2 entries``)."""

    __slots__ = ()


_MISSING = object()


def _missing(v):
    return Shown("(unset)") if v is _MISSING else v


def entry_differences(key: str, saved, current) -> list[tuple[str, object, object]]:
    """A differing config key whose values are lists of mappings (``data.sources``) broken down to
    the entries and keys that differ: ``[("data.sources[0].weight", 1.0, 0.5)]``; a list whose
    length changed is the key itself with both lengths; any other value is ``[(key, saved,
    current)]``. An entry key set on one side only reads ``(unset)`` on the other (values already
    written out are :class:`Shown`)."""
    def entries(v):
        return isinstance(v, list) and all(isinstance(e, dict) for e in v)

    if not (entries(saved) and entries(current)):
        return [(key, saved, current)]
    if len(saved) != len(current):
        return [(key, Shown(f"{len(saved)} entries"), Shown(f"{len(current)} entries"))]
    out = []
    for i, (a, b) in enumerate(zip(saved, current)):
        for k in sorted(set(a) | set(b), key=lambda k: (k != "name", str(k))):
            va, vb = a.get(k, _MISSING), b.get(k, _MISSING)
            if va != vb:
                out.append((f"{key}[{i}].{k}", _missing(va), _missing(vb)))
    return out


def remove_partial_checkpoints(run_dir: str | Path) -> list[Path]:
    """Remove the temporary files of checkpoints whose writing never finished
    (``checkpoints/.step_<step>.pt.<random>.tmp``, :func:`maskkit.io.atomic_open`): a process killed
    inside ``torch.save`` (SIGKILL after a grace period, the out-of-memory killer, a lost node) cannot
    remove its own. Call it only while holding the run directory's lock (no other writer). Returns the
    removed paths; a checkpoint file itself is never touched."""
    gone = []
    for tmp in sorted((Path(run_dir) / "checkpoints").glob(".step_*.pt.*.tmp")):
        tmp.unlink(missing_ok=True)
        gone.append(tmp)
    return gone


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """A run directory's checkpoint files, oldest first (``checkpoints/step_<8-digit step>.pt``)."""
    return sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a run directory (its latest) or a checkpoint path names; one-line errors."""
    p = Path(path)
    if p.is_dir():
        cks = run_checkpoints(p)
        if not cks:
            raise MaskkitError(f"{p}: no checkpoint in {p / 'checkpoints'}; is it a maskkit run directory?")
        p = cks[-1]
    if not p.is_file():
        raise MaskkitError(f"checkpoint {p} does not exist")
    return p


def find_resume(cfg: ExperimentConfig, out: Path) -> Path | None:
    """The checkpoint ``runtime.resume`` names in the run directory ``out``: ``latest`` its newest
    (none is an error), ``auto`` its newest or None (start at step 0 in ``out``), else the path."""
    r = cfg.runtime.resume
    if r is None:
        return None
    if r in ("latest", "auto"):
        cks = run_checkpoints(out)
        if not cks and r == "auto":
            return None
        if not cks:
            raise TrainingError(f"runtime.resume=latest: no checkpoint in {out / 'checkpoints'}; runtime.resume=auto "
                                f"continues the newest one or, when there is none, starts again at step 0 in {out}")
        return cks[-1]
    return Path(r)


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(XLIP model in eval mode, its ExperimentConfig) from a run directory (latest checkpoint)
    or a checkpoint file; loaded with ``weights_only``. The run's ``model.pretrained`` is not
    read again: the checkpoint holds every weight, and its ``model_build``
    (:meth:`~maskkit.model.XLIP.build_record`: the open_clip model config, an HF text tower's
    config and tokenizer) the architecture; for older checkpoints an open_clip folder there still
    supplies the architecture (its ``open_clip_config.json``)."""
    from ..model import XLIP
    from ..roles import ROLE_NAMES

    p = checkpoint_file(path)
    ck = load_checkpoint(p, key=None)
    if "config" not in ck or "model" not in ck:
        raise MaskkitError(f"{p}: not a maskkit training checkpoint (no config / model state)")
    saved = json.loads(ck["config"])
    for t in ROLE_NAMES:  # checkpoints before the trees moved out of model.
        if saved.get("model", {}).get(t) is None:
            saved.get("model", {}).pop(t, None)
    from ..config import migrate_saved

    cfg = ExperimentConfig.model_validate(migrate_saved(saved), context={"saved": True})
    if isinstance(ck.get("model_build"), dict):  # the towers as built (model.pretrained's folder may be gone)
        import tempfile

        from ..model.xlip import write_record

        with tempfile.TemporaryDirectory(prefix="maskkit-arch-") as d:
            write_record(ck["model_build"], d)
            model = XLIP.from_experiment(cfg, weights=False, arch_folder=d)
    else:  # checkpoints before model_build: model.pretrained's open_clip folder gives the architecture
        model = XLIP.from_experiment(cfg, weights=False)  # the checkpoint holds every weight: model.pretrained is not read
    model.load_state_dict(ck["model"])
    return model.to(device).eval(), cfg
