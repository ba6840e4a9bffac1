"""Pre-training crop sampling: the paper's MONAI pipeline vs hiend's cache + CropSampler, side by side.

One process, one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``), the same volumes:

* ``monai``: the paper's pipeline per volume: ``torch.load`` of the whole preprocessed volume saved as a
  ``.pt`` tensor ``[1, X, Y, Z]``, then MONAI's RandCropByPosNegLabeld (96^3, pos 6, neg 2, 8 samples, the
  image as label) + RandFlipd on each axis (p 0.5) + RandRotate90d (p 0.3, max_k 3, axes (0, 1)) +
  RandScaleIntensityd (0.1, p 0.1) + RandShiftIntensityd (0.1, p 0.1).
* ``hiend``: the preprocessed cache (memory-mapped ``.npy``, stored as ``--cache-dtype``: the plan's
  default ``auto`` is uint8 for this window; ``float32`` gives the numbers recorded before compact
  caches) + ``CropSampler`` with ``SamplerConfig.pretrain()`` (the same recipe), each crop a contiguous
  float32 ``[1, 96, 96, 96]``.
* ``memcpy``: the ceiling: 8 copies per volume of a 96^3 region (uniform random position) of the stored
  array into 8 contiguous float32 arrays held together, without drawing centres, augmenting or
  decoding.

Volumes (both through ``preprocess_dataset`` with the paper's plan): ``big``, a 256 x 256 x 240 CT-like
phantom (hiend_data.phantom at 1.5 mm), and ``abdomen``, the real
``../shared/data/ct/abdomen_ct_1.5mm_lps.nii.gz`` (120 x 126 x 164 after preprocessing). The MONAI side
loads the same preprocessed arrays saved as ``.pt``.
Each method runs ``--rounds`` alternating rounds of ``--seconds``; the median rate is reported, per
wall-clock second and per CPU second of the process (``cpu_*``: steadier when others share the machine).
Prints one JSON line: per volume crops/s of each method and ``ratio`` = hiend / monai.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench/sampler_vs_monai.py [--seconds 4] [--rounds 3]
        [--cache-dtype auto|uint8|int16|float16|float32]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT.parent / "shared" / "data" / "ct" / "abdomen_ct_1.5mm_lps.nii.gz"


def build_cache(folder: Path, cache_dtype: str = "auto"):
    """Our cache (``hiend-data preprocess`` with the paper's plan) of the two benchmark volumes.

    ``big``: a 256 x 256 x 240 CT-like phantom at 1.5 mm RAS, with one soft-tissue voxel in two opposite
    corners so that the foreground crop keeps the whole grid; ``abdomen``: the real LPS abdominal CT
    (120 x 126 x 164 after preprocessing).
    """
    from hiend_data import Plan, Volume, save_volume
    from hiend_data.cache import preprocess_dataset
    from hiend_data.discovery import Case
    from hiend_data.phantom import make_phantom

    ph = make_phantom(
        np.random.default_rng(0), shape=(256, 256, 240), spacing=(1.5, 1.5, 1.5), orientation=("R", "A", "S")
    )
    hu = ph.hu.copy()
    hu[0, 0, 0] = hu[-1, -1, -1] = 40
    big = save_volume(folder / "raw" / "big_0000.nii.gz", hu, like=Volume(array=hu, affine=ph.affine))
    cases = [Case("big", [big]), Case("abdomen", [REAL])]
    plan = Plan(cache_dtype=cache_dtype)  # the paper's plan (Plan.paper() == Plan()), stored as asked
    return preprocess_dataset(cases, folder / "cache", plan, workers=0, progress=False)


def monai_pipeline():
    from monai.transforms import (
        Compose,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    t = Compose(
        [
            RandCropByPosNegLabeld(
                keys=["image"], label_key="image", spatial_size=(96, 96, 96), pos=6, neg=2, num_samples=8
            ),
            RandFlipd(keys=["image"], prob=0.5, spatial_axis=0),
            RandFlipd(keys=["image"], prob=0.5, spatial_axis=1),
            RandFlipd(keys=["image"], prob=0.5, spatial_axis=2),
            RandRotate90d(keys=["image"], prob=0.3, max_k=3, spatial_axes=(0, 1)),
            RandScaleIntensityd(keys=["image"], factors=0.1, prob=0.1),
            RandShiftIntensityd(keys=["image"], offsets=0.1, prob=0.1),
        ]
    )
    t.set_random_state(seed=0)
    return t


def rate(step, seconds: float) -> tuple[float, float]:
    """(crops per wall-clock second, crops per CPU second of this process) over about ``seconds``."""
    step()  # warm-up (page cache, lazy imports)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while (dt := time.perf_counter() - t0) < seconds:
        n += step()
    return n / dt, n / (time.process_time() - c0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cache-dtype", default="auto", help="how the cache stores the image (Plan.cache_dtype)")
    args = ap.parse_args()

    import torch

    from hiend_data.sampling import CropSampler, SamplerConfig

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    results: dict[str, dict[str, float | list[int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cache = build_cache(folder, args.cache_dtype)
        sampler = CropSampler(cache, SamplerConfig.pretrain(), seed=0)
        rng = sampler.rng(0)
        for name in ("big", "abdomen"):
            image = cache.case(name).image
            pt = folder / f"{name}.pt"
            torch.save(torch.from_numpy(np.array(image)), pt)
            pipeline = monai_pipeline()

            def monai_step(pt=pt, pipeline=pipeline) -> int:
                crops = pipeline({"image": torch.load(pt, weights_only=True)})
                assert crops[0]["image"].shape == (1, 96, 96, 96)
                return len(crops)

            def hiend_step(name=name) -> int:
                crops = sampler.sample(name, rng)
                assert crops[0][0].flags.c_contiguous and crops[0][0].dtype == np.float32
                return len(crops)

            src = np.load(folder / "cache" / "cases" / f"{name}.npy", mmap_mode="r")
            starts = np.random.default_rng(0)

            def memcpy_step(src=src, starts=starts) -> int:
                # 8 crops kept alive together, as a sampler must return them (a single reused 3.5 MB
                # buffer would stay in the L2 cache and flatter the ceiling)
                shape = np.asarray(src.shape[1:]) - 96
                crops = []
                for _ in range(8):
                    x, y, z = (int(starts.integers(0, s + 1)) for s in shape)
                    out = np.empty((1, 96, 96, 96), np.float32)
                    np.copyto(out, src[:, x : x + 96, y : y + 96, z : z + 96])
                    crops.append(out)
                return len(crops)

            runs: dict[str, list[tuple[float, float]]] = {"monai": [], "hiend": [], "memcpy": []}
            for _ in range(args.rounds):
                runs["monai"].append(rate(monai_step, args.seconds))
                runs["hiend"].append(rate(hiend_step, args.seconds))
                runs["memcpy"].append(rate(memcpy_step, args.seconds))
            wall = {k: statistics.median(r[0] for r in v) for k, v in runs.items()}
            cpu = {k: statistics.median(r[1] for r in v) for k, v in runs.items()}
            results[name] = {
                "shape": list(cache.case(name).shape),
                "monai_crops_per_s": round(wall["monai"], 1),
                "hiend_crops_per_s": round(wall["hiend"], 1),
                "memcpy_crops_per_s": round(wall["memcpy"], 1),
                "ratio": round(wall["hiend"] / wall["monai"], 2),
                "hiend_vs_memcpy": round(wall["hiend"] / wall["memcpy"], 2),
                # per CPU-second of this process: less sensitive to other load on a shared machine
                "cpu_monai_crops_per_s": round(cpu["monai"], 1),
                "cpu_hiend_crops_per_s": round(cpu["hiend"], 1),
                "cpu_memcpy_crops_per_s": round(cpu["memcpy"], 1),
                "cpu_ratio": round(cpu["hiend"] / cpu["monai"], 2),
            }
            print(name, results[name], flush=True)
    print(
        json.dumps(
            {
                "bench": "sampler_vs_monai",
                "threads": 1,
                "seconds": args.seconds,
                "rounds": args.rounds,
                "cache_dtype": cache.case(0).image_dtype,
                "volumes": results,
            }
        )
    )


if __name__ == "__main__":
    main()
