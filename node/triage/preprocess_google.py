"""Preprocessing version ``google-dicom-1``: the DICOM path of Google's MedSigLIP serving code,
written here from its description (the serving code's ``generic_dicom_handler`` and
``predictor``; CXR Foundation's ``data_processing_lib`` does the same).

Why a second version: our default (``tn-pre-1``, preprocess.py) follows the model card's
evaluation recipe (window to 8 bits, bilinear resize without antialias). Google's serving path
differs in two ways, and which one gives the better AUROC on a site's images is an empirical
question that ``triage-node evaluate --preprocessing tn-pre-1,google-dicom-1`` answers:

1. **decode** and **modality LUT** as in ``tn-pre-1``.
2. **window** -- WindowCenter/WindowWidth (first values) when present, else the profile's default
   window: values clipped to ``[c - w // 2, c + w // 2]`` and mapped linearly to [0, 1]
   (Google's ``TraditionalWindow``; integer half width as there). No window: the modality-LUT
   output is kept as it is.
3. **rescale dynamic range** -- the frame's own min..max mapped to the full span [0, 1]
   (Google's ``rescale_dynamic_range``: "make imaging relative to self"); a constant frame is 0.
4. **invert** -- MONOCHROME1: ``y = 1 - y``.
5. **pad to square** -- centred zeros, as ``tn-pre-1``.
6. **resize** -- bicubic with antialias (Keys cubic, a = -0.5, the kernel widened by the scale
   when shrinking: PIL's BICUBIC, which the model's ``SiglipImageProcessor`` uses), on the float
   values, by ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)``.
7. **8 bits** -- ``floor(255 y + 0.5)`` clipped: the node feeds the model uint8 (Google keeps
   16 bits until the resize; the difference is below one grey level of the model's input).
8. **channels** -- grey replicated to 3.

Colour images: decoded to RGB as in ``tn-pre-1``, scaled to [0, 1], then steps 5-8.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from node.triage.profiles import PreprocessDefaults

__all__ = [
    "GOOGLE_DICOM_VERSION",
    "google_dicom_input",
    "google_window",
    "rescale_dynamic_range",
    "resize_bicubic_antialias",
]

GOOGLE_DICOM_VERSION = "google-dicom-1"


def google_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """Clip to [c - w // 2, c + w // 2] and map linearly to [0, 1] (float64)."""
    half = width // 2
    lo, hi = center - half, center + half
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float64)
    return (np.clip(x, lo, hi) - lo) / (hi - lo)


def rescale_dynamic_range(y: np.ndarray) -> np.ndarray:
    """The frame's min..max to [0, 1]; a constant frame becomes all 0."""
    lo, hi = float(np.min(y)), float(np.max(y))
    if hi <= lo:
        return np.zeros_like(y, dtype=np.float64)
    return (y.astype(np.float64) - lo) / (hi - lo)


def resize_bicubic_antialias(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W) or (H, W, C) float -> (size, size[, C]) float64, bicubic with antialias."""
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]
    arr = out[0].numpy() if image.ndim == 2 else out.permute(1, 2, 0).numpy()
    return np.ascontiguousarray(arr)


def _pad_square(y: np.ndarray) -> tuple[np.ndarray, dict]:
    h, w = y.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    out = np.zeros((side, side, *y.shape[2:]), dtype=np.float64)
    out[top : top + h, left : left + w] = y
    return out, {
        "position": "centre",
        "value": 0,
        "top": top,
        "bottom": side - h - top,
        "left": left,
        "right": side - w - left,
        "side": side,
    }


def _first(value: object) -> float:
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
        value = value[0]  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _grey_unit(
    ds: Dataset, frame: np.ndarray, defaults: PreprocessDefaults | None, steps: list[tuple[str, dict]]
) -> np.ndarray:
    x = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
    if "ModalityLUTSequence" in ds and len(ds.ModalityLUTSequence):
        steps.append(("modality_lut", {"kind": "lut"}))
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        steps.append(
            (
                "modality_lut",
                {"kind": "rescale", "slope": float(ds.RescaleSlope), "intercept": float(ds.RescaleIntercept)},
            )
        )
    else:
        steps.append(("modality_lut", {"kind": "identity"}))
    window = None
    if ds.get("WindowCenter") not in (None, "") and ds.get("WindowWidth") not in (None, ""):
        try:
            c, w = _first(ds.WindowCenter), _first(ds.WindowWidth)
            if math.isfinite(c) and math.isfinite(w) and w > 0:
                window = ("tags", c, w)
        except (TypeError, ValueError, IndexError):
            window = None
    if window is None and defaults is not None and defaults.window_center is not None:
        window = ("profile", float(defaults.window_center), float(defaults.window_width))  # type: ignore[arg-type]
    if window is not None:
        source, c, w = window
        x = google_window(x, c, w)
        steps.append(("window", {"source": source, "center": c, "width": w, "half_width": "w // 2"}))
    else:
        steps.append(("window", {"source": "none"}))
    y = rescale_dynamic_range(x)
    steps.append(("rescale_dynamic_range", {"min": float(np.min(x)), "max": float(np.max(x)), "to": [0, 1]}))
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        y = 1.0 - y
        steps.append(("invert", {"photometric": "MONOCHROME1", "formula": "1-y"}))
    return y


def google_dicom_input(
    ds: Dataset,
    *,
    size: int,
    defaults: PreprocessDefaults | None,
    frame: np.ndarray,
    decode_step: tuple[str, dict],
    colour_plan=None,
):
    """Steps 2-8 on a decoded ``frame`` (preprocess.to_model_input decodes and dispatches here).

    Returns (uint8 (size, size, 3), steps); ``colour_plan`` is tn-pre-1's colour step, reused.
    """
    steps: list[tuple[str, dict]] = [decode_step]
    if colour_plan is not None:
        steps.extend(colour_plan.steps)
        y = colour_plan(frame).astype(np.float64) / 255.0
    else:
        y = _grey_unit(ds, frame, defaults, steps)
    padded, pad = _pad_square(y)
    steps.append(("pad_square", pad))
    resized = resize_bicubic_antialias(padded, size)
    steps.append(
        ("resize", {"size": size, "method": "bicubic", "antialias": True, "cubic_a": -0.5, "align_corners": False})
    )
    out = np.clip(np.floor(resized * 255.0 + 0.5), 0, 255).astype(np.uint8)
    steps.append(("scale_8bit", {"rounding": "half-up", "after": "resize"}))
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
        steps.append(("channels", {"from": 1, "to": 3, "method": "replicate"}))
    else:
        steps.append(("channels", {"from": 3, "to": 3, "method": "rgb"}))
    return np.ascontiguousarray(out), steps
