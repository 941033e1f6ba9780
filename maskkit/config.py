"""The experiment configuration: one frozen pydantic model, layered from data.

Resolution order (later wins), each value remembering where it came from:

1. ``default``  — the field defaults below (the paper's training settings);
2. ``scale:NAME`` — ``scale=tiny`` (default: a CPU-sized model on phantoms that trains in
   minutes) or ``scale=paper`` (no changes: ViT-B/16, SGD 5e-5, 15,000 warm-up steps);
3. ``preset:NAME`` — a registered preset (``xlip``, ``clip``, the Table III/IV rows);
4. ``file:PATH`` — ``config=path.yaml`` (YAML, TOML or JSON), or ``config:NAME`` — a config shipped
   with maskkit by name (``config=xlip_paper_corpus``: ``maskkit/configs/NAME.yaml``, see
   :func:`builtin_configs`);
5. ``cli`` — ``key=value`` arguments (value parsed as JSON, else kept as a string).

Keys inside a strategy tree may skip the strategy name: ``image_mask.child_ratio=0.6`` sets
``image_mask.union.child_ratio``. ``data=mimic`` is short for ``data.name=mimic``. A tree value
that is a ``.yaml``/``.yml``/``.toml``/``.json`` path (``image_mask=attmim.yaml``) is the tree
stored in that file, as ``maskkit compose attmim.yaml`` reads it.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, field_validator, model_validator, ValidationInfo

from .errors import MaskkitError, close_matches
from .model.config import ModelConfig
from .options import LearningRate, LossWeight, Seed, Strict
from .roles import ROLE_BY_NAME, ROLE_NAMES as TREES
from .terms import TERMS, all_terms


class ConfigError(MaskkitError):
    """A configuration key or value that does not validate."""


class DataConfig(Strict):
    name: str = Field("phantoms", description="dataset adapter (`maskkit datasets` lists the registered ones)")
    root: str | None = Field(None, description="dataset folder (adapters that read one)")
    path: str | None = Field(None, description="CSV file (data=csv)")
    options: dict[str, Any] = Field(default_factory=dict, description="other adapter options, e.g. {\"views\": [\"PA\"], \"uncertain\": \"zeros\"}")
    sources: list[dict[str, Any]] = Field(default_factory=list, description="several sources in one run: [{name, role: paired|image_only|auto, weight, root/path/options...}] (docs/data.md); replaces name/root/path/options")
    image_size: int | None = Field(None, ge=16, description="training resolution (default: the model's)")
    cache: str | None = Field(None, description="a prepared cache folder (maskkit prepare) to read images from")
    n: int = Field(2000, ge=1, description="phantoms: number of training phantoms")
    val_n: int = Field(256, ge=0, description="phantoms: held-out phantoms for the end-of-run evaluation")
    p_unpaired: float = Field(0.2, ge=0, le=1, description="phantoms: fraction without a report (image-only)")
    seed: Seed = Field(0, description="phantoms: generator seed")
    decode_policy: Literal["skip", "raise"] = Field("skip", description="what a corrupt image does: skipped and reported, or stops the run")
    max_skip_fraction: float = Field(0.05, ge=0, le=1, description="stop when more than this fraction of images failed to decode")
    ner: Literal["lexicon", "scispacy"] = Field("lexicon", description="entity backend for EntMLM")
    ner_model: str | None = Field(None, description="scispaCy model name or path (ner=scispacy)")
    num_workers: int = Field(4, ge=0, description="DataLoader worker processes per training process (0: load in the training process)")
    pin_memory: bool = Field(True, description="page-locked host batches for faster copies to a CUDA device (ignored on the CPU)")
    prefetch_factor: int = Field(4, ge=1, description="batches each worker loads ahead")

    @model_validator(mode="after")
    def _known(self):
        from .data.sources import source_specs

        source_specs(self)  # the adapter(s) and their options, validated: one line naming source and key
        return self


class TrainConfig(Strict):
    steps: int = Field(50000, ge=1, description="optimiser steps (the paper does not give a total)")
    batch_size: int = Field(64, ge=1, description="samples per step per process (paper: 64)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimiser step; the step equals one batch of them all (an extra no-grad forward; docs/distributed.md)")
    optimizer: Literal["sgd", "adamw"] = Field("sgd", description="sgd (paper, momentum 0.9) or adamw")
    lr: LearningRate = Field(5e-5, description="peak learning rate (paper: 5e-5)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (paper: 0.9)")
    weight_decay: float = Field(0.0, ge=0, le=1, description="weight decay")
    schedule: Literal["cosine", "constant"] = Field("cosine", description="learning-rate schedule after lr_warmup_steps")
    lr_warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up steps")
    warmup_steps: int = Field(15000, ge=0, description="masked-modelling-only phase before all terms train jointly (paper: 15,000)")
    clip_grad: float | None = Field(1.0, gt=0, description="max gradient norm (null: no clipping)")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast precision where the device supports it")
    max_bad_steps: int = Field(5, ge=1, description="stop after this many skipped steps in a row (a NaN/inf loss, gradient or BatchNorm-style buffer)")
    log_every: int = Field(10, ge=1, description="steps between metrics.jsonl lines")
    ckpt_every: int = Field(1000, ge=1, description="steps between checkpoints (one is always written at the end)")
    keep_last: int = Field(3, ge=1, description="checkpoints kept (each is checked finite before it is written)")
    seed: Seed = Field(0, description="seed of model init, data order and masks")
    grad_checkpointing: bool = Field(False, description="recompute the activations of the towers' and the MIM decoder's blocks in the backward instead of keeping them (less memory, about one more forward of those blocks; docs/benchmarks.md)")
    compile: bool = Field(False, description="torch.compile the model's forward (its backward through AOTAutograd); the objectives and the optimiser stay eager; the first steps compile (docs/benchmarks.md)")
    unmasked_tune: float = Field(0.0, ge=0, lt=1, description="fraction of train.steps (rounded down) that end the run as an unmasked full-resolution tune (FLIP, CLIPA): no image mask, no patch dropout, no low-resolution view, the alignment term only, on its own cosine schedule (unmasked_tune_lr); 0: none (docs/model.md, A64)")
    unmasked_tune_lr: float = Field(0.5, gt=0, le=1, description="learning rate at the start of the unmasked tune, as a fraction of train.lr; it decays to 0 by a cosine over the tune's steps (the schedule before it spans the other steps)")

    @property
    def tune_steps(self) -> int:
        """The steps of the unmasked tune: ``floor(unmasked_tune · steps)`` (< ``steps``; 0 when off)."""
        return math.floor(self.unmasked_tune * self.steps + 1e-9)

    @property
    def tune_start(self) -> int:
        """The first step (0-based) of the unmasked tune; ``steps`` when there is none."""
        return self.steps - self.tune_steps


class _Objectives(Strict):
    """Base of the ``objectives`` section: its fields are XLIP's terms (:data:`maskkit.terms.TERMS`);
    a key that is not one must be a term a plugin registers (``register_terms``; the registry is
    read only then), with a weight in [0, 1000]. A configuration read back from a checkpoint
    (``context={"saved": True}``) keeps its plugin terms' weights without the plugin."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _plugin_terms(self, info: ValidationInfo):
        extra = self.__pydantic_extra__ or {}
        if not extra:
            return self
        from pydantic import TypeAdapter

        saved = (info.context or {}).get("saved")
        names = set() if saved else {t.name for t in all_terms()}
        for k, v in extra.items():
            if not saved and k not in names:
                raise ValueError(f"objectives.{k}: no loss term '{k}'"
                                 f"{close_matches(k, names) or '; registered: ' + ', '.join(sorted(names))}")
            try:
                extra[k] = TypeAdapter(LossWeight).validate_python(v)
            except ValidationError as exc:
                raise ValueError(f"objectives.{k}: {exc.errors()[0]['msg']} (got {v!r}); expected a number in [0, 1000]") from None
        return self


