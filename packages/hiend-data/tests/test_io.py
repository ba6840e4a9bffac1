"""Volume I/O: the real scans' geometry, scaling, channels, saving, and every bad file."""

from __future__ import annotations

import gzip
import struct
import time

import nibabel as nib
import numpy as np
import pytest

from hiend_data import InputError, Volume, load_volume, save_volume
from hiend_data.io import load_label
from hiend_data.naming import channel_siblings

REAL = [  # file, shape, spacing, orientation, dtype (from ../shared/data/README.md)
    ("body_ct_3mm_ras.nii.gz", (122, 101, 112), (3.0, 3.0, 3.0), ("R", "A", "S"), np.int32),
    ("abdomen_ct_1.5mm_lps.nii.gz", (120, 126, 164), (1.5, 1.5, 1.5), ("L", "P", "S"), np.int16),
    ("body_ct_3mm_ras_30slices_seg.nii.gz", (122, 101, 30), (3.0, 3.0, 3.0), ("R", "A", "S"), np.uint8),
]


@pytest.mark.parametrize(("name", "shape", "spacing", "codes", "dtype"), REAL)
def test_real_scans_geometry(ct_dir, name, shape, spacing, codes, dtype):
    vol = load_volume(ct_dir / name)
    assert vol.array.shape == shape and vol.shape == shape
    assert vol.array.dtype == dtype
    assert vol.spacing == pytest.approx(spacing)
    assert vol.orientation == codes
    assert vol.affine.shape == (4, 4) and vol.affine.dtype == np.float64
    assert vol.path == ct_dir / name


def test_real_ct_intensity_range(ct_dir):
    vol = load_volume(ct_dir / "body_ct_3mm_ras.nii.gz")
    assert (int(vol.array.min()), int(vol.array.max())) == (-1207, 3382)


def test_header_scaling_applied(tmp_path, nii):
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    path = nii.write(tmp_path / "s.nii.gz", raw, dtype=np.int16, slope=2.0, inter=-1000.0)
    vol = load_volume(path)
    assert vol.array.dtype == np.float32
    np.testing.assert_array_equal(vol.array, raw.astype(np.float32) * 2 - 1000)


def test_spacing_in_array_axis_order(tmp_path, nii):
    aff = np.array([[0, 0, 2.5, 0], [0.8, 0, 0, 0], [0, -1.2, 0, 0], [0, 0, 0, 1]], dtype=float)
    vol = load_volume(nii.write(tmp_path / "p.nii", np.zeros((3, 4, 5), np.int16), aff))
    assert vol.spacing == pytest.approx((0.8, 1.2, 2.5))
    assert vol.orientation == ("A", "I", "R")


def test_nnunet_channels_load_as_c_first(tmp_path, nii):
    a = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    f0 = nii.write(tmp_path / "case_0000.nii.gz", a)
    nii.write(tmp_path / "case_0001.nii.gz", a * 2)
    nii.write(tmp_path / "other_0000.nii.gz", a)
    files = channel_siblings(f0)
    assert [f.name for f in files] == ["case_0000.nii.gz", "case_0001.nii.gz"]
    vol = load_volume(files)
    assert vol.array.shape == (2, 5, 6, 7) and vol.channels == 2 and vol.shape == (5, 6, 7)
    np.testing.assert_array_equal(vol.array[1], a * 2)


def test_4d_file_loads_as_channels(tmp_path, nii):
    a = np.random.default_rng(1).normal(size=(5, 6, 7, 3)).astype(np.float32)
    vol = load_volume(nii.write(tmp_path / "m.nii.gz", a))
    assert vol.array.shape == (3, 5, 6, 7)
    np.testing.assert_array_equal(vol.array[2], a[..., 2])


