"""BiomedCLIP's real layout (issue 20 leftovers): an open_clip HF-hub folder whose image tower is
open_clip's *timm* tower (``vision_cfg.timm_model_name``, ``timm_pool: ""``, ``timm_proj: linear``;
weights ``visual.trunk.*`` and ``visual.head.proj.weight``) and whose text tower is a BERT
(``text_cfg.hf_model_name``). Tiny models built here: a timm ``VisionTransformer`` registered
under a name (timm's own registry, as timm's model files do) and a tiny BERT folder; open_clip
itself builds and reads the folder (never a mock, never a download)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="HF text towers need the optional transformers package (pip install 'maskkit[hf]')")
pytest.importorskip("timm", reason="timm image towers need timm")

sys.path.insert(0, str(Path(__file__).parent))

from maskkit.errors import MaskkitError  # noqa: E402
from maskkit.model import XLIP, ModelConfig  # noqa: E402
from maskkit.model.towers import image_tokens, text_tokens  # noqa: E402
from model_helpers import tiny_bert_folder  # noqa: E402

TIMM_NAME = "vit_maskkit_test_tiny_patch16_96"
TEXTS = ["Small left pleural effusion.", "No acute cardiopulmonary process.", "Heart size is enlarged."]
#: a BiomedCLIP preprocess_cfg (its mean/std are OpenAI's; these are not, so that using them shows)
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "size": 96}


def register_tiny_timm_vit() -> str:
    """A tiny timm ViT of BiomedCLIP's kind (``vit_base_patch16_224``: patch bias, no pre-norm,
    LayerNorm eps 1e-6, class-token pooling) at 96 px, in timm's registry."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    if TIMM_NAME not in timm.list_models():
        def vit_maskkit_test_tiny_patch16_96(pretrained=False, **kwargs):
            args = dict(img_size=96, patch_size=16, embed_dim=64, depth=2, num_heads=2)
            return _create_vision_transformer(TIMM_NAME, pretrained=pretrained, **{**args, **kwargs})

        register_model(vit_maskkit_test_tiny_patch16_96)
    return TIMM_NAME


def biomedclip_cfg(bert: Path, context: int = 40, timm_name: str = TIMM_NAME, **vision) -> dict:
    """BiomedCLIP's open_clip_config.json model_cfg, with tiny towers."""
    return {"embed_dim": 32,
            "vision_cfg": {"timm_model_name": timm_name, "timm_model_pretrained": False, "timm_pool": "",
                           "timm_proj": "linear", "image_size": 96, **vision},
            "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": context}}


def biomedclip_folder(path: Path, bert: Path, context: int = 40, preprocess=PREPROCESS, seed: int = 1):
    """An open_clip HF-hub folder of BiomedCLIP's layout (open_clip_config.json,
    open_clip_model.safetensors, the tokenizer's files) built by open_clip; returns open_clip's model."""
    import open_clip
    from safetensors.torch import save_file

    mc = biomedclip_cfg(bert, context)
    torch.manual_seed(seed)
    model = open_clip.CustomTextCLIP(**mc)
    with torch.no_grad():  # every tensor distinct from a fresh model's, so a skipped one shows
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn_like(v) * 0.02)
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": mc, "preprocess_cfg": preprocess}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):  # BiomedCLIP's hub folder ships its tokenizer
        shutil.copy(bert / f, path / f)
    return model.eval()


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    register_tiny_timm_vit()
    return tiny_bert_folder(tmp_path_factory.mktemp("pubmedbert"), positions=64)


@pytest.fixture(scope="module")
def folder(bert, tmp_path_factory):
    path = tmp_path_factory.mktemp("biomedclip") / "BiomedCLIP-tiny"
    biomedclip_folder(path, bert)
    return path


def _max(a, b) -> float:
    return float((a - b).detach().abs().max())