def objectives_model(terms=TERMS) -> type[Strict]:
    """The ``objectives`` section: one weight per row of ``terms`` (a table like
    :data:`maskkit.terms.TERMS`), defaulting to the row's ``default_weight``; plus the weights of
    the terms plugins register (:class:`_Objectives`)."""
    return create_model(
        "ObjectivesConfig", __base__=_Objectives, __doc__="The weight of each term of maskkit.terms.TERMS.",
        **{t.name: (LossWeight, Field(t.default_weight, description=f"weight of {t.log_key}: {t.description} (0 to 1000)")) for t in terms},
    )


ObjectivesConfig = objectives_model()


class RuntimeConfig(Strict):
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:1, ...")
    devices: int = Field(1, ge=1, description="processes (GPUs) for DistributedDataParallel; >1 launches torchrun")
    out_dir: str = Field("runs", description="folder holding run directories")
    name: str | None = Field(None, description="run directory name; default <preset>-<scale>-seed<k>, numbered -2, -3, ... when it exists")
    overwrite: bool = Field(False, description="allow replacing an existing run directory")
    resume: str | None = Field(None, description="'latest' (the run directory's newest checkpoint), 'auto' (the newest when there is one, else a new run in that directory: the one command a requeued job repeats) or a checkpoint path")
    evaluations: list[str] = Field(["zeroshot"], description="evaluations run on the held-out data at the end of the run, each "
                                   "written to <run>/<name>.json (`maskkit eval --help` lists them; [] for none)")
    progress: bool = Field(True, description="show the progress bar")


    @field_validator("device")
    @classmethod
    def _device(cls, v: str, info: ValidationInfo) -> str:
        """A device this machine has (:func:`maskkit.options.device_error`); a config read back from a
        checkpoint (``context={"saved": True}``) is not checked: it is evaluated wherever it is now."""
        from .options import device_error

        if not (info.context or {}).get("saved"):
            why = device_error(v)
            if why:
                raise ValueError(f"runtime.device: {why}")  # names its value: no "(got ...)" added
        return v

    @model_validator(mode="after")
    def _enough_gpus(self, info: ValidationInfo):
        from .options import device_error

        if self.devices > 1 and not (info.context or {}).get("saved"):
            why = device_error(self.device, self.devices)
            if why:
                raise ValueError(f"runtime.devices={self.devices}: {why}")
        return self

    @field_validator("evaluations", mode="before")
    @classmethod
    def _evaluation_list(cls, v: Any) -> Any:
        """``[zeroshot,retrieval]`` as written on a command line (not JSON) or one name: a list of names."""
        if isinstance(v, str):
            inner = v.strip()
            inner = inner[1:-1] if inner.startswith("[") and inner.endswith("]") else inner
            return [p.strip().strip("'\"") for p in inner.split(",") if p.strip()]
        return v

    @field_validator("evaluations")
    @classmethod
    def _registered(cls, v: list[str], info: ValidationInfo) -> list[str]:
        """Every name a registered evaluation (built-in or a plugin's), each once. A config read back
        from a checkpoint (``context={"saved": True}``) is not checked against the registry: its run
        is evaluated whatever plugins are installed now."""
        from .plugins import get_registry

        if not (info.context or {}).get("saved"):
            reg = get_registry()
            for name in v:
                reg.evaluation(name)  # one line: unknown (close matches / every name) or refused to two plugins
        dup = next((n for n in v if v.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"'{dup}' is listed twice")
        return v


#: keys that maskkit no longer reads -> the one line saying what replaced them
RENAMED = {"runtime.eval_zeroshot": "runtime.eval_zeroshot was replaced by runtime.evaluations, a list of evaluations run at "
                                    "the end: runtime.evaluations=[] for none, runtime.evaluations=[zeroshot] for the zero-shot table"}


def migrate_saved(saved: dict) -> dict:
    """A config saved by an older maskkit (a checkpoint's) in today's keys: ``runtime.eval_zeroshot``
    true/false becomes ``runtime.evaluations`` [zeroshot] / []."""
    rt = saved.get("runtime")
    if isinstance(rt, dict) and "eval_zeroshot" in rt:
        rt = dict(rt)
        rt.setdefault("evaluations", ["zeroshot"] if rt.pop("eval_zeroshot") else [])
        saved = {**saved, "runtime": rt}
    return saved


class ExperimentConfig(Strict):
    preset: str = Field("xlip", description="the preset this config was built from")
    scale: Literal["tiny", "paper"] = Field("tiny", description="tiny: CPU-sized run on phantoms; paper: the paper's settings")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(), description="towers, decoders, prompts")
    image_mask: Any = Field(None, description=ROLE_BY_NAME["image_mask"].description)
    image_only_mask: Any = Field(None, description=ROLE_BY_NAME["image_only_mask"].description)
    text_mask: Any = Field(None, description=ROLE_BY_NAME["text_mask"].description)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    objectives: ObjectivesConfig = Field(default_factory=ObjectivesConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    #: role -> (the tree as JSON, its built root): each tree is built once, when the config validates
    _built: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _trees(self):
        from .model.config import check_image_path

        for t in TREES:
            self.strategy(t)  # built (and validated) here, once: the model and config.json reuse it
        check_image_path(self.model, self.image_mask is not None or self.image_only_mask is not None)
        return self

    def strategy(self, role: str):
        """The built root (:class:`~maskkit.core.MaskStrategy`) of strategy tree ``role``
        (:data:`maskkit.roles.ROLES`), or None when it is null. Built when the config validates
        and reused by the model (:meth:`maskkit.model.XLIP.from_experiment`) and the run's
        ``config.json``; a copy whose tree was replaced builds its own."""
        tree = getattr(self, role)
        if tree is None:
            return None
        key = json.dumps(tree, sort_keys=True, default=str)
        hit = self._built.get(role)
        if hit is None or hit[0] != key:
            from .compose import build_strategy

            hit = self._built[role] = (key, build_strategy(tree, path=role))
        return hit[1]



SCALES: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": {"arch": "maskkit-tiny", "patch_embed": "conv_stem",
                  "mim": {"decoder_depth": 2, "decoder_width": 128, "decoder_heads": 4, "lowres_scale": 0.67},
                  "mlm": {"layers": 2, "heads": 4}},
        "data": {"name": "phantoms", "n": 1024, "val_n": 256, "num_workers": 0},
        "train": {"steps": 240, "batch_size": 16, "optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.05,
                  "lr_warmup_steps": 10, "warmup_steps": 60, "ckpt_every": 100, "log_every": 10},
    },
    "paper": {},
}


