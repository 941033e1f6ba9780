"""Guided sparse encoding (``mim.placement=sparse``, preset ``xlip-sparse``), MILAN's
decoder, ``mlm.mode=causal``, FLIP's patch dropout, ``train.grad_checkpointing``."""

from __future__ import annotations

import json

import pytest
import torch

from maskkit.errors import MaskkitError
from maskkit.model import MIMConfig, MLMConfig
from model_helpers import model_losses, phantom_batch, subset, tiny_model

SPARSE = dict(mim=MIMConfig(placement="sparse", decoder_queries="masked", decoder_depth=2, decoder_width=64, decoder_heads=4),
              mlm=MLMConfig(layers=1, heads=4, mode="causal"))
# row-wise deterministic trees (no batch statistic, no random draw): a row's mask is its own
ROWWISE = dict(image_mask={"union": {"of": ["report_cross", "prompt_driven", "image_self"], "ratio": 0.5, "subset": "ranked"}},
               image_only_mask={"union": {"of": ["prompt_driven", "image_self"], "ratio": 0.5, "subset": "ranked"}},
               text_mask={"intersect": {"of": [{"random": {"modality": "text", "ratio": 1.0}}, "causal"]}})


@pytest.fixture(scope="module")
def batch():
    b = phantom_batch(8, p_unpaired=0.3)
    assert 0 < int(b["paired"].sum()) < 8, "the fixture batch must mix paired and image-only samples"
    return b


def sparse_model(patch_embed="linear", **kw):
    return tiny_model("xlip-sparse", patch_embed=patch_embed, **{**SPARSE, **kw})


def _first_block_tokens(model):
    """Mark each patch's position embedding with its index (channel 0: 1000·(n+1)) and record, for
    every pass of the image tower, the patch indices that reach its first block (the input of
    ``ln_pre``, which feeds block 0) and whether the pass records gradients."""
    v = model.clip.visual
    with torch.no_grad():
        v.positional_embedding[1:, 0] += 1000.0 * torch.arange(1, v.positional_embedding.shape[0])
    seen = []

    def hook(_, args):
        h = args[0][:, 1:, 0]                              # patch tokens, channel 0 (CLS excluded)
        seen.append((torch.is_grad_enabled(), h.shape[1], torch.round(h / 1000.0).long() - 1))

    v.ln_pre.register_forward_pre_hook(hook)
    return seen


@pytest.mark.parametrize("patch_embed", ["linear", "conv_stem"])
def test_the_encoder_never_receives_a_hidden_token(batch, patch_embed):
    """The full-resolution pass of the image tower receives exactly the visible patches of each row
    (the indices arriving at its first block, decoded from marked position embeddings); the only
    other pass is the low-resolution view of the whole image (3×3 tokens at ``lowres_scale`` 0.5)."""
    m = sparse_model(patch_embed).train()
    seen = _first_block_tokens(m)
    out = m(batch, seed=5)
    assert sorted(n for _, n, _ in seen) == [9, 18], [(g, n) for g, n, _ in seen]
    assert all(g for g, _, _ in seen)  # both passes train
    _, K, idx = next(s for s in seen if s[1] == 18)  # round(0.5 * 36) visible in every row
    for row in range(8):
        visible = torch.nonzero(~out.mim_mask[row]).flatten()
        assert torch.equal(idx[row], visible), (row, idx[row], visible)


def test_hidden_pixels_never_reach_the_reconstruction_through_a_conv_stem(batch):
    """With a mask that does not read the image (random, seeded), changing the pixels of the hidden
    patches changes nothing the full-resolution pass gives the decoder, even with a conv stem's 31-px
    receptive field; the low-resolution view (alignment) does see them."""
    rnd = {"random": {"ratio": 0.5}}
    m = sparse_model("conv_stem", image_mask=rnd, image_only_mask=rnd).eval()
    with torch.no_grad():
        a = m(batch, seed=3)
        p = m.patch
        hidden = a.mim_mask.reshape(8, 1, 6, 1, 6, 1).expand(-1, -1, -1, p, -1, p).reshape(8, 1, 96, 96)
        noisy = dict(batch, images=torch.where(hidden, torch.rand_like(batch["images"]), batch["images"]))
        b = m(noisy, seed=3)
    assert torch.equal(a.mim_mask, b.mim_mask)
    torch.testing.assert_close(a.mim_pred, b.mim_pred)
    assert not torch.allclose(a.mim_target, b.mim_target) and not torch.allclose(a.image_features, b.image_features)


