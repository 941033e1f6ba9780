"""The optimiser step: a step with a non-finite gradient is skipped and counted, non-finite weights
are never saved, and gradient accumulation equals one batch of the same samples."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from maskkit.config import resolve
from maskkit.train import PretrainRecipe, TrainingError, train
from maskkit.training.checkpointing import load_checkpoint, nonfinite_entries

SMALL = ["data.n=24", "data.val_n=0", "train.batch_size=4", "train.log_every=1", "train.warmup_steps=1",
         "runtime.progress=false", "runtime.evaluations=[]", "model.mim.decoder_depth=1", "model.mim.decoder_width=32",
         "model.mlm.layers=1", "model.mim.decoder_heads=2"]
# row-wise deterministic masks (the same sample gets the same mask in any micro-batch or on any rank)
# and the linear patch embedding (BatchNorm's batch statistics are those of one micro-batch)
EXACT = ['image_mask={"image_self": {"ratio": 0.75}}', 'image_only_mask={"prompt_driven": {"ratio": 0.5}}',
         'text_mask={"intersect": {"of": [{"random": {"modality": "text", "ratio": 1.0}}, "causal"]}}',
         "model.patch_embed=linear", "data.p_unpaired=0.5", "train.optimizer=sgd", "train.lr=0.05"]
PARAM = "clip.visual.proj"  # the parameter whose gradient the faults below corrupt


class Faulty(PretrainRecipe):
    """The recipe with a real fault injected at 1-based steps ``at``: ``grad`` writes inf into one
    element of PARAM's gradient during the backward (on ``ranks``); ``weight`` writes NaN into
    PARAM after the optimiser step (the step itself is applied normally); ``input`` makes the
    first image of each of the step's micro-batches NaN (the forward, BatchNorm's running
    statistics included, and the losses turn NaN)."""

    def next_batch(self) -> dict:
        batch = super().next_batch()
        if self._due("input"):
            images = batch["images"].clone()
            images[0] = float("nan")
            batch = {**batch, "images": images}
        return batch

    def __init__(self, cfg, sources, at, kind="grad", ranks=None, console=None):
        super().__init__(cfg, sources, console)
        self.faults = dict(at) if isinstance(at, dict) else {s: kind for s in at}  # {1-based step: kind}
        self.kind, self.ranks = kind, ranks

    def _due(self, kind=None) -> bool:
        return self.faults.get(self.step + 1) == (kind or self.kind) and (self.ranks is None or self.info.rank in self.ranks)

    def setup_optimizer(self) -> None:
        super().setup_optimizer()
        p = dict(self.model.named_parameters())[PARAM]

        def corrupt(g):
            if not self._due("grad"):
                return g
            g = g.clone()
            g.view(-1)[0] = float("inf")
            return g

        def poison(opt, args, kwargs):
            if self._due("weight"):
                with torch.no_grad():
                    p.view(-1)[0] = float("nan")
        p.register_hook(corrupt)
        self.opt.register_step_post_hook(poison)


def run_faulty(tmp_path, *args, at=(3,), kind="grad", ranks=None):
    """Run the faulty recipe; (RunResult, what it printed)."""
    base = SMALL if not any(a.startswith("data=") for a in args) else [a for a in SMALL if not a.startswith(("data.n=", "data.val_n="))]
    cfg, src = resolve(base + [f"runtime.out_dir={tmp_path}"] + list(args))  # (data.n / val_n: the phantoms' keys)
    console = Console(record=True, width=400, file=open(os.devnull, "w"))
    recipe = Faulty(cfg, src, at, kind, ranks, console=console)
    try:
        return recipe.run(), console.export_text()
    finally:
        from maskkit.distributed import shutdown
        shutdown()


def params_of(ck: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's model state: weights and buffers (BatchNorm's running statistics and counts:
    a skipped step puts back what its forward updated)."""
    return load_checkpoint(ck)["model"]


def metrics(run: Path) -> list[dict]:
    return [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]


# --- 3a: a non-finite gradient with a finite loss ------------------------------------------------

