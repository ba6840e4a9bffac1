"""Segment whole scans with a UNETR checkpoint: files in, label maps on the inputs' own grids out.

For every scan: :func:`hiend_data.preprocess_case` with the checkpoint's plan (reorient, resample,
normalise, crop to the foreground) -> :func:`~hiend_model.inference.sliding_window_logits` (float32
logits ``[K, X', Y', Z']`` in preprocessed space) -> per-voxel argmax (in slabs) ->
:func:`hiend_data.restore_label` back to the original grid -> ``save_volume(like=input)``.

Ensembles (several checkpoints, e.g. the K folds of a cross-validated fine-tuning): the scan is
preprocessed once with the members' shared plan, each member's sliding-window logits are softmaxed and
summed into one running float32 buffer (one member's logits held at a time), the mean is argmaxed.
One member takes exactly the single-model path (argmax of its logits).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hiend_data import load_volume, preprocess_case, restore_label, save_volume
from hiend_data.dicom import series_headers
from hiend_data.discovery import unique_ids
from hiend_data.errors import InputError, markup
from hiend_data.io import check_oriented
from hiend_data.naming import (
    ChannelGroup,
    check_unique,
    dicom_case_name,
    dicom_folders,
    group_channels,
    is_dicom_source,
    is_image,
    path_inside,
    safe_case_name,
)

from .__about__ import __version__
from .checkpoint import load_checkpoint, read_checkpoint_info
from .device import resolve_device
from .inference import argmax_labels, label_dtype, sliding_window_logits
from .postprocess import clean_components, parse_keep_largest

#: One scan to segment: output name (``{name}.nii.gz``) and its channel files in channel order
#: (:func:`hiend_data.naming.group_channels`' groups).
ScanCase = ChannelGroup


def collect_cases(inputs: Sequence[str | os.PathLike[str]]) -> list[ScanCase]:
    """Scans named by files and folders: NIfTI files, a folder's own ``.nii``/``.nii.gz`` files (not its
    subfolders), and DICOM series (``hiend-data[dicom]``).

    nnU-Net channel files ``{case}_0000``, ``{case}_0001``, ... in one folder form one scan named
    ``{case}``; a ``_dddd`` name without a ``_0000`` sibling is a scan of its own, named in full
    (:mod:`hiend_data.naming`, the rule every hiend package uses). DICOM: a folder that holds no NIfTI
    files is searched for series folders (:func:`hiend_data.naming.dicom_folders`: each folder directly
    holding DICOM files is one scan, named by the folder, and each ``.zip`` of a series one scan;
    colliding names are prefixed by their parent folders, ``patient1__CT``, as in discovery); a
    ``.zip`` or a multi-frame DICOM file is one scan named by its file name without the suffix.
    Raises InputError for a missing path, a file that is neither, a folder with neither, channels with
    gaps, and two scans that would be written to the same output name.
    """
    if not inputs:
        raise InputError("no input scans given")
    files: list[Path] = []
    series: list[ScanCase] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.is_file() and is_image(f))
            if found:
                files += found
                continue
            folders = dicom_folders(path)
            if not folders:
                raise InputError(f"{path}: folder holds no .nii/.nii.gz files and no DICOM series")
            # named by the folder (a zip by its name), prefixed by parent folders where names collide
            # (patient1/CT, patient2/CT -> patient1__CT, patient2__CT): discovery's rule
            keys = [(f.relative_to(path).parent, dicom_case_name(f)) for f in folders]
            series += [ScanCase(n, (f,)) for n, f in zip(unique_ids(keys, path), folders, strict=True)]
        elif path.is_file():
            if is_image(path):
                files.append(path)
            elif is_dicom_source(path):
                series.append(ScanCase(dicom_case_name(path), (path,)))
            else:
                raise InputError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz) nor DICOM")
        else:
            raise InputError(f"{path}: no such file or folder")
    cases = group_channels(files) + series  # the one case-naming rule (hiend_data.naming)
    for case in cases:  # output names come from input file names: one plain file name each
        safe_case_name(case.name, case.files[0])
    check_unique([case.name for case in cases], "the inputs' output names")
    seen: dict[str, ScanCase] = {}
    for case in cases:
        if case.name in seen:
            raise InputError(
                f"{case.files[0]} and {seen[case.name].files[0]} would both be written as "
                f"{case.name}.nii.gz: segment them into different output folders"
            )
        seen[case.name] = case
    return cases


CHECKPOINT_SUFFIX = ".safetensors"

#: The plan fields that change what a model sees; members of an ensemble must agree on them
#: (``window`` only matters, and is only compared, for CT). ``crop_size`` may differ: each member slides
#: its own window (its ``img_size``).
PREPROCESSING_FIELDS = ("orientation", "spacing", "modality", "window", "crop_to_foreground")


def split_checkpoint_args(args: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """``CKPT1 [CKPT2 ...] INPUT...`` -> (checkpoints, inputs).

    The first argument is always a checkpoint; the arguments after it whose names end with
    ``.safetensors`` are further ensemble members, up to the first one that does not, which is the first
    input. A ``.safetensors`` name after that is an InputError (checkpoints go before the inputs), and so
    is a command line without inputs.
    """
    paths = [Path(a) for a in args]
    if not paths:
        raise InputError("no checkpoint given")
    n = 1
    while n < len(paths) and paths[n].name.lower().endswith(CHECKPOINT_SUFFIX):
        n += 1
    ckpts, inputs = paths[:n], paths[n:]
    if not inputs:
        raise InputError(f"{ckpts[-1]}: no input scans given after the checkpoint(s)")
    for p in inputs:
        if p.name.lower().endswith(CHECKPOINT_SUFFIX):
            raise InputError(
                f"{p}: a checkpoint after the first input {inputs[0]}; name every ensemble "
                "checkpoint before the inputs"
            )
    return ckpts, inputs


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return str(list(value))
    return repr(value) if isinstance(value, str) else str(value)


def plan_differences(a: Any, b: Any) -> list[str]:
    """``"spacing [1.5, 1.5, 1.5] vs [3.0, 3.0, 3.0]"`` for every preprocessing field two plans differ in.

    Only :data:`PREPROCESSING_FIELDS` are compared (``window`` only when either plan is CT); values must
    be equal, not close: the members must see the same preprocessed image.
    """
    out = []
    for name in PREPROCESSING_FIELDS:
        if name == "window" and a.modality != "ct" and b.modality != "ct":
            continue
        va, vb = getattr(a, name), getattr(b, name)
        if va != vb:
            out.append(f"plan {name} {_show(va)} vs {_show(vb)}")
    return out


def _member_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [
        f"{key} {a.get(key)} vs {b.get(key)}"
        for key in ("num_classes", "in_chans")
        if a.get(key) != b.get(key)
    ]


def label_differences(a: dict[int, str] | None, b: dict[int, str] | None) -> list[str]:
    """``"label 1 'liver' vs 'spine'"`` for the first label value two members name differently.

    A member that carries no names (None) agrees with any; between two that do, every value either
    names must carry the same name in both (a value one leaves unnamed shows as ``none``): the same
    class index must mean the same structure, or their probabilities cannot be averaged."""
    if a is None or b is None:
        return []
    for value in sorted(set(a) | set(b)):
        if a.get(value) != b.get(value):
            na, nb = (repr(n) if n is not None else "none" for n in (a.get(value), b.get(value)))
            return [f"label {value} {na} vs {nb}"]
    return []


def check_ensemble(infos: Sequence[Any]) -> None:
    """InputError unless every checkpoint (:class:`CheckpointInfo`) can be averaged with the first.

    Checked: a plan present, equal ``num_classes`` and ``in_chans``, equal preprocessing
    (:func:`plan_differences`: orientation, spacing, modality, CT window, cropping) and the same label
    names where both carry them (:func:`label_differences`). The message names both files and every
    difference (the first disagreeing label).
    """
    for info in infos:
        if info.plan is None:
            raise InputError(
                f"{info.path}: checkpoint has no preprocessing plan; re-save it with "
                "save_checkpoint(..., plan=Plan(...))"
            )
    first = infos[0]
    for other in infos[1:]:
        diffs = _member_differences(first.config, other.config) + plan_differences(first.plan, other.plan)
        diffs += label_differences(getattr(first, "label_names", None), getattr(other, "label_names", None))
        if diffs:
            raise InputError(f"{first.path} and {other.path} cannot be ensembled: " + "; ".join(diffs))


def _model_roi(model: Any, plan: Any) -> tuple[int, int, int]:
    config = getattr(model, "config", None)
    size = getattr(config, "img_size", None) or (plan.crop_size if plan is not None else None)
    if size is None:
        raise ValueError(f"{type(model).__name__} has no config.img_size and no plan gives a crop_size")
    return tuple(int(s) for s in size)  # type: ignore[return-value]


def _num_classes(model: Any) -> int | None:
    return getattr(getattr(model, "config", None), "num_classes", None)


def _in_chans(model: Any) -> int | None:
    return getattr(getattr(model, "config", None), "in_chans", None)


def _members(models: Any) -> list[Any]:
    """A list of ensemble members from a sequence of models (a lone model counts as one member)."""
    if isinstance(models, torch.nn.ModuleList):
        members = list(models)
    elif callable(models):  # one model (an nn.Sequential is a model, not a list of members)
        members = [models]
    else:
        members = list(models)
    if not members:
        raise InputError("an ensemble needs at least one model")
    for i, m in enumerate(members[1:], 2):
        for what, get in (("num_classes", _num_classes), ("in_chans", _in_chans)):
            a, b = get(members[0]), get(m)
            if a is not None and b is not None and a != b:
                raise InputError(f"ensemble members 1 and {i} cannot be averaged: {what} {a} vs {b}")
    return members


def _softmax_into(logits: Any, total: Any = None, max_chunk_bytes: int = 256 * 2**20) -> Any:
    """Softmax over the classes of ``logits`` [K, X, Y, Z], in slabs along X (bounded temporaries).

    ``total`` None: in place (returns ``logits``, now probabilities); else added to ``total`` (returned).
    """
    plane = max(int(logits[:, 0].numel()), 1)
    step = max(1, min(logits.shape[1], max_chunk_bytes // (4 * plane)))
    for i in range(0, logits.shape[1], step):
        p = torch.softmax(logits[:, i : i + step], dim=0)
        if total is None:
            logits[:, i : i + step] = p
        else:
            total[:, i : i + step] += p
        del p
    return logits if total is None else total


def _ensemble_progress(
    progress: Callable[[int, int], None] | None, member: int, members: int, offset: list[int]
) -> Callable[[int, int], None] | None:
    """Windows done over all members (the remaining members assumed to need as many windows)."""
    if progress is None or members == 1:
        return progress

    def step(done: int, total: int) -> None:
        progress(offset[0] + done, offset[0] + total * (members - member))
        if done == total:
            offset[0] += total

    return step


def ensemble_probabilities(
    models: Sequence[Any],
    image: Any,
    plan: Any = None,
    *,
    overlap: float = 0.5,
    tta: bool | Sequence[Sequence[int]] = False,
    sw_batch_size: int = 1,
    device: Any = None,
    amp: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Mean softmax probabilities of several models over one preprocessed volume.

    Args:
        models: the members (a lone model is one member); each slides its own window
            (``config.img_size``, else ``plan.crop_size``). They must agree on the number of classes.
        image: the preprocessed volume, a float tensor ``[C, X', Y', Z']``.
        plan: the shared plan (only its ``crop_size`` is read, for members without ``img_size``).
        overlap, tta, sw_batch_size, device, amp, progress: see :func:`sliding_window_logits`
            (``progress`` counts the windows of all members together).

    Returns:
        float32 CPU tensor ``[K, X', Y', Z']``: ``mean_m softmax(logits_m)``. Memory: one running sum
        plus one member's logits at a time.
    """
    members = _members(models)
    total = None
    offset = [0]
    for m, model in enumerate(members):
        logits = sliding_window_logits(
            model,
            image,
            _model_roi(model, plan),
            overlap,
            sw_batch_size,
            tta=tta,
            device=device,
            out_device="cpu",
            amp=amp,
            progress=_ensemble_progress(progress, m, len(members), offset),
        )
        if total is not None and logits.shape != total.shape:
            raise InputError(
                f"ensemble member {m + 1} returned {logits.shape[0]} classes, member 1 {total.shape[0]}"
            )
        total = _softmax_into(logits, total)
        del logits
    if len(members) > 1:
        total.div_(len(members))
    return total