def test_paired_rows_follow_the_report_and_image_only_rows_the_prompts(batch):
    """Eq. 14/15 in sparse placement: a paired row's mask reads its report (report_cross); an
    image-only row's reads prompts and the image only (its token ids change nothing), and its
    losses reach only MIM."""
    m = sparse_model(image_mask={"report_cross": {"ratio": 0.5}}, image_only_mask={"prompt_driven": {"ratio": 0.5}}).eval()
    g = torch.Generator().manual_seed(0)
    other = torch.randint(1, 40000, batch["text"].shape, generator=g)
    p, u = batch["paired"], ~batch["paired"]
    with torch.no_grad():
        base = m(batch, seed=1)
        only_unpaired_changed = m(dict(batch, text=torch.where(u[:, None], other, batch["text"]),
                                       text_valid=torch.where(u[:, None], True, batch["text_valid"])), seed=1)
        paired_changed = m(dict(batch, text=torch.where(p[:, None], other, batch["text"]),
                                text_valid=torch.where(p[:, None], True, batch["text_valid"])), seed=1)
    assert torch.equal(base.mim_mask, only_unpaired_changed.mim_mask)
    torch.testing.assert_close(base.mim_pred, only_unpaired_changed.mim_pred)
    assert torch.equal(base.mim_mask[u], paired_changed.mim_mask[u])
    assert not torch.equal(base.mim_mask[p], paired_changed.mim_mask[p])  # the report steers paired rows
    # the image-only rows' masks are prompt_driven's on the guide tokens
    from maskkit.core import MaskContext
    from maskkit.masking import mask_generator

    x = m.normalise(batch["images"])
    prompts, pv = m.prompt_features(x.device)
    ctx = MaskContext(image_tokens=m.guide_tokens(x), prompt_tokens=prompts, prompt_valid=pv,
                      generator=mask_generator(1, "image_only_mask"))
    assert torch.equal(base.mim_mask[u], m.image_only_mask(ctx)[u])


def test_mixed_batch_equals_its_halves(batch):
    """Eq. 16 in sparse placement, rows of different visible counts included (plain unions)."""
    m = sparse_model(**ROWWISE).eval()
    p = torch.nonzero(batch["paired"]).flatten()
    u = torch.nonzero(~batch["paired"]).flatten()
    with torch.no_grad():
        full = model_losses(m, batch, seed=3)
        hp = model_losses(m, subset(batch, p), seed=3)
        hu = model_losses(m, subset(batch, u), seed=3)
    n_p, n_u = full["mim_mask"][p].sum(), full["mim_mask"][u].sum()
    torch.testing.assert_close(full["mim_loss"], (n_p * hp["mim_loss"] + n_u * hu["mim_loss"]) / (n_p + n_u))
    torch.testing.assert_close(full["mlm_loss"], hp["mlm_loss"])
    torch.testing.assert_close(full["align_loss"], hp["align_loss"])
    assert torch.equal(full["mim_mask"][p], hp["mim_mask"]) and torch.equal(full["mim_mask"][u], hu["mim_mask"])


def test_each_row_is_its_own_with_uneven_visible_counts(batch):
    """A union with ``ratio: null`` hides a different count in each row: the padded sparse pass,
    the MILAN decoder and the text decoder's cross-attention give each row what it gives alone."""
    trees = {"image_mask": {"union": {"of": ["report_cross", "image_self"], "child_ratio": 0.4, "ratio": None}},
             "image_only_mask": {"union": {"of": ["prompt_driven", "image_self"], "child_ratio": 0.3, "ratio": None}},
             "text_mask": ROWWISE["text_mask"]}
    m = sparse_model(**trees).eval()
    with torch.no_grad():
        full = m(batch, seed=2)
        counts = full.mim_mask.sum(1)
        assert len(set(counts.tolist())) > 1, counts
        k = 0
        for row in range(8):
            one = m(subset(batch, [row]), seed=2)
            assert torch.equal(one.mim_mask[0], full.mim_mask[row])
            torch.testing.assert_close(one.image_features[0], full.image_features[row], atol=1e-5, rtol=1e-4)
            sel = full.mim_mask[row]
            torch.testing.assert_close(one.mim_pred[0][sel], full.mim_pred[row][sel], atol=1e-5, rtol=1e-4)
            n = one.mlm_logits.shape[0]
            torch.testing.assert_close(one.mlm_logits, full.mlm_logits[k:k + n], atol=1e-4, rtol=1e-4)
            k += n


