"""The XLIP model on tiny configs: shapes, gradients, branches, mixed batches, offline weights."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import torch

from maskkit.errors import MaskkitError
from maskkit.model import ModelConfig, XLIP
from maskkit.model.towers import load_pretrained
from model_helpers import model_losses, phantom_batch, subset, tiny_config, tiny_model

LOSSES = ("align_loss", "mim_loss", "mlm_loss")


@pytest.fixture(scope="module")
def batch():
    b = phantom_batch(8, p_unpaired=0.3)
    assert 0 < int(b["paired"].sum()) < 8, "the fixture batch must mix paired and image-only samples"
    return b


def test_token_features_shapes(batch):
    m = tiny_model()
    pooled, e_img = m.encode_image(batch["images"])
    assert pooled.shape == (8, 128) and e_img.shape == (8, 36, 128)
    tp, e_rep = m.encode_text(batch["text"])
    assert tp.shape == (8, 128) and e_rep.shape == (8, 64, 128)
    # the pooled image feature equals open_clip's own encode_image
    torch.testing.assert_close(pooled, m.clip.encode_image(m.normalise(batch["images"])))
    torch.testing.assert_close(tp, m.clip.encode_text(batch["text"]))


def test_forward_returns_finite_losses_and_the_mask(batch):
    out = model_losses(tiny_model(), batch)
    assert set(LOSSES) <= set(out)
    for k in LOSSES:
        assert out[k].dim() == 0 and torch.isfinite(out[k])
    assert out["mim_mask"].shape == (8, 36) and out["mim_mask"].sum(1).tolist() == [27] * 8  # round(0.75 * 36)


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("patch_embed", ["linear", "conv_stem"])
@pytest.mark.parametrize("placement", ["feature", "input"])
def test_each_loss_reaches_exactly_its_parameters(batch, placement, patch_embed):
    from maskkit.model import MIMConfig

    m = tiny_model(mim=MIMConfig(placement=placement, decoder_depth=2, decoder_width=64, decoder_heads=4), patch_embed=patch_embed)
    out = model_losses(m, batch)
    mim = _grads(m, out["mim_loss"])
    assert any(n.startswith("decoder.") for n in mim)
    assert any(n.startswith("clip.visual.transformer") for n in mim)  # reaches the encoder
    assert any(n.startswith("clip.visual.conv1.") for n in mim)  # and the patch embedding, of either kind
    assert not any(n.startswith(("text_decoder.", "clip.transformer.", "clip.token_embedding")) for n in mim)
    align = _grads(m, out["align_loss"])
    assert "clip.logit_scale" in align and any(n.startswith("clip.visual.") for n in align)
    assert any(n.startswith("clip.transformer.") for n in align)
    assert not any(n.startswith(("decoder.", "text_decoder.", "mask_embedding")) for n in align)
    mlm = _grads(m, out["mlm_loss"])
    assert any(n.startswith("text_decoder.") for n in mlm) and "mask_embedding" in mlm
    assert any(n.startswith("clip.visual.") for n in mlm)  # cross-attention to image tokens
    assert not any(n.startswith("decoder.") for n in mlm) and "clip.logit_scale" not in mlm


def test_no_gradient_through_the_topk_selection(batch):
    m = tiny_model()
    out = m(batch)
    assert not out.mim_mask.requires_grad and out.mim_mask.dtype == torch.bool


def test_forward_returns_features_and_masks_not_losses(batch):
    from maskkit.model import XLIPOutput

    out = tiny_model()(batch)
    assert isinstance(out, XLIPOutput)
    assert out.image_features.shape == (8, 128) and out.text_features.shape == (8, 128)
    assert out.mim_pred.shape == out.mim_target.shape == (8, 36, 256) and out.mim_mask.shape == (8, 36)
    k = int(out.mlm_labels.shape[0])
    assert out.mlm_logits.shape[0] == k and k > 0


def test_image_only_rows_do_not_reach_align_or_mlm(batch):
    """An image-only row's (empty) report never changes a loss: replacing its token ids by
    arbitrary ones changes nothing; an all-image-only batch has zero align and MLM losses."""
    m = tiny_model()
    only = subset(batch, torch.nonzero(~batch["paired"]).flatten())
    g = torch.Generator().manual_seed(0)
    noisy = dict(only, text=torch.randint(1, 40000, only["text"].shape, generator=g), text_valid=torch.ones_like(only["text_valid"]))
    a, b = model_losses(m, only), model_losses(m, noisy)
    torch.testing.assert_close(a["mim_loss"], b["mim_loss"])
    assert float(a["align_loss"].detach()) == 0.0 and float(a["mlm_loss"].detach()) == 0.0 and float(b["mlm_loss"].detach()) == 0.0
    mixed = dict(batch, text=torch.where(batch["paired"][:, None], batch["text"], torch.randint(1, 40000, batch["text"].shape, generator=g)))
    for k, v in model_losses(m, batch).items():
        torch.testing.assert_close(v, model_losses(m, mixed)[k])


DETERMINISTIC = dict(image_mask={"image_self": {"ratio": 0.75}}, image_only_mask={"prompt_driven": {"ratio": 0.5}},
                     text_mask={"intersect": {"of": [{"random": {"modality": "text", "ratio": 1.0}}, "causal"]}})


def test_mixed_batch_equals_its_halves(batch):
    """Eq. 16: a mixed batch's losses are those of its paired half and image-only half (row-wise
    deterministic masks, so that both layouts mask the same tokens)."""
    m = tiny_model(**DETERMINISTIC).eval()
    p = torch.nonzero(batch["paired"]).flatten()
    u = torch.nonzero(~batch["paired"]).flatten()
    with torch.no_grad():
        full = model_losses(m, batch, seed=3)
        hp = model_losses(m, subset(batch, p), seed=3)
        hu = model_losses(m, subset(batch, u), seed=3)
    n_p, n_u = full["mim_mask"][p].sum(), full["mim_mask"][u].sum()
    torch.testing.assert_close(full["mim_loss"], (n_p * hp["mim_loss"] + n_u * hu["mim_loss"]) / (n_p + n_u))
    torch.testing.assert_close(full["mlm_loss"], hp["mlm_loss"])
    torch.testing.assert_close(full["align_loss"], hp["align_loss"])  # paired samples only
    assert torch.equal(full["mim_mask"][p], hp["mim_mask"]) and torch.equal(full["mim_mask"][u], hu["mim_mask"])
    assert int(full["mim_mask"][u[0]].sum()) == 18 and int(full["mim_mask"][p[0]].sum()) == 27  # each row its own tree


def test_clip_preset_has_alignment_only(batch):
    from maskkit.config import ObjectivesConfig
    from maskkit.objectives import Objectives

    m = tiny_model("clip")
    assert Objectives.for_model(m, ObjectivesConfig()).names == ("align",)
    out = m(batch)
    assert out.mim_pred is None and out.mlm_logits is None


def test_same_report_pairs_are_not_negatives(batch):
    """Two images of one study share a report: the pair is removed from the contrastive
    negatives (A20). Checked against a row-by-row reference of the symmetric InfoNCE."""
    import torch.nn.functional as F

    from maskkit.objectives import AlignLoss

    m = tiny_model("clip").eval()
    p = torch.nonzero(batch["paired"]).flatten()
    dup = subset(batch, torch.cat([p, p[:1]]))  # the first study's report again, with its image
    with torch.no_grad():
        out = m(dup)
    assert out.text_key[0] == out.text_key[-1] and len(set(out.text_key.tolist())) == len(p)
    with torch.no_grad():
        got = AlignLoss(1.0)(out)
        distinct = AlignLoss(1.0)(dataclasses.replace(out, text_key=torch.arange(len(p) + 1)))
    img, txt = F.normalize(out.image_features, dim=-1), F.normalize(out.text_features, dim=-1)
    s, key = out.logit_scale.exp(), out.text_key.tolist()

    def ce(q, keys, i):
        cols = [j for j in range(len(keys)) if j == i or keys[j] != keys[i]]
        return -torch.log_softmax(s * q[i] @ keys_feats[cols].T, 0)[cols.index(i)]

    keys_feats = txt
    i2t = torch.stack([ce(img, key, i) for i in range(len(key))]).mean()
    keys_feats = img
    t2i = torch.stack([ce(txt, key, i) for i in range(len(key))]).mean()
    torch.testing.assert_close(got, (i2t + t2i) / 2)
    assert float(distinct) != pytest.approx(float(got))


def test_report_keys_depend_on_the_report_alone_so_batches_never_collide(batch):
    """The report identity is derived from the token ids (one rule, no batch field): a row's key is
    the same in a batch and in either half of it (micro-batches, ranks), equal reports share a
    key, different reports do not, and a row without a report is -1. With the old default
    (``arange(B)`` per batch) row 0 of each half had key 0: two different reports treated as one
    caption once the halves' rows were gathered (accumulation, DDP)."""
    m = tiny_model("clip").eval()
    with torch.no_grad():
        full = m(batch).text_key
        halves = torch.cat([m(subset(batch, range(4))).text_key, m(subset(batch, range(4, 8))).text_key])
    assert torch.equal(full, halves)
    paired = batch["paired"]
    assert (full[~paired] == -1).all() and (full[paired] >= 0).all() and (full < 2 ** 52).all()
    texts = [r for r, q in zip(batch["reports"], paired.tolist()) if q]
    assert len(set(full[paired].tolist())) == len(set(texts))  # distinct reports, distinct keys
    # the keys are what the alignment loss gathers across micro-batches: the two halves' rows together
    # give the loss of the whole batch (as one batch would), also with a duplicated report in each half
    from maskkit.objectives import AlignLoss, MicroBatches

    p = torch.nonzero(paired).flatten()
    dup = subset(batch, torch.cat([p[:2], p[:2]]))  # rows 0,1 and 2,3 hold the same two reports
    with torch.no_grad():
        one = AlignLoss(1.0)(m(dup))
        a, b = m(subset(dup, [0, 1])), m(subset(dup, [2, 3]))
        cached = {"align": [AlignLoss.rows(a), AlignLoss.rows(b)]}
        acc = AlignLoss(1.0)(a, MicroBatches(cached, 0)) + AlignLoss(1.0)(b, MicroBatches(cached, 1))
    torch.testing.assert_close(acc, one)