# --- layering --------------------------------------------------------------------------------

def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted leaf paths of nested dicts; strategy trees and ``data.options`` are leaves."""
    out = {}
    for k, v in d.items():
        p = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v and p not in TREES and p not in ("data.options", "data.sources"):
            out.update(_flatten(v, p))
        else:
            out[p] = v
    return out


def _tree_set(tree: Any, keys: list[str], value: Any, where: str) -> Any:
    """Set ``keys`` inside a strategy tree, descending through one-key {name: config} nodes."""
    if not keys:
        return value
    tree = copy.deepcopy(tree)
    node = tree
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise ConfigError(f"{where}: '{k}' is not an index of a list of {len(node)} strategies")
            if last:
                node[int(k)] = value
            else:
                if isinstance(node[int(k)], str):
                    node[int(k)] = {node[int(k)]: {}}
                node = node[int(k)]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: cannot set '{k}' inside {node!r}")
        if k not in node and len(node) == 1:
            (name, cfg), = node.items()
            if cfg is None:
                cfg = node[name] = {}
            if isinstance(cfg, dict) and k != name:
                node = cfg
        if last:
            node[k] = value
        else:
            nxt = node.get(k)
            if isinstance(nxt, str):
                nxt = node[k] = {nxt: {}}
            if nxt is None:
                nxt = node[k] = {}
            node = nxt
    return tree


def _tree_value(value: Any, path: str, source: str) -> Any:
    """A strategy-tree value that names a composition file (``.yaml``/``.yml``/``.toml``/``.json``)
    is that file's tree, as ``maskkit compose FILE`` reads it; a relative path given in a config
    file is relative to that file's folder."""
    from .compose import COMPOSITION_SUFFIXES, load_spec

    if not isinstance(value, str) or Path(value).suffix.lower() not in COMPOSITION_SUFFIXES:
        return value

    p = Path(value).expanduser()
    if source.startswith("file:") and not p.is_absolute():
        p = Path(source[len("file:"):]).parent / p
    elif source.startswith("config:") and not p.is_absolute():
        p = _builtin_config_path(source[len("config:"):]).parent / p
    if not p.is_file():
        raise ConfigError(f"{path}={value}: composition file {p} does not exist (from {source})")
    try:
        return load_spec(p)
    except MaskkitError as exc:
        raise ConfigError(f"{path}={value}: {exc}") from None


