"""Reading the local weight layouts users hold, for ``model.pretrained`` (never downloading).

A ``model.pretrained`` path is one of:

- **an open_clip HF-hub folder** (what ``open_clip.push_to_hf_hub`` uploads and BiomedCLIP ships;
  ``open_clip.create_model('local-dir:DIR')`` reads it): ``open_clip_config.json`` holding
  ``model_cfg`` (the architecture: ``embed_dim``, ``vision_cfg``, ``text_cfg``) and
  ``preprocess_cfg`` (``mean``, ``std``, ``size``, ...), and the weights
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin`` (the file open_clip's own
  ``_find_checkpoint_in_dir`` picks). The towers are built from ``model_cfg`` — the folder is the
  architecture, as for open_clip's ``local-dir:`` — and ``model.arch`` is not used then
  (:func:`architecture`; docs/assumptions.md A54). A ``model_cfg`` whose image tower is
  open_clip's timm tower (``vision_cfg.timm_model_name``, BiomedCLIP's) is built as the open_clip
  ViT that computes the same (:func:`timm_vision_cfg`) and its ``visual.trunk.*`` /
  ``visual.head.proj.weight`` tensors converted (:func:`timm_tower_to_open_clip`).
- **a timm ViT** image tower: a state dict or ``.safetensors`` file with timm's
  ``VisionTransformer`` keys (``patch_embed.proj.weight``, ``cls_token``, ``pos_embed``,
  ``blocks.N.attn.qkv.weight``, ...), or timm's HF-hub folder (``config.json`` naming a ``vit_*``
  ``architecture``, ``model.safetensors`` or ``pytorch_model.bin``). Its tensors become the
  open_clip image tower's (:func:`timm_vit_to_open_clip`); the text tower keeps its initialisation.
- the files :func:`maskkit.model.towers.read_state_dict` reads: OpenAI TorchScript archives,
  open_clip ``.pt``/``.pth``/``.bin``/``.safetensors``, wrapped or prefixed.

Anything else is refused in one line naming the file and what was expected: a folder without a
config, a Hugging Face transformers (text model) folder, a truncated file, a state dict of another
model (a BERT, ...).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import MaskkitError

#: open_clip's HF-hub layout (open_clip/constants.py HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)
HUB_CONFIG = "open_clip_config.json"
HUB_SAFE_WEIGHTS = "open_clip_model.safetensors"
HUB_WEIGHTS = "open_clip_pytorch_model.bin"
#: timm's and transformers' HF-hub layout
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
#: the ``preprocess_cfg`` keys open_clip reads (open_clip.transform.PreprocessCfg)
PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")

_WHAT_HUB = (f"an open_clip folder ({HUB_CONFIG} with model_cfg, and {HUB_SAFE_WEIGHTS} or {HUB_WEIGHTS}), "
             f"a timm ViT folder ({HF_CONFIG} naming a vit_* architecture, and {' or '.join(HF_WEIGHTS)}) or a weights file")


def _pre(p: Path) -> str:
    return f"model.pretrained: {p}"


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise MaskkitError(f"model.pretrained: cannot read {path} ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MaskkitError(f"model.pretrained: {path} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise MaskkitError(f"model.pretrained: {path} holds a JSON {type(doc).__name__}; expected an object")
    return doc


@dataclass(frozen=True)
class HubFolder:
    """An open_clip HF-hub folder: its ``model_cfg``, ``preprocess_cfg`` and weights file."""

    path: Path
    model_cfg: dict = field(hash=False)
    preprocess_cfg: dict = field(hash=False)
    weights: Path

    @property
    def arch(self) -> str:
        """The name :func:`register` gives ``model_cfg`` in open_clip's registry: the folder's name
        and a hash of its path and config (no ``/``, which open_clip's lookup rewrites)."""
        tag = hashlib.sha1(f"{self.path}\0{json.dumps(self.model_cfg, sort_keys=True)}".encode()).hexdigest()[:8]
        return f"folder-{re.sub(r'[^A-Za-z0-9_.-]+', '-', self.path.name)}-{tag}"

    def register(self) -> str:
        """Add ``model_cfg`` to open_clip's model registry under :attr:`arch` (idempotent); returns it."""
        from copy import deepcopy

        from open_clip import factory

        factory._MODEL_CONFIGS[self.arch] = deepcopy(self.model_cfg)  # open_clip's own registry (add_model_config's)
        _ARCH_FILES[self.arch] = self.path / HUB_CONFIG
        return self.arch


#: :attr:`HubFolder.arch` (an internal registry name) -> the ``open_clip_config.json`` it came from
_ARCH_FILES: dict[str, Path] = {}


def arch_file(arch) -> Path | None:
    """The ``open_clip_config.json`` whose ``model_cfg`` was registered as ``arch`` (:meth:`HubFolder.register`), else None."""
    return _ARCH_FILES.get(arch) if isinstance(arch, str) else None


def arch_where(arch, name: str | None = None) -> str:
    """How a message names the architecture ``arch``: ``model.arch: 'ViT-B-16'``, or, for an
    open_clip folder's ``model_cfg`` (registered under an internal name), the file the user gave:
    ``model.pretrained: /path/open_clip_config.json (model_cfg)``."""
    f = arch_file(arch)
    return f"model.pretrained: {f} (model_cfg)" if f is not None else f"model.arch: '{name or arch}'"


def hub_folder(path: str | Path, weights: bool = True) -> HubFolder:
    """The open_clip HF-hub folder at ``path``; one-line :class:`MaskkitError` naming the file and
    what was expected when its config is missing or malformed or (``weights``) it holds no weights
    file. ``weights=False`` reads the config alone (``HubFolder.weights`` may then not exist)."""
    p = Path(path).expanduser()
    cfg_file = p / HUB_CONFIG
    if not cfg_file.is_file():
        raise MaskkitError(f"{_pre(p)}: no {HUB_CONFIG} in this folder; expected {_WHAT_HUB}")
    doc = _read_json(cfg_file)
    mc = doc.get("model_cfg")
    if not isinstance(mc, dict):
        raise MaskkitError(f"model.pretrained: {cfg_file} has no 'model_cfg' object (keys: {', '.join(doc) or 'none'}); "
                           f"expected open_clip's HF-hub config {{'model_cfg': {{embed_dim, vision_cfg, text_cfg}}, 'preprocess_cfg': ...}}")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in mc]
    if missing:
        raise MaskkitError(f"model.pretrained: {cfg_file}: model_cfg lacks {', '.join(missing)}; expected an open_clip "
                           f"model config (embed_dim, vision_cfg, text_cfg)")
    pp = doc.get("preprocess_cfg", {})
    if not isinstance(pp, dict):
        raise MaskkitError(f"model.pretrained: {cfg_file}: preprocess_cfg is a {type(pp).__name__}; expected an object")
    found = _weights_file(p)
    if found is None and not weights:
        found = p / HUB_SAFE_WEIGHTS
    if found is None:
        raise MaskkitError(f"{_pre(p)}: {HUB_CONFIG} but no weights file; expected {HUB_SAFE_WEIGHTS} or {HUB_WEIGHTS} "
                           f"beside it")
    return HubFolder(p.resolve(), mc, {k: pp[k] for k in PREPROCESS_KEYS if k in pp}, found)