def test_timm_tower_folder_computes_what_open_clip_computes(folder):
    import open_clip

    m = XLIP(ModelConfig(pretrained=str(folder))).eval()
    rep = m.load_report
    assert "missing 0; unexpected 0" in rep and "timm image tower (visual.trunk.*) -> open_clip's ViT" in rep, rep
    assert f"image tower: timm {TIMM_NAME} as open_clip's ViT (width 64, 2 layers, 2 heads, patch 16, 96 px, " \
           f"LayerNorm eps 1e-06, pool tok)" in rep, rep
    vc = m.clip.maskkit_model_cfg["vision_cfg"]
    assert vc == {"image_size": 96, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32, "mlp_ratio": 4.0,
                  "no_ln_pre": True, "pool_type": "tok", "ls_init_value": None, "norm_kwargs": {"eps": 1e-6}}
    ref, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")  # open_clip's timm tower, same folder
    ref.eval()
    assert type(ref.visual).__name__ == "TimmModel"
    x = torch.randn(3, 3, 96, 96)
    ids = open_clip.get_tokenizer(f"local-dir:{folder}")(TEXTS)
    assert torch.equal(m.tokenizer(TEXTS).ids, ids)
    with torch.no_grad():
        assert _max(image_tokens(m.clip, x)[0], ref.encode_image(x)) <= 1e-5
        assert _max(text_tokens(m.clip, ids)[0], ref.encode_text(ids)) <= 1e-5
        # the patch tokens are timm's too: the final norm of the trunk's tokens, projected by the head
        feats = ref.visual.trunk.forward_features(x)
        assert _max(image_tokens(m.clip, x)[1], ref.visual.head(feats[:, 1:])) <= 1e-5


def test_biomedclip_s_own_config_is_rewritten_exactly():
    """BiomedCLIP's open_clip_config.json vision_cfg (vit_base_patch16_224, built on the meta
    device: no weights) becomes ViT-B/16 without pre-norm, eps 1e-6, class-token pooling."""
    from maskkit.model.weights import timm_vision_cfg

    vc = {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
          "timm_proj": "linear", "image_size": 224}
    out, note = timm_vision_cfg(vc, 512, "model.arch")
    assert out == {"image_size": 224, "patch_size": 16, "width": 768, "layers": 12, "head_width": 64, "mlp_ratio": 4.0,
                   "no_ln_pre": True, "pool_type": "tok", "ls_init_value": None, "norm_kwargs": {"eps": 1e-6}}
    out, _ = timm_vision_cfg({**vc, "timm_pool": "avg"}, 512, "model.arch")  # timm's avg after its final norm
    assert out["pool_type"] == "avg"
    out, _ = timm_vision_cfg({**vc, "timm_model_name": "vit_base_patch16_clip_224"}, 512, "model.arch")
    assert out["no_ln_pre"] is False and "norm_kwargs" not in out  # CLIP-style timm ViT: pre-norm, eps 1e-5


@pytest.mark.parametrize("change, match", [
    ({"timm_proj": "mlp"}, "has a 'mlp' projection"),
    ({"timm_proj_bias": True}, "has a biased 'linear' projection"),
    ({"timm_pool": "abs_attn"}, "pools by attention"),
    ({"timm_drop_path": 0.1}, "has timm_drop_path=0.1"),
    ({"timm_model_pretrained": True}, "maskkit never downloads"),
    ({"timm_model_name": "vit_base_patch16_reg4_gap_256"}, "extra prefix (register) tokens"),
    ({"timm_model_name": "vit_relpos_base_patch16_224"}, "not timm's VisionTransformer"),
    ({"timm_model_name": "resnet50"}, "is a ResNet, not timm's VisionTransformer"),
    ({"timm_model_name": "vit_nonexistent_patch16_224"}, "is not a timm model"),
])
def test_timm_towers_the_rewrite_cannot_represent_are_refused_in_one_line(change, match):
    from maskkit.model.weights import timm_vision_cfg

    vc = {"timm_model_name": "vit_base_patch16_224", "timm_pool": "", "timm_proj": "linear", "image_size": 224, **change}
    with pytest.raises(MaskkitError) as e:
        timm_vision_cfg(vc, 512, "model.arch: 'folder'")
    msg = str(e.value)
    assert match in msg and "\n" not in msg and msg.startswith("model.arch: 'folder': "), msg


