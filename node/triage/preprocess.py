"""DICOM pixels to MedSigLIP input, every step recorded.

Pipeline (``PREPROCESS_VERSION`` names it; bump the version when any step changes):

1. **decode** -- any transfer syntax pydicom can decode (native, RLE, JPEG, JPEG-LS, JPEG 2000 via
   the pylibjpeg plugins). YBR_* colour is converted to RGB by pydicom. A multi-frame image
   contributes one frame, chosen by the profile's ``preprocessing.multiframe``: ``"middle"``
   (0-based index ``n // 2``, the default) or ``"first"`` (index 0). Only that frame is decoded.
   Rows/Columns outside ``1..MAX_DIMENSION`` are rejected from the header, before decoding.

Greyscale (MONOCHROME1/2):

2. **modality LUT** -- ``pydicom.pixels.apply_modality_lut`` (Modality LUT Sequence, or Rescale
   Slope/Intercept when both are present; otherwise identity).
3. **VOI** -- the first source that applies:
   a. WindowCenter/WindowWidth tags (first value when multi-valued) with VOILUTFunction LINEAR
      (default), LINEAR_EXACT or SIGMOID, computed with the formulas of PS3.3 C.11.2.1.2 directly
      to an output range of [0, 255] (own vectorised code, not ``apply_voi_lut``, so no second
      rescale is needed). A window with width < 1 (LINEAR) or <= 0 is ignored.
   b. a VOI LUT Sequence (first LUT), applied with ``pydicom.pixels.apply_voi_lut`` and scaled to
      [0, 255] by the LUT's own min..max data range.
   c. the profile's default window (``preprocessing.window_center/width``), LINEAR.
   d. min-max: the modality-LUT output's min..max over the whole frame mapped linearly to
      [0, 255]; a constant image becomes all 0.
4. **invert** -- MONOCHROME1 only: ``y = 255 - y`` after VOI, so a MONOCHROME1 image is identical
   to its MONOCHROME2 twin. (PresentationLUTShape is not used: for DX, INVERSE accompanies
   MONOCHROME1 and would invert twice.)
5. **scale to 8 bits** -- round half up (``floor(y + 0.5)``) and clip to uint8.

Colour (RGB, YBR_* decoded to RGB, PALETTE COLOR through its palette): no modality/VOI step;
samples with more than 8 bits are scaled by ``255 / (2**bits - 1)``, rounded half up.

6. **pad to square** -- zeros (black, after inversion), *centred*: the shorter side gets
   ``d // 2`` before and ``d - d // 2`` after, exactly as ``_zero_pad_image_to_square`` in
   Google's MedSigLIP serving code (``python/serving/predictor.py``), which says this is the
   method performed in training.
7. **resize** to ``size`` x ``size`` -- bilinear, half-pixel centres (``align_corners=False``),
   **no antialias**: the formula of ``torch.nn.functional.interpolate(mode="bilinear",
   align_corners=False, antialias=False)`` and of ``tf.image.resize(method="bilinear",
   antialias=False)``, the resize Google recommends to reproduce MedSigLIP's evals. Computed on the
   8-bit values as float64, then rounded half up to uint8 (Google's notebook truncates with
   ``astype(np.uint8)``; the difference is at most one grey level).
8. **channels** -- grey replicated to 3 channels; colour kept as RGB.

The normalisation to [-1, 1] is :func:`normalise`, kept separate so that the model code can run
it on the GPU.

Speed: bilinear without antialias reads at most two source rows and two source columns per output
row/column. The code computes those indices in padded coordinates, maps them back into the
unpadded frame (indices that fall in the padding read 0), gathers the at most
``2*size x 2*size`` source pixels and applies steps 2-5 only to them. The result is the same as
running every step on the full padded image (the intensity steps are per pixel), but a
3000x2500 radiograph costs little more than its decoding.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from node.triage.profiles import MULTIFRAME_CHOICES, PreprocessDefaults

__all__ = [
    "MAX_DIMENSION",
    "PREPROCESS_VERSION",
    "PreprocessError",
    "PreprocessRecord",
    "decode_pixels",
    "frame_index",
    "normalise",
    "preprocess_version",
    "to_model_input",
]

PREPROCESS_VERSION = "tn-pre-1"  # bump when any step changes
MAX_DIMENSION = 16384  # per side, rows and columns
DEFAULT_MULTIFRAME = "middle"

_GREY = ("MONOCHROME1", "MONOCHROME2")


def preprocess_version(defaults: PreprocessDefaults | None) -> str:
    """The version name of the preprocessing a profile chose (``[preprocessing] method``)."""
    return defaults.method if defaults is not None else PREPROCESS_VERSION


class PreprocessError(ValueError):
    """The image cannot be turned into model input (no pixels, absurd size, undecodable...)."""


@dataclass(frozen=True)
class PreprocessRecord:
    version: str
    steps: tuple[tuple[str, dict], ...]  # each step and its parameters, JSON-serialisable

    def describe(self) -> str:
        """One line for the SR, e.g. ``tn-pre-1: decode(...); modality_lut(...); ...``."""
        parts = []
        for name, params in self.steps:
            inner = ", ".join(f"{k}={_fmt(v)}" for k, v in params.items())
            parts.append(f"{name}({inner})")
        return f"{self.version}: " + "; ".join(parts)

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "steps": [[n, p] for n, p in self.steps]}, sort_keys=True)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def _num(v: Any) -> float | int:
    """A plain JSON number from a DICOM/numpy value."""
    f = float(v)
    return int(f) if f.is_integer() and abs(f) < 2**53 else f


# --------------------------------------------------------------------------------------------
# decode


def _int_tag(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    if value is None or value == "":
        if default is None:
            raise PreprocessError(f"{keyword} missing")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PreprocessError(f"{keyword} is not an integer: {value!r}") from None


def _check_header(ds: Dataset) -> tuple[int, int, int]:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise PreprocessError("no pixel data")
    rows = _int_tag(ds, "Rows")
    cols = _int_tag(ds, "Columns")
    for name, n in (("Rows", rows), ("Columns", cols)):
        if not 1 <= n <= MAX_DIMENSION:
            raise PreprocessError(f"{name} {n} outside 1..{MAX_DIMENSION}")
    frames = _int_tag(ds, "NumberOfFrames", 1) or 1
    if frames < 1:
        raise PreprocessError(f"NumberOfFrames {frames} < 1")
    return rows, cols, frames


def frame_index(ds: Dataset, multiframe: str = DEFAULT_MULTIFRAME) -> int:
    """0-based index of the frame used: ``"first"`` -> 0, ``"middle"`` -> ``NumberOfFrames // 2``."""
    if multiframe not in MULTIFRAME_CHOICES:
        raise PreprocessError(f"unknown multiframe choice {multiframe!r}")
    frames = _int_tag(ds, "NumberOfFrames", 1) or 1
    return 0 if multiframe == "first" else frames // 2


