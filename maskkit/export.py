"""``maskkit export``: a trained run's towers in the layouts open_clip and timm load without maskkit.

- ``open_clip``: open_clip's HF-hub folder (what ``open_clip.push_to_hf_hub`` writes):
  ``open_clip_model.safetensors`` (the CLIP's state dict), ``open_clip_config.json``
  (``model_cfg``: the architecture; ``preprocess_cfg``: the size, mean and std maskkit trained
  with, ``resize_mode: squash`` and ``interpolation: bilinear`` as maskkit's resize, mode ``RGB``:
  a grayscale image converted to RGB is maskkit's channel replication; ``maskkit``: where it came
  from). ``open_clip.create_model_and_transforms('local-dir:DIR')`` loads it. An HF text tower
  (BiomedCLIP's BERT) adds the tower's ``config.json`` and the tokenizer's files, and
  ``text_cfg.hf_model_name`` / ``hf_tokenizer_name`` name the folder (its absolute path), so
  open_clip builds the tower and ``open_clip.get_tokenizer('local-dir:DIR')`` its tokenizer
  offline; maskkit reads a moved folder's own ``config.json``.
- ``timm``: the image tower as a timm ``VisionTransformer`` in timm's HF-hub folder
  (``model.safetensors`` + ``config.json`` with ``architecture`` and ``model_args``: CLIP's
  ``vit_*_clip_*`` or the plain ``vit_*`` family by LayerNorm eps, ``pre_norm`` false for a tower
  without ``ln_pre`` such as BiomedCLIP's, :func:`timm_spec`), written by timm's own
  ``save_for_hf`` after timm's own conversion of the open_clip tower
  (``vision_transformer._convert_openai_clip``, :func:`timm_state`); the head is the CLIP projection. It loads with
  ``timm.create_model('local-dir:DIR', pretrained=True)`` or
  ``timm.create_model(ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=DIR/model.safetensors,
  num_classes=E), **model_args)``.

Both folders carry a model card (``README.md``). Before the folder appears, the export loads it
back with open_clip / timm and checks that it computes maskkit's embeddings (max absolute
difference at most :data:`CHECK_ATOL`, relative to the embeddings' magnitude when above 1); the folder is written atomically (a temporary sibling
renamed into place). A convolutional stem (``model.patch_embed=conv_stem``, the tiny scale's
default) has no counterpart in open_clip's or timm's plain ViT: such a run is refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import MaskkitError

FORMATS = ("open_clip", "timm")
#: the load-back check's tolerance: the largest absolute difference of embeddings (fp32) it accepts,
#: per unit of the embeddings' largest magnitude when that is above 1
CHECK_ATOL = 1e-5
#: open_clip ``vision_cfg`` keys with a value a timm ``VisionTransformer`` cannot hold (their only value it can);
#: pre-norm (``no_ln_pre``), class-token or average pooling (``pool_type``), layer scale
#: (``ls_init_value``) and LayerNorm eps 1e-5 / 1e-6 (``norm_kwargs``) it holds (:func:`timm_spec`)
_TIMM_PLAIN = {"attentional_pool": False, "final_ln_after_pool": False, "pos_embed_type": "learnable", "block_type": None,
               "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
               "scale_attn": False, "scale_fc": False, "act_kwargs": None, "timm_model_name": None}
#: open_clip ``pool_type`` -> timm ``global_pool``
_TIMM_POOL = {"tok": "token", "avg": "avg"}
#: LayerNorm eps -> the timm ViT family whose entry point builds it: CLIP's towers (``vit_*_clip_*``,
#: ``partial(LayerNorm, eps=1e-5)``) and the plain ImageNet ViTs (``vit_*_patch*_224``, timm's default 1e-6)
_TIMM_FAMILY = {1e-5: "clip", 1e-6: "plain"}
_TIMM_TIERS = {(192, 12): "tiny", (384, 12): "small", (768, 12): "base", (1024, 24): "large", (1280, 32): "huge"}


@dataclass
class Exported:
    """What :func:`export` wrote: the folder, its files, and the load-back check's largest differences."""

    path: Path
    fmt: str
    files: list[str]
    max_diff: dict[str, float] = field(default_factory=dict)