def test_biomedclip_folder_to_training_to_export_to_open_clip(bert, tmp_path):
    """The tiny BiomedCLIP folder -> model.pretrained -> 2 training steps of preset xlip ->
    ``maskkit export --format open_clip`` -> plain open_clip ``local-dir:`` -> maskkit's embeddings;
    the export alone (the BERT and BiomedCLIP folders deleted) gives open_clip its text tower and tokenizer."""
    import open_clip
    from run_helpers import SMALL
    from test_export import invoke

    import maskkit
    from maskkit.config import resolve
    from maskkit.train import train

    bert = Path(shutil.copytree(bert, tmp_path / "pubmedbert"))
    folder = tmp_path / "BiomedCLIP-tiny"
    biomedclip_folder(folder, bert)
    cfg, sources = resolve([*SMALL, "preset=xlip", "train.steps=2", "model.patch_embed=linear", f"model.pretrained={folder}",
                            f"runtime.out_dir={tmp_path}", "runtime.name=r"])
    res = train(cfg, sources)
    assert [r["step"] for r in res.losses] == [1, 2] and any(r.get("mlm_loss") is not None for r in res.losses)
    invoke("export", tmp_path / "r", "--format", "open_clip", "--out", tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())
    assert "timm_model_name" not in doc["model_cfg"]["vision_cfg"] and doc["model_cfg"]["vision_cfg"]["no_ln_pre"] is True
    assert doc["preprocess_cfg"]["mean"] == [0.5] * 3 and doc["preprocess_cfg"]["std"] == [0.25] * 3  # the folder's, trained with
    oc, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'out'}")
    oc.eval()
    mine = maskkit.load(tmp_path / "r")
    x = torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(5))
    ids = mine.xlip.tokenizer(TEXTS).ids
    src = XLIP(ModelConfig(pretrained=str(folder)))
    with torch.no_grad():
        assert _max(oc.encode_image(mine.xlip.normalise(x)), mine.xlip.encode_image(x)[0]) <= 1e-5
        assert _max(oc.encode_text(ids), mine.xlip.encode_text(ids)[0]) <= 1e-5
    assert _max(oc.visual.conv1.weight, src.clip.visual.conv1.weight) > 0  # trained: not the folder's weights
    # --format timm: the tower without pre-norm (A61) is timm's plain ViT (pre_norm=False, eps 1e-6)
    import timm
    import torch.nn.functional as F

    invoke("export", tmp_path / "r", "--format", "timm", "--out", tmp_path / "timm")
    tdoc = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert tdoc["architecture"] == "vit_base_patch16_224" and tdoc["model_args"]["pre_norm"] is False
    net = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    assert isinstance(net.norm_pre, torch.nn.Identity) and net.norm.eps == 1e-6
    with torch.no_grad():
        assert _max(F.normalize(net(mine.xlip.normalise(x)), dim=-1), mine.encode_image(x)) <= 1e-5
    # the export carries the text tower's config and tokenizer: nothing else is needed
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert doc["model_cfg"]["text_cfg"]["hf_model_name"] == doc["model_cfg"]["text_cfg"]["hf_tokenizer_name"] \
        == str((tmp_path / "out").resolve())
    shutil.rmtree(bert)
    shutil.rmtree(folder)
    # the run reloads without them: its checkpoints record the towers (model_build)
    run = maskkit.load(tmp_path / "r")
    with torch.no_grad():
        assert _max(run.xlip.encode_image(x)[0], mine.xlip.encode_image(x)[0]) <= 1e-6
        assert _max(run.xlip.encode_text(ids)[0], mine.xlip.encode_text(ids)[0]) <= 1e-6
    assert torch.equal(run.xlip.tokenizer(TEXTS).ids, ids) and run.xlip.preprocess_mean == (0.5,) * 3
    invoke("export", tmp_path / "r", "--format", "open_clip", "--out", tmp_path / "out2")
    # the card names the folder's model_cfg, not model.arch (maskkit-tiny, unused), before and after the folder is gone
    arch = (f"| architecture | BiomedCLIP-tiny's model_cfg (`{folder}/open_clip_config.json`; model.arch maskkit-tiny not used): "
            f"ViT width 64, 2 layers, patch 16, 96 px; bert text tower (2 layers); initialised from `{folder}` |")
    assert arch in (tmp_path / "out" / "README.md").read_text() and arch in (tmp_path / "out2" / "README.md").read_text()
    oc, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'out'}")
    oc.eval()
    theirs = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'out'}")(TEXTS)
    assert torch.equal(theirs, ids) and theirs.shape == (3, 40)
    with torch.no_grad():
        assert _max(oc.encode_text(theirs), mine.xlip.encode_text(ids)[0]) <= 1e-5
    again = maskkit.load(tmp_path / "out")  # the export in maskkit: its own tokenizer and text config
    assert again.xlip.tokenizer.name.startswith(f"BertTokenizer from {(tmp_path / 'out').resolve()}")
    with torch.no_grad():
        assert _max(again.xlip.encode_text(ids)[0], mine.xlip.encode_text(ids)[0]) <= 1e-5
    moved = tmp_path / "moved"
    (tmp_path / "out").rename(moved)  # moved: hf_model_name names a folder that is gone; maskkit reads the folder's
    with torch.no_grad():
        assert _max(maskkit.load(moved).xlip.encode_text(ids)[0], mine.xlip.encode_text(ids)[0]) <= 1e-5
    # plain open_clip after the move: the card's recipe, as written, names the folder where it is now
    from PIL import Image
    from test_export import _card_code

    card = (moved / "README.md").read_text()
    assert f"the absolute path this folder was exported to (`{(tmp_path / 'out').resolve()}`)" in card
    Image.new("L", (96, 96), 128).save(tmp_path / "xray.png")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        ns: dict = {}
        exec(compile(_card_code(moved), "README.md", "exec"), ns)
    finally:
        os.chdir(cwd)
    with torch.no_grad():
        assert _max(ns["model"].encode_text(ids), mine.xlip.encode_text(ids)[0]) <= 1e-5