def test_each_loss_reaches_exactly_its_parameters(batch):
    m = sparse_model("conv_stem").train()
    out = model_losses(m, batch)

    def grads(loss):
        m.zero_grad(set_to_none=True)
        loss.backward(retain_graph=True)
        return {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}

    mim = grads(out["mim_loss"])
    assert any(n.startswith("decoder.blocks") for n in mim) and any(n.startswith("clip.visual.transformer") for n in mim)
    assert any(n.startswith("clip.visual.conv1.") for n in mim)
    assert not any(n.startswith(("text_decoder.", "clip.transformer.")) for n in mim) and "clip.logit_scale" not in mim
    align = grads(out["align_loss"])
    assert "clip.logit_scale" in align and any(n.startswith("clip.visual.transformer") for n in align)
    assert any(n.startswith("clip.transformer.") for n in align) and not any(n.startswith(("decoder.", "text_decoder.")) for n in align)
    mlm = grads(out["mlm_loss"])
    assert any(n.startswith("text_decoder.") for n in mlm) and any(n.startswith("clip.visual.transformer") for n in mlm)
    assert any(n.startswith("clip.transformer.") for n in mlm)  # causal mode: the clean report pass learns from MLM
    assert m.mask_embedding is None  # no second text pass, no mask embedding


def test_milan_decoder_is_the_mae_decoder_at_depth_one():
    """One block: a masked query attends to every token (visible and masked) in both decoders, so
    MILAN's output equals MAE's at the masked positions; at depth 2 they differ (MILAN does not
    update the visible tokens)."""
    from maskkit.model.mim import MIMDecoder, visible_positions

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(3, 36, generator=g) < torch.tensor([[0.3], [0.5], [0.7]])  # uneven counts
    keep, valid = visible_positions(mask)
    vis = torch.randn(3, keep.shape[1], 32, generator=g)
    for depth, same in ((1, True), (2, False)):
        d = MIMDecoder(32, (6, 6), 16, width=32, depth=depth, heads=4).eval()
        a, b = d.forward_masked(vis, keep, valid, mask), d.forward_visible(vis, keep, 36, valid)
        assert torch.allclose(a[mask], b[mask], atol=1e-5) is same
        assert torch.equal(a[~mask], torch.zeros_like(a[~mask]))


def test_causal_mlm_has_no_copy_path(batch):
    """``mlm.mode=causal``: the logits that predict a selected token do not change when that token
    and every later one change; in ``loss`` mode they do (the query sees later unselected tokens,
    whose causal features hold the target: its copy path, A10)."""
    text = {"intersect": {"of": [{"random": {"modality": "text", "ratio": 0.3}}, "causal"]}}
    row = int(torch.nonzero(batch["paired"]).flatten()[0])
    one = subset(batch, [row])
    for mode, leaks in (("causal", False), ("loss", True)):
        m = tiny_model("xlip", text_mask=text, mlm=MLMConfig(layers=1, heads=4, mode=mode)).eval()
        with torch.no_grad():
            a = m(one, seed=0)
            targets = (a.mlm_selected & one["text_valid"])[0]
            t = int(torch.nonzero(targets[1:]).flatten()[0]) + 1      # the first target; its logits are row 0
            assert bool((~targets[t + 1:] & one["text_valid"][0, t + 1:]).any())  # later unselected tokens exist
            changed = one["text"].clone()
            later = one["text_valid"][0].clone()
            later[:t] = False
            changed[0] = torch.where(later, (changed[0] + 7) % 40000 + 1, changed[0])
            b = m(dict(one, text=changed), seed=0)
        assert torch.equal(a.mlm_selected, b.mlm_selected)
        assert torch.allclose(a.mlm_logits[0], b.mlm_logits[0], atol=1e-5) is not leaks, mode


