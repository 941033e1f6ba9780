"""`maskkit export` and `maskkit.load`: train tiny -> export -> load in plain
open_clip / timm -> the same embeddings as maskkit on the same inputs; the model card; refusals in
one line with nothing written; the Python API on paths, PIL images, arrays and tensors.

One tiny run (2 steps, linear patch embedding, end-of-run zero-shot) serves the module."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from run_helpers import SMALL  # noqa: E402

from maskkit.cli import app  # noqa: E402
from maskkit.config import resolve  # noqa: E402
from maskkit.errors import MaskkitError  # noqa: E402
from maskkit.model.towers import OPENAI_MEAN, OPENAI_STD  # noqa: E402
from maskkit.train import train  # noqa: E402

TEXTS = ["Small left pleural effusion.", "No acute cardiopulmonary process.", "Heart size is enlarged."]


def invoke(*args, ok: bool = True):
    res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=True)
    if ok and res.exit_code != 0:
        raise AssertionError(f"{args}: exit {res.exit_code}: {res.output[-3000:]} {res.exception!r}")
    return res


def refused(*args, match: str) -> str:
    res = invoke(*args, ok=False)
    msg = str(res.exception) if isinstance(res.exception, MaskkitError) else res.output
    assert res.exit_code != 0 and isinstance(res.exception, MaskkitError), (res.exit_code, res.output[-2000:], repr(res.exception))
    assert match in msg and "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    cfg, src = resolve([*SMALL, "data.val_n=24", "train.steps=2", "model.patch_embed=linear", "runtime.evaluations=[zeroshot]",
                        f"runtime.out_dir={tmp}", "runtime.name=r"])
    train(cfg, src)
    return tmp / "r"


@pytest.fixture(scope="module")
def model(run):
    from maskkit.training.checkpointing import load_model

    return load_model(run)[0]


@pytest.fixture(scope="module")
def open_clip_dir(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("oc") / "export"
    res = invoke("export", run, "--format", "open_clip", "--out", out)
    assert f"wrote {out} (open_clip: README.md, open_clip_config.json, open_clip_model.safetensors)" in " ".join(res.output.split())
    return out


@pytest.fixture(scope="module")
def timm_dir(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("tm") / "export"
    invoke("export", run / "checkpoints" / "step_00000002.pt", "--format", "timm", "--out", out)
    return out


def _images(n: int = 3, size: int = 96) -> torch.Tensor:
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(5))


# --- open_clip ---------------------------------------------------------------------------------------

def test_open_clip_loads_the_export_and_computes_maskkit_s_embeddings(model, open_clip_dir):
    import open_clip

    oc, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{open_clip_dir}")
    oc.eval()
    tok = open_clip.get_tokenizer(f"local-dir:{open_clip_dir}")
    ids = tok(TEXTS)
    assert torch.equal(ids, model.tokenizer(TEXTS).ids)  # open_clip's tokenizer is maskkit's
    x = _images()
    with torch.no_grad():
        want_img, want_txt = model.encode_image(x)[0], model.encode_text(ids)[0]
        got_img, got_txt = oc.encode_image(model.normalise(x)), oc.encode_text(ids)
    assert float((got_img - want_img).abs().max()) <= 1e-5
    assert float((got_txt - want_txt).abs().max()) <= 1e-5
    assert float(oc.logit_scale) == pytest.approx(float(model.clip.logit_scale))


def test_open_clip_preprocessing_is_maskkit_s(model, open_clip_dir, tmp_path):
    """The config carries maskkit's size, mean and std; open_clip's transform of a grayscale PNG
    (converted to RGB: the channel replicated) equals maskkit's decode + normalise exactly at the
    model's size, and is close after resizing (Pillow's antialiased bilinear vs torch's)."""
    import open_clip
    from PIL import Image

    from maskkit.data.images import read_image, resize

    doc = json.loads((open_clip_dir / "open_clip_config.json").read_text())
    pp = doc["preprocess_cfg"]
    assert pp["size"] == 96 and pp["mean"] == list(OPENAI_MEAN) and pp["std"] == list(OPENAI_STD)
    assert pp["resize_mode"] == "squash" and pp["interpolation"] == "bilinear" and pp["mode"] == "RGB"
    assert doc["model_cfg"] == open_clip.get_model_config("maskkit-tiny")
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{open_clip_dir}")
    rng = np.random.default_rng(0)
    for shape, tol in (((96, 96), 1e-6), ((150, 120), 0.05)):
        path = tmp_path / f"x{shape[0]}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        theirs = preprocess(Image.open(path))
        ours = model.normalise(torch.from_numpy(resize(read_image(path), 96))[None, None])[0]
        assert float((theirs - ours).abs().max() * min(model.preprocess_std)) <= tol, shape  # in [0, 1] pixel units