# --- the folder's preprocessing (A62) -------------------------------------------------------------------

def test_folder_mean_and_std_are_used_unless_set(folder):
    import open_clip

    m = XLIP(ModelConfig(pretrained=str(folder))).eval()
    assert m.image_mean.flatten().tolist() == [0.5] * 3 and m.image_std.flatten().tolist() == [0.25] * 3
    assert (m.preprocess_mean, m.preprocess_std) == ((0.5,) * 3, (0.25,) * 3)
    assert "image mean [0.5, 0.5, 0.5]: its preprocess_cfg's (model.image_mean is null); image std [0.25, 0.25, 0.25]: " \
           "its preprocess_cfg's (model.image_std is null)" in m.load_report, m.load_report
    x = torch.rand(2, 1, 96, 96)
    torch.testing.assert_close(m.normalise(x), (x.expand(-1, 3, -1, -1) - 0.5) / 0.25, rtol=0, atol=1e-6)
    # open_clip's own transform of that folder normalises the same way
    _, _, pre = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    norm = next(t for t in pre.transforms if type(t).__name__ == "Normalize")
    assert list(norm.mean) == [0.5] * 3 and list(norm.std) == [0.25] * 3

    mine = XLIP(ModelConfig(pretrained=str(folder), image_mean=(0.4, 0.4, 0.4))).eval()  # set: kept, and said
    assert mine.image_mean.flatten().tolist() == pytest.approx([0.4] * 3) and mine.image_std.flatten().tolist() == [0.25] * 3
    assert "note: its preprocess_cfg mean [0.5, 0.5, 0.5] differs from model.image_mean [0.4, 0.4, 0.4], which is used" \
           in mine.load_report and "image std [0.25, 0.25, 0.25]: its preprocess_cfg's" in mine.load_report, mine.load_report


def test_without_a_folder_the_mean_is_openai_s():
    from maskkit.model.towers import OPENAI_MEAN, OPENAI_STD
    from model_helpers import tiny_config

    m = XLIP(tiny_config())
    assert m.preprocess_mean == OPENAI_MEAN and m.preprocess_std == OPENAI_STD
    assert m.image_mean.flatten().tolist() == pytest.approx(list(OPENAI_MEAN))


