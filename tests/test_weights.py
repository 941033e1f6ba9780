"""model.pretrained: every local layout users hold - open_clip's HF-hub folder
(as BiomedCLIP ships), timm ViT image towers (state dict, safetensors, timm's folder), and wrong
folders and files, each one line naming the file and what was expected.

Every layout is a tiny model built and saved in the test (never a mock, never a download); each
loaded model is compared with what open_clip / timm themselves compute from the same files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from maskkit.errors import MaskkitError
from maskkit.model import XLIP, ModelConfig
from maskkit.model.towers import create_clip, image_tokens, register_configs, text_tokens

#: a tiny open_clip architecture that no registry holds: only the folder's config can build it
FOLDER_CFG = {"embed_dim": 48, "vision_cfg": {"image_size": 64, "layers": 2, "width": 96, "patch_size": 16, "head_width": 32},
              "text_cfg": {"context_length": 64, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "interpolation": "bicubic", "resize_mode": "shortest"}


def _perturbed(model, seed: int):
    torch.manual_seed(seed)
    with torch.no_grad():  # every tensor distinct from a fresh model's, so a skipped one shows
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn_like(v) * 0.02)
    return model


def open_clip_folder(path, weights: str = "open_clip_model.safetensors", model_cfg=FOLDER_CFG, seed: int = 1):
    """An open_clip HF-hub folder as ``open_clip.push_to_hf_hub`` lays it out (config + weights);
    returns the open_clip model whose weights it holds."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = _perturbed(open_clip.CLIP(**model_cfg), seed).eval()
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": PREPROCESS}))
    sd = model.state_dict()
    if weights.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path / weights))
    else:
        torch.save(sd, path / weights)
    return model


@pytest.mark.parametrize("weights", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_open_clip_folder_is_the_architecture_and_computes_what_open_clip_computes(weights, tmp_path):
    import open_clip

    folder = tmp_path / "biomedclip-like"
    src = open_clip_folder(folder, weights)
    m = XLIP(ModelConfig(arch="maskkit-tiny", pretrained=str(folder))).eval()
    assert m.clip.visual.conv1.out_channels == 96 and m.image_size == 64 and m.embed_dim == 48  # the folder's, not maskkit-tiny's
    n = len(src.state_dict())
    assert m.load_report.startswith(f"loaded {n} tensors from {folder.name}; missing 0; unexpected 0; format: open_clip folder "
                                    f"({weights}, "), m.load_report
    assert "model.arch=maskkit-tiny not used" in m.load_report
    assert "image mean [0.5, 0.5, 0.5]: its preprocess_cfg's (model.image_mean is null)" in m.load_report, m.load_report
    for k, v in src.state_dict().items():
        if k != "logit_scale":  # XLIP sets it from model.init_temperature after loading
            torch.testing.assert_close(m.clip.state_dict()[k], v, rtol=0, atol=0, msg=k)
    ref, _, _ = open_clip.create_model_and_transforms(f"local-dir:{folder}")  # open_clip reading the same folder
    ref.eval()
    x = torch.rand(2, 3, 64, 64)
    ids = open_clip.get_tokenizer(f"local-dir:{folder}")(["left pleural effusion", "clear lungs"])
    with torch.no_grad():
        torch.testing.assert_close(image_tokens(m.clip, x)[0], ref.encode_image(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(text_tokens(m.clip, ids)[0], ref.encode_text(ids), rtol=0, atol=1e-6)
    assert torch.equal(m.tokenizer(["left pleural effusion"]).ids[0], ids[0])  # maskkit's tokenizer is the folder's


def test_model_image_mean_of_an_open_clip_folder_is_model_config_s(tmp_path):
    folder = tmp_path / "f"
    open_clip_folder(folder)
    m = XLIP(ModelConfig(pretrained=str(folder), image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.25, 0.25)))
    assert "differs" not in m.load_report
    assert m.image_mean.flatten().tolist() == [0.5, 0.5, 0.5]


def _timm_clip_vit(**extra):
    """A tiny timm CLIP-style ViT (pre-norm, no patch bias, LayerNorm eps 1e-5) whose head is a
    projection to maskkit-tiny's 128-dim embedding, as timm's vit_*_clip_* models are."""
    import timm

    torch.manual_seed(3)
    m = timm.create_model("vit_base_patch16_clip_224", pretrained=False, **{**dict(img_size=96, embed_dim=192, depth=4,
                                                                            num_heads=3, num_classes=128), **extra})
    _perturbed(m, 3)
    with torch.no_grad():
        m.head.bias.zero_()
    return m.eval()


def _save_state(kind: str, net, tmp_path):
    from safetensors.torch import save_file

    sd = net.state_dict()
    if kind == "pth":
        torch.save(sd, tmp_path / "vit.pth")
        return tmp_path / "vit.pth"
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "vit.safetensors"))
        return tmp_path / "vit.safetensors"
    if kind == "wrapped":  # a training checkpoint around it
        torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, tmp_path / "ckpt.pth")
        return tmp_path / "ckpt.pth"
    from timm.models import save_for_hf

    save_for_hf(net, str(tmp_path / "timm-folder"), safe_serialization=True)  # timm's HF-hub folder
    return tmp_path / "timm-folder"


