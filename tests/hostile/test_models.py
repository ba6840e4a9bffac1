"""Hostile models and outputs (issue 18), all through ``hiend-model predict`` / ``hiend-model info``:
checkpoints whose weights hold NaN or inf, ensembles whose members disagree on what a class means, an
output folder inside the DICOM input, SIGTERM while the outputs are written, option values out of range,
an ``--out`` that is a symbolic-link loop, and names or metadata that would drive the terminal.

Each refusal: exit 2, one line on stderr naming the file or value, no traceback, nothing written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hostile_cli import BIN, one_line_exit_2, run, tiny_plan, tiny_unetr
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from hiend_data.phantom import make_phantom_dataset
from hiend_model.checkpoint import save_checkpoint
from hiend_model.cli import app
from hiend_model.mae import build
from hiend_model.unetr import UNETR

ROOT = Path(__file__).resolve().parents[2]
PLAN = tiny_plan()


def cli(*args: object):
    """The command in this process (each class of fault also runs once through the console script)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def script(*args: object):
    """The command as a user runs it: the installed console script in a subprocess."""
    return run("hiend-model", *args)


def _unetr(num_classes: int = 3) -> UNETR:
    return tiny_unetr(num_classes)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models") / "raw"
    make_phantom_dataset(root, cases=2, seed=5, test_cases=1)
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(
        folder / "u.safetensors", _unetr(), plan=PLAN, extra={"labels": {"1": "liver", "2": "spine"}}
    )


