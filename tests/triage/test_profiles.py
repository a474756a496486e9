"""Triage profiles: the shipped files, versions, strict validation."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from node.triage.profiles import (
    FindingSpec,
    ProfileError,
    TriageProfile,
    load_profile,
    load_profiles,
)

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"

# MedGemma technical report, Appendix Table A4 (reference/medsiglip.md section 3).
TABLE_A4 = {
    "atelectasis": (
        ["no atelectasis", "no acute cardiopulmonary process"],
        ["adjacent atelectasis", "bibasilar atelectasis", "there is atelectasis"],
    ),
    "cardiomegaly": (
        [
            "heart size is normal",
            "cardiac size is within normal limits",
            "cardiothoracic ratio within normal limits",
            "no acute cardiopulmonary process",
            "normal study",
            "no evidence of cardiomegaly",
        ],
        ["mild cardiomegaly", "moderate cardiomegaly", "severe cardiomegaly", "enlarged cardiac silhouette"],
    ),
    "consolidation": (
        ["no focal consolidation", "no acute cardiopulmonary process", "normal study"],
        [
            "alveolar consolidation",
            "densely consolidated",
            "lobe consolidation",
            "airspace consolidation",
            "bibasilar consolidations",
            "suggestive of consolidation",
        ],
    ),
    "edema": (
        ["no pulmonary edema", "no acute cardiopulmonary process", "normal study"],
        ["mild pulmonary edema", "moderate pulmonary edema", "severe pulmonary edema"],
    ),
    "enlarged_cardiomediastinum": (
        ["no acute cardiopulmonary process", "cardiomediastinal silhouette is normal"],
        ["widened cardiomediastinum"],
    ),
    "fracture": (["no acute cardiopulmonary process", "normal study"], ["rib fractures", "rib fracture"]),
    "lung_lesion": (["no acute cardiopulmonary process"], ["lytic lesion", "cavitary lesion", "parenchymal lesion"]),
    "lung_opacity": (
        [
            "no focal opacity",
            "lung volumes are normal",
            "normal study",
            "normal lung volumes",
            "lungs are clear",
            "no focal consolidation",
            "no evidence of airspace consolidation",
            "no infiltrate",
            "no airspace opacity",
            "pulmonary parenchyma is clear",
        ],
        [
            "bilateral opacities",
            "basal opacity",
            "opacification is present",
            "bibasilar opacities",
            "increased opacification",
            "consolidative opacity",
            "parenchymal opacities",
            "airspace opacification cannot be excluded",
            "there is airspace opacification",
        ],
    ),
    "pleural_effusion": (
        ["no evidence of pleural effusion", "no acute cardiopulmonary process", "normal study"],
        ["left pleural effusion", "right pleural effusion", "bilateral pleural effusions"],
    ),
    "pleural_other": (["no acute cardiopulmonary process"], ["blunting of costophrenic angle", "pleural thickening"]),
    "pneumonia": (["lungs are clear", "no acute cardiopulmonary process"], ["suggestive of pneumonia"]),
    "pneumothorax": (["no pneumothorax", "no acute cardiopulmonary process", "normal study"], ["apical pneumothorax"]),
    "support_devices": (
        ["no acute cardiopulmonary process"],
        ["monitoring and support devices", "NG tube", "ET tube", "catheter", "PIC line"],
    ),
}

MINIMAL = """\
name = "mini"
description = "test profile"

[selection]
modalities = ["DX"]
sop_class_uids = []
body_parts = ["CHEST"]
view_positions = ["PA"]
min_age_years = 18
photometric_interpretations = ["MONOCHROME2"]

[domain]
in_domain_prompts = ["a chest X-ray"]
out_of_domain_prompts = ["a CT scan"]
min_score = 0.5

[preprocessing]
multiframe = "middle"