def _set(cfg: dict, sources: dict, path: str, value: Any, source: str, valid_paths: set[str]) -> None:
    parts = path.split(".")
    if parts[0] in TREES:
        value = _tree_value(value, path, source)
        if len(parts) == 1:
            cfg[parts[0]] = value
        else:
            if cfg.get(parts[0]) is None:
                raise ConfigError(f"{path}: {parts[0]} is null here (preset '{cfg.get('preset')}'); set {parts[0]}=<tree> first")
            cfg[parts[0]] = _tree_set(cfg[parts[0]], parts[1:], value, path)
        sources[path] = source
        return
    if path == "data" and isinstance(value, str):
        path, parts = "data.name", ["data", "name"]
    if path == "data.sources" and isinstance(value, list) and not value:  # [] would silently train on the default dataset
        raise ConfigError(f"data.sources is empty; expected at least one entry such as {{name: csv, path: x.csv}} "
                          f"(or leave data.sources out for the single-source form data=NAME) (from {source})")
    _check_shape(path, value, source, valid_paths)
    if path in ("data.options", "data.sources"):  # each option / entry key remembers where it was set (config show)
        for k in [k for k in sources if k.startswith(path + ".")]:
            del sources[k]
        if path == "data.options" and isinstance(value, dict):
            sources.update({f"data.options.{k}": source for k in value})
    if parts[:2] == ["data", "sources"] and len(parts) > 2:
        _set_source_entry(cfg, parts[2:], value, path, source)
        sources[path] = source
        return
    if not _check_key(path, value, source, valid_paths):
        for k, v in value.items():
            _set(cfg, sources, f"{path}.{k}", v, source, valid_paths)
        return
    node = cfg
    for k in parts[:-1]:
        node = node.setdefault(k, {})
    node[parts[-1]] = value
    sources[path] = source


