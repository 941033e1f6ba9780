"""model.pretrained: every checkpoint format users hold.

Each format is a tiny maskkit-tiny CLIP saved in the test, in that format - never a mock, no
download: OpenAI's TorchScript archives (a scripted module whose state dict has OpenAI's layout:
fp16 weights plus input_resolution / context_length / vocab_size), open_clip .pt/.pth/.bin/
.safetensors, training-checkpoint wrappers, DDP / torch.compile prefixes, maskkit's own run
checkpoints.
"""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
from torch import nn

from maskkit.errors import MaskkitError
from maskkit.model.towers import create_clip, load_pretrained, read_state_dict


def tiny(seed: int):
    torch.manual_seed(seed)
    m = create_clip("maskkit-tiny")
    with torch.no_grad():  # every tensor distinct from a fresh model's, so a skipped one shows
        for v in m.state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn_like(v) * 0.01)
    return m


@pytest.fixture(scope="module")
def source():
    return tiny(1)


def openai_layout(model) -> dict[str, torch.Tensor]:
    """What OpenAI's released checkpoints hold: fp16 weights and three non-weight entries."""
    sd = {k: v.half() if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    sd |= {"input_resolution": torch.tensor(96), "context_length": torch.tensor(model.context_length),
           "vocab_size": torch.tensor(model.vocab_size)}
    return sd


class _Archive(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(state: dict[str, torch.Tensor], path) -> None:
    """A TorchScript archive (torch.jit.save) whose state_dict() is ``state``, as OpenAI's are."""
    root = _Archive()
    for key, v in state.items():
        *mods, leaf = key.split(".")
        m = root
        for name in mods:
            if name not in m._modules:
                m.add_module(name, nn.Module())
            m = m._modules[name]
        if v.is_floating_point():
            m.register_parameter(leaf, nn.Parameter(v, requires_grad=False))
        else:
            m.register_buffer(leaf, v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(root), str(path))


def _save(fmt: str, model, tmp_path):
    sd = model.state_dict()
    if fmt == "openai_torchscript":
        path = tmp_path / "ViT-tiny.pt"
        save_torchscript(openai_layout(model), path)
    elif fmt == "openai_state_dict":  # OpenAI layout saved with torch.save (open_clip's other OpenAI path)
        path = tmp_path / "openai_sd.pt"
        torch.save(openai_layout(model), path)
    elif fmt in ("pt", "pth", "bin"):
        path = tmp_path / f"open_clip_pytorch_model.{fmt}"
        torch.save(sd, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "open_clip_training":  # open_clip's train.py: epoch, name, DDP state_dict, optimizer
        path = tmp_path / "epoch_3.pt"
        torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                    "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}}, path)
    elif fmt == "ddp":
        path = tmp_path / "ddp.pt"
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    elif fmt == "compiled_ddp":
        path = tmp_path / "compiled.pt"
        torch.save({f"module._orig_mod.{k}": v for k, v in sd.items()}, path)
    elif fmt == "maskkit_run":  # maskkit's own checkpoint: {"model": XLIP state (towers under clip.), ...}
        path = tmp_path / "step_100.pt"
        xlip = {f"clip.{k}": v for k, v in sd.items()} | {"decoder.proj.weight": torch.zeros(2, 2), "image_mean": torch.zeros(3)}
        torch.save({"model": xlip, "optimizer": {"state": {}, "param_groups": []}, "step": 100}, path)
    else:
        raise AssertionError(fmt)
    return path


FORMATS = ["openai_torchscript", "openai_state_dict", "pt", "pth", "bin", "safetensors", "open_clip_training",
           "ddp", "compiled_ddp", "maskkit_run"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_loads_every_tensor(fmt, source, tmp_path):
    path = _save(fmt, source, tmp_path)
    target = tiny(2)
    report = load_pretrained(target, path)
    n = len(source.state_dict())
    assert report.startswith(f"loaded {n} tensors from {path.name}; missing 0; unexpected 0; format: "), report
    half = fmt.startswith("openai")
    for k, v in source.state_dict().items():
        want = v.half().float() if half and v.is_floating_point() else v
        got = target.state_dict()[k]
        assert got.dtype == v.dtype, k                    # fp16 OpenAI weights land in the model's dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=k)


def test_openai_torchscript_is_read_on_the_cpu_with_its_format_named(source, tmp_path):
    path = _save("openai_torchscript", source, tmp_path)
    state, fmt = read_state_dict(path)
    assert fmt == "OpenAI TorchScript, float16 -> float32"   # OpenAI's fp16 weights, read as the fp32 maskkit trains in
    assert not {"input_resolution", "context_length", "vocab_size"} & set(state)
    assert {v.device.type for v in state.values()} == {"cpu"}
    assert state["visual.conv1.weight"].dtype == torch.float32
    assert torch.equal(state["visual.conv1.weight"], source.visual.conv1.weight.detach().half().float())
    # what torch.load(weights_only=True) alone does with it: refuse (the failure users met)
    with pytest.raises(RuntimeError, match="TorchScript"):
        torch.load(path, map_location="cpu", weights_only=True)


def test_model_built_from_torchscript_weights_computes_what_the_source_computes(source, tmp_path):
    from maskkit.model.towers import image_tokens

    path = _save("openai_torchscript", source, tmp_path)
    target = tiny(2).eval()
    load_pretrained(target, path)
    ref = tiny(1).eval()
    with torch.no_grad():
        for v in ref.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())
        x = torch.randn(2, 3, 96, 96)
        torch.testing.assert_close(image_tokens(target, x)[1], image_tokens(ref, x)[1])


def test_position_embeddings_are_resized_to_the_model(tmp_path):
    """A checkpoint trained at another resolution loads, as open_clip interpolates it."""
    import open_clip

    from maskkit.model.towers import register_configs

    register_configs()
    cfg = open_clip.get_model_config("maskkit-tiny")
    big = open_clip.create_model("maskkit-tiny", pretrained=None, force_image_size=128)
    path = tmp_path / "at128.pt"
    torch.save(big.state_dict(), path)
    assert big.visual.positional_embedding.shape[0] == (128 // 16) ** 2 + 1 != (cfg["vision_cfg"]["image_size"] // 16) ** 2 + 1
    report = load_pretrained(tiny(2), path)
    assert "missing 0; unexpected 0" in report and "resized visual.positional_embedding (65, 192) -> (37, 192)" in report


class _Code:
    """A pickled object with code (what a .bin saved from a training script may hold)."""

    def __reduce__(self):
        return (print, ("ran",))


WEIGHTS_ONLY = ("is not a plain state dict: a weights_only load refused it ({why}: a pickled object, not only tensors); "
                "maskkit does not run a file's code. Re-save it from trusted code as tensors only "
                "(torch.save(model.state_dict(), PATH) or safetensors' save_file)")


@pytest.mark.parametrize("name, extra, why", [
    ("with_args.pt", argparse.Namespace(lr=1.0), "it needs 'argparse.Namespace'"),
    ("pytorch_model.bin", _Code(), "it needs 'print'"),
])
def test_a_pickle_with_code_is_one_short_line_naming_the_file(tmp_path, name, extra, why):
    """weights_only refuses a pickled object: one line naming the file, that it is not a plain state
    dict, the object and what to do (before: torch's paragraphs on loading it unsafely)."""
    path = tmp_path / name
    torch.save({"state_dict": tiny(2).state_dict(), "args": extra}, path)
    with pytest.raises(MaskkitError) as exc:
        load_pretrained(tiny(2), path)
    msg = str(exc.value)
    assert msg == f"model.pretrained: {path} " + WEIGHTS_ONLY.format(why=why), msg
    assert "\x1b" not in msg and "two options" not in msg


def test_a_run_checkpoint_or_transformers_folder_with_code_is_the_same_line(tmp_path):
    from maskkit.errors import TrainingError
    from maskkit.training.checkpointing import load_model

    ck = tmp_path / "r" / "checkpoints" / "step_00000001.pt"
    ck.parent.mkdir(parents=True)
    torch.save({"model": {}, "config": "{}", "args": _Code()}, ck)
    with pytest.raises(TrainingError) as exc:
        load_model(ck)
    assert str(exc.value).endswith(f"{ck} is not a plain maskkit checkpoint: a weights_only load refused it (it needs "
                                   f"'print': a pickled object, not only tensors); maskkit does not run a file's "
                                   f"code. Re-save it from trusted code as tensors only (torch.save(model.state_dict(), PATH) "
                                   f"or safetensors' save_file)"), str(exc.value)
    pytest.importorskip("transformers")
    from maskkit.model.hf_text import _read_weights

    (tmp_path / "bert").mkdir()
    torch.save({"x": torch.zeros(1), "y": _Code()}, tmp_path / "bert" / "pytorch_model.bin")
    with pytest.raises(MaskkitError) as exc:
        _read_weights(tmp_path / "bert")
    assert str(exc.value) == (f"model.pretrained: {tmp_path / 'bert' / 'pytorch_model.bin'} "
                              + WEIGHTS_ONLY.format(why="it needs 'print'"))


@pytest.mark.parametrize("payload, message", [
    ({}, "holds an empty dict, not a state dict of tensors"),
    ([1, 2], "holds a list, not a state dict of tensors"),
    ({"epoch": 3, "weights": {"a": torch.zeros(1)}},
     "entry 'epoch' is a int, not a tensor (top-level keys: epoch, weights); expected a state dict or a {'state_dict': ...} wrapper"),
])
def test_not_a_state_dict_is_one_line(tmp_path, payload, message):
    path = tmp_path / "odd.pt"
    torch.save(payload, path)
    with pytest.raises(MaskkitError) as exc:
        load_pretrained(tiny(2), path)
    assert str(exc.value).endswith(message) and "\n" not in str(exc.value)


def test_broken_torchscript_archive_is_one_line(source, tmp_path):
    import zipfile

    good = _save("openai_torchscript", source, tmp_path)
    bad = tmp_path / "truncated.pt"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            if "/data/" not in item.filename:  # drop the tensors, keep code/ and constants.pkl
                zout.writestr(item, zin.read(item.filename))
    with pytest.raises(MaskkitError) as exc:
        load_pretrained(tiny(2), bad)
    assert str(exc.value).startswith(f"model.pretrained: cannot read {bad} (") and "\n" not in str(exc.value)
