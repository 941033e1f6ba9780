"""Image decoding that keeps the dynamic range: 8/16-bit PNG, JPEG, and DICOM (pydicom).

Every decoder returns a float32 array ``[H, W]`` in ``[0, 1]`` (bright = dense, MONOCHROME2).
A PNG's decode path is chosen from its IHDR (bit depth x colour type), never from the mode Pillow
opens it in: samples are divided by ``2^bit_depth - 1``, 16-bit files of every colour type are
read on a 16-bit path (never through an 8-bit conversion), alpha is dropped and colour becomes
BT.601 luma. A file that cannot be decoded raises :class:`DecodeError` naming the file and the reason.

EXIF orientation is applied wherever a format carries it (JPEG, TIFF, WebP and the rest read
through Pillow; PNG's ``eXIf`` chunk), by Pillow's ``ImageOps.exif_transpose``: the array is the
image as it is meant to be viewed, so the patient's left stays where the viewer expects it.
DICOM has no EXIF; its pixel data is used as stored (``PatientOrientation`` is not applied).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import MaskkitError


class DecodeError(MaskkitError):
    """An image file that is missing, truncated, corrupt or of an unsupported kind."""


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> (name, allowed bit depths), from the PNG specification (ISO/IEC 15948, table 11.1)
PNG_COLOUR_TYPES = {0: ("grey", (1, 2, 4, 8, 16)), 2: ("RGB", (8, 16)), 3: ("palette", (1, 2, 4, 8)),
                    4: ("grey+alpha", (8, 16)), 6: ("RGBA", (8, 16))}
#: ITU-R BT.601 luma weights (what Pillow's ``convert("L")`` uses), for colour images
LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class PngHeader:
    """The IHDR fields that decide how a PNG is decoded."""

    width: int
    height: int
    bit_depth: int
    colour_type: int
    interlace: int

    @property
    def kind(self) -> str:
        return f"{self.bit_depth}-bit {PNG_COLOUR_TYPES[self.colour_type][0]}"


def png_header(path: Path, head: bytes) -> PngHeader | None:
    """The IHDR of a PNG from its first 33 bytes, or None when ``head`` is not a PNG signature.

    Raises :class:`DecodeError` naming the file for a PNG whose IHDR is cut, missing or holds a
    colour type / bit depth combination the PNG specification does not allow.
    """
    if head[:8] != PNG_SIGNATURE:
        return None
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise DecodeError(f"{path}: cannot decode image (PNG without a complete IHDR header)")
    w, h, bits, ctype, _comp, _filt, interlace = struct.unpack(">IIBBBBB", head[16:29])
    if ctype not in PNG_COLOUR_TYPES or bits not in PNG_COLOUR_TYPES[ctype][1]:
        allowed = "; ".join(f"{n} {'/'.join(map(str, d))}" for n, d in PNG_COLOUR_TYPES.values())
        raise DecodeError(f"{path}: cannot decode image (PNG colour type {ctype} with bit depth {bits}; "
                          f"the PNG standard allows {allowed})")
    if w == 0 or h == 0 or interlace not in (0, 1):
        raise DecodeError(f"{path}: cannot decode image (PNG header: {w}x{h} pixels, interlace method {interlace})")
    return PngHeader(w, h, bits, ctype, interlace)


def _png_chunks(path: Path, data: bytes) -> tuple[bytes, bytes | None, bytes | None]:
    """(the concatenated IDAT payloads, the PLTE payload or None, the eXIf payload or None), each
    IDAT's CRC checked."""
    pos, parts, plte, exif = 8, [], None, None
    while True:
        if pos + 8 > len(data):
            raise DecodeError(f"{path}: cannot decode image (PNG truncated before its IEND chunk)")
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + n
        if end > len(data):
            raise DecodeError(f"{path}: cannot decode image (PNG truncated inside its {kind.decode('latin-1')} chunk)")
        if kind == b"IDAT":
            body = data[pos + 8:pos + 8 + n]
            if zlib.crc32(kind + body) != struct.unpack(">I", data[end - 4:end])[0]:
                raise DecodeError(f"{path}: cannot decode image (PNG IDAT chunk at byte {pos} fails its CRC check)")
            parts.append(body)
        elif kind == b"PLTE":
            plte = data[pos + 8:pos + 8 + n]
        elif kind == b"eXIf":
            exif = data[pos + 8:pos + 8 + n]
        elif kind == b"IEND":
            break
        pos = end
    if not parts:
        raise DecodeError(f"{path}: cannot decode image (PNG without image data)")
    return b"".join(parts), plte, exif


