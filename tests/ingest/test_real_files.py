"""Real files, the opposite mistake: every file of pydicom's bundled test set that carries the
identifiers a store needs is stored when DCMTK storescu or a pynetdicom SCU sends it, and reads
back equal. Files that are broken on purpose are refused (0xC000), and the retired storage SOP
classes old modalities still send are accepted.
"""

from __future__ import annotations

import functools
import subprocess
import warnings
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom import uid as U
from pydicom.data.data_manager import DATA_ROOT
from pynetdicom import AE

from tests.support.config import NODE_AE
from tests.support.dimse import send_file_as_is
from tests.support.files import stored_files

# pydicom test files that are broken on purpose: the node must refuse them (0xC000).
BROKEN = {
    "MR_truncated.dcm": "Pixel Data cut short",
    "rtplan_truncated.dcm": "data set cut inside an element",
    "SC_rgb_jpeg.dcm": "implicit VR data set under an explicit VR transfer syntax",
}
# Files DCMTK's storescu cannot send at all (it cannot read them): sent by pynetdicom only.
DCMTK_CANNOT_SEND = {
    "rtdose_rle.dcm": "storescu: 'missing SOP class (or instance) in file' (DCMTK cannot parse it)",
    "rtdose_rle_1frame.dcm": "storescu: 'missing SOP class (or instance) in file' (DCMTK cannot parse it)",
}
# storescu proposes uncompressed syntaxes unless told which compressed one to propose.
STORESCU_TS_OPTION = {
    U.RLELossless: "-xr",
    U.JPEGLosslessSV1: "-xs",
    U.JPEGBaseline8Bit: "-xy",
    U.JPEGExtended12Bit: "-xx",
    U.JPEG2000Lossless: "-xv",
    U.JPEG2000: "-xw",
    U.JPEGLSLossless: "-xt",
    U.JPEGLSNearLossless: "-xu",
    U.DeflatedExplicitVRLittleEndian: "-xd",
    U.ExplicitVRBigEndian: "-xb",
}
IDENTIFIERS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@functools.cache
def _candidates() -> tuple[Path, ...]:
    """The bundled files (what get_testdata_files finds locally; it would also try to download
    pydicom's optional external data set, which takes seconds and needs the network)."""
    out = []
    bundled = (p for p in (Path(DATA_ROOT) / "test_files").rglob("*") if p.is_file())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(bundled):
            try:
                ds = pydicom.dcmread(name, stop_before_pixels=True)
            except Exception:
                continue
            if all(k in ds for k in IDENTIFIERS) and "TransferSyntaxUID" in ds.file_meta:
                out.append(Path(name))
    return tuple(out)


def _rounds(files: list[Path]) -> list[list[Path]]:
    """Several test files share a SOP Instance UID (one image in many encodings); a node keeps the
    first copy of a UID, so each round goes to a fresh node and holds each UID once."""
    seen: dict[str, int] = defaultdict(int)
    rounds: list[list[Path]] = []
    for path in files:
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        index = seen[uid]
        seen[uid] += 1
        while len(rounds) <= index:
            rounds.append([])
        rounds[index].append(path)
    return rounds


def _read(path: Path) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(path)


def _normalised(ds: pydicom.Dataset) -> pydicom.Dataset:
    """What DCMTK rewrites as it sends: it writes encapsulated Pixel Data as OB (one test file has
    OW there), recomputes the retired group length elements (gggg,0000) and drops Data Set
    Trailing Padding (FFFC,FFFC)."""
    if 0xFFFCFFFC in ds:
        del ds[0xFFFCFFFC]
    if "PixelData" in ds and ds.file_meta.TransferSyntaxUID.is_encapsulated:
        ds["PixelData"].VR = "OB"
    return _without_group_lengths(ds)


def _without_group_lengths(ds: pydicom.Dataset) -> pydicom.Dataset:
    for tag in [t for t in ds.keys() if t.element == 0]:  # noqa: SIM118 - iterating a Dataset yields elements, not tags
        del ds[tag]
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _without_group_lengths(item)
    return ds


def _assert_stored_equal(node, sent: list[Path], sender: str) -> None:  # type: ignore[no-untyped-def]
    stored = stored_files(node.settings.storage.path)
    missing = [p.name for p in sent if str(_read(p).SOPInstanceUID) not in stored]
    assert not missing, f"{sender}: not stored: {missing}"
    for path in sent:
        original = _normalised(_read(path))
        back = _normalised(_read(stored[str(original.SOPInstanceUID)]))
        assert back == original, f"{sender}: {path.name} reads back different"


def _pynetdicom_send(port: int, path: Path) -> int | None:
    ds = _read(path)
    ae = AE(ae_title="PYSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(str(ds.SOPClassUID), [str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established, path.name
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status) if status and "Status" in status else None
    finally:
        assoc.release()


def test_pydicom_test_files_are_stored_and_read_back_equal(
    tmp_path, make_settings, node_factory, require_tools
) -> None:
    require_tools("storescu")
    files = [p for p in _candidates() if p.name not in BROKEN]
    assert len(files) > 40
    for number, group in enumerate(_rounds(files)):
        fast = {"storage": {"fsync": False}, "audit": {"fsync": False}}  # durability is not under test here
        dcmtk_node = node_factory(make_settings(tmp_path / f"dcmtk{number}", **fast))
        py_node = node_factory(make_settings(tmp_path / f"py{number}", **fast))
        dcmtk_files = [p for p in group if p.name not in DCMTK_CANNOT_SEND]
        by_option: dict[str, list[Path]] = defaultdict(list)
        for path in dcmtk_files:
            ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
            by_option[STORESCU_TS_OPTION.get(ts, "-x=")].append(path)
        for option, paths in by_option.items():  # one association per proposed syntax family
            result = subprocess.run(
                [
                    "storescu",
                    option,
                    "-R",
                    "-aet",
                    "STORESCU",
                    "-aec",
                    NODE_AE,
                    "127.0.0.1",
                    str(dcmtk_node.listener.port),
                    *map(str, paths),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert result.returncode == 0, f"{[p.name for p in paths]}: {result.stdout}{result.stderr}"
        _assert_stored_equal(dcmtk_node, dcmtk_files, "storescu")
        for path in group:
            assert _pynetdicom_send(py_node.listener.port, path) == 0, path.name
        _assert_stored_equal(py_node, group, "pynetdicom")
        dcmtk_node.stop()
        py_node.stop()


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_pydicom_test_files_are_refused(name, running_node) -> None:
    path = next(p for p in _candidates() if p.name == name)
    assert send_file_as_is(running_node.listener.port, path) == 0xC000
    assert stored_files(running_node.settings.storage.path) == {}


def test_retired_ultrasound_storage_is_accepted(tmp_path, running_node, dicom_factory, require_tools) -> None:
    require_tools("storescu")
    retired_us = "1.2.840.10008.5.1.4.1.1.6"  # Ultrasound Image Storage (Retired)
    path = dicom_factory.dx_image(out_dir="us")
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = retired_us
    ds.Modality = "US"
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run(
        [
            "storescu",
            "-R",
            "-aet",
            "STORESCU",
            "-aec",
            NODE_AE,
            "127.0.0.1",
            str(running_node.listener.port),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    stored = stored_files(running_node.settings.storage.path)
    assert str(ds.SOPInstanceUID) in stored
    assert _read(stored[str(ds.SOPInstanceUID)]).SOPClassUID == retired_us