@pytest.mark.parametrize("clip", ["1.0", "null"])
def test_a_non_finite_gradient_skips_the_step_and_resume_continues(tmp_path, clip):
    """The reported input: PARAM's gradient becomes inf at step 3 (the losses stay finite). The step
    is skipped and said so; step_00000003.pt holds the weights of step 2 (all finite); keep_last=2
    keeps finite checkpoints only; resume=latest continues with finite losses."""
    res, log = run_faulty(tmp_path, "train.steps=3", "train.ckpt_every=1", "train.keep_last=2", f"train.clip_grad={clip}",
                          "runtime.name=g")
    assert "step 3: non-finite gradient (align_loss=" in log and "step skipped (1 in a row)" in log, log
    assert [m["step"] for m in metrics(res.run_dir)] == [1, 2]
    ck = res.run_dir / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000002.pt", "step_00000003.pt"]
    a, b = params_of(ck / "step_00000002.pt"), params_of(ck / "step_00000003.pt")
    assert not nonfinite_entries(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # the skipped step changed no weight
    r = train(*resolve(SMALL + [f"runtime.out_dir={tmp_path}", "train.steps=5", "train.ckpt_every=1", "train.keep_last=2",
                                f"train.clip_grad={clip}", "runtime.name=g", "runtime.resume=latest"]))
    assert [x["step"] for x in r.losses] == [4, 5] and all(v is None or math.isfinite(v) for x in r.losses for v in x.values())


@pytest.mark.parametrize("accum", ["1", "2"])
def test_a_skipped_step_leaves_the_batchnorm_statistics_as_they_were(tmp_path, accum):
    """The conv stem (the tiny default) has BatchNorm: a NaN image at step 3 makes the loss NaN and
    the forward's running statistics NaN. The step is skipped and its forward's buffer updates are
    undone: step 3's checkpoint equals step 2's in every tensor, running statistics and
    num_batches_tracked included (before, the checkpoint of step 3 was refused for NaN
    running_mean / running_var and the run stopped); the next step trains on."""
    args = ["train.ckpt_every=1", "train.keep_last=4", f"train.grad_accum={accum}", "runtime.name=bn"]
    res, log = run_faulty(tmp_path, "train.steps=3", *args, kind="input")
    assert "step 3: non-finite loss (align_loss=nan" in log and res.step == 3, log
    train(*resolve(SMALL + [f"runtime.out_dir={tmp_path}", "train.steps=4", "runtime.resume=latest", *args]))
    ck = res.run_dir / "checkpoints"
    a, b, c = (params_of(ck / f"step_0000000{k}.pt") for k in (2, 3, 4))
    bn = [k for k in a if "running_mean" in k]
    assert bn, "the model must have BatchNorm buffers (model.patch_embed=conv_stem)"
    assert int(a[bn[0].replace("running_mean", "num_batches_tracked")]) == 2 * int(accum)  # steps 1-2 counted, 3 not
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not nonfinite_entries(c) and not torch.equal(a[bn[0]], c[bn[0]])  # step 4 updated them again


def _csv_with_a_truncated_png(folder: Path, n: int = 12, bad: int = 3) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["image_path,report,patient_id"]
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (96, 96), dtype=np.uint8)).save(p)
        rows.append(f"{p},Heart size is normal. Case {i}.,p{i}")
    (folder / f"img{bad}.png").write_bytes((folder / f"img{bad}.png").read_bytes()[:200])  # truncated
    (folder / "data.csv").write_text("\n".join(rows) + "\n")
    return folder / "data.csv"


def _skip_lines(log: str) -> list[str]:
    return [l for l in log.splitlines() if "images skipped" in l or "images read" in l or l.startswith("non-finite steps:")]


def test_the_skip_summary_counts_the_whole_run_across_a_resume(tmp_path):
    """A CSV with a truncated PNG (read, skipped and replaced once an epoch), an inf gradient at step
    2 and a NaN image at step 5, the run stopped after step 3 and resumed to step 6: the end-of-run
    summary counts every attempt, exactly as the same run without the stop (the counts live in the
    checkpoint). Before, the resumed run's summary counted steps 4-6 only."""
    csv = _csv_with_a_truncated_png(tmp_path)
    args = ["data=csv", f"data.path={csv}", "data.max_skip_fraction=0.5", "train.ckpt_every=1"]
    _, whole = run_faulty(tmp_path, *args, "train.steps=6", "runtime.name=whole", at={2: "grad", 5: "input"})
    run_faulty(tmp_path, *args, "train.steps=3", "runtime.name=part", at={2: "grad"})
    _, resumed = run_faulty(tmp_path, *args, "train.steps=6", "runtime.name=part", "runtime.resume=latest", at={5: "input"})
    lines = _skip_lines(whole)
    assert lines[-1] == "non-finite steps: 2 of 6 skipped (1 with a non-finite loss, 1 with a non-finite gradient)", whole
    n, of = (int(x) for x in re.match(r"(\d+) of (\d+) images skipped \(1 files on this process\):", lines[0]).groups())
    assert n >= 2 and of == 6 * 4 + n  # img3 once an epoch (10 training images, 2 batches of 4 an epoch); each replaced
    assert _skip_lines(resumed) == lines
    # these reports hold no medical entity: EntMLM has no target, so its value is '–', also in a skip's line
    assert "step 2: non-finite gradient (align_loss=" in whole and "mlm_loss=–); step skipped" in whole, whole


