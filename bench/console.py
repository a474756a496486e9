"""Console worklist page with 10,000 studies in the index: server time per page load.

    python bench/console.py                        # SQLite (the default index), 10,000 studies
    python bench/console.py --studies 10000 --reps 30 --database-url postgresql+psycopg://...

The index is filled with synthetic rows (patients, studies, their image and SR series, worklist
items with 14 findings each, a third HIGH, half MEDIUM, the rest LOW; a quarter no-assist), through
SQLAlchemy in bulk. The app is the node's own FastAPI app (``create_app``: DICOMweb + console)
in-process, driven by Starlette's TestClient after a login with the token, so every request passes
the session check.

"server" is the console's ``Server-Timing: app;dur=...`` header: from the handler's start to
the rendered HTML (queries + template). "round trip" adds the ASGI stack and the client. The
peer in the same run is the node's existing ``GET /worklist`` JSON (every row, unpaginated).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

FINDINGS = [
    "Atelectasis",
    "Cardiomegaly",
    "Lung consolidation",
    "Pulmonary edema",
    "Enlarged cardiomediastinum",
    "Fracture of bone",
    "Lung lesion",
    "Lung opacity",
    "Pleural effusion",
    "Other pleural abnormality",
    "Pneumonia",
    "Pneumothorax",
    "Support devices",
    "Nodule",
]


def fill_index(db, n: int, seed: int = 0) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import insert

    from node.db.models import Patient, Series, Study, WorklistItem

    rng = random.Random(seed)
    now = datetime.now(UTC)
    patients, studies, series, items = [], [], [], []
    for i in range(n):
        uid = f"1.2.826.0.1.3680043.10.999.{i + 1}"
        patients.append(
            dict(
                id=i + 1,
                patient_id=f"P{i:06d}",
                issuer="",
                name=f"BENCH^PATIENT{i}",
                birth_date=f"{1940 + i % 60}0101",
                sex="MF"[i % 2],
            )
        )
        queued = now - timedelta(minutes=rng.uniform(0, 7 * 24 * 60))
        studies.append(
            dict(
                id=i + 1,
                study_instance_uid=uid,
                patient_pk=i + 1,
                study_date=queued.strftime("%Y%m%d"),
                study_time="120000",
                accession_number=f"A{i}",
                study_id="1",
                description="CHEST PA",
                referring_physician="",
                modalities="DX\\SR",
                last_arrival_at=queued,
                stability_state="stable",
                instance_count=2,
            )
        )
        # the image series and the SR series (the page reads the SR series' description)
        series.append(
            dict(id=2 * i + 1, series_instance_uid=uid + ".2", study_pk=i + 1, modality="DX", series_number=1)
        )
        series.append(
            dict(
                id=2 * i + 2,
                series_instance_uid=uid + ".8",
                study_pk=i + 1,
                modality="SR",
                series_number=9901,
                description="AI triage",
            )
        )
        r = rng.random()
        priority = "HIGH" if r < 0.33 else "MEDIUM" if r < 0.83 else "LOW"
        assist = rng.random() > 0.25
        findings = [
            {
                "finding": f,
                "code": str(100 + k),
                "state": rng.choice(["present", "not_detected", "not_detected", "indeterminate"]),
                "score": round(rng.random(), 6),
                "threshold": 0.6,
                "indeterminate_band": [0.4, 0.6],
                "urgent": k == 11,
            }
            for k, f in enumerate(FINDINGS)
        ]
        items.append(
            dict(
                study_instance_uid=uid,
                priority=priority,
                assist=assist,
                reason="" if assist else "out-of-domain",
                profile="cxr",
                sr_sop_instance_uid=uid + ".9",
                sr_series_instance_uid=uid + ".8",
                job_id=i + 1,
                findings=json.dumps(findings if assist else []),
                images=json.dumps(
                    [
                        {
                            "sop_instance_uid": uid + ".1",
                            "domain_score": 0.9,
                            "evaluated": True,
                            "preprocessing": "tn-pre-1: ...",
                        }
                    ]
                ),
                order_priority="",
                raised_by_sr_uid=uid + ".9" if priority == "HIGH" else "",
                priority_kept=False,
                queued_at=queued,
                triaged_at=queued + timedelta(seconds=5),
                ups_sop_instance_uid=uid + ".7",
                procedure_step_state="SCHEDULED",
                transaction_uid="",
            )
        )
    with db.engine.begin() as conn:
        for table, rows in ((Patient, patients), (Study, studies), (Series, series), (WorklistItem, items)):
            for start in range(0, len(rows), 2000):
                conn.execute(insert(table), rows[start : start + 2000])


def measure(client, path: str, reps: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    server, total = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        r = client.get(path)
        total.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200, (path, r.status_code, r.text[:300])
        timing = r.headers.get("server-timing", "")
        if timing.startswith("app;dur="):
            server.append(float(timing.split("=", 1)[1]))
    out = {
        "round_trip_median_ms": statistics.median(total),
        "round_trip_p95_ms": sorted(total)[int(0.95 * (reps - 1))],
        "bytes": len(r.content),
    }
    if server:
        out.update(
            server_median_ms=statistics.median(server),
            server_p95_ms=sorted(server)[int(0.95 * (reps - 1))],
            server_max_ms=max(server),
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file in a temp folder")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from node.config import Settings
    from node.db.engine import Database
    from node.dicomweb.app import create_app
    from node.dicomweb.context import WebContext
    from node.store.files import FileStore
    from node.store.ingest import Ingestor

    root = Path(tempfile.mkdtemp(prefix="bench-console-"))
    url = args.database_url or f"sqlite:///{root / 'index.db'}"
    settings = Settings.model_validate(
        {
            "node": {"data_dir": str(root)},
            "storage": {"path": str(root / "storage"), "min_free_bytes": 0},
            "database": {"url": url},
            "audit": {"path": str(root / "audit.jsonl")},
            "triage": {"enabled": False},
            "http": {"token": "bench"},
        }
    )
    db = Database(url)
    t0 = time.perf_counter()
    fill_index(db, args.studies)
    fill_s = time.perf_counter() - t0
    files = FileStore(root / "storage", fsync=False)
    app = create_app(
        WebContext(
            settings=settings,
            db=db,
            files=files,
            ingestor=Ingestor(db, files, max_dataset_bytes=1 << 30, min_free_bytes=0),
        )
    )
    pages = max(1, -(-args.studies // 50))
    cases = [
        ("worklist page 1", "/ui/?refresh=0"),
        ("worklist middle page", f"/ui/?page={pages // 2}&refresh=0"),
        ("worklist last page", f"/ui/?page={pages}&refresh=0"),
        ("worklist HIGH only, page 2", "/ui/?priority=HIGH&page=2&refresh=0"),
        ("worklist no-assist, one day", f"/ui/?assist=no&day={datetime.now(UTC).date()}&refresh=0"),
    ]
    results = {}
    with TestClient(app) as client:
        assert client.post("/ui/login", data={"token": "bench"}, follow_redirects=False).status_code == 303
        client.get("/ui/")  # warm-up: template compile, first connection
        for label, path in cases:
            results[label] = measure(client, path, args.reps)
        results["peer: GET /worklist (JSON, all rows)"] = measure(
            client.__class__(app, headers={"Authorization": "Bearer bench"}), "/worklist", max(3, args.reps // 5)
        )
    dialect = "PostgreSQL" if url.startswith("postgresql") else "SQLite"
    print(
        f"console worklist, {args.studies} studies in the index ({dialect}), {args.reps} loads each; "
        f"index filled in {fill_s:.1f} s"
    )
    print(f"{'case':<40} {'server med':>10} {'server p95':>10} {'server max':>10} {'round trip':>10} {'KiB':>7}")
    for label, r in results.items():
        server = (
            f"{r['server_median_ms']:>10.1f} {r['server_p95_ms']:>10.1f} {r['server_max_ms']:>10.1f}"
            if "server_median_ms" in r
            else f"{'-':>10} {'-':>10} {'-':>10}"
        )
        print(f"{label:<40} {server} {r['round_trip_median_ms']:>10.1f} {r['bytes'] / 1024:>7.1f}")
    peer = results["peer: GET /worklist (JSON, all rows)"]["round_trip_median_ms"]
    page1 = results["worklist page 1"]["round_trip_median_ms"]
    print(f"ratio, round trip: GET /worklist (all rows) / console page 1 = {peer / page1:.1f}x")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "studies": args.studies,
                    "reps": args.reps,
                    "database": dialect,
                    "python": sys.version.split()[0],
                    "machine": platform.machine(),
                    "cpus": os.cpu_count(),
                    "results": results,
                },
                indent=2,
            )
        )
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
