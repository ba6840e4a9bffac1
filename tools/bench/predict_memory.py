"""One-off measurement: segment a 512 x 512 x 300 CT on the CPU with the vit-l12 UNETR.

Not a CI test (it takes many minutes on 2 cores). Steps, each in its own subprocess so the measured
one holds nothing but the segmentation:

1. prepare: a synthetic int16 CT (0.8 x 0.8 x 1.5 mm voxels, a body-shaped ellipse cylinder with
   fat, soft tissue, lungs, spine and noise; air outside) written as NIfTI, and a UNETR with the
   vit-l12 encoder (random weights) saved as a hiend checkpoint with the paper's plan;
2. predict: ``predict_files`` exactly as ``hiend-model predict`` runs it; its wall time and peak
   resident memory (``ru_maxrss``) are reported.

    nice -n 10 .venv/bin/python tools/bench/predict_memory.py [--feature-size 16] [--classes 14]

Prints one JSON line; the issue's limit is a peak under 24 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prepare(
    work: Path,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    feature_size: int,
    classes: int,
) -> None:
    import nibabel as nib
    import numpy as np
    import torch

    from hiend_data import Plan
    from hiend_model.checkpoint import save_checkpoint
    from hiend_model.config import PRESETS, UNETRConfig
    from hiend_model.unetr import UNETR

    rng = np.random.default_rng(0)
    X, Y, Z = shape
    x = (np.arange(X) - X / 2) * spacing[0]
    y = (np.arange(Y) - Y / 2) * spacing[1]
    r2 = (x[:, None] / 170.0) ** 2 + (y[None, :] / 120.0) ** 2  # body: 340 x 240 mm ellipse
    inner = (x[:, None] / 155.0) ** 2 + (y[None, :] / 105.0) ** 2
    lungs = (((np.abs(x[:, None]) - 70) / 50.0) ** 2 + ((y[None, :] + 10) / 60.0) ** 2) < 1
    spine = (x[:, None] / 18.0) ** 2 + ((y[None, :] - 80) / 18.0) ** 2 < 1
    slab = np.full((X, Y), -1000, np.int16)
    slab[r2 < 1] = -100  # fat
    slab[inner < 1] = 40  # soft tissue
    slab[spine] = 700  # bone
    ct = np.empty(shape, np.int16)
    for k in range(Z):
        s = slab.copy()
        if k > Z // 2:
            s[lungs & (inner < 1)] = -850
        ct[:, :, k] = s + rng.normal(0, 15, (X, Y)).astype(np.int16)
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-like axes, as scanners write
    nib.save(nib.Nifti1Image(ct, affine), work / "ct.nii")
    del ct

    encoder = PRESETS["vit-l12"].encoder_fields()
    model = UNETR(UNETRConfig(**encoder, num_classes=classes, feature_size=feature_size))
    n_params = sum(p.numel() for p in model.parameters())
    save_checkpoint(work / "unetr_vit_l12.safetensors", model, plan=Plan.paper())
    (work / "params.json").write_text(
        json.dumps({"parameters": n_params, "torch_threads": torch.get_num_threads()})
    )


def predict(work: Path, sw_batch: int) -> None:
    import nibabel as nib

    from hiend_model.predict import predict_files

    t0 = time.perf_counter()
    [out] = predict_files(
        work / "unetr_vit_l12.safetensors",
        [work / "ct.nii"],
        work / "out",
        progress=False,
        sw_batch_size=sw_batch,
    )
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kib = usage.ru_maxrss  # KiB on Linux
    img = nib.load(out)
    # After the measurement: the preprocessed size and window count, for the record.
    from hiend_data import Plan, load_volume, preprocess_case
    from hiend_model.inference import window_starts

    shape = preprocess_case(load_volume(work / "ct.nii"), Plan.paper()).image.shape[1:]
    windows = 1
    for s in shape:
        windows *= len(window_starts(max(s, 96), 96, 0.5))
    print(
        json.dumps(
            {
                "wall_s": round(wall, 1),
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                "peak_rss_gib": round(peak_kib / 2**20, 3),
                "out_shape": list(img.shape),
                "preprocessed_shape": [int(s) for s in shape],
                "windows": windows,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 300])
    parser.add_argument("--spacing", type=float, nargs=3, default=[0.8, 0.8, 1.5])
    parser.add_argument("--feature-size", type=int, default=16)
    parser.add_argument("--classes", type=int, default=14)
    parser.add_argument("--sw-batch", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--step", choices=["all", "prepare", "predict"], default="all")
    args = parser.parse_args()

    if args.step == "prepare":
        prepare(args.work, tuple(args.shape), tuple(args.spacing), args.feature_size, args.classes)
        return
    if args.step == "predict":
        predict(args.work, args.sw_batch)
        return

    with tempfile.TemporaryDirectory(prefix="hiend_predict_memory_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        base = [
            sys.executable,
            __file__,
            "--work",
            str(work),
            "--shape",
            *map(str, args.shape),
            "--spacing",
            *map(str, args.spacing),
            "--feature-size",
            str(args.feature_size),
            "--classes",
            str(args.classes),
            "--sw-batch",
            str(args.sw_batch),
        ]
        t0 = time.perf_counter()
        subprocess.run([*base, "--step", "prepare"], check=True)
        prep_s = time.perf_counter() - t0
        res = subprocess.run([*base, "--step", "predict"], check=True, capture_output=True, text=True)
        result = json.loads(res.stdout.strip().splitlines()[-1])
        meta = json.loads((work / "params.json").read_text())
        result.update(
            {
                "bench": "predict_memory",
                "input_shape": args.shape,
                "spacing_mm": args.spacing,
                "model": "vit-l12 UNETR (random weights)",
                "feature_size": args.feature_size,
                "classes": args.classes,
                "parameters": meta["parameters"],
                "sw_batch": args.sw_batch,
                "torch_threads": meta["torch_threads"],
                "prepare_s": round(prep_s, 1),
                "limit_gib": 24,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
            }
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