def test_a_checkpoint_without_skip_counts_resumes_from_zero_without_a_word(tmp_path):
    """A checkpoint written before maskkit saved the skip counts: it resumes, says nothing about
    them, and the summary counts what this attempt saw (steps 4-5: one non-finite loss)."""
    train(*resolve(SMALL + [f"runtime.out_dir={tmp_path}", "train.steps=3", "runtime.name=old"]))
    ck = tmp_path / "old" / "checkpoints" / "step_00000003.pt"
    payload = torch.load(ck, weights_only=True)
    del payload["skips"]
    torch.save(payload, ck)
    res, log = run_faulty(tmp_path, "train.steps=5", "runtime.name=old", "runtime.resume=latest", at={5: "input"})
    # (scale=tiny's 10 learning-rate warm-up steps are more than 5: that line is the run's own warning)
    said = "\n".join(l for l in log.splitlines() if not l.startswith("warning: train.lr_warmup_steps=10 is more than train.steps=5"))
    assert res.step == 5 and "resumed from" in said and "warning" not in said.lower() and "error" not in said.lower(), log
    assert _skip_lines(log) == ["8 images read, none skipped", "non-finite steps: 1 of 5 skipped (1 with a non-finite loss)"]


def test_non_finite_gradients_in_a_row_stop_the_run(tmp_path):
    """The same max_bad_steps counter as non-finite losses; its line names the gradient."""
    with pytest.raises(TrainingError, match=r"^train.max_bad_steps: 3 steps in a row with a non-finite loss, gradient or buffer, "
                                            r"last at step 5: non-finite gradient \(align_loss=[0-9.]+, mim_loss=[0-9.]+"):
        run_faulty(tmp_path, "train.steps=8", "train.max_bad_steps=3", "train.ckpt_every=1", "runtime.name=s", at=(3, 4, 5))
    for ck in (tmp_path / "s" / "checkpoints").iterdir():
        assert not nonfinite_entries(load_checkpoint(ck)["model"]), ck


def test_a_good_step_between_bad_ones_resets_the_count(tmp_path):
    res, log = run_faulty(tmp_path, "train.steps=6", "train.max_bad_steps=3", "runtime.name=r", at=(2, 4, 5))
    assert res.step == 6 and "(2 in a row)" in log and [m["step"] for m in metrics(res.run_dir)] == [1, 3, 6]


def test_non_finite_weights_are_never_saved_and_the_last_finite_checkpoint_stays(tmp_path):
    """A step applied normally leaves a NaN weight (a fault after the optimiser): the checkpoint of
    that step is refused in one line and keep_last=1 has not deleted step 2's."""
    with pytest.raises(TrainingError, match=r"^step 3: the model's weights are not finite \(clip.visual.proj\); no checkpoint "
                                            r"written, the earlier ones in .*checkpoints \(latest step_00000002.pt\) are kept$"):
        run_faulty(tmp_path, "train.steps=5", "train.ckpt_every=1", "train.keep_last=1", "runtime.name=w", kind="weight")
    ck = tmp_path / "w" / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step_00000002.pt"]
    r = train(*resolve(SMALL + [f"runtime.out_dir={tmp_path}", "train.steps=4", "train.ckpt_every=1", "train.keep_last=1",
                                "runtime.name=w", "runtime.resume=latest"]))
    assert [x["step"] for x in r.losses] == [3, 4]


def test_non_finite_weights_before_any_checkpoint_say_none_was_written(tmp_path):
    with pytest.raises(TrainingError, match=r"^step 1: the model's weights are not finite \(clip.visual.proj\); no checkpoint "
                                            r"written, and none had been written before$"):
        run_faulty(tmp_path, "train.steps=3", "train.ckpt_every=1", "runtime.name=w", kind="weight", at=(1,))