[[findings]]
key = "pneumothorax"
display_name = "Pneumothorax"
code = ["36118008", "SCT", "Pneumothorax"]
absent_prompts = ["no pneumothorax"]
present_prompts = ["apical pneumothorax"]
threshold = 0.5
indeterminate_band = [0.4, 0.6]
urgency = "high"
"""


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_profiles_load():
    profiles = load_profiles(PROFILES)
    assert set(profiles) >= {"cxr", "derm"}
    for name, p in profiles.items():
        assert isinstance(p, TriageProfile) and p.name == name
        assert re.fullmatch(r"sha256:[0-9a-f]{16}", p.version)
        for f in p.findings:
            assert isinstance(f, FindingSpec)
            lo, hi = f.indeterminate_band
            assert lo <= f.threshold <= hi


def test_cxr_profile_content():
    cxr = load_profile(PROFILES / "cxr.toml")
    assert [f.key for f in cxr.findings] == sorted(TABLE_A4)
    for f in cxr.findings:
        absent, present = TABLE_A4[f.key]
        assert list(f.absent_prompts) == absent, f.key
        assert list(f.present_prompts) == present, f.key
        assert f.urgency == ("high" if f.key == "pneumothorax" else "routine")
        assert (f.threshold, f.indeterminate_band) == (0.5, (0.4, 0.6))
    sel = cxr.selection
    assert set(sel.modalities) == {"CR", "DX"}
    assert set(sel.view_positions) == {"PA", "AP"}
    assert "CHEST" in sel.body_parts
    assert sel.min_age_years == 18 and sel.max_age_years is None
    assert cxr.preprocessing.window_center is None and cxr.preprocessing.window_width is None
    assert cxr.finding("pneumothorax").code == ("36118008", "SCT", "Pneumothorax")
    assert "a chest X-ray" in cxr.domain.in_domain_prompts


def test_derm_profile_content():
    derm = load_profile(PROFILES / "derm.toml")
    assert derm.selection.modalities == ("XC",)
    assert "RGB" in derm.selection.photometric_interpretations
    assert derm.finding("melanoma").urgency == "high"


def test_version_is_hash_of_bytes_and_changes_with_one_byte(tmp_path):
    path = write(tmp_path, MINIMAL)
    p1 = load_profile(path)
    assert p1.version == "sha256:" + hashlib.sha256(MINIMAL.encode()).hexdigest()[:16]
    path.write_text(MINIMAL.replace("threshold = 0.5", "threshold = 0.51"))
    assert load_profile(path).version != p1.version
    path.write_text(MINIMAL + "# a comment\n")
    assert load_profile(path).version != p1.version
    path.write_text(MINIMAL)
    assert load_profile(path).version == p1.version


def test_shipped_cxr_copy_version_changes(tmp_path):
    shutil.copy(PROFILES / "cxr.toml", tmp_path / "cxr.toml")
    original = load_profile(tmp_path / "cxr.toml").version
    data = (tmp_path / "cxr.toml").read_bytes().replace(b"apical pneumothorax", b"apical pneumothoraX")
    (tmp_path / "cxr.toml").write_bytes(data)
    assert load_profile(tmp_path / "cxr.toml").version != original


def test_optional_keys(tmp_path):
    p = load_profile(write(tmp_path, MINIMAL.replace("min_age_years = 18\n", "")))
    assert p.selection.min_age_years is None
    text = MINIMAL.replace('multiframe = "middle"', 'window_center = 40\nwindow_width = 400\nmultiframe = "first"')
    p = load_profile(write(tmp_path, text))
    assert (p.preprocessing.window_center, p.preprocessing.window_width, p.preprocessing.multiframe) == (
        40,
        400,
        "first",
    )


@pytest.mark.parametrize(
    "old,new,key",
    [
        ('urgency = "high"', 'urgency = "urgent"', "findings[0].urgency"),
        ("threshold = 0.5", "threshold = 0.7", "findings[0].indeterminate_band"),
        ("threshold = 0.5", "threshold = 1.5", "findings[0].threshold"),
        ("threshold = 0.5", 'threshold = "0.5"', "findings[0].threshold"),
        ("indeterminate_band = [0.4, 0.6]", "indeterminate_band = [0.4]", "findings[0].indeterminate_band"),
        ('urgency = "high"', 'urgency = "high"\ncolour = "red"', "findings[0].colour"),
        ('display_name = "Pneumothorax"\n', "", "findings[0].display_name"),
        ('present_prompts = ["apical pneumothorax"]', "present_prompts = []", "findings[0].present_prompts"),
        ('code = ["36118008", "SCT", "Pneumothorax"]', 'code = ["36118008", "SCT"]', "findings[0].code"),
        ("min_score = 0.5", "min_score = 2", "domain.min_score"),
        ('modalities = ["DX"]', 'modalities = ["dx"]', "selection.modalities[0]"),
        ('modalities = ["DX"]', "modalities = []", "selection.modalities"),
        ("sop_class_uids = []", 'sop_class_uids = ["1.2.abc"]', "selection.sop_class_uids[0]"),
        ("min_age_years = 18", "min_age_years = -1", "selection.min_age_years"),
        ("min_age_years = 18", "min_age_years = 18\nmax_age_years = 10", "selection.max_age_years"),
        ('view_positions = ["PA"]\n', "", "selection.view_positions"),
        ("[selection]", "[selection]\nbody_part = []", "selection.body_part"),
        ('multiframe = "middle"', 'multiframe = "last"', "preprocessing.multiframe"),
        ('multiframe = "middle"', 'window_center = 40\nmultiframe = "middle"', "preprocessing.window_width"),
        ('name = "mini"', 'name = "Mini Profile"', "name"),
        ('description = "test profile"\n', 'description = "test profile"\nauthor = "x"\n', "author"),
    ],
)
def test_bad_profile_names_file_and_key(tmp_path, old, new, key):
    assert old in MINIMAL
    path = write(tmp_path, MINIMAL.replace(old, new, 1), "bad.toml")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    message = str(info.value)
    assert "bad.toml" in message
    assert f"{key}:" in message, message


def test_duplicate_finding_key(tmp_path):
    finding = MINIMAL[MINIMAL.index("[[findings]]") :]
    with pytest.raises(ProfileError, match=r"findings\[1\]\.key"):
        load_profile(write(tmp_path, MINIMAL + "\n" + finding))


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ProfileError, match="broken.toml.*invalid TOML"):
        load_profile(write(tmp_path, "name = ", "broken.toml"))
    with pytest.raises(ProfileError, match="nope.toml"):
        load_profile(tmp_path / "nope.toml")
    with pytest.raises(ProfileError):
        load_profiles(tmp_path / "no-such-dir")


def test_load_profiles_duplicate_names(tmp_path):
    write(tmp_path, MINIMAL, "a.toml")
    write(tmp_path, MINIMAL, "b.toml")
    with pytest.raises(ProfileError, match="b.toml.*already defined"):
        load_profiles(tmp_path)
