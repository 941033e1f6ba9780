"""PNG decoding decided by the IHDR: every colour type x bit depth, filters, interlace, bad files."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from maskkit.data.images import LUMA, PNG_COLOUR_TYPES, DecodeError, read_image

CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _pack_row(row: np.ndarray, bits: int) -> bytes:
    """One scanline of samples (``[W, C]`` ints) packed at ``bits`` per sample, big-endian."""
    flat = row.reshape(-1).astype(np.int64)
    if bits == 16:
        return flat.astype(">u2").tobytes()
    if bits == 8:
        return flat.astype(np.uint8).tobytes()
    per = 8 // bits
    out = bytearray()
    for i in range(0, len(flat), per):
        byte = 0
        for k, v in enumerate(flat[i:i + per]):
            byte |= int(v) << (8 - bits * (k + 1))
        out.append(byte)
    return bytes(out)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else (b if pb <= pc else c)


def _filter(line: bytes, prior: bytes, bpp: int, kind: int) -> bytes:
    """PNG filter ``kind`` (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) of one scanline."""
    out = bytearray([kind])
    for i, x in enumerate(line):
        a = line[i - bpp] if i >= bpp else 0
        b = prior[i] if prior else 0
        c = prior[i - bpp] if prior and i >= bpp else 0
        pred = (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]
        out.append((x - pred) % 256)
    return bytes(out)


def write_png(path, samples: np.ndarray, colour_type: int, bits: int, palette=None, interlace: int = 0) -> None:
    """A standard PNG written by hand (so 16-bit colour types Pillow cannot write are covered);
    rows cycle through all five filter types."""
    h, w = samples.shape[:2]
    samples = samples.reshape(h, w, CHANNELS[colour_type])
    bpp = max(1, CHANNELS[colour_type] * bits // 8)
    passes = ADAM7 if interlace else ((0, 0, 1, 1),)
    raw, n = bytearray(), 0
    for x0, y0, dx, dy in passes:
        sub = samples[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        prior = b""
        for row in sub:
            line = _pack_row(row, bits)
            raw += _filter(line, prior, bpp, n % 5)
            prior, n = line, n + 1
    body = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bits, colour_type, 0, 0, interlace))
    if palette is not None:
        body += _chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes())
    body += _chunk(b"IDAT", zlib.compress(bytes(raw))) + _chunk(b"IEND", b"")
    path.write_bytes(body)


def expected(samples: np.ndarray, colour_type: int, bits: int, palette=None) -> np.ndarray:
    top = 2 ** bits - 1
    s = samples.astype(np.float64)
    if colour_type == 0:
        return s / top
    if colour_type == 4:
        return s[..., 0] / top
    if colour_type == 3:
        return np.asarray(palette, np.float64)[samples] @ LUMA / 255
    return s[..., :3] @ LUMA / top


COMBOS = [(ct, bits) for ct, (_, depths) in PNG_COLOUR_TYPES.items() for bits in depths]


@pytest.mark.parametrize("interlace", [0, 1])
@pytest.mark.parametrize("colour_type,bits", COMBOS, ids=[f"{PNG_COLOUR_TYPES[c][0]}-{b}bit" for c, b in COMBOS])
def test_every_colour_type_and_bit_depth(tmp_path, colour_type, bits, interlace):
    rng = np.random.default_rng(colour_type * 100 + bits)
    h, w = 11, 13  # odd sizes: partial Adam7 passes, sub-byte rows padded
    palette = None
    if colour_type == 3:
        palette = rng.integers(0, 256, (2 ** bits, 3))
        samples = rng.integers(0, 2 ** bits, (h, w))
    else:
        samples = rng.integers(0, 2 ** bits, (h, w, CHANNELS[colour_type])).squeeze(-1) if CHANNELS[colour_type] == 1 \
            else rng.integers(0, 2 ** bits, (h, w, CHANNELS[colour_type]))
    write_png(tmp_path / "x.png", samples, colour_type, bits, palette, interlace)
    img = read_image(tmp_path / "x.png")
    assert img.shape == (h, w) and img.dtype == np.float32
    np.testing.assert_allclose(img, expected(samples, colour_type, bits, palette), atol=1e-6)
    if bits == 16:  # the low byte matters: values differing only there decode differently
        assert len(np.unique(img)) == len(np.unique(expected(samples, colour_type, bits, palette)))


@pytest.mark.parametrize("colour_type", [0, 2, 4, 6])
def test_256_adjacent_16bit_levels_stay_distinct(tmp_path, colour_type):
    """The reported case (grey+alpha) and its kin: 256 neighbouring 16-bit levels, alpha opaque."""
    levels = (30000 + np.arange(256)).reshape(16, 16)
    chans = [levels] * (3 if colour_type in (2, 6) else 1) + ([np.full_like(levels, 65535)] if colour_type in (4, 6) else [])
    samples = np.stack(chans, -1)
    write_png(tmp_path / "x.png", samples.squeeze(-1) if samples.shape[-1] == 1 else samples, colour_type, 16)
    img = read_image(tmp_path / "x.png")
    assert len(np.unique(img)) == 256
    np.testing.assert_allclose(img, levels / 65535, atol=1e-6)


def test_files_pillow_writes_agree(tmp_path):
    g16 = np.array([[0, 1, 65535], [256, 257, 40000]], np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    np.testing.assert_allclose(read_image(tmp_path / "g16.png"), g16 / 65535, atol=1e-6)
    la = np.zeros((2, 3, 2), np.uint8)
    la[..., 0], la[..., 1] = [[0, 100, 200], [255, 1, 2]], 255
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_allclose(read_image(tmp_path / "la.png"), la[..., 0] / 255, atol=1e-6)
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "b.png")
    np.testing.assert_allclose(read_image(tmp_path / "b.png"), [[1.0, 0.0]])
    grey_rgb = np.repeat(np.array([[0, 77, 255]], np.uint8)[..., None], 3, -1)
    Image.fromarray(grey_rgb).save(tmp_path / "rgb.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), [[0, 77 / 255, 1]], atol=1e-6)


def test_the_header_decides_not_the_name(tmp_path):
    levels = (1000 + np.arange(64)).reshape(8, 8)
    write_png(tmp_path / "x.jpg", np.stack([levels, levels], -1), 4, 16)
    assert len(np.unique(read_image(tmp_path / "x.jpg"))) == 64


def _damaged(tmp_path, name, edit):
    write_png(tmp_path / "ok.png", np.stack([np.arange(64).reshape(8, 8)] * 3, -1) * 1000, 2, 16)
    data = bytearray((tmp_path / "ok.png").read_bytes())
    (tmp_path / name).write_bytes(bytes(edit(data)))
    return tmp_path / name


@pytest.mark.parametrize("name,edit,message", [
    ("cut.png", lambda d: d[: len(d) // 2], r"cut.png: cannot decode image \(PNG truncated inside its IDAT chunk\)"),
    ("noend.png", lambda d: d[:-12], r"noend.png: cannot decode image \(PNG truncated before its IEND chunk\)"),
    ("crc.png", lambda d: d[:60] + bytes([d[60] ^ 0xFF]) + d[61:], r"crc.png: cannot decode image \(PNG IDAT chunk at byte 33 fails its CRC"),
    ("depth.png", lambda d: d[:24] + bytes([4]) + d[25:], r"depth.png: cannot decode image \(PNG colour type 2 with bit depth 4; the PNG standard allows"),
    ("ihdr.png", lambda d: d[:20], r"ihdr.png: cannot decode image \(PNG without a complete IHDR header\)"),
])
def test_damaged_pngs_raise_decode_error_naming_the_file(tmp_path, name, edit, message):
    with pytest.raises(DecodeError, match=message):
        read_image(_damaged(tmp_path, name, edit))


@pytest.mark.parametrize("colour_type,bits", [(0, 16), (4, 16), (2, 16), (6, 16), (0, 8), (2, 8), (3, 4)])
def test_short_image_data_is_a_decode_error(tmp_path, colour_type, bits):
    """A complete file (valid zlib stream, IEND) whose IDAT holds fewer rows than the header says."""
    samples = np.random.default_rng(0).integers(0, 2 ** bits, (8, 8, CHANNELS[colour_type]))
    write_png(tmp_path / "ok.png", samples, colour_type, bits, palette=[[i, i, i] for i in range(16)] if colour_type == 3 else None)
    data = (tmp_path / "ok.png").read_bytes()
    ihdr = bytearray(data[:33])
    ihdr[20:24] = struct.pack(">I", 16)  # claims 16 rows, holds 8
    ihdr[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr[12:29])))
    (tmp_path / "short.png").write_bytes(bytes(ihdr) + data[33:])
    with pytest.raises(DecodeError, match=r"short.png: cannot decode image \("):
        read_image(tmp_path / "short.png")