def export(run: str | Path, fmt: str, out: str | Path, overwrite: bool = False) -> Exported:
    """Write the run's towers (a run directory's latest checkpoint, or a checkpoint file) to the
    folder ``out`` in format ``fmt`` (:data:`FORMATS`).

    ``out`` must not exist or be an empty folder, unless ``overwrite`` (then it is replaced whole,
    after the new folder is complete). Raises one-line :class:`MaskkitError` for an unknown format,
    an existing ``out``, a convolutional stem, an architecture timm's ViT cannot hold, or a
    load-back check that fails.
    """
    from .io import atomic_directory
    from .training.checkpointing import checkpoint_file, load_model

    if fmt not in FORMATS:
        raise MaskkitError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MaskkitError(f"--out {out}: a file is there; expected a folder to create")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MaskkitError(f"--out {out}: folder exists and is not empty; pass --overwrite to replace it")
    from .io import check_writable_dir

    check_writable_dir(out, "--out")  # a read-only or unwritable place: one line naming --out, before the run is read
    ck = checkpoint_file(run)
    model, cfg = load_model(ck)
    if cfg.model.patch_embed != "linear":
        raise MaskkitError(f"{ck}: trained with model.patch_embed={cfg.model.patch_embed} (a convolutional stem, the tiny "
                           f"scale's default), which open_clip's and timm's plain ViT do not have; export needs a run "
                           f"trained with model.patch_embed=linear (docs/model.md, 'Export')")
    writer = _write_open_clip if fmt == "open_clip" else _write_timm
    with atomic_directory(out, overwrite=True) as tmp:
        diffs, usage = writer(model, cfg, ck, tmp, out)
        from .io import atomic_write_text

        atomic_write_text(tmp / "README.md", model_card(fmt, model, cfg, ck, usage, diffs))
        files = sorted(p.name for p in tmp.iterdir())
    return Exported(out, fmt, files, diffs)


# --- provenance --------------------------------------------------------------------------------------

def _step(ck: Path) -> int | None:
    import re

    m = re.match(r"step_(\d+)\.pt$", ck.name)
    return int(m.group(1)) if m else None


def provenance(model, cfg, ck: Path) -> dict:
    """Where an export came from: maskkit's version and commit (the exporting code's, and the one
    that trained, from the run's environment.json), the run, checkpoint, step, preset and data."""
    from . import __version__
    from .data.build import run_dir_of
    from .training.run_dir import git_revision

    run = run_dir_of(ck)
    env = {}
    if (run / "environment.json").is_file():
        try:
            env = json.loads((run / "environment.json").read_text())
        except (OSError, json.JSONDecodeError):
            env = {}
    return {"maskkit_version": __version__, "export_commit": git_revision(),
            "train_commit": env.get("maskkit_revision"), "run": str(run.resolve()), "checkpoint": ck.name,
            "step": _step(ck), "preset": cfg.preset, "scale": cfg.scale, "arch": cfg.model.arch,
            "architecture": architecture_name(model, cfg),
            "pretrained": cfg.model.pretrained, "data": _data_line(cfg),
            "input": "a grayscale X-ray in [0, 1], replicated to 3 channels, normalised by mean/std"}


def architecture_name(model, cfg) -> str:
    """What the towers are, for the model card: ``model.arch``, or, for a run that started from an
    open_clip folder (whose ``model_cfg`` is then the architecture, A54; recognised by the folder,
    or, once it is gone, by towers that are not ``model.arch``'s), the folder's name and path;
    then the image tower's size (and the text tower's kind)."""
    import open_clip

    from .model.hf_text import is_hf_tower
    from .model.towers import register_configs
    from .model.weights import is_hub_folder

    register_configs()
    pre, arch = cfg.model.pretrained, cfg.model.arch
    named = open_clip.get_model_config(arch) if arch in open_clip.list_models() else None
    if pre and (is_hub_folder(pre) or named != model.clip.maskkit_model_cfg):
        name = f"{Path(pre).name}'s model_cfg (`{pre}/open_clip_config.json`; model.arch {arch} not used)"
    else:
        name = arch
    v = model.clip.visual
    text = (f"{model.clip.text.config.model_type} text tower ({model.clip.text.config.num_hidden_layers} layers)"
            if is_hf_tower(model.clip) else f"CLIP text tower ({len(model.clip.transformer.resblocks)} layers)")
    return (f"{name}: ViT width {v.transformer.width}, {len(v.transformer.resblocks)} layers, patch {model.patch}, "
            f"{model.image_size} px; {text}")