#: the weights files of an open_clip folder, in the order open_clip's ``_find_checkpoint_in_dir`` prefers
_HUB_ORDER = (HUB_SAFE_WEIGHTS, "open_clip_pytorch_model.safetensors", HUB_WEIGHTS, "open_clip_pytorch_model.pth",
              "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


def _weights_file(p: Path) -> Path | None:
    """The weights file open_clip's ``create_model('local-dir:...')`` loads from folder ``p``."""
    try:
        from open_clip.factory import _find_checkpoint_in_dir
    except ImportError:  # an open_clip before local-dir: support: its documented order
        return next((p / n for n in _HUB_ORDER if (p / n).is_file()), None)
    found = _find_checkpoint_in_dir(p)
    return Path(found) if found else None


def _hf_folder(p: Path) -> tuple[Path, str] | None:
    """(weights file, format) of a timm ViT HF-hub folder; None when ``p`` has no ``config.json``.
    A transformers folder (``model_type``: a text model such as BERT) is refused in one line."""
    cfg_file = p / HF_CONFIG
    if not cfg_file.is_file():
        return None
    doc = _read_json(cfg_file)
    arch = doc.get("architecture")
    if isinstance(arch, str):
        if not arch.startswith(("vit_", "vit-")):
            raise MaskkitError(f"model.pretrained: {cfg_file} names timm architecture '{arch}', not a ViT; maskkit's image "
                               f"tower is a ViT (a vit_* timm model)")
        w = next((p / n for n in HF_WEIGHTS if (p / n).is_file()), None)
        if w is None:
            raise MaskkitError(f"{_pre(p)}: timm folder without weights; expected {' or '.join(HF_WEIGHTS)} beside {HF_CONFIG}")
        return w, f"timm folder ({arch})"
    kind = doc.get("model_type") or ", ".join(doc.get("architectures", []) or []) or "unknown"
    raise MaskkitError(f"{_pre(p)}: a Hugging Face transformers folder ({HF_CONFIG}: model_type '{kind}'), not an image "
                       f"tower nor a CLIP; expected {_WHAT_HUB}")


def is_hub_folder(path: str | Path | None) -> bool:
    """Whether ``path`` is a folder holding ``open_clip_config.json`` (nothing is validated)."""
    return path is not None and (Path(path).expanduser() / HUB_CONFIG).is_file()


def architecture(arch: str, pretrained: str | None) -> tuple[str, HubFolder | None]:
    """The open_clip architecture name to build: ``arch`` (``model.arch``), or, when ``pretrained``
    is a folder, the folder's: an open_clip folder's ``model_cfg`` registered under
    :attr:`HubFolder.arch` (its weights file is not needed). A folder of another kind is refused in
    one line (:func:`read_weights`'s messages)."""
    if pretrained is None:
        return arch, None
    p = Path(pretrained).expanduser()
    if not p.is_dir():
        return arch, None
    if not (p / HUB_CONFIG).is_file():
        if _hf_folder(p) is None:  # raises for a transformers / non-ViT timm folder
            raise MaskkitError(f"{_pre(p)}: no {HUB_CONFIG} (nor {HF_CONFIG}) in this folder; expected {_WHAT_HUB}")
        return arch, None
    hub = hub_folder(p, weights=False)  # the architecture only: a run's checkpoint may replace the weights
    return hub.register(), hub


def hub_notes(hub: HubFolder, cfg) -> str:
    """What the load report adds for an open_clip folder: where the architecture came from."""
    return f"; architecture: {hub.path / HUB_CONFIG} model_cfg (model.arch={cfg.arch} not used)"


def _same(a, b) -> bool:
    return [round(float(x), 6) for x in a] == [round(float(x), 6) for x in b]


def preprocessing(cfg, hub: HubFolder | None, image_size: int) -> tuple[tuple, tuple, str]:
    """(mean, std, notes for the load report) of the images the model normalises
    (docs/assumptions.md A62). ``cfg`` is the :class:`~maskkit.model.ModelConfig`, ``hub`` the
    open_clip folder of ``model.pretrained`` (or None), ``image_size`` the tower's.

    Each of ``model.image_mean`` / ``image_std`` is the user's when set; when null, the folder's
    ``preprocess_cfg`` value (the weights' own preprocessing, as open_clip's ``local-dir:``
    applies it), else OpenAI CLIP's. A set value that differs from the folder's is kept and
    named in the notes; so are a folder ``size`` other than the tower's image size and a resize
    other than maskkit's (whole image, bilinear: A56). One rule for both (open_clip's: its
    ``Normalize`` broadcasts one value): 3 numbers or 1 for every channel, each > 0 for std;
    one-line :class:`MaskkitError` otherwise.
    """
    from .towers import OPENAI_MEAN, OPENAI_STD

    pp = hub.preprocess_cfg if hub is not None else {}
    out, notes = {}, ""
    for key, mine, default in (("mean", cfg.image_mean, OPENAI_MEAN), ("std", cfg.image_std, OPENAI_STD)):
        theirs = pp.get(key)
        if theirs is not None:
            vals = [theirs] if isinstance(theirs, (int, float)) else theirs
            ok = isinstance(vals, list) and len(vals) in (1, 3) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
            if not ok or (key == "std" and min(vals) <= 0):
                raise MaskkitError(f"model.pretrained: {hub.path / HUB_CONFIG}: preprocess_cfg.{key} is {theirs!r}; expected "
                                   f"3 numbers (one per channel) or 1 (for every channel){', each > 0' if key == 'std' else ''}")
            theirs = tuple(float(v) for v in vals) * (3 if len(vals) == 1 else 1)
        if mine is not None:
            out[key] = tuple(mine)
            if theirs is not None and not _same(theirs, mine):
                notes += f"; note: its preprocess_cfg {key} {list(theirs)} differs from model.image_{key} {list(mine)}, which is used"
        elif theirs is not None:
            out[key] = theirs
            one = ", its one value for every channel" if len(vals) == 1 else ""
            notes += f"; image {key} {list(theirs)}: its preprocess_cfg's (model.image_{key} is null{one})"
        else:
            out[key] = tuple(default)
    size = pp.get("size")
    if size is not None and size not in (image_size, [image_size, image_size]):
        notes += f"; note: its preprocess_cfg size {size} is not the image tower's {image_size} px, which is used (data.image_size)"
    resize = {k: pp[k] for k in ("resize_mode", "interpolation") if k in pp and pp[k] not in ("squash", "bilinear")}
    if resize:
        notes += (f"; note: its preprocess_cfg {', '.join(f'{k} {v}' for k, v in resize.items())}: maskkit resizes whole "
                  f"images bilinearly (docs/assumptions.md A56)")
    return out["mean"], out["std"], notes


# --- timm ViT -> open_clip image tower ----------------------------------------------------------------

#: timm VisionTransformer key (regex) -> open_clip VisionTransformer key (under ``visual.``), the
#: inverse of timm's own ``vision_transformer._convert_openai_clip``
_TIMM_KEYS = (
    (r"patch_embed\.proj\.weight", "conv1.weight"),
    (r"norm_pre\.(weight|bias)", r"ln_pre.\1"),
    (r"norm\.(weight|bias)", r"ln_post.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"transformer.resblocks.\1.ln_1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"transformer.resblocks.\1.ln_2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"transformer.resblocks.\1.attn.in_proj_\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"transformer.resblocks.\1.attn.out_proj.\2"),
    (r"blocks\.(\d+)\.mlp\.fc1\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_fc.\2"),
    (r"blocks\.(\d+)\.mlp\.fc2\.(weight|bias)", r"transformer.resblocks.\1.mlp.c_proj.\2"),
    (r"blocks\.(\d+)\.ls([12])\.gamma", r"transformer.resblocks.\1.ls_\2.gamma"),
)
_TIMM_MARKERS = ("patch_embed.proj.weight", "cls_token", "pos_embed")


def is_timm_vit(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` has timm VisionTransformer keys (patch embedding, class token, positions)."""
    return all(k in state for k in _TIMM_MARKERS)


#: why a timm ViT is refused: what maskkit's image tower (open_clip's ViT) computes
_NOT_EXACT = ("which maskkit's open_clip ViT cannot compute exactly; expected a plain timm VisionTransformer "
              "(class token, LayerNorm, GELU MLP)")


def timm_prefix_tokens(state: dict[str, torch.Tensor]) -> str | None:
    """What in a timm ViT state dict (keys as :func:`is_timm_vit`'s) open_clip's ViT cannot hold:
    register tokens (``reg_token [1, R, W]``, timm's ``reg_tokens=R``) or positions without the
    class token (``no_embed_class=True``: ``pos_embed [1, N, W]`` for a square grid of ``N``
    patches, where open_clip's ``positional_embedding`` has ``1 + N``); None for a plain ViT."""
    import math

    found = []
    reg = state.get("reg_token")
    if reg is not None:
        found.append(f"{reg.shape[-2] if reg.ndim >= 2 else '?'} register tokens ('reg_token' {tuple(reg.shape)})")
    pos = state.get("pos_embed")
    if pos is not None and reg is None and pos.ndim >= 2:
        n = int(pos.shape[-2])
        if math.isqrt(n) ** 2 == n and math.isqrt(n - 1) ** 2 != n - 1:
            found.append(f"positions without the class token ('pos_embed' {tuple(pos.shape)}: {math.isqrt(n)}x"
                         f"{math.isqrt(n)} patches, no_embed_class)")
    return " and ".join(found) or None


def timm_vit_to_open_clip(state: dict[str, torch.Tensor], embed_dim: int | None = None,
                          origin: dict[str, str] | None = None,
                          where: str = "model.pretrained") -> tuple[dict[str, torch.Tensor], list[str]]:
    """A timm ``VisionTransformer`` state dict as open_clip image-tower tensors (keys ``visual.*``),
    and notes on what was adapted.

    ``cls_token [1, 1, W]`` -> ``class_embedding [W]``; ``pos_embed [1, 1+N, W]`` ->
    ``positional_embedding [1+N, W]``; blocks, norms and the patch convolution by name
    (:data:`_TIMM_KEYS`). A patch-embedding bias (plain ViTs have one, CLIP-style ones do not) is
    added to the positional embedding of every patch token, which computes the same. A head of
    shape ``[embed_dim, W]`` with no or an all-zero bias (timm's CLIP towers) becomes ``proj``; any other head
    (an ImageNet classifier) and ``fc_norm`` are left out. Keys that match nothing are kept as they
    are (``visual.`` + key), so the loader reports them as unexpected. ``origin``, when given, is
    filled with each output key's input key (for messages naming the key as it is in the file).
    Register tokens and positions without the class token (:func:`timm_prefix_tokens`) are
    refused in one line opened by ``where`` (:class:`MaskkitError`).
    """
    extra = timm_prefix_tokens(state)
    if extra:
        raise MaskkitError(f"{where}: the timm ViT has {extra}, {_NOT_EXACT}")
    out: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    origin = {} if origin is None else origin
    for k, v in state.items():
        if k == "cls_token":
            new = "visual.class_embedding"
            out[new] = v.reshape(-1)
        elif k == "pos_embed":
            new = "visual.positional_embedding"
            out[new] = v.reshape(v.shape[-2], v.shape[-1])
        elif k in ("patch_embed.proj.bias", "head.weight", "head.bias") or k.startswith("fc_norm."):
            continue
        else:
            new = "visual." + next((re.sub(pat, rep, k) for pat, rep in _TIMM_KEYS if re.fullmatch(pat, k)), k)
            out[new] = v
        origin[new] = k
    bias = state.get("patch_embed.proj.bias")
    if bias is not None and "visual.positional_embedding" in out:
        pos = out["visual.positional_embedding"].clone()
        pos[1:] += bias.to(pos.dtype)
        out["visual.positional_embedding"] = pos
        notes.append("patch-embedding bias folded into the positional embedding")
    head, head_bias = state.get("head.weight"), state.get("head.bias")
    no_bias = head_bias is None or not bool(head_bias.any())  # timm's CLIP towers: zeros (_convert_openai_clip)
    if head is not None and no_bias and head.ndim == 2 and embed_dim is not None and head.shape[0] == embed_dim:
        out["visual.proj"] = head.T.contiguous()
        origin["visual.proj"] = "head.weight"
        notes.append("head -> proj")
    elif head is not None:
        notes.append(f"classifier head {tuple(head.shape)} not used")
    return out, notes


def _hf_text_model(state: dict[str, torch.Tensor]) -> str | None:
    """A short name of the Hugging Face text model a state dict holds (BERT-style keys), else None."""
    for k in state:
        if "embeddings.word_embeddings" in k or re.search(r"(^|\.)encoder\.layer\.\d+\.attention\.", k):
            return "a BERT-style text model (Hugging Face transformers keys such as '" + k + "')"
    return None


def check_safetensors(path: Path) -> None:
    """Refuse, in one line naming the file, a ``.safetensors`` file shorter or longer than its
    header says (a truncated download or copy): the format is an 8-byte little-endian header
    length, a JSON header whose ``data_offsets`` place every tensor, then exactly those bytes."""
    import struct

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else None
            header = f.read(n) if n is not None and n <= min(size, 100_000_000) else b""
    except OSError as exc:
        raise MaskkitError(f"model.pretrained: cannot read {path} ({exc.strerror or exc})") from None
    if n is None or len(header) != n:
        raise MaskkitError(f"model.pretrained: {path} is truncated or not a safetensors file ({size} bytes, "
                           f"{'no complete header' if n is None or n > size else f'a header of {n} bytes announced'}); "
                           f"expected a complete .safetensors file (copy it again)")
    try:
        meta = json.loads(header)
        end = max((int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise MaskkitError(f"model.pretrained: {path}: its safetensors header is not valid JSON with data_offsets; "
                           f"expected a complete .safetensors file (copy it again)") from None
    if 8 + n + end != size:
        raise MaskkitError(f"model.pretrained: {path} is {'truncated' if 8 + n + end > size else 'longer than its header says'}: "
                           f"{size} bytes, its header places tensors up to byte {8 + n + end}; expected a complete "
                           f".safetensors file (copy it again)")


def checked_float32(state: dict[str, torch.Tensor], file: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """``state`` (a file's tensors, keys as in ``file``) with every floating tensor in float32 (maskkit
    trains in fp32; mixed precision is ``runtime.amp``'s), and a note on the dtypes cast
    (``float16 -> float32``, or None). A tensor holding NaN or inf is refused in one line naming
    ``file``, the first such key and how many tensors (and values) are non-finite: weights
    that are not finite make every step's loss NaN, which would otherwise surface later as
    skipped steps."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        k, v = bad[0], state[bad[0]]
        n = int((~torch.isfinite(v)).sum())
        raise MaskkitError(f"model.pretrained: {file}: tensor '{k}' {tuple(v.shape)} holds {n} NaN/inf values of {v.numel()}"
                           + (f" ({len(bad)} non-finite tensors in all)" if len(bad) > 1 else " (the only non-finite tensor)")
                           + "; expected finite weights (a diverged run or a broken conversion? use an earlier checkpoint)")
    cast = sorted({str(v.dtype).replace("torch.", "") for v in state.values() if v.is_floating_point() and v.dtype != torch.float32})
    if not cast:
        return state, None
    out = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return out, f"{'/'.join(cast)} -> float32"


def _read_file(p: Path) -> tuple[dict[str, torch.Tensor], str]:
    from .towers import read_state_dict

    if p.suffix.lower() == ".safetensors" and p.is_file():
        check_safetensors(p)
    return read_state_dict(p)


#: the suffixes of the weight files a folder may hold
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def ignored_weights(folder: Path, used: list[Path]) -> str | None:
    """The load report's note on the other weight files in ``folder`` than ``used`` (the one, or
    the shards, read): ``weights: A (B beside it not read)``; None when there are none."""
    names = {u.name for u in used}
    try:
        others = sorted(f.name for f in folder.iterdir() if f.is_file() and f.suffix.lower() in WEIGHT_SUFFIXES
                        and f.name not in names)
    except OSError:
        return None
    if not others:
        return None
    return (f"weights: {', '.join(sorted(names))} ({', '.join(others)} beside {'it' if len(names) == 1 else 'them'} "
            f"not read)")


def read_weights(path: str | Path, model: torch.nn.Module | None = None,
                 origin: dict[str, str] | None = None) -> tuple[dict[str, torch.Tensor], str, list[str], Path]:
    """(open_clip state dict, format, notes, the file read) of any layout of this module's docstring;
    ``origin``, when given, is filled with each converted key's key in the file (timm layouts).

    A folder is read as an open_clip HF-hub folder or a timm ViT folder; a file through
    :func:`~maskkit.model.towers.read_state_dict`; timm ViT tensors, alone or as an open_clip
    CLIP's timm image tower (``visual.trunk.*``, :func:`timm_tower_to_open_clip`), are converted to open_clip's
    image tower (``model``, when given, supplies ``embed_dim`` for a CLIP-style head). Raises
    one-line :class:`MaskkitError` for every other folder and for a state dict of a text model.
    """
    p = Path(path).expanduser()
    notes: list[str] = []
    if p.is_dir():
        if (p / HUB_CONFIG).is_file():
            hub = hub_folder(p)
            src = hub.weights
            state, fmt = _read_file(hub.weights)
            fmt = f"open_clip folder ({hub.weights.name}, {fmt})"
        else:
            found = _hf_folder(p)
            if found is None:
                raise MaskkitError(f"{_pre(p)}: no {HUB_CONFIG} (nor {HF_CONFIG}) in this folder; expected {_WHAT_HUB}")
            src = found[0]
            state, fmt = _read_file(found[0])
            fmt = f"{found[1]}, {fmt}"
    else:
        src = p
        state, fmt = _read_file(p)
    proj = getattr(getattr(model, "visual", None), "proj", None)
    embed_dim = proj.shape[1] if isinstance(proj, torch.Tensor) else None
    if is_timm_vit(state):
        state, notes = timm_vit_to_open_clip(state, embed_dim, origin, f"model.pretrained: {src}")
        fmt = f"timm ViT image tower ({fmt})"  # the text tower: load_pretrained's untrained-tower note
    elif is_timm_tower(state):  # open_clip's timm image tower (BiomedCLIP): create_clip built it as open_clip's ViT
        state, notes = timm_tower_to_open_clip(state, embed_dim, origin, f"model.pretrained: {src}",
                                               f" (model_cfg.embed_dim in {p / HUB_CONFIG})" if p.is_dir() and (p / HUB_CONFIG).is_file()
                                               else " (model.arch's)")
    if p.is_dir():
        other = ignored_weights(p, [src])
        if other:
            notes.append(other)
    return state, fmt, notes, src


def fit_hint(pretrained: str | Path, key: str) -> str:
    """What a message about a tensor ``key`` (an open_clip key) that does not fit the model says to
    check: for an open_clip folder (the architecture), the part of its ``open_clip_config.json``
    that sets the tensor's shape (``model_cfg.embed_dim``, ``vision_cfg`` with its timm model name
    and width, or ``text_cfg``); else ``model.arch``."""
    p = Path(pretrained).expanduser()
    cfg_file = p / HUB_CONFIG
    if not (p.is_dir() and cfg_file.is_file()):
        return "is model.arch right?"
    try:
        mc = hub_folder(p, weights=False).model_cfg
    except MaskkitError:
        return f"the model is built from {cfg_file} (model_cfg)"
    if key in ("visual.proj", "text_projection") or key.startswith(("text.proj.", "visual.head.proj")):
        return f"the model is built from {cfg_file}: check model_cfg.embed_dim ({mc.get('embed_dim')})"
    if key.startswith("visual."):
        vc = mc.get("vision_cfg") or {}
        named = ", ".join(f"{k} {vc[k]!r}" for k in ("timm_model_name", "width", "layers", "patch_size", "image_size") if k in vc)
        return f"the model is built from {cfg_file}: check model_cfg.vision_cfg ({named})"
    tc = mc.get("text_cfg") or {}
    named = ", ".join(f"{k} {tc[k]!r}" for k in ("hf_model_name", "width", "layers", "vocab_size", "context_length") if k in tc)
    return f"the model is built from {cfg_file}: check model_cfg.text_cfg ({named})"


#: a stack of numbered layers in a state dict key: ``visual.transformer.resblocks.3.``,
#: ``text.transformer.encoder.layer.3.``, (transformers) ``encoder.layer.3.``, (timm) ``blocks.3.``
_STACK = re.compile(r"^(.*?(?:resblocks|encoder\.layer|layers|blocks))\.(\d+)\.")
#: what each stack is, in the user's words
_STACK_NAMES = {"visual.transformer.resblocks": "image tower", "transformer.resblocks": "text tower",
                "text.transformer.resblocks": "text tower", "text.transformer.encoder.layer": "text tower",
                "encoder.layer": "text tower"}


def layer_depths(keys) -> dict[str, int]:
    """The depth of each stack of numbered layers among state dict ``keys``: stack prefix ->
    1 + the largest layer index (``{'visual.transformer.resblocks': 12, ...}``)."""
    out: dict[str, int] = {}
    for k in keys:
        m = _STACK.match(k)
        if m:
            out[m.group(1)] = max(out.get(m.group(1), 0), int(m.group(2)) + 1)
    return out


def check_depth(state, own, file: Path, hint: str) -> None:
    """Refuse, in one line naming ``file``, a checkpoint ``state`` whose stack of layers (an image
    or text tower's blocks) is deeper or shallower than the model's (``own``, its state dict): the
    layers past the model's depth would be dropped, or the missing ones left at their
    initialisation, as a width mismatch would be refused. Stacks the checkpoint lacks (a
    timm image tower has no text layers) are not compared. ``hint`` ends the line (a string, or
    a function of the stack's key prefix giving one)."""
    want = layer_depths(own)
    for stack, n in layer_depths(state).items():
        if stack in want and n != want[stack]:
            what = _STACK_NAMES.get(stack, stack)
            raise MaskkitError(f"model.pretrained: {file}: its {what} has {n} layers ({stack}.0-{n - 1}), the model's "
                               f"{want[stack]}: depth found {n}, expected {want[stack]}; "
                               f"{hint(stack + '.') if callable(hint) else hint}")


def nothing_loaded(path: str | Path, state: dict[str, torch.Tensor]) -> MaskkitError:
    """The one-line error for a checkpoint none of whose tensors is one of the model's: names the
    file, a few keys, and a text model when the keys are a BERT's."""
    text = _hf_text_model(state)
    keys = ", ".join(list(state)[:3])
    what = text or f"none of its {len(state)} tensors is a weight of this model (keys: {keys}, ...)"
    return MaskkitError(f"{_pre(Path(path).expanduser())}: {what}; expected open_clip / OpenAI CLIP weights of model.arch "
                        f"or a timm ViT image tower")


# --- open_clip's timm image tower (TimmModel, as BiomedCLIP's) -> open_clip's own ViT -------------------

#: the ``vision_cfg`` keys of open_clip's timm tower (``open_clip.model.CLIPVisionCfg``)
TIMM_CFG_KEYS = ("timm_model_name", "timm_model_pretrained", "timm_pool", "timm_proj", "timm_proj_bias", "timm_drop",
                 "timm_drop_path")


def timm_vision_cfg(vision_cfg: dict, embed_dim: int, where: str) -> tuple[dict, str]:
    """open_clip's own ViT ``vision_cfg`` computing exactly what open_clip's timm image tower of
    ``vision_cfg`` computes (``timm_model_name``, ``timm_pool``, ``timm_proj``, ...: BiomedCLIP's
    ``vit_base_patch16_224`` with ``timm_pool: ""``, ``timm_proj: linear``), and a one-line note.

    The tower is built as open_clip builds it (``open_clip.timm_model.TimmModel``, on the meta
    device: no weights, no download) and read module by module: width, depth, heads, MLP ratio,
    patch size and image size (the timm model's own: open_clip does not pass ``image_size`` to
    timm), LayerNorm eps (``norm_kwargs``), pre-norm (``no_ln_pre``), layer scale
    (``ls_init_value``) and pooling (timm's ``token`` / ``avg`` after the final norm: open_clip's
    ``pool_type`` ``tok`` / ``avg``). The weights follow by :func:`timm_tower_to_open_clip`.
    Anything the rewrite cannot represent exactly is refused in one line (:class:`MaskkitError`
    naming ``where``, the model and what differs): another model class than timm's
    ``VisionTransformer``, no or more prefix tokens (register tokens, ``no_embed_class``),
    attention pooling, ``fc_norm``, q/k norms, a non-GELU MLP, qkv without bias, dropout or drop
    path, a ``timm_proj`` other than a bias-free ``linear``.
    """
    import torch.nn as nn

    name = vision_cfg["timm_model_name"]
    pool, proj = vision_cfg.get("timm_pool", "avg"), vision_cfg.get("timm_proj", "linear")

    def refuse(what: str) -> MaskkitError:
        return MaskkitError(f"{where}: the timm image tower {name} (timm_pool={pool!r}, timm_proj={proj!r}) {what}, "
                            f"{_NOT_EXACT} with timm_proj 'linear' without bias")

    if proj != "linear" or vision_cfg.get("timm_proj_bias"):
        raise refuse("has a " + ("biased " if vision_cfg.get("timm_proj_bias") else "") + f"'{proj}' projection")
    if pool in ("abs_attn", "rot_attn"):
        raise refuse("pools by attention")
    for key in ("timm_drop", "timm_drop_path"):
        if vision_cfg.get(key):
            raise refuse(f"has {key}={vision_cfg[key]}")
    if vision_cfg.get("timm_model_pretrained"):
        raise refuse("asks for timm's ImageNet weights (timm_model_pretrained: true; maskkit never downloads)")
    try:
        import timm
        from open_clip.timm_model import TimmModel
        from timm.layers import LayerScale, Mlp, PatchEmbed
        from timm.models.vision_transformer import Attention, Block, VisionTransformer
    except ImportError as exc:
        raise MaskkitError(f"{where}: the image tower is timm's {name}, which needs the timm package "
                           f"({exc}); pip install timm") from None
    if name not in timm.list_models():
        from ..errors import close_matches

        raise MaskkitError(f"{where}: vision_cfg.timm_model_name '{name}' is not a timm model{close_matches(name, timm.list_models())}")
    try:
        with torch.device("meta"):  # the architecture only
            tower = TimmModel(name, embed_dim, image_size=vision_cfg.get("image_size", 224), pool=pool, proj=proj,
                              proj_bias=False, pretrained=False)
    except Exception as exc:
        from .towers import _one_line

        raise MaskkitError(f"{where}: cannot build the timm image tower {name} ({_one_line(exc)})") from None
    t = tower.trunk
    if type(t) is not VisionTransformer:
        raise refuse(f"is a {type(t).__name__}, not timm's VisionTransformer")
    if not t.has_class_token or t.num_prefix_tokens != 1 or t.no_embed_class or t.pos_embed is None:
        raise refuse("has no class token, extra prefix (register) tokens or positions without the class token")
    if t.global_pool not in ("token", "avg") or t.attn_pool is not None or not isinstance(t.fc_norm, nn.Identity):
        raise refuse(f"pools with global_pool={t.global_pool!r}" + (" and fc_norm" if not isinstance(t.fc_norm, nn.Identity) else ""))
    pe = t.patch_embed
    if (type(pe) is not PatchEmbed or not isinstance(pe.norm, nn.Identity) or pe.proj.kernel_size != pe.proj.stride
            or pe.proj.padding != (0, 0) or pe.proj.in_channels != 3 or getattr(pe, "dynamic_img_pad", False)):
        raise refuse("has another patch embedding than one strided convolution")
    width, blocks = int(t.embed_dim), list(t.blocks)
    norms = [t.norm] + [m for b in blocks for m in (b.norm1, b.norm2)] + ([t.norm_pre] if not isinstance(t.norm_pre, nn.Identity) else [])
    if any(not isinstance(n, nn.LayerNorm) or not n.elementwise_affine or n.bias is None for n in norms):
        raise refuse("has another norm than an affine LayerNorm")
    eps = {float(n.eps) for n in norms}
    scales = {type(m) for b in blocks for m in (b.ls1, b.ls2)}
    drops = [m for m in t.modules() if isinstance(m, nn.Dropout) and m.p > 0]
    for b in blocks:
        a, mlp = b.attn, b.mlp
        if type(b) is not Block or type(a) is not Attention or type(mlp) is not Mlp:
            raise refuse(f"has {type(b).__name__}/{type(a).__name__}/{type(mlp).__name__} blocks, not timm's Block/Attention/Mlp")
        if a.qkv.bias is None or a.proj.bias is None or mlp.fc1.bias is None or mlp.fc2.bias is None:
            raise refuse("has attention or MLP layers without bias")
        parts = [getattr(x, n, None) for x, n in ((a, "q_norm"), (a, "k_norm"), (a, "norm"), (mlp, "norm"), (b, "drop_path1"),
                                                  (b, "drop_path2"))]  # (older timm lacks some: then there is none)
        if not all(m is None or isinstance(m, nn.Identity) for m in parts):
            raise refuse("has q/k norms, an attention or MLP norm or drop path")
        if type(mlp.act) is not nn.GELU or mlp.act.approximate != "none":
            raise refuse(f"has a {mlp.act} MLP activation, not exact GELU")
        if mlp.fc1.out_features != blocks[0].mlp.fc1.out_features or a.num_heads != blocks[0].attn.num_heads:
            raise refuse("has blocks of different shapes")
    if len(eps) != 1 or scales - {nn.Identity, LayerScale} or len(scales) != 1 or drops or not isinstance(t.patch_drop, nn.Identity):
        raise refuse("mixes LayerNorm eps or layer scales, or has dropout")
    heads, hidden = int(blocks[0].attn.num_heads), int(blocks[0].mlp.fc1.out_features)
    size = tuple(int(s) for s in pe.img_size)
    out = {k: v for k, v in vision_cfg.items() if k not in TIMM_CFG_KEYS}
    out.update(image_size=size[0] if size[0] == size[1] else list(size), patch_size=int(pe.proj.kernel_size[0]),
               width=width, layers=len(blocks), head_width=width // heads, mlp_ratio=hidden / width,
               no_ln_pre=isinstance(t.norm_pre, nn.Identity), pool_type="tok" if t.global_pool == "token" else "avg",
               ls_init_value=1e-5 if LayerScale in scales else None)
    (e,) = eps
    if e != 1e-5:  # open_clip's LayerNorm default
        out["norm_kwargs"] = {**(vision_cfg.get("norm_kwargs") or {}), "eps": e}
    note = (f"image tower: timm {name} as open_clip's ViT (width {width}, {len(blocks)} layers, {heads} heads, "
            f"patch {out['patch_size']}, {size[0]} px, LayerNorm eps {e:g}, pool {out['pool_type']})")
    if vision_cfg.get("image_size") not in (None, size[0], list(size)):
        note += f"; vision_cfg.image_size {vision_cfg['image_size']} is not the timm model's {size[0]} px, which open_clip's tower runs at"
    return out, note


#: an open_clip CLIP with a timm image tower keeps it under ``visual.trunk.`` and its projection under ``visual.head.``
TIMM_TRUNK, TIMM_HEAD = "visual.trunk.", "visual.head."


def is_timm_tower(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` is an open_clip CLIP whose image tower is timm's ViT (``visual.trunk.*``)."""
    return is_timm_vit({k[len(TIMM_TRUNK):]: None for k in state if k.startswith(TIMM_TRUNK)})


def timm_tower_to_open_clip(state: dict[str, torch.Tensor], embed_dim: int | None, origin: dict[str, str] | None = None,
                            where: str = "model.pretrained", embed_src: str = "") -> tuple[dict[str, torch.Tensor], list[str]]:
    """An open_clip CLIP state dict with a timm image tower (``visual.trunk.*`` timm ViT keys,
    ``visual.head.proj.weight [embed_dim, W]``: ``timm_proj: linear``) as one with open_clip's own
    ViT (:func:`timm_vit_to_open_clip`; the head becomes ``visual.proj [W, embed_dim]``, the
    transpose, as ``pooled @ proj`` is ``Linear(pooled)``). Other keys (the text tower,
    ``logit_scale``) are kept; a ``visual.head.*`` key other than ``proj.weight`` is kept as it is, so the
    loader reports it as unexpected. ``origin`` as :func:`timm_vit_to_open_clip`'s (the keys of
    ``state``); ``where`` (the file) opens a refused head's line, ``embed_src`` says where the
    model's ``embed_dim`` came from."""
    trunk = {k[len(TIMM_TRUNK):]: v for k, v in state.items() if k.startswith(TIMM_TRUNK)}
    rest = {k: v for k, v in state.items() if not k.startswith(TIMM_TRUNK)}
    head = rest.pop(TIMM_HEAD + "proj.weight", None)
    if head is not None:
        trunk["head.weight"] = head
    inner: dict[str, str] = {}
    converted, notes = timm_vit_to_open_clip(trunk, embed_dim, inner, where)
    if head is not None and "visual.proj" not in converted:
        raise MaskkitError(f"{where}: '{TIMM_HEAD}proj.weight' has shape {tuple(head.shape)} ([embed_dim, width]: "
                           f"embed_dim {head.shape[0]}), the model's embed_dim is {embed_dim}{embed_src}; expected the same "
                           f"embed_dim (timm_proj: linear)")
    if origin is not None:
        origin.update({k: k for k in rest})
        origin.update({new: TIMM_HEAD + "proj.weight" if old == "head.weight" else TIMM_TRUNK + old for new, old in inner.items()})
    return {**rest, **converted}, ["timm image tower (visual.trunk.*) -> open_clip's ViT"] + notes
