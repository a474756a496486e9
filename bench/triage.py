"""Triage throughput: MedSigLIP-448 vision tower, preprocessing, and the naive recipe, in one run.

    python bench/triage.py --device cpu --quick          # a couple of minutes on a small CPU
    python bench/triage.py --device cuda --json out.json  # H100: bf16 + SDPA, batch sweep

What it measures (random weights with the real shapes: ``medsiglip_448_config()``, vision tower
only, 428.6 M parameters, ~1 TFLOP per image):

1. **vision tower** through the product's own path, ``LoadedModel.embed_images``: uint8
   (N, 448, 448, 3) on the host -> device -> normalise there -> dtype -> forward -> L2 ->
   float32 on the host; images/s and ms/image by batch size and dtype (fp32; bf16 on CUDA), SDPA
   attention. Larger batches are tried until memory runs out (an OOM halving inside
   embed_images ends the sweep for that dtype).
2. **preprocessing** per image with ``preprocess.to_model_input`` (decode, modality LUT,
   window, invert, pad, resize to 448), for a synthetic 3000x2500 16-bit DX and a 512x512 CT,
   each read from DICOM bytes; the decode part alone is shown too. One image at a time.
3. **baseline**, the seed tutorial's recipe in the same run: read the DICOM, float image in
   [0, 1] (x / max), 3 channels, the HF image processor's default PIL bicubic resize to 448,
   then one image per forward in fp32. Shown end to end and model only.

Ratios are against the baseline's images/s. "pipeline e2e" is a serial estimate
(1 / (preprocess + model time per image)); the node overlaps CPU preprocessing with the GPU, so
the real figure lies between it and the model-only number.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.config import ModelSection
from node.triage.hf_quiet import quiet_transformers
from node.triage.model import LoadedModel, ModelIdentity
from node.triage.tiny_model import medsiglip_448_config

SIZE = 448


# --------------------------------------------------------------------------------------------
# model


class _VisionOnly(torch.nn.Module):
    """SiglipVisionModel dressed as the SiglipModel surface LoadedModel needs (images only)."""

    def __init__(self, vision_model):
        super().__init__()
        self.vision_model = vision_model
        self.config = vision_model.config

    def get_image_features(self, pixel_values, **kwargs):
        return self.vision_model(pixel_values=pixel_values, **kwargs)


def build_vision_tower(device: torch.device, attn: str = "sdpa"):
    """MedSigLIP-448's vision tower with random weights, built straight on ``device``.

    Built on the meta device and filled with N(0, 0.02) (LayerNorm 1/0): the HF initialisers take
    ~16 s on a 2-core CPU and timing does not depend on the values.
    """
    from transformers import SiglipVisionModel

    cfg = medsiglip_448_config().vision_config
    cfg._attn_implementation = attn
    with quiet_transformers(errors_only=True), torch.device("meta"):
        model = SiglipVisionModel(cfg)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or "layer_norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
        for name, b in model.named_buffers():
            if name.endswith("position_ids"):
                b.copy_(torch.arange(b.shape[-1], device=device).expand_as(b))
    return model.eval().requires_grad_(False)


def loaded(vision, device: torch.device, dtype: str, batch_size: int) -> LoadedModel:
    identity = ModelIdentity(
        model_id="bench/medsiglip-448-shapes-random",
        revision="random",
        weights_sha256="0" * 64,
        image_size=SIZE,
        device=str(device),
        dtype=dtype,
        is_test_model=True,
    )
    settings = ModelSection(device=str(device), batch_size=batch_size, dtype=dtype)
    return LoadedModel(_VisionOnly(vision), None, identity, settings, logit_scale=1.0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_tower(vision, device, dtype, batch_sizes, *, iters, min_seconds, warmup) -> list[dict]:
    rows = []
    vision.to(getattr(torch, dtype))
    rng = np.random.default_rng(0)
    for bs in batch_sizes:
        lm = loaded(vision, device, dtype, bs)
        images = rng.integers(0, 256, size=(bs, SIZE, SIZE, 3), dtype=np.uint8)
        try:
            for _ in range(warmup):
                lm.embed_images(images)
            _sync(device)
            times = []
            t_end = time.perf_counter() + min_seconds
            while len(times) < iters or (time.perf_counter() < t_end and len(times) < 100):
                t0 = time.perf_counter()
                lm.embed_images(images)  # returns host tensors: synchronises
                _sync(device)
                times.append(time.perf_counter() - t0)
        except torch.cuda.OutOfMemoryError:
            rows.append({"dtype": dtype, "batch": bs, "oom": True})
            break
        t = statistics.median(times)
        row = {
            "dtype": dtype,
            "batch": bs,
            "iters": len(times),
            "images_per_s": bs / t,
            "ms_per_image": 1000 * t / bs,
            "oom_halved": lm.oom_retries > 0,
        }
        if device.type == "cuda":
            row["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(row)
        print(
            f"  tower {dtype:8s} batch {bs:4d}: {row['images_per_s']:9.2f} img/s  "
            f"{row['ms_per_image']:9.1f} ms/img  ({len(times)} iters)",
            flush=True,
        )
        if lm.oom_retries:
            break
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------------------------
# DICOM fixtures


def _dicom_bytes(kind: str) -> bytes:
    from pydicom import dcmwrite
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(1)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 16
    if kind == "dx":
        rows, cols = 3000, 2500
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
        ds.Modality = "DX"
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 14, 13, 0
        yy, xx = np.mgrid[0:rows, 0:cols]
        base = 6000 + 3000 * np.sin(yy / 300.0) * np.cos(xx / 250.0)
        arr = (base + rng.normal(0, 200, (rows, cols))).clip(0, 16383).astype(np.uint16)
        ds.WindowCenter, ds.WindowWidth = 7000, 9000
    else:
        rows, cols = 512, 512
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.Modality = "CT"
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        arr = rng.integers(0, 2500, (rows, cols)).astype(np.int16)
        ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.Rows, ds.Columns = rows, cols
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _time(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_preprocess(reps: int) -> list[dict]:
    from pydicom import dcmread

    from node.triage.preprocess import decode_pixels, to_model_input

    rows = []
    for kind, label in (("dx", "DX 3000x2500 16-bit (14 stored), MONOCHROME1"), ("ct", "CT 512x512 int16")):
        data = _dicom_bytes(kind)
        decode = _time(lambda: decode_pixels(dcmread(io.BytesIO(data))), reps)
        full = _time(lambda: to_model_input(dcmread(io.BytesIO(data)), size=SIZE), reps)
        rows.append({"image": label, "bytes": len(data), "decode_ms": 1000 * decode, "preprocess_ms": 1000 * full})
        print(f"  preprocess {label}: read+decode {1000 * decode:7.1f} ms, full {1000 * full:7.1f} ms", flush=True)
    return rows


# --------------------------------------------------------------------------------------------
# baseline: the tutorial recipe


def bench_baseline(vision, device: torch.device, reps: int) -> dict:
    from pydicom import dcmread
    from pydicom.pixels import apply_modality_lut

    with quiet_transformers(errors_only=True):
        try:
            from transformers import SiglipImageProcessorPil as Proc
        except ImportError:  # transformers 4.x
            from transformers import SiglipImageProcessor as Proc
    # google/medsiglip-448's preprocessor_config.json (reference/medsiglip.md section 2.1)
    processor = Proc(
        do_resize=True,
        size={"height": SIZE, "width": SIZE},
        resample=3,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    vision.to(torch.float32)
    data = _dicom_bytes("dx")

    def pixels():
        ds = dcmread(io.BytesIO(data))
        img = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
        img = img / max(float(img.max()), 1.0)  # float image in [0, 1]
        if ds.PhotometricInterpretation == "MONOCHROME1":
            img = 1.0 - img
        img = np.repeat(img[:, :, None], 3, axis=2)
        return processor(images=img, do_rescale=False, return_tensors="pt")["pixel_values"]

    px = pixels()

    def forward(p):
        with torch.no_grad():
            out = vision(pixel_values=p.to(device))
            emb = out.pooler_output
            emb = emb / emb.norm(dim=-1, keepdim=True)
            return emb.cpu()

    prep = _time(pixels, reps)
    model_only = _time(lambda: forward(px), reps)
    e2e = _time(lambda: forward(pixels()), max(1, reps // 2)) if reps > 1 else prep + model_only
    row = {
        "recipe": "fp32, batch 1, PIL bicubic resize of a float image, default processor",
        "preprocess_ms": 1000 * prep,
        "model_ms": 1000 * model_only,
        "e2e_ms": 1000 * e2e,
        "model_images_per_s": 1 / model_only,
        "e2e_images_per_s": 1 / e2e,
    }
    print(
        f"  baseline: processor {row['preprocess_ms']:.0f} ms, model {row['model_ms']:.0f} ms, "
        f"e2e {row['e2e_ms']:.0f} ms/img",
        flush=True,
    )
    return row


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--quick", action="store_true", help="few iterations (default on CPU)")
    ap.add_argument("--batch-sizes", default=None, help="comma-separated, e.g. 1,8,32,64")
    ap.add_argument("--dtypes", default=None, help="comma-separated: float32,bfloat16 (default: fp32; +bf16 on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-preprocess", action="store_true")
    args = ap.parse_args(argv)

    dev_name = args.device
    if dev_name == "auto":
        dev_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(dev_name)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    quick = args.quick or not cuda
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.batch_sizes:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    elif cuda:
        batch_sizes = [1, 8, 32, 64, 128] if quick else [1, 8, 32, 64, 128, 256, 512]
    else:
        batch_sizes = [1, 2] if quick else [1, 4, 8]
    dtypes = args.dtypes.split(",") if args.dtypes else (["float32", "bfloat16"] if cuda else ["float32"])
    if cuda:
        iters, min_seconds, warmup = (3, 1.0, 2) if quick else (10, 3.0, 3)
        reps = 3 if quick else 10
    else:
        iters, min_seconds, warmup = (1, 0.0, 1) if quick else (2, 0.0, 1)
        reps = 1 if quick else 3

    env = {
        "device": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "cpu_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "quick": quick,
    }
    print(
        f"# triage bench on {env['device']} (torch {env['torch']}, transformers {env['transformers']}, "
        f"{env['cpu_threads']} threads)",
        flush=True,
    )

    t0 = time.perf_counter()
    vision = build_vision_tower(device)
    print(
        f"  built random MedSigLIP-448 vision tower in {time.perf_counter() - t0:.1f} s "
        f"({sum(p.numel() for p in vision.parameters()) / 1e6:.1f} M params)",
        flush=True,
    )

    tower = []
    for dt in dtypes:
        tower += bench_tower(vision, device, dt, batch_sizes, iters=iters, min_seconds=min_seconds, warmup=warmup)

    prep = [] if args.no_preprocess else _safe(bench_preprocess, reps)
    base = None if args.no_baseline else bench_baseline(vision, device, reps)

    results = {"env": env, "vision_tower": tower, "preprocess": prep, "baseline": base}
    print()
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _safe(fn, *a):
    try:
        return fn(*a)
    except ImportError as exc:  # preprocess not there yet
        print(f"  preprocess skipped: {exc}", flush=True)
        return []


def render(r: dict) -> str:
    env, base = r["env"], r["baseline"]
    base_ips = base["model_images_per_s"] if base else None
    base_e2e = base["e2e_images_per_s"] if base else None
    dx_ms = next((p["preprocess_ms"] for p in r["preprocess"] if p["image"].startswith("DX")), None)
    lines = [
        f"MedSigLIP-448 vision tower (random weights, real shapes) on {env['device']}, "
        f"torch {env['torch']}, {env['cpu_threads']} CPU threads",
        "",
        "| dtype | batch | images/s | ms/image | x baseline (model) | pipeline e2e img/s (DX, serial) | x baseline (e2e) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r["vision_tower"]:
        if row.get("oom"):
            lines.append(f"| {row['dtype']} | {row['batch']} | OOM | | | | |")
            continue
        ips = row["images_per_s"]
        ratio = f"{ips / base_ips:.1f}x" if base_ips else ""
        if dx_ms is not None:
            e2e = 1.0 / (dx_ms / 1000 + 1.0 / ips)
            e2e_s = f"{e2e:.2f}"
            e2e_ratio = f"{e2e / base_e2e:.1f}x" if base_e2e else ""
        else:
            e2e_s = e2e_ratio = ""
        note = " (OOM-halved)" if row.get("oom_halved") else ""
        lines.append(
            f"| {row['dtype']} | {row['batch']}{note} | {ips:.2f} | {row['ms_per_image']:.1f} | {ratio} | {e2e_s} | {e2e_ratio} |"
        )
    if r["preprocess"]:
        lines += [
            "",
            "| preprocessing (CPU, one image at a time) | DICOM bytes | read+decode ms | read+decode+window+pad+resize ms |",
            "|---|---:|---:|---:|",
        ]
        for p in r["preprocess"]:
            lines.append(
                f"| {p['image']} | {p['bytes'] / 1e6:.1f} MB | {p['decode_ms']:.1f} | {p['preprocess_ms']:.1f} |"
            )
    if base:
        lines += [
            "",
            "| baseline (tutorial recipe, DX) | processor ms | model ms | e2e ms/image | model img/s | e2e img/s |",
            "|---|---:|---:|---:|---:|---:|",
            f"| {base['recipe']} | {base['preprocess_ms']:.0f} | {base['model_ms']:.0f} | {base['e2e_ms']:.0f} | "
            f"{base['model_images_per_s']:.3f} | {base['e2e_images_per_s']:.3f} |",
        ]
    flops = 0.97e12
    best = max((row["images_per_s"] for row in r["vision_tower"] if not row.get("oom")), default=None)
    if best:
        lines += [
            "",
            f"best vision-tower throughput {best:.2f} img/s = {best * flops / 1e12:.2f} TFLOP/s "
            f"(at ~0.97 TFLOP per image)",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