def _data_line(cfg) -> str:
    from .data.sources import source_specs

    try:
        return " + ".join(s.describe() for s in source_specs(cfg.data))
    except MaskkitError:  # a plugin adapter no longer installed: the config's name
        return str(cfg.data.name)


# --- open_clip ---------------------------------------------------------------------------------------

def open_clip_config(model, cfg, ck: Path, out: Path | None = None) -> dict:
    """``open_clip_config.json`` of the run: ``model_cfg`` (open_clip's config of the architecture the
    run built), ``preprocess_cfg`` (what maskkit trained with) and ``maskkit`` (:func:`provenance`).
    An HF text tower's ``hf_model_name`` and ``hf_tokenizer_name`` become ``out`` (absolute), the
    folder the export writes the tower's ``config.json`` and tokenizer into."""
    import copy

    mc = copy.deepcopy(model.clip.maskkit_model_cfg)  # what the towers were built from (a timm tower rewritten)
    if out is not None and mc["text_cfg"].get("hf_model_name"):
        here = str(Path(out).resolve())
        mc["text_cfg"].update(hf_model_name=here, hf_tokenizer_name=here, hf_model_pretrained=False)
    pp = {"size": int(model.image_size), "mode": "RGB", "mean": list(model.preprocess_mean), "std": list(model.preprocess_std),
          "interpolation": "bilinear", "resize_mode": "squash", "fill_color": 0}
    return {"model_cfg": mc, "preprocess_cfg": pp, "maskkit": provenance(model, cfg, ck)}


def _probe(model, n: int = 2):
    """Fixed inputs for the load-back check: grayscale images ``[n, 1, S, S]`` in [0, 1] and
    token ids of two reports (maskkit's tokenizer)."""
    import torch

    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 1, model.image_size, model.image_size, generator=g)
    ids = model.tokenizer(["Small left pleural effusion.", "No acute cardiopulmonary process."]).ids
    return images, ids


def _max_diff(a, b) -> float:
    """The largest absolute difference of ``a`` from ``b``, divided by ``max(1, max |b|)``."""
    return float((a.float() - b.float()).abs().max() / max(1.0, float(b.abs().max())))