@pytest.mark.parametrize("kind", ["pth", "safetensors", "wrapped", "timm_folder"])
def test_timm_clip_vit_becomes_the_image_tower_with_equal_features(kind, tmp_path):
    net = _timm_clip_vit()
    path = _save_state(kind, net, tmp_path)
    m = XLIP(ModelConfig(arch="maskkit-tiny", pretrained=str(path))).eval()
    rep = m.load_report
    assert "format: timm ViT image tower (" in rep and "the text tower has no weights in" in rep and "head -> proj" in rep, rep
    assert "unexpected 0" in rep and not any(k.startswith("visual.") for k in rep.split("missing")[1].split(";")[0].split()), rep
    x = torch.rand(2, 1, 96, 96)
    with torch.no_grad():
        pooled, tokens = m.encode_image(x)
        feats = net.forward_features(m.normalise(x))
        torch.testing.assert_close(pooled, net.forward_head(feats), rtol=0, atol=1e-5)
        torch.testing.assert_close(tokens, net.head(feats[:, 1:]), rtol=0, atol=1e-5)


def test_plain_timm_vit_patch_bias_is_folded_into_the_positions(tmp_path):
    """An ImageNet-style timm ViT (patch-embedding bias, no pre-norm, eps 1e-6, a classifier head)
    into an open_clip ViT configured alike (no_ln_pre, eps 1e-6): every token equals timm's."""
    import open_clip
    import timm

    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": 2, "width": 96, "patch_size": 16, "head_width": 32,
                                           "no_ln_pre": True, "norm_kwargs": {"eps": 1e-6}},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "maskkit-test-plainvit.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "maskkit-test-plainvit.json")
    torch.manual_seed(4)
    net = _perturbed(timm.create_model("vit_base_patch16_224", pretrained=False, img_size=64, embed_dim=96, depth=2,
                                       num_heads=3, num_classes=10), 4).eval()
    torch.save(net.state_dict(), tmp_path / "in1k.pth")
    clip = create_clip("maskkit-test-plainvit")
    from maskkit.model.towers import load_pretrained

    rep = load_pretrained(clip, tmp_path / "in1k.pth")
    assert "patch-embedding bias folded into the positional embedding" in rep and "classifier head (10, 96) not used" in rep, rep
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        _, tokens = image_tokens(clip.eval(), x)
        torch.testing.assert_close(tokens, net.forward_features(x)[:, 1:] @ clip.visual.proj, rtol=0, atol=1e-5)


# --- wrong folders and files: one line naming the file and what was expected ---------------------

def _refused(path, match: str, arch: str = "maskkit-tiny") -> str:
    with pytest.raises(MaskkitError) as e:
        XLIP(ModelConfig(arch=arch, pretrained=str(path)))
    msg = str(e.value)
    assert match in msg and "\n" not in msg and str(path) in msg, msg
    return msg


def test_folder_without_config_is_refused(tmp_path):
    src = create_clip("maskkit-tiny")
    from safetensors.torch import save_file

    (tmp_path / "w").mkdir()
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w" / "open_clip_model.safetensors"))
    msg = _refused(tmp_path / "w", "no open_clip_config.json (nor config.json) in this folder; expected an open_clip folder")
    assert "open_clip_model.safetensors or open_clip_pytorch_model.bin" in msg


def test_config_without_model_cfg_or_weights_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "open_clip_config.json").write_text(json.dumps({"embed_dim": 48}))
    _refused(tmp_path / "a", "open_clip_config.json has no 'model_cfg' object (keys: embed_dim)")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "open_clip_config.json").write_text(json.dumps({"model_cfg": FOLDER_CFG}))
    _refused(tmp_path / "b", "open_clip_config.json but no weights file; expected open_clip_model.safetensors or "
                             "open_clip_pytorch_model.bin beside it")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "open_clip_config.json").write_text("{not json")
    _refused(tmp_path / "c", "open_clip_config.json is not valid JSON")