def test_model_card_names_data_preset_steps_zeroshot_version_and_commit(run, open_clip_dir, timm_dir):
    zs = json.loads((run / "zeroshot.json").read_text())
    env = json.loads((run / "environment.json").read_text())
    for d in (open_clip_dir, timm_dir):
        card = (d / "README.md").read_text()
        assert "| data | phantoms |" in card and "| preset | xlip (scale tiny) |" in card
        assert "| steps | 2 (checkpoint `step_00000002.pt`) |" in card
        assert "| architecture | maskkit-tiny: ViT width 192, 4 layers, patch 16, 96 px; CLIP text tower (4 layers) |" in card
        assert f"| maskkit version | {__import__('maskkit').__version__} |" in card
        assert f"| trained at commit | {env['maskkit_revision']} |" in card
        assert f"| **mean** | | **{zs['mean']['auc']:.3f}** |" in card
        lab, r = next((k, v) for k, v in zs["per_label"].items() if v is not None)
        assert f"| {lab} | {r['n_pos']}/{r['n']} | {r['auc']:.3f} [" in card
    meta = json.loads((open_clip_dir / "open_clip_config.json").read_text())["maskkit"]
    assert meta["step"] == 2 and meta["preset"] == "xlip" and meta["train_commit"] == env["maskkit_revision"]


# --- timm ----------------------------------------------------------------------------------------------

def test_timm_loads_the_export_with_maskkit_s_features(model, timm_dir):
    import timm

    doc = json.loads((timm_dir / "config.json").read_text())
    name, args = doc["architecture"], doc["model_args"]
    assert name == "vit_tiny_patch16_clip_224" or name.startswith("vit_base_patch16_clip")
    assert args["embed_dim"] == 192 and args["depth"] == 4 and args["num_classes"] == model.embed_dim
    x = _images()
    with torch.no_grad():
        want, tokens = model.encode_image(x)
        xn = model.normalise(x)
        nets = {"overlay": timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(
                    file=str(timm_dir / "model.safetensors"), num_classes=args["num_classes"]), **args),
                "local-dir": timm.create_model(f"local-dir:{timm_dir}", pretrained=True)}
        for how, net in nets.items():
            net.eval()
            feats = net.forward_features(xn)
            assert float((net(xn) - want).abs().max()) <= 1e-5, how
            assert float((net.head(feats[:, 1:]) - tokens).abs().max()) <= 1e-5, how
        backbone = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(timm_dir / "model.safetensors")),
                                     **{**args, "num_classes": 0}).eval()  # a segmentation code base's backbone
        torch.testing.assert_close(backbone.forward_features(xn), nets["overlay"].forward_features(xn), rtol=0, atol=0)
    pc = doc["pretrained_cfg"]
    assert pc["mean"] == list(OPENAI_MEAN) and pc["crop_mode"] == "squash" and "tag" not in pc


def test_timm_export_initialises_maskkit_again(model, timm_dir):
    """The export is a timm folder that model.pretrained reads back: the same image tower."""
    from maskkit.model import XLIP, ModelConfig

    m = XLIP(ModelConfig(arch="maskkit-tiny", pretrained=str(timm_dir))).eval()
    x = _images(2)
    with torch.no_grad():
        assert float((m.encode_image(x)[0] - model.encode_image(x)[0]).abs().max()) <= 1e-5


# --- refusals --------------------------------------------------------------------------------------------