def _write_open_clip(model, cfg, ck: Path, tmp: Path, out: Path) -> tuple[dict[str, float], str]:
    """The open_clip folder; an HF text tower's ``config.json`` and tokenizer files go in it too
    (open_clip's ``local-dir:`` reads the tokenizer from the folder; ``hf_model_name`` names it)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from .io import atomic_write_text
    from .model.hf_text import is_hf_tower
    from .model.weights import HUB_CONFIG, HUB_SAFE_WEIGHTS

    hf = is_hf_tower(model.clip)
    state = {k: v.detach().cpu().contiguous() for k, v in model.clip.state_dict().items()}
    save_file(state, str(tmp / HUB_SAFE_WEIGHTS), metadata={"format": "pt"})
    doc = open_clip_config(model, cfg, ck, out if hf else None)
    atomic_write_text(tmp / HUB_CONFIG, json.dumps(doc, indent=2) + "\n")
    kwargs = {}
    if hf:  # inside the temporary folder (renamed to `out` once checked), the tower's files are here
        model.tokenizer.tok.save_pretrained(str(tmp))
        model.clip.text.config.save_pretrained(str(tmp))
        kwargs["text_cfg"] = {**doc["model_cfg"]["text_cfg"], "hf_model_name": str(tmp), "hf_model_pretrained": False}
    loaded, _, _ = _quiet(open_clip.create_model_and_transforms, f"local-dir:{tmp}", **kwargs)
    loaded.eval()
    images, ids = _probe(model)
    theirs = _quiet(open_clip.get_tokenizer, f"local-dir:{tmp}")(["Small left pleural effusion.", "No acute cardiopulmonary process."])
    if theirs.shape != ids.shape or not torch.equal(theirs, ids):
        raise MaskkitError(f"export check failed: open_clip.get_tokenizer('local-dir:...') gives other token ids than "
                           f"maskkit's tokenizer for the same texts (shapes {tuple(theirs.shape)}, {tuple(ids.shape)}); "
                           f"nothing was written")
    with torch.no_grad():
        want_img, _ = model.encode_image(images)
        want_txt, _ = model.encode_text(ids)
        got_img = loaded.encode_image(model.normalise(images))
        got_txt = loaded.encode_text(ids)
    diffs = {"image": _max_diff(got_img, want_img), "text": _max_diff(got_txt, want_txt)}
    _check(diffs, "open_clip.create_model_and_transforms('local-dir:...')")
    usage = open_clip_usage(hf, str(Path(out).resolve()))
    return diffs, usage


def open_clip_usage(hf: bool, exported_to: str) -> str:
    """The model card's loading recipe of an open_clip export (Python that runs as written once
    ``PATH`` is the folder). With an HF text tower, open_clip builds the tower from the
    ``config.json`` that ``text_cfg.hf_model_name`` names, the absolute path the folder was
    exported to (``exported_to``): the recipe passes the folder's current path, so it also works
    after the folder was moved, and the card says so."""
    load = "model, _, preprocess = open_clip.create_model_and_transforms('local-dir:PATH')\n"
    head = "```python\nimport open_clip\nfrom PIL import Image\n\n"
    note = ""
    if hf:
        head = "```python\nimport json\n\nimport open_clip\nfrom PIL import Image\n\n"
        load = ("text_cfg = json.load(open('PATH/open_clip_config.json'))['model_cfg']['text_cfg']\n"
                "# the text tower's config.json is in this folder: name the folder where it is now\n"
                "model, _, preprocess = open_clip.create_model_and_transforms(\n"
                "    'local-dir:PATH', text_cfg={**text_cfg, 'hf_model_name': 'PATH'})\n")
        note = (f"\n\nThe text tower is a Hugging Face model: open_clip builds it from the `config.json` that "
                f"`text_cfg.hf_model_name` in `open_clip_config.json` names, which is the absolute path this folder "
                f"was exported to (`{exported_to}`). `open_clip.create_model_and_transforms('local-dir:PATH')` alone "
                f"works there; after moving the folder, load it as above (or set `hf_model_name` to its new absolute "
                f"path). maskkit (`maskkit.load`, `model.pretrained`) reads the folder wherever it is.")
    return (head + load + "model.eval()  # open_clip returns it in training mode (dropout on)\n"
            "tokenizer = open_clip.get_tokenizer('local-dir:PATH')\n"
            "image = preprocess(Image.open('xray.png').convert('L')).unsqueeze(0)  # grey -> RGB replicates it\n"
            "image_features = model.encode_image(image)\ntext_features = model.encode_text(tokenizer(['pleural effusion']))\n```"
            + note)


def _quiet(fn, *args, **kwargs):
    """Call ``fn`` with open_clip's and timm's info/warning logging muted (they log every load)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        return fn(*args, **kwargs)
    finally:
        root.setLevel(level)


def _check(diffs: dict[str, float], how: str) -> None:
    bad = {k: v for k, v in diffs.items() if not v <= CHECK_ATOL}
    if bad:
        k, v = next(iter(bad.items()))
        raise MaskkitError(f"export check failed: {how} computes {k} embeddings {v:.2e} away from maskkit's "
                           f"(at most {CHECK_ATOL:g} expected); nothing was written")


# --- timm --------------------------------------------------------------------------------------------

