"""CLIP towers from open_clip, with token-level features exposed (eq. 1-3).

``ViT-B-16`` (the paper's) and every open_clip config work; maskkit registers small CPU configs
(``maskkit-tiny``: a 4-layer width-192 ViT/16 on 96 px with a 64-token text context;
``maskkit-tiny-p8``: 64 px with 8 px patches); text towers are CLIP's or Hugging Face
transformers models (:mod:`maskkit.model.hf_text`), each with its tokenizer
(:func:`tower_tokenizer`). The patch embedding is CLIP's (one strided
convolution) or a convolutional stem (:class:`ConvStem`, ``model.patch_embed``). Weights load only from local files: OpenAI's
TorchScript archives, open_clip ``.pt``/``.pth``/``.bin``/``.safetensors``, wrapped or DDP-prefixed, open_clip's
HF-hub folders, timm ViT image towers (:mod:`maskkit.model.weights`) and transformers text-tower folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch

from ..errors import MaskkitError
from .config import OPENAI_MEAN, OPENAI_STD, PATCH_EMBEDS  # noqa: F401  (written once, in the torch-free config)


@lru_cache(maxsize=1)
def register_configs() -> None:
    """Add maskkit's small open_clip model configs to open_clip's registry (once)."""
    import open_clip

    folder = resources.files("maskkit.model") / "configs"
    for f in folder.iterdir():
        if f.name.endswith(".json"):
            open_clip.add_model_config(Path(str(f)))


class GlobalBatchNorm2d(torch.nn.BatchNorm2d):
    """``BatchNorm2d`` whose training-mode statistics are those of the batch of **every rank**.

    Under an initialised process group with more than one rank, each training forward all-reduces
    the per-channel sum, sum of squares and count (one collective, with autograd, so the gradient
    through the statistics is summed over ranks as well), and normalises with the global mean and
    biased variance; running statistics get the global unbiased variance. So a run on ``R`` ranks
    × batch ``b`` computes what one process computes on batch ``R·b`` (``SyncBatchNorm``'s
    semantics, which torch provides for GPUs only; this one also runs on gloo/CPU). In eval mode,
    or on one process, it is ``BatchNorm2d``. Input ``[B, C, H, W]``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..distributed import all_reduce_sum_with_grad, process_group_size

        if not self.training or process_group_size() == 1:
            return super().forward(x)

        C = x.shape[1]
        xf = x.float()
        local = torch.cat([xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3)), xf.new_full((1,), x.numel() // C)])
        total = all_reduce_sum_with_grad(local)
        count = total[-1]
        mean = total[:C] / count
        var = (total[C:2 * C] / count - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * count / (count - 1).clamp_min(1.0), alpha=m)
        y = (xf - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        return (y * self.weight[None, :, None, None] + self.bias[None, :, None, None]).to(x.dtype)


class ConvStem(torch.nn.Sequential):
    """A convolutional patch embedding (Xiao et al., "Early convolutions help transformers see
    better", NeurIPS 2021): ``log2(p)`` layers of 3×3 stride-2 convolution, BatchNorm (over all
    ranks' batches: :class:`GlobalBatchNorm2d`) and ReLU,
    then a 1×1 convolution to the ViT width; channels double up to the width
    (``width / 2**(k - i)`` at layer ``i`` of ``k``). ``[B, 3, H, W] -> [B, width, H/p, W/p]``,
    the shape of ViT's single ``p×p`` stride-``p`` convolution it replaces, so token ``n`` is
    still patch ``n``; its receptive field (``2**(k+1) - 1`` px, 31 for ``p = 16``) reaches into
    the neighbouring patches. Raises :class:`MaskkitError` unless ``p`` is a power of two ≥ 2.
    """

    def __init__(self, patch: int, width: int) -> None:
        k = patch.bit_length() - 1
        if patch < 2 or 2 ** k != patch:
            raise MaskkitError(f"model.patch_embed=conv_stem: needs a power-of-two patch size, got {patch}; "
                               f"use model.patch_embed=linear for this architecture")
        if width % 2 ** (k - 1):
            raise MaskkitError(f"model.patch_embed=conv_stem: needs a ViT width divisible by {2 ** (k - 1)} for patch size "
                               f"{patch}, got {width}; use model.patch_embed=linear for this architecture")
        chans = [3] + [width // 2 ** (k - i) for i in range(1, k + 1)]
        layers: list[torch.nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [torch.nn.Conv2d(a, b, 3, 2, 1, bias=False), GlobalBatchNorm2d(b), torch.nn.ReLU(inplace=True)]
        layers.append(torch.nn.Conv2d(width, width, 1))
        super().__init__(*layers)


def model_config(arch) -> tuple[str, dict]:
    """(a name for messages, a deep copy of the open_clip model config) of ``arch``: a registered
    open_clip architecture name, or an open_clip model config dict (``embed_dim``,
    ``vision_cfg``, ``text_cfg``; an ``open_clip_config.json``'s whole dict, with its
    ``model_cfg``, is accepted too). One-line :class:`MaskkitError` otherwise."""
    import copy

    import open_clip

    register_configs()
    if isinstance(arch, str):
        cfg = open_clip.get_model_config(arch) if arch in open_clip.list_models() else None
        if cfg is None:
            from ..errors import close_matches

            raise MaskkitError(f"model.arch: unknown open_clip architecture '{arch}'{close_matches(arch, open_clip.list_models())}")
        return arch, copy.deepcopy(cfg)
    if isinstance(arch, dict):
        cfg = copy.deepcopy(arch.get("model_cfg", arch))
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
        if missing:
            raise MaskkitError(f"model.arch: the open_clip model config has no {', '.join(missing)}; expected "
                               f"embed_dim, vision_cfg and text_cfg (an open_clip model config)")
        return "the given open_clip config", cfg
    raise MaskkitError(f"model.arch: expected an open_clip architecture name or model config dict, got a {type(arch).__name__}")


@dataclass(frozen=True)
class TextSpec:
    """Where a model's tokenizer comes from (set by :func:`create_clip`, read by :func:`tower_tokenizer`):
    ``tokenizer`` a local Hugging Face tokenizer folder (None: CLIP's BPE), ``context_length``
    the text positions (open_clip's ``text_cfg.context_length``), ``pooling`` the tower's."""

    tokenizer: str | None
    context_length: int
    pooling: str


#: how each open_clip text pooling reads a text, in :class:`TextTokenizer`'s words
POOLING = {"argmax": "eot", "eos": "eot", "last": "last", "first": "cls", "none": "none", "cls_pooler": "cls",
           "cls_last_hidden_state_pooler": "cls", "mean_pooler": "mean", "max_pooler": "max"}


def create_clip(arch, patch_embed: str = "linear", text_tower: str | Path | None = None, hub_dir: str | Path | None = None):
    """An open_clip CLIP of architecture ``arch`` (a registered name or a model config dict, see
    :func:`model_config`), randomly initialised, never downloading.

    Text towers: CLIP's own (``CLIP``, CLIP's BPE) or a Hugging Face transformers model
    (``text_cfg.hf_model_name``: ``CustomTextCLIP`` with open_clip's ``HFTextEncoder``). The
    HF model's configuration comes from ``text_tower`` (a local transformers model folder; its
    tokenizer too when it holds one), else from ``hf_model_name`` / ``hf_tokenizer_name`` as a
    local folder or the Hugging Face cache. ``hub_dir``, the open_clip folder ``arch`` came from,
    supplies the tokenizer when it holds one (as open_clip's ``local-dir:`` always takes it from
    there), and the text tower's ``config.json`` when ``hf_model_name`` is not local (a moved
    ``maskkit export`` folder). The model carries a :class:`TextSpec`
    (``model.maskkit_text``) for :func:`tower_tokenizer`. Image towers: open_clip's ViT, or
    open_clip's timm tower of a plain timm ViT (``vision_cfg.timm_model_name``, BiomedCLIP's),
    built as the open_clip ViT that computes the same (:func:`maskkit.model.weights.timm_vision_cfg`).
    ``model.maskkit_model_cfg`` is the open_clip model config the model was built from (the
    timm tower rewritten; what an export writes), ``model.maskkit_notes`` what was adapted.
    ``patch_embed="conv_stem"`` replaces the ViT's patch-embedding convolution
    (``visual.conv1``) by a :class:`ConvStem`; ``"linear"`` keeps open_clip's (CLIP's) own.
    Anything else is refused in one line (:class:`MaskkitError`).
    """
    import copy

    from open_clip.model import CLIP, CustomTextCLIP

    from . import hf_text

    from .weights import arch_where

    name, cfg = model_config(arch)
    where = arch_where(arch, name)  # an open_clip folder's model_cfg: its open_clip_config.json, not the internal name
    if patch_embed not in PATCH_EMBEDS:
        raise MaskkitError(f"model.patch_embed: unknown patch embedding '{patch_embed}'; expected one of {', '.join(PATCH_EMBEDS)}")
    if "multimodal_cfg" in cfg:
        raise MaskkitError(f"{where} is a CoCa model (multimodal_cfg); maskkit trains dual-tower CLIPs with its own text decoder")
    vision_cfg, text_cfg = dict(cfg.pop("vision_cfg") or {}), dict(cfg.pop("text_cfg") or {})
    hf = text_cfg.get("hf_model_name")
    notes = []
    if vision_cfg.get("timm_model_name"):  # open_clip's timm tower (BiomedCLIP's): the same ViT in open_clip's own terms
        from .weights import timm_vision_cfg

        vision_cfg, note = timm_vision_cfg(vision_cfg, cfg.get("embed_dim"), where)
        notes.append(note)
        if cfg.get("quick_gelu"):  # timm's towers ignore it; open_clip's ViT would take it
            if not hf:
                raise MaskkitError(f"{where} has quick_gelu: true with a timm image tower (exact GELU) and "
                                   f"CLIP's text tower (QuickGELU); maskkit builds one activation for both")
            cfg.pop("quick_gelu")
    resolved = {**copy.deepcopy(cfg), "vision_cfg": copy.deepcopy(vision_cfg), "text_cfg": copy.deepcopy(text_cfg)}
    custom = cfg.pop("custom_text", False)
    pretrained_key = "model.pretrained"
    if text_tower is not None and not hf:
        raise MaskkitError(f"{pretrained_key}: {text_tower} is a transformers model folder (a text tower), but model.arch "
                           f"'{name}' has CLIP's text tower; use an architecture whose text_cfg has hf_model_name "
                           f"(e.g. roberta-ViT-B-32)")
    if hf:
        import importlib.util

        if importlib.util.find_spec("transformers") is None:
            raise MaskkitError(f"{where} has a Hugging Face text tower ({hf}), which needs the transformers "
                               f"package: pip install 'maskkit[hf]'")
        hub = Path(hub_dir) if hub_dir is not None and text_tower is None else None
        cfg_file = hub / "open_clip_config.json" if hub is not None else None
        tok_files = ", ".join(hf_text.TOKENIZER_FILES[:2])
        if text_tower is not None:
            folder = Path(text_tower).expanduser()
        else:
            fix = None
            if cfg_file is not None:  # an open_clip folder (BiomedCLIP's names the hub id of its BERT)
                fix = (f"set text_cfg.hf_model_name in {cfg_file} to a local folder of that model (its config.json"
                       + ("" if hf_text.has_tokenizer(hub) else f"; and text_cfg.hf_tokenizer_name to a folder with its "
                          f"tokenizer files, {tok_files}, ...") + f"), or copy that model's config.json into {hub}")
            try:
                folder = hf_text.local_folder(hf, f"{where} text tower", fix)
            except MaskkitError:
                if hub is None or hf_text.transformers_config(hub) is None:
                    raise
                folder = hub  # the folder carries the tower's config.json (maskkit export's)
        key = pretrained_key if text_tower is not None else f"{where} text tower"
        hf_cfg = hf_text.check_model_type(folder, key)
        tok_name = text_cfg.get("hf_tokenizer_name") or hf
        if hub is not None and hf_text.has_tokenizer(hub):
            tok = hub  # an open_clip folder's own tokenizer, as open_clip's local-dir: reads it
        elif hf_text.has_tokenizer(folder) and (text_tower is not None or tok_name == hf):
            tok = folder  # the tower's own folder holds its tokenizer
        else:  # the architecture's hf_tokenizer_name (a weights-only model.pretrained folder takes it too)
            if text_tower is not None:
                fix = (f"the tokenizer files ({tok_files}, ...) are missing in {folder}, and text_cfg.hf_tokenizer_name "
                       f"'{tok_name}' of the architecture cannot stand in; copy the model's tokenizer files into {folder}")
                try:
                    tok = hf_text.local_folder(tok_name, key)
                except MaskkitError:
                    raise MaskkitError(f"{key}: {fix}") from None
            elif cfg_file is not None:
                tok = hf_text.local_folder(tok_name, f"{where} tokenizer",
                                           f"copy the tokenizer files ({tok_files}, ...) into {hub}, or set "
                                           f"text_cfg.hf_tokenizer_name in {cfg_file} to a local folder holding them")
            else:
                tok = hf_text.local_folder(tok_name, f"{where} tokenizer",
                                           f"set text_cfg.hf_tokenizer_name to a local folder with the tokenizer files ({tok_files}, ...)")
        if not hf_text.has_tokenizer(tok):
            raise MaskkitError(f"{key}: the tokenizer files ({tok_files}, ...) are missing in {tok}; copy the model's "
                               f"tokenizer files there (the text tower's tokenizer must be local)")
        text_cfg.update(hf_model_name=str(folder), hf_tokenizer_name=str(tok), hf_model_pretrained=False)
        model_class = CustomTextCLIP
        from open_clip.hf_configs import arch_dict

        pooler = text_cfg.get("hf_pooler_type") or arch_dict[hf_cfg["model_type"]]["pooler"]
    elif text_cfg.get("hf_tokenizer_name") or custom:
        raise MaskkitError(f"{where} has a custom native text tower"
                           + (f" with the tokenizer '{text_cfg['hf_tokenizer_name']}'" if text_cfg.get("hf_tokenizer_name") else "")
                           + "; maskkit supports CLIP's text tower (CLIP's BPE) and Hugging Face text towers (text_cfg.hf_model_name)")
    else:
        model_class, tok, pooler = CLIP, None, text_cfg.get("pool_type", "argmax")
    try:  # as open_clip.create_model builds it (fp32, on the CPU), without its hub look-ups
        model = model_class(**cfg, vision_cfg=vision_cfg, text_cfg=text_cfg)
    except Exception as exc:
        raise MaskkitError(f"{where}: cannot build it ({_one_line(exc)})") from None
    # float32 parameters whatever the sources say: transformers builds a tower in its config.json's dtype
    # ("dtype"/"torch_dtype": float16 of a half-precision save); training is fp32, mixed precision is runtime.amp's
    model = model.float()
    if hf and getattr(model.text.config, "dtype", None) not in (None, torch.float32):
        model.text.config.dtype = torch.float32  # what a checkpoint's build_record / an export writes
    if getattr(model.visual, "attn_pool", None) is not None or not hasattr(model.visual, "conv1"):
        raise MaskkitError(f"{where} is not a plain ViT image tower; maskkit needs ViT patch tokens")
    from open_clip.model import CLIPTextCfg

    context = int(text_cfg.get("context_length", CLIPTextCfg.context_length))  # open_clip's default (77) when unset
    if hf:
        limit = hf_text.max_positions(model.text.config)
        if limit and context > limit:
            raise MaskkitError(f"{where} text_cfg.context_length {context} exceeds the {limit} positions of "
                               f"the text tower {folder / 'config.json'}")
        if model.text.config.pad_token_id is None:
            raise MaskkitError(f"{key}: {folder / 'config.json'} has no pad_token_id; the text tower needs one to skip padding")
    model.maskkit_model_cfg = resolved
    model.maskkit_notes = notes
    model.maskkit_text = TextSpec(str(tok) if tok is not None else None, context, POOLING.get(pooler, pooler))
    if patch_embed == "conv_stem":
        model.visual.conv1 = ConvStem(model.visual.patch_size[0], model.visual.conv1.out_channels)
    return model


def tower_tokenizer(clip):
    """The :class:`~maskkit.data.tokenize.TextTokenizer` of a model made by :func:`create_clip`:
    CLIP's BPE for CLIP's text tower, the tower's own Hugging Face fast tokenizer otherwise.
    Refuses a tokenizer whose ids the tower cannot embed or whose pad id is not the tower's."""
    from ..data.tokenize import HFReportTokenizer, ReportTokenizer
    from . import hf_text

    spec: TextSpec = clip.maskkit_text
    if spec.tokenizer is None:
        tok = ReportTokenizer(spec.context_length, pooling=spec.pooling)
        if tok.vocab_size > clip.vocab_size:
            raise MaskkitError(f"model.arch: the text tower embeds {clip.vocab_size} token ids, fewer than CLIP's BPE "
                               f"vocabulary of {tok.vocab_size}")
        return tok
    tok = HFReportTokenizer(spec.tokenizer, spec.context_length, pooling=spec.pooling)
    rows = clip.text.transformer.get_input_embeddings().num_embeddings
    if tok.vocab_size > rows:
        raise MaskkitError(f"text tower tokenizer: {spec.tokenizer} has {tok.vocab_size} tokens, more than the "
                           f"{rows} rows of the text tower's token embedding")
    if hf_text.is_hf_tower(clip) and tok.pad_id != clip.text.config.pad_token_id:
        raise MaskkitError(f"text tower tokenizer: {spec.tokenizer} pads with id {tok.pad_id}, the text tower's config "
                           f"with pad_token_id {clip.text.config.pad_token_id}; expected the same id")
    return tok


def tokenizer_note(clip, tok) -> str | None:
    """The load report's note on a tokenizer ``tok`` (:func:`tower_tokenizer`'s) with fewer ids than
    ``clip``'s text tower embeds (rows no text ever reaches: a tokenizer of another model?),
    ``tokenizer vocab N, embedding rows M``; None when they are equal (more is refused there)."""
    from . import hf_text

    rows = clip.text.transformer.get_input_embeddings().num_embeddings if hf_text.is_hf_tower(clip) else int(clip.vocab_size)
    if tok.vocab_size >= rows:
        return None
    return (f"note: tokenizer vocab {tok.vocab_size}, embedding rows {rows}: the text tower's last {rows - tok.vocab_size} "
            f"token rows are never used (is {tok.name} the weights' own tokenizer?)")


def text_is_causal(clip) -> bool:
    """Whether position ``t`` of the text tower sees only positions ``<= t`` (CLIP's causal mask;
    False for BERT-style bidirectional towers and CLIP towers built without the causal mask)."""
    from . import hf_text

    if hf_text.is_hf_tower(clip):
        return bool(getattr(clip.text.config, "is_decoder", False))
    return clip.attn_mask is not None


def text_width(clip) -> int:
    """The width of the text tower's token embeddings."""
    from . import hf_text

    return hf_text.text_width(clip.text) if hf_text.is_hf_tower(clip) else int(clip.token_embedding.weight.shape[1])


#: keys OpenAI's TorchScript archives hold besides the weights (open_clip drops them too)
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
#: wrappers around a state dict, and key prefixes: DDP (``module.``), ``torch.compile``
#: (``_orig_mod.``) and maskkit's own XLIP checkpoints (``clip.``)
WRAPPER_KEYS = ("state_dict", "model", "module")
PREFIXES = ("module.", "_orig_mod.", "clip.")


def _one_line(exc: BaseException) -> str:
    """``Type: the whole message`` on one line (no truncation at the first line or comma;
    terminal colour codes, which torch puts in some messages, removed)."""
    import re

    msg = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _is_torchscript(p: Path) -> bool:
    """A TorchScript archive (``torch.jit.save``; OpenAI's released CLIP checkpoints): a zip with
    ``constants.pkl`` and compiled ``code/``, which ``torch.load(weights_only=True)`` refuses."""
    import zipfile

    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The tensors of a local checkpoint, on the CPU, and the format they came in.

    Formats: OpenAI TorchScript archives (read as open_clip's ``load_openai_model`` does:
    ``torch.jit.load(path, map_location="cpu").state_dict()``, without the non-weight entries),
    ``torch.save`` files (``.pt``/``.pth``/``.bin``, read with ``weights_only=True``) and
    ``.safetensors``; a ``{"state_dict": ...}`` (or ``model``/``module``) wrapper and
    ``module.`` / ``_orig_mod.`` / ``clip.`` key prefixes are unwrapped.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MaskkitError(f"model.pretrained: checkpoint {p} does not exist (maskkit never downloads weights)")
    fmt = "state dict"
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state, fmt = load_file(str(p), device="cpu"), "safetensors"
        elif _is_torchscript(p):
            import warnings

            with warnings.catch_warnings():  # "torch.jit.load is deprecated": the archives exist all the same
                warnings.simplefilter("ignore", FutureWarning)
                state, fmt = dict(torch.jit.load(str(p), map_location="cpu").state_dict()), "OpenAI TorchScript"
            for key in OPENAI_EXTRA_KEYS:
                state.pop(key, None)
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        from ..errors import weights_only_line, weights_only_refusal

        why = weights_only_refusal(exc)
        if why:
            raise MaskkitError(f"model.pretrained: {weights_only_line(p, 'state dict', why)}") from None
        raise MaskkitError(f"model.pretrained: cannot read {p} ({_one_line(exc)})") from None
    for _ in range(3):  # nested wrappers: {"model": {"state_dict": ...}}
        if isinstance(state, dict):
            inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), dict)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) and k not in WRAPPER_KEYS for k, v in state.items()):
                state, fmt = inner, f"{fmt} in a '{next(k for k in WRAPPER_KEYS if state.get(k) is inner)}' wrapper"
    if not isinstance(state, dict) or not state:
        what = "an empty dict" if isinstance(state, dict) else f"a {type(state).__name__}"
        raise MaskkitError(f"model.pretrained: {p} holds {what}, not a state dict of tensors")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        keys = ", ".join(map(str, list(state)[:5]))
        raise MaskkitError(f"model.pretrained: {p}: entry '{bad}' is a {type(state[bad]).__name__}, not a tensor "
                           f"(top-level keys: {keys}); expected a state dict or a {{'state_dict': ...}} wrapper")
    from .weights import checked_float32

    state, cast = checked_float32(state, p)  # keys as in the file (before the prefixes are stripped)
    if cast:
        fmt = f"{fmt}, {cast}"
    changed = True
    while changed:  # strip prefixes that every key carries (DDP inside torch.compile, ...)
        changed = False
        for pre in PREFIXES:
            if all(k.startswith(pre) for k in state):
                state, changed = {k[len(pre):]: v for k, v in state.items()}, True
    return state, fmt


