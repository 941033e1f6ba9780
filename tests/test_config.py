"""ExperimentConfig resolution: layers, sources, shorthands, and one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from maskkit.config import ConfigError, ExperimentConfig, resolve
from maskkit.errors import MaskkitError


def test_layers_and_sources(tmp_path):
    (tmp_path / "run.yaml").write_text("train:\n  lr: 0.002\n  seed: 7\nimage_mask:\n  union:\n    ratio: 0.6\n")
    cfg, src = resolve(["preset=t3_attmim", f"config={tmp_path / 'run.yaml'}", "train.lr=1e-4", "image_mask.child_ratio=0.6"])
    assert cfg.train.lr == 1e-4 and src["train.lr"] == "cli"
    assert cfg.train.seed == 7 and src["train.seed"].startswith("file:")
    assert cfg.image_mask["union"]["ratio"] == 0.6 and cfg.image_mask["union"]["child_ratio"] == 0.6
    assert src["image_mask.child_ratio"] == "cli"
    assert cfg.model.arch == "maskkit-tiny" and src["model.arch"] == "scale:tiny"
    assert src["image_mask"].startswith("file:")  # the file changed part of the preset tree
    assert src["train.momentum"] == "default" and cfg.train.momentum == 0.9


def test_paper_scale_is_the_papers_settings():
    cfg, _ = resolve(["scale=paper"])
    t = cfg.train
    assert (t.optimizer, t.lr, t.momentum, t.warmup_steps, t.batch_size) == ("sgd", 5e-5, 0.9, 15000, 64)
    assert cfg.model.arch == "ViT-B-16" and cfg.model.mim.decoder_depth == 8 and cfg.model.mlm.layers == 3
    assert cfg.image_mask == {"union": {"of": ["report_cross", "prompt_driven", "image_self"], "child_ratio": 0.7, "ratio": 0.75}}


def test_shorthands():
    cfg, src = resolve(["data=mimic", "data.root=/data/mimic", 'data.options.views=["PA"]', "image_mask.of.1=image_self"])
    assert cfg.data.name == "mimic" and src["data.name"] == "cli" and cfg.data.options == {"views": ["PA"]}
    assert cfg.image_mask["union"]["of"][1] == "image_self"


def test_presets_without_warmup():
    cfg, src = resolve(["preset=clip"])
    assert cfg.train.warmup_steps == 0 and cfg.image_mask is None and cfg.text_mask is None
    cfg, _ = resolve(["preset=t3_mim_random"])
    assert cfg.train.warmup_steps == 60  # the tiny scale's warm-up


@pytest.mark.parametrize("args,message", [
    (["train.lrr=1"], "unknown key 'train.lrr'; did you mean 'train.lr'"),
    (["train.lr=fast"], "train.lr: Input should be a valid number, unable to parse string as a number (got 'fast')"),
    (["preset=xlpi"], "unknown preset 'xlpi'; did you mean 'xlip'"),
    (["image_mask.child_ratio=1.5"], "image_mask.union.child_ratio: Input should be less than or equal to 1 (got 1.5)"),
    (["image_mask.of.0=report_crss"], "image_mask.union.of[0]: unknown strategy 'report_crss'; did you mean 'report_cross'?"),
    (["data=mimc"], "data: unknown dataset 'mimc'; did you mean 'mimic'?"),
    (["preset=clip", "image_mask.ratio=0.5"], "image_mask.ratio: image_mask is null here (preset 'clip')"),
    (["scale=huge"], "scale: unknown scale 'huge'"),
    (["lr"], "argument 'lr': expected key=value"),
    (["model.image_mask=random"], "set the strategy tree at top level (image_mask=...), not under model.image_mask"),
    (["model.init_temperature=NaN"], "model.init_temperature: Input should be a finite number"),
    (["model.max_logit_scale=Infinity"], "model.max_logit_scale: Input should be a finite number"),
    (["model.init_temperature=0.005"], "model: init_temperature 0.005 gives a logit scale of 200.0, above max_logit_scale 100"),
    (["data.num_workers=-1"], "data.num_workers: Input should be greater than or equal to 0"),
    (["data.prefetch_factor=0"], "data.prefetch_factor: Input should be greater than or equal to 1"),
])
def test_errors_are_one_line(args, message):
    with pytest.raises(MaskkitError) as e:
        resolve(args)
    assert str(e.value).startswith(message), str(e.value)
    assert "\n" not in str(e.value)


def test_frozen_and_strict():
    cfg, _ = resolve([])
    with pytest.raises(Exception):
        cfg.train.lr = 1.0
    with pytest.raises(Exception):
        ExperimentConfig(bogus=1)


def test_generated_docs_are_current():
    out = subprocess.run([sys.executable, "-m", "maskkit.docgen", "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