def test_a_step_that_makes_a_buffer_non_finite_is_skipped(tmp_path):
    """model.image_std=[1e-30]*3: the conv stem's first BatchNorm sees 1e30-scale inputs; its
    output stays finite (normalised by the batch) but running_var overflows to inf at step 1. The
    step is skipped like a non-finite one (buffers put back), said at that step, and the steps in a
    row stop the run; before, only the next checkpoint found it."""
    with pytest.raises(TrainingError) as e:
        run_faulty(tmp_path, "train.steps=4", "train.max_bad_steps=2", "runtime.name=b", "model.image_std=[1e-30,1e-30,1e-30]",
                   at=())
    assert str(e.value).startswith("train.max_bad_steps: 2 steps in a row with a non-finite loss, gradient or buffer, last at "
                                   "step 2: non-finite buffer (clip.visual.")
    assert "running_var" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "b" / "checkpoints").exists() or not list((tmp_path / "b" / "checkpoints").iterdir())


def test_a_run_whose_every_step_was_skipped_fails_in_one_line(tmp_path):
    """Every step non-finite, fewer than train.max_bad_steps: before, "3 of 3 skipped" and exit 0
    with an untrained checkpoint. Now one line (exit 2 from the CLI: a MaskkitError) and no final
    checkpoint; one good step of three is a run that trained."""
    import warnings

    with pytest.raises(TrainingError) as e, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run_faulty(tmp_path, "train.steps=3", "runtime.name=a", at=(1, 2, 3))
    assert not [w for w in seen if "lr_scheduler" in str(w.message)]  # torch's order warning: the schedule counts skipped steps
    assert str(e.value) == ("train: all 3 steps were skipped (3 with a non-finite gradient): nothing trained, no final "
                            "checkpoint written; a setting makes every step non-finite (look at objectives.*, "
                            "model.image_mean / image_std, train.lr)")
    assert not list((tmp_path / "a" / "checkpoints").glob("*.pt")) if (tmp_path / "a" / "checkpoints").exists() else True
    res, _ = run_faulty(tmp_path, "train.steps=3", "runtime.name=b", at=(1, 3))
    assert res.step == 3 and [m["step"] for m in metrics(res.run_dir)] == [2]


def test_a_checkpoint_with_non_finite_weights_is_refused_in_one_line(tmp_path):
    """A checkpoint written with NaN weights (by an earlier maskkit): resume and evaluation refuse
    it, naming the tensor and the checkpoints before it."""
    from maskkit.training.checkpointing import load_model, save_checkpoint

    train(*resolve(SMALL + [f"runtime.out_dir={tmp_path}", "train.steps=2", "train.ckpt_every=1", "runtime.name=o"]))
    ck = tmp_path / "o" / "checkpoints"
    payload = torch.load(ck / "step_00000002.pt", weights_only=True)
    payload["model"][PARAM][0, 0] = float("nan")
    payload["step"] = 3
    save_checkpoint(ck / "step_00000003.pt", payload)
    hint = (f"; continue from an earlier checkpoint with runtime.resume={ck / 'step_00000002.pt'} (others before it: "
            "step_00000001.pt), or move step_00000003.pt out of the folder")
    with pytest.raises(TrainingError) as err:
        train(*resolve(SMALL + [f"runtime.out_dir={tmp_path}", "train.steps=4", "runtime.name=o", "runtime.resume=latest"]))
    assert str(err.value) == f"{ck / 'step_00000003.pt'}: the model's weights are not finite (clip.visual.proj){hint}"
    with pytest.raises(TrainingError, match="not finite"):
        load_model(tmp_path / "o")