def _corrupt(src: Path, dst: Path, change) -> Path:
    """``dst``: ``src`` with its tensors changed by ``change(name, tensor)`` (metadata kept)."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        metadata = fh.metadata()
    tensors = {k: change(k, v.clone()) for k, v in load_file(str(src)).items()}
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- 1. weights that hold NaN or inf -------------------------------------------------------------


def _head_nan(name, t):
    return t.fill_(float("nan")) if name.startswith("out.") else t


def _all_inf(name, t):
    return t.fill_(float("inf")) if t.is_floating_point() else t


def _one_nan(name, t):
    if name == "encoder.blocks.2.attn.qkv.weight":
        t.view(-1)[7] = float("nan")
    return t


@pytest.mark.parametrize(
    ("change", "tensor", "count", "how"),
    [
        (_head_nan, "'out.bias'", "3 of its 3 values are NaN or inf", script),
        (_all_inf, "'", "values are NaN or inf", cli),
        (_one_nan, "'encoder.blocks.2.attn.qkv.weight'", "1 of its 1728 values are NaN or inf", cli),
    ],
    ids=["head-nan", "all-inf", "one-nan-deep-inside"],
)
def test_weights_with_nan_or_inf_are_refused(ckpt, phantom, tmp_path, change, tensor, count, how):
    bad = _corrupt(ckpt, tmp_path / "bad.safetensors", change)
    out = tmp_path / "pred"
    line = one_line_exit_2(
        how("predict", bad, phantom / "imagesTs", "--out", out, "-q"), "bad.safetensors", tensor, count
    )
    assert ("more tensor" in line) == (change is not _one_nan)
    assert not out.exists()
    one_line_exit_2(how("info", bad), "bad.safetensors", tensor, count)
    # as one member of an ensemble, too
    one_line_exit_2(
        cli("predict", ckpt, bad, phantom / "imagesTs", "--out", out, "-q"), "bad.safetensors", tensor
    )
    assert not out.exists()


# -- 2. ensembles whose members disagree ---------------------------------------------------------


def test_ensemble_members_must_mean_the_same_classes(ckpt, phantom, tmp_path):
    model, out = _unetr(), tmp_path / "pred"
    swapped = save_checkpoint(tmp_path / "swapped.safetensors", model, plan=PLAN, extra={"labels": {"1": "spine", "2": "liver"}})  # fmt: skip
    line = one_line_exit_2(
        script("predict", ckpt, swapped, phantom / "imagesTs", "--out", out, "-q"),
        "u.safetensors",
        "swapped.safetensors",
        "label 1 'liver' vs 'spine'",
    )
    assert "label 2" not in line  # the first disagreeing label
    fewer = save_checkpoint(
        tmp_path / "fewer.safetensors", model, plan=PLAN, extra={"labels": {"1": "liver"}}
    )
    one_line_exit_2(
        cli("predict", ckpt, fewer, phantom / "imagesTs", "--out", out, "-q"),
        "label 2 'spine' vs none",
    )
    four = save_checkpoint(tmp_path / "four.safetensors", _unetr(num_classes=4), plan=PLAN)
    one_line_exit_2(
        cli("predict", ckpt, four, phantom / "imagesTs", "--out", out, "-q"),
        "num_classes 3 vs 4",
    )
    coarse = save_checkpoint(tmp_path / "coarse.safetensors", model, plan=PLAN.model_copy(update={"spacing": (8.0, 8.0, 8.0)}))  # fmt: skip
    one_line_exit_2(cli("predict", ckpt, coarse, phantom / "imagesTs", "--out", out, "-q"), "plan spacing")
    window = save_checkpoint(tmp_path / "window.safetensors", model, plan=PLAN.model_copy(update={"window": (-1000.0, 1000.0)}))  # fmt: skip
    one_line_exit_2(cli("predict", ckpt, window, phantom / "imagesTs", "--out", out, "-q"), "plan window")
    assert not out.exists()


# -- 3. an output folder that is, or lies inside, an input folder --------------------------------


def _write_series(volume: Path, folder: Path) -> Path:
    spec = importlib.util.spec_from_file_location(
        "hiend_dicom_test", ROOT / "packages/hiend-data/tests/test_dicom.py"
    )
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    img = nib.load(str(volume))
    hu = np.asarray(img.dataobj)[::4, ::4, ::4].astype(np.int16)
    affine = np.asarray(img.affine, dtype=np.float64) @ np.diag([4.0, 4.0, 4.0, 1.0])
    return helpers.write_series(hu, affine, folder, seed=1)


def test_output_folder_inside_a_dicom_input_is_refused(ckpt, phantom, tmp_path):
    pytest.importorskip("pydicom")
    study = tmp_path / "study"
    series = _write_series(phantom / "imagesTs" / "phantom_002_0000.nii.gz", study / "patient" / "CT")
    before = tree(study)
    (tmp_path / "link").symlink_to(series)
    for args, out in [
        ((series,), series),  # predict series/ --out series/
        ((series,), series / "labels"),
        ((study,), study),  # a folder of series folders: searched to the bottom
        ((study,), study / "patient" / "labels"),
        ((series,), tmp_path / "link" / "labels"),  # inside, through a symlink
        ((tmp_path / "link",), series),
    ]:
        how = script if out == series else cli
        one_line_exit_2(how("predict", ckpt, *args, "--out", out, "-q"), f"--out {out}", "input folder")
    assert tree(study) == before
    # a folder of NIfTI scans: not the folder itself (its label maps would join the scans)
    one_line_exit_2(
        cli("predict", ckpt, phantom / "imagesTs", "--out", phantom / "imagesTs", "-q"), "is the input folder"
    )
    assert sorted(p.name for p in (phantom / "imagesTs").iterdir()) == ["phantom_002_0000.nii.gz"]
    # the same series segments into a folder beside it
    ok = cli("predict", ckpt, study, "--out", tmp_path / "labels", "-q")
    assert ok.exit_code == 0, ok.stderr
    assert ok.stdout.split() == [str(tmp_path / "labels" / "CT.nii.gz")]


# -- 4. SIGTERM while predicting -----------------------------------------------------------------


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp" in p.name] if folder.is_dir() else []


def _reached(out: Path, when: str) -> bool:
    """Whether predict writing to ``out`` is at the moment ``when``: its folder made (the model
    running), a temporary output being written (bytes in it: inside the atomic writer's block), the
    same after a first output is complete."""
    if not out.is_dir():
        return False
    if when == "out-created":
        return True
    entries = list(os.scandir(out))
    writing = any(".tmp" in e.name and e.stat().st_size > 0 for e in entries)
    done = any(e.name.endswith(".nii.gz") and not e.name.startswith(".") for e in entries)
    return writing and (done or when == "first-write")


@pytest.mark.parametrize("when", ["out-created", "first-write", "later-write"])
def test_sigterm_leaves_no_temporary_and_says_so(ckpt, phantom, tmp_path, when):
    out = tmp_path / "pred"
    args = ["predict", ckpt, phantom / "imagesTr", phantom / "imagesTs", "--out", out, "-q"]
    proc = subprocess.Popen(
        [str(BIN / "hiend-model"), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and not _reached(out, when):
            time.sleep(0.001)
        assert proc.poll() is None, f"predict ended before the moment {when!r}: {proc.stderr.read()}"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, (proc.returncode, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "terminated (SIGTERM)" in lines[0] and "Traceback" not in stderr, stderr
    assert _temporaries(out) == []
    written = sorted(out.iterdir())
    for path in written:  # whatever is there is a whole label map, and printed as written
        assert path.name.endswith(".nii.gz") and not path.name.startswith("."), path
        scan = next(phantom.glob(f"images*/{path.name[: -len('.nii.gz')]}_0000.nii.gz"))
        assert np.asarray(nib.load(str(path)).dataobj).shape == nib.load(str(scan)).shape
    assert stdout == ""  # the paths are printed at the end, after every case
    if when == "later-write":
        assert written, "the output completed before the signal is gone"


# -- 5. option values out of range: one line, not the usage box -----------------------------------


@pytest.mark.parametrize(
    ("args", "fragments", "how"),
    [
        (("--overlap", "1"), ("--overlap 1.0:", "[0, 1)"), script),
        (("--overlap", "-0.5"), ("--overlap -0.5:",), cli),
        (("--overlap", "nan"), ("--overlap nan:",), cli),
        (("--overlap", "inf"), ("--overlap inf:",), cli),
        (("--overlap", "abc"), ("--overlap 'abc':", "valid number"), cli),
        (("--sw-batch", "0"), ("--sw-batch 0:",), cli),
        (("--sw-batch=1.5",), ("--sw-batch '1.5':", "valid integer"), script),
        (("--min-component", "nan"), ("--min-component nan:",), cli),
        (("--format", "png"), ("--format 'png'",), cli),
        (("--bogus",), ("no such option: --bogus",), cli),
    ],
)
def test_bad_option_values_are_one_line(ckpt, phantom, tmp_path, args, fragments, how):
    out = tmp_path / "pred"
    proc = how("predict", ckpt, phantom / "imagesTs", "--out", out, "-q", *args)
    line = one_line_exit_2(proc, *fragments)
    assert line.startswith("error: ") and "Usage" not in proc.stderr and not out.exists()


def test_convert_option_values_are_one_line(tmp_path):
    one_line_exit_2(
        cli("convert", "a.pth", "b.safetensors", "--from", "timm"), "--from 'timm'", "official-pretrain"
    )
    args = ("convert", "a.pth", "b.safetensors", "--from", "official-pretrain")
    one_line_exit_2(cli(*args, "--num-heads", "0"), "--num-heads 0:")
    one_line_exit_2(cli(*args, "--decoder-num-heads", "-2"), "--decoder-num-heads -2:")


# -- 6. an --out that is a symbolic-link loop ----------------------------------------------------


def test_out_that_is_a_symlink_loop(ckpt, phantom, tmp_path):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for out, how in (
        (tmp_path / "loop", script),
        (tmp_path / "a" / "sub", cli),
        (tmp_path / "loop" / "x", cli),
    ):
        one_line_exit_2(
            how("predict", ckpt, phantom / "imagesTs", "--out", out, "-q"), f"{out}: a symbolic-link loop"
        )
    # an output file inside --out that is a loop
    out = tmp_path / "pred"
    out.mkdir()
    (out / "phantom_002.nii.gz").symlink_to(out / "phantom_002.nii.gz")
    one_line_exit_2(
        cli("predict", ckpt, phantom / "imagesTs", "--out", out, "-q"),
        "phantom_002.nii.gz: a symbolic-link loop",
    )
    assert [p.name for p in out.iterdir()] == ["phantom_002.nii.gz"]


# -- 7. names and metadata that would drive the terminal -----------------------------------------


def test_info_shows_control_characters_and_markup_as_written(tmp_path):
    model = _unetr()
    evil = save_checkpoint(
        tmp_path / "evil.safetensors",
        model,
        plan=PLAN,
        extra={
            "labels": {"1": "[/bold]", "2": "[red]x"},
            "note": "\x1b]0;pwned\x07\x1b[2J",
            "why\x1b[31m": "k",
        },
    )
    # metadata written by someone else: the config and versions carry escapes too
    from safetensors import safe_open

    with safe_open(str(evil), framework="pt") as fh:
        meta = fh.metadata()
    meta["versions"] = json.dumps({"hiend-model": "\x1b[5mblink\x9b"})
    save_file(load_file(str(evil)), str(evil), metadata=meta)
    proc = script("info", evil)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert not any(c in proc.stdout for c in "\x1b\x07\x9b")
    assert "1 [/bold], 2 [red]x" in proc.stdout
    assert "note: \\x1b]0;pwned\\x07\\x1b[2J" in proc.stdout and "why\\x1b[31m: k" in proc.stdout
    assert "hiend-model \\x1b[5mblink\\x9b" in proc.stdout
    as_json = cli("info", evil, "--json")
    assert "\x1b" not in as_json.stdout and json.loads(as_json.stdout)["extra"]["note"].startswith("\x1b]0;")


@pytest.mark.parametrize(("name", "how"), [("a[@click=(]b", script), ("[bold]x", cli), ("y[red]", cli)])
def test_file_names_print_as_written(ckpt, phantom, tmp_path, name, how):
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / f"{name}_0000.nii.gz").symlink_to(phantom / "imagesTs" / "phantom_002_0000.nii.gz")
    out = tmp_path / "o\x1b[2Jut"
    proc = how("predict", ckpt, scans, "--out", out)  # with the progress bar
    assert (
        getattr(proc, "returncode", getattr(proc, "exit_code", None)) == 0 and "Traceback" not in proc.stderr
    ), proc.stderr
    assert f"] {name}: done" in proc.stderr  # the bar's description, markup shown as written
    assert proc.stdout.strip() == str(tmp_path / "o\\x1b[2Jut" / f"{name}.nii.gz")
    assert (out / f"{name}.nii.gz").is_file()


def test_convert_refuses_the_papers_checkpoint_with_nan(tmp_path):
    from hiend_model.official import export_official_finetuned

    model = _unetr()
    state = export_official_finetuned(model, wrap=True)
    next(v for v in state["state_dict"].values() if v.is_floating_point()).view(-1)[5] = float("nan")
    pth = tmp_path / "paper.pth"
    torch.save(state, pth)
    proc = script(
        "convert", pth, tmp_path / "ours.safetensors", "--from", "official-finetune", "--num-heads", 2
    )
    one_line_exit_2(proc, "paper.pth: tensor", "1 of its")
    assert not (tmp_path / "ours.safetensors").exists()


# -- 8. checkpoint metadata that lies in other ways ------------------------------------------------


def _with_metadata(src: Path, dst: Path, **fields: str) -> Path:
    """``dst``: ``src`` with metadata entries replaced by raw JSON text (``plan='{"window": ...}'``)."""
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata()
    for key, text in fields.items():
        top, _, sub = key.partition("__")
        if sub:
            whole = json.loads(meta[top])
            whole[sub] = json.loads(text)
            text = json.dumps(whole)
        meta[top] = text
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"plan__spacing": "[0, 6, 6]"}, "spacing (0.0, 6.0, 6.0) must be finite and > 0"),
        ({"plan__spacing": "[NaN, 6, 6]"}, "metadata 'plan'"),  # (the Plan's own rule)
        ({"plan__window": "[250, -175]"}, "low must be below high"),
        ({"plan__window": "[-Infinity, Infinity]"}, "metadata 'plan'"),
        ({"plan__window": "[-1e308, 1e308]"}, "beyond +-1e+06 HU"),
        ({"config__num_classes": "0"}, "metadata 'config': invalid UNETRConfig: num_classes=0"),
        ({"config__num_classes": "1000000"}, "1000000"),
        ({"config__in_chans": "2"}, "encoder.patch_embed.proj.weight"),
        ({"extra__labels": '{"01": "liver"}'}, "label key '01'"),
        ({"extra__labels": '{"1": "liver", "2": "liver"}'}, "labels 1 and 2 are both named 'liver'"),
        ({"extra__labels": '{"7": "liver"}'}, "label value(s) [7] are not foreground classes"),
        ({"extra__labels": '{"1": "li\\u001b[2Jver"}'}, "'li\\x1b[2Jver', which holds a control"),
        ({"extra": '"text"'}, "metadata 'extra' is a JSON str, expected an object"),
        ({"versions": "[1, 2]"}, "metadata 'versions' is a JSON list, expected an object"),
    ],
    ids=[
        "spacing-0", "spacing-nan", "window-reversed", "window-inf", "window-huge", "classes-0",
        "classes-1e6", "in-chans", "label-key-01", "label-name-twice", "label-beyond-classes",
        "label-esc", "extra-not-object", "versions-not-object",
    ],
)  # fmt: skip
def test_checkpoint_metadata_that_lies(ckpt, phantom, tmp_path, fields, said):
    """predict and info: one line naming the file (before: info tracebacks for a non-object extra or
    versions; a window of +-1e308 blamed the scan, after numpy overflow warnings)."""
    bad = _with_metadata(ckpt, tmp_path / "lying.safetensors", **fields)
    out = tmp_path / "pred"
    one_line_exit_2(
        script("predict", bad, phantom / "imagesTs", "--out", out, "-q"), "lying.safetensors", said
    )
    assert not out.exists()
    if "foreground classes" not in said:  # (info does not compare names with the classes)
        proc = cli("info", bad, "--json") if "x1b" in said else script("info", bad)
        one_line_exit_2(proc, "lying.safetensors", said)


@pytest.mark.parametrize("classes", [1, 70000])
def test_models_whose_class_count_cannot_make_a_label_map(phantom, tmp_path, classes):
    """One class labels every voxel background; more than 65,536 would wrap in a uint16 label map."""
    torch.manual_seed(0)
    mae = build("tiny", img_size=32, patch_size=16, embed_dim=24, depth=4, num_heads=2, decoder_embed_dim=24,
                decoder_num_heads=2)  # fmt: skip
    model = UNETR.from_mae(mae, num_classes=classes, feature_size=4)
    path = save_checkpoint(tmp_path / f"c{classes}.safetensors", model, plan=PLAN)
    out = tmp_path / "pred"
    one_line_exit_2(
        script("predict", path, phantom / "imagesTs", "--out", out, "-q"),
        f"c{classes}.safetensors",
        f"a model of {classes} classes cannot segment",
    )
    assert not out.exists()


# -- 9. weights of other dtypes, ensembles with a pre-training member, devices --------------------


def _cast(dtype, value):
    def change(name, t):
        t = t.to(dtype) if t.is_floating_point() else t
        if name == "out.bias":
            t[0] = value
        return t

    return change


@pytest.mark.parametrize(
    ("dtype", "value", "said"),
    [
        (torch.float16, float("inf"), "1 of its 3 values are NaN or inf"),
        (torch.bfloat16, float("-inf"), "1 of its 3 values are NaN or inf"),
        (torch.bfloat16, float("nan"), "1 of its 3 values are NaN or inf"),
        (torch.float64, 1e300, "1 of its 3 values are beyond the range of float32"),
    ],
    ids=["float16-inf", "bfloat16-minus-inf", "bfloat16-nan", "float64-beyond-float32"],
)
def test_weights_of_other_dtypes(ckpt, phantom, tmp_path, dtype, value, said):
    """A float64 1e300 is finite in the file but inf in the float32 model: before, info said nothing
    and predict called it NaN or inf; now both say what it is."""
    bad = _corrupt(ckpt, tmp_path / "wide.safetensors", _cast(dtype, value))
    out = tmp_path / "pred"
    one_line_exit_2(script("info", bad), "wide.safetensors: tensor 'out.bias'", said)
    one_line_exit_2(cli("predict", bad, phantom / "imagesTs", "--out", out, "-q"), "'out.bias'", said)
    assert not out.exists()


def test_pretraining_checkpoint_in_an_ensemble(ckpt, phantom, tmp_path):
    torch.manual_seed(0)
    mae = build("tiny", img_size=32, patch_size=16, embed_dim=24, depth=4, num_heads=2, decoder_embed_dim=24,
                decoder_num_heads=2)  # fmt: skip
    pre = save_checkpoint(tmp_path / "mae.safetensors", mae, plan=PLAN)
    out = tmp_path / "pred"
    for args in ((ckpt, pre), (pre, ckpt)):
        one_line_exit_2(
            script("predict", *args, phantom / "imagesTs", "--out", out, "-q"),
            "mae.safetensors: expected a unetr checkpoint, got mae",
        )
    assert not out.exists()


@pytest.mark.parametrize("device", ["cuda:99", "cuda:-1", "cuda:\uff11", "gpu", "cpu\x1b[2J"])
def test_devices_that_are_not_there(ckpt, phantom, tmp_path, device):
    out = tmp_path / "pred"
    proc = script("predict", ckpt, phantom / "imagesTs", "--out", out, "-q", "--device", device)
    line = one_line_exit_2(proc, "device '")
    assert "\x1b" not in line and not out.exists()


# -- 10. an output folder that holds an input file ------------------------------------------------


def test_output_folder_holding_an_input_file(ckpt, phantom, tmp_path):
    """``predict m scans/a_0000.nii.gz --out scans``: a.nii.gz would join the scans (the next run on
    the folder would read the label map as a scan); the same through a symlink or ``..``."""
    scans = tmp_path / "scans"
    scans.mkdir()
    scan = scans / "phantom_002_0000.nii.gz"
    scan.write_bytes((phantom / "imagesTs" / "phantom_002_0000.nii.gz").read_bytes())
    (tmp_path / "link").symlink_to(scans)
    for out, how in ((scans, script), (scans / ".." / "scans", cli), (tmp_path / "link", cli)):
        one_line_exit_2(
            how("predict", ckpt, scan, "--out", out, "-q"), f"--out {out}", "folder holding the input"
        )
    assert [p.name for p in scans.iterdir()] == ["phantom_002_0000.nii.gz"]
    ok = cli("predict", ckpt, scan, "--out", scans / "labels", "-q")  # a subfolder is fine
    assert ok.exit_code == 0 and (scans / "labels" / "phantom_002.nii.gz").is_file(), ok.stderr


# -- 11. a NIfTI scan that does not say where its voxels lie ---------------------------------------


@pytest.mark.parametrize(
    ("qform", "sform"), [(0, 0), (1, 0), (0, 2)], ids=["none", "qform-only", "sform-only"]
)
def test_scan_whose_header_sets_no_form(ckpt, phantom, tmp_path, qform, sform):
    """Both codes 0: nibabel's fallback guesses the orientation (left/right may swap): refused. One form
    set is enough, and the label map keeps the input's forms."""
    src = nib.load(str(phantom / "imagesTs" / "phantom_002_0000.nii.gz"))
    img = nib.Nifti1Image(np.asarray(src.dataobj), None)
    img.header.set_qform(src.affine, code=qform)
    img.header.set_sform(src.affine, code=sform)
    scans = tmp_path / "scans"
    scans.mkdir()
    nib.save(img, str(scans / "x_0000.nii.gz"))
    out = tmp_path / "pred"
    proc = script("predict", ckpt, scans, "--out", out, "-q")
    if qform == sform == 0:
        one_line_exit_2(proc, "x_0000.nii.gz: neither a qform nor an sform is set")
        assert not out.exists()
        return
    assert proc.returncode == 0, proc.stderr
    hdr = nib.load(str(out / "x.nii.gz")).header
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (qform, sform)
