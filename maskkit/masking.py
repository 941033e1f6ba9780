"""The one mask-seed rule and the check a strategy's output gets where it is used.

Training, ``maskkit eval masks`` and ``maskkit visualize masks`` all draw masks through
:func:`mask_generator` with the seed of :func:`mask_seed`, so a figure of step ``s`` shows the
masks training drew at step ``s``.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import MaskkitError
from .roles import ROLE_BY_NAME, ROLE_NAMES

#: The strategy trees of an experiment (:data:`maskkit.roles.ROLES`): also the random streams of one step.
STREAMS: tuple[str, ...] = ROLE_NAMES
#: Random streams of a step that are not strategy trees: FLIP's patch dropout (``model.patch_dropout``).
EXTRA_STREAMS: tuple[str, ...] = ("patch_dropout",)


class MaskOutputError(MaskkitError):
    """A strategy returned a mask of the wrong dtype or shape."""


def mask_seed(train_seed: int, step: int, micro: int = 0) -> int:
    """The seed of the masks of optimiser step ``step`` (0-based), micro-batch ``micro``.

    Derived with NumPy's ``SeedSequence`` (entropy ``train_seed``, spawn key ``(step, micro)``),
    so seeds of different steps, micro-batches and runs do not collide. Returns an int < 2**63.
    """
    ss = np.random.SeedSequence(train_seed % 2**63, spawn_key=(int(step), int(micro)))
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))


@torch.compiler.disable
def mask_generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """The ``torch.Generator`` of one stream (:data:`STREAMS` or :data:`EXTRA_STREAMS`) for a step's
    ``seed``, on ``device``. Never traced by ``torch.compile`` (``train.compile``): dynamo cannot
    trace ``Generator.manual_seed``, and a generator is host-side state anyway."""
    streams = STREAMS + EXTRA_STREAMS
    if stream not in streams:
        raise ValueError(f"unknown mask stream '{stream}'; expected one of {', '.join(streams)}")
    ss = np.random.SeedSequence(seed % 2**63, spawn_key=(streams.index(stream),))
    return torch.Generator(device=device).manual_seed(int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1)))


def check_mask(mask, strategy, shape: tuple[int, ...], where: str) -> torch.Tensor:
    """``mask`` if it is a bool tensor of ``shape``; else :class:`MaskOutputError` naming the
    strategy and the tree it came from. Reads only metadata: no host sync."""
    name = getattr(strategy, "name", type(strategy).__name__)
    want = f"torch.bool {list(shape)}"
    if not isinstance(mask, torch.Tensor):
        raise MaskOutputError(f"{where}: strategy '{name}' returned {type(mask).__name__}; expected a {want} tensor")
    if mask.dtype != torch.bool:
        raise MaskOutputError(f"{where}: strategy '{name}' returned a {mask.dtype} mask; expected {want} (True = masked)")
    if tuple(mask.shape) != tuple(shape):
        raise MaskOutputError(f"{where}: strategy '{name}' returned shape {list(mask.shape)}; expected {want}")
    return mask


def role_context(role: str, generator: torch.Generator | None = None, **inputs) -> "MaskContext":
    """The :class:`~maskkit.core.MaskContext` of strategy tree ``role``: of ``inputs`` (MaskContext
    fields), those the role's rows carry (:attr:`maskkit.roles.Role.inputs`: an image-only row
    has no report), the others left ``None``. :meth:`maskkit.model.XLIP.mask_contexts` (training,
    ``visualize``) and ``eval masks`` build their contexts here."""
    from .core import MaskContext

    return MaskContext(**{k: inputs.get(k) for k in ROLE_BY_NAME[role].inputs}, generator=generator)
