"""Figures from a tiny model on phantoms: files are valid, and drawn masks are the mask tensors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from PIL import Image

from maskkit.viz import (composite, mask_overlay, panel_columns, read_mask_from_png, sample_views, save_png, text_html,
                         training_curves)
from model_helpers import phantom_batch, tiny_model
from run_helpers import run_main_each


@pytest.fixture(scope="module")
def views():
    model = tiny_model()
    batch = phantom_batch(3, p_unpaired=0.34)
    assert not batch["paired"].all()
    return model, batch, sample_views(model, batch, seed=0)


def test_panels_follow_the_composition(views):
    model, batch, vs = views
    paired = [v for v, p in zip(vs, batch["paired"]) if p]
    unpaired = [v for v, p in zip(vs, batch["paired"]) if not p]
    assert [p.title for p in paired[0].panels] == ["report_cross", "prompt_driven", "image_self", "union", "AttMIM (final)", "random"]
    assert [p.title for p in unpaired[0].panels] == ["prompt_driven", "image_self", "union", "AttMIM (final)", "random"]
    for v in vs:
        final = next(p for p in v.panels if p.title == "AttMIM (final)")
        assert final.mask.sum() == 27 and v.lesion is not None


def test_drawn_masks_equal_the_mask_tensors(views, tmp_path):
    model, batch, vs = views
    vs = sorted(vs, key=lambda v: len(v.panels))  # an image-only sample (fewer panels) first: columns go by title
    path = save_png(composite(vs, model.patch), tmp_path / "masks.png")
    img = Image.open(path)
    img.verify()
    size = model.image_size
    columns = panel_columns(vs)
    assert columns[:3] == ["report_cross", "prompt_driven", "image_self"]  # an image-only sample comes first here
    for r, v in enumerate(vs):
        for p in v.panels:
            drawn = read_mask_from_png(path, 2 * r + 1, 1 + columns.index(p.title), size, model.patch)
            assert np.array_equal(drawn, p.mask), (v.id, p.title)


def test_overlay_tints_exactly_the_masked_patches():
    img = np.full((32, 32), 0.5, np.float32)
    mask = np.zeros(16, bool)
    mask[[0, 5, 15]] = True
    rgb = mask_overlay(img, mask, patch=8)
    assert rgb.shape == (96, 96, 3)
    tinted = (rgb[..., 0].astype(int) - rgb[..., 2]) > 40
    per_patch = tinted.reshape(4, 24, 4, 24).all(axis=(1, 3)).flatten()
    assert np.array_equal(per_patch, mask)


def test_text_html_marks_entities_and_masked_words():
    rep = "Small right pleural effusion. No pneumothorax."
    h = text_html(rep, [(6, 11, "ANATOMY"), (30, 42, "PNEUMOTHORAX")], [(20, 28, "effusion", "effusion")])
    assert '<span class="ent" title="ANATOMY">right</span>' in h
    assert 'class="sel"' in h and "effusion → effusion" in h
    HTMLParser().feed(h)


@pytest.mark.slow
def test_cli_writes_png_html_and_curves(tmp_path):
    from maskkit.config import resolve
    from maskkit.train import train

    cfg, src = resolve(["data.n=16", "data.val_n=8", "train.steps=4", "train.batch_size=4", "train.warmup_steps=2",
                        "train.log_every=1", "runtime.progress=false", f"runtime.out_dir={tmp_path}", "runtime.name=r",
                        "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1", "model.mim.decoder_heads=2"])
    train(cfg, src)
    run = tmp_path / "r"
    argvs = [["visualize", "masks", str(run), "--n", "2", "--out", str(tmp_path / "v")],
             ["visualize", "masks", str(run), "--n", "2", "--step", "3", "--out", str(tmp_path / "s")],
             ["visualize", "text", str(run), "--n", "2", "--out", str(tmp_path / "v")],
             ["visualize", "run", str(run)]]
    for (code, err) in run_main_each(argvs):  # the commands' entry point, one interpreter for the four
        assert code in (0, None), err
    for f in ("v/masks.png", "v/masks.html", "v/text.html", "r/curves.png", "s/masks.png"):
        p = tmp_path / f
        assert p.is_file() and p.stat().st_size > 500
    Image.open(tmp_path / "v" / "masks.png").verify()
    page = (tmp_path / "v" / "masks.html").read_text()
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 2 and "http" not in page
    fig = training_curves(run)
    assert fig.axes[0].get_lines()
    # the terminal tables: a strategy's "[max_sim]" is text, not rich markup; intervals name their resamples
    env = {**os.environ, "COLUMNS": "200"}
    masks = subprocess.run([sys.executable, "-m", "maskkit.cli", "eval", "masks", str(run), "--n", "16", "--seeds", "1",
                            "--grid", "ablation"],
                           capture_output=True, text=True, env=env)
    assert masks.returncode == 0, masks.stderr
    assert "report_cross [max_sim]" in masks.stdout and "report_cross [l2]" in masks.stdout
    zs = subprocess.run([sys.executable, "-m", "maskkit.cli", "eval", "zeroshot", str(run), "--bootstrap", "20",
                         "--out", str(tmp_path / "zs.json"), "--absence-ignore", "Support Devices"],
                        capture_output=True, text=True, env=env)
    assert zs.returncode == 0, zs.stderr
    assert "95% bootstrap CI, 20 resamples" in zs.stdout
    assert "No Finding: absence" in zs.stdout and "prompts: sentence ('no pleural effusion.')" in zs.stdout
    got = json.loads((tmp_path / "zs.json").read_text())
    assert got["no_finding"] == "absence" and got["prompts"] == "sentence" and got["absence_ignore"] == ["Support Devices"]
    assert "No Finding's absence leaves out: Support Devices" in zs.stdout
    bad = subprocess.run([sys.executable, "-m", "maskkit.cli", "eval", "zeroshot", str(run), "--prompts", "sentences"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--prompts sentences: expected one of sentence, chexzero" in bad.stderr + bad.stdout


def test_figure_shows_the_mask_training_draws(views):
    """The final panel is the mask the training forward draws with the same seed (one builder, one seed rule)."""
    from maskkit.masking import mask_seed

    model, batch, _ = views
    seed = mask_seed(0, 7)
    vs = sample_views(model, batch, seed=seed)
    with torch.no_grad():
        drawn = model(batch, seed=seed).mim_mask
    for i, v in enumerate(vs):
        final = next(p for p in v.panels if p.title == "AttMIM (final)")
        assert np.array_equal(final.mask, drawn[i].numpy())


def test_training_batch_is_the_batch_the_recipe_reads(tmp_path):
    from maskkit.config import resolve
    from maskkit.masking import mask_seed
    from maskkit.train import PretrainRecipe, training_batch

    cfg, src = resolve(["data.n=24", "data.val_n=0", "train.batch_size=4", "train.grad_accum=2", "runtime.progress=false",
                        f"runtime.out_dir={tmp_path}", "runtime.name=t"])
    r = PretrainRecipe(cfg, src)
    r.setup()
    seen = [r.next_batch()["ids"] for _ in range(6)]  # steps 1-3, two micro-batches each
    for step in (1, 3):
        for micro in (0, 1):
            batch, seed = training_batch(cfg, r.model, step, micro)
            assert batch["ids"] == seen[(step - 1) * 2 + micro] and seed == mask_seed(0, step - 1, micro)
