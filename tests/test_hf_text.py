"""Hugging Face text towers (BERT-style, as BiomedCLIP's PubMedBERT): tokenizer, tower, XLIP training,
``model.pretrained`` from a transformers folder, and the one-line refusals. Tiny BERTs built here."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="HF text towers need the optional transformers package (pip install 'maskkit[hf]')")

from maskkit.config import resolve  # noqa: E402
from maskkit.data.tokenize import entity_positions  # noqa: E402
from maskkit.errors import MaskkitError  # noqa: E402
from maskkit.model import MLMConfig, XLIP  # noqa: E402
from maskkit.model.towers import create_clip, text_tokens, tower_tokenizer  # noqa: E402
from maskkit.presets import PRESETS  # noqa: E402
from maskkit.train import train  # noqa: E402

from model_helpers import TINY_VOCAB, phantom_batch, tiny_bert_folder, tiny_config, tiny_hf_arch  # noqa: E402

REPORT = "Mild CARDIOMEGALY; no pleural effusion. Élan heart."


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert_folder(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def registered(bert, tmp_path_factory):
    """The tiny HF architecture registered with open_clip under a name (as model.arch takes it)."""
    import open_clip

    f = tmp_path_factory.mktemp("arch") / "maskkit-test-bert.json"
    f.write_text(json.dumps(tiny_hf_arch(bert)))
    open_clip.add_model_config(f)
    return "maskkit-test-bert"


def test_tokenizer_rows_offsets_and_specials(bert):
    from transformers import AutoTokenizer

    clip = create_clip(tiny_hf_arch(bert))
    tok = tower_tokenizer(clip)
    ref = AutoTokenizer.from_pretrained(bert)
    assert (tok.vocab_size, tok.pad_id, tok.start_id, tok.end_id, tok.mask_id, tok.pooling, tok.context_length) == \
        (len(ref), 0, 2, 3, 4, "cls", 32)
    enc = tok([REPORT, None, "effusion " * 40])
    want = ref([REPORT, "", "effusion " * 40], padding="max_length", truncation=True, max_length=32)["input_ids"]
    assert enc.ids.tolist() == want
    assert enc.valid[1].sum() == 2 and enc.valid[2].all()                 # [CLS] [SEP]; truncated to 32
    assert enc.special[0].tolist() == [i in (0, 2, 3) for i in enc.ids[0].tolist()]
    # an entity's character span lands on its own WordPiece tokens, each piece of a split word included
    words = {w: (REPORT.index(w), REPORT.index(w) + len(w)) for w in ("CARDIOMEGALY", "Élan")}
    for w, (s, e) in words.items():
        pos = entity_positions(enc.spans[0], [(s, e)], 32)
        assert tok.decode(enc.ids[0][pos].tolist()).replace(" ##", "").replace(" ", "") == w.lower().replace("é", "e")
    assert int(entity_positions(enc.spans[0], [words["Élan"]], 32).sum()) == 4  # e ##l ##a ##n
    assert not (entity_positions(enc.spans[0], [(0, len(REPORT))], 32) & enc.special[0]).any()


@pytest.mark.parametrize("pooler", ["cls_last_hidden_state_pooler", "mean_pooler", "cls_pooler"])
def test_text_tokens_equal_open_clip(bert, pooler):
    torch.manual_seed(0)
    clip = create_clip(tiny_hf_arch(bert, pooler=pooler, proj="linear")).eval()
    enc = tower_tokenizer(clip)([REPORT, "no effusion", ""])
    pooled, tokens = text_tokens(clip, enc.ids)
    assert tokens.shape == (3, 32, 32)
    torch.testing.assert_close(pooled, clip.encode_text(enc.ids), rtol=0, atol=1e-6)
    assert torch.equal(tokens[:, 0], clip.text.proj(clip.text.transformer(enc.ids, attention_mask=enc.valid.long()).last_hidden_state[:, 0]))


def test_xlip_on_a_bert_tower_masks_with_mask_token(registered):
    torch.manual_seed(0)
    p = PRESETS["xlip"][0]
    model = XLIP(tiny_config(arch=registered), image_mask=p["image_mask"], image_only_mask=p["image_only_mask"],
                 text_mask=p["text_mask"])
    assert model.mask_id == 4 and model.mask_embedding is None
    assert model.text_decoder.head.out_features == model.tokenizer.vocab_size == len(TINY_VOCAB)
    batch = phantom_batch(8, context=32)
    batch = {**batch, **_retokenize(model, batch)}
    out = model(batch, seed=3)
    assert out.mlm_labels.numel() > 0 and int(out.mlm_labels.max()) < model.tokenizer.vocab_size
    assert out.mlm_logits.shape[1] == model.tokenizer.vocab_size
    # no feature the decoder reads carries a selected token: changing the selected tokens changes nothing
    model.eval()
    ids, valid = batch["text"], batch["text_valid"]
    _, e_img = model.encode_image(batch["images"])
    _, e_rep = model.encode_text(ids)
    def ctx():  # a fresh context (generator) per pass: the same draw each time
        return model.mask_contexts(e_img, e_rep, valid, batch["entities"], seed=3)["text_mask"]
    hidden, selected = model.mlm_hidden(ids, valid, ctx(), e_img, e_rep)
    assert (selected & valid).any()
    other = torch.where(selected & valid, (ids + 7) % model.tokenizer.vocab_size, ids)
    hidden2, selected2 = model.mlm_hidden(other, valid, ctx(), e_img, e_rep)
    assert torch.equal(selected2, selected)
    torch.testing.assert_close(hidden2, hidden, rtol=0, atol=1e-5)
    seen = valid & ~selected & (ids != model.tokenizer.start_id) & (ids != model.tokenizer.end_id)
    changed = torch.where(seen, (ids + 7) % model.tokenizer.vocab_size, ids)
    assert not torch.allclose(model.mlm_hidden(changed, valid, ctx(), e_img, e_rep)[0], hidden, atol=1e-3)
    learned = XLIP(tiny_config(arch=registered, mlm=MLMConfig(layers=1, heads=4, mask_token="learned")),
                   text_mask=p["text_mask"])
    assert learned.mask_id is None and learned.mask_embedding.shape == (32,)   # the BERT's width
    assert learned(batch, seed=3).mlm_labels.numel() > 0


def _retokenize(model, batch):
    from maskkit.data.dataset import encode_report

    rows = [encode_report(model.tokenizer, r, s) for r, s in zip(batch["reports"], batch["entity_spans"])]
    return {"text": torch.stack([r["text_ids"] for r in rows]), "text_valid": torch.stack([r["text_valid"] for r in rows]),
            "entities": torch.stack([r["entities"] for r in rows])}


def test_two_training_steps_of_the_default_preset(registered, tmp_path):
    cfg, sources = resolve(["data.n=16", "data.val_n=0", "train.batch_size=4", "train.log_every=1", "train.steps=2",
                   "runtime.progress=false", "runtime.evaluations=[]", f"model.arch={registered}",
                   "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mim.decoder_heads=2",
                   "model.mlm.layers=1", f"runtime.out_dir={tmp_path}"])
    assert cfg.text_mask is not None and cfg.image_mask is not None        # EntMLM and AttMIM are on
    res = train(cfg, sources)
    assert [r["step"] for r in res.losses] == [1, 2]
    for r in res.losses:
        assert all(math.isfinite(r[k]) for k in ("align_loss", "mim_loss", "mlm_loss") if r.get(k) is not None)
    assert any(r.get("mlm_loss") is not None for r in res.losses)
    assert abs(res.losses[0]["mlm_loss"] - math.log(len(TINY_VOCAB))) < 1.5   # cross-entropy over the BERT's vocabulary


def test_pretrained_transformers_folder_loads_into_the_text_tower(registered, tmp_path):
    from transformers import BertForMaskedLM, BertModel

    for masked_lm in (False, True):
        folder = tiny_bert_folder(tmp_path / f"pubmedbert-{masked_lm}", masked_lm=masked_lm, seed=7)
        model = XLIP(tiny_config(arch=registered, pretrained=str(folder)))
        ref = (BertForMaskedLM if masked_lm else BertModel).from_pretrained(folder)
        ref = ref.bert if masked_lm else ref
        want = ref.embeddings.word_embeddings.weight
        assert torch.equal(model.clip.text.transformer.embeddings.word_embeddings.weight, want)
        # BertModel saves a pooler, BertForMaskedLM its MLM head: the tower (CLS of the last hidden state) has neither
        left = r"left out 5 \(the tower has no cls\.\*\)" if masked_lm else r"left out 2 \(the tower has no pooler\.\*\)"
        assert re.fullmatch(rf"loaded 37 tensors into the text tower from pubmedbert-\w+/model\.safetensors; missing 0; "
                            rf"{left}; format: transformers model folder; the image tower has no weights in "
                            rf"pubmedbert-\w+/model\.safetensors: randomly initialised \(untrained\)", model.load_report), model.load_report
        assert model.tokenizer.name.startswith("BertTokenizer from " + str(folder))


def _one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_wrong_folders_and_choices_fail_in_one_line(bert, registered, tmp_path):
    # a BERT folder given to an architecture with CLIP's text tower
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(pretrained=str(bert)))
    assert "is a transformers model folder (a text tower), but model.arch 'maskkit-tiny' has CLIP's text tower" in _one_line(e)
    # no weights
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text((bert / "config.json").read_text())
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (empty / f).write_text((bert / f).read_text())
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(arch=registered, pretrained=str(empty)))
    assert f"{empty} has config.json but no weights; expected one of model.safetensors" in _one_line(e)
    # a truncated safetensors file
    cut = tmp_path / "truncated"
    cut.mkdir()
    for f in bert.iterdir():
        (cut / f.name).write_bytes(f.read_bytes())
    data = (bert / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(arch=registered, pretrained=str(cut)))
    assert f"cannot read {cut / 'model.safetensors'} (" in _one_line(e) and "is it truncated?" in _one_line(e)
    # weights of another width than config.json says
    other = tiny_bert_folder(tmp_path / "wide", hidden=48)
    (other / "config.json").write_text((bert / "config.json").read_text())
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(arch=registered, pretrained=str(other)))
    assert re.search(r"wide/model\.safetensors: 'embeddings\.[\w.]+' has shape \((\d+, )?48,?\), the text tower built from "
                     r".*wide/config\.json expects \((\d+, )?32,?\) \(37 mismatched keys\)$", _one_line(e))
    # a hub name that is neither local nor cached
    arch = tiny_hf_arch(bert)
    arch["text_cfg"]["hf_model_name"] = "microsoft/not-a-cached-model-xyz"
    with pytest.raises(MaskkitError) as e:
        create_clip(arch)
    assert "'microsoft/not-a-cached-model-xyz' is neither a local folder nor in the Hugging Face cache" in _one_line(e)
    # a model type open_clip's HF tower cannot build
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(arch=registered, pretrained=str(odd)))
    assert "has model_type 'gpt2'; open_clip's HF text tower supports bert," in _one_line(e)
    # a context longer than the tower's positions
    with pytest.raises(MaskkitError) as e:
        create_clip(tiny_hf_arch(bert, context=65))
    assert "text_cfg.context_length 65 exceeds the 64 positions of the text tower" in _one_line(e)
    # mlm.mode=loss on a bidirectional tower; a mask token CLIP's BPE lacks
    text = PRESETS["xlip"][0]["text_mask"]
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(arch=registered, mlm=MLMConfig(layers=1, mode="loss")), text_mask=text)
    assert "model.mlm.mode=loss: the text tower of maskkit-test-bert is bidirectional" in _one_line(e)
    with pytest.raises(MaskkitError) as e:  # causal reads the clean E_report too (A58)
        XLIP(tiny_config(arch=registered, mlm=MLMConfig(layers=1, mode="causal")), text_mask=text)
    assert "model.mlm.mode=causal: the text tower of maskkit-test-bert is bidirectional" in _one_line(e)
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(mlm=MLMConfig(layers=1, heads=4, mask_token="tokenizer")), text_mask=text)
    assert "model.mlm.mask_token=tokenizer: the text tower's tokenizer (CLIP BPE" in _one_line(e)
    # a config dict that is not one
    with pytest.raises(MaskkitError) as e:
        create_clip({"embed_dim": 8})
    assert "the open_clip model config has no vision_cfg, text_cfg" in _one_line(e)


def test_a_weights_only_folder_takes_the_architectures_tokenizer(bert, registered, tmp_path):
    bare = tmp_path / "weights-only"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((bert / f).read_bytes())
    model = XLIP(tiny_config(arch=registered, pretrained=str(bare)))
    assert model.tokenizer.name.startswith(f"BertTokenizer from {bert} ")
    assert model.load_report.startswith("loaded 37 tensors into the text tower from weights-only/model.safetensors")


def test_without_transformers_an_hf_architecture_is_one_line(bert, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name, *a))
    with pytest.raises(MaskkitError) as e:
        create_clip(tiny_hf_arch(bert))
    assert _one_line(e).endswith("which needs the transformers package: pip install 'maskkit[hf]'")


def test_transformers_folder_with_more_layers_than_its_config_is_refused(registered, tmp_path):
    """A BERT folder whose weights have 3 layers and whose config.json says 2: before, layer 2 was
    silently left out."""
    folder = tiny_bert_folder(tmp_path / "bert3", layers=3)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(arch=registered, pretrained=str(folder)))
    assert _one_line(e) == (f"model.pretrained: {folder / 'model.safetensors'}: its text tower has 3 layers (encoder.layer.0-2), "
                            f"the model's 2: depth found 3, expected 2; the text tower is built from {folder / 'config.json'} "
                            f"(num_hidden_layers)")


def test_grad_checkpointing_false_leaves_the_hf_tower_s_off(registered):
    """open_clip's HFTextEncoder.set_grad_checkpointing ignores its argument: train.grad_checkpointing=false
    used to switch transformers' checkpointing on."""
    from maskkit.model.hf_text import is_checkpointing

    model = XLIP(tiny_config(arch=registered))
    bert = model.clip.text.transformer
    assert not is_checkpointing(bert)
    model.set_grad_checkpointing(False)
    assert not is_checkpointing(bert) and not model.clip.visual.transformer.grad_checkpointing
    model.set_grad_checkpointing(True)
    assert is_checkpointing(bert) and model.clip.visual.transformer.grad_checkpointing
    model.set_grad_checkpointing(False)
    assert not is_checkpointing(bert) and not model.clip.visual.transformer.grad_checkpointing


