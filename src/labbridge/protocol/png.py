"""Grayscale PNG encoding and the contrast stretch used to look at raw detector counts.

One encoder for every face that shows an image (the web dashboard's frames, ``labbridge
grab``), written from the PNG specification (ISO/IEC 15948): signature, ``IHDR`` with colour
type 0 (grayscale), bit depth 8 or 16, compression 0, filter method 0, no interlace; one
``IDAT`` holding the zlib stream of the rows, each row preceded by filter type 0 (None);
``IEND``. 16-bit samples are big-endian. Pure: bytes out, no I/O.

Raw camera counts rarely fill the 16-bit range (a 12-bit sensor with an offset of 100 spans a
few hundred of 65536 levels), so a 16-bit PNG of them looks black in a viewer:
:func:`stretch_to_8bit` maps a chosen range of the data (min..max, or percentiles that ignore
hot pixels) onto 0..255 for viewing. Keep the raw data beside it when the numbers matter.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Final

import numpy as np

SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def as_image(a: Any) -> np.ndarray:
    """A 2-D view of any array: 0-D -> 1x1, 1-D -> one row, N-D -> rows of the last axis."""
    arr = np.asarray(a)
    if arr.ndim == 0:
        return arr.reshape(1, 1)
    if arr.ndim == 1:
        return arr.reshape(1, -1)
    if arr.ndim > 2:
        return arr.reshape(-1, arr.shape[-1])
    return arr


def encode_gray(img: np.ndarray, *, level: int = 6) -> bytes:
    """A grayscale PNG of a non-empty 2-D ``uint8`` (8-bit) or ``uint16`` (16-bit) image."""
    if img.ndim != 2 or img.size == 0:
        raise ValueError("a PNG image must be a non-empty 2-D array")
    if img.dtype == np.uint8:
        depth, data = 8, np.ascontiguousarray(img)
    elif img.dtype.kind == "u" and img.dtype.itemsize == 2:
        depth, data = 16, np.ascontiguousarray(img, dtype=">u2")
    else:
        raise ValueError(f"a PNG image is uint8 or uint16, not {img.dtype}")
    h, w = data.shape
    rowbytes = w * (depth // 8)
    raw = np.zeros((h, rowbytes + 1), dtype=np.uint8)  # column 0: filter type 0 (None)
    raw[:, 1:] = data.view(np.uint8).reshape(h, rowbytes)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0)
    return (SIGNATURE + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + _chunk(b"IEND", b""))


def stretch_to_8bit(a: Any, *, low: float = 0.0,
                    high: float = 100.0) -> tuple[np.ndarray, float, float]:
    """``(image, lo, hi)``: the data between its ``low`` and ``high`` percentiles mapped
    linearly onto 0..255 (0 and 100 = min and max), clipped, rounded; NaN -> 0. ``lo`` and
    ``hi`` are the data values that became 0 and 255 (for a caption). A flat image is 0."""
    if not 0.0 <= low < high <= 100.0:
        raise ValueError("percentiles must satisfy 0 <= low < high <= 100")
    f = np.real(as_image(a)).astype(np.float64)
    finite = f[np.isfinite(f)]
    if finite.size == 0:
        return np.zeros(f.shape, dtype=np.uint8), 0.0, 0.0
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    img = np.rint(np.nan_to_num((f - lo) * scale, nan=0.0, posinf=255.0, neginf=0.0))
    return np.clip(img, 0, 255).astype(np.uint8), lo, hi


def to_16bit(a: Any) -> np.ndarray:
    """Samples for a 16-bit PNG: unsigned integers of at most 16 bits and bools unchanged
    (lossless), anything else mapped min..max onto 0..65535 (lossy: say so to the user)."""
    arr = as_image(a)
    if arr.dtype == np.bool_:
        return arr.astype(np.uint16) * 65535
    if arr.dtype.kind == "u" and arr.dtype.itemsize <= 2:
        return arr.astype(np.uint16)
    f = np.real(arr).astype(np.float64)
    finite = f[np.isfinite(f)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    img = np.rint(np.nan_to_num((f - lo) * scale, nan=0.0, posinf=65535.0, neginf=0.0))
    return np.clip(img, 0, 65535).astype(np.uint16)


def is_lossless_16bit(a: Any) -> bool:
    """True when :func:`to_16bit` keeps every value of ``a`` exactly."""
    dt = np.asarray(a).dtype
    return dt == np.bool_ or (dt.kind == "u" and dt.itemsize <= 2)