def timm_spec(model) -> tuple[str, dict]:
    """(timm architecture name, ``model_args``) of a timm ``VisionTransformer`` equal to the run's
    open_clip image tower: class-token (``global_pool='token'``) or average pooling after the final
    norm (``'avg'``, ``fc_norm=False``), pre-norm or not (``pre_norm``: a CLIP ViT has ``ln_pre``, a
    plain ViT such as BiomedCLIP's ``vit_base_patch16_224`` has none), layer scale
    (``init_values``), GELU or QuickGELU, the head the CLIP projection. LayerNorm eps 1e-5 is
    timm's CLIP family (``vit_*_patch*_clip_224``), 1e-6 its plain family (``vit_*_patch*_224``):
    the entry point sets the eps, which ``model_args`` (JSON) cannot. Raises one-line
    :class:`MaskkitError` naming the ``vision_cfg`` key a timm ViT cannot hold."""
    import timm

    mc = model.clip.maskkit_model_cfg
    vc = mc.get("vision_cfg", {})
    for key, plain in _TIMM_PLAIN.items():
        if vc.get(key, plain) != plain:
            raise MaskkitError(f"--format timm: the image tower has vision_cfg.{key}={vc[key]!r}, which timm's "
                               f"VisionTransformer cannot hold (expected {plain!r}); use --format open_clip")
    pool = vc.get("pool_type", "tok")
    if pool not in _TIMM_POOL:
        raise MaskkitError(f"--format timm: the image tower has vision_cfg.pool_type={pool!r}, which timm's "
                           f"VisionTransformer cannot hold (expected one of {', '.join(map(repr, _TIMM_POOL))}); "
                           f"use --format open_clip")
    norm = dict(vc.get("norm_kwargs") or {})
    eps = float(norm.pop("eps", 1e-5))
    family = next((f for e, f in _TIMM_FAMILY.items() if abs(eps - e) <= 1e-12), None)
    if norm or family is None:
        raise MaskkitError(f"--format timm: the image tower has vision_cfg.norm_kwargs={vc['norm_kwargs']!r}; timm's "
                           f"named ViTs have LayerNorm eps 1e-5 (CLIP) or 1e-6 (ImageNet) and nothing else; "
                           f"use --format open_clip")
    v = model.clip.visual
    width, layers = int(v.conv1.out_channels), len(v.transformer.resblocks)
    heads = int(v.transformer.resblocks[0].attn.num_heads)
    quick = bool(mc.get("quick_gelu", False))
    args = {"img_size": int(model.image_size), "patch_size": int(model.patch), "embed_dim": width, "depth": layers,
            "num_heads": heads, "mlp_ratio": float(vc.get("mlp_ratio", 4.0)),
            "num_classes": int(v.proj.shape[1]) if v.proj is not None else 0, "global_pool": _TIMM_POOL[pool],
            "pre_norm": not vc.get("no_ln_pre", False)}
    if pool == "avg":
        args["fc_norm"] = False  # open_clip averages after its final norm (ln_post), as timm's norm without fc_norm
    if vc.get("ls_init_value") is not None:
        args["init_values"] = float(vc["ls_init_value"])
    tier = _TIMM_TIERS.get((width, layers), "base")
    if family == "clip":
        name = f"vit_{tier}_patch{model.patch}_clip_{'quickgelu_' if quick else ''}224"
        fallback = f"vit_base_patch16_clip_{'quickgelu_' if quick else ''}224"
    else:
        name, fallback = f"vit_{tier}_patch{model.patch}_224", "vit_base_patch16_224"
        if quick:
            args["act_layer"] = "quick_gelu"
    if name not in timm.list_models():
        name = fallback
    return name, args


def timm_state(model, net) -> dict:
    """The open_clip image tower of ``model`` as a state dict of the timm ViT ``net``
    (:func:`timm_spec`'s): timm's own conversion (``vision_transformer._convert_openai_clip``),
    plus what it leaves out: layer scales (``ls_1.gamma`` -> ``ls1.gamma``) and, for a ViT
    without pre-norm (timm gives such a patch embedding a bias; open_clip's has none), a zero
    patch-embedding bias."""
    import torch
    from timm.models.vision_transformer import _convert_openai_clip

    visual = {f"visual.{k}": v.detach().cpu() for k, v in model.clip.visual.state_dict().items()}
    state = {k.replace(".ls_1.", ".ls1.").replace(".ls_2.", ".ls2."): v
             for k, v in _convert_openai_clip(visual, net).items()}
    bias = getattr(net.patch_embed.proj, "bias", None)
    if bias is not None and "patch_embed.proj.bias" not in state:
        state["patch_embed.proj.bias"] = torch.zeros_like(bias)
    return state