def decode_pixels(ds: Dataset, *, multiframe: str = DEFAULT_MULTIFRAME) -> np.ndarray:
    """Decode one frame: (rows, cols) for greyscale, (rows, cols, 3) RGB for colour.

    Any transfer syntax pydicom and its pylibjpeg plugins decode. YBR_* is returned as RGB. For a
    multi-frame image only the frame chosen by ``multiframe`` ("middle": index n // 2, or "first")
    is decoded. PALETTE COLOR is returned as stored indices (see :func:`to_model_input`).
    """
    rows, cols, frames = _check_header(ds)
    index = frame_index(ds, multiframe)
    try:
        arr = pixel_array(ds, index=index if frames > 1 else None)
    except Exception as exc:  # decoder errors come in many types
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise PreprocessError(f"cannot decode pixel data (transfer syntax {ts}): {exc}") from exc
    if arr.shape[:2] != (rows, cols) or arr.ndim not in (2, 3):
        raise PreprocessError(f"decoded shape {arr.shape} does not match Rows/Columns {rows}x{cols}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] != 3:
        raise PreprocessError(f"unsupported samples per pixel: {arr.shape[2]}")
    return arr


# --------------------------------------------------------------------------------------------
# intensity steps (per pixel)


def _first(value: Any) -> float:
    if isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not isinstance(value, (str, bytes))):
        value = value[0]
    return float(value)


def _round8(y: np.ndarray) -> np.ndarray:
    """Round half up and clip to uint8."""
    return np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)


