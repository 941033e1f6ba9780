"""Hugging Face text towers (open_clip's ``HFTextEncoder``: BERT, RoBERTa, ...): local folders, weights, forward.

open_clip builds such a tower when an architecture's ``text_cfg`` has ``hf_model_name`` (e.g.
BiomedCLIP's PubMedBERT, ``roberta-ViT-B-32``). maskkit never downloads: the name must be a local
folder (``config.json``), or a model already in the Hugging Face cache, or ``model.pretrained``
names a transformers model folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``),
which then gives the tower's configuration, weights and (when it holds one) tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import MaskkitError

#: the weight files of a transformers model folder, in the order transformers prefers them
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
#: files that make a folder hold a tokenizer
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")


def _msg(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def is_hf_tower(clip) -> bool:
    """Whether ``clip``'s text tower is open_clip's ``HFTextEncoder`` (a transformers model)."""
    from open_clip.hf_model import HFTextEncoder

    return isinstance(getattr(clip, "text", None), HFTextEncoder)


def set_hf_checkpointing(model, enable: bool) -> None:
    """Switch a transformers model's gradient (activation) checkpointing on or off, by the calls of
    the installed transformers (``activation_checkpointing_*`` from 5.x, ``gradient_checkpointing_*`` before)."""
    on = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    off = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
    if enable:
        on()
    elif is_checkpointing(model):
        off()


def is_checkpointing(model) -> bool:
    """Whether a transformers model recomputes its activations in the backward (gradient checkpointing)."""
    flag = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else "is_gradient_checkpointing"
    return bool(getattr(model, flag))


def transformers_folder(path: str | Path) -> Path | None:
    """``path`` when it is a transformers model folder (a ``config.json`` naming a ``model_type``,
    and no ``open_clip_config.json``), else None."""
    p = Path(path).expanduser()
    cfg = p / "config.json"
    if not p.is_dir() or not cfg.is_file() or (p / "open_clip_config.json").is_file():
        return None
    try:
        return p if "model_type" in json.loads(cfg.read_text(encoding="utf-8")) else None
    except (OSError, ValueError):
        return p  # a damaged config.json: read_config names it


def read_config(folder: Path, key: str) -> dict:
    """The ``config.json`` of a transformers folder as a dict, or one line naming what is wrong."""
    f = folder / "config.json"
    if not f.is_file():
        raise MaskkitError(f"{key}: {folder} has no config.json; expected a transformers model folder "
                           f"(config.json + model.safetensors or pytorch_model.bin)")
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MaskkitError(f"{key}: cannot read {f} ({_msg(exc)}); expected a transformers config.json") from None
    if not isinstance(cfg, dict) or "model_type" not in cfg:
        raise MaskkitError(f"{key}: {f} has no 'model_type'; expected a transformers config.json (e.g. model_type: bert)")
    return cfg


def local_folder(name: str, what: str, fix: str | None = None) -> Path:
    """A local folder for a Hugging Face model name: the name itself when it is a folder, else the
    model's snapshot in the Hugging Face cache (never downloaded). ``what`` opens the error line,
    ``fix`` ends it (default: set ``model.pretrained`` to a local folder of the model)."""
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if p.is_absolute() or name.startswith((".", "~")) or p.exists():
        raise MaskkitError(f"{what}: {p} is not a folder; expected a local transformers model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        fix = fix or "set model.pretrained to a local transformers model folder of it (config.json + model.safetensors)"
        raise MaskkitError(f"{what}: '{name}' is neither a local folder nor in the Hugging Face cache (maskkit never "
                           f"downloads); {fix}") from None


def transformers_config(folder: Path) -> dict | None:
    """The folder's ``config.json`` when it is a transformers config (it names a ``model_type``), else None."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and "model_type" in cfg else None


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).is_file() for f in TOKENIZER_FILES)


def check_model_type(folder: Path, key: str) -> dict:
    """The folder's config, refused in one line when open_clip's ``HFTextEncoder`` cannot build it."""
    from open_clip.hf_configs import arch_dict

    cfg = read_config(folder, key)
    if cfg["model_type"] not in arch_dict:
        raise MaskkitError(f"{key}: {folder / 'config.json'} has model_type '{cfg['model_type']}'; open_clip's HF text "
                           f"tower supports {', '.join(sorted(arch_dict))}")
    return cfg


def max_positions(config) -> int:
    """How many token positions the transformers ``config`` embeds (RoBERTa-style models offset
    positions by ``pad_token_id + 1``)."""
    n = int(getattr(config, "max_position_embeddings", 0) or 0)
    if n and config.model_type in ("roberta", "xlm-roberta", "camembert"):
        n -= int(config.pad_token_id or 0) + 1
    return n


def text_width(text) -> int:
    """The width of the tower's token embeddings (the size of a learned mask embedding)."""
    return int(text.transformer.get_input_embeddings().embedding_dim)