def _kind(value: Any) -> str:
    """How a shape error names a value's kind: ``a list``, ``a mapping``, ``null``, ``a string ('x')``."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value!r})"
    return f"a string ({str(value)!r})"


#: the example each shape error gives
_SOURCE_ENTRY = "{name: csv, path: x.csv}"


def _check_shape(path: str, value: Any, source: str, valid_paths: set[str]) -> None:
    """The one place a value's shape is checked against where it goes, before its keys are: a
    section (``data``, ``train``, ``model.mim``) takes a mapping of its keys (``data`` also a
    dataset name), ``data.sources`` a list of mappings, ``data.options`` a mapping. One line naming
    the key (``data.sources[0]``), what was expected and what was given:
    ``data: expected a mapping of its keys, got a list (from file:cfg.yaml)``."""
    where = f" (from {source})"
    if path == "data.sources":
        if not isinstance(value, list):
            raise ConfigError(f"data.sources: expected a list of entries such as [{_SOURCE_ENTRY}], got {_kind(value)}{where}")
        for i, entry in enumerate(value):
            if not isinstance(entry, dict):
                raise ConfigError(f"data.sources[{i}]: expected a mapping such as {_SOURCE_ENTRY}, got {_kind(entry)}{where}")
        return
    if path == "data.options":
        if not isinstance(value, dict):
            raise ConfigError(f"data.options: expected a mapping of adapter options such as {{uncertain: zeros}}, got {_kind(value)}{where}")
        return
    section = path not in valid_paths and any(v.startswith(path + ".") for v in valid_paths)
    if section and not isinstance(value, dict) and not (path == "data" and isinstance(value, str)):
        also = " or a dataset name (data=mimic)" if path == "data" else ""
        raise ConfigError(f"{path}: expected a mapping of its keys{also}, got {_kind(value)}{where}")


def _check_key(path: str, value: Any, source: str, valid_paths: set[str]) -> bool:
    """True when ``path`` (not a strategy-tree or ``data.sources`` key) is a config key; False when
    it is a section given a mapping (``train={"lr": 1e-4}``: each of its keys is one); else the
    one-line :class:`ConfigError` (a renamed key, an unknown key with its close matches)."""
    parts = path.split(".")
    if path in RENAMED:
        raise ConfigError(f"{RENAMED[path]} (from {source})")
    if path in valid_paths or any(path.startswith(p + ".") for p in valid_paths if p.endswith("options")):
        return True
    if isinstance(value, dict) and any(v.startswith(path + ".") for v in valid_paths):
        return False
    if parts[0] == "model" and parts[-1] in TREES:
        raise ConfigError(f"set the strategy tree at top level ({parts[-1]}=...), not under model.{parts[-1]} (from {source})")
    raise ConfigError(f"unknown key '{path}'{close_matches(path, valid_paths) or ''} (from {source})")


def _check_cli_keys(pairs: list[tuple[str, Any]], valid_paths: set[str]) -> None:
    """Refuse an unknown or renamed command-line key before the registry (and torch) loads: the same
    line :func:`_set` gives, in a fraction of a second. Tree and ``data.sources`` keys are checked
    where they are set (they depend on the preset's tree and list)."""
    for path, value in pairs:
        if path.split(".")[0] in TREES or path.startswith("data.sources."):
            continue
        _check_shape(path, value, "cli", valid_paths)
        if path == "data":
            continue
        if not _check_key(path, value, "cli", valid_paths) and isinstance(value, dict):
            _check_cli_keys([(f"{path}.{k}", v) for k, v in value.items()], valid_paths)


def _set_source_entry(cfg: dict, keys: list[str], value: Any, path: str, source: str) -> None:
    """``data.sources.1.root=/data/padchest``: one key of one entry of ``data.sources`` (e.g. a root
    of a shipped config); the index must name an existing entry."""
    data = cfg.setdefault("data", {})
    entries = copy.deepcopy(data.get("sources") or [])  # never the preset's or file's own list
    i = keys[0]
    if not i.isdigit() or int(i) >= len(entries):
        raise ConfigError(f"{path}: '{i}' is not an index of data.sources, which has {len(entries)} "
                          f"entr{'y' if len(entries) == 1 else 'ies'} here (from {source})")
    if len(keys) == 1:
        entries[int(i)] = value
    else:
        node = entries[int(i)]
        for k in keys[1:-1]:
            if not isinstance(node, dict):
                break
            node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: cannot set '{keys[-1]}' inside {node!r} (from {source})")
        node[keys[-1]] = value
    data["sources"] = entries


def _deep_merge(base: Any, new: Any) -> Any:
    if isinstance(base, dict) and isinstance(new, dict):
        out = dict(base)
        for k, v in new.items():
            out[k] = _deep_merge(base.get(k), v) if k in base else v
        return out
    return new


def _merge_layer(cfg: dict, sources: dict, layer: dict, source: str, valid_paths: set[str]) -> None:
    for path, value in _flatten(layer).items():
        old = cfg.get(path) if path in TREES else None
        if isinstance(old, dict) and isinstance(value, dict) and len(old) == len(value) == 1 and old.keys() == value.keys():
            value = _deep_merge(old, value)  # same strategy at the root: a file may change only some keys
        _set(cfg, sources, path, value, source, valid_paths)


def parse_value(raw: str, key: str | None = None) -> Any:
    """``key=value`` values: JSON when they parse (numbers, true, null, lists, objects); else a
    value that starts with ``[`` or ``{`` is YAML flow style, as a config file writes it
    (``[{name: csv, path: x.csv}]``), and one that parses as neither is a one-line
    :class:`ConfigError` naming ``key``; else the string."""
    from .io import DuplicateKeyError, load_json, load_yaml

    try:
        return load_json(raw)
    except json.JSONDecodeError:
        pass
    except DuplicateKeyError as exc:
        raise ConfigError(f"{key or 'value'}: {raw!r}: {exc}") from None
    if raw.lstrip().startswith(("[", "{")):
        import yaml

        try:
            return load_yaml(raw)
        except DuplicateKeyError as exc:
            at = f"at character {exc.column}: " if exc.line == 1 else f"line {exc.line}: "
            raise ConfigError(f"{key or 'value'}: {raw!r}: {at}key {str(exc.key)!r} given twice in one mapping; "
                              f"give each key once") from None
        except yaml.YAMLError as exc:
            why = " ".join(str(getattr(exc, "problem", None) or exc).split())
            mark = getattr(exc, "problem_mark", None)
            at = f" at character {mark.column + 1}" if mark is not None and mark.line == 0 else ""
            raise ConfigError(f"{key or 'value'}: {raw!r} starts with {raw.lstrip()[0]!r} but is neither JSON nor YAML flow "
                              f"style ({why}{at}); e.g. [{{name: csv, path: x.csv}}] or [1, 2]") from None
    return raw


#: the folder of the configs shipped with maskkit (package data): ``config=NAME`` reads NAME.yaml there
BUILTIN_CONFIGS = "configs"


def builtin_configs() -> list[str]:
    """The names of the configs shipped with maskkit (``config=NAME``), sorted."""
    from importlib import resources

    folder = resources.files("maskkit") / BUILTIN_CONFIGS
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".yaml")) if folder.is_dir() else []


