"""Benchmark: `hiend-eval score` (the whole command) vs MONAI 1.6 on a 488 x 404 x 120 pair, 41 labels.

The reference is the real 122 x 101 x 30 TotalSegmentator label map of ../shared/data/ct upsampled 4x per
axis (nearest, so blocky; 0.75 mm voxels). The prediction ("smooth", the default) is the same map
upsampled smoothly (per-label trilinear, then argmax), so every boundary differs by a voxel or two the
way a model's rounder surfaces do, plus one organ shifted by 3 voxels, one eroded by 2 and islands of
three labels far from their organs. `--prediction noisy` instead jitters every boundary voxel at random
(30% take their diagonal neighbour's label): rough surfaces, the hardest case for both tools. Every
label stays present in both maps.

MONAI is timed the way a user scores a label map with it: per label, a one-hot pair (background,
label) as torch tensors, `compute_dice` and `compute_hausdorff_distance(percentile=95, spacing=...)`,
arrays already in memory (decoding not counted for MONAI). hiend-eval is timed as a subprocess
(start-up, decoding, writing summary.json/CSV/PNG included), with its default workers and with
`--workers 1`. The numbers must agree (Dice 1e-6, HD95 1e-3 mm). Prints one JSON line.

    .venv/bin/python tools/bench/score_vs_monai.py [--skip-monai]
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
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SEG = ROOT.parent / "shared" / "data" / "ct" / "body_ct_3mm_ras_30slices_seg.nii.gz"


def _smooth_upsample(small: np.ndarray, factor: int) -> np.ndarray:
    """Per-label trilinear upsampling followed by argmax (a smooth-surfaced version of ``small``)."""
    import torch

    size = tuple(s * factor for s in small.shape)
    best = torch.full(size, -1.0)
    out = torch.zeros(size, dtype=torch.uint8)
    for v in np.unique(small):
        chan = torch.from_numpy((small == v).astype(np.float32))[None, None]
        up = torch.nn.functional.interpolate(chan, size=size, mode="trilinear", align_corners=False)[0, 0]
        better = up > best
        best = torch.where(better, up, best)
        out[better] = int(v)
    return out.numpy()


def make_pair(
    folder: Path, prediction: str = "smooth"
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Write ref/case.nii.gz and pred/case.nii.gz (uint8, 488x404x120, 0.75 mm); return arrays + spacing."""
    import nibabel as nib
    from scipy import ndimage

    img = nib.load(str(SEG))
    small = np.asanyarray(img.dataobj).astype(np.uint8)
    ref = np.repeat(np.repeat(np.repeat(small, 4, 0), 4, 1), 4, 2)
    affine = img.affine.copy()
    affine[:3, :3] /= 4.0
    if prediction == "smooth":
        pred = _smooth_upsample(small, 4)
    else:
        jitter = np.random.default_rng(0).random(ref.shape) < 0.3
        pred = np.where(jitter, np.roll(ref, (1, 1, 1), axis=(0, 1, 2)), ref)
    pred[pred == 1] = 0  # spleen shifted by 3 voxels along x
    pred[np.roll(ref == 1, 3, axis=0) & (pred == 0)] = 1
    liver = pred == 5  # liver eroded by 2 voxels
    pred[liver & ~ndimage.binary_erosion(liver, iterations=2)] = 0
    for value, corner in ((7, (20, 20, 10)), (2, (400, 300, 100)), (30, (40, 350, 5))):
        x, y, z = corner
        pred[x : x + 6, y : y + 5, z : z + 4] = value
    lost = set(np.unique(ref).tolist()) - set(np.unique(pred).tolist())
    for value in lost:  # a structure thinner than a voxel can vanish when smoothed: keep it present
        pred[(ref == value) & ndimage.binary_erosion(ref == value)] = value
    assert set(np.unique(pred)) == set(np.unique(ref)), "every label must stay present"
    for name, arr in (("ref", ref), ("pred", pred)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        out = nib.Nifti1Image(arr, affine)
        out.set_data_dtype(np.uint8)
        nib.save(out, str(folder / name / "case.nii.gz"))
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(0)))
    return pred, ref, spacing  # type: ignore[return-value]