def test_bert_folder_or_file_given_as_the_image_tower_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers", reason="a BERT folder is built with transformers (maskkit[hf])")
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=37))
    bert.save_pretrained(tmp_path / "cxr-bert")
    # a transformers folder is a text tower: refused with an architecture whose text tower is CLIP's
    _refused(tmp_path / "cxr-bert", "is a transformers model folder (a text tower), but model.arch 'maskkit-tiny' has CLIP's text tower")
    _refused(tmp_path / "cxr-bert" / "model.safetensors", "a BERT-style text model (Hugging Face transformers keys such as "
                                                          "'embeddings.word_embeddings.weight')")


def test_truncated_safetensors_is_refused_in_a_folder_and_alone(tmp_path):
    open_clip_folder(tmp_path / "f")
    w = tmp_path / "f" / "open_clip_model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    _refused(tmp_path / "f", f"{w} is truncated: {len(data) // 2} bytes, its header places tensors up to byte {len(data)}")
    (tmp_path / "x.safetensors").write_bytes(data[:5])
    _refused(tmp_path / "x.safetensors", "is truncated or not a safetensors file (5 bytes, no complete header)")


def test_wrong_shapes_and_other_models_are_refused(tmp_path):
    import timm

    wide = timm.create_model("vit_base_patch16_clip_224", pretrained=False, img_size=96, embed_dim=384, depth=4, num_heads=6)
    torch.save(wide.state_dict(), tmp_path / "wide.pth")
    _refused(tmp_path / "wide.pth", "'cls_token' (as open_clip's 'visual.class_embedding': shape (384,)), the model expects "
                                    "(192,) (55 mismatched keys); is model.arch right?")   # the key as it is in the file
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    _refused(tmp_path / "other.pt", "none of its 1 tensors is a weight of this model (keys: fc.weight, ...)")
    resnet = tmp_path / "resnet"
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("resnet10t", pretrained=False), str(resnet), safe_serialization=True)
    _refused(resnet, "names timm architecture 'resnet10t', not a ViT")


def test_a_run_built_from_a_folder_loads_without_its_weights_file(tmp_path):
    """load_model rebuilds a run from its checkpoint: model.pretrained's weights are not read again
    (before, a moved or deleted weights file made the run unloadable)."""
    from maskkit.config import resolve
    from maskkit.train import train
    from maskkit.training.checkpointing import load_model
    from run_helpers import SMALL  # noqa: PLC0415

    folder = tmp_path / "init"
    open_clip_folder(folder, model_cfg={**FOLDER_CFG, "vision_cfg": {**FOLDER_CFG["vision_cfg"], "image_size": 96}})
    cfg, src = resolve([*SMALL, "train.steps=1", "model.patch_embed=linear", f"model.pretrained={folder}",
                        f"runtime.out_dir={tmp_path}", "runtime.name=r"])
    train(cfg, src)
    (folder / "open_clip_model.safetensors").unlink()
    model, _ = load_model(tmp_path / "r")
    assert model.clip.visual.conv1.out_channels == 96 and model.load_report is None


def setup_module():
    register_configs()


# --- more (or fewer) layers than the architecture: refused like a width mismatch ----------------------

def test_deeper_or_shallower_checkpoints_are_refused_naming_the_file_and_depths(tmp_path):
    """Before, a depth-6 timm ViT into maskkit-tiny (depth 4) loaded blocks 0-3 and ignored the
    rest; open_clip folders and files with extra image or text layers alike."""
    deep = _timm_clip_vit(depth=6)
    torch.save(deep.state_dict(), tmp_path / "deep.pth")
    _refused(tmp_path / "deep.pth", f"model.pretrained: {tmp_path / 'deep.pth'}: its image tower has 6 layers "
                                    f"(visual.transformer.resblocks.0-5), the model's 4: depth found 6, expected 4")
    shallow = _timm_clip_vit(depth=2)
    torch.save(shallow.state_dict(), tmp_path / "shallow.pth")
    _refused(tmp_path / "shallow.pth", "its image tower has 2 layers (visual.transformer.resblocks.0-1), the model's 4: "
                                       "depth found 2, expected 4")
    # an open_clip folder whose weights have more image layers than its model_cfg: the weights file is named
    folder = tmp_path / "f"
    open_clip_folder(folder, model_cfg={**FOLDER_CFG, "vision_cfg": {**FOLDER_CFG["vision_cfg"], "layers": 3}})
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": FOLDER_CFG}))
    msg = _refused(folder, f"model.pretrained: {folder / 'open_clip_model.safetensors'}: its image tower has 3 layers "
                           f"(visual.transformer.resblocks.0-2), the model's 2: depth found 3, expected 2; the model is "
                           f"built from {folder / 'open_clip_config.json'}: check model_cfg.vision_cfg (width 96, layers 2, "
                           f"patch_size 16, image_size 64)")
    assert "folder-" not in msg
    # an open_clip file with a deeper text tower
    import open_clip

    text3 = open_clip.CLIP(**{**FOLDER_CFG, "text_cfg": {**FOLDER_CFG["text_cfg"], "layers": 3}})
    torch.save(text3.state_dict(), tmp_path / "text3.pt")
    clip = create_clip(FOLDER_CFG)
    from maskkit.model.towers import load_pretrained

    with pytest.raises(MaskkitError) as e:
        load_pretrained(clip, tmp_path / "text3.pt")
    assert str(e.value) == (f"model.pretrained: {tmp_path / 'text3.pt'}: its text tower has 3 layers (transformer.resblocks.0-2), "
                            f"the model's 2: depth found 3, expected 2; is model.arch right?")