def _window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window of PS3.3 C.11.2.1.2 with output range [0, 255] (float)."""
    # Written as one product over one quotient so that integer inputs hit exact halves exactly.
    if function == "LINEAR_EXACT":  # ((x - c) / w + 0.5) * 255
        y = (2.0 * (x - center) + width) * 255.0 / (2.0 * width)
        return np.clip(y, 0.0, 255.0)
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    # LINEAR
    if width == 1:
        return np.where(x <= center - 0.5, 0.0, 255.0)
    # ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = (2.0 * (x - center) + width) * 255.0 / (2.0 * (width - 1))
    return np.clip(y, 0.0, 255.0)


class _GreyPlan:
    """Steps 2-5 for a greyscale frame, decided once from the header and the whole frame."""

    def __init__(self, ds: Dataset, frame: np.ndarray, defaults: PreprocessDefaults | None):
        self.ds = ds
        self.steps: list[tuple[str, dict]] = []
        # 2. modality LUT
        if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
            item = ds.ModalityLUTSequence[0]
            self.steps.append(("modality_lut", {"kind": "lut", "descriptor": [int(v) for v in item.LUTDescriptor]}))
            self._modality_kind = "lut"
        elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
            self.steps.append(
                (
                    "modality_lut",
                    {"kind": "rescale", "slope": _num(ds.RescaleSlope), "intercept": _num(ds.RescaleIntercept)},
                )
            )
            self._modality_kind = "rescale"
        else:
            self.steps.append(("modality_lut", {"kind": "identity"}))
            self._modality_kind = "identity"

        # 3. VOI
        self.voi: tuple[str, Any] | None = None
        notes: dict[str, Any] = {}
        function = str(ds.get("VOILUTFunction", "") or "LINEAR").strip().upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            notes["unknown_function"] = function
            function = "LINEAR"
        if ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
            try:
                c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
            except (TypeError, ValueError, IndexError):
                c = w = math.nan
            valid = math.isfinite(c) and math.isfinite(w) and (w >= 1 if function == "LINEAR" else w > 0)
            if valid:
                self.voi = ("window", (c, w, function))
                self.steps.append(
                    ("voi", {"source": "tags", "center": _num(c), "width": _num(w), "function": function, **notes})
                )
            else:
                notes["ignored_window"] = [str(ds.WindowCenter), str(ds.WindowWidth)]
        if self.voi is None and "VOILUTSequence" in ds and len(ds.VOILUTSequence):
            item = ds.VOILUTSequence[0]
            data = item.LUTData
            values = np.asarray(data if not isinstance(data, bytes) else np.frombuffer(data, "<u2"), dtype=np.float64)
            lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
            self.voi = ("lut", (lo, hi))
            self.steps.append(
                (
                    "voi",
                    {
                        "source": "lut",
                        "descriptor": [int(v) for v in item.LUTDescriptor],
                        "output_range": [_num(lo), _num(hi)],
                        **notes,
                    },
                )
            )
        if self.voi is None and defaults is not None and defaults.window_center is not None:
            c, w = float(defaults.window_center), float(defaults.window_width)  # type: ignore[arg-type]
            self.voi = ("window", (c, w, "LINEAR"))
            self.steps.append(
                ("voi", {"source": "profile", "center": _num(c), "width": _num(w), "function": "LINEAR", **notes})
            )
        if self.voi is None:
            lo, hi = self._modality_range(frame)
            self.voi = ("minmax", (lo, hi))
            self.steps.append(("voi", {"source": "min-max", "min": _num(lo), "max": _num(hi), **notes}))

        # 4. invert
        self.invert = str(ds.PhotometricInterpretation).strip() == "MONOCHROME1"
        if self.invert:
            self.steps.append(("invert", {"photometric": "MONOCHROME1", "formula": "255-y"}))
        # 5. 8 bits
        self.steps.append(("scale_8bit", {"rounding": "half-up"}))

    def _modality_range(self, frame: np.ndarray) -> tuple[float, float]:
        if self._modality_kind == "lut":
            mapped = apply_modality_lut(frame, self.ds)
            return float(mapped.min()), float(mapped.max())
        ends = np.array([frame.min(), frame.max()], dtype=np.float64)
        if self._modality_kind == "rescale":
            ends = apply_modality_lut(ends, self.ds)
        return float(ends.min()), float(ends.max())

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(apply_modality_lut(raw, self.ds), dtype=np.float64)
        kind, params = self.voi  # type: ignore[misc]
        if kind == "window":
            c, w, function = params
            y = _window(x, c, w, function)
        elif kind == "lut":
            lo, hi = params
            v = np.asarray(apply_voi_lut(x.astype(np.int64), self.ds, index=0, prefer_lut=True), dtype=np.float64)
            y = (v - lo) * 255.0 / (hi - lo) if hi > lo else np.zeros_like(v)
        else:
            lo, hi = params
            y = (x - lo) * 255.0 / (hi - lo) if hi > lo else np.zeros_like(x)
        if self.invert:
            y = 255.0 - y
        return _round8(y)


class _ColourPlan:
    def __init__(self, ds: Dataset, frame: np.ndarray):
        self.ds = ds
        pi = str(ds.PhotometricInterpretation).strip()
        self.steps: list[tuple[str, dict]] = []
        self.palette = pi == "PALETTE COLOR"
        if self.palette:
            desc = ds.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 8]
            self.bits = 8 if int(desc[2]) <= 8 else 16
            self.steps.append(("colour", {"photometric": pi, "converted_to": "RGB", "palette_bits": self.bits}))
        else:
            self.bits = _int_tag(ds, "BitsStored", 8)
            conv = "RGB" if pi != "RGB" else "none"
            self.steps.append(("colour", {"photometric": pi, "converted_to": conv, "bits_stored": self.bits}))
        self.steps.append(("scale_8bit", {"from_bits": self.bits, "rounding": "half-up"}))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = apply_color_lut(raw, self.ds) if self.palette else raw
        if self.bits == 8 and x.dtype == np.uint8:
            return x
        y = x.astype(np.float64) * 255.0 / (2**self.bits - 1)
        return _round8(y)


# --------------------------------------------------------------------------------------------
# pad + resize


def _axis_plan(length: int, padded: int, pad_before: int, out: int):
    """Bilinear source indices/weights (half-pixel centres, no antialias) for one axis.

    Indices are in the unpadded frame (clipped); weights are zeroed where the source sample
    lies in the zero padding.
    """
    scale = padded / out
    src = (np.arange(out, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)  # torch clamps; tf's max(floor, 0) gives the same value
    i0 = np.minimum(np.floor(src).astype(np.int64), padded - 1)
    i1 = np.minimum(i0 + 1, padded - 1)
    w1 = src - i0
    w0 = 1.0 - w1
    q0, q1 = i0 - pad_before, i1 - pad_before
    m0 = (q0 >= 0) & (q0 < length)
    m1 = (q1 >= 0) & (q1 < length)
    return np.clip(q0, 0, length - 1), np.clip(q1, 0, length - 1), w0 * m0, w1 * m1


def _pad_resize(frame: np.ndarray, transform, size: int) -> tuple[np.ndarray, dict, dict]:
    """Steps 6-7 on ``frame`` (raw), applying the per-pixel ``transform`` (-> uint8) to the
    gathered source pixels only. Returns (uint8 (size,size[,3]), pad params, resize params)."""
    h, w = frame.shape[:2]
    side = max(h, w)
    top = (side - h) // 2
    left = (side - w) // 2
    pad = {
        "position": "centre",
        "value": 0,
        "top": top,
        "bottom": side - h - top,
        "left": left,
        "right": side - w - left,
        "side": side,
    }
    r0, r1, wy0, wy1 = _axis_plan(h, side, top, size)
    c0, c1, wx0, wx1 = _axis_plan(w, side, left, size)
    rows = np.concatenate([r0, r1])
    cols = np.concatenate([c0, c1])
    if h * w <= rows.size * cols.size:
        img8 = transform(frame)
        sub = img8[rows][:, cols]
    else:
        sub = transform(frame[rows][:, cols])
    a = sub.astype(np.float64)
    n = size
    if a.ndim == 3:
        wy0, wy1 = wy0[:, None, None], wy1[:, None, None]
        wx0, wx1 = wx0[None, :, None], wx1[None, :, None]
    else:
        wy0, wy1 = wy0[:, None], wy1[:, None]
        wx0, wx1 = wx0[None, :], wx1[None, :]
    top_row = wx0 * a[:n, :n] + wx1 * a[:n, n:]
    bottom_row = wx0 * a[n:, :n] + wx1 * a[n:, n:]
    out = _round8(wy0 * top_row + wy1 * bottom_row)
    resize = {
        "size": size,
        "method": "bilinear",
        "antialias": False,
        "align_corners": False,
        "rounding": "half-up",
    }
    return out, pad, resize


def to_model_input(
    ds: Dataset, *, size: int = 448, defaults: PreprocessDefaults | None = None
) -> tuple[np.ndarray, PreprocessRecord]:
    """One image as uint8 (size, size, 3), and the record of how it was made."""
    if not isinstance(size, int) or not 1 <= size <= 4096:
        raise PreprocessError(f"size {size!r} outside 1..4096")
    rows, cols, frames = _check_header(ds)
    multiframe = defaults.multiframe if defaults is not None else DEFAULT_MULTIFRAME
    pi = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if not pi:
        raise PreprocessError("PhotometricInterpretation missing")
    frame = decode_pixels(ds, multiframe=multiframe)
    index = frame_index(ds, multiframe)
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    decode = {
        "transfer_syntax": str(ts) if ts else "unknown",
        "rows": rows,
        "columns": cols,
        "photometric": pi,
        "frames": frames,
    }
    if frames > 1:
        decode["frame_choice"] = multiframe
        decode["frame_index"] = index
    steps: list[tuple[str, dict]] = [("decode", decode)]

    colour = frame.ndim == 3 or pi == "PALETTE COLOR"
    if preprocess_version(defaults) != PREPROCESS_VERSION:
        return _other_version(ds, frame, size, defaults, steps[0], colour)
    if colour:
        plan: _GreyPlan | _ColourPlan = _ColourPlan(ds, frame)
    elif pi in _GREY:
        plan = _GreyPlan(ds, frame, defaults)
    else:
        raise PreprocessError(f"unsupported photometric interpretation {pi!r} for a single-sample image")
    steps.extend(plan.steps)
    try:
        out, pad, resize = _pad_resize(frame, plan, size)
    except PreprocessError:
        raise
    except Exception as exc:  # LUT data inconsistent with pixel values etc.
        raise PreprocessError(f"intensity transform failed: {exc}") from exc
    steps.append(("pad_square", pad))
    steps.append(("resize", resize))
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
        steps.append(("channels", {"from": 1, "to": 3, "method": "replicate"}))
    else:
        steps.append(("channels", {"from": 3, "to": 3, "method": "rgb"}))
    return np.ascontiguousarray(out), PreprocessRecord(PREPROCESS_VERSION, tuple(steps))


def _other_version(
    ds: Dataset,
    frame: np.ndarray,
    size: int,
    defaults: PreprocessDefaults | None,
    decode_step: tuple[str, dict],
    colour: bool,
) -> tuple[np.ndarray, PreprocessRecord]:
    """A profile's other named preprocessing (today: google-dicom-1, preprocess_google.py)."""
    from node.triage.preprocess_google import GOOGLE_DICOM_VERSION, google_dicom_input

    version = preprocess_version(defaults)
    if version != GOOGLE_DICOM_VERSION:
        raise PreprocessError(f"unknown preprocessing version {version!r}")
    pi = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if not colour and pi not in _GREY:
        raise PreprocessError(f"unsupported photometric interpretation {pi!r} for a single-sample image")
    try:
        out, steps = google_dicom_input(
            ds,
            size=size,
            defaults=defaults,
            frame=frame,
            decode_step=decode_step,
            colour_plan=_ColourPlan(ds, frame) if colour else None,
        )
    except PreprocessError:
        raise
    except Exception as exc:  # LUT data inconsistent with pixel values etc.
        raise PreprocessError(f"intensity transform failed: {exc}") from exc
    return out, PreprocessRecord(version, tuple(steps))


def normalise(batch_uint8: np.ndarray | torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]: x / 255 * 2 - 1 (== (x/255 - 0.5) / 0.5).

    Runs on whatever device the tensor is on (pass a CUDA uint8 tensor to normalise on the GPU).
    A single (H, W, 3) image is treated as a batch of one.
    """
    t = torch.from_numpy(np.ascontiguousarray(batch_uint8)) if isinstance(batch_uint8, np.ndarray) else batch_uint8
    if t.dtype != torch.uint8:
        raise PreprocessError(f"normalise expects uint8, got {t.dtype}")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise PreprocessError(f"normalise expects (N, H, W, 3), got {tuple(t.shape)}")
    x = t.permute(0, 3, 1, 2).to(torch.float32)
    x = x / 127.5 - 1.0
    return x.to(dtype).contiguous()
