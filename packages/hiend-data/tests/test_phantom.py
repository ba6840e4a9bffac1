"""Synthetic CT phantoms: layout, geometry variety, HU per organ, anatomy sides, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hiend_data import load_volume
from hiend_data.errors import InputError
from hiend_data.phantom import LABELS, ORGAN_HU, make_phantom_dataset

CASES = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom") / "ds", cases=CASES, seed=3, test_cases=1)


@pytest.fixture(scope="module")
def volumes(dataset: Path):
    out = []
    for i in range(CASES):
        img = load_volume(dataset / "imagesTr" / f"phantom_{i:03d}_0000.nii.gz")
        lab = load_volume(dataset / "labelsTr" / f"phantom_{i:03d}.nii.gz")
        out.append((img, lab))
    return out


def test_nnunet_layout(dataset: Path) -> None:
    meta = json.loads((dataset / "dataset.json").read_text())
    assert meta["labels"] == LABELS and meta["file_ending"] == ".nii.gz"
    assert meta["numTraining"] == CASES and meta["channel_names"] == {"0": "CT"}
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == [
        f"phantom_{i:03d}_0000.nii.gz" for i in range(CASES)
    ]
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == [
        f"phantom_{i:03d}.nii.gz" for i in range(CASES)
    ]
    assert [p.name for p in (dataset / "imagesTs").iterdir()] == [f"phantom_{CASES:03d}_0000.nii.gz"]
    assert [p.name for p in (dataset / "labelsTs").iterdir()] == [f"phantom_{CASES:03d}.nii.gz"]


def test_held_out_labels_match_their_images(dataset: Path) -> None:
    img = load_volume(dataset / "imagesTs" / f"phantom_{CASES:03d}_0000.nii.gz")
    lab = load_volume(dataset / "labelsTs" / f"phantom_{CASES:03d}.nii.gz")
    np.testing.assert_array_equal(img.affine, lab.affine)
    assert img.array.shape == lab.array.shape
    assert set(np.unique(lab.array)) == set(LABELS.values())
    # the labels describe this image: lungs are dark and the spine bright in it
    assert img.array[lab.array == 6].mean() < -700 and img.array[lab.array == 5].mean() > 500


def test_geometry_varies_within_ranges(volumes) -> None:
    orientations, spacings, shapes = set(), set(), set()
    for img, lab in volumes:
        assert img.array.dtype == np.int16 and lab.array.dtype == np.uint8
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
        assert all(64 <= s <= 112 for s in img.shape)
        assert all(0.8 - 1e-4 <= s <= 3.0 + 1e-4 for s in img.spacing)
        orientations.add(img.orientation)
        spacings.add(tuple(round(s, 2) for s in img.spacing))
        shapes.add(img.shape)
    assert len(orientations) >= 3 and len(spacings) == CASES and len(shapes) == CASES


def test_hu_per_organ_and_labels_match(volumes) -> None:
    for img, lab in volumes:
        hu, label = img.array.astype(np.float64), lab.array
        assert set(np.unique(label)) == set(LABELS.values())
        for value, expected in ORGAN_HU.items():
            inside = hu[label == value]
            tol = 80 if value == 5 else (60 if value == 6 else 15)  # blur at bone/lung borders
            assert abs(np.median(inside) - expected) < tol, (value, np.median(inside))
        # soft organs are told apart from bone and lungs by HU alone
        assert np.percentile(hu[label == 1], 99) < 200 and np.percentile(hu[label == 5], 50) > 400
        assert np.percentile(hu[label == 6], 90) < -600
        background = hu[label == 0]
        assert background.min() < -900 and (background > -150).mean() > 0.05  # air and body (fat, muscle)
        noise = hu[label == 1].std()
        assert 5 < noise < 40


def test_anatomy_sides_in_world_coordinates(volumes) -> None:
    for img, lab in volumes:

        def world_mean(value: int, img=img, lab=lab) -> np.ndarray:
            idx = np.argwhere(lab.array == value)
            return (img.affine[:3, :3] @ idx.T + img.affine[:3, 3:4]).mean(axis=1)

        liver, spleen, lungs = world_mean(1), world_mean(2), world_mean(6)
        assert spleen[0] < 0 < liver[0]  # RAS+: x grows towards the patient's right, where the liver is
        assert lungs[2] > liver[2]  # the lungs above the liver
        assert world_mean(4)[0] < 0 < world_mean(3)[0]  # kidney_left (-x) / kidney_right (+x)


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = make_phantom_dataset(tmp_path / "a", cases=2, seed=5)
    b = make_phantom_dataset(tmp_path / "b", cases=2, seed=5)
    c = make_phantom_dataset(tmp_path / "c", cases=2, seed=6)
    for i in range(2):
        name = f"imagesTr/phantom_{i:03d}_0000.nii.gz"
        va, vb, vc = (load_volume(d / name) for d in (a, b, c))
        np.testing.assert_array_equal(va.array, vb.array)
        np.testing.assert_array_equal(va.affine, vb.affine)
        assert va.shape != vc.shape or not np.array_equal(va.array, vc.array)


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        make_phantom_dataset(tmp_path / "ds", cases=1)
    with pytest.raises(InputError, match="cases"):
        make_phantom_dataset(tmp_path / "other", cases=0)
    assert (tmp_path / "ds" / "keep.txt").read_text() == "x"


def test_overwrite_replaces_earlier_phantoms_only(tmp_path: Path) -> None:
    ds = make_phantom_dataset(tmp_path / "ds", cases=3, seed=1, test_cases=1)
    (ds / "notes.txt").write_text("mine")
    make_phantom_dataset(ds, cases=1, seed=2, overwrite=True)
    assert [p.name for p in (ds / "imagesTr").iterdir()] == ["phantom_000_0000.nii.gz"]
    assert [p.name for p in (ds / "labelsTr").iterdir()] == ["phantom_000.nii.gz"]
    assert list((ds / "imagesTs").iterdir()) == [] and list((ds / "labelsTs").iterdir()) == []
    assert (ds / "notes.txt").read_text() == "mine"
    assert json.loads((ds / "dataset.json").read_text())["numTraining"] == 1