# --- the tiny scale's conv stem and model.pretrained (A66) ----------------------------------------------

def test_tiny_scale_uses_the_linear_patch_embedding_with_pretrained_weights_and_an_explicit_stem_is_refused(tmp_path):
    """scale=tiny's model.patch_embed=conv_stem used to drop the pretrained patch embedding
    (visual.conv1 listed as unexpected): the scale's default yields to the weights; a stem the
    user sets is refused in one line."""
    from maskkit.config import ConfigError, resolve

    folder = tmp_path / "init"
    src = open_clip_folder(folder, model_cfg={**FOLDER_CFG, "vision_cfg": {**FOLDER_CFG["vision_cfg"], "image_size": 96}})
    cfg, sources = resolve(["scale=tiny", f"model.pretrained={folder}"])
    assert cfg.model.patch_embed == "linear" and sources["model.patch_embed"] == "scale:tiny (model.pretrained)"
    m = XLIP.from_experiment(cfg)
    assert "unexpected 0" in m.load_report, m.load_report
    assert torch.equal(m.clip.visual.conv1.weight, src.visual.conv1.weight)
    assert resolve(["scale=tiny"])[0].model.patch_embed == "conv_stem"  # without weights: the scale's stem
    with pytest.raises(ConfigError) as e:
        resolve(["scale=tiny", "model.patch_embed=conv_stem", f"model.pretrained={folder}"])
    assert str(e.value) == (f"model.patch_embed=conv_stem (from cli) with model.pretrained={folder} (from cli): a convolutional "
                            f"stem replaces the pretrained patch embedding, whose weights would be dropped; set "
                            f"model.patch_embed=linear")
    with pytest.raises(MaskkitError, match="model.patch_embed=conv_stem with model.pretrained=.*set model.patch_embed=linear$"):
        XLIP(ModelConfig(arch="maskkit-tiny", patch_embed="conv_stem", pretrained=str(folder)))


def test_a_folder_with_two_weight_files_names_the_one_read_and_the_one_not(tmp_path):
    folder = tmp_path / "two"
    src = open_clip_folder(folder, "open_clip_model.safetensors")
    torch.save(create_clip(FOLDER_CFG).state_dict(), folder / "open_clip_pytorch_model.bin")  # other (random) weights
    m = XLIP(ModelConfig(pretrained=str(folder)))
    assert "; weights: open_clip_model.safetensors (open_clip_pytorch_model.bin beside it not read)" in m.load_report, m.load_report
    assert torch.equal(m.clip.visual.conv1.weight, src.visual.conv1.weight)  # open_clip's choice: the safetensors
    one = tmp_path / "one"
    open_clip_folder(one)
    assert "not read" not in XLIP(ModelConfig(pretrained=str(one))).load_report