def _preprocessed(volume: Any, plan: Any, in_chans: int | None) -> tuple[Any, Any]:
    """(float32 image tensor [C, X', Y', Z'], PreprocessedCase) with the input checks of predict."""
    where = volume.path if volume.path is not None else "input volume"
    channels = 1 if volume.array.ndim == 3 else volume.array.shape[0]
    if in_chans is not None and channels != in_chans:
        raise InputError(f"{where}: has {channels} channel(s), the model takes {in_chans}")
    pre = preprocess_case(volume, plan)
    image = torch.from_numpy(np.ascontiguousarray(pre.image, dtype=np.float32))
    if not bool(torch.isfinite(image).all()):
        raise InputError(f"{where}: non-finite values (NaN or inf) after preprocessing")
    return image, pre


def predict_ensemble(
    models: Sequence[Any],
    volume: Any,
    plan: Any,
    *,
    overlap: float = 0.5,
    tta: bool | Sequence[Sequence[int]] = False,
    sw_batch_size: int = 1,
    device: Any = None,
    amp: bool = False,
    progress: Callable[[int, int], None] | None = None,
    return_probabilities: bool = False,
) -> Any:
    """Label map of one scan on its ORIGINAL grid from the mean softmax of several models.

    Args:
        models: ensemble members sharing ``plan``'s preprocessing, ``num_classes`` and ``in_chans``
            (a lone model, or a list of one, is exactly :func:`predict_volume`: argmax of its logits).
        volume, plan, overlap, tta, sw_batch_size, device, amp, progress: as :func:`predict_volume`.
        return_probabilities: also return the mean probabilities (see :func:`ensemble_probabilities`),
            in PREPROCESSED space (the grid of ``preprocess_case(volume, plan).image``), not restored.

    Returns:
        ``[X, Y, Z]`` class indices (uint8 up to 256 classes, else uint16) of ``volume``'s shape, or
        ``(labels, probabilities)`` with ``return_probabilities``.
    """
    members = _members(models)
    image, pre = _preprocessed(volume, plan, _in_chans(members[0]))
    if len(members) == 1:  # argmax of the logits: the single-model path, voxel for voxel
        model = members[0]
        scores = sliding_window_logits(
            model,
            image,
            _model_roi(model, plan),
            overlap,
            sw_batch_size,
            tta=tta,
            device=device,
            out_device="cpu",
            progress=progress,
            amp=amp,
        )
    else:
        scores = ensemble_probabilities(
            members,
            image,
            plan,
            overlap=overlap,
            tta=tta,
            sw_batch_size=sw_batch_size,
            device=device,
            amp=amp,
            progress=progress,
        )
    del image
    dtype = label_dtype(_num_classes(members[0]) or scores.shape[0])
    labels = argmax_labels(scores, dtype)
    if not return_probabilities:
        del scores
    labels = np.asarray(restore_label(labels, pre.record)).astype(dtype, copy=False)
    if not return_probabilities:
        return labels
    return labels, (_softmax_into(scores) if len(members) == 1 else scores)


