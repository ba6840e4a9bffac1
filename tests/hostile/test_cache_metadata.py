"""What a cache holds and how it is written (issue 18), through the real console script.

* a case's metadata that lies (dtype/scale over other codes, cut in half, a case_id leading out, a
  scale that is not finite, fields of the wrong type) is refused when the cache is opened: one line
  naming the file and the field, exit 2 (``inspect`` and ``bench``);
* label names that are blank or hold control characters are refused (dataset.json at preprocess time,
  labels.json at inspect), and the others (rich markup such as ``[/bold]``) print as written;
* a 252-byte file name (80 CJK characters + ``_0000.nii.gz``) preprocesses (bounded temporary names);
  81 characters are refused up front;
* a full disk names the output file it could not write;
* an output below a symbolic-link loop is one line naming it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hostile_cli import one_line_exit_2, run

from hiend_data.phantom import make_phantom_dataset


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """(a one-case phantom dataset, its cache at 4 mm)."""
    root = tmp_path_factory.mktemp("meta")
    raw = make_phantom_dataset(root / "raw", cases=1, seed=5)
    proc = run("hiend-data", "preprocess", raw, root / "cache", "--spacing", "4", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return raw, root / "cache"


def _cache_with(made, tmp_path: Path, change) -> tuple[Path, Path]:
    """A copy of the cache whose one case's metadata ``change(meta)`` edits (or, given text, replaces)."""
    cache = tmp_path / "cache"
    shutil.copytree(made[1], cache)
    meta_path = cache / "cases" / "phantom_000.json"
    if isinstance(change, str):
        meta_path.write_text(change)
    else:
        meta = json.loads(meta_path.read_text())
        change(meta)
        meta_path.write_text(json.dumps(meta))
    return cache, meta_path


def _set(**fields):
    return lambda meta: meta.update(fields)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        # int16 codes claimed over the uint8 codes written: would decode 128 times too dark
        (_set(image_dtype="int16", image_scale=1 / 32767), "image_dtype does not match phantom_000.npy"),
        (_set(image_scale=1 / 32767), f"image_scale {1 / 32767} does not decode uint8"),
        (_set(image_scale=float("inf")), "image_scale inf is not a finite number"),
        (_set(image_dtype="float64"), "image_dtype 'float64'"),
        (_set(case_id="../../outside"), "case_id: case name '../../outside'"),
        (_set(case_id="other"), "case_id 'other' is not the file's own name 'phantom_000'"),
        (_set(shape=["a", 2, 3]), "shape.0"),
        (_set(shape=[1, 2, 3]), "disagrees with record"),
        (_set(labelled="yes"), "labelled"),
        (_set(class_offsets=[0, 1]), "class_offsets disagree"),
        ('{"format": 2, "case_id": "phantom_0', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
    ],
    ids=[
        "dtype-lie", "scale-lie", "scale-inf", "dtype-unknown", "case-id-out", "case-id-other",
        "shape-type", "shape-lie", "bool-type", "offsets", "cut-in-half", "not-object",
    ],
)  # fmt: skip
def test_lying_case_metadata_is_refused_naming_file_and_field(made, tmp_path, change, said):
    cache, meta_path = _cache_with(made, tmp_path, change)
    for command in (["inspect", cache], ["bench", cache, "--seconds", "0.1"]):
        line = one_line_exit_2(run("hiend-data", *command), str(meta_path), said)
        assert "outside" not in line or "case name" in line


def test_a_case_array_that_is_a_symlink_out_of_the_cache_is_refused(made, tmp_path):
    cache, _ = _cache_with(made, tmp_path, _set())
    outside = tmp_path / "outside.npy"
    (cache / "cases" / "phantom_000_fg.npy").rename(outside)
    (cache / "cases" / "phantom_000_fg.npy").symlink_to(outside)
    one_line_exit_2(run("hiend-data", "inspect", cache), "phantom_000_fg.npy: resolves to", "outside")


