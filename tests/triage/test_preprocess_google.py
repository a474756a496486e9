"""Preprocessing version google-dicom-1 (Google's DICOM serving path) against hand-computed arrays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from node.triage.preprocess import to_model_input
from node.triage.preprocess_google import GOOGLE_DICOM_VERSION, resize_bicubic_antialias
from node.triage.profiles import PreprocessDefaults
from tests.support.pixels import make_ds

GOOGLE = PreprocessDefaults(window_center=None, window_width=None, multiframe="middle", method=GOOGLE_DICOM_VERSION)


def grey(out: np.ndarray) -> np.ndarray:
    assert out.dtype == np.uint8 and out.shape[2] == 3
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 0] == out[..., 2]).all()
    return out[..., 0]


def test_window_then_full_dynamic_range_by_hand() -> None:
    # Window c=100, w=101: w // 2 = 50, so [50, 150] -> [0, 1]: 60, 80, 100, 140 -> 0.1, 0.3, 0.5, 0.9.
    # Dynamic range 0.1..0.9 -> 0..1: 0, 0.25, 0.5, 1 -> floor(255 y + 0.5) = 0, 64, 128, 255.
    arr = np.tile(np.array([60, 80, 100, 140], dtype=np.uint16), (4, 1))
    out, record = to_model_input(make_ds(arr, WindowCenter=100, WindowWidth=101), size=4, defaults=GOOGLE)
    assert record.version == GOOGLE_DICOM_VERSION
    assert (grey(out) == np.tile([0, 64, 128, 255], (4, 1))).all()
    names = [name for name, _ in record.steps]
    assert names == [
        "decode",
        "modality_lut",
        "window",
        "rescale_dynamic_range",
        "pad_square",
        "resize",
        "scale_8bit",
        "channels",
    ]
    assert record.describe().startswith("google-dicom-1: ")


def test_monochrome1_is_inverted_after_the_rescale() -> None:
    # Same values; 1 - y: 1, 0.75, 0.5, 0 -> 255, 191 (191.25 + 0.5 floored), 128, 0.
    arr = np.tile(np.array([60, 80, 100, 140], dtype=np.uint16), (4, 1))
    out, _ = to_model_input(make_ds(arr, "MONOCHROME1", WindowCenter=100, WindowWidth=101), size=4, defaults=GOOGLE)
    assert (grey(out) == np.tile([255, 191, 128, 0], (4, 1))).all()


def test_no_window_rescales_the_modality_values_and_pads_centred() -> None:
    # No window tags: rescale slope 2, intercept -10 -> 10, 30, 50, 70 -> 0, 1/3, 2/3, 1 -> 0, 85, 170, 255.
    # 2 rows padded to 4: one zero row above, one below.
    arr = np.tile(np.array([10, 20, 30, 40], dtype=np.uint16), (2, 1))
    out, record = to_model_input(make_ds(arr, RescaleSlope=2, RescaleIntercept=-10), size=4, defaults=GOOGLE)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[1:3] = [0, 85, 170, 255]
    assert (grey(out) == expected).all()
    assert dict(record.steps)["pad_square"]["top"] == 1


def test_constant_image_is_black() -> None:
    out, _ = to_model_input(make_ds(np.full((4, 4), 700, dtype=np.uint16)), size=4, defaults=GOOGLE)
    assert (out == 0).all()


def test_bicubic_antialias_weights_by_hand() -> None:
    """8 -> 4: PIL's antialiased bicubic (Keys a = -0.5, kernel widened x2), weights worked out by hand.

    k(x) = 1.5|x|^3 - 2.5|x|^2 + 1 (|x| <= 1), -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2 (1 < |x| < 2), at
    x = (j + 0.5 - centre) / 2 with centre = 2 (i + 0.5); taps outside the image are dropped and
    the rest renormalised: k(.25) = .8671875, k(.75) = .2265625, k(1.25) = -.0703125, k(1.75) = -.0234375.
    """
    a, b, c, d = 0.8671875, 0.2265625, -0.0703125, -0.0234375
    w0 = np.array([a, a, b, c, d, 0, 0, 0])  # output 0, centre 1: taps j = 0..4
    w1 = np.array([c, b, a, a, b, c, d, 0])  # output 1, centre 3: taps j = 0..6
    row = np.array([0.0, 0.1, 0.4, 0.2, 0.9, 1.0, 0.3, 0.6])
    image = np.tile(row, (8, 1))  # identical rows: the vertical pass changes nothing
    out = resize_bicubic_antialias(image, 4)
    assert out.shape == (4, 4)
    assert out[0, 0] == pytest.approx(float(w0 @ row / w0.sum()), abs=1e-12)
    assert out[0, 1] == pytest.approx(float(w1 @ row / w1.sum()), abs=1e-12)
    # mirror symmetry gives outputs 3 and 2
    assert out[0, 3] == pytest.approx(float(w0[::-1] @ row / w0.sum()), abs=1e-12)
    assert out[0, 2] == pytest.approx(float(w1[::-1] @ row / w1.sum()), abs=1e-12)
    assert np.allclose(out, out[0])


def test_a_profile_chooses_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from node.triage.profiles import ProfileError, load_profile

    text = (Path(__file__).resolve().parents[2] / "config" / "profiles" / "cxr.toml").read_text()
    path = tmp_path / "cxr.toml"
    path.write_text(text.replace('multiframe = "middle"', 'multiframe = "middle"\nmethod = "google-dicom-1"'))
    assert load_profile(path).preprocessing.method == GOOGLE_DICOM_VERSION
    path.write_text(text.replace('multiframe = "middle"', 'multiframe = "middle"\nmethod = "bilinear-9"'))
    with pytest.raises(ProfileError, match="preprocessing.method"):
        load_profile(path)
    default = dataclasses.replace(GOOGLE, method="tn-pre-1")
    assert to_model_input(make_ds(np.zeros((4, 4), dtype=np.uint16)), size=4, defaults=default)[1].version == "tn-pre-1"
