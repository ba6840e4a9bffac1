"""Synthetic CT phantoms: layout, physical size independent of the grid, coverage and absent organs,
HU per organ and phase, partial volume, CT noise, anatomy sides, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hiend_data import load_volume
from hiend_data.errors import InputError
from hiend_data.phantom import LABELS, RESOLUTIONS, make_phantom, make_phantom_dataset
from hiend_data.phantom.anatomy import draw_body
from hiend_data.phantom.render import Scan, ct_noise, draw_scan, render
from hiend_data.phantom.tissues import TISSUES

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
    assert {1, 2, 3, 4, 5} <= set(np.unique(lab.array))
    # the labels describe this image: lungs dark, vertebrae bright, liver soft tissue
    assert img.array[lab.array == 6].mean() < -600 and img.array[lab.array == 5].mean() > 130
    assert 30 < img.array[lab.array == 1].mean() < 80


def test_geometry_varies_within_ranges(volumes) -> None:
    (ilo, ihi), (zlo, zhi) = RESOLUTIONS["coarse"]
    orientations, spacings, shapes = set(), set(), set()
    for img, lab in volumes:
        assert img.array.dtype == np.int16 and lab.array.dtype == np.uint8
        assert img.shape == lab.shape and np.allclose(img.affine, lab.affine)
        ras = dict(zip(img.orientation, img.spacing, strict=True))
        sp = {
            "x": ras.get("R", ras.get("L")),
            "y": ras.get("A", ras.get("P")),
            "z": ras.get("S", ras.get("I")),
        }
        assert ilo - 1e-3 <= sp["x"] <= ihi + 1e-3 and sp["x"] == pytest.approx(sp["y"], abs=1e-4)
        assert zlo - 1e-3 <= sp["z"] <= zhi + 1e-3
        # a square field of view of 300-500 mm, whatever the voxel size
        fov = [
            n * s for n, s, c in zip(img.shape, img.spacing, img.orientation, strict=True) if c not in "SI"
        ]
        assert all(290 <= f <= 510 for f in fov) and abs(fov[0] - fov[1]) < 2 * sp["x"]
        orientations.add(img.orientation)
        spacings.add(tuple(round(s, 2) for s in img.spacing))
        shapes.add(img.shape)
    assert len(orientations) >= 3 and len(spacings) == CASES and len(shapes) == CASES


def _world_mean(img, lab, value: int) -> np.ndarray:
    idx = np.argwhere(lab.array == value)
    return (img.affine[:3, :3] @ idx.T + img.affine[:3, 3:4]).mean(axis=1)


def test_anatomy_sides_in_world_coordinates(volumes) -> None:
    for img, lab in volumes:
        present = set(np.unique(lab.array))
        liver, spleen = _world_mean(img, lab, 1), _world_mean(img, lab, 2)
        assert spleen[0] < 0 < liver[0]  # RAS+: x grows towards the patient's right, where the liver is
        assert _world_mean(img, lab, 4)[0] < 0 < _world_mean(img, lab, 3)[0]  # kidney_left / kidney_right
        assert _world_mean(img, lab, 3)[2] < liver[2]  # the right kidney below the liver's centre
        if 6 in present:
            assert _world_mean(img, lab, 6)[2] > _world_mean(img, lab, 3)[2]  # lungs above the kidneys
        spine = _world_mean(img, lab, 5)
        assert spine[1] < liver[1] and abs(spine[0]) < 20  # the spine behind the liver, on the midline


def test_anatomy_is_in_millimetres_whatever_the_grid() -> None:
    """One body scanned at 2 mm and at 4 mm: the same organ volumes and body width in mm."""
    stats = []
    for spacing in ((2.0, 2.0, 2.0), (4.0, 4.0, 4.0)):
        rng = np.random.default_rng(11)
        ph = make_phantom(rng, spacing=spacing, orientation=("R", "A", "S"), coverage="abdomen")
        voxel = float(np.prod(spacing)) / 1000
        body_cols = np.flatnonzero((ph.hu > -400).any(axis=(1, 2)))
        stats.append(
            {
                "liver": (ph.label == 1).sum() * voxel,
                "kidney_right": (ph.label == 3).sum() * voxel,
                "spleen": (ph.label == 2).sum() * voxel,
                "width": (body_cols[-1] - body_cols[0] + 1) * spacing[0],
            }
        )
    a, b = stats
    for organ in ("liver", "kidney_right", "spleen"):
        assert b[organ] == pytest.approx(a[organ], rel=0.12), (organ, a, b)
    assert abs(a["width"] - b["width"]) <= 8.0
    assert 900 < a["liver"] < 2300 and 70 < a["kidney_right"] < 250  # adult sizes (ICRP 89)


def test_coverage_decides_which_organs_are_present() -> None:
    rng = np.random.default_rng(5)
    body = draw_body(rng)
    l5 = body.levels["L5"][0]
    pelvis_only = Scan("abdomen-pelvis", (l5 - 180, l5 - 60), 420, (0.0, 0.0), (4.0, 4.0, 4.0), 10, "native")
    _, label, tissue, _ = render(body, pelvis_only, np.random.default_rng(1))
    assert set(np.unique(label)) <= {0, 5}  # no liver, spleen, kidneys or lungs below the iliac crest
    assert (tissue == TISSUES["bladder"]).any() and (tissue == TISSUES["pelvic_bone"]).any()
    chest = draw_scan(body, np.random.default_rng(2), coverage="thorax-abdomen", spacing=(4, 4, 4))
    abdomen = draw_scan(body, np.random.default_rng(2), coverage="abdomen", spacing=(4, 4, 4))
    lungs = []
    for scan in (chest, abdomen):
        _, label, tissue, _ = render(body, scan, np.random.default_rng(3))
        lungs.append((label == 6).sum() * 64 / 1000)
        assert {1, 2, 3, 4, 5} <= set(np.unique(label))
    assert lungs[0] > 2500 and lungs[1] < lungs[0] / 2  # whole lungs vs their bases


def test_contrast_phases() -> None:
    hu_of = {}
    for phase in ("native", "arterial", "portal"):
        ph = make_phantom(np.random.default_rng(8), spacing=(3, 3, 3), phase=phase, coverage="abdomen")
        hu_of[phase] = {
            "aorta": float(ph.hu[ph.tissue == TISSUES["aorta"]].mean()),
            "liver": float(ph.hu[ph.label == 1].mean()),
            "cortex": float(ph.hu[ph.tissue == TISSUES["kidney_r_cortex"]].mean()),
            "medulla": float(ph.hu[ph.tissue == TISSUES["kidney_r_medulla"]].mean()),
        }
    n, a, p = hu_of["native"], hu_of["arterial"], hu_of["portal"]
    assert n["aorta"] < 70 and a["aorta"] > 180 and p["aorta"] > 110
    assert p["liver"] > n["liver"] + 35 and a["liver"] < p["liver"]
    assert a["cortex"] > a["medulla"] + 30  # corticomedullary differentiation in the arterial phase
    assert abs(n["cortex"] - n["medulla"]) < 25
    with pytest.raises(InputError, match="phase"):
        make_phantom(np.random.default_rng(0), phase="venous")


def test_partial_volume_follows_slice_thickness() -> None:
    """Without noise, thick slices mix fat and soft tissue into HU neither has; thin slices much less."""
    body = draw_body(np.random.default_rng(4))
    mixed = []
    for sz in (1.0, 5.0):
        scan = Scan("abdomen", (-160.0, -60.0), 420, (0.0, 0.0), (2.5, 2.5, sz), 0.0, "native")
        hu, label, _, _ = render(body, scan, np.random.default_rng(0))
        kid = hu[(label == 3) | (label == 4)].astype(np.float64)
        mixed.append(float(((kid > -70) & (kid < 0)).mean()))
    assert mixed[1] > 1.3 * mixed[0], mixed


def test_ct_noise_is_correlated_in_plane_only() -> None:
    noise = ct_noise((96, 96, 64), (0.7, 0.7, 3.0), 15.0, np.random.default_rng(0)).astype(np.float64)
    assert noise.std() == pytest.approx(15.0, rel=1e-3)

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])

    assert corr(noise[1:], noise[:-1]) > 0.4 and corr(noise[:, 1:], noise[:, :-1]) > 0.4
    assert abs(corr(noise[:, :, 1:], noise[:, :, :-1])) < 0.05


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


def test_refuses_bad_settings_and_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="not empty"):
        make_phantom_dataset(tmp_path / "ds", cases=1)
    with pytest.raises(InputError, match="cases"):
        make_phantom_dataset(tmp_path / "other", cases=0)
    for bad, match in (
        ({"phase": "late"}, "phase"),
        ({"resolution": "fine"}, "resolution"),
        ({"coverage": "head"}, "coverage"),
    ):
        with pytest.raises(InputError, match=match):
            make_phantom_dataset(tmp_path / "bad", cases=1, **bad)
    assert not (tmp_path / "bad").exists()
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


def test_a_fixed_grid_for_benchmarks() -> None:
    ph = make_phantom(
        np.random.default_rng(2), shape=(40, 36, 20), spacing=(9.0, 9.0, 10.0), orientation=("L", "P", "S")
    )
    assert ph.hu.shape == ph.label.shape == (40, 36, 20)
    np.testing.assert_allclose(np.abs(np.diag(ph.affine)[:3]), [9.0, 9.0, 10.0])
    assert ph.affine[0, 0] < 0 and ph.affine[1, 1] < 0  # L and P: x and y run against RAS
    with pytest.raises(InputError, match="needs spacing"):
        make_phantom(np.random.default_rng(2), shape=(40, 36, 20))