def test_folder_size_and_resize_are_named_and_bad_values_refused(bert, tmp_path):
    other = {"mean": [0.5], "std": [0.25], "size": 224, "interpolation": "bicubic", "resize_mode": "shortest"}
    biomedclip_folder(tmp_path / "f", bert, preprocess=other)
    m = XLIP(ModelConfig(pretrained=str(tmp_path / "f")))
    assert m.preprocess_mean == (0.5,) * 3 and m.preprocess_std == (0.25,) * 3  # one value: every channel's, for both
    assert ("image mean [0.5, 0.5, 0.5]: its preprocess_cfg's (model.image_mean is null, its one value for every channel); "
            "image std [0.25, 0.25, 0.25]: its preprocess_cfg's (model.image_std is null, its one value for every channel)"
            in m.load_report), m.load_report
    assert "note: its preprocess_cfg size 224 is not the image tower's 96 px, which is used (data.image_size)" in m.load_report
    assert "note: its preprocess_cfg resize_mode shortest, interpolation bicubic: maskkit resizes whole images" in m.load_report
    # one rule for mean and std: 3 numbers or 1 (each > 0 for std); the message says both
    for bad, match in (({"std": [0.2, 0.0, 0.2]}, "preprocess_cfg.std is [0.2, 0.0, 0.2]; expected 3 numbers (one per channel) "
                                                  "or 1 (for every channel), each > 0"),
                       ({"std": [0.2, 0.2]}, "preprocess_cfg.std is [0.2, 0.2]; expected 3 numbers (one per channel) or 1"),
                       ({"mean": [0.5, 0.5]}, "preprocess_cfg.mean is [0.5, 0.5]; expected 3 numbers (one per channel) or 1 "
                                              "(for every channel)"),
                       ({"mean": "imagenet"}, "preprocess_cfg.mean is 'imagenet'; expected 3 numbers")):
        doc = json.loads((tmp_path / "f" / "open_clip_config.json").read_text())
        (tmp_path / "f" / "open_clip_config.json").write_text(json.dumps({**doc, "preprocess_cfg": bad}))
        with pytest.raises(MaskkitError) as e:
            XLIP(ModelConfig(pretrained=str(tmp_path / "f")))
        assert match in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_checkpoint_s_mean_and_std_are_the_model_s():
    """The buffers a checkpoint holds set ``preprocess_mean`` / ``std`` (what exports and the model card write)."""
    from model_helpers import tiny_config

    trained = XLIP(tiny_config(image_mean=(0.5, 0.25, 0.125), image_std=(0.2, 0.3, 0.4)))
    fresh = XLIP(tiny_config())
    fresh.load_state_dict(trained.state_dict())
    assert fresh.preprocess_mean == (0.5, 0.25, 0.125) and fresh.preprocess_std == (0.2, 0.3, 0.4)


# --- context length: the tower's, everywhere -------------------------------------------------------------

def _long_report(n: int = 120) -> str:
    return " ".join(["mild cardiomegaly with left lower lobe opacity"] * n)


@pytest.mark.parametrize("tower", ["bert", "clip"])
def test_tokenizer_positions_decoder_prompts_and_batches_follow_the_tower_s_context(tower, bert, tmp_path):
    """A tower of context 40 (BERT, BiomedCLIP-style folder) or 48 (CLIP's, open_clip folder): not
    open_clip's 77 nor maskkit-tiny's 64."""
    import open_clip

    from maskkit.data.dataset import Collator, PhantomDataset
    from maskkit.data.ner import LexiconNER
    from model_helpers import tiny_model

    if tower == "bert":
        L = 40
        biomedclip_folder(tmp_path / "f", bert, context=L)
    else:
        from test_weights import FOLDER_CFG, open_clip_folder

        L = 48
        open_clip_folder(tmp_path / "f", model_cfg={**FOLDER_CFG, "vision_cfg": {**FOLDER_CFG["vision_cfg"], "image_size": 96},
                                                    "text_cfg": {**FOLDER_CFG["text_cfg"], "context_length": L}})
    m = tiny_model("xlip", pretrained=str(tmp_path / "f")).eval()  # with the preset's EntMLM text decoder
    assert m.context_length == m.tokenizer.context_length == L
    assert open_clip.get_tokenizer(f"local-dir:{tmp_path / 'f'}").context_length == L  # open_clip's of the same folder
    if tower == "clip":
        assert m.clip.positional_embedding.shape[0] == L
    else:
        assert m.clip.text.config.max_position_embeddings >= L
    assert m.text_decoder.pos.shape[1] == L and m._key_coef.shape[1] == L
    assert m._prompt_ids.ids.shape[1] <= L
    enc = m.tokenizer([_long_report()])
    assert enc.ids.shape == (1, L) and bool(enc.valid.all())  # truncated to the tower's context
    ds = PhantomDataset(4, seed=0, image_size=96, ner=LexiconNER(), p_unpaired=0.0, tokenizer=m.tokenizer)
    batch = Collator(m.tokenizer)([ds[i] for i in range(4)])
    assert batch["text"].shape == (4, L)
    with torch.no_grad():
        out = m(batch, seed=0)
        assert out.text_features.shape == (4, m.embed_dim) and out.mlm_logits is not None
        long = m.tokenizer([_long_report()]).ids
        assert m.encode_text(long)[1].shape == (1, L, m.embed_dim)