def test_existing_folder_is_refused_unless_overwrite_and_replaced_whole(run, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused("export", run, "--format", "open_clip", "--out", out, match=f"--out {out}: folder exists and is not empty; pass --overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    invoke("export", run, "--format", "open_clip", "--out", out, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "open_clip_config.json", "open_clip_model.safetensors"]
    empty = tmp_path / "empty"
    empty.mkdir()
    invoke("export", run, "--format", "timm", "--out", empty)  # an empty folder is filled
    assert (empty / "model.safetensors").is_file()
    refused("export", run, "--format", "onnx", "--out", tmp_path / "x", match="--format onnx: expected one of open_clip, timm")
    assert not (tmp_path / "x").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_conv_stem_run_is_refused_in_one_line(tmp_path):
    from maskkit.model import XLIP
    from maskkit.training.checkpointing import save_checkpoint

    cfg, _ = resolve([*SMALL, f"runtime.out_dir={tmp_path}", "runtime.name=c"])
    assert cfg.model.patch_embed == "conv_stem"  # the tiny scale's default
    # what load_model reads of a training checkpoint (maskkit.train's payload holds these two and more)
    save_checkpoint(tmp_path / "c" / "checkpoints" / "step_00000001.pt",
                    {"model": XLIP.from_experiment(cfg).state_dict(), "config": json.dumps(cfg.model_dump(mode="json"))})
    for fmt in ("open_clip", "timm"):
        refused("export", tmp_path / "c", "--format", fmt, "--out", tmp_path / "o",
                match="trained with model.patch_embed=conv_stem (a convolutional stem, the tiny scale's default), which "
                      "open_clip's and timm's plain ViT do not have; export needs a run trained with model.patch_embed=linear")
    assert not (tmp_path / "o").exists()


def test_not_a_run_is_refused(tmp_path):
    refused("export", tmp_path, "--format", "open_clip", "--out", tmp_path / "o", match="no checkpoint in")


# --- the round trip of a BiomedCLIP-layout folder ---------------------------------------------------------

def test_open_clip_folder_to_training_to_export_to_open_clip(tmp_path):
    """A BiomedCLIP-layout folder built by hand (open_clip_config.json + open_clip_pytorch_model.bin)
    -> model.pretrained -> 2 training steps -> export -> plain open_clip: the folder's architecture
    throughout, trained weights, maskkit's embeddings."""
    import open_clip
    from test_weights import FOLDER_CFG, open_clip_folder

    mc = {**FOLDER_CFG, "vision_cfg": {**FOLDER_CFG["vision_cfg"], "image_size": 96}}
    src = open_clip_folder(tmp_path / "biomedclip", "open_clip_pytorch_model.bin", model_cfg=mc)
    cfg, sources = resolve([*SMALL, "train.steps=2", "model.patch_embed=linear", f"model.pretrained={tmp_path / 'biomedclip'}",
                            f"runtime.out_dir={tmp_path}", "runtime.name=r"])
    train(cfg, sources)
    invoke("export", tmp_path / "r", "--format", "open_clip", "--out", tmp_path / "out")
    doc = json.loads((tmp_path / "out" / "open_clip_config.json").read_text())
    assert doc["model_cfg"] == mc
    oc, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'out'}")
    oc.eval()
    import maskkit

    mine = maskkit.load(tmp_path / "r")
    x = _images(2)
    ids = mine.xlip.tokenizer(TEXTS).ids
    with torch.no_grad():
        assert float((oc.encode_image(mine.xlip.normalise(x)) - mine.xlip.encode_image(x)[0]).abs().max()) <= 1e-5
        assert float((oc.encode_text(ids) - mine.xlip.encode_text(ids)[0]).abs().max()) <= 1e-5
        moved = oc.visual.conv1.weight - src.visual.conv1.weight
    assert float(moved.abs().max()) > 0  # trained: not the folder's weights


# --- maskkit.load --------------------------------------------------------------------------------------

def test_import_maskkit_imports_no_torch_and_load_is_lazy():
    code = "import sys, maskkit; assert 'torch' not in sys.modules; f = maskkit.load; assert 'torch' in sys.modules; print(f.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "maskkit.api", out.stderr[-2000:]


def test_load_accepts_a_run_a_checkpoint_and_an_export_alike(run, open_clip_dir, model):
    import maskkit

    x = _images(2)
    want = F.normalize(model.encode_image(x)[0], dim=-1)
    for path in (run, run / "checkpoints" / "step_00000002.pt", open_clip_dir):
        m = maskkit.load(path)
        assert m.image_size == 96 and m.grid == (6, 6)
        assert float((m.encode_image(x) - want).abs().max()) <= 1e-5, path
    assert maskkit.load(open_clip_dir).config is None and maskkit.load(run).config.preset == "xlip"


def test_images_as_paths_pil_arrays_and_tensors_are_preprocessed_as_in_training(run, tmp_path):
    import maskkit
    from PIL import Image

    from maskkit.data.dataset import XrayDataset
    from maskkit.data.records import Record, Table

    m = maskkit.load(run)
    rng = np.random.default_rng(1)
    pix = rng.integers(0, 256, (150, 120), dtype=np.uint8)
    png = tmp_path / "a.png"
    Image.fromarray(pix).save(png)
    trained = XrayDataset(Table("t", [Record("a", str(png), None)], ()), 96, policy="raise")[0]["image"]  # training's pipeline
    want = m.encode_image(trained[None])
    for what in (str(png), png, Image.open(png), pix, torch.from_numpy(pix), torch.from_numpy(pix / 255.0).float(),
                 Image.open(png).convert("RGB"), torch.from_numpy(pix).expand(3, -1, -1)):
        got = m.encode_image(what)
        assert got.shape == (1, m.xlip.embed_dim) and float((got - want).abs().max()) <= 1e-5, type(what)
    assert m.encode_image([png, pix]).shape == (2, m.xlip.embed_dim)
    with pytest.raises(MaskkitError, match=r"image: float tensor with values in \[0, 255\]; expected \[0, 1\]"):
        m.encode_image(torch.from_numpy(pix).float())
    with pytest.raises(MaskkitError, match="image: a dict; expected a file path, a PIL image"):
        m.encode_image({"x": 1})
    with pytest.raises(MaskkitError, match="does not exist"):
        m.encode_image(tmp_path / "missing.png")


def test_zero_shot_is_the_chexzero_softmax_of_the_prompts(run):
    import maskkit
    from maskkit.eval.zeroshot import prompt_pair

    m = maskkit.load(run)
    x = _images(3)
    p = m.zero_shot(x, ["Pleural Effusion", "Cardiomegaly"], no_finding="pair")
    assert p.shape == (3, 2)
    img = m.encode_image(x)
    for k, lab in enumerate(["Pleural Effusion", "Cardiomegaly"]):  # by hand: mean prompt embeddings, softmax
        pos, neg = (F.normalize(m.encode_text(t).mean(0), dim=-1) for t in prompt_pair(lab))
        hand = torch.stack([img @ pos, img @ neg], -1).softmax(-1)[:, 0]
        torch.testing.assert_close(p[:, k].float(), hand, rtol=0, atol=1e-5)
    nf = m.zero_shot(x, ["Pleural Effusion", "Cardiomegaly", "No Finding"])  # No Finding: absence of the others
    torch.testing.assert_close(nf[:, 2], (1 - nf[:, 0]) * (1 - nf[:, 1]), rtol=0, atol=1e-6)


def test_similarity_map_is_the_cosine_of_each_patch_token_to_the_text(run):
    import maskkit

    m = maskkit.load(run)
    x = _images(2)
    maps = m.similarity_map(x, "left pleural effusion")
    one = m.similarity_map(x[0], "left pleural effusion")
    assert maps.shape == (2, 6, 6) and one.shape == (6, 6)
    torch.testing.assert_close(one, maps[0])
    _, tokens = m.xlip.encode_image(m.images(x))
    text = m.encode_text("left pleural effusion")[0]
    hand = F.cosine_similarity(tokens, text[None, None], dim=-1).reshape(2, 6, 6)
    torch.testing.assert_close(maps, hand, rtol=0, atol=1e-5)


# --- timm export of every image tower timm's ViT holds (issue 20 fresh-user test, item 1) -----------------

@pytest.mark.parametrize("vision, top, name", [
    ({"no_ln_pre": True, "norm_kwargs": {"eps": 1e-6}}, {}, "vit_base_patch16_224"),  # BiomedCLIP's, rewritten
    ({"no_ln_pre": True}, {}, "vit_base_patch16_clip_224"),
    ({"norm_kwargs": {"eps": 1e-6}}, {"quick_gelu": True}, "vit_base_patch16_224"),
    ({"pool_type": "avg", "ls_init_value": 0.1}, {}, "vit_base_patch16_clip_224"),
    ({}, {"quick_gelu": True}, "vit_base_patch16_clip_quickgelu_224"),
])
def test_timm_export_holds_pre_norm_eps_pooling_layer_scale_and_activation(vision, top, name, tmp_path):
    """An image tower without pre-norm (BiomedCLIP's, A61), with LayerNorm eps 1e-6, average
    pooling, layer scale or QuickGELU is a timm VisionTransformer: the folder loads in plain timm and
    gives maskkit.load's image embedding."""
    import timm
    from test_weights import FOLDER_CFG, open_clip_folder

    import maskkit
    from maskkit.export import write_timm_folder

    mc = {**FOLDER_CFG, **top, "vision_cfg": {**FOLDER_CFG["vision_cfg"], **vision}}
    open_clip_folder(tmp_path / "src", model_cfg=mc)
    m = maskkit.load(tmp_path / "src")
    got_name, args, diffs = write_timm_folder(m.xlip, tmp_path / "timm")
    assert got_name == name and args["pre_norm"] is not vision.get("no_ln_pre", False), args
    assert max(diffs.values()) <= 1e-5
    net = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    assert isinstance(net.norm_pre, torch.nn.Identity) is bool(vision.get("no_ln_pre"))
    assert net.blocks[0].norm1.eps == vision.get("norm_kwargs", {}).get("eps", 1e-5)
    x = _images(2, 64)
    with torch.no_grad():
        got = F.normalize(net(m.xlip.normalise(x)), dim=-1)
    assert float((got - m.encode_image(x)).abs().max()) <= 1e-5


def test_timm_export_refuses_an_eps_no_timm_vit_has(tmp_path):
    from test_weights import FOLDER_CFG, open_clip_folder

    import maskkit
    from maskkit.export import write_timm_folder

    open_clip_folder(tmp_path / "src", model_cfg={**FOLDER_CFG, "vision_cfg": {**FOLDER_CFG["vision_cfg"], "norm_kwargs": {"eps": 1e-3}}})
    with pytest.raises(MaskkitError) as e:
        write_timm_folder(maskkit.load(tmp_path / "src").xlip, tmp_path / "timm")
    msg = str(e.value)
    assert msg.startswith("--format timm: the image tower has vision_cfg.norm_kwargs={'eps': 0.001}; timm's named ViTs have "
                          "LayerNorm eps 1e-5 (CLIP) or 1e-6 (ImageNet)") and "\n" not in msg, msg


# --- the model card's recipes run as written (fresh-user item 4) --------------------------------------------

def _card_code(folder: Path) -> str:
    import re

    blocks = re.findall(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S)
    assert len(blocks) == 1, blocks
    return blocks[0].replace("PATH", str(folder))


def test_the_timm_card_s_code_runs_as_written_backbone_included(model, timm_dir):
    code = _card_code(timm_dir)
    assert "num_classes=0" in code and "backbone" in code
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)  # the card's snippet, literally
    x = torch.zeros(1, 3, 96, 96)
    with torch.no_grad():
        want, _ = model.encode_image(torch.full((1, 1, 96, 96), 0.5))
        xn = model.normalise(torch.full((1, 1, 96, 96), 0.5))
        assert float((ns["model"](xn) - want).abs().max()) <= 1e-5
        assert ns["backbone"].num_classes == 0 and isinstance(ns["backbone"].head, torch.nn.Identity)
        assert ns["tokens"].shape == (1, 37, 192) and ns["embedding"].shape == (1, model.embed_dim)
        torch.testing.assert_close(ns["backbone"].forward_features(x), ns["model"].forward_features(x), rtol=0, atol=0)


