"""Image values are checked where the images enter, not in the models' forward (issue 19, point 6).

A finiteness check inside ``forward`` reads a value of the batch: on a GPU a device-to-host sync every
training step. The forward checks shapes only; a scan holding NaN or inf is refused when it is read
(predict: one line, exit 2, nothing written) and by the cache writer, so no cache it writes holds one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from hiend_data import Plan
from hiend_data.cache import preprocess_dataset
from hiend_data.errors import InputError
from hiend_model.checkpoint import save_checkpoint

BIN = Path(sys.executable).parent


def test_the_forward_checks_shapes_not_values(tiny):
    x = torch.rand(1, 1, 32, 32, 32)
    x[0, 0, 3, 3, 3] = float("nan")
    x[..., 0] = float("inf")
    with torch.no_grad():
        out = tiny.mae()(x)  # no InputError: the forward reads no value of the batch
        logits = tiny.unetr()(x)
    assert not torch.isfinite(out.loss) and not torch.isfinite(logits).all()
    with pytest.raises(InputError, match="img_size"):  # shapes still are checked
        tiny.mae()(torch.rand(1, 1, 32, 32, 48))


def _scan_with_nan(folder: Path) -> Path:
    folder.mkdir(parents=True)
    image = np.random.default_rng(0).uniform(-200, 200, (20, 20, 12)).astype(np.float32)
    image[5, 5, 5] = np.nan
    path = folder / "case_000_0000.nii.gz"
    nib.save(nib.Nifti1Image(image, np.diag([3.0, 3.0, 3.0, 1.0])), path)
    return path


def test_predict_refuses_a_scan_holding_nan(tmp_path, unetr_model):
    """Through the installed console script: one line naming the scan, exit 2, nothing written."""
    ckpt = save_checkpoint(tmp_path / "u.safetensors", unetr_model, plan=Plan(spacing=(3.0,) * 3))
    scan = _scan_with_nan(tmp_path / "in")
    out = tmp_path / "out"
    proc = subprocess.run(
        [str(BIN / "hiend-model"), "predict", str(ckpt), str(scan.parent), "--out", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(scan) in lines[0] and "1 non-finite voxels (1 NaN, 0 infinite)" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_the_cache_writer_refuses_a_scan_holding_nan(tmp_path):
    """So training crops read from a cache it wrote are finite (a cache edited afterwards is
    hiend-train's to catch, on the host, as it reads the crops)."""
    scan = _scan_with_nan(tmp_path / "in")
    with pytest.raises(InputError, match=r"case_000_0000\.nii\.gz: 1 non-finite voxels"):
        preprocess_dataset(
            scan.parent, tmp_path / "cache", Plan(spacing=(3.0,) * 3), workers=0, progress=False
        )
    assert not list((tmp_path / "cache").glob("cases/*.npy"))
