"""Robust decoding, the skip policy, bad reports, and the preprocessing cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from maskkit.data.cache import PreparedCache, prepare_cache
from maskkit.data.dataset import Collator, SkipLimitExceeded, SkipReport, XrayDataset, clean_report
from maskkit.data.images import DecodeError, read_image
from maskkit.data.records import Record, Table
from maskkit.data.tokenize import ReportTokenizer
from maskkit.errors import MaskkitError


def png8(path, arr):
    Image.fromarray(arr.astype(np.uint8)).save(path)


def png16(path, arr):
    Image.fromarray(arr.astype(np.uint16)).save(path)  # mode I;16, 16-bit PNG


def test_16bit_png_keeps_values_above_255(tmp_path):
    arr = np.array([[0, 255, 1000], [30000, 50000, 65535]], dtype=np.uint16)
    png16(tmp_path / "x.png", arr)
    with open(tmp_path / "x.png", "rb") as f:
        assert f.read(26)[24] == 16  # really stored with bit depth 16
    img = read_image(tmp_path / "x.png")
    np.testing.assert_allclose(img, arr / 65535.0, atol=1e-6)
    assert len(np.unique(img)) == 6  # nothing clipped to 1.0 as an 8-bit conversion would


def test_12bit_values_in_16bit_png_scale_by_stored_depth(tmp_path):
    arr = np.array([[0, 4095]], dtype=np.uint16)
    png16(tmp_path / "x.png", arr)
    np.testing.assert_allclose(read_image(tmp_path / "x.png"), arr / 65535.0, atol=1e-6)


def test_8bit_png_and_jpeg(tmp_path):
    arr = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))
    png8(tmp_path / "a.png", arr)
    np.testing.assert_allclose(read_image(tmp_path / "a.png"), arr / 255.0, atol=1e-6)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    assert np.abs(read_image(tmp_path / "a.jpg") - arr / 255.0).max() < 0.05


def test_truncated_and_missing_files_raise_decode_error(tmp_path):
    png8(tmp_path / "ok.png", np.random.default_rng(0).integers(0, 255, (64, 64)))
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError, match=r"cut.png: cannot decode image"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(DecodeError, match="does not exist"):
        read_image(tmp_path / "nope.png")


def test_dicom_monochrome1_is_inverted_and_lut_applied(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    def write(name, photometric, slope=1.0):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(tmp_path / name), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.Rows, ds.Columns = 2, 2
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
        ds.PixelData = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16).tobytes()
        ds.save_as(tmp_path / name, enforce_file_format=True)
        return tmp_path / name

    m2 = read_image(write("m2.dcm", "MONOCHROME2"))
    m1 = read_image(write("m1.dcm", "MONOCHROME1"))
    np.testing.assert_allclose(m2, np.array([[0, 0.25], [0.5, 1.0]]), atol=1e-6)
    np.testing.assert_allclose(m1, 1 - m2, atol=1e-6)


@pytest.mark.parametrize("text,expected", [("", None), ("   ", None), ("XXXX", None), ("XXXX. XXXX, XXXX", None),
                                           (None, None), ("No XXXX effusion.", "No XXXX effusion.")])
def test_clean_report(text, expected):
    assert clean_report(text) == expected


def _table(tmp_path):
    good = tmp_path / "good.png"
    png8(good, np.full((40, 40), 200))
    big = tmp_path / "big.png"
    png16(big, np.full((40, 40), 40000))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    recs = [Record("good", str(good), "Small right effusion."), Record("big", str(big), ""),
            Record("cut", str(cut), "XXXX"), Record("gone", str(tmp_path / "gone.png"), "No pneumothorax.")]
    return Table("t", recs, ())


def test_bad_inputs_do_not_crash_a_batch(tmp_path):
    ds = XrayDataset(_table(tmp_path), image_size=16)
    batch = Collator(ReportTokenizer(16))([ds[i] for i in range(4)])
    assert batch["ids"] == ["good", "big"]
    assert batch["paired"].tolist() == [True, False]  # the empty report is image-only
    assert abs(float(batch["images"][1].mean()) - 40000 / 65535) < 1e-3
    assert [p.split("/")[-1] for p, _ in batch["skipped"]] == ["cut.png", "gone.png"]
    report = SkipReport(max_fraction=0.9, min_seen=1)
    report.update(2, batch["skipped"])
    assert "2 of 4 images skipped" in report.summary() and "cut.png: cannot decode" in report.summary()
    with pytest.raises(SkipLimitExceeded, match=r"2 of 4 images failed to decode \(50.0% > data.max_skip_fraction=0.25\)"):
        SkipReport(max_fraction=0.25, min_seen=1).update(2, batch["skipped"])


def test_raise_policy(tmp_path):
    ds = XrayDataset(_table(tmp_path), image_size=16, policy="raise")
    with pytest.raises(DecodeError, match="cut.png"):
        ds[2]
    with pytest.raises(MaskkitError, match="data.decode_policy: 'zip'"):
        XrayDataset(_table(tmp_path), policy="zip")


def test_prepared_cache_round_trip(tmp_path):
    table = _table(tmp_path)
    index = prepare_cache(table, tmp_path / "cache", size=16, progress=False)
    assert set(index["skipped"]) == {"2", "3"}
    ds = XrayDataset(table, image_size=16, cache=tmp_path / "cache")
    direct = XrayDataset(table, image_size=16)
    for i in (0, 1):
        assert torch.allclose(ds[i]["image"], direct[i]["image"], atol=1 / 255)
    assert "skipped" in ds[2] and "skipped" in ds[3]
    with pytest.raises(MaskkitError, match="folder exists; pass --overwrite"):
        prepare_cache(table, tmp_path / "cache", size=16, progress=False)
    with pytest.raises(MaskkitError, match="holds 16 px images, the run needs 32"):
        XrayDataset(table, image_size=32, cache=tmp_path / "cache")
    other = Table("t", [Record("zzz", "x.png")], ())
    with pytest.raises(MaskkitError, match="does not hold record .zzz."):
        XrayDataset(other, image_size=16, cache=tmp_path / "cache")
    assert not any(p.name.startswith(".cache") for p in tmp_path.iterdir())  # no temp folder left


def test_interrupted_prepare_leaves_old_cache_intact(tmp_path):
    table = _table(tmp_path)
    prepare_cache(table, tmp_path / "cache", size=16, progress=False)
    before = (tmp_path / "cache" / "images.npy").read_bytes()
    bad = Table("t", table.records + [Record("boom", 123, None)], ())  # a non-path makes prepare fail midway
    with pytest.raises(TypeError):
        prepare_cache(bad, tmp_path / "cache", size=16, progress=False, overwrite=True)
    assert (tmp_path / "cache" / "images.npy").read_bytes() == before
    assert len(PreparedCache(tmp_path / "cache")) == 4


def test_atomic_write_keeps_usual_permissions(tmp_path):
    import os

    from maskkit.io import atomic_write_text

    atomic_write_text(tmp_path / "a.txt", "x")
    mode = (tmp_path / "a.txt").stat().st_mode & 0o777
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask


def test_atomic_open_keeps_the_previous_file_when_the_writer_fails(tmp_path):
    """A checkpoint streamed by torch.save that fails half-way (the writer raises) leaves the previous
    file byte for byte and no temporary file; an OSError becomes the one-line OutputWriteError."""
    import errno

    import torch

    from maskkit.errors import OutputWriteError
    from maskkit.io import atomic_open

    target = tmp_path / "step.pt"
    with atomic_open(target) as f:
        torch.save({"w": torch.arange(4)}, f)
    before = target.read_bytes()
    assert torch.load(target)["w"].tolist() == [0, 1, 2, 3]

    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_open(target) as f:
            f.write(b"partial")
            raise RuntimeError("half-way")
    with pytest.raises(OutputWriteError, match=r"cannot write .*step\.pt: No space left on device") as e:
        with atomic_open(target) as f:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.errno == errno.ENOSPC and "\n" not in str(e.value)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step.pt"]