def test_the_open_clip_card_s_code_runs_as_written(model, open_clip_dir, tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96), dtype=np.uint8)).save(tmp_path / "xray.png")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(_card_code(open_clip_dir), "README.md", "exec"), ns)
    assert ns["image_features"].shape == (1, model.embed_dim) and ns["text_features"].shape == (1, model.embed_dim)


# --- permissions follow the umask (fresh-user item 11) ------------------------------------------------------

def test_atomic_folders_and_files_follow_the_umask(tmp_path, open_clip_dir):
    """tempfile makes 0700 folders and 0600 files; what maskkit writes atomically gets the usual
    permissions: 0777 / 0666 less the umask."""
    import os
    import stat

    from maskkit.io import atomic_directory, atomic_write_text

    old = os.umask(0o027)
    try:
        with atomic_directory(tmp_path / "d") as d:
            atomic_write_text(d / "a.txt", "x")
        atomic_write_text(tmp_path / "b.txt", "y")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert (mode(tmp_path / "d"), mode(tmp_path / "d" / "a.txt"), mode(tmp_path / "b.txt")) == (0o750, 0o640, 0o640)
    want_dir, want_file = 0o777 & ~old, 0o666 & ~old  # the export, made under this process's umask
    assert mode(open_clip_dir) == want_dir
    assert {p.name: mode(p) for p in open_clip_dir.iterdir()} == {p.name: want_file for p in open_clip_dir.iterdir()}


