"""Image decoding that keeps the dynamic range: 8/16-bit PNG, JPEG, and DICOM (pydicom).

Every decoder returns a float32 array ``[H, W]`` in ``[0, 1]`` (bright = dense, MONOCHROME2).
16-bit PNGs are scaled by their stored bit depth, never clipped through an 8-bit conversion.
A file that cannot be decoded raises :class:`DecodeError` naming the file and the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MaskkitError


class DecodeError(MaskkitError):
    """An image file that is missing, truncated, corrupt or of an unsupported kind."""


def _from_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                bits = _png_bit_depth(path) if path.suffix.lower() == ".png" else 16
                if mode == "I" and bits <= 8:  # PIL widens some 8-bit files to mode I
                    bits = 8
                return (arr / float(2 ** bits - 1)).clip(0, 1).astype(np.float32)
            if mode in ("L", "P", "LA", "1"):
                arr = np.asarray(im.convert("L"), dtype=np.float32)
            else:  # RGB(A), CMYK, ...: luminance
                arr = np.asarray(im.convert("L"), dtype=np.float32)
            return arr / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) >= 25 and head[:8] == b"\x89PNG\r\n\x1a\n":
        return head[24]
    return 16


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
    """Decode one X-ray to float32 ``[H, W]`` in ``[0, 1]``; raises :class:`DecodeError`."""
    p = Path(path)
    if not p.is_file():
        raise DecodeError(f"{p}: image file does not exist")
    if p.suffix.lower() in (".dcm", ".dicom") or _is_dicom(p):
        return _from_dicom(p)
    return _from_pil(p)


def _is_dicom(p: Path) -> bool:
    with open(p, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Resize ``[H, W]`` float to ``[size, size]`` (antialiased bilinear, aspect not kept)."""
    import torch
    import torch.nn.functional as F

    if img.shape == (size, size):
        return img
    t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