# --- eval mode: dropout and patch dropout off wherever a model is evaluated, exported or loaded -------------

def test_every_evaluation_and_load_is_in_eval_mode(folder, tmp_path):
    """The BERT tower has dropout 0.1 (BertConfig's default, PubMedBERT's): in train mode two encodings
    of the same text differ; an evaluation (``EvalRun``, which training's end-of-run evaluation builds
    around the model it trained) and ``maskkit.load`` put the model in eval mode."""
    import maskkit
    from maskkit.eval.contract import EvalRun

    m = XLIP(ModelConfig(pretrained=str(folder)))
    assert m.clip.text.config.hidden_dropout_prob == 0.1
    ids = m.tokenizer(TEXTS).ids
    m.train()
    with torch.no_grad():
        assert _max(m.encode_text(ids)[0], m.encode_text(ids)[0]) > 1e-4  # dropout is on in training
    EvalRun([(tmp_path, m, None)])
    assert not m.training and not any(mod.training for mod in m.modules())
    with torch.no_grad():
        assert torch.equal(m.encode_text(ids)[0], m.encode_text(ids)[0])
    loaded = maskkit.load(folder)
    assert not any(mod.training for mod in loaded.xlip.modules())
    assert torch.equal(loaded.encode_text(TEXTS), loaded.encode_text(TEXTS))


def test_patch_dropout_is_inactive_in_eval_mode():
    from model_helpers import phantom_batch, tiny_model

    m = tiny_model("clip", patch_dropout=0.5)
    batch = phantom_batch(4)
    with torch.no_grad():
        a, b = m(batch, seed=0).image_features, m(batch, seed=1).image_features
        assert _max(a, b) > 1e-4  # training: each seed drops other patches
        m.eval()
        a, b = m(batch, seed=0).image_features, m(batch, seed=1).image_features
        assert torch.equal(a, b)
        assert _max(a, m.encode_image(batch["images"])[0]) <= 1e-6  # every patch


# --- refusals name the file the user gave, not maskkit's internal registry name (fresh-user item 7) ---------

def test_refusals_of_a_folder_s_architecture_name_its_open_clip_config(bert, tmp_path):
    folder = tmp_path / "BiomedCLIP-tiny"
    biomedclip_folder(folder, bert)
    doc = json.loads((folder / "open_clip_config.json").read_text())
    doc["model_cfg"]["vision_cfg"]["timm_proj"] = "mlp"
    (folder / "open_clip_config.json").write_text(json.dumps(doc))
    with pytest.raises(MaskkitError) as e:
        XLIP(ModelConfig(pretrained=str(folder)))
    msg = str(e.value)
    assert msg.startswith(f"model.pretrained: {folder.resolve() / 'open_clip_config.json'} (model_cfg): the timm image tower "
                          f"{TIMM_NAME} (timm_pool='', timm_proj='mlp') has a 'mlp' projection"), msg
    assert "folder-" not in msg and "\n" not in msg
    doc["model_cfg"]["vision_cfg"]["timm_proj"] = "linear"
    doc["model_cfg"]["multimodal_cfg"] = {"width": 32}
    (folder / "open_clip_config.json").write_text(json.dumps(doc))
    with pytest.raises(MaskkitError, match=r"^model.pretrained: .*open_clip_config.json \(model_cfg\) is a CoCa model"):
        XLIP(ModelConfig(pretrained=str(folder)))