def predict_volume(
    model: Any,
    volume: Any,
    plan: Any,
    *,
    overlap: float = 0.5,
    tta: bool | Sequence[Sequence[int]] = False,
    sw_batch_size: int = 1,
    device: Any = None,
    amp: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Label map of one scan on its ORIGINAL grid.

    Args:
        model: a UNETR (or any module mapping ``[N, C, *roi]`` to logits ``[N, K, *roi]``; its
            ``config.img_size`` is the window, else ``plan.crop_size``), in eval mode.
        volume: :class:`hiend_data.Volume` (``array`` ``[X, Y, Z]`` or ``[C, X, Y, Z]``).
        plan: the :class:`hiend_data.Plan` the model was trained with.
        overlap, tta, sw_batch_size, device, amp, progress: see :func:`sliding_window_logits`.

    Returns:
        ``[X, Y, Z]`` class indices (uint8 up to 256 classes, else uint16) of ``volume``'s shape.
    """
    return predict_ensemble(
        [model],
        volume,
        plan,
        overlap=overlap,
        tta=tta,
        sw_batch_size=sw_batch_size,
        device=device,
        amp=amp,
        progress=progress,
    )


#: ``predict --format``: the label map as NIfTI, as a DICOM Segmentation of its source series, or both
FORMATS = ("nifti", "dicom-seg", "both")
SEG_SUFFIX = ".dcm"


def _outputs(name: str, output_format: str) -> list[str]:
    """The file names one scan writes: ``{name}.nii.gz`` and/or ``{name}.dcm`` (the SEG)."""
    return [
        name + s for s, f in ((".nii.gz", "nifti"), (SEG_SUFFIX, "dicom-seg")) if output_format in (f, "both")
    ]


def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` with every symbolic link resolved (it need not exist); InputError naming it when it, or a
    folder above it, is a symbolic-link loop (it can be neither read nor written)."""
    path = Path(path)
    try:
        return path.resolve()
    except RuntimeError:  # Python 3.11's pathlib: "Symlink loop from ..."
        pass
    except OSError as exc:  # later Pythons: ELOOP
        if exc.errno != errno.ELOOP:
            raise
    raise InputError(f"{path}: a symbolic-link loop (too many levels of symbolic links); choose another path")


def check_output_folder(out_dir: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]]) -> Path:
    """The output folder, refused (InputError naming it and the input) where a later run on the same
    inputs would read the outputs as scans. The rule, for every input kind, links resolved:

    * ``--out`` is never an input folder itself (a folder of NIfTI scans or of DICOM series: the label
      maps and SEGs would join the scans), nor the folder holding an input file or series folder
      (``predict m scans/a_0000.nii.gz --out scans``: ``a.nii.gz`` would join the scans there; beside
      a DICOM series or zip, the NIfTI label map would turn the folder into a folder of scans);
    * ``--out`` never lies inside an input folder searched for DICOM series (a folder with no NIfTI
      files of its own: the search goes down every subfolder, so the outputs would be read as series).

    A folder of NIfTI scans is only read one level deep: an output folder inside it is fine. Input
    files (NIfTI, a .zip, a multi-frame DICOM) are also guarded file by file (an output never replaces
    one).
    """
    out = resolved(out_dir)
    for item in inputs:
        folder = Path(item)
        if folder.exists() and out == resolved(folder).parent:
            raise InputError(
                f"--out {out_dir}: is the folder holding the input {folder}; the outputs would join the "
                "scans there: choose an output folder outside the inputs"
            )
        if not folder.is_dir():
            continue
        where = resolved(folder)
        if out == where:
            raise InputError(
                f"--out {out_dir}: is the input folder {folder}; the outputs would be read as scans by the "
                "next run on it: choose an output folder outside the inputs"
            )
        dicom = not any(f.is_file() and is_image(f) for f in folder.iterdir())
        if dicom and where in out.parents:
            raise InputError(
                f"--out {out_dir}: lies inside the DICOM input folder {folder}, which is searched to the "
                "bottom for series: choose an output folder outside the inputs"
            )
    return out


