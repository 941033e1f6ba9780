"""EXIF orientation: a file whose Orientation tag says how it is meant to be viewed
decodes upright, in every format that carries the tag, on the training decode path, in the
prepared cache and in ``visualize --images``'s dataset. Real JPEG / PNG / TIFF / WebP files with
the tag are written here by Pillow; the expected arrays follow the EXIF specification (CIPA
DC-008, tag 0x0112), written as NumPy operations on the stored pixels."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from maskkit.data.images import DecodeError, read_image

ORIENTATION = 0x0112

#: EXIF orientation -> the viewed image as a function of the stored pixels
VIEWED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],           # mirrored left-right
    3: lambda a: a[::-1, ::-1],        # rotated 180
    4: lambda a: a[::-1, :],           # mirrored top-bottom
    5: lambda a: a.T,                  # transposed
    6: lambda a: np.rot90(a, -1),      # rotated 90 clockwise (a phone held upright)
    7: lambda a: a.T[::-1, ::-1],      # transversed
    8: lambda a: np.rot90(a, 1),       # rotated 90 counter-clockwise
}


def stored(dtype=np.uint8) -> np.ndarray:
    """A 6x10 image (landscape) whose every pixel differs, so any wrong turn shows."""
    a = np.arange(60, dtype=np.float64).reshape(6, 10) * 4 + 10
    return (a * 257).astype(np.uint16) if dtype == np.uint16 else a.astype(np.uint8)


def save(path, arr, fmt, orientation):
    im = Image.fromarray(arr)
    if fmt == "TIFF":
        im.save(path, format="TIFF", tiffinfo={ORIENTATION: orientation})
        return path
    exif = im.getexif()
    exif[ORIENTATION] = orientation
    extra = {"JPEG": {"quality": 100, "subsampling": 0}, "WEBP": {"lossless": True}}.get(fmt, {})
    im.save(path, format=fmt, exif=exif.tobytes(), **extra)
    return path


@pytest.mark.parametrize("orientation", sorted(VIEWED))
@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("TIFF", "tif"), ("WEBP", "webp")])
def test_lossless_formats_decode_as_viewed(tmp_path, fmt, suffix, orientation):
    a = stored()
    got = read_image(save(tmp_path / f"x.{suffix}", a, fmt, orientation))
    np.testing.assert_array_equal(got, VIEWED[orientation](a).astype(np.float32) / 255)


@pytest.mark.parametrize("orientation", sorted(VIEWED))
def test_jpeg_decodes_as_viewed(tmp_path, orientation):
    """JPEG is lossy: shape, and every pixel within a few grey levels of the viewed image."""
    a = stored()
    got = read_image(save(tmp_path / "x.jpg", a, "JPEG", orientation))
    want = VIEWED[orientation](a).astype(np.float32) / 255
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 6 / 255
    # the report's case: Orientation 6 puts the stored top-left corner at the viewed top-right
    if orientation == 6:
        assert got.shape == (10, 6) and abs(got[0, -1] - a[0, 0] / 255) < 6 / 255


@pytest.mark.parametrize("fmt, suffix", [("PNG", "png"), ("TIFF", "tif")])
def test_sixteen_bit_files_keep_their_range_and_turn(tmp_path, fmt, suffix):
    a = stored(np.uint16)
    got = read_image(save(tmp_path / f"x16.{suffix}", a, fmt, 6))
    np.testing.assert_array_equal(got, (np.rot90(a, -1) / 65535.0).astype(np.float32))


def png_with_exif(path, arr: np.ndarray, exif: bytes):
    """A grey 8-bit PNG written chunk by chunk with an ``eXIf`` chunk before its image data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    h, w = arr.shape
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + chunk(b"eXIf", exif)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    path.write_bytes(data)
    return path


def test_png_exif_chunk_written_by_hand(tmp_path):
    """The eXIf chunk as the PNG 1.5 extension defines it (a bare TIFF header, no 'Exif' prefix)."""
    exif = Image.Exif()
    exif[ORIENTATION] = 8
    block = exif.tobytes()
    bare = block[6:] if block.startswith(b"Exif\x00\x00") else block
    a = stored()
    got = read_image(png_with_exif(tmp_path / "hand.png", a, bare))
    np.testing.assert_array_equal(got, np.rot90(a, 1).astype(np.float32) / 255)


def test_a_cut_exif_block_leaves_the_image_as_stored(tmp_path):
    """An IFD that promises 65535 entries and holds none: Pillow warns and reads no tag, so the
    image is used as stored (no traceback, no guess)."""
    path = png_with_exif(tmp_path / "bad.png", stored(), b"MM\x00\x2a\x00\x00\x00\x08\xff\xff")
    with pytest.warns(UserWarning, match="Corrupt EXIF data"):
        got = read_image(path)
    np.testing.assert_array_equal(got, stored().astype(np.float32) / 255)


def test_a_png_cut_inside_its_exif_chunk_names_the_chunk(tmp_path):
    path = png_with_exif(tmp_path / "cut.png", stored(), Image.Exif().tobytes())
    data = path.read_bytes()
    path.write_bytes(data[:data.index(b"eXIf") + 6])
    with pytest.raises(DecodeError, match=r"cut.png: cannot decode image \(PNG truncated inside its eXIf chunk\)$"):
        read_image(path)


def test_training_path_cache_and_visualize_images_see_the_upright_image(tmp_path):
    """XrayDataset (training, evaluation, and visualize --images, which builds one over the given
    files) and the prepared cache (maskkit prepare) decode through read_image: the same upright image."""
    from maskkit.data.cache import PreparedCache, prepare_cache
    from maskkit.data.dataset import XrayDataset
    from maskkit.data.images import resize
    from maskkit.data.records import Record, Table

    # a portrait X-ray stored landscape: the left half bright (the marker side) once upright
    viewed = np.zeros((32, 24), np.uint8)
    viewed[:, :12] = 200
    stored_arr = np.rot90(viewed, 1)          # what a detector rotated by 90 degrees stores; Orientation 6 undoes it
    path = save(tmp_path / "cxr.jpg", np.ascontiguousarray(stored_arr), "JPEG", 6)
    table = Table("files", [Record("cxr", str(path))], ())
    want = resize(viewed.astype(np.float32) / 255, 16)

    img = XrayDataset(table, 16, policy="raise")[0]["image"][0].numpy()
    assert np.abs(img - want).max() < 0.05 and img[:, :8].mean() > 0.6 and img[:, 8:].mean() < 0.1

    prepare_cache(table, tmp_path / "cache", size=16, progress=False)
    cached = PreparedCache(tmp_path / "cache", expect_size=16).image("cxr")
    assert np.abs(cached - want).max() < 0.05 and cached[:, :8].mean() > 0.6
    via_cache = XrayDataset(table, 16, policy="raise", cache=str(tmp_path / "cache"))[0]["image"][0].numpy()
    np.testing.assert_allclose(via_cache, cached, atol=1e-6)