def upright(path: Path, arr: np.ndarray, exif: bytes | None) -> np.ndarray:
    """``arr`` ``[H, W]`` float32 turned upright by the EXIF ``Orientation`` in ``exif`` (the raw
    EXIF block, with or without its ``Exif\\x00\\x00`` header; None: unchanged), through Pillow's
    ``ImageOps.exif_transpose``. A damaged EXIF block raises :class:`DecodeError` naming the file."""
    if not exif:
        return arr
    from PIL import Image, ImageOps

    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), mode="F")
    im.info["exif"] = exif if exif.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + exif
    try:
        out = ImageOps.exif_transpose(im)
    except (SyntaxError, ValueError, OSError, struct.error) as exc:
        raise DecodeError(f"{path}: cannot decode image (damaged EXIF block; {type(exc).__name__}: {exc})") from None
    return arr if out is None else np.asarray(out, dtype=np.float32)


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: (colour type, bit depth) -> (Pillow mode, raw mode) whose unpacker reads the samples unchanged
#: (grey 2/4-bit are scaled to 0-255 by Pillow, i.e. divided by 2^bits - 1 after / 255)
_PIL_RAW = {(0, 1): ("1", "1"), (0, 2): ("L", "L;2"), (0, 4): ("L", "L;4"), (0, 8): ("L", "L"),
            (0, 16): ("I;16", "I;16B"), (4, 8): ("LA", "LA"), (2, 8): ("RGB", "RGB"), (6, 8): ("RGBA", "RGBA"),
            (3, 1): ("P", "P;1"), (3, 2): ("P", "P;2"), (3, 4): ("P", "P;4"), (3, 8): ("P", "P"),
            # 16-bit grey+alpha: one 4-byte pixel read as 8-bit RGBA = (grey hi, grey lo, alpha hi, alpha lo)
            (4, 16): ("RGBA", "RGBA"),
            # 16-bit colour: Pillow unpacks one byte per sample; ;16B takes the high, ;16L the low byte
            (2, 16): ("RGB", "RGB;16B"), (6, 16): ("RGBA", "RGBA;16B")}