def test_channels_with_other_grids_refused(tmp_path, nii):
    f0 = nii.write(tmp_path / "c_0000.nii.gz", np.zeros((5, 6, 7), np.float32))
    f1 = nii.write(tmp_path / "c_0001.nii.gz", np.zeros((5, 6, 8), np.float32))
    with pytest.raises(InputError, match="c_0001.*disagrees"):
        load_volume([f0, f1])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_save_round_trip_label(ct_dir, tmp_path, suffix):
    like = load_volume(ct_dir / "abdomen_ct_1.5mm_lps.nii.gz")
    lab = (like.array > 300).astype(np.int64) * 7
    out = save_volume(tmp_path / f"l{suffix}", lab, like=like)
    back = load_volume(out)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, lab)
    np.testing.assert_allclose(back.affine, like.affine, atol=1e-6)
    assert back.orientation == ("L", "P", "S")
    assert [p.name for p in tmp_path.iterdir()] == [f"l{suffix}"]  # no temporary left


def test_save_float_and_wide_ints(tmp_path):
    like = Volume(np.zeros((3, 4, 5)), np.diag([2.0, 2.0, 3.0, 1.0]))
    save_volume(tmp_path / "f.nii.gz", np.full((3, 4, 5), 0.25), like=like)
    assert load_volume(tmp_path / "f.nii.gz").array.dtype == np.float32
    save_volume(tmp_path / "i.nii.gz", np.full((3, 4, 5), 300, dtype=np.int64), like=like)
    assert load_volume(tmp_path / "i.nii.gz").array.dtype == np.uint16
    save_volume(tmp_path / "n.nii.gz", np.full((3, 4, 5), -1000, dtype=np.int32), like=like)
    back = load_volume(tmp_path / "n.nii.gz")
    assert back.array.dtype == np.int16 and back.spacing == pytest.approx((2.0, 2.0, 3.0))


def test_save_wrong_shape_writes_nothing(tmp_path):
    like = Volume(np.zeros((3, 4, 5)), np.eye(4))
    with pytest.raises(InputError, match="does not match"):
        save_volume(tmp_path / "x.nii.gz", np.zeros((3, 4, 6), np.uint8), like=like)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- bad files


def _valid(tmp_path, nii, name="v.nii.gz", shape=(8, 8, 8)):
    return nii.write(tmp_path / name, np.zeros(shape, np.int16), np.diag([1.5, 1.5, 1.5, 1]))


def test_empty_file(tmp_path):
    (tmp_path / "e.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match=r"e\.nii\.gz: empty file"):
        load_volume(tmp_path / "e.nii.gz")


def test_not_nifti_content(tmp_path):
    (tmp_path / "t.nii").write_text("hello, I am not a scan\n" * 40)
    with pytest.raises(InputError, match=r"t\.nii: not a readable NIfTI"):
        load_volume(tmp_path / "t.nii")


def test_not_nifti_name(tmp_path):
    (tmp_path / "scan.mha").write_bytes(b"x" * 400)
    with pytest.raises(InputError, match=r"scan\.mha: not a NIfTI file name"):
        load_volume(tmp_path / "scan.mha")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_volume(tmp_path / "nope.nii.gz")


def test_truncated_gz(tmp_path, nii):
    arr = np.random.default_rng(0).integers(-1000, 1000, size=(20, 20, 20)).astype(np.int16)
    path = nii.write(tmp_path / "t.nii.gz", arr)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.nii\.gz: truncated"):
        load_volume(path)


def test_truncated_nii(tmp_path, nii):
    path = _valid(tmp_path, nii, "t.nii")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"t\.nii: truncated"):
        load_volume(path)


@pytest.mark.parametrize("shape", [(8, 8), (4, 4, 4, 1, 2)])
def test_wrong_dimensionality(tmp_path, nii, shape):
    path = nii.write(tmp_path / "d.nii.gz", np.zeros(shape, np.int16))
    with pytest.raises(InputError, match=rf"d\.nii\.gz: {len(shape)}-D image"):
        load_volume(path)


@pytest.mark.parametrize(("value", "count"), [(np.nan, 3), (np.inf, 2), (-np.inf, 5)])
def test_nonfinite_voxels_counted(tmp_path, nii, value, count):
    arr = np.zeros((6, 6, 6), np.float32)
    arr.reshape(-1)[:count] = value
    path = nii.write(tmp_path / "n.nii.gz", arr)
    with pytest.raises(InputError, match=rf"n\.nii\.gz: {count} non-finite voxels"):
        load_volume(path)