def timm_model(model):
    """(name, ``model_args``, the timm ``VisionTransformer`` holding the run's image tower) of
    :func:`timm_spec`; one-line :class:`MaskkitError` when the tensors do not fit it."""
    import timm

    name, args = timm_spec(model)
    net = timm.create_model(name, pretrained=False, **args).eval()
    try:
        net.load_state_dict(timm_state(model, net), strict=True)
    except RuntimeError as exc:
        raise MaskkitError(f"--format timm: the image tower does not fit timm's {name} "
                           f"({' '.join(str(exc).split())[:300]}); use --format open_clip") from None
    return name, args, net


def _write_timm(model, cfg, ck: Path, tmp: Path, out: Path) -> tuple[dict[str, float], str]:
    name, args, diffs = write_timm_folder(model, tmp, provenance(model, cfg, ck))
    arg_text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    usage = timm_usage(name, args, int(model.image_size))
    return diffs, usage


def timm_usage(name: str, args: dict, size: int) -> str:
    """The model card's loading recipe of a timm export (Python that runs as written once ``PATH``
    is the folder): the CLIP image embedding, and a backbone without the projection head. For the
    backbone, the model's ``num_classes=0`` and the file's own in ``pretrained_cfg_overlay`` (timm
    drops the head's tensors only when the two differ; ``num_classes=0`` in both leaves them
    unexpected)."""
    E = args["num_classes"]
    rest = ", ".join(f"{k}={v!r}" for k, v in args.items() if k != "num_classes")
    return (f"```python\nimport timm\nimport torch\n\n"
            f"# the CLIP image embedding ({E} dims): model(x)\n"
            f"model = timm.create_model('local-dir:PATH', pretrained=True)\n"
            f"# or, from the weights file alone:\n"
            f"model = timm.create_model('{name}', pretrained=True, num_classes={E},\n"
            f"    pretrained_cfg_overlay=dict(file='PATH/model.safetensors', num_classes={E}),\n    {rest})\n\n"
            f"# a backbone without the CLIP projection head (segmentation, detection): num_classes=0 for the model,\n"
            f"# the file's num_classes={E} in the overlay (timm then leaves the head's tensors out)\n"
            f"backbone = timm.create_model('local-dir:PATH', pretrained=True, num_classes=0)\n"
            f"backbone = timm.create_model('{name}', pretrained=True, num_classes=0,\n"
            f"    pretrained_cfg_overlay=dict(file='PATH/model.safetensors', num_classes={E}),\n    {rest})\n"
            f"x = torch.zeros(1, 3, {size}, {size})  # images normalised as config.json's pretrained_cfg says\n"
            f"model.eval(), backbone.eval()  # timm returns them in training mode\n"
            f"tokens = backbone.forward_features(x)  # [1, 1 + patches, width]\n"
            f"embedding = model(x)  # [1, {E}]\n```\n\n"
            f"Images are grayscale replicated to 3 channels and normalised with `config.json`'s `pretrained_cfg` "
            f"mean and std.")


def write_timm_folder(model, folder: Path, meta: dict | None = None) -> tuple[str, dict, dict[str, float]]:
    """Write ``model``'s image tower (an :class:`~maskkit.model.XLIP`) into ``folder`` as timm's
    HF-hub folder (timm's ``save_for_hf``; ``pretrained_cfg`` with maskkit's preprocessing;
    ``meta`` under ``maskkit`` in ``config.json``), load it back through
    ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` and compare
    its embeddings and patch tokens with maskkit's (:func:`_check`). Returns (name,
    ``model_args``, the largest differences)."""
    import timm
    import torch
    from timm.models import save_for_hf

    from .io import atomic_write_text

    name, args, net = timm_model(model)
    save_for_hf(net, str(folder), model_args=args, safe_serialization=True)
    doc = json.loads((folder / "config.json").read_text())
    pc = doc.setdefault("pretrained_cfg", {})
    for key in ("tag", "license", "hf_hub_id"):  # the base architecture's pretrained tag, not these weights'
        pc.pop(key, None)
    pc.update({"input_size": [3, int(model.image_size), int(model.image_size)], "mean": list(model.preprocess_mean),
               "std": list(model.preprocess_std), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "squash",
               "num_classes": args["num_classes"]})  # maskkit's preprocessing (docs/assumptions.md A56)
    if meta is not None:
        doc["maskkit"] = meta
    atomic_write_text(folder / "config.json", json.dumps(doc, indent=2) + "\n")
    loaded = _quiet(timm.create_model, name, pretrained=True,
                    pretrained_cfg_overlay={"file": str(folder / "model.safetensors"), "num_classes": args["num_classes"]},
                    **args).eval()
    images, _ = _probe(model)
    with torch.no_grad():
        want, tokens = model.encode_image(images)
        x = model.normalise(images)
        feats = loaded.forward_features(x)
        got = loaded.forward_head(feats)
        got_tok = loaded.head(feats[:, loaded.num_prefix_tokens:])
    diffs = {"image": _max_diff(got, want), "image tokens": _max_diff(got_tok, tokens)}
    _check(diffs, f"timm.create_model('{name}', pretrained=True, pretrained_cfg_overlay=dict(file=...))")
    return name, args, diffs