def hf_text_tokens(text, ids: torch.Tensor, replace: torch.Tensor | None = None,
                   mask_embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """An ``HFTextEncoder`` on ids ``[B, L]``: (pooled ``[B, C]``, tokens ``[B, L, C]``), both
    through the tower's projection; pooled equals open_clip's ``text(ids)``. Attention skips the
    padding (ids equal to the config's ``pad_token_id``, as open_clip). With ``replace``
    (``[B, L]`` bool) those positions' token embeddings become ``mask_embedding``."""
    attn = (ids != text.config.pad_token_id).long()
    if replace is not None:
        emb = text.transformer.get_input_embeddings()(ids)
        emb = torch.where(replace.unsqueeze(-1), mask_embedding.to(emb.dtype).expand_as(emb), emb)
        out = text.transformer(inputs_embeds=emb, attention_mask=attn)
    else:
        out = text.transformer(input_ids=ids, attention_mask=attn)
    pooled = text.pooler(out, attn)
    return text.proj(pooled), text.proj(out.last_hidden_state)


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str, list[Path], list[str]]:
    """(state dict in float32, the weights file found, the files read, the dtypes cast) of a
    transformers folder (one file or an index of shards); one-line :class:`MaskkitError` for
    missing, unreadable or non-finite weights (:func:`~maskkit.model.weights.checked_float32`)."""
    key = "model.pretrained"
    found = next((f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if found is None:
        raise MaskkitError(f"{key}: {folder} has config.json but no weights; expected one of {', '.join(WEIGHT_FILES)}")
    files = [folder / found]
    if found.endswith(".index.json"):
        try:
            index = json.loads(files[0].read_text(encoding="utf-8"))
            files = [folder / s for s in dict.fromkeys(index["weight_map"].values())]
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise MaskkitError(f"{key}: cannot read {files[0]} ({_msg(exc)}); expected a 'weight_map' of shard files") from None
    state: dict[str, torch.Tensor] = {}
    casts: set[str] = set()
    for f in files:
        if not f.is_file():
            raise MaskkitError(f"{key}: {f} is missing (listed in {found})")
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                part = load_file(str(f), device="cpu")
            else:
                part = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as exc:
            from ..errors import weights_only_line, weights_only_refusal

            why = weights_only_refusal(exc)
            if why:
                raise MaskkitError(f"{key}: {weights_only_line(f, 'state dict', why)}") from None
            raise MaskkitError(f"{key}: cannot read {f} ({_msg(exc)}); is it truncated?") from None
        if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
            raise MaskkitError(f"{key}: {f} is not a state dict of tensors")
        from .weights import checked_float32

        part, cast = checked_float32(part, f)
        casts.update([cast] if cast else [])
        state.update(part)
    return state, found, files, sorted(casts)


def load_text_folder(clip, folder: str | Path) -> str:
    """Load a transformers model folder's weights into ``clip``'s HF text tower; a one-line report.

    Keys may carry the model's base prefix (``bert.`` of a ``BertForMaskedLM``, ``roberta.``);
    heads the tower lacks (``cls.``, ``lm_head.``, an unused pooler) are left out and counted.
    A tensor whose shape differs from the tower's, or a file with no tensor of the tower, is
    refused in one line naming the file and key. The tower's projection stays as initialised.
    """
    folder = Path(folder).expanduser()
    from .weights import ignored_weights

    state, found, files, casts = _read_weights(folder)
    model = clip.text.transformer
    own = model.state_dict()
    prefix = getattr(model, "base_model_prefix", "") + "."
    if prefix != "." and not state.keys() & own.keys() and any(k.startswith(prefix) for k in state):
        state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    matched = [k for k in state if k in own]
    if not matched:
        raise MaskkitError(f"model.pretrained: no tensor of {folder / found} is a weight of the text tower "
                           f"(its keys: {', '.join(list(state)[:3])}; expected e.g. {next(iter(own))})")
    from .weights import check_depth

    check_depth(state, own, folder / found, f"the text tower is built from {folder / 'config.json'} (num_hidden_layers)")
    bad = [k for k in matched if state[k].shape != own[k].shape]
    if bad:
        k = bad[0]
        raise MaskkitError(f"model.pretrained: {folder / found}: '{k}' has shape {tuple(state[k].shape)}, the text tower "
                           f"built from {folder / 'config.json'} expects {tuple(own[k].shape)} ({len(bad)} mismatched keys)")
    res = model.load_state_dict({k: state[k] for k in matched}, strict=False)
    missing = [k for k in res.missing_keys if not k.endswith("position_ids")]
    left = sorted({k.split(".")[0] for k in state if k not in own})

    def few(keys):
        return ", ".join(keys[:3]) + (f", ... ({len(keys)} total)" if len(keys) > 3 else "")
    from .towers import untrained_towers

    untrained = untrained_towers(clip.state_dict(), {"text.transformer." + k for k in matched}, f"{folder.name}/{found}")
    return (f"loaded {len(matched)} tensors into the text tower from {folder.name}/{found}; missing {len(missing)}"
            + (f" ({few(missing)})" if missing else "") + f"; left out {len(state) - len(matched)}"
            + (f" (the tower has no {few([k + '.*' for k in left])})" if left else "") + "; format: transformers model folder" + "".join(f", {c}" for c in casts)
            + "".join(f"; {n}" for n in [ignored_weights(folder, files), *untrained] if n))
