"""Hostile sizes (issue 11): headers, label values and spacings that would take the machine's memory
are refused with one line naming the file or value, exit 2, before the allocation."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hostile_cli import one_line_exit_2, run

from hiend_data.phantom import make_phantom_dataset


def test_a_nifti2_header_claiming_100000_cubed(tmp_path):
    hdr = nib.Nifti2Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((100000, 100000, 100000))
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    path = tmp_path / "huge.nii"
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + b"\0" * 64)  # header, empty extension flag, a few voxels
    t0 = time.perf_counter()
    one_line_exit_2(
        run("hiend-data", "inspect", path), "huge.nii", "header claims 100000x100000x100000 voxels"
    )
    assert time.perf_counter() - t0 < 30  # (a process start; nothing read beyond the header)


def test_a_gzip_bomb_is_refused_before_it_is_inflated(tmp_path):
    # 78.6 M voxels of zeros: 80 KB on disk, 315 MB as float32; with a 64 MiB limit it must be refused
    # from the header alone (the default limit is 16 GiB; the bomb is scaled down to keep the test fast)
    shape = (512, 512, 300)
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape(shape)
    hdr.set_qform(np.eye(4), code=1)
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
        block = bytes(1 << 22)
        for _ in range(int(np.prod(shape)) // len(block) + 1):
            fh.write(block)
    assert path.stat().st_size < 1_000_000
    line = one_line_exit_2(
        run("hiend-data", "inspect", path, env={"HIEND_MAX_VOLUME_BYTES": str(64 * 2**20)}),
        "bomb.nii.gz", "header claims 512x512x300 voxels", "HIEND_MAX_VOLUME_BYTES",
    )  # fmt: skip
    assert "0.3 GiB" in line


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sizes") / "raw"
    make_phantom_dataset(root, cases=1, seed=5)
    return root


def _with_label(phantom: Path, root: Path, value: float, dtype) -> Path:
    """A copy of the phantom dataset whose label map holds ``value`` in one voxel (stored as ``dtype``)."""
    ds = root / "ds"
    for sub in ("imagesTr", "labelsTr"):
        (ds / sub).mkdir(parents=True)
    img = next((phantom / "imagesTr").iterdir())
    (ds / "imagesTr" / img.name).write_bytes(img.read_bytes())
    lab_path = phantom / "labelsTr" / img.name.replace("_0000", "")
    lab = nib.load(lab_path)
    arr = np.asarray(lab.dataobj).astype(dtype)
    arr[0, 0, 0] = value
    nib.save(nib.Nifti1Image(arr, lab.affine), ds / "labelsTr" / lab_path.name)
    (ds / "dataset.json").write_text((phantom / "dataset.json").read_text())
    return ds


@pytest.mark.parametrize(
    ("value", "dtype", "shown"),
    [(2**31 - 1, np.int32, "2.14748e+09"), (1e20, np.float64, "1e+20"), (70000, np.int32, "70000")],
)
def test_label_values_beyond_65535_are_refused_by_preprocess_and_score(
    phantom, tmp_path, value, dtype, shown
):
    ds = _with_label(phantom, tmp_path, value, dtype)
    label = next((ds / "labelsTr").iterdir())
    one_line_exit_2(
        run("hiend-data", "preprocess", ds, tmp_path / "cache"),
        label.name,
        f"label value {shown} is above 65535",
    )
    # the cache holds completed cases only (a cache is incremental): none here, and no temporary file
    assert not [
        p
        for p in (tmp_path / "cache").rglob("*")
        if p.suffix == ".npy" or (p.name.startswith(".") and p.name != ".lock")
    ]
    # scored as a prediction against the true labels: refused, never "foreground Dice 1.0"
    ref = phantom / "labelsTr"
    one_line_exit_2(
        run("hiend-eval", "score", ds / "labelsTr", ref, "--out", tmp_path / "score"),
        label.name,
        "above 65535",
    )
    assert not (tmp_path / "score").exists()


def test_nan_labels_are_refused(phantom, tmp_path):
    ds = _with_label(phantom, tmp_path, np.nan, np.float32)
    one_line_exit_2(run("hiend-data", "preprocess", ds, tmp_path / "cache"), "phantom_000.nii.gz", "1 NaN")


def test_an_extreme_spacing_is_refused_before_resampling(phantom, tmp_path):
    line = one_line_exit_2(
        run("hiend-data", "preprocess", phantom, tmp_path / "cache", "--spacing", "0.01"), "0.01x0.01x0.01 mm"
    )
    assert "voxels" in line and "HIEND_MAX_VOLUME_BYTES" in line
    assert not (tmp_path / "cache").exists()  # the refused run left nothing (no plan.json, lock, cases/)
    assert json.loads((phantom / "dataset.json").read_text())  # the input is untouched


def test_a_spacing_in_the_wrong_unit_is_refused_and_leaves_nothing(phantom, tmp_path):
    """``--spacing 1500`` (micrometres meant) made 1x1x1-voxel cases and exited 0."""
    line = one_line_exit_2(
        run("hiend-data", "preprocess", phantom, tmp_path / "cache", "--spacing", "1500"), "1500x1500x1500 mm"
    )
    assert "leaves 1x1x1 voxels" in line and "in millimetres" in line
    assert not (tmp_path / "cache").exists()


def test_a_refused_run_keeps_an_existing_cache_as_it_was(phantom, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mine.txt").write_text("kept")
    one_line_exit_2(run("hiend-data", "preprocess", phantom, cache, "--spacing", "1500"), "1500x1500x1500 mm")
    assert (cache / "mine.txt").read_text() == "kept"  # not created by the run: not removed
