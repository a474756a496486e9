"""PNG renderings of stored instances: the exact model input, and the original for comparison.

The model input is recomputed with the triage pipeline itself (``to_model_input`` of
node/triage/preprocess.py) from the stored file, at the size the SR recorded for that image
(``resize(size=N...)``), else at the loaded model's size, else 448. Its description is compared
with the one the SR recorded, so the page can say whether the thumbnail is what the model saw.

The original rendering is a display rendering, not model input: the frame the pipeline would
pick, modality LUT and the file's own VOI (window or VOI LUT; else min-max), MONOCHROME1
inverted, scaled down with antialiasing to fit ``max_side``.

Both are cached (least recently used) by file identity, so a page reload decodes nothing.
"""

from __future__ import annotations

import io
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

DEFAULT_SIZE = 448
ORIGINAL_MAX_SIDE = 512
_SIZE_IN_DESCRIPTION = re.compile(r"resize\(size=(\d+)")


@dataclass(frozen=True)
class Rendered:
    png: bytes
    width: int
    height: int
    description: str = ""  # the preprocessing record (model input only)


def size_from_description(description: str) -> int | None:
    """The model input size an SR recorded for an image, e.g. 448 from ``resize(size=448, ...)``."""
    match = _SIZE_IN_DESCRIPTION.search(description or "")
    return int(match.group(1)) if match else None


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def render_model_input(path: Path, size: int, defaults=None) -> Rendered:
    """What the model was given for this image (uint8, size x size x 3), as PNG."""
    from node.triage.preprocess import to_model_input  # torch: imported only when a thumbnail is asked for

    ds = pydicom.dcmread(path)
    pixels, record = to_model_input(ds, size=size, defaults=defaults)
    return Rendered(_png(pixels), pixels.shape[1], pixels.shape[0], record.describe())


def _to_uint8(values: np.ndarray) -> np.ndarray:
    values = values.astype(np.float64)
    low, high = float(np.min(values)), float(np.max(values))
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip((values - low) * (255.0 / (high - low)) + 0.5, 0, 255).astype(np.uint8)


def render_original(path: Path, max_side: int = ORIGINAL_MAX_SIDE, multiframe: str = "middle") -> Rendered:
    """A display rendering of the stored image (not the model input), at most ``max_side`` pixels."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    from node.triage.preprocess import decode_pixels

    ds = pydicom.dcmread(path)
    frame = decode_pixels(ds, multiframe=multiframe)
    pi = str(ds.get("PhotometricInterpretation", "")).strip()
    if pi == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim == 3:
        bits = int(ds.get("BitsStored", 8) or 8)
        out = frame if frame.dtype == np.uint8 and bits <= 8 else _to_uint8(frame)
    else:
        values = apply_modality_lut(frame, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = apply_voi_lut(values, ds, prefer_lut=False)
        out = _to_uint8(values)
        if pi == "MONOCHROME1":
            out = 255 - out
    image = Image.fromarray(np.ascontiguousarray(out))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Rendered(buf.getvalue(), image.width, image.height)


class RenderCache:
    """Least-recently-used renderings keyed by (kind, file path, size, mtime, parameters)."""

    def __init__(self, max_items: int = 64) -> None:
        self.max_items = max_items
        self._items: OrderedDict[tuple, Rendered] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, make) -> Rendered:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        rendered = make()
        with self._lock:
            self._items[key] = rendered
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return rendered

    def model_input(self, path: Path, size: int, defaults=None) -> Rendered:
        st = path.stat()
        return self.get(
            ("model", str(path), st.st_mtime_ns, st.st_size, size, defaults),
            lambda: render_model_input(path, size, defaults),
        )

    def original(self, path: Path, multiframe: str = "middle") -> Rendered:
        st = path.stat()
        return self.get(
            ("original", str(path), st.st_mtime_ns, st.st_size, multiframe),
            lambda: render_original(path, multiframe=multiframe),
        )
