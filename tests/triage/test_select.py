"""Image selection: which instances a profile accepts, and the reasons for the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.triage.profiles import load_profile
from node.triage.select import Selection, Skipped, patient_age_years, select_images

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
KEY_OBJECT = "1.2.840.10008.5.1.4.1.1.88.59"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"


@pytest.fixture(scope="module")
def cxr():
    return load_profile(PROFILES / "cxr.toml")


@pytest.fixture(scope="module")
def derm():
    return load_profile(PROFILES / "derm.toml")


def header(**tags) -> Dataset:
    """An adult PA chest DX header (with a Pixel Data element), overridden by ``tags``.

    A tag set to None is removed.
    """
    ds = Dataset()
    ds.SOPClassUID = DX_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Manufacturer = "ACME"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.PatientAge = "045Y"
    ds.PatientBirthDate = "19800101"
    ds.StudyDate = "20250101"
    ds.Rows = 8
    ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x00" * 64
    for k, v in tags.items():
        if v is None:
            if k in ds:
                delattr(ds, k)
        else:
            setattr(ds, k, v)
    return ds


def reason(ds: Dataset, profile, **kw) -> str | None:
    sel = select_images([ds], profile, **kw)
    assert len(sel.accepted) + len(sel.skipped) == 1
    return sel.skipped[0].reason if sel.skipped else None


def test_accepts_adult_pa_dx(cxr):
    ds = header()
    sel = select_images([ds], cxr)
    assert isinstance(sel, Selection)
    assert sel.accepted == (ds,) and sel.skipped == ()


def test_accepts_ap_cr_and_monochrome1(cxr):
    ds = header(
        Modality="CR",
        SOPClassUID="1.2.840.10008.5.1.4.1.1.1",
        ViewPosition="AP",
        PhotometricInterpretation="MONOCHROME1",
    )
    assert reason(ds, cxr) is None


@pytest.mark.parametrize("view", ["LL", "RL", "LAT", "LATERAL", "LLD"])
def test_lateral_skipped(cxr, view):
    assert reason(header(ViewPosition=view), cxr) == "view-position"


def test_missing_view_position_skipped(cxr):
    assert reason(header(ViewPosition=None), cxr) == "view-position-unknown"
    assert reason(header(ViewPosition=""), cxr) == "view-position-unknown"


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_view_position_normalised(cxr):
    assert reason(header(ViewPosition=" pa "), cxr) is None


def test_other_body_part_skipped_missing_accepted(cxr):
    assert reason(header(BodyPartExamined="KNEE"), cxr) == "body-part"
    # cxr lists "" in body_parts: a missing BodyPartExamined is accepted (domain check follows)
    assert reason(header(BodyPartExamined=None), cxr) is None


def test_ct_skipped(cxr):
    assert reason(header(Modality="CT", SOPClassUID=CT_IMAGE), cxr) == "modality"


def test_dx_for_processing_skipped(cxr):
    assert reason(header(SOPClassUID=DX_PROCESSING), cxr) == "sop-class"


def test_colour_skipped_by_photometric(cxr):
    assert reason(header(PhotometricInterpretation="RGB", SamplesPerPixel=3), cxr) == "photometric"


def test_foreign_sr_is_not_an_image(cxr):
    sr = header(
        Modality="SR", SOPClassUID=COMPREHENSIVE_3D_SR, Manufacturer="Other AI", Rows=None, Columns=None, PixelData=None
    )
    assert reason(sr, cxr) == "not-an-image"


def test_own_sr_skipped(cxr):
    sr = header(
        Modality="SR",
        SOPClassUID=COMPREHENSIVE_3D_SR,
        Manufacturer="triage-node",
        Rows=None,
        Columns=None,
        PixelData=None,
    )
    assert reason(sr, cxr) == "own-sr"
    sr.Manufacturer = "my-node"  # another node's SR is not an image either, but not ours
    assert reason(sr, cxr) == "not-an-image"


@pytest.mark.parametrize("modality,sop_class", [("KO", KEY_OBJECT), ("PR", GSPS), ("DX", KEY_OBJECT)])
def test_ko_pr_not_images(cxr, modality, sop_class):
    assert reason(header(Modality=modality, SOPClassUID=sop_class), cxr) == "not-an-image"


def test_missing_pixel_data_skipped(cxr):
    ds = header(PixelData=None)
    assert reason(ds, cxr) == "not-an-image"
    # headers read with stop_before_pixels: the caller says so
    assert reason(ds, cxr, require_pixel_data=False) is None
    assert reason(header(PixelData=None, Rows=None), cxr, require_pixel_data=False) == "not-an-image"


@pytest.mark.parametrize("age", ["006Y", "017Y", "006M", "040W", "010D"])
def test_child_skipped(cxr, age):
    assert reason(header(PatientAge=age), cxr) == "patient-age"


@pytest.mark.parametrize("age", ["018Y", "045Y", "216M"])
def test_adult_ages_accepted(cxr, age):
    assert reason(header(PatientAge=age), cxr) is None


def test_age_from_birth_date(cxr):
    # no PatientAge: birth date against study date; 18th birthday is accepted, the day before not
    assert reason(header(PatientAge=None, PatientBirthDate="20070101", StudyDate="20250101"), cxr) is None
    assert reason(header(PatientAge=None, PatientBirthDate="20070102", StudyDate="20250101"), cxr) == "patient-age"
    assert reason(header(PatientAge=None, PatientBirthDate="20150601", StudyDate="20250101"), cxr) == "patient-age"


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
def test_age_unknown_skipped(cxr):
    ds = header(PatientAge=None, PatientBirthDate=None)
    assert reason(ds, cxr) == "patient-age-unknown"
    assert reason(header(PatientAge="", PatientBirthDate="", StudyDate=""), cxr) == "patient-age-unknown"
    assert reason(header(PatientAge="XYZ", PatientBirthDate=None), cxr) == "patient-age-unknown"
    # birth date after the study date: unknown, not negative
    assert reason(header(PatientAge=None, PatientBirthDate="20300101"), cxr) == "patient-age-unknown"


def test_patient_age_years_values():
    assert patient_age_years(header(PatientAge="045Y")) == 45
    assert patient_age_years(header(PatientAge="006M")) == 0.5
    assert patient_age_years(
        header(PatientAge=None, PatientBirthDate="20000101", StudyDate="20250701")
    ) == pytest.approx(25 + 181 / 365)
    # leap-day birthday counts on 28 February in common years
    assert patient_age_years(header(PatientAge=None, PatientBirthDate="20040229", StudyDate="20220228")) == 18
    # study date missing: series date used
    assert (
        patient_age_years(header(PatientAge=None, PatientBirthDate="20000101", StudyDate=None, SeriesDate="20200101"))
        == 20
    )


def test_mixed_study_order_and_reasons(cxr):
    pa = header()
    lat = header(ViewPosition="LL")
    child = header(PatientAge="008Y")
    ct = header(Modality="CT", SOPClassUID=CT_IMAGE)
    own = header(Modality="SR", SOPClassUID=COMPREHENSIVE_3D_SR, Manufacturer="triage-node", PixelData=None)
    ap = header(ViewPosition="AP")
    dup = header(SOPInstanceUID=pa.SOPInstanceUID)
    sel = select_images([pa, lat, child, ct, own, ap, dup], cxr)
    assert sel.accepted == (pa, ap)
    assert sel.skipped == (
        Skipped(lat.SOPInstanceUID, "view-position"),
        Skipped(child.SOPInstanceUID, "patient-age"),
        Skipped(ct.SOPInstanceUID, "modality"),
        Skipped(own.SOPInstanceUID, "own-sr"),
        Skipped(pa.SOPInstanceUID, "duplicate"),
    )


def test_derm_profile_accepts_photo_any_age(derm, cxr):
    photo = header(
        Modality="XC",
        SOPClassUID=VL_PHOTO,
        PhotometricInterpretation="YBR_FULL_422",
        SamplesPerPixel=3,
        BodyPartExamined=None,
        ViewPosition=None,
        PatientAge="007Y",
    )
    assert reason(photo, derm) is None
    assert reason(photo, cxr) == "modality"
    assert reason(header(), derm) == "modality"