def test_a_bert_folder_without_tokenizer_files_says_they_are_missing_there(bert, tmp_path):
    """model.pretrained = a BERT folder without its tokenizer's files, the architecture's
    hf_tokenizer_name a hub id: the line says the files are missing in that folder (before: advice
    to set model.pretrained, which was set)."""
    import open_clip
    import shutil

    arch = {**tiny_hf_arch(bert)}
    arch["text_cfg"] = {**arch["text_cfg"], "hf_tokenizer_name": "microsoft/maskkit-test-absent-tokenizer"}
    (tmp_path / "maskkit-test-bert-hubtok.json").write_text(json.dumps(arch))
    open_clip.add_model_config(tmp_path / "maskkit-test-bert-hubtok.json")
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(bert / f, weights_only / f)
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(arch="maskkit-test-bert-hubtok", pretrained=str(weights_only)))
    assert _one_line(e) == (f"model.pretrained: the tokenizer files (tokenizer.json, vocab.txt, ...) are missing in {weights_only}, "
                            f"and text_cfg.hf_tokenizer_name 'microsoft/maskkit-test-absent-tokenizer' of the architecture "
                            f"cannot stand in; copy the model's tokenizer files into {weights_only}")
    # an architecture whose own text-tower folder lacks them
    arch = tiny_hf_arch(weights_only)
    (tmp_path / "maskkit-test-bert-notok.json").write_text(json.dumps(arch))
    open_clip.add_model_config(tmp_path / "maskkit-test-bert-notok.json")
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(arch="maskkit-test-bert-notok"))
    assert _one_line(e) == (f"model.arch: 'maskkit-test-bert-notok' text tower: the tokenizer files (tokenizer.json, vocab.txt, ...) "
                            f"are missing in {weights_only}; copy the model's tokenizer files there (the text tower's "
                            f"tokenizer must be local)")