@pytest.mark.parametrize("bad", [0.0, -1.5, float("nan"), float("inf")])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_bad_spacing_in_raw_header(tmp_path, nii, bad, suffix):
    path = _valid(tmp_path, nii, f"s{suffix}")
    nii.patch(path, nii.PIXDIM + 4 * 2, struct.pack("<f", bad))  # pixdim[2] (second spatial axis)
    with pytest.raises(InputError, match="invalid voxel spacing"):
        load_volume(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_header_far_beyond_data_fails_fast(tmp_path, nii, suffix):
    path = _valid(tmp_path, nii, f"h{suffix}")
    nii.patch(path, nii.DIM + 2, struct.pack("<hhh", 30000, 30000, 30000))  # 54 TB claimed
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="header claims 30000x30000x30000"):
        load_volume(path)
    assert time.perf_counter() - t0 < 1.0


def test_header_beyond_data_within_deflate_ratio(tmp_path, nii):
    """A gzip whose header claims a little more than its stream holds: caught from the size trailer."""
    arr = np.random.default_rng(0).integers(0, 1000, size=(16, 16, 16)).astype(np.int16)
    path = nii.write(tmp_path / "h.nii.gz", arr)
    nii.patch(path, nii.DIM + 6, struct.pack("<h", 32))  # z: 16 -> 32
    with pytest.raises(InputError, match="header claims 16x16x32"):
        load_volume(path)


def test_multimember_gzip_is_accepted(tmp_path, nii):
    """gzip streams made of several members (bgzip style) have a misleading size trailer: still fine."""
    arr = np.random.default_rng(0).integers(0, 1000, size=(16, 16, 16)).astype(np.int16)
    raw = gzip.decompress(nii.write(tmp_path / "a.nii.gz", arr).read_bytes())
    path = tmp_path / "m.nii.gz"
    path.write_bytes(gzip.compress(raw[:5000]) + gzip.compress(raw[5000:]))
    np.testing.assert_array_equal(load_volume(path).array, arr)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (np.array([0, 1, 2.5]), "3 non-integer|1 non-integer"),
        (np.array([0, -1, 2]), "negative values"),
    ],
)
def test_label_must_be_nonnegative_integers(tmp_path, nii, values, match):
    arr = np.zeros((4, 4, 4), np.float32)
    arr.reshape(-1)[: len(values)] = values
    path = nii.write(tmp_path / "lab.nii.gz", arr)
    with pytest.raises(InputError, match=rf"lab\.nii\.gz: label map has ({match})"):
        load_label(path)


def test_float_label_with_whole_values_accepted(tmp_path, nii):
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 1, 1] = 300
    lab = load_label(nii.write(tmp_path / "lab.nii.gz", arr))
    assert lab.array.dtype == np.uint16 and lab.array[1, 1, 1] == 300


@pytest.mark.parametrize("change", ["shape", "affine"])
def test_label_grid_must_match_image(tmp_path, nii, change):
    img = load_volume(_valid(tmp_path, nii, "img.nii.gz"))
    shape = (8, 8, 9) if change == "shape" else (8, 8, 8)
    aff = np.diag([1.5, 1.5, 1.5, 1.0])
    if change == "affine":
        aff[0, 3] = 3.0
    path = nii.write(tmp_path / "lab.nii.gz", np.zeros(shape, np.uint8), aff)
    with pytest.raises(InputError, match=r"lab\.nii\.gz: (grid|affine)"):
        load_label(path, like=img)


