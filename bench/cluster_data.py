#!/usr/bin/env python3
"""Synthetic chest DX studies for the scale-out benchmarks, split into "lanes" (one folder per
concurrent sender), round-robin by instance, so every study arrives over several associations
and, behind a load balancer, at several receivers.

    .venv/bin/python bench/cluster_data.py OUT --studies 20 --images 10 --lanes 4 [--size 256]

Writes OUT/lane0 .. OUT/lane{N-1} and OUT/manifest.json ({"studies": [...], "instances": n}).
The images are what the cxr profile accepts (adult, PA, CHEST, DX For Presentation), so each
study is triaged (by the tiny random test model in the benchmarks: its scores mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--images", type=int, default=10, help="instances per study")
    ap.add_argument("--lanes", type=int, default=4, help="folders = concurrent senders")
    ap.add_argument("--size", type=int, default=256, help="rows = columns of each image")
    a = ap.parse_args()

    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

    from node.demo import synthetic_image

    lanes = [a.out / f"lane{i}" for i in range(a.lanes)]
    for lane in lanes:
        lane.mkdir(parents=True, exist_ok=True)
    studies, n = [], 0
    for s in range(a.studies):
        study_uid, series_uid = generate_uid(), generate_uid()
        studies.append(study_uid)
        for i in range(a.images):
            synthetic_image(
                lanes[n % a.lanes] / f"s{s:04d}_i{i:03d}.dcm",
                modality="DX",
                sop_class=DigitalXRayImageStorageForPresentation,
                view="PA",
                body_part="CHEST",
                age=40 + s % 40,
                study_uid=study_uid,
                patient_id=f"SCALE{s:05d}",
                rows=a.size,
                cols=a.size,
                number=i + 1,
                series_uid=series_uid,
            )
            n += 1
    (a.out / "manifest.json").write_text(json.dumps({"studies": studies, "instances": n}))
    print(f"{a.studies} studies, {n} instances in {a.lanes} lanes under {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
