"""The SR tests' synthetic study (tests/support/sr.py), one per test."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.support.sr import Study, dx_image


@pytest.fixture
def study(tmp_path: Path) -> Study:
    study_uid, series_uid = generate_uid(), generate_uid()
    headers = []
    for number, view in ((1, "PA"), (2, "LL")):
        path = tmp_path / f"dx{number}.dcm"
        dx_image(study_uid, series_uid, number, view).save_as(path, enforce_file_format=True)
        headers.append(pydicom.dcmread(path, stop_before_pixels=True))
    return Study(*headers)