def test_nibabel_hides_zero_spacing(tmp_path, nii):
    """Why the raw pixdim is read: nibabel itself reports a zero pixdim as 1."""
    path = _valid(tmp_path, nii, "z.nii")
    nii.patch(path, nii.PIXDIM + 4, struct.pack("<f", 0.0))
    assert nib.load(str(path)).header.get_zooms()[0] == 1.0


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti2_files(tmp_path, suffix):
    arr = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    nib.save(nib.Nifti2Image(arr, np.diag([2.0, 3.0, 4.0, 1.0])), str(tmp_path / f"n2{suffix}"))
    vol = load_volume(tmp_path / f"n2{suffix}")
    assert vol.spacing == (2.0, 3.0, 4.0)
    np.testing.assert_array_equal(vol.array, arr)
    back = load_volume(save_volume(tmp_path / f"out{suffix}", arr, like=vol))
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.affine, vol.affine)


# --------------------------------------------------- an output "like" an input keeps its qform and sform

_FORMS = ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
          "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim")  # fmt: skip


def disagreeing_forms(path, image_class=nib.Nifti1Image):
    """A 8 x 6 x 4 volume whose sform (code 2, aligned) is diag(2, 2, 3) and whose qform (code 1,
    scanner) is its mirror image along the first axis: the two forms disagree, as some converters'
    files do."""
    sform = np.diag([2.0, 2.0, 3.0, 1.0])
    sform[:3, 3] = [10.0, -20.0, 5.0]
    qform = sform.copy()
    qform[0, 0], qform[0, 3] = -2.0, 10.0 + 2.0 * 7
    img = image_class(np.arange(8 * 6 * 4, dtype=np.int16).reshape(8, 6, 4), None)
    img.header.set_qform(qform, code=1)
    img.header.set_sform(sform, code=2)
    nib.save(img, str(path))
    return path, qform, sform


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_output_keeps_the_inputs_qform_and_sform(tmp_path, suffix):
    """The prediction's qform was the input's sform: a viewer reading the qform showed it mirrored
    against the scan. Now both forms and their codes are the input header's, field for field."""
    src, qform, sform = disagreeing_forms(tmp_path / f"in{suffix}")
    vol = load_volume(src)
    np.testing.assert_allclose(vol.affine, sform)  # hiend itself works on the sform
    out = save_volume(tmp_path / f"out{suffix}", (vol.array > 50).astype(np.uint8), like=vol)
    a, b = nib.load(str(src)).header, nib.load(str(out)).header
    for key in _FORMS:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    got_q, q_code = b.get_qform(coded=True)
    got_s, s_code = b.get_sform(coded=True)
    assert (int(q_code), int(s_code)) == (1, 2)
    np.testing.assert_allclose(got_q, qform, atol=1e-5)
    np.testing.assert_allclose(got_s, sform, atol=1e-5)
    assert load_label(out, like=vol).array.sum() == int((vol.array > 50).sum())


def test_nifti2_input_forms_kept_in_the_nifti1_output(tmp_path):
    src, qform, sform = disagreeing_forms(tmp_path / "in.nii.gz", nib.Nifti2Image)
    vol = load_volume(src)
    b = nib.load(str(save_volume(tmp_path / "out.nii.gz", vol.array, like=vol))).header
    assert (int(b["qform_code"]), int(b["sform_code"])) == (1, 2)
    np.testing.assert_allclose(b.get_qform(), qform, atol=1e-5)
    np.testing.assert_allclose(b.get_sform(), sform, atol=1e-5)


def test_like_without_its_own_header_gets_both_forms_from_its_affine(tmp_path):
    """A Volume made in code, or one whose affine no longer is its header's: both forms = its affine."""
    src, _, _ = disagreeing_forms(tmp_path / "in.nii.gz")
    vol = load_volume(src)
    moved = vol.affine.copy()
    moved[:3, 3] += 4.0
    for like in (Volume(vol.array, moved), Volume(vol.array, moved, header=vol.header)):
        b = nib.load(str(save_volume(tmp_path / "out.nii.gz", vol.array, like=like))).header
        np.testing.assert_allclose(b.get_qform(), moved, atol=1e-5)
        np.testing.assert_allclose(b.get_sform(), moved, atol=1e-5)
        assert int(b["qform_code"]) >= 1 and int(b["sform_code"]) >= 1
