"""train.unmasked_tune: the unmasked full-resolution tune that ends a run (FLIP, CLIPA; A64)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from maskkit.config import resolve
from maskkit.errors import MaskkitError
from maskkit.train import PretrainRecipe, train
from test_sparse import _first_block_tokens

SMALL = ["data.n=24", "data.val_n=0", "train.batch_size=4", "train.log_every=1", "runtime.progress=false",
         "runtime.evaluations=[]", "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mim.decoder_heads=2",
         "model.mlm.layers=1", "train.lr_warmup_steps=1"]


def _cfg(tmp_path, *extra):
    return resolve(SMALL + [f"runtime.out_dir={tmp_path}", *extra])


@pytest.mark.parametrize("frac,steps,tune", [(0.1, 240, 24), (0.1, 180, 18), (0.1, 9, 0), (0.29, 100, 29), (0.5, 1, 0),
                                             (0.0, 50, 0), (0.99, 10, 9)])
def test_the_tune_is_the_last_fraction_of_the_steps_rounded_down(frac, steps, tune):
    cfg, _ = resolve([f"train.unmasked_tune={frac}", f"train.steps={steps}"])
    assert cfg.train.tune_steps == tune and cfg.train.tune_start == steps - tune


@pytest.mark.parametrize("args,message", [
    (["train.unmasked_tune=-0.1"], "train.unmasked_tune: Input should be greater than or equal to 0"),
    (["train.unmasked_tune=1"], "train.unmasked_tune: Input should be less than 1"),
    (["train.unmasked_tune=24"], "train.unmasked_tune: Input should be less than 1"),
    (["train.unmasked_tune=some"], "train.unmasked_tune: Input should be a valid number"),
    (["train.unmasked_tune_lr=0"], "train.unmasked_tune_lr: Input should be greater than 0"),
    (["train.unmasked_tune_lr=2"], "train.unmasked_tune_lr: Input should be less than or equal to 1"),
])
def test_bad_tune_keys_fail_with_one_line(args, message):
    with pytest.raises(MaskkitError) as e:
        resolve(["preset=xlip-sparse", *args])
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_presets_tune_the_last_tenth():
    for preset in ("xlip-sparse", "clip-flip"):
        cfg, _ = resolve([f"preset={preset}"])
        assert cfg.train.unmasked_tune == 0.1 and cfg.train.tune_steps == 24, preset
    cfg, _ = resolve(["preset=clip-flip"])
    assert cfg.train.warmup_steps == 0  # the preset's own train key is kept beside the tune's
    for preset in ("clip", "xlip"):
        assert resolve([f"preset={preset}"])[0].train.tune_steps == 0


def test_the_tune_runs_its_own_schedule():
    from maskkit.training.optim import lr_factor

    cfg, _ = resolve(["train.steps=20", "train.lr_warmup_steps=2", "train.unmasked_tune=0.25", "train.unmasked_tune_lr=0.4"])
    f = [lr_factor(s, cfg) for s in range(20)]
    assert f[:2] == [0.5, 1.0]
    span = 15 - 2  # the main cosine spans the steps before the tune (step 15 on)
    assert f[14] == pytest.approx(0.5 * (1 + math.cos(math.pi * 12 / span)))
    assert f[15] == pytest.approx(0.4) and f[17] == pytest.approx(0.4 * 0.5 * (1 + math.cos(math.pi * 2 / 5)))
    assert all(a > b for a, b in zip(f[15:], f[16:]))
    # without a tune: the schedule is the one cosine over the whole run
    plain, _ = resolve(["train.steps=20", "train.lr_warmup_steps=2"])
    assert [lr_factor(s, plain) for s in (5, 19, 20)] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * (s - 2) / 18)) for s in (5, 19)] + [0.0])
    const, _ = resolve(["train.steps=20", "train.schedule=constant", "train.unmasked_tune=0.25", "train.unmasked_tune_lr=0.4"])
    assert lr_factor(14, const) == 1.0 and lr_factor(15, const) == lr_factor(19, const) == 0.4


@pytest.mark.parametrize("preset,before", [("xlip-sparse", [16, 18]), ("clip-flip", [18]), ("xlip", [36])])
def test_tune_steps_see_every_patch_at_full_resolution(tmp_path, preset, before):
    """Through the recipe: the steps before the tune encode the low-resolution view and the visible
    half (xlip-sparse), half the patches (clip-flip) or the full image (xlip); every tune step is
    one gradient pass of the image tower over all 36 patches of the 96 px image, in position order,
    in every row, and trains the alignment only (MIM and MLM logged null)."""
    r = PretrainRecipe(*_cfg(tmp_path, f"preset={preset}", "train.steps=4", "train.warmup_steps=0",
                             "train.unmasked_tune=0.5", "runtime.name=r"))
    try:
        r.setup()
        seen = _first_block_tokens(r.model)
        for step in range(4):
            seen.clear()
            res = r.train_step()
            tokens = sorted(n for g, n, _ in seen if g)
            if step < 2:
                assert tokens == before, (step, tokens)
                continue
            assert tokens == [36] and len(seen) == 1, (step, [(g, n) for g, n, _ in seen])
            _, _, idx = seen[0]
            assert torch.equal(idx, torch.arange(36).expand(idx.shape[0], 36))
            assert res.values["align"] is not None
            assert all(res.values[n] is None for n in res.values if n != "align")
    finally:
        r.discard_unstarted_run_dir()


def test_the_tune_leaves_the_decoders_and_their_optimiser_state_unchanged(tmp_path):
    r = PretrainRecipe(*_cfg(tmp_path, "preset=xlip-sparse", "train.steps=4", "train.warmup_steps=1",
                             "train.unmasked_tune=0.5", "runtime.name=r"))
    try:
        r.setup()
        r.train_step(), r.train_step()
        frozen = {id(p): (p.detach().clone(), {k: v.clone() for k, v in r.opt.state[p].items()}) for p in r.model.tune_frozen()}
        towers = {n: p.detach().clone() for n, p in r.model.clip.named_parameters()}
        r.train_step(), r.train_step()
        for p in r.model.tune_frozen():
            w, state = frozen[id(p)]
            assert torch.equal(p, w) and all(torch.equal(r.opt.state[p][k], v) for k, v in state.items())
        moved = [n for n, p in r.model.clip.named_parameters() if not torch.equal(p, towers[n])]
        assert "visual.positional_embedding" in moved and "logit_scale" in moved and len(moved) > 20
    finally:
        r.discard_unstarted_run_dir()


def test_resume_inside_the_tune_is_exact(tmp_path):
    """A run stopped inside the tune (its checkpoint at step 7 of 10; the tune is steps 7-10)
    resumes in the tune: steps 8-10 log the losses, learning rates and phase of the uninterrupted
    run, and metrics.jsonl holds each step once with its phase."""
    base = ["preset=xlip-sparse", "train.steps=10", "train.warmup_steps=2", "train.unmasked_tune=0.4",
            "train.ckpt_every=1", "train.keep_last=20"]
    full = train(*_cfg(tmp_path, *base, "runtime.name=full"))
    shutil.copytree(tmp_path / "full", tmp_path / "part")
    ck = tmp_path / "part" / "checkpoints" / "step_00000007.pt"
    resumed = train(*_cfg(tmp_path, *base, "runtime.name=part", f"runtime.resume={ck}"))
    assert [r["step"] for r in resumed.losses] == [8, 9, 10]
    assert [sorted(r) for r in resumed.losses] == [sorted(r) for r in full.losses[7:]]
    for a, b in zip(resumed.losses, full.losses[7:]):
        assert b["mim_loss"] is None and b["mlm_loss"] is None, b
        torch.testing.assert_close(a["align_loss"], b["align_loss"])
    lines = [json.loads(l) for l in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == list(range(1, 11))
    assert [l["phase"] for l in lines] == ["warmup"] * 2 + ["joint"] * 4 + ["tune"] * 4
    assert [l["lr"] for l in lines] == [l["lr"] for l in ref]
    assert all(l["mim_loss"] is None and l["mlm_loss"] is None and l["align_loss"] is not None for l in lines[6:])
    torch.testing.assert_close(torch.load(tmp_path / "part" / "checkpoints" / "step_00000010.pt", weights_only=False)["model"],
                               torch.load(tmp_path / "full" / "checkpoints" / "step_00000010.pt", weights_only=False)["model"])


def test_no_log_line_mixes_the_tune_with_other_steps(tmp_path):
    res = train(*_cfg(tmp_path, "preset=clip-flip", "train.steps=10", "train.log_every=4", "train.unmasked_tune=0.3",
                      "runtime.name=r"))
    lines = [json.loads(l) for l in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(l["step"], l["phase"]) for l in lines] == [(4, "joint"), (7, "joint"), (8, "tune"), (10, "tune")]


def test_a_tune_inside_the_warmup_is_a_warning():
    from maskkit.objectives import Objectives
    from maskkit.training.optim import schedule_warnings
    from maskkit.model import XLIP

    cfg, _ = resolve(["preset=xlip-sparse", "train.steps=100", "train.warmup_steps=95", "train.unmasked_tune=0.1",
                      "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mim.decoder_heads=2", "model.mlm.layers=1"])
    objectives = Objectives.for_model(XLIP.from_experiment(cfg), cfg.objectives)
    lines = schedule_warnings(cfg, objectives.terms)
    assert any("train.unmasked_tune=0.1 makes the last 10 of train.steps=100 an unmasked tune, from step 91, inside the "
               "masked-modelling-only warm-up (train.warmup_steps=95)" in l for l in lines), lines
    ok, _ = resolve(["preset=xlip-sparse", "train.steps=100", "train.warmup_steps=90", "train.unmasked_tune=0.1",
                     "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mim.decoder_heads=2", "model.mlm.layers=1"])
    assert not [l for l in schedule_warnings(ok, objectives.terms) if "unmasked_tune" in l]