def run_monai(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...]) -> tuple[float, float, dict]:
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance

    labels = [int(v) for v in np.unique(ref) if v > 0]
    out = {}
    c0 = time.process_time()
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for v in labels:
            p = torch.from_numpy(pred == v)
            r = torch.from_numpy(ref == v)
            yp = torch.stack([~p, p])[None]
            yr = torch.stack([~r, r])[None]
            d = compute_dice(yp, yr, include_background=False)
            h = compute_hausdorff_distance(yp, yr, include_background=False, percentile=95, spacing=spacing)
            out[str(v)] = (float(d[0, 0]), float(h[0, 0]))
    return time.perf_counter() - t0, time.process_time() - c0, out


def run_hiend(folder: Path, workers: int | None) -> tuple[float, float, int, dict]:
    out_dir = folder / f"out-{workers}"
    cmd = [
        str(Path(sys.executable).with_name("hiend-eval")),
        "score",
        str(folder / "pred"),
        str(folder / "ref"),
        "--out",
        str(out_dir),
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0  # sum of the RSS of the command and its helpers (plot process, workers), sampled every 5 ms
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peak = max(peak, sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)]))
        except psutil.Error:
            pass
        time.sleep(0.005)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"hiend-eval failed ({proc.returncode}): {proc.stderr.read().strip()}")
    summary = json.loads((out_dir / "summary.json").read_text())
    return wall, cpu, peak, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-monai", action="store_true", help="time hiend-eval only")
    ap.add_argument("--prediction", choices=["smooth", "noisy"], default="smooth")
    args = ap.parse_args()
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pred, ref, spacing = make_pair(folder, args.prediction)
        t_default, cpu_default, peak_default, summary = run_hiend(folder, None)
        t_one, cpu_one, peak_one, _ = run_hiend(folder, 1)
        result = {
            "benchmark": "score_vs_monai",
            "prediction": args.prediction,
            "shape": list(ref.shape),
            "labels": len(summary["mean"]) - 1,
            "machine": f"{platform.machine()} {os.cpu_count()} cpu(s)",
            "python": platform.python_version(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "hiend_eval_command_s": round(t_default, 3),
            "hiend_eval_command_cpu_s": round(cpu_default, 3),
            "hiend_eval_command_workers1_s": round(t_one, 3),
            "hiend_eval_command_workers1_cpu_s": round(cpu_one, 3),
            "hiend_eval_peak_rss_mib": round(peak_default / 2**20, 1),
            "hiend_eval_workers1_peak_rss_mib": round(peak_one / 2**20, 1),
        }
        if not args.skip_monai:
            rss_before = psutil.Process().memory_info().rss
            t_monai, cpu_monai, monai = run_monai(pred, ref, spacing)
            case = summary["per_case"][0]["labels"]
            dice_err = max(abs(case[k]["dice"] - d) for k, (d, _) in monai.items())
            hd_err = max(abs(case[k]["hd95"] - h) for k, (_, h) in monai.items())
            result.update(
                {
                    "monai_metrics_s": round(t_monai, 3),
                    "monai_metrics_cpu_s": round(cpu_monai, 3),
                    "monai_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                    "bench_rss_before_monai_mib": round(rss_before / 2**20, 1),
                    "speedup_wall": round(t_monai / t_default, 1),
                    "speedup_cpu": round(cpu_monai / cpu_default, 1),
                    "speedup_wall_workers1": round(t_monai / t_one, 1),
                    "speedup_cpu_workers1": round(cpu_monai / cpu_one, 1),
                    "max_abs_diff_dice": dice_err,
                    "max_abs_diff_hd95_mm": hd_err,
                    "identical": bool(dice_err <= 1e-6 and hd_err <= 1e-3),
                }
            )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