def test_a_batch_with_its_own_text_key_is_refused(batch):
    with pytest.raises(MaskkitError, match=r"^batch\['text_key'\]: XLIP derives each row's report identity from its token ids"):
        tiny_model("clip")({**batch, "text_key": torch.arange(8)})


def test_logit_scale_is_capped():
    """CLIP caps the logit scale at 100: an initial temperature below 1/100 is refused in one line,
    and constrain_() (after every optimiser step) clamps the parameter."""
    with pytest.raises(Exception, match=r"init_temperature 0.005 gives a logit scale of 200.0, above max_logit_scale 100"):
        tiny_config(init_temperature=0.005)
    m = tiny_model("clip")
    with torch.no_grad():
        m.clip.logit_scale.fill_(7.0)
    m.constrain_()
    assert abs(float(m.clip.logit_scale.exp()) - 100.0) < 1e-3


def test_mlm_modes_and_table4_compositions(batch):
    from maskkit.model import MLMConfig

    for preset in ("t4_mlm_full", "t4_mlm_random_0.5", "t4_entmlm_0.5"):
        for mode in ("input", "loss"):
            out = model_losses(tiny_model(preset, mlm=MLMConfig(mode=mode, layers=1, heads=4)), batch)
            assert torch.isfinite(out["mlm_loss"])