# --- dtypes and non-finite tensors: every loader gives finite float32 parameters -------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights_load_as_float32_in_every_layout(dtype, tmp_path):
    """fp16/bf16 saves (an open_clip folder, a CLIP .pt, a timm ViT): float32 parameters equal to
    the saved values, and the cast named in the load report."""
    import timm

    name = str(dtype).replace("torch.", "")
    src = open_clip_folder(tmp_path / "f")
    w = tmp_path / "f" / "open_clip_model.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({k: v.to(dtype) for k, v in load_file(str(w)).items()}, str(w))
    torch.save({k: v.to(dtype) for k, v in create_clip("maskkit-tiny").state_dict().items()}, tmp_path / "clip.pt")
    vit = timm.create_model("vit_base_patch16_clip_224", pretrained=False, img_size=96, embed_dim=192, depth=4, num_heads=3)
    torch.save({k: v.to(dtype) for k, v in vit.state_dict().items()}, tmp_path / "vit.pth")
    for path, arch in ((tmp_path / "f", "maskkit-tiny"), (tmp_path / "clip.pt", "maskkit-tiny"), (tmp_path / "vit.pth", "maskkit-tiny")):
        model = XLIP(ModelConfig(arch=arch, pretrained=str(path)))
        assert {p.dtype for p in model.parameters()} == {torch.float32}, path
        assert f"{name} -> float32" in model.load_report, model.load_report
    model = XLIP(ModelConfig(arch="maskkit-tiny", pretrained=str(tmp_path / "f")))
    torch.testing.assert_close(model.clip.visual.conv1.weight, src.visual.conv1.weight.to(dtype).float(), rtol=0, atol=0)


def test_non_finite_weights_are_refused_at_load_naming_the_file_key_and_count(tmp_path):
    """Before: loaded, and every step skipped, blamed on the settings ('look at objectives.*')."""
    open_clip_folder(tmp_path / "f")
    w = tmp_path / "f" / "open_clip_model.safetensors"
    from safetensors.torch import load_file, save_file

    sd = load_file(str(w))
    sd["visual.transformer.resblocks.0.attn.in_proj_weight"][0, :5] = float("nan")
    sd["text_projection"][1, 1] = float("inf")
    save_file(sd, str(w))
    _refused(tmp_path / "f", f"model.pretrained: {w}: tensor 'text_projection' (64, 48) holds 1 NaN/inf values of 3072 "
                             f"(2 non-finite tensors in all); expected finite weights")
    sd = {"module." + k: v for k, v in create_clip("maskkit-tiny").state_dict().items()}  # the key as in the file
    sd["module.visual.conv1.weight"][0, 0, 0, :3] = float("-inf")
    torch.save(sd, tmp_path / "ddp.pt")
    _refused(tmp_path / "ddp.pt", "tensor 'module.visual.conv1.weight' (192, 3, 16, 16) holds 3 NaN/inf values of 147456 "
                                  "(the only non-finite tensor)")


def test_timm_vits_with_register_tokens_or_positions_without_the_class_token_are_refused_in_one_line(tmp_path):
    """Before: "cannot resize 'visual.positional_embedding' ... (RuntimeError: shape ...)"."""
    from timm.models.vision_transformer import VisionTransformer

    kw = dict(img_size=96, patch_size=16, embed_dim=192, depth=4, num_heads=3, num_classes=0)
    torch.save(VisionTransformer(**kw, reg_tokens=4, no_embed_class=True).state_dict(), tmp_path / "reg.pth")
    msg = _refused(tmp_path / "reg.pth", f"model.pretrained: {tmp_path / 'reg.pth'}: the timm ViT has 4 register tokens "
                                         f"('reg_token' (1, 4, 192)), which maskkit's open_clip ViT cannot compute exactly")
    assert "RuntimeError" not in msg and "resize" not in msg
    torch.save(VisionTransformer(**kw, no_embed_class=True).state_dict(), tmp_path / "noembed.pth")
    _refused(tmp_path / "noembed.pth", "the timm ViT has positions without the class token ('pos_embed' (1, 36, 192): 6x6 "
                                       "patches, no_embed_class), which maskkit's open_clip ViT cannot compute exactly")
    torch.save(VisionTransformer(**kw).state_dict(), tmp_path / "plain.pth")   # the plain ViT of the same shape loads
    assert XLIP(ModelConfig(arch="maskkit-tiny", pretrained=str(tmp_path / "plain.pth"))).load_report.startswith("loaded 53 tensors")


def test_a_folder_without_text_weights_says_the_text_tower_is_untrained(tmp_path):
    open_clip_folder(tmp_path / "f")
    w = tmp_path / "f" / "open_clip_model.safetensors"
    from safetensors.torch import load_file, save_file

    save_file({k: v for k, v in load_file(str(w)).items() if k.startswith("visual.")}, str(w))
    rep = XLIP(ModelConfig(pretrained=str(tmp_path / "f"))).load_report
    assert "; the text tower has no weights in open_clip_model.safetensors: randomly initialised (untrained)" in rep, rep
    assert "image tower has no weights" not in rep
    rep = XLIP(ModelConfig(pretrained=str(open_clip_folder(tmp_path / "g") and tmp_path / "g"))).load_report
    assert "untrained" not in rep, rep   # both towers' weights: no note