@pytest.mark.parametrize("name", ["", "   ", "a\x1b]0;x\x07b", "tab\there"])
def test_preprocess_refuses_blank_or_control_label_names_in_dataset_json(made, tmp_path, name):
    raw = tmp_path / "raw"
    shutil.copytree(made[0], raw)
    meta = json.loads((raw / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "liver": 1, name: 2}
    (raw / "dataset.json").write_text(json.dumps(meta))
    line = one_line_exit_2(
        run("hiend-data", "preprocess", raw, tmp_path / "cache"),
        str(raw / "dataset.json"),
        "label 2 has name",
    )
    assert "\x1b" not in line and "\x07" not in line
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def test_inspect_refuses_control_characters_in_labels_json_and_prints_markup_as_written(made, tmp_path):
    cache, _ = _cache_with(made, tmp_path, _set())
    labels = cache / "labels.json"
    labels.write_text(json.dumps({"labels": {"1": "\x1b]0;x\x07", "2": "[/bold]"}}))
    line = one_line_exit_2(run("hiend-data", "inspect", cache), str(labels), "label 1", "\\x1b]0;x\\x07")
    assert "\x1b" not in line and "\x07" not in line
    labels.write_text(json.dumps({"labels": {"1": "[/bold]", "2": "a[@click=(]b", "3": "leber é"}}))
    proc = run("hiend-data", "inspect", cache)
    assert proc.returncode == 0, proc.stderr
    assert "labels       1 [/bold], 2 a[@click=(]b, 3 leber é" in proc.stdout


def _manifest_dataset(made, root: Path, case: str) -> Path:
    """A manifest of one labelled case whose image file is ``{case}_0000.nii.gz``."""
    raw = made[0]
    root.mkdir()
    image, label = root / f"{case}_0000.nii.gz", root / f"{case}.nii.gz"
    shutil.copyfile(raw / "imagesTr" / "phantom_000_0000.nii.gz", image)
    shutil.copyfile(raw / "labelsTr" / "phantom_000.nii.gz", label)
    manifest = root / "m.csv"
    manifest.write_text(f"{image.name},{label.name}\n")
    return manifest


def test_a_252_byte_cjk_file_name_preprocesses_and_a_longer_one_is_refused(made, tmp_path):
    case = "肝" * 80  # 240 bytes; the image file's name is 252 bytes, the cache's _seg.npy 248
    manifest = _manifest_dataset(made, tmp_path / "ds", case)
    assert len(f"{case}_0000.nii.gz".encode()) == 252
    cache = tmp_path / "cache"
    proc = run("hiend-data", "preprocess", manifest, cache, "--spacing", "4", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (cache / "cases").iterdir()) == sorted(
        f"{case}{s}" for s in (".json", ".npy", "_cls.npy", "_fg.npy", "_seg.npy")
    )
    assert run("hiend-data", "inspect", cache).returncode == 0
    longer = _manifest_dataset(made, tmp_path / "ds2", "肝" * 81)
    proc = run("hiend-data", "preprocess", longer, tmp_path / "cache2", "--spacing", "4")
    one_line_exit_2(proc, "m.csv", "longer than 240 bytes")
    assert not (tmp_path / "cache2").exists()


#: a full disk for the subprocess: ``os.fsync`` of a temporary file whose name ends in the environment's
#: HIEND_TEST_ENOSPC raises ENOSPC without a file name, as the kernel's does
SITECUSTOMIZE = """
import errno, os
_real = os.fsync
def _fsync(fd):
    try:
        name = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        name = ""
    if name.endswith(os.environ["HIEND_TEST_ENOSPC"]):
        raise OSError(errno.ENOSPC, "No space left on device")
    return _real(fd)
os.fsync = _fsync
"""


@pytest.mark.parametrize(
    ("ending", "output"), [(".tmp.json", "plan.json"), (".tmp.npy", "cases/phantom_000.npy")]
)
def test_a_full_disk_names_the_output_file(made, tmp_path, ending, output):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    cache = tmp_path / "cache"
    proc = run(
        "hiend-data", "preprocess", made[0], cache, "--spacing", "4", "--no-progress",
        env={"PYTHONPATH": str(inject), "HIEND_TEST_ENOSPC": ending},
    )  # fmt: skip
    one_line_exit_2(proc, f"error: {cache / output}: no space left on device")
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name]  # no temporary file left


@pytest.mark.parametrize("below", ["", "sub"])
def test_an_output_below_a_symlink_loop_is_one_line(made, tmp_path, below):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    out = loop / below if below else loop
    one_line_exit_2(
        run("hiend-data", "preprocess", made[0], out, "--spacing", "4"), str(out), "symbolic-link loop"
    )
    one_line_exit_2(run("hiend-data", "phantom", out, "--cases", "1"), str(out), "symbolic-link loop")


# -- more lies: numbers that are not finite, counts that disagree, arrays cut short, labels.json ----


def _replace(old: str, new: str):
    """Edit the metadata's JSON text (for tokens json.dumps would not write, such as ``NaN``)."""

    def change(meta):
        text = json.dumps(meta)
        assert old in text, old
        return text.replace(old, new, 1)

    return change


def _cache_with_text(made, tmp_path, change):
    cache, meta_path = _cache_with(made, tmp_path, _set())
    meta_path.write_text(change(json.loads(meta_path.read_text())))
    return cache, meta_path


def _shift_offsets(meta):
    offsets = meta["class_offsets"]
    offsets[-2], offsets[-1] = offsets[-1], offsets[-2]  # decreasing at the end


def _counts(meta):
    meta["class_counts"] = [1] * len(meta["class_counts"])