def load_pretrained(model: torch.nn.Module, path: str | Path) -> str:
    """Load a local CLIP checkpoint into an open_clip ``model``; returns a one-line report.

    Reads every layout of :func:`maskkit.model.weights.read_weights` (open_clip and timm folders,
    timm ViT image towers, and every format of :func:`read_state_dict`), then adapts the state dict as open_clip's
    ``load_checkpoint`` does: OpenAI layout to a custom-text model, a scalar/1-d ``logit_scale``,
    and position embeddings interpolated to the model's image grid / text length. Shapes that
    still differ are refused, naming the first key.
    """
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    from .weights import check_depth, fit_hint, nothing_loaded, read_weights

    origin: dict[str, str] = {}  # a converted (timm) key -> the key in the file
    state, fmt, notes, src = read_weights(path, model, origin)  # every local layout (maskkit.model.weights)
    p = Path(path).expanduser()
    own = model.state_dict()
    for key in OPENAI_EXTRA_KEYS:  # also in OpenAI state dicts saved with torch.save
        if key not in own:
            state.pop(key, None)
    if not state.keys() & own.keys():  # a whole-model checkpoint (maskkit's XLIP: the towers under 'clip.')
        for pre in PREFIXES:
            sub = {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}
            if sub.keys() & own.keys():
                notes.append(f"took the {len(sub)} '{pre}' tensors of {len(state)}")
                state = sub
                break
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].ndim != own["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    for key, resize in (("visual.positional_embedding", resize_pos_embed), ("positional_embedding", resize_text_pos_embed)):
        if key in state and key in own and state[key].shape != own[key].shape and state[key].shape[-1] == own[key].shape[-1]:
            before = tuple(state[key].shape)
            try:
                resize(state, model)
            except Exception as exc:
                raise MaskkitError(f"model.pretrained: {src}: cannot resize '{key}' {before} to {tuple(own[key].shape)} "
                                   f"({_one_line(exc)})") from None
            notes.append(f"resized {key} {before} -> {tuple(state[key].shape)}")
    check_depth(state, own, src, lambda stack: fit_hint(p, stack))
    shape_bad = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    if shape_bad:
        k = shape_bad[0]
        what = f"'{k}' has shape {tuple(state[k].shape)}"
        if origin.get(k, k) != k:  # name the key as it is in the file
            what = f"'{origin[k]}' (as open_clip's '{k}': shape {tuple(state[k].shape)})"
        raise MaskkitError(f"model.pretrained: {src}: {what}, the model expects {tuple(own[k].shape)} "
                           f"({len(shape_bad)} mismatched keys); {fit_hint(p, k)}")
    try:
        res = model.load_state_dict(state, strict=False)
    except Exception as exc:
        raise MaskkitError(f"model.pretrained: {src}: cannot load ({_one_line(exc)})") from None
    miss, unexp = list(res.missing_keys), list(res.unexpected_keys)
    loaded = len(state) - len(unexp)
    if loaded == 0:
        raise nothing_loaded(src, state)
    notes += untrained_towers(own, set(state) - set(unexp), src.name)
    def few(keys):
        return ", ".join(keys[:3]) + (f", ... ({len(keys)} total)" if len(keys) > 3 else "")
    return (f"loaded {loaded} tensors from {p.name}; missing {len(miss)}" + (f" ({few(miss)})" if miss else "")
            + f"; unexpected {len(unexp)}" + (f" ({few(unexp)})" if unexp else "")
            + f"; format: {fmt}" + "".join(f"; {n}" for n in notes))


def untrained_towers(own, loaded: set[str], source: str) -> list[str]:
    """The load report's notes on each tower (image: ``visual.*``; text: the rest but
    ``logit_*``) none of whose tensors among ``own`` (the model's state dict keys) was ``loaded``
    from ``source``: it keeps its random initialisation."""
    towers = {"image": [k for k in own if k.startswith("visual.")],
              "text": [k for k in own if not k.startswith(("visual.", "logit_"))]}
    return [f"the {t} tower has no weights in {source}: randomly initialised (untrained)"
            for t, keys in towers.items() if keys and not loaded.intersection(keys)]


def image_tokens(clip, x: torch.Tensor, keep: torch.Tensor | None = None, keep_valid: torch.Tensor | None = None):
    """Run the ViT on normalised images ``x [B, 3, H, W]``.

    Returns (pooled ``[B, C]`` projected, E_img ``[B, N, C]`` projected patch tokens, eq. 1).
    With ``keep`` (``[B, K]`` long patch indices), only those patches are encoded (MAE); then
    E_img is ``[B, K, C]`` and the pooled output is that of the visible patches. ``keep_valid``
    (``[B, K]`` bool) marks padding slots of rows that keep fewer than ``K`` patches: no token
    attends to them (a key-padding mask), so they change nothing of the real tokens.

    Images of another size than the tower's (a multiple of the patch, e.g. the low-resolution
    guide view of ``mim.placement=sparse``) get the patch position embeddings resampled to their
    grid (bicubic, as timm's ``resample_abs_pos_embed``; FlexiViT, CLIPA); ``N`` is then their
    grid's token count.
    """
    v = clip.visual
    h = v.conv1(x)                             # [B, W, h, w]
    grid = tuple(h.shape[-2:])
    h = h.flatten(2).transpose(1, 2)           # [B, N, W]
    pos = v.positional_embedding.to(h.dtype)
    if grid != tuple(v.grid_size):
        pos = torch.cat([pos[:1], resample_positions(pos[1:], tuple(v.grid_size), grid)])
    h = h + pos[1:]
    if keep is not None:
        h = torch.gather(h, 1, keep.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
    cls = (v.class_embedding.to(h.dtype) + pos[0]).expand(h.shape[0], 1, -1)
    h = torch.cat([cls, h], 1)
    h = v.ln_pre(h)
    attn = None
    if keep_valid is not None:
        heads = v.transformer.resblocks[0].attn.num_heads
        keys = torch.cat([keep_valid.new_ones(keep_valid.shape[0], 1), keep_valid], 1)  # CLS is always a key
        attn = torch.zeros(keys.shape[0], 1, keys.shape[1], dtype=h.dtype, device=h.device)
        attn = attn.masked_fill(~keys[:, None, :], float("-inf")).expand(-1, keys.shape[1], -1)
        attn = attn.repeat_interleave(heads, 0)  # [B * heads, K + 1, K + 1], additive
    h = v.transformer(h, attn_mask=attn)
    pooled, tokens = v._pool(h)
    if v.proj is not None:
        pooled = pooled @ v.proj
        tokens = tokens @ v.proj
    return pooled, tokens


def resample_positions(pos: torch.Tensor, grid: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Patch position embeddings ``[gh*gw, W]`` of ``grid`` resampled to ``new`` ``[nh*nw, W]``
    (bicubic, antialiased when shrinking; differentiable)."""
    import torch.nn.functional as F

    W = pos.shape[-1]
    g = pos.reshape(1, grid[0], grid[1], W).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=new, mode="bicubic", align_corners=False, antialias=new[0] < grid[0] or new[1] < grid[1])
    return g.permute(0, 2, 3, 1).reshape(new[0] * new[1], W).to(pos.dtype)


def text_tokens(clip, ids: torch.Tensor, replace: torch.Tensor | None = None, mask_embedding: torch.Tensor | None = None):
    """Run the text tower on ids ``[B, L]``: (pooled ``[B, C]``, E_report ``[B, L, C]``, eq. 2).

    With ``replace`` (``[B, L]`` bool), those positions get ``mask_embedding`` instead of their token.
    CLIP's tower or an HF one (:func:`maskkit.model.hf_text.hf_text_tokens`); pooled equals
    open_clip's ``encode_text``.
    """
    from .hf_text import hf_text_tokens, is_hf_tower

    if is_hf_tower(clip):
        return hf_text_tokens(clip.text, ids, replace, mask_embedding)
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(ids).to(cast)
    if replace is not None:
        x = torch.where(replace.unsqueeze(-1), mask_embedding.to(cast).expand_as(x), x)
    L = ids.shape[1]
    x = x + clip.positional_embedding[:L].to(cast)
    attn = clip.attn_mask[:L, :L] if clip.attn_mask is not None else None
    x = clip.transformer(x, attn_mask=attn)
    x = clip.ln_final(x)
    from open_clip.transformer import text_global_pool

    pooled = text_global_pool(x, ids, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    proj = clip.text_projection
    if proj is not None:
        if isinstance(proj, torch.nn.Linear):
            pooled, x = proj(pooled), proj(x)
        else:
            pooled, x = pooled @ proj, x @ proj
    return pooled, x


def patchify(img: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, 1, H, W]`` -> ``[B, N, p*p]`` row-major patches (N = H/p * W/p)."""
    B, C, H, W = img.shape
    x = img.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """``[B, N, p*p]`` -> ``[B, 1, h*p, w*p]``."""
    B = x.shape[0]
    return x.reshape(B, h, w, p, p, 1).permute(0, 5, 1, 3, 2, 4).reshape(B, 1, h * p, w * p)