def test_patch_dropout_drops_at_random_in_training_only(batch):
    m = tiny_model("clip-flip", patch_dropout=0.5)
    seen = _first_block_tokens(m)
    m.train()
    m(batch, seed=0), m(batch, seed=0), m(batch, seed=1)
    (_, n0, a), (_, _, b), (_, _, c) = seen[-3:]
    assert n0 == 18 and torch.equal(a, b) and not torch.equal(a, c)  # round(0.5 * 36); seeded; per step
    assert all(bool((r.diff() > 0).all()) for r in a)  # each row's kept patches, distinct, in position order
    m.eval()
    m(batch, seed=0)
    assert seen[-1][1] == 36


@pytest.mark.parametrize("args,message", [
    (["preset=xlip", "model.patch_dropout=0.5"], "model.patch_dropout=0.5 drops patches at random for a model without an image mask"),
    (["preset=clip", "model.mim.placement=sparse"], "model.mim.placement=sparse encodes only the visible patches of an image mask"),
    (["preset=xlip", "model.mim.decoder_queries=masked"], "decoder_queries=masked needs placement input or sparse"),
    (["preset=xlip-sparse", "model.mim.lowres_scale=1.5"], "model.mim.lowres_scale: Input should be less than or equal to 1"),
    (["preset=xlip-sparse", "model.mlm.mode=copy"], "model.mlm.mode: Input should be 'input', 'loss' or 'causal'"),
    (["preset=xlip", "train.compile=maybe"], "train.compile: Input should be a valid boolean"),
    (["preset=xlip", "train.grad_checkpointing=2"], "train.grad_checkpointing: Input should be a valid boolean"),
])
def test_bad_keys_fail_with_one_line(args, message):
    from maskkit.config import resolve

    with pytest.raises(MaskkitError) as e:
        resolve(args)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_presets_resolve():
    from maskkit.config import resolve

    cfg, _ = resolve(["preset=xlip-sparse"])
    assert cfg.model.mim.placement == "sparse" and cfg.model.mim.decoder_queries == "masked" and cfg.model.mlm.mode == "causal"
    assert cfg.image_mask["union"]["ratio"] == 0.5 and cfg.image_only_mask["union"]["ratio"] == 0.5
    cfg, _ = resolve(["preset=clip-flip"])
    assert cfg.model.patch_dropout == 0.5 and cfg.image_mask is None