def test_a_transformers_folder_with_two_weight_files_names_the_one_read(registered, bert, tmp_path):
    import shutil

    folder = Path(shutil.copytree(bert, tmp_path / "two"))
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    model = XLIP(tiny_config(arch=registered, pretrained=str(folder)))
    assert ("; format: transformers model folder; weights: model.safetensors (pytorch_model.bin beside it not read); the "
            "image tower has no weights in two/model.safetensors") in model.load_report, model.load_report


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_text_folder_trains_in_float32(registered, tmp_path, dtype):
    """A transformers folder saved in fp16/bf16 (its config.json says so: transformers builds the
    tower in that dtype) gives float32 parameters, the cast in the load report, and trains a step."""
    from transformers import BertModel

    folder = tiny_bert_folder(tmp_path / "half", seed=5)
    ref = BertModel.from_pretrained(folder)
    ref.to(getattr(torch, dtype)).save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text())["dtype"] == dtype
    model = XLIP(tiny_config(arch=registered, pretrained=str(folder)))
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {torch.float32}
    want = ref.embeddings.word_embeddings.weight.to(getattr(torch, dtype)).float()
    assert torch.equal(model.clip.text.transformer.embeddings.word_embeddings.weight, want)
    assert f"format: transformers model folder, {dtype} -> float32;" in model.load_report, model.load_report
    assert json.loads(model.build_record()["hf_config"])["dtype"] == "float32"   # what a checkpoint / an export records
    cfg, sources = resolve(["data.n=8", "data.val_n=0", "train.batch_size=4", "train.steps=1", "runtime.progress=false",
                            "runtime.evaluations=[]", f"model.arch={registered}", f"model.pretrained={folder}",
                            "model.mim.decoder_depth=1", "model.mim.decoder_width=32", "model.mim.decoder_heads=2",
                            "model.mlm.layers=1", f"runtime.out_dir={tmp_path / 'run'}"])
    res = train(cfg, sources)
    assert [r["step"] for r in res.losses] == [1] and math.isfinite(res.losses[0]["mim_loss"])