def check_options(overlap: float, sw_batch_size: int, min_component: float) -> None:
    """InputError ``--overlap 1.0: ...`` for an option value out of its range (NaN included): checked
    before anything is read, one line as every other bad input (no usage box)."""
    if not 0.0 <= overlap < 1.0:  # NaN fails every comparison
        raise InputError(f"--overlap {overlap}: expected a fraction of the window in [0, 1)")
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, int) or sw_batch_size < 1:
        raise InputError(f"--sw-batch {sw_batch_size}: expected a whole number of windows >= 1")
    if not 0.0 <= min_component <= 1.0:
        raise InputError(f"--min-component {min_component}: expected a fraction in [0, 1]")


def _check_inputs(
    cases: list[ScanCase],
    in_chans: int | None,
    out_dir: Path,
    output_format: str = "nifti",
    series: Sequence[str] = (),
) -> None:
    """Read every scan once (all of it: a truncated .gz only shows at the end) before writing anything.
    A DICOM Segmentation file is a label map, not a scan: refused; DICOM-SEG output needs DICOM scans."""
    inputs = {f.resolve() for case in cases for f in case.files}
    seg = output_format in ("dicom-seg", "both")
    for case in cases:
        for name in _outputs(safe_case_name(case.name, case.files[0]), output_format):
            target = resolved(out_dir / name)
            if target in inputs:
                raise InputError(f"{target}: the output would overwrite an input scan; choose another --out")
            path_inside(out_dir, case.name, name[len(case.name) :])  # no symlink leads out of --out
        if seg and (len(case.files) != 1 or not is_dicom_source(case.files[0])):
            raise InputError(
                f"{case.files[0]}: --format dicom-seg needs DICOM input (a Segmentation references its "
                "source series); this scan is NIfTI: use --format nifti"
            )
        vol = load_volume(list(case.files), series=series or None)  # (says what to install for DICOM)
        check_oriented(vol)
        if len(case.files) == 1 and is_dicom_source(case.files[0]):
            from hiend_data.dicom_seg import is_segmentation

            if is_segmentation(case.files[0]):
                raise InputError(
                    f"{case.files[0]}: a DICOM Segmentation (a label map), not a scan to segment"
                )
        channels = 1 if vol.array.ndim == 3 else vol.array.shape[0]
        if in_chans is not None and channels != in_chans:
            raise InputError(
                f"{case.files[0]}: case {case.name!r} has {channels} channel(s), the model takes {in_chans}"
            )
        del vol


