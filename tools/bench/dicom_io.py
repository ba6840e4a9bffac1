"""Benchmark: DICOM in and DICOM-SEG out (issue 10) beside the NIfTI path and dcm2niix, on one series.

The series is the real 122 x 101 x 30 CT of ../shared/data/ct upsampled 4x per axis (488 x 404 x 120,
0.75 mm; linear for HU, nearest for its 41-label TotalSegmentator map), written as 120 single-frame CT
files (pydicom, hiend-data's test writer: shuffled names, HU with a RescaleIntercept). Timed, each the
median of ``--repeats`` runs, side by side in one process:

* read the series: ``hiend_data.load_volume(folder)`` vs dcm2niix (subprocess, to .nii, then nibabel
  reading its voxels), vs ``load_volume`` of the same scan as a .nii.gz (the NIfTI path);
* write the 41-label map (values up to 117, so 117 segments described): ``hiend_data.dicom_seg.write_seg``
  as a BINARY SEG and as a LABELMAP SEG (JPEG-LS) vs ``save_volume`` (.nii.gz), with file sizes;
* read each back: ``decode_on_source`` (through the source frames) and ``load_volume(seg.dcm)`` (alone)
  vs ``load_volume(labels.nii.gz)``.

Checks: hiend's volume equals dcm2niix's after reorientation, and both SEG decodes equal the map.
Prints one JSON line and writes tools/bench/results/dicom_io.json.

    .venv/bin/python tools/bench/dicom_io.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "ct"
SCAN, LABELS = "body_ct_3mm_ras_30slices.nii.gz", "body_ct_3mm_ras_30slices_seg.nii.gz"
OUT = ROOT / "tools" / "bench" / "results" / "dicom_io.json"


def _writer():
    spec = importlib.util.spec_from_file_location(
        "hiend_dicom_test", ROOT / "packages/hiend-data/tests/test_dicom.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_series


def _median(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from hiend_data import load_volume, save_volume
    from hiend_data.dicom import series_headers
    from hiend_data.dicom_seg import decode_on_source, write_seg
    from hiend_data.geometry import place_on_grid

    img, seg = nib.load(str(DATA / SCAN)), nib.load(str(DATA / LABELS))
    hu = ndimage.zoom(np.asarray(img.dataobj, dtype=np.float32), 4, order=1).round().astype(np.int16)
    labels = ndimage.zoom(np.asarray(seg.dataobj).astype(np.uint8), 4, order=0)
    affine = np.asarray(img.affine, dtype=np.float64) @ np.diag([0.25, 0.25, 0.25, 1.0])
    n_labels = int(len(np.unique(labels)) - 1)
    tmp = Path(tempfile.mkdtemp(prefix="hiend-dicom-bench-"))
    try:
        series = _writer()(hu, affine, tmp / "series", seed=1)
        vol = load_volume(series)
        nifti = save_volume(tmp / "scan.nii.gz", hu, like=vol)

        def dcm2niix() -> np.ndarray:
            out = tmp / "d2n"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            subprocess.run(["dcm2niix", "-z", "n", "-f", "x", "-o", str(out), str(series)], check=True,
                           capture_output=True)  # fmt: skip
            return np.asarray(nib.load(str(out / "x.nii")).dataobj)

        t_hiend, got = _median(lambda: load_volume(series).array, args.repeats)
        t_d2n, ref = _median(dcm2niix, args.repeats)
        t_nii, _ = _median(lambda: load_volume(nifti).array, args.repeats)
        ours = nib.as_closest_canonical(nib.Nifti1Image(got, vol.affine))
        theirs = nib.as_closest_canonical(nib.load(str(tmp / "d2n" / "x.nii")))
        assert np.array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj)), "hiend != dcm2niix"
        assert np.array_equal(got, hu)

        # the label map on the series' grid (the series keeps hu's array order)
        headers = series_headers(series)
        names = {v: f"label {v}" for v in range(1, int(labels.max()) + 1)}
        kinds = {}
        for kind in ("binary", "labelmap"):
            path = tmp / f"{kind}.dcm"
            t_w, _ = _median(lambda kind=kind, path=path: write_seg(labels, vol.affine, headers, path, names,
                                                                      seg_type=kind), args.repeats)  # fmt: skip
            t_dec, dec = _median(
                lambda path=path: decode_on_source(path, headers, vol.affine, vol.shape), args.repeats
            )
            t_alone, alone = _median(lambda path=path: load_volume(path), args.repeats)
            assert np.array_equal(dec, labels), f"{kind} SEG decode != label map"
            assert np.array_equal(place_on_grid(alone.array, alone.affine, vol.shape, vol.affine), labels)
            kinds[kind] = {
                "write_s": round(t_w, 3),
                "read_on_source_s": round(t_dec, 3),
                "read_alone_s": round(t_alone, 3),
                "bytes": path.stat().st_size,
            }
        t_nii_w, _ = _median(lambda: save_volume(tmp / "labels.nii.gz", labels, like=vol), args.repeats)
        t_nii_r, _ = _median(lambda: load_volume(tmp / "labels.nii.gz").array, args.repeats)
        kinds["nifti_gz"] = {
            "write_s": round(t_nii_w, 3),
            "read_s": round(t_nii_r, 3),
            "bytes": (tmp / "labels.nii.gz").stat().st_size,
        }
        result = {
            "bench": "dicom_io",
            "shape": list(hu.shape),
            "slices_files": int(hu.shape[2]),
            "labels": n_labels,
            "repeats": args.repeats,
            "read_series_s": {
                "hiend": round(t_hiend, 3),
                "dcm2niix": round(t_d2n, 3),
                "nifti_gz": round(t_nii, 3),
            },
            "read_ratio_dcm2niix_over_hiend": round(t_d2n / t_hiend, 2),
            "labels_out": kinds,
            "series_bytes": sum(f.stat().st_size for f in series.iterdir()),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "command": "python tools/bench/dicom_io.py --repeats " + str(args.repeats),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