def test_grad_checkpointing_changes_no_value(batch):
    """``train.grad_checkpointing`` recomputes activations: the losses and every gradient are those
    of the plain step (MAE and MILAN decoders, both towers)."""
    res = []
    for gc in (False, True):
        m = sparse_model().train()
        m.set_grad_checkpointing(gc)
        out = model_losses(m, batch)
        sum(v for k, v in out.items() if k.endswith("_loss")).backward()
        res.append(({k: v.detach() for k, v in out.items()}, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (la, ga), (lb, gb) = res
    for k in la:
        torch.testing.assert_close(la[k], lb[k])
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-6, rtol=1e-5)


def test_eval_masks_reads_the_guide_tokens(batch):
    """``maskkit eval masks`` measures masks on what training's masks see: the low-resolution view's
    tokens in sparse placement, so a preset row is the set the full-resolution pass does not see."""
    from maskkit.eval.masks import extract
    from maskkit.data.dataset import PhantomDataset

    m = sparse_model().eval()
    ds = PhantomDataset(4, 0, 96, p_unpaired=0.0)
    f = extract(m, ds)
    imgs = torch.stack([ds[i]["image"] for i in range(4)])
    torch.testing.assert_close(f.e_img, m.guide_tokens(m.normalise(imgs)).float())
    _, full = m.encode_image(imgs)
    assert not torch.allclose(f.e_img, full)


DETERMINISTIC = ['image_mask={"image_self": {"ratio": 0.5}}', 'image_only_mask={"prompt_driven": {"ratio": 0.5}}',
                 'text_mask={"intersect": {"of": [{"random": {"modality": "text", "ratio": 1.0}}, "causal"]}}']


def test_two_process_ddp_equals_one_process_in_uneven_cases(tmp_path):
    """As the feature placement is tested (tests/test_run.py): two gloo ranks × batch 1 with
    grad_accum=2, half the samples image-only (so that at some steps one rank holds no paired
    sample), the conv stem (global BatchNorm in the gradient pass, running statistics in the guide),
    a warm-up step, joint steps, then two steps of the unmasked tune (train.unmasked_tune: the
    decoders out of the graph but for their zero-weight link): every logged loss equals that of
    one process × batch 2."""
    from test_run import TINY, _metrics, _uneven_steps, cli

    common = [*TINY, *DETERMINISTIC, "preset=xlip-sparse", "data.n=24", "data.p_unpaired=0.5", "train.steps=6",
              "train.warmup_steps=1", "train.grad_accum=2", "train.unmasked_tune=0.34", f"runtime.out_dir={tmp_path}"]
    assert _uneven_steps(24, 0.5, 1, 4, 2), "the data must give a step where one rank is all image-only"
    one = cli("run", *common, "train.batch_size=2", "runtime.name=one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = cli("run", *common, "train.batch_size=1", "runtime.devices=2", "runtime.name=two", env={"OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [x["step"] for x in a] == [x["step"] for x in b] == [1, 2, 3, 4, 5, 6]
    assert [x["phase"] for x in b] == ["warmup", "joint", "joint", "joint", "tune", "tune"]
    for x, y in zip(a, b):
        for k in ("align_loss", "mim_loss", "mlm_loss"):
            assert (x[k] is None) == (y[k] is None), (x["step"], k, x[k], y[k])
            assert x[k] is None or abs(x[k] - y[k]) < 1e-4 * max(1.0, abs(x[k])), (x["step"], k, x[k], y[k])
    cfg = json.loads((tmp_path / "two" / "config.json").read_text())
    assert cfg["config"]["model"]["mim"]["placement"] == "sparse"


def _recipe(tmp_path, *extra):
    from maskkit.config import resolve
    from maskkit.train import PretrainRecipe

    cfg, src = resolve(["data.n=8", "data.val_n=0", "train.batch_size=4", "runtime.progress=false", "runtime.evaluations=[]",
                        "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mlm.layers=1", "model.mim.decoder_heads=2",
                        f"runtime.out_dir={tmp_path}", *extra])
    return PretrainRecipe(cfg, src)


def test_train_keys_reach_the_model(tmp_path):
    """``train.compile`` compiles the module the steps call (the model's own keys stay those the
    checkpoints hold); ``train.grad_checkpointing`` reaches both towers and the MIM decoder."""
    from torch._dynamo.eval_frame import OptimizedModule

    r = _recipe(tmp_path, "preset=xlip-sparse", "train.compile=true", "train.grad_checkpointing=true", "runtime.name=a")
    try:
        r.setup()
        assert isinstance(r.ddp, OptimizedModule) and r.ddp._orig_mod is r.model
        assert not any(k.startswith("_orig_mod.") for k in r.model.state_dict())
        assert r.model.clip.visual.transformer.grad_checkpointing and r.model.clip.transformer.grad_checkpointing
        assert r.model.decoder.grad_checkpointing
    finally:
        r.discard_unstarted_run_dir()
    plain = _recipe(tmp_path, "preset=xlip-sparse", "runtime.name=b")
    try:
        plain.setup()
        assert plain.ddp is plain.model and not plain.model.decoder.grad_checkpointing
        assert not plain.model.clip.visual.transformer.grad_checkpointing
    finally:
        plain.discard_unstarted_run_dir()


@pytest.mark.slow
def test_compiled_steps_equal_eager_steps(tmp_path):
    """Two training steps with ``train.compile=true`` give the losses of the eager steps."""
    from maskkit.config import resolve
    from maskkit.train import train

    base = ["preset=clip", "data.n=8", "data.val_n=0", "train.batch_size=4", "train.steps=2", "train.log_every=1",
            "runtime.progress=false", "runtime.evaluations=[]", f"runtime.out_dir={tmp_path}"]
    a = train(*resolve(base + ["runtime.name=eager"]))
    b = train(*resolve(base + ["runtime.name=compiled", "train.compile=true"]))
    for x, y in zip(a.losses, b.losses):
        assert abs(x["align_loss"] - y["align_loss"]) < 1e-4 * max(1.0, abs(x["align_loss"])), (x, y)
