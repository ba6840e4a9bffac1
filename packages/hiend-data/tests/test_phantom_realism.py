"""Phantoms measured against the real labelled CT slab: the same statistics, inside ranges derived from
the real scan and the literature (``hiend_data.phantom.realism.RANGES``), so the generator cannot drift
back to flat ellipsoids; and TotalSegmentator's classes folded onto the phantom labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hiend_data.phantom import make_phantom
from hiend_data.phantom.realism import (
    RANGES,
    flat,
    measure,
    out_of_range,
    phantom_structures,
    totalseg_structures,
)
from hiend_data.phantom.totalseg import fold_label, fold_totalsegmentator

SLAB = "ct/body_ct_3mm_ras_30slices"


@pytest.fixture(scope="module")
def slab(shared_data: Path):
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(shared_data / f"{SLAB}.nii.gz"))
    seg = nib.as_closest_canonical(nib.load(shared_data / f"{SLAB}_seg.nii.gz"))
    names = json.loads((shared_data / f"{SLAB}_seg_labels.json").read_text())["labels_present_in_example_seg"]
    return img.get_fdata(dtype=np.float32), np.asarray(seg.dataobj), names


def test_fold_totalsegmentator_onto_phantom_labels(slab) -> None:
    _, seg, names = slab
    folded = fold_totalsegmentator(seg, names)
    by_name = {v: int(k) for k, v in names.items()}
    vertebrae = [int(k) for k, v in names.items() if v.startswith("vertebrae_")]
    lobes = [int(k) for k, v in names.items() if v.startswith("lung_")]
    assert len(vertebrae) == 4 and len(lobes) == 4  # T11..L2; four lobes reach this slab
    assert (folded == 5).sum() == np.isin(seg, vertebrae).sum()
    assert (folded == 6).sum() == np.isin(seg, lobes).sum()
    for organ, value in (("liver", 1), ("spleen", 2), ("kidney_right", 3), ("kidney_left", 4)):
        np.testing.assert_array_equal(folded == value, seg == by_name[organ])
    # gallbladder, IVC, ribs, sacrum, spinal cord, trachea: background
    for name in ("gallbladder", "inferior_vena_cava", "rib_left_7", "spinal_cord", "aorta"):
        assert (folded[seg == by_name[name]] == 0).all()
    assert fold_label("sacrum") == 0 and fold_label("vertebrae_S1") == 5 and fold_label("trachea") == 0
    with pytest.raises(ValueError, match="no name"):
        fold_totalsegmentator(np.array([0, 1, 250]), names)


def test_real_slab_lies_inside_the_ranges(slab) -> None:
    hu, seg, names = slab
    stats = measure(hu, (3.0, 3.0, 3.0), totalseg_structures(seg, names))
    assert out_of_range(stats) == []
    # the measurements of this slab, reproduced
    assert stats["hu"]["liver"] == pytest.approx(45.3, abs=0.5)
    assert stats["hu"]["spleen"] == pytest.approx(32.8, abs=0.5)
    assert stats["hu"]["spine"] == pytest.approx(195, abs=8)
    assert stats["hu"]["lungs"] == pytest.approx(-744, abs=15)
    assert stats["cut"]["liver"]  # the slab cuts the liver: its volume is not compared


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_phantoms_measure_like_ct(seed: int, slab) -> None:
    hu_real, seg, names = slab
    real = flat(measure(hu_real, (3.0, 3.0, 3.0), totalseg_structures(seg, names)))
    ph = make_phantom(np.random.default_rng([seed, 0]), spacing=(3.0, 3.0, 3.0), orientation=("R", "A", "S"))
    stats = measure(ph.hu, (3.0, 3.0, 3.0), phantom_structures(ph.label, ph.tissue))
    assert out_of_range(stats, ph.scan.coverage) == []
    got = flat(stats)
    # every organ of the real slab is measured in the phantom, HU within 35 of the real scan's
    for key in ("hu.liver", "hu.spleen", "hu.kidney_right", "hu.kidney_left", "hu.aorta", "hu.paraspinal"):
        assert abs(got[key] - real[key]) < 35, (key, got[key], real[key])
    assert abs(got["hu.lungs"] - real["hu.lungs"]) < 100 and abs(got["hu.spine"] - real["hu.spine"]) < 130
    checked = [k for k in got if k in RANGES]
    assert len(checked) >= 17, checked  # HU, volumes, extents, body size, fractions all measured
    # tissue layers: subcutaneous fat noise like CT's, fat a real share of the body
    assert 8 < got["fat_sd"] < 40 and got["fractions.fat"] > 0.15
