"""What a run logs for a term that had nothing to score at a step (no pair to contrast, no masked
patch, no MLM target): null in metrics.jsonl, no TensorBoard point, '–' on the console, and left
out of a logging window's mean; never 0.0, which reads as a perfect loss."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from rich.console import Console

from maskkit.config import resolve
from maskkit.terms import TERMS
from maskkit.train import PretrainRecipe, training_batch
from maskkit.training.metric_logging import LossWindow, MetricLogger, format_loss

# image-only rows get no mask (image_only_mask=null), so an all-image-only batch has no target for
# any term; masks are row-wise deterministic (every paired row masks 75% of its patches, the MLM
# target is every report token after the first), so a target count depends on the rows alone
SMALL = ["data.n=16", "data.val_n=0", "data.p_unpaired=0.5", "train.batch_size=2", "train.warmup_steps=1",
         "runtime.progress=false", "runtime.evaluations=[]", "model.mim.decoder_depth=1", "model.mim.decoder_width=32",
         "model.mlm.layers=1", "model.mim.decoder_heads=2", 'image_mask={"image_self": {"ratio": 0.75}}', "image_only_mask=null",
         'text_mask={"intersect": {"of": [{"random": {"modality": "text", "ratio": 1.0}}, "causal"]}}']
STEPS = 8


def _run(tmp_path, *args):
    cfg, src = resolve(SMALL + [f"runtime.out_dir={tmp_path}", f"train.steps={STEPS}"] + list(args))
    console = Console(record=True, width=400, file=open(os.devnull, "w"), force_terminal=False)
    res = PretrainRecipe(cfg, src, console=console).run()
    lines = [json.loads(l) for l in (res.run_dir / "metrics.jsonl").read_text().splitlines()]
    return cfg, res, lines, console.export_text()


def _expected_null(cfg) -> dict[int, set[str]]:
    """For each step, the log keys with no target, from the batch training read at that step:
    alignment needs a paired row with a negative (two paired rows with different reports); MIM
    and MLM a paired row (image-only rows are not masked here)."""
    from maskkit.model import XLIP

    model = XLIP.from_experiment(cfg)
    out = {}
    for step in range(1, STEPS + 1):
        batch, _ = training_batch(cfg, model, step)
        reports = {r for r, p in zip(batch["reports"], batch["paired"].tolist()) if p}
        out[step] = ({"align_loss"} if len(reports) < 2 else set()) | ({"mim_loss", "mlm_loss"} if not reports else set())
    return out


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nulls")
    cfg, res, lines, text = _run(tmp, "train.log_every=1", "runtime.name=every", "runtime.progress=true")
    return cfg, res, lines, text, _expected_null(cfg)


def test_a_term_without_targets_is_logged_null_not_zero(logged):
    cfg, res, lines, _, expected = logged
    keys = [t.log_key for t in TERMS]
    assert [l["step"] for l in lines] == list(range(1, STEPS + 1))
    assert any(expected.values()), "the data must give a step without targets for some term"
    assert any(not e for e in expected.values()), "... and a step with targets for every term"
    assert any(e == set(keys) for e in expected.values()), "... and a step without any target (all image-only)"
    for line, mem in zip(lines, res.losses):
        for k in keys:
            if k in expected[line["step"]]:
                assert line[k] is None and mem[k] is None, (line["step"], k, line[k])
            else:
                assert math.isfinite(line[k]) and line[k] > 0 and line[k] == mem[k], (line["step"], k, line[k])
    raw = (res.run_dir / "metrics.jsonl").read_text()
    assert '"align_loss": null' in raw and '"align_loss": 0.0' not in raw


def test_the_console_line_shows_a_dash_for_no_targets(logged):
    _, _, lines, text, expected = logged
    step = next(s for s, e in expected.items() if e == {"align_loss"})
    line = next(l for l in text.splitlines() if l.startswith(f"step {step}/{STEPS} "))
    assert line.startswith(f"step {step}/{STEPS} align – mim ") and " mlm – " not in line, line


def test_tensorboard_gets_no_point_for_a_step_without_targets(logged):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, res, lines, _, expected = logged
    acc = EventAccumulator(str(res.run_dir / "tensorboard"))
    acc.Reload()
    for t in TERMS:
        got = [(e.step, round(e.value, 4)) for e in acc.Scalars(f"loss/{t.log_key}")]
        want = [(l["step"], round(l[t.log_key], 4)) for l in lines if t.log_key not in expected[l["step"]]]
        assert got == want and len(want) < STEPS, t.log_key


def test_a_logging_window_averages_only_the_steps_with_targets(tmp_path, logged):
    """train.log_every=2: each line's loss is the mean over its two steps of those that had targets
    (the per-step values of the log_every=1 run: the same steps, seed and data), null when neither
    had; per-step values (RunResult.losses) are unchanged."""
    _, every, _, _, expected = logged
    _, res, lines, _ = _run(tmp_path, "train.log_every=2", "runtime.name=two")
    assert [l["step"] for l in lines] == [2, 4, 6, 8]
    per_step = {m["step"]: m for m in every.losses}
    assert res.losses == every.losses
    for line in lines:
        for t in TERMS:
            vals = [per_step[s][t.log_key] for s in (line["step"] - 1, line["step"]) if t.log_key not in expected[s]]
            want = sum(vals) / len(vals) if vals else None
            assert line[t.log_key] == pytest.approx(want) if vals else line[t.log_key] is None, (line["step"], t.log_key)


def test_objectives_count_their_targets():
    """Objective.targets after a forward: alignment the paired rows that have a negative, MIM the
    masked patches, MLM the target tokens; 0 for a batch without any."""
    from maskkit.config import ObjectivesConfig
    from maskkit.objectives import Objectives
    from model_helpers import phantom_batch, subset, tiny_model

    m = tiny_model("xlip", image_mask={"image_self": {"ratio": 0.75}}, image_only_mask=None,
                   text_mask={"intersect": {"of": [{"random": {"modality": "text", "ratio": 1.0}}, "causal"]}})
    obj = Objectives.for_model(m, ObjectivesConfig())
    b = phantom_batch(8, p_unpaired=0.5)
    p, u = torch.nonzero(b["paired"]).flatten(), torch.nonzero(~b["paired"]).flatten()
    assert len(p) >= 2 and len(u) >= 1
    with torch.no_grad():
        out = m(b)
        _, values = obj(out)
        n_tokens = int((b["text_valid"][b["paired"]][:, 1:]).sum())
        assert {k: int(v) for k, v in obj.targets.items()} == {"align": len(p), "mim": 27 * len(p), "mlm": n_tokens}
        one = int(b["text_valid"][p[0], 1:].sum())
        for rows, want in ((u, {"align": 0, "mim": 0, "mlm": 0}), (p[:1], {"align": 0, "mim": 27, "mlm": one})):
            _, values = obj(m(subset(b, rows)))
            assert {k: int(v) for k, v in obj.targets.items()} == want
            assert float(values["align"]) == 0.0  # the value is 0 by construction: hence null in the logs
        dup = subset(b, torch.cat([p[:1], p[:1]]))  # two rows of one report: nothing to contrast
        obj(m(dup))
        assert int(obj.targets["align"]) == 0


def test_metric_logger_writes_null_and_no_tensorboard_point(tmp_path):
    log = MetricLogger(tmp_path)
    log.write({"step": 1, "align_loss": None, "mim_loss": 0.5, "samples_per_s": 1.0}, {"align_loss": None, "mim_loss": 0.5})
    log.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["align_loss"] is None
    assert format_loss(None) == "–" and format_loss(0.0) == "0.000"
    if log.tb is not None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "tensorboard"))
        acc.Reload()
        assert "loss/align_loss" not in acc.Tags()["scalars"] and "loss/mim_loss" in acc.Tags()["scalars"]


def test_loss_window_counts_only_steps_with_targets_and_survives_a_checkpoint():
    w = LossWindow()
    w.add({"a": 1.0, "b": None})
    w.add({"a": 3.0, "b": None})
    state = w.state_dict()
    w2 = LossWindow()
    w2.load_state_dict(state)
    w2.add({"a": None, "b": 4.0})
    assert w2.take() == {"a": 2.0, "b": 4.0}
    assert w2.take() == {}
    w.add({"a": None, "b": None})
    assert w.take() == {"a": 2.0, "b": None}