def test_a_biomedclip_folder_naming_its_bert_by_hub_id_says_where_to_set_a_local_one(bert, tmp_path):
    """BiomedCLIP's real open_clip_config.json names its BERT by hub id (offline: not there). The
    line names the file and key to change (text_cfg.hf_model_name in open_clip_config.json); doing
    what it says (copying the BERT's config.json into the folder) loads it."""
    folder = tmp_path / "BiomedCLIP"
    ref = biomedclip_folder(folder, bert)
    doc = json.loads((folder / "open_clip_config.json").read_text())
    hub_id = "microsoft/BiomedNLP-maskkit-test-absent"
    doc["model_cfg"]["text_cfg"].update(hf_model_name=hub_id, hf_tokenizer_name=hub_id)
    (folder / "open_clip_config.json").write_text(json.dumps(doc))
    cfg_file = folder.resolve() / "open_clip_config.json"
    with pytest.raises(MaskkitError) as e:
        XLIP(ModelConfig(pretrained=str(folder)))
    msg = str(e.value)
    assert msg == (f"model.pretrained: {cfg_file} (model_cfg) text tower: '{hub_id}' is neither a local folder nor in the "
                   f"Hugging Face cache (maskkit never downloads); set text_cfg.hf_model_name in {cfg_file} to a local folder "
                   f"of that model (its config.json), or copy that model's config.json into {folder.resolve()}"), msg
    shutil.copy(bert / "config.json", folder / "config.json")
    m = XLIP(ModelConfig(pretrained=str(folder))).eval()
    ids = m.tokenizer(TEXTS).ids
    with torch.no_grad():
        assert _max(text_tokens(m.clip, ids)[0], ref.encode_text(ids)) <= 1e-5


def test_a_folder_s_shape_mismatches_name_the_file_key_and_its_open_clip_config(bert, tmp_path):
    """A timm tower of another width, or another embed_dim, in a folder's open_clip_config.json:
    before, "is model.arch right?" with maskkit's rewritten key, or no file named at all."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import _create_vision_transformer

    wide = "vit_maskkit_test_wide_patch16_96"
    if wide not in timm.list_models():
        def vit_maskkit_test_wide_patch16_96(pretrained=False, **kwargs):
            return _create_vision_transformer(wide, pretrained=pretrained, **{**dict(img_size=96, patch_size=16, embed_dim=96,
                                                                                      depth=2, num_heads=2), **kwargs})

        register_model(vit_maskkit_test_wide_patch16_96)
    folder = tmp_path / "BiomedCLIP-tiny"
    biomedclip_folder(folder, bert)
    cfg_file, w = folder.resolve() / "open_clip_config.json", folder / "open_clip_model.safetensors"
    doc = json.loads(cfg_file.read_text())
    doc["model_cfg"]["vision_cfg"]["timm_model_name"] = wide
    cfg_file.write_text(json.dumps(doc))
    with pytest.raises(MaskkitError) as e:
        XLIP(ModelConfig(pretrained=str(folder)))
    assert re.fullmatch(rf"model\.pretrained: {re.escape(str(w))}: 'visual\.trunk\.[\w.]+' \(as open_clip's 'visual\.[\w.]+': "
                        rf"shape \([\d, ]+\)\), the model expects \([\d, ]+\) \(\d+ mismatched keys\); the model is built from "
                        rf"{re.escape(str(cfg_file))}: check model_cfg\.vision_cfg \(timm_model_name '{wide}', image_size 96\)",
                        str(e.value)), str(e.value)
    doc["model_cfg"]["vision_cfg"]["timm_model_name"] = TIMM_NAME
    doc["model_cfg"]["embed_dim"] = 16
    cfg_file.write_text(json.dumps(doc))
    with pytest.raises(MaskkitError) as e:
        XLIP(ModelConfig(pretrained=str(folder)))
    assert str(e.value) == (f"model.pretrained: {w}: 'visual.head.proj.weight' has shape (32, 64) ([embed_dim, width]: "
                            f"embed_dim 32), the model's embed_dim is 16 (model_cfg.embed_dim in {cfg_file}); expected "
                            f"the same embed_dim (timm_proj: linear)")