def check_num_classes(path: Any, num_classes: int) -> None:
    """InputError naming the checkpoint unless its model has 2 .. ``MAX_LABEL + 1`` (65,536) classes:
    one class predicts background everywhere, and a label map holds class indices up to
    :data:`hiend_data.limits.MAX_LABEL` (uint16; a larger index would wrap)."""
    from hiend_data.limits import MAX_LABEL

    if not 2 <= num_classes <= MAX_LABEL + 1:
        why = "it would label every voxel background" if num_classes < 2 else "label maps hold at most"
        raise InputError(
            f"{path}: a model of {num_classes} classes cannot segment: {why}"
            + (f" {MAX_LABEL + 1} classes (0..{MAX_LABEL})" if num_classes >= 2 else "")
        )


def _require_seg_writer() -> None:
    import importlib.util

    if importlib.util.find_spec("highdicom") is None:
        raise InputError(
            "--format dicom-seg needs highdicom (not installed): pip install 'hiend-model[dicom]'"
        )


def output_label_names(infos: Sequence[Any], labels: Any, num_classes: int) -> dict[int, str]:
    """Label value -> name for the outputs: ``labels`` (a dataset.json path or a dict) if given, else the
    first checkpoint's names (``hiend-train finetune`` stores the dataset's), else none (``{}``).

    InputError when a name's value is not a class of the model (``>= num_classes``)."""
    if labels is None:
        names = next((i.label_names for i in infos if getattr(i, "label_names", None)), None) or {}
        where = infos[0].path if infos else "the checkpoint"
    elif isinstance(labels, (str, os.PathLike)):
        from hiend_data.labels import read_label_names

        names, where = read_label_names(Path(labels)), labels
    else:
        names, where = {int(k): str(v) for k, v in dict(labels).items()}, "label names"
    too_big = sorted(v for v in names if v >= num_classes or v < 1)
    if too_big:
        raise InputError(
            f"{where}: label value(s) {too_big} are not foreground classes of a model with {num_classes} "
            f"classes (0..{num_classes - 1})"
        )
    return dict(sorted(names.items()))


