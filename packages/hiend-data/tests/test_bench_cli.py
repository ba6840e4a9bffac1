"""``hiend-data phantom`` and ``hiend-data bench``: output contract, crop contract, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hiend_data.bench import bench_sampler
from hiend_data.cli import app
from hiend_data.sampling import SamplerConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from hiend_data.cache import preprocess_dataset

    root = tmp_path_factory.mktemp("bench")
    res = runner.invoke(app, ["phantom", str(root / "raw"), "--cases", "2", "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert (root / "raw" / "dataset.json").exists()
    preprocess_dataset(root / "raw", root / "cache", workers=0, progress=False)
    return root / "cache"


@pytest.mark.parametrize("config,n", [("pretrain", 8), ("finetune", 4)])
def test_bench_json_last_line(cache_dir: Path, config: str, n: int) -> None:
    res = runner.invoke(app, ["bench", str(cache_dir), "--seconds", "0.3", "--json", "--config", config])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert out["crops_per_s"] > 0 and out["crops"] == n * out["volumes"] and out["volumes"] >= 2
    assert out["crop_shape"] == [1, 96, 96, 96] and out["labelled"] is True and out["config"] == config
    assert out["crops_per_s"] == pytest.approx(out["crops"] / out["seconds"], rel=0.01)


def test_bench_crop_contract(cache_dir: Path) -> None:
    from hiend_data.cache import Cache
    from hiend_data.sampling import CropSampler

    cache = Cache.open(cache_dir)
    s = CropSampler(cache, SamplerConfig.pretrain())
    for image, label in s.sample(0, s.rng(0)):
        assert image.shape == (1, 96, 96, 96) and image.dtype == np.float32 and image.flags.c_contiguous
        assert label.shape == (96, 96, 96) and label.flags.c_contiguous
    assert bench_sampler(cache, seconds=0.1)["crops_per_s"] > 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["bench", "{missing}"], "not a hiend-data cache"),
        (["bench", "{cache}", "--config", "other"], "--config"),
        (["bench", "{cache}", "--seconds", "0"], "--seconds"),
        (["phantom", "{cache}"], "not empty"),
        (["phantom", "{missing}", "--cases", "0"], "cases"),
        (["phantom", "{missing}", "--phase", "venous"], "phase must be one of native, arterial, portal"),
        (["phantom", "{missing}", "--resolution", "fine"], "resolution must be one of coarse, clinical"),
        (["phantom", "{missing}", "--coverage", "head"], "coverage must be one of abdomen"),
    ],
)
def test_bad_input_exits_2(cache_dir: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    args = [a.format(cache=cache_dir, missing=tmp_path / "nope") for a in args]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert needle in res.output and "Traceback" not in res.output


def test_bench_on_unlabelled_cache_for_finetune_is_an_input_error(tmp_path: Path) -> None:
    from hiend_data.cache import preprocess_dataset
    from hiend_data.phantom import make_phantom_dataset

    src = make_phantom_dataset(tmp_path / "raw", cases=1, seed=1)
    (src / "labelsTr" / "phantom_000.nii.gz").unlink()
    from hiend_data.discovery import Case

    preprocess_dataset(
        [Case("p", [src / "imagesTr" / "phantom_000_0000.nii.gz"])], tmp_path / "c", workers=0, progress=False
    )
    res = runner.invoke(app, ["bench", str(tmp_path / "c"), "--config", "finetune", "--seconds", "0.1"])
    assert res.exit_code == 2 and "labelled" in res.output
    res = runner.invoke(app, ["bench", str(tmp_path / "c"), "--seconds", "0.1", "--json"])
    assert res.exit_code == 0 and json.loads(res.output.splitlines()[-1])["labelled"] is False


def test_sampling_commands_import_nothing_heavy() -> None:
    code = (
        "import sys, hiend_data.cli; heavy = [m for m in ('torch', 'scipy', 'nibabel', 'hiend_data.sampling') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
