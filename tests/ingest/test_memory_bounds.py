"""No input of at most 16 MiB raises the node's RSS by more than storage.max_dataset_bytes + 64 MiB:
deflate bombs, data sets over the limit, endless streams before and after association. Measured
on a real `triage-node serve` process through /proc/<pid>/status (VmHWM, the peak resident set).
"""

from __future__ import annotations

import os
import socket
import struct
import time
import zlib
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.config import NODE_AE
from tests.support.dimse import py_echo, send_file_as_is
from tests.support.files import write_raw_part10

MiB = 1024 * 1024
LIMIT = 8 * MiB
SC = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def _header(sop_uid: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "MEM"
    ds.Modality = "OT"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def _pixel_header(length: int) -> bytes:
    return struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, length)


def _file(tmp: Path, name: str, ts: str, body: bytes, sop_uid: str) -> Path:
    return write_raw_part10(tmp / f"{name}.dcm", sop_class=SC, sop_uid=sop_uid, transfer_syntax=ts, body=body)


def _deflate_bomb(inflated: int) -> bytes:
    sop = generate_uid()
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [comp.compress(_header(sop) + _pixel_header(inflated))]
    zeros = bytes(MiB)
    for _ in range(inflated // MiB):
        out.append(comp.compress(zeros))
    out.append(comp.flush())
    return b"".join(out)


def test_no_input_of_16_mib_raises_rss_beyond_the_limit(tmp_path, settings_dict, serve_factory) -> None:
    data = settings_dict(
        tmp_path, dicom={"allowed_peers": ["*"], "network_timeout_seconds": 5}, storage={"max_dataset_bytes": LIMIT}
    )
    node = serve_factory(data).start()
    port = data["dicom"]["port"]
    pid = node.proc.pid  # type: ignore[union-attr]

    # warm-up: the code paths of a normal store, including a small deflated one
    small = _header(sop := generate_uid()) + _pixel_header(1024) + bytes(1024)
    assert send_file_as_is(port, _file(tmp_path, "warm", EXPLICIT, small, sop)) == 0
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    small2 = _header(sop2 := generate_uid()) + _pixel_header(1024) + bytes(1024)
    assert send_file_as_is(port, _file(tmp_path, "warm2", DEFLATED, comp.compress(small2) + comp.flush(), sop2)) == 0
    baseline_kib = _status_kib(pid, "VmRSS")

    # 1. a deflate bomb: ~1 MiB that inflates to 1 GiB (refused when the inflated size passes the limit)
    bomb = _deflate_bomb(1024 * MiB)
    assert len(bomb) <= 16 * MiB
    assert send_file_as_is(port, _file(tmp_path, "bomb", DEFLATED, bomb, generate_uid())) == 0xA701
    # 2. 16 MiB of deflated random bytes (garbage): refused quickly
    start = time.monotonic()
    garbage = zlib.compress(os.urandom(512 * 1024))[2:-4]
    assert send_file_as_is(port, _file(tmp_path, "garbage", DEFLATED, garbage, generate_uid())) in (0xC000, 0xA701)
    assert time.monotonic() - start < 15
    # 3. a 16 MiB data set over the 8 MiB limit: never buffered whole
    sop3 = generate_uid()
    big = _header(sop3) + _pixel_header(16 * MiB - 512) + bytes(16 * MiB - 512)
    assert send_file_as_is(port, _file(tmp_path, "big", EXPLICIT, big, sop3)) == 0xA701
    # 4. 16 MiB streamed into a connection that never associates
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(10)
        try:
            s.sendall(struct.pack(">BBL", 0x01, 0, 16 * MiB) + bytes(16 * MiB))
        except OSError:
            pass  # the node closed it after the header: what we want
    # 5. a P-DATA header claiming 4 GB inside an association, then 16 MiB
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        assoc.dul.socket.socket.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF) + bytes(16 * MiB))
    except OSError:
        pass
    assoc.abort()

    assert py_echo(port) == 0  # still serving
    peak_kib = _status_kib(pid, "VmHWM")
    grew = (peak_kib - baseline_kib) * 1024
    assert grew <= LIMIT + 64 * MiB, f"peak RSS grew by {grew / MiB:.0f} MiB (limit {LIMIT / MiB:.0f} + 64 MiB)"
    print(f"peak RSS growth {grew / MiB:.1f} MiB")
    assert node.running
