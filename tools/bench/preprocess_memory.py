"""Peak memory and time of preprocessing one large CT (512 x 512 x 400 int16) to 1.5 mm.

Builds a synthetic CT-like volume (air, body ellipse with fat/soft tissue, spine, lungs; 0.78 x 0.78 x
1.25 mm, LPS like a DICOM export) as .nii.gz in a temporary folder, then runs
``preprocess_dataset(..., workers=1)``: the case is processed in one child process, whose peak resident
memory is read with ``resource.getrusage(RUSAGE_CHILDREN)`` after it exits. Prints one JSON line.

    .venv/bin/python tools/bench/preprocess_memory.py [--shape 512 512 400] [--keep DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """int16 HU volume [X, Y, Z]: air outside, an elliptic body, lungs, a spine, noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    y = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :]
    body = (x / 0.85) ** 2 + (y / 0.6) ** 2 < 1
    fat = body & ((x / 0.78) ** 2 + (y / 0.53) ** 2 >= 1)
    lungs = (((x - 0.35) / 0.25) ** 2 + (y / 0.3) ** 2 < 1) | (((x + 0.35) / 0.25) ** 2 + (y / 0.3) ** 2 < 1)
    spine = (x / 0.08) ** 2 + ((y - 0.4) / 0.08) ** 2 < 1
    plane = np.full(shape[:2], -1000, np.int16)
    plane[body] = 40
    plane[fat] = -100
    out = np.empty(shape, np.int16)
    for z in range(shape[2]):
        sl = plane.copy()
        if z > shape[2] // 2:
            sl[lungs] = -850
        sl[spine] = 700
        out[:, :, z] = sl
    out += rng.integers(-20, 21, size=shape[:2], dtype=np.int16)[:, :, None]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 400))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.78, 0.78, 1.25))
    parser.add_argument("--keep", type=Path, default=None, help="Work folder to use and keep.")
    args = parser.parse_args()

    import nibabel as nib

    from hiend_data import Plan
    from hiend_data.cache import preprocess_dataset

    work = args.keep or Path(tempfile.mkdtemp(prefix="hiend-premem-"))
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    scan = src / "big_ct.nii.gz"
    if not scan.exists():
        aff = np.diag([-args.spacing[0], -args.spacing[1], args.spacing[2], 1.0])
        vol = synthetic_ct(tuple(args.shape))
        nib.save(nib.Nifti1Image(vol, aff), str(scan))
        del vol
    gc.collect()

    out = work / "cache"
    t0 = time.perf_counter()
    cache = preprocess_dataset(src, out, Plan(), workers=1, progress=False)
    seconds = time.perf_counter() - t0
    child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    case = cache.case(cache.cases[0])
    print(
        json.dumps(
            {
                "bench": "preprocess_memory",
                "shape": list(args.shape),
                "spacing_mm": list(args.spacing),
                "input_dtype": "int16",
                "input_mib": round(int(np.prod(args.shape)) * 2 / 2**20, 1),
                "out_shape": list(case.image.shape),
                "seconds": round(seconds, 2),
                "peak_rss_gib": round(child_kib / 2**20, 3),
                "parent_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
                "machine": f"{platform.machine()} {platform.processor() or ''} {__import__('os').cpu_count()} cpu".strip(),
            }
        )
    )


if __name__ == "__main__":
    main()