def test_bad_configs_fail_with_one_line(batch):
    with pytest.raises(MaskkitError, match="image_only_mask: image-only samples have no report"):
        tiny_model(image_only_mask={"union": {"of": ["report_cross", "image_self"]}})
    with pytest.raises(MaskkitError, match="text_mask: expected a text strategy"):
        tiny_model(text_mask="image_self")
    with pytest.raises(MaskkitError, match="unknown open_clip architecture 'ViT-B-61'"):
        XLIP(tiny_config(arch="ViT-B-61"))
    with pytest.raises(MaskkitError, match=r"the batch holds no image .*were all its samples skipped"):
        tiny_model()(dict(batch, images=torch.zeros(0)))
    with pytest.raises(MaskkitError, match=r"images are \(64, 64\) px; model.arch maskkit-tiny expects 96 px"):
        tiny_model()(dict(batch, images=torch.zeros(8, 1, 64, 64)))


@pytest.fixture
def no_network(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def refuse(*a, **k):
        raise AssertionError("maskkit tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_offline_checkpoint_loading(tmp_path, no_network, suffix):
    src = tiny_model(seed=1)
    state = src.clip.state_dict()
    path = tmp_path / f"tiny{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    m = XLIP(tiny_config(pretrained=str(path)))
    assert m.load_report.startswith(f"loaded {len(state)} tensors from tiny{suffix}; missing 0; unexpected 0")
    for k, v in state.items():
        torch.testing.assert_close(m.clip.state_dict()[k], v)


def test_checkpoint_errors(tmp_path, no_network):
    m = tiny_model()
    with pytest.raises(MaskkitError, match="does not exist .maskkit never downloads"):
        load_pretrained(m.clip, tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(MaskkitError, match="cannot read .*bad.pt"):
        load_pretrained(m.clip, tmp_path / "bad.pt")
    partial = {k: v for i, (k, v) in enumerate(m.clip.state_dict().items()) if i % 2} | {"extra.weight": torch.zeros(1)}
    torch.save(partial, tmp_path / "part.pt")
    report = load_pretrained(m.clip, tmp_path / "part.pt")
    assert "missing" in report and "unexpected 1 (extra.weight)" in report and "\n" not in report
    import open_clip

    other = open_clip.create_model("maskkit-tiny-p8").state_dict()
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(MaskkitError, match="has shape .* the model expects"):
        load_pretrained(m.clip, tmp_path / "other.pt")


def test_normalisation_is_stored_in_the_state_dict():
    m = tiny_model(image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25))
    sd = m.state_dict()
    assert torch.equal(sd["image_mean"].flatten(), torch.tensor([0.5] * 3))
    x = torch.full((1, 1, 96, 96), 0.75)
    assert torch.allclose(m.normalise(x), torch.ones(1, 3, 96, 96))


def test_input_placement_keeps_each_rows_own_visible_patches(batch):
    """MAE placement with a plain union (``ratio: null``): rows mask different counts. Each row's
    reconstruction in the batch equals that row run alone, so no masked patch reached the encoder
    and no visible one was dropped (padding plus a key-padding mask)."""
    from maskkit.model import MIMConfig

    tree = {"union": {"of": ["report_cross", "prompt_driven", "image_self"], "ratio": None}}
    m = tiny_model(image_mask=tree, image_only_mask={"union": {"of": ["prompt_driven", "image_self"], "ratio": None}},
                   mim=MIMConfig(placement="input", decoder_depth=1, decoder_width=32, decoder_heads=2)).eval()
    with torch.no_grad():
        out = m(batch)
        counts = out.mim_mask.sum(1)
        assert len(set(counts.tolist())) > 1, "the fixture must give rows with different mask counts"
        for row in range(8):
            alone = m(subset(batch, [row]))
            assert torch.equal(alone.mim_mask[0], out.mim_mask[row])
            torch.testing.assert_close(alone.mim_pred[0], out.mim_pred[row], atol=1e-5, rtol=1e-4)


def test_conv_stem_keeps_the_token_grid_and_each_row_is_its_own_in_eval(batch):
    """``model.patch_embed=conv_stem`` (A31): the same [B, N, C] tokens as the linear embedding, and
    in eval mode (BatchNorm's running statistics) a row's features do not depend on its batch."""
    from maskkit.model.towers import ConvStem

    m = tiny_model(patch_embed="conv_stem").eval()
    assert isinstance(m.clip.visual.conv1, ConvStem)
    assert [c.stride for c in m.clip.visual.conv1 if isinstance(c, torch.nn.Conv2d)] == [(2, 2)] * 4 + [(1, 1)]
    with torch.no_grad():
        pooled, e_img = m.encode_image(batch["images"])
        assert pooled.shape == (8, 128) and e_img.shape == (8, 36, 128)
        torch.testing.assert_close(m.encode_image(batch["images"][3:4])[1][0], e_img[3], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(pooled, m.clip.encode_image(m.normalise(batch["images"])))


def test_conv_stem_needs_a_power_of_two_patch():
    with pytest.raises(MaskkitError, match=r"model.patch_embed=conv_stem: needs a power-of-two patch size, got 12; use model.patch_embed=linear"):
        tiny_model(arch="maskkit-tiny-p12", patch_embed="conv_stem")


def test_input_placement_hides_masked_pixels_from_a_conv_stem(batch):
    """MAE placement: the pixels of a masked patch must not reach the encoder. A conv stem's 31-px
    receptive field spans neighbouring patches, so the masked patches are blanked before it:
    changing their pixels changes nothing of the reconstruction."""
    from maskkit.model import MIMConfig

    rnd = {"random": {"ratio": 0.75}}
    m = tiny_model(image_mask=rnd, image_only_mask=rnd, text_mask=None, patch_embed="conv_stem",
                   mim=MIMConfig(placement="input", decoder_depth=1, decoder_width=32, decoder_heads=2)).eval()
    with torch.no_grad():
        out = m(batch, seed=5)
        hidden = out.mim_mask.view(8, 1, 6, 1, 6, 1).expand(-1, 1, -1, 16, -1, 16).reshape(8, 1, 96, 96)
        noisy = dict(batch, images=torch.where(hidden, torch.rand_like(batch["images"]), batch["images"]))
        again = m(noisy, seed=5)
    assert torch.equal(again.mim_mask, out.mim_mask)
    torch.testing.assert_close(again.mim_pred, out.mim_pred)