def _classes_beyond_dtype(meta):
    meta["classes"][-1] = 70000


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (_replace('"image_scale": 0.00392', '"image_scale": Infinity, "x": 0.00392'), "image_scale"),
        (_replace('"original_affine": [[', '"original_affine": [[NaN, '), "record.original_affine"),
        (_replace('"n_foreground": ', '"n_foreground": 1e400, "was": '), "n_foreground"),
        (lambda m: json.dumps({**m, "spacing_note": float("inf")}), "spacing_note inf is not a finite number"),
        (lambda m: (_shift_offsets(m), json.dumps(m))[1], "class_offsets disagree"),
        (lambda m: (_counts(m), json.dumps(m))[1], "class_counts: class 1 counts 1 voxels but lists"),
        (lambda m: json.dumps({**m, "n_foreground": 5}), "n_foreground 5 is not the sum of class_counts"),
        (lambda m: (_classes_beyond_dtype(m), json.dumps(m))[1], "classes: 70000 cannot be a value of uint8"),
    ],
    ids=["inf-token", "nan-token", "1e400", "inf-extra-field", "offsets-decreasing", "counts-lie",
         "foreground-lie", "class-beyond-dtype"],
)  # fmt: skip
def test_case_metadata_numbers_that_lie(made, tmp_path, change, said):
    """Before: a NaN in the record, class counts that the training loss weights by, a foreground count
    and classes a uint8 label cannot hold were all read as written (exit 0)."""
    cache, meta_path = _cache_with_text(made, tmp_path, change)
    for command in (["inspect", cache], ["bench", cache, "--seconds", "0.1"]):
        one_line_exit_2(run("hiend-data", *command), str(meta_path), said)


@pytest.mark.parametrize("how", ["huge-shape", "cut-short", "longer"])
def test_a_npy_whose_header_claims_other_bytes(made, tmp_path, how):
    """A header claiming a 4-GiB shape (the metadata agreeing), or data cut short: before, inspect said
    nothing and bench died in a memory map with a traceback."""
    cache, meta_path = _cache_with(made, tmp_path, _set())
    npy = cache / "cases" / "phantom_000.npy"
    meta = json.loads(meta_path.read_text())
    if how == "huge-shape":
        shape = (1, 2048, 2048, 1024)
        header = {"descr": "|u1", "fortran_order": False, "shape": shape}
        with open(npy, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            fh.write(b"\0" * 1000)
        meta["shape"] = list(shape[1:])  # the metadata agrees (the record's crop box too)
        start = meta["record"]["crop_start"]
        meta["record"]["crop_stop"] = [a + n for a, n in zip(start, shape[1:], strict=True)]
        meta_path.write_text(json.dumps(meta))
    else:
        data = npy.read_bytes()
        npy.write_bytes(data[:-100] if how == "cut-short" else data + b"\0" * 100)
    for command in (["inspect", cache], ["bench", cache, "--seconds", "0.1"]):
        one_line_exit_2(run("hiend-data", *command), "phantom_000.npy: its header claims uint8")


@pytest.mark.parametrize(
    ("labels", "said"),
    [
        ({str(v): f"l{v}" for v in range(1, 70_001)}, "label value 65536 is above 65535"),
        ({"01": "liver"}, "label key '01'"),
        ({"1.0": "liver"}, "label key '1.0'"),
        ({"-1": "liver"}, "label key '-1'"),
        ({"1": "liver", "2": "liver"}, "labels 1 and 2 are both named 'liver'"),
        ({"9" * 5000: "liver"}, "label value 999"),
    ],
    ids=["70000-labels", "leading-zero", "float", "negative", "same-name", "5000-digits"],
)
def test_labels_json_values_that_are_not_label_values(made, tmp_path, labels, said):
    cache, _ = _cache_with(made, tmp_path, _set())
    (cache / "labels.json").write_text(json.dumps({"labels": labels}))
    one_line_exit_2(run("hiend-data", "inspect", cache), str(cache / "labels.json"), said)


def test_preprocess_refuses_a_scan_with_neither_qform_nor_sform(made, tmp_path):
    """Both codes 0: the orientation is nibabel's guess (left/right may swap): refused, nothing cached."""
    import nibabel as nib

    raw = tmp_path / "raw"
    shutil.copytree(made[0], raw)
    scan = raw / "imagesTr" / "phantom_000_0000.nii.gz"
    src = nib.load(str(scan))
    img = nib.Nifti1Image(np.asarray(src.dataobj), None)
    img.header.set_qform(src.affine, code=0)
    img.header.set_sform(src.affine, code=0)
    nib.save(img, str(scan))
    proc = run("hiend-data", "preprocess", raw, tmp_path / "cache", "--spacing", "4", "--no-progress")
    one_line_exit_2(proc, "phantom_000_0000.nii.gz: neither a qform nor an sform is set")
    assert not list((tmp_path / "cache").glob("cases/*.json"))