def test_a_transformers_folder_with_non_finite_weights_is_refused_at_load(registered, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tiny_bert_folder(tmp_path / "nan")
    w = folder / "model.safetensors"
    sd = load_file(str(w))
    sd["encoder.layer.1.output.dense.weight"][:2] = float("nan")
    save_file(sd, str(w), metadata={"format": "pt"})
    with pytest.raises(MaskkitError) as e:
        XLIP(tiny_config(arch=registered, pretrained=str(folder)))
    assert str(e.value).startswith(f"model.pretrained: {w}: tensor 'encoder.layer.1.output.dense.weight' (32, 64) holds "
                                   f"128 NaN/inf values of 2048 (the only non-finite tensor); expected finite weights")


def test_a_tokenizer_smaller_than_the_text_embedding_is_named_in_the_load_report(registered, tmp_path):
    """A BERT of 300 token rows with the 30-odd-token tiny tokenizer: before, accepted silently."""
    from transformers import BertConfig, BertModel

    folder = tiny_bert_folder(tmp_path / "big-vocab")
    cfg = BertConfig.from_pretrained(folder)
    cfg.vocab_size = 300
    BertModel(cfg).save_pretrained(folder)
    model = XLIP(tiny_config(arch=registered, pretrained=str(folder)))
    n = len(TINY_VOCAB)
    assert (f"; note: tokenizer vocab {n}, embedding rows 300: the text tower's last {300 - n} token rows are never used "
            f"(is {model.tokenizer.name} the weights' own tokenizer?)") in model.load_report, model.load_report
    same = XLIP(tiny_config(arch=registered, pretrained=str(tiny_bert_folder(tmp_path / "same"))))
    assert "tokenizer vocab" not in same.load_report