def _builtin_config_path(name: str) -> Path:
    from importlib import resources

    return Path(str(resources.files("maskkit") / BUILTIN_CONFIGS / f"{name}.yaml"))


def config_file(value: str) -> tuple[Path, str]:
    """(the file, its source label) of ``config=VALUE``: a file path (``file:VALUE``), else a config
    shipped with maskkit by name, with or without ``.yaml`` (``config:NAME``, read from the installed
    package); anything else is one line listing the shipped ones."""
    p = Path(value).expanduser()
    if p.is_file():
        return p, f"file:{value}"
    name = p.name[:-5] if p.name.endswith(".yaml") and p.parent == Path(".") else str(value)
    if name in builtin_configs():
        return _builtin_config_path(name), f"config:{name}"
    shipped = builtin_configs()
    raise ConfigError(f"config={value}: no such file, nor a config shipped with maskkit"
                      f"{close_matches(Path(name).stem, shipped) or ''}; shipped: {', '.join(shipped) or 'none'}")


def load_file(path: str | Path) -> dict:
    """The mapping of config keys in ``path`` (YAML, TOML or JSON); one line when it is not one."""
    from .compose import load_spec

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config: file {p} does not exist")
    data = load_spec(p)
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys at the top level")
    return data


def resolve(args: list[str] | dict[str, Any] = ()) -> tuple[ExperimentConfig, dict[str, str]]:
    """Build the ExperimentConfig from ``key=value`` arguments; returns it and each key's source."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(args, dict):
        pairs = list(args.items())
    else:
        for a in args:
            if "=" not in a:
                raise ConfigError(f"argument '{a}': expected key=value (e.g. preset=xlip train.lr=1e-4)")
            k, v = a.split("=", 1)
            pairs.append((k.strip(), parse_value(v, k.strip())))
    special = {k: v for k, v in pairs if k in ("preset", "scale", "config")}
    rest = [(k, v) for k, v in pairs if k not in ("preset", "scale", "config")]
    preset_name = special.get("preset", "xlip")
    scale = special.get("scale", "tiny")
    if scale not in SCALES:
        raise ConfigError(f"scale: unknown scale '{scale}'{close_matches(str(scale), SCALES)}; expected tiny or paper")
    valid = key_paths() | set(TREES)
    if any(k.startswith("objectives.") and k not in valid for k, _ in rest):  # a plugin's term: the registry knows it
        valid |= {f"objectives.{t.name}" for t in all_terms()}
    _check_cli_keys(rest, valid)
    from .plugins import get_registry  # (imports torch: after the command line's keys are checked)

    preset = get_registry().preset(str(preset_name))
    valid |= {f"objectives.{t.name}" for t in all_terms()}  # a preset's or file's weight of a plugin's term
    base = _defaults()
    cfg = copy.deepcopy(base)
    sources = {p: "default" for p in _flatten(base)}
    _merge_layer(cfg, sources, SCALES[scale], f"scale:{scale}", valid)
    cfg["scale"], sources["scale"] = scale, "cli" if "scale" in special else "default"
    for t in TREES:
        cfg[t] = None
    _merge_layer(cfg, sources, preset.config, f"preset:{preset.name}", valid)
    cfg["preset"], sources["preset"] = preset.name, "cli" if "preset" in special else "default"
    if "config" in special:
        path, label = config_file(str(special["config"]))
        _merge_layer(cfg, sources, load_file(path), label, valid)
    for k, v in rest:
        _set(cfg, sources, k, v, "cli", valid)
    _pretrained_patch_embed(cfg, sources)
    try:
        config = ExperimentConfig(**cfg)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, valid)) from None
    except MaskkitError as exc:
        raise ConfigError(str(exc)) from None
    for key, why in unread_keys(config).items():
        src = sources.get(key) or next((v for k, v in sources.items() if k.startswith(key + ".")), "default")
        if src.startswith(USER_LAYERS):
            raise ConfigError(f"{key}: {why}; remove {key} (from {src})")
    return config, sources


def _pretrained_patch_embed(cfg: dict, sources: dict) -> None:
    """``model.pretrained`` with a convolutional stem (docs/assumptions.md A66): the stem replaces
    the pretrained patch embedding (``visual.conv1``), whose weights would be dropped. The tiny
    scale's ``conv_stem`` default yields (``linear``, its source ``scale:tiny (model.pretrained)``);
    a ``conv_stem`` a user, preset or file chose is refused in one line naming both keys and the fix."""
    m = cfg.get("model") or {}
    if not m.get("pretrained") or m.get("patch_embed") != "conv_stem":
        return
    src = sources.get("model.patch_embed", "default")
    if src.startswith("scale:"):
        m["patch_embed"], sources["model.patch_embed"] = "linear", f"{src} (model.pretrained)"
        return
    raise ConfigError(f"model.patch_embed=conv_stem (from {src}) with model.pretrained={m['pretrained']} (from "
                      f"{sources.get('model.pretrained', 'default')}): a convolutional stem replaces the pretrained patch "
                      f"embedding, whose weights would be dropped; set model.patch_embed=linear")


#: the layers a user writes (the command line, a config file, a shipped config chosen by name): a key
#: nothing reads is refused when one of them set it (a scale's or preset's default is only not shown)
USER_LAYERS = ("cli", "file:", "config:")


def unread_keys(config: ExperimentConfig) -> dict[str, str]:
    """The keys of ``config`` that nothing reads, each with why (today the ``data.*`` keys that the
    chosen dataset, or ``data.sources``, leaves unread: :func:`maskkit.data.sources.unread_data_keys`).
    :func:`resolve` refuses one a user set; :func:`show_rows` leaves them out."""
    from .data.sources import unread_data_keys

    return unread_data_keys(config.data)


_RANGE_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number")


def _field_range(loc: tuple) -> str:
    """``; expected <what> in <range>`` for the numeric key at ``loc`` of :class:`ExperimentConfig`
    (:func:`maskkit.options.allowed`), or "" when ``loc`` is not a plain key of its models."""
    from .options import allowed

    model: Any = ExperimentConfig
    for i, part in enumerate(loc):
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or not fields or part not in fields:
            return ""
        if i == len(loc) - 1:
            what = allowed(model, part)
            return f"; expected {what}" if " in " in what else ""
        model = fields[part].annotation
    return ""


def _one_line(exc: ValidationError, valid: set[str]) -> str:
    e = exc.errors()[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(e["loc"]))
    msg = e["msg"].removeprefix("Value error, ")
    got = e.get("input")
    got_s = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    if e["type"] == "extra_forbidden":
        return f"unknown key '{loc}'{close_matches(loc, valid) or ''}"
    if loc and (msg.startswith(loc + ":") or msg.startswith(loc + ".") or msg.startswith(loc + " (")):
        return msg  # the message already names its key (data.sources[1] (padchest): ...)
    rng = _field_range(tuple(e["loc"])) if e["type"] in _RANGE_ERRORS else ""
    return f"{loc}: {msg}{got_s}{rng}" if loc else f"{msg}"


def key_paths(model: type[BaseModel] = None, prefix: str = "") -> set[str]:
    """Every dotted key of ``model`` (default :class:`ExperimentConfig`), read from its fields: no
    validator runs (the registry, hence torch, is not loaded); the keys of :func:`_defaults`."""
    out: set[str] = set()
    for name, f in (model or ExperimentConfig).model_fields.items():
        p = f"{prefix}.{name}" if prefix else name
        a = f.annotation
        out |= key_paths(a, p) if isinstance(a, type) and issubclass(a, BaseModel) else {p}
    return out


def _defaults() -> dict:
    return ExperimentConfig.model_validate({}).model_dump(mode="json")


def flat_items(config: ExperimentConfig) -> dict[str, Any]:
    """Every resolved key with its value (trees as one value)."""
    return _flatten(config.model_dump(mode="json"))


def show_rows(config: ExperimentConfig, sources: dict[str, str]) -> list[tuple[str, Any, str]]:
    """(key, value, where it came from) of every resolved key that something reads, as ``maskkit
    config show`` prints them: each ``data.options`` option and each key of each ``data.sources``
    entry on its own row with its own source (a key set alone, ``data.options.uncertain=zeros``, or
    with its mapping). Keys nothing reads with this config (:func:`unread_keys`) are left out."""
    rows = []
    unread = unread_keys(config)
    for key, value in flat_items(config).items():
        if key in unread:  # nothing reads it with this config (data.n without the phantoms, ...)
            continue
        whole = sources.get(key) or next((v for k, v in sources.items() if k.startswith(key + ".")), "default")
        if key == "data.options" and value:
            rows += [(f"{key}.{k}", v, sources.get(f"{key}.{k}", whole)) for k, v in value.items()]
        elif key == "data.sources" and value:
            for i, entry in enumerate(value):
                for k, v in (entry.items() if isinstance(entry, dict) else [("", entry)]):
                    sub = f"{key}.{i}.{k}".rstrip(".")
                    nested = [(f"{sub}.{o}", ov) for o, ov in v.items()] if k == "options" and isinstance(v, dict) and v else [(sub, v)]
                    rows += [(n, nv, sources.get(n) or sources.get(sub) or sources.get(f"{key}.{i}") or sources.get(key, "default"))
                             for n, nv in nested]
        else:
            rows.append((key, value, whole))
    return rows