def _checkpoint_list(ckpt_path: Any) -> list[Path]:
    if isinstance(ckpt_path, (str, os.PathLike)):
        return [Path(ckpt_path)]
    paths = [Path(p) for p in ckpt_path]
    if not paths:
        raise InputError("no checkpoint given")
    return paths


def predict_files(
    ckpt_path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    device: str = "cpu",
    overlap: float = 0.5,
    tta: bool = False,
    progress: bool = True,
    sw_batch_size: int = 1,
    amp: bool = False,
    output_format: str = "nifti",
    labels: Any = None,
    seg_type: str = "binary",
    series: Sequence[str] = (),
    keep_largest: str | Sequence[int] = (),
    min_component: float = 0.0,
) -> list[Path]:
    """Segment scans with a UNETR checkpoint, or an ensemble; write ``{out_dir}/{case}.nii.gz`` per scan.

    ``ckpt_path`` is one checkpoint or a list of them: an ensemble averaging the members' softmax
    probabilities (:func:`predict_ensemble`). Members must agree on ``num_classes``, ``in_chans`` and
    the plan's preprocessing fields (:data:`PREPROCESSING_FIELDS`; crop sizes, i.e. sliding windows,
    may differ); otherwise an InputError names both files and what differs. Every checkpoint's
    metadata and every input is read and checked (readable, channel count) before the first output is
    written, so a bad file stops the run with an InputError naming it and nothing half-done. Outputs
    lie on their input's own grid and affine; dtype uint8 up to 256 classes, else uint16. Returns the
    paths written, in input order. All members are held in memory (on ``device``) together.
    Refused before anything is read: option values out of range (:func:`check_options`) and an
    ``out_dir`` that is an input folder or lies inside a DICOM one (:func:`check_output_folder`); a
    checkpoint whose weights hold NaN or inf is refused when loaded; ensemble members must also agree on
    their label names (:func:`check_ensemble`).

    ``output_format`` (:data:`FORMATS`): ``"nifti"``; ``"dicom-seg"``: ``{case}.dcm``, a DICOM
    Segmentation referencing the input series (:func:`hiend_data.dicom_seg.write_seg`; every input
    must be DICOM); ``"both"``. ``labels``: the segments' names, a dataset.json path or a ``{value:
    name}`` dict; default: the checkpoint's (:func:`output_label_names`). ``seg_type``: ``"binary"``
    (every viewer) or ``"labelmap"`` (compact, newer viewers; :func:`hiend_data.dicom_seg.write_seg`).
    ``series``: SeriesInstanceUIDs to read where a DICOM folder holds several series (a PACS export of a
    whole study; each such folder must hold one of them), as ``hiend-data preprocess --series``.
    ``keep_largest`` (values, or ``"1,2"`` / ``"all"``) and ``min_component`` (0..1): connected-component
    clean-up of each label map (:func:`hiend_model.postprocess.clean_components`).
    """
    check_options(overlap, sw_batch_size, min_component)
    if output_format not in FORMATS:
        raise InputError(f"--format {output_format!r}: expected one of {', '.join(FORMATS)}")
    seg = output_format in ("dicom-seg", "both")
    if seg_type not in ("binary", "labelmap"):
        raise InputError(f"--seg-type {seg_type!r}: expected binary or labelmap")
    if seg:
        _require_seg_writer()
    paths = _checkpoint_list(ckpt_path)
    check_output_folder(out_dir, inputs)
    device = resolve_device(device)
    infos = [read_checkpoint_info(p, expected_kind="unetr") for p in paths]
    check_ensemble(infos)
    num_classes = int(infos[0].config.get("num_classes", 2))
    check_num_classes(infos[0].path, num_classes)
    try:
        largest = (
            parse_keep_largest(keep_largest, num_classes)
            if isinstance(keep_largest, str)
            else parse_keep_largest(",".join(str(v) for v in keep_largest), num_classes)
        )
    except ValueError as exc:
        raise InputError(str(exc)) from None
    names = output_label_names(infos, labels, num_classes)
    # every class is a segment (named or "label N"): the same segment numbers in every scan's SEG
    seg_names = {v: names.get(v) or f"label {v}" for v in range(1, num_classes)}
    if seg:  # a name a SEG cannot hold is refused before any output (--format both: not after the NIfTI)
        from hiend_data.dicom_seg import check_segment_names

        check_segment_names(seg_names, labels if labels is not None else paths[0])
    models = [load_checkpoint(p, expected_kind="unetr", map_location=device)[0] for p in paths]
    model, plan = models[0], infos[0].plan
    cases = collect_cases(inputs)
    out_dir = Path(out_dir)
    _check_inputs(cases, model.config.in_chans, out_dir, output_format, series)
    out_dir.mkdir(parents=True, exist_ok=True)

    what = f" ({len(models)} models)" if len(models) > 1 else ""
    written: list[Path] = []
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    with bar:
        for i, case in enumerate(cases, 1):
            label = f"[{i}/{len(cases)}] {markup(case.name)}"  # a file's name, shown as written
            task = bar.add_task(f"{label}: reading", total=None)

            def step(done: int, total: int, task=task, label=label) -> None:
                bar.update(task, description=f"{label}: windows{what}", completed=done, total=total)

            volume = load_volume(list(case.files), series=series or None)
            bar.update(task, description=f"{label}: preprocessing")
            labels_map = predict_ensemble(
                models,
                volume,
                plan,
                overlap=overlap,
                tta=tta,
                sw_batch_size=sw_batch_size,
                device=device,
                amp=amp,
                progress=step if progress else None,
            )
            if largest or min_component > 0:
                bar.update(task, description=f"{label}: connected components")
                labels_map = clean_components(labels_map, largest, min_component)
            bar.update(task, description=f"{label}: writing")
            if output_format != "dicom-seg":
                written.append(Path(save_volume(out_dir / f"{case.name}.nii.gz", labels_map, like=volume)))
            if seg:
                from hiend_data.dicom_seg import write_seg

                written.append(
                    write_seg(
                        labels_map,
                        volume.affine,
                        series_headers(case.files[0], series or None),
                        out_dir / f"{case.name}{SEG_SUFFIX}",
                        seg_names,
                        software_version=f"hiend-model {__version__}",
                        description="hiend-model predict",
                        algorithm="hiend-model UNETR"
                        + (f" ensemble of {len(models)}" if len(models) > 1 else ""),
                        seg_type=seg_type,
                    )
                )
            bar.update(task, description=f"{label}: done")
            del volume, labels_map
    return written