def test_a_checkpoint_cut_short_names_the_one_to_continue_from(tmp_path):
    """The latest checkpoint cut short outside maskkit's atomic writes (a copy or rsync that
    stopped, a disk fault): ``runtime.resume=auto`` would read the same file at every requeue; the
    one-line refusal names the earlier checkpoint to continue from, which then works."""
    train(*resolve(SMALL + [f"runtime.out_dir={tmp_path}", "train.steps=3", "train.ckpt_every=1", "train.keep_last=3", "runtime.name=c"]))
    ck = tmp_path / "c" / "checkpoints"
    data = (ck / "step_00000003.pt").read_bytes()
    (ck / "step_00000003.pt").write_bytes(data[: len(data) // 2])
    args = SMALL + [f"runtime.out_dir={tmp_path}", "train.steps=4", "runtime.name=c"]
    with pytest.raises(TrainingError) as err:
        train(*resolve(args + ["runtime.resume=auto"]))
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"runtime.resume: {ck / 'step_00000003.pt'} is not a readable maskkit checkpoint "
                                                 "(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
                                                 "central directory); continue from"), line  # torch's first sentence, whole
    assert line.endswith(f"; continue from an earlier checkpoint with runtime.resume={ck / 'step_00000002.pt'} (others "
                         "before it: step_00000001.pt), or move step_00000003.pt out of the folder"), line
    res = train(*resolve(args + [f"runtime.resume={ck / 'step_00000002.pt'}"]))
    assert res.step == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 needs a CUDA device")
def test_fp16_overflow_is_the_grad_scalers_and_not_counted(tmp_path):
    """fp16: an inf gradient at a loss scale above 1 is GradScaler's overflow: the step is skipped
    once (by the scaler), the scale halves, the step is logged as usual and not counted."""
    res, log = run_faulty(tmp_path, "train.steps=4", "train.precision=fp16", "runtime.device=cuda", "train.max_bad_steps=1",
                          "runtime.name=h", at=(2, 3))
    assert res.step == 4 and "non-finite" not in log
    scaler = load_checkpoint(res.run_dir / "checkpoints" / "step_00000004.pt")["scaler"]
    assert scaler["scale"] <= 2.0 ** 14  # 2^16 halved at least twice (at the two injected steps)


@pytest.mark.slow
def test_every_rank_skips_a_step_whose_gradient_is_non_finite_on_one_rank(tmp_path):
    """Two gloo ranks; the inf gradient is injected on rank 1 only: both ranks skip step 3 and the
    run finishes (no rank waits on another), with finite checkpoints."""
    script = tmp_path / "faulty_ddp.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_optimizer_step import run_faulty
        res, log = run_faulty(sys.argv[1], "train.steps=4", "train.batch_size=2", "runtime.name=d", "train.ckpt_every=1",
                              ranks={{1}})
        print(log)
    """))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                          str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 3: non-finite gradient" in out.stdout
    run = tmp_path / "d"
    assert [m["step"] for m in metrics(run)] == [1, 2, 4]
    for ck in (run / "checkpoints").iterdir():
        assert not nonfinite_entries(load_checkpoint(ck)["model"]), ck


# --- 3b: accumulation equals one batch -----------------------------------------------------------

def _step_grads(tmp_path, name, *args, steps=2):
    """(logged values, gradients) of the first ``steps`` optimiser steps of a recipe on 8 samples."""
    cfg, src = resolve(SMALL + EXACT + ["data.n=8", f"train.steps={steps}", f"runtime.out_dir={tmp_path}",
                                        f"runtime.name={name}"] + list(args))
    r = PretrainRecipe(cfg, src)
    r.setup()
    try:
        out = []
        for _ in range(steps):
            s = r.train_step()
            out.append((s.values, {n: p.grad.clone() for n, p in r.model.named_parameters() if p.grad is not None}))
        return out
    finally:
        r.metrics.close()


def _image_only_micro_batch(n, batch, accum, steps):
    """The steps (of the first ``steps``) with a micro-batch of image-only samples only."""
    from maskkit.data.dataset import PhantomDataset
    from maskkit.data.loader import MixtureBatchSampler
    from maskkit.distributed import DistInfo

    ds = PhantomDataset(n, 0, 96, p_unpaired=0.5)
    s = MixtureBatchSampler([n], [1.0], batch, 0, DistInfo())
    return [t for t in range(steps) if any(all(ds.reports[i] is None for i in s.batch_indices(t * accum + m)) for m in range(accum))]


@pytest.fixture(scope="module")
def batch8(tmp_path_factory):
    """Two steps of one batch of the 8 samples: a warm-up step (alignment weight 0), a joint step."""
    return _step_grads(tmp_path_factory.mktemp("b8"), "b8", "train.batch_size=8")


def _same_steps(one, acc, name):
    for step, ((v1, g1), (v2, g2)) in enumerate(zip(one, acc)):
        assert v1.keys() == v2.keys() == {"align", "mim", "mlm"}
        for k in v1:
            assert v2[k] == pytest.approx(v1[k], rel=1e-5), (name, step, k)
        assert g1.keys() == g2.keys()
        for k in g1:
            torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{name} step {step} {k}: {m}")
    # the alignment term's gradient is 0 in the warm-up and not at the joint step (so equality means something)
    assert one[0][1]["clip.logit_scale"].abs() == 0 and one[1][1]["clip.logit_scale"].abs() > 0


def test_accumulation_equals_one_batch_in_losses_and_gradients(tmp_path, batch8):
    """The reported input: the same 8 samples (half image-only), batch 4 x grad_accum 2 against
    batch 8, a warm-up step then a joint step: every term's logged value and every gradient."""
    _same_steps(batch8, _step_grads(tmp_path, "b4a2", "train.batch_size=4", "train.grad_accum=2"), "b4a2")


@pytest.mark.slow
def test_accumulation_with_a_micro_batch_of_image_only_samples(tmp_path, batch8):
    """batch 2 x grad_accum 4 on the same samples: at each step one micro-batch holds no paired
    sample (no alignment row, no MLM target), and the step still equals batch 8."""
    assert _image_only_micro_batch(8, 2, 4, 2) == [0, 1]
    _same_steps(batch8, _step_grads(tmp_path, "b2a4", "train.batch_size=2", "train.grad_accum=4"), "b2a4")


@pytest.mark.slow
def test_two_ranks_with_and_without_accumulation_equal_one_batch(tmp_path):
    """2 gloo ranks x batch 4, and 2 ranks x batch 2 x grad_accum 2, on the same 8 samples: every
    logged term and the weights after two steps equal those of one process x batch 8."""
    common = [*SMALL, *EXACT, "data.n=8", "train.steps=2", "train.ckpt_every=1", f"runtime.out_dir={tmp_path}"]
    train(*resolve(common + ["train.batch_size=8", "runtime.name=one"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, args in (("r2", ["train.batch_size=4"]), ("r2a2", ["train.batch_size=2", "train.grad_accum=2"])):
        out = subprocess.run([sys.executable, "-m", "maskkit.cli", "run", *common, *args, "runtime.devices=2", f"runtime.name={name}"],
                             capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        a, b = metrics(tmp_path / "one"), metrics(tmp_path / name)
        assert [x["step"] for x in a] == [x["step"] for x in b] == [1, 2]
        for x, y in zip(a, b):
            for k in ("align_loss", "mim_loss", "mlm_loss"):
                assert (x[k] is None and y[k] is None) or y[k] == pytest.approx(x[k], rel=1e-5), (name, x["step"], k)
        w1 = params_of(tmp_path / "one" / "checkpoints" / "step_00000002.pt")
        w2 = params_of(tmp_path / name / "checkpoints" / "step_00000002.pt")
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} {k}: {m}")


# --- the same kind elsewhere: evaluation's fine-tuning loop ----------------------------------------

@pytest.mark.parametrize("mode", ["probe", "finetune"])
def test_a_finetune_that_goes_non_finite_stops_in_one_line(tmp_path, mode):
    """A fine-tuning that goes non-finite leaves NaN scores: one line naming the split, the mode and
    --lr, not a traceback from the AUC. The reported input (--lr 1e37) is now refused before any
    work (an lr above 1 is out of range); the guard stays for what still diverges (here an encoder
    with an inf weight)."""
    from maskkit.errors import MaskkitError
    from maskkit.eval.finetune import run_finetune
    from model_helpers import tiny_model
    from test_skips import _table

    table = _table(tmp_path, n=8, bad=())
    ids = [r.id for r in table.records]
    splits = {"test": {"ids": ids[4:]}, "train_100": {"ids": ids[:4], "sha256": "x"}}
    from maskkit.data.dataset import XrayDataset

    with pytest.raises(MaskkitError, match=r"^lr=1e\+37: expected a finite number in \(0, 1\]"):
        run_finetune(tiny_model("clip"), XrayDataset(table, 96), ["A", "B"], splits, mode=mode, epochs=2, lr=1e37, batch_size=2)
    model = tiny_model("clip")
    with torch.no_grad():
        model.clip.visual.proj[0, 0] = float("inf")
    with pytest.raises(MaskkitError, match=rf"^eval finetune: the {mode} on split 100 diverged \(non-finite scores after 2 "
                                           r"epochs at --lr 0.5\); lower --lr$"):
        run_finetune(model, XrayDataset(table, 96), ["A", "B"], splits, mode=mode, epochs=2, lr=0.5, batch_size=2)


@pytest.mark.parametrize("text, want", [
    ("A failed. Then more. And more.", "A failed"),
    ("one line only.", "one line only"),
    ("first line\nsecond. line", "first line"),
    ("word " * 50, ("word " * 32).strip() + " ..."),
    ("", ""),
])
def test_a_quoted_library_error_is_its_first_sentence_never_cut_in_a_word(text, want):
    from maskkit.errors import first_sentence

    assert first_sentence(text) == want