# --- maskkit.load's small faults (fresh-user item 13) -----------------------------------------------------

def test_text_past_the_context_warns_once_naming_the_count(run):
    import warnings

    import maskkit
    from maskkit.errors import MaskkitWarning

    m = maskkit.load(run)
    long = " ".join(["effusion"] * 200)  # far past the 64-token context
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = m.encode_text([long, "no effusion", long])
        m.encode_text("no effusion")
    cut = [w for w in caught if issubclass(w.category, MaskkitWarning)]
    assert len(cut) == 1 and str(cut[0].message) == ("encode_text: 2 of 3 texts longer than the model's context of 64 tokens "
                                                     "(62 after its special tokens) were cut to it; the rest is not encoded")
    assert out.shape == (3, m.xlip.embed_dim) and torch.equal(out[0], out[2])


def test_an_image_with_nan_is_one_line(run):
    import maskkit

    m = maskkit.load(run)
    x = torch.rand(1, 96, 96)
    x[0, 3, 4] = float("nan")
    for what in (x, x.numpy()):
        with pytest.raises(MaskkitError) as e:
            m.encode_image(what)
        assert str(e.value) == "image: float tensor with 1 NaN or infinite value of 9216; expected finite values in [0, 1]"


def test_load_of_a_folder_that_is_not_a_run_names_what_is_missing(tmp_path, timm_dir):
    import maskkit

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("hello")
    cases = {tmp_path / "x": f"maskkit.load: {tmp_path / 'x'} is not a run directory (no checkpoints/step_*.pt) nor an "
                             f"open_clip folder (no open_clip_config.json); expected a run directory, a checkpoint file "
                             f"(checkpoints/step_*.pt) or an open_clip folder",
             tmp_path / "none": f"maskkit.load: {tmp_path / 'none'} does not exist; expected a run directory",
             timm_dir: f"maskkit.load: {timm_dir} has config.json but no open_clip_config.json: a timm or transformers "
                       f"folder (one tower), not a CLIP"}
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    cases[tmp_path / "run"] = (f"maskkit.load: {tmp_path / 'run'} is a run directory without checkpoints (no step_*.pt in "
                               f"{tmp_path / 'run' / 'checkpoints'}; a run writes one every train.ckpt_every steps and at its end)")
    for path, want in cases.items():
        with pytest.raises(MaskkitError) as e:
            maskkit.load(path)
        assert str(e.value).startswith(want) and "\n" not in str(e.value), str(e.value)