def _raw_length(hdr: PngHeader) -> int:
    """Bytes of the inflated IDAT stream: filter byte + packed samples per scanline (per Adam7 pass)."""
    bits = hdr.bit_depth * _CHANNELS[hdr.colour_type]
    total = 0
    for x0, y0, dx, dy in (_ADAM7 if hdr.interlace else ((0, 0, 1, 1),)):
        cols, rows = -(-(hdr.width - x0) // dx), -(-(hdr.height - y0) // dy)
        if cols > 0 and rows > 0:
            total += rows * (1 + -(-cols * bits // 8))
    return total


def _from_png(path: Path, hdr: PngHeader) -> np.ndarray:
    """Any standard PNG, on the path its IHDR names: ``[H, W]`` float32 in [0, 1].

    The IDAT stream is inflated here and its length checked against the header (Pillow fills
    missing rows with zeros silently); Pillow's PNG decoder (``zip``: unfilter, Adam7) then
    unpacks it under the raw mode of ``_PIL_RAW``, so 16-bit samples of every colour type keep
    both bytes (Pillow's own reader opens 16-bit grey+alpha / RGB / RGBA as 8-bit images).
    Samples are divided by ``2^bit_depth - 1``; palette entries (8-bit) by 255; alpha is dropped;
    colour becomes BT.601 luma. An ``eXIf`` chunk's orientation is applied (:func:`upright`).
    """
    idat, plte, exif = _png_chunks(path, path.read_bytes())
    return upright(path, _png_pixels(path, hdr, idat, plte), exif)


def _png_pixels(path: Path, hdr: PngHeader, idat: bytes, plte: bytes | None) -> np.ndarray:
    """The samples of a PNG's image data as stored (before any EXIF orientation)."""
    from PIL import Image

    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(idat)
    except zlib.error as exc:
        raise DecodeError(f"{path}: cannot decode image ({hdr.kind} PNG: corrupt image data, {exc})") from None
    need = _raw_length(hdr)
    if len(raw) < need or not inflate.eof:
        raise DecodeError(f"{path}: cannot decode image ({hdr.kind} PNG: its image data holds {len(raw)} of the "
                          f"{need} bytes a {hdr.width}x{hdr.height} image needs)")
    stored = zlib.compress(raw[:need], 0)  # already checked: Pillow only unfilters (stored blocks inflate at memcpy speed)
    size, ct, bits = (hdr.width, hdr.height), hdr.colour_type, hdr.bit_depth
    mode, rawmode = _PIL_RAW[(ct, bits)]

    def decode(rm: str) -> np.ndarray:
        try:
            return np.asarray(Image.frombytes(mode, size, stored, "zip", rm, hdr.interlace))
        except (OSError, ValueError) as exc:
            raise DecodeError(f"{path}: cannot decode image ({hdr.kind} PNG; {type(exc).__name__}: {exc})") from None

    if ct == 3:
        if not plte or len(plte) % 3:
            raise DecodeError(f"{path}: cannot decode image ({hdr.kind} PNG without a valid PLTE chunk)")
        idx = decode(rawmode)
        pal = np.frombuffer(plte, np.uint8).reshape(-1, 3).astype(np.float64)
        if int(idx.max()) >= len(pal):
            raise DecodeError(f"{path}: cannot decode image (palette index {int(idx.max())} beyond the "
                              f"{len(pal)}-entry PLTE)")
        return (pal[idx] @ LUMA / 255.0).clip(0, 1).astype(np.float32)
    top = 255.0 if bits in (2, 4) else float(2 ** bits - 1)  # Pillow's L;2 / L;4 unpackers scale to 0-255
    if ct == 0:  # grey, the common X-ray case: float32 throughout (exact for 16-bit integers)
        return decode(rawmode).astype(np.float32) / np.float32(top)
    if bits == 16 and ct == 4:
        b = decode(rawmode)
        return (b[..., 0].astype(np.float32) * 256 + b[..., 1]) / np.float32(top)
    if ct == 4:
        return decode(rawmode)[..., 0].astype(np.float32) / np.float32(top)
    rgb = decode(rawmode)[..., :3].astype(np.float64)
    if bits == 16:
        rgb = rgb * 256 + decode(rawmode.replace(";16B", ";16L"))[..., :3]
    return (rgb @ LUMA / top).clip(0, 1).astype(np.float32)


def _from_pil(path: Path) -> np.ndarray:
    """JPEG, TIFF, BMP, ...: 16-bit grey modes by their full range, everything else as 8-bit luma."""
    from PIL import Image, UnidentifiedImageError

    buf = None
    try:
        # from bytes, not the path: Pillow memory-maps an uncompressed TIFF opened by path and then
        # skips the orientation its TIFF loader applies (Pillow 13); read from bytes it applies it
        buf = io.BytesIO(path.read_bytes())
        with Image.open(buf) as opened:
            opened.load()
            return pil_pixels(opened, path)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        start = buf.getvalue()[:8] if buf is not None else b""
        raise DecodeError(f"{path}: cannot decode image (not an image format Pillow reads; the file starts with "
                          f"{start!r})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow names the stream it read (<_io.BytesIO object at 0x...>): the message names the file instead
        why = str(exc).replace(repr(buf), "the file") if buf is not None else str(exc)
        raise DecodeError(f"{path}: cannot decode image ({type(exc).__name__}: {why})") from None


def pil_pixels(im, name: str | Path = "image") -> np.ndarray:
    """A Pillow image as float32 ``[H, W]`` in ``[0, 1]``, upright (EXIF orientation applied):
    16-bit grey modes by their full range, everything else as 8-bit BT.601 luma. Raises
    :class:`DecodeError` naming ``name`` for pixels without a known range (32-bit beyond 16-bit
    values, floating point)."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)  # upright as meant to be viewed (a copy; none: unchanged)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return (np.asarray(im, dtype=np.float64) / 65535.0).clip(0, 1).astype(np.float32)
    if im.mode == "I":  # some 16-bit TIFFs; a wider range is not an X-ray we can scale
        arr = np.asarray(im, dtype=np.float64)
        if arr.min() < 0 or arr.max() > 65535:
            raise DecodeError(f"{name}: cannot decode image (32-bit integer pixels in "
                              f"[{arr.min():.0f}, {arr.max():.0f}]; expected 8 or 16-bit samples)")
        return (arr / 65535.0).astype(np.float32)
    if im.mode == "F":
        raise DecodeError(f"{name}: cannot decode image (floating-point pixels have no known range; "
                          f"expected 8 or 16-bit samples)")
    if im.mode in ("1", "L", "LA"):
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    rgb = np.asarray(im.convert("RGB"), dtype=np.float64)
    return (rgb @ LUMA / 255.0).clip(0, 1).astype(np.float32)


def _from_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise DecodeError(f"{path}: reading DICOM needs pydicom; install it with pip install 'maskkit[dicom]'") from None
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float64)
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds, index=0)
    except Exception as exc:  # pydicom raises many kinds for damaged files
        raise DecodeError(f"{path}: cannot decode DICOM ({type(exc).__name__}: {exc})") from None
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 3:  # multi-frame or colour: first frame / luminance
        arr = arr[0] if arr.shape[-1] not in (3, 4) else arr[..., :3].mean(-1)
    lo, hi = float(arr.min()), float(arr.max())
    out = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)


def read_image(path: str | Path) -> np.ndarray:
    """Decode one X-ray to float32 ``[H, W]`` in ``[0, 1]``; raises :class:`DecodeError` naming the file.

    The decoder is chosen from the file's first bytes: DICOM (``DICM`` at byte 128, or a
    ``.dcm`` name), PNG (signature; then the IHDR bit depth and colour type choose the path for
    every one of the 15 combinations the standard allows), anything else through Pillow.
    """
    p = Path(path)
    if not p.is_file():
        raise DecodeError(f"{p}: a folder, not an image file; expected an image file (PNG, JPEG, DICOM, ...)"
                          if p.is_dir() else f"{p}: image file does not exist")
    try:
        with open(p, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise DecodeError(f"{p}: cannot read image file ({exc.strerror or exc})") from None
    if p.suffix.lower() in (".dcm", ".dicom") or head[128:132] == b"DICM":
        return _from_dicom(p)
    hdr = png_header(p, head)  # decided from the file's bytes, not its name
    if hdr is not None:
        return _from_png(p, hdr)
    return _from_pil(p)


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize ``[H, W]`` float to ``[size, size]`` (antialiased bilinear, aspect not kept)."""
    import torch

    if img.shape == (size, size):
        return img
    return resize_batch(torch.from_numpy(np.ascontiguousarray(img))[None, None], size)[0, 0].numpy()


def resize_batch(images, size: int):
    """:func:`resize` of a float tensor ``[B, C, H, W]`` -> ``[B, C, size, size]`` (unchanged when it
    is that size already)."""
    import torch.nn.functional as F

    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