# --- model card --------------------------------------------------------------------------------------

def zeroshot_markdown(run: Path) -> str | None:
    """The run's zero-shot table (``zeroshot.json``, written at the end of the run) as Markdown, or
    None when the run has none."""
    f = run / "zeroshot.json"
    if not f.is_file():
        return None
    try:
        doc = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    per = doc.get("per_label") or {}
    rows = ["| label | positives | AUC | F1 | ACC |", "|---|---|---|---|---|"]

    def cell(r, m):
        ci = (r.get("ci") or {}).get(m)
        return f"{r[m]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

    for lab, r in per.items():
        if r is None:
            rows.append(f"| {lab} | | undefined | undefined | undefined |")
        else:
            rows.append(f"| {lab} | {r['n_pos']}/{r['n']} | {cell(r, 'auc')} | {cell(r, 'f1')} | {cell(r, 'acc')} |")
    mean = doc.get("mean") or {}
    fmt = lambda v: "undefined" if v is None else f"**{v:.3f}**"  # noqa: E731
    rows.append(f"| **mean** | | {fmt(mean.get('auc'))} | {fmt(mean.get('f1'))} | {fmt(mean.get('acc'))} |")
    what = (doc.get("data") or {}).get("text", "the run's held-out split")
    boot = doc.get("n_boot")
    note = f"Zero-shot on {doc.get('n')} images of {what}" + (f" (95% bootstrap CI, {boot} resamples)" if boot else "")
    return note + ", written at the end of the run (`zeroshot.json`).\n\n" + "\n".join(rows)


def model_card(fmt: str, model, cfg, ck: Path, usage: str, diffs: dict[str, float]) -> str:
    """``README.md`` of an export: what the weights are, where they came from, how to load them."""
    p = provenance(model, cfg, ck)
    from .data.build import run_dir_of

    zs = zeroshot_markdown(run_dir_of(ck))
    what = "open_clip CLIP (image and text towers)" if fmt == "open_clip" else "timm ViT (the image tower)"
    lines = [f"# {Path(p['run']).name}: maskkit XLIP pretraining, {what}", "",
             f"Exported by `maskkit export --format {fmt}` from maskkit {p['maskkit_version']}.", "",
             "| | |", "|---|---|",
             f"| data | {p['data']} |", f"| preset | {p['preset']} (scale {p['scale']}) |",
             f"| steps | {p['step']} (checkpoint `{p['checkpoint']}`) |",
             f"| architecture | {p['architecture']}" + (f"; initialised from `{p['pretrained']}`" if p["pretrained"] else "") + " |",
             f"| image input | {model.image_size} px grayscale, replicated to 3 channels; mean {list(model.preprocess_mean)}, "
             f"std {list(model.preprocess_std)}; resized without keeping the aspect ratio (bilinear, antialiased) |",
             f"| maskkit version | {p['maskkit_version']} |",
             f"| trained at commit | {p['train_commit'] or 'unknown'} |", f"| exported at commit | {p['export_commit']} |",
             f"| load-back check | " + ", ".join(f"{k} max abs diff {v:.1e}" for k, v in diffs.items()) + " |", "",
             "## Loading", "", usage, "", "## Zero-shot", "",
             zs or "The run has no `zeroshot.json` (runtime.evaluations did not include zeroshot); "
                   "`maskkit eval zeroshot RUN` writes one.", ""]
    return "\n".join(lines)
