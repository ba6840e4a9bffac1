"""Segment whole scans with a UNETR checkpoint: files in, label maps on the inputs' own grids out.

For every scan: :func:`hiend_data.preprocess_case` with the checkpoint's plan (reorient, resample,
normalise, crop to the foreground) -> :func:`~hiend_model.inference.sliding_window_logits` (float32
logits ``[K, X', Y', Z']`` in preprocessed space) -> per-voxel argmax (in slabs) ->
:func:`hiend_data.restore_label` back to the original grid -> ``save_volume(like=input)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiend_data.errors import InputError

from .inference import argmax_labels, label_dtype, sliding_window_logits

_NIFTI = (".nii.gz", ".nii")
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class ScanCase:
    """One scan to segment: output name (``{name}.nii.gz``) and its channel files in channel order."""

    name: str
    files: tuple[Path, ...]


def _stem(path: Path) -> str | None:
    for suffix in _NIFTI:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def collect_cases(inputs: Sequence[str | os.PathLike[str]]) -> list[ScanCase]:
    """Scans named by files and folders (a folder's own ``.nii``/``.nii.gz`` files, not its subfolders).

    nnU-Net channel files ``{case}_0000``, ``{case}_0001``, ... in one folder form one scan named
    ``{case}``; a ``_dddd`` name without a ``_0000`` sibling is a scan of its own, named in full.
    Raises InputError for a missing path, a file that is not NIfTI, a folder without NIfTI files,
    channels with gaps, and two scans that would be written to the same output name.
    """
    if not inputs:
        raise InputError("no input scans given")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(f for f in path.iterdir() if f.is_file() and _stem(f) is not None)
            if not found:
                raise InputError(f"{path}: folder holds no .nii/.nii.gz files")
            files += found
        elif path.is_file():
            if _stem(path) is None:
                raise InputError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")
            files.append(path)
        else:
            raise InputError(f"{path}: no such file or folder")
    groups: dict[tuple[Path, str], dict[int, Path]] = {}
    for f in dict.fromkeys(files):  # the same file named twice counts once
        m = _CHANNEL.match(_stem(f))
        if m:
            groups.setdefault((f.parent.resolve(), m["case"]), {})[int(m["channel"])] = f
    cases: list[ScanCase] = []
    done: set[Path] = set()
    for f in dict.fromkeys(files):
        if f in done:
            continue
        m = _CHANNEL.match(_stem(f))
        group = groups.get((f.parent.resolve(), m["case"])) if m else None
        if group and 0 in group:
            channels = sorted(group)
            if channels != list(range(len(channels))):
                missing = sorted(set(range(max(channels) + 1)) - set(channels))
                raise InputError(f"{group[0]}: channel files of case {m['case']!r} have gaps "
                                 f"(missing _{missing[0]:04d})")
            members = tuple(group[c] for c in channels)
            cases.append(ScanCase(m["case"], members))
            done.update(members)
        else:
            cases.append(ScanCase(_stem(f), (f,)))
            done.add(f)
    seen: dict[str, ScanCase] = {}
    for case in cases:
        if case.name in seen:
            raise InputError(f"{case.files[0]} and {seen[case.name].files[0]} would both be written as "
                             f"{case.name}.nii.gz: segment them into different output folders")
        seen[case.name] = case
    return cases


def _model_roi(model: Any, plan: Any) -> tuple[int, int, int]:
    config = getattr(model, "config", None)
    size = getattr(config, "img_size", None) or plan.crop_size
    return tuple(int(s) for s in size)  # type: ignore[return-value]


def _num_classes(model: Any) -> int | None:
    return getattr(getattr(model, "config", None), "num_classes", None)


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
    import torch

    from hiend_data import preprocess_case, restore_label

    where = volume.path if volume.path is not None else "input volume"
    in_chans = getattr(getattr(model, "config", None), "in_chans", None)
    channels = 1 if volume.array.ndim == 3 else volume.array.shape[0]
    if in_chans is not None and channels != in_chans:
        raise InputError(f"{where}: has {channels} channel(s), the model takes {in_chans}")
    pre = preprocess_case(volume, plan)
    image = torch.from_numpy(np.ascontiguousarray(pre.image, dtype=np.float32))
    if not bool(torch.isfinite(image).all()):
        raise InputError(f"{where}: non-finite values (NaN or inf) after preprocessing")
    logits = sliding_window_logits(model, image, _model_roi(model, plan), overlap, sw_batch_size,
                                   tta=tta, device=device, out_device="cpu", progress=progress, amp=amp)
    del image
    dtype = label_dtype(_num_classes(model) or logits.shape[0])
    labels = argmax_labels(logits, dtype)
    del logits
    return np.asarray(restore_label(labels, pre.record)).astype(dtype, copy=False)


def resolve_device(device: str | None) -> str:
    """``"auto"`` -> ``"cuda"`` when available else ``"cpu"``; InputError for CUDA without a GPU."""
    import torch

    device = (device or "cpu").lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: CUDA is not available in this torch build or machine")
    if device.split(":")[0] not in ("cpu", "cuda", "mps"):
        raise InputError(f"device {device!r} must be cpu, cuda, cuda:N or auto")
    return device


def _check_inputs(cases: list[ScanCase], in_chans: int | None, out_dir: Path) -> None:
    """Read every scan once (all of it: a truncated .gz only shows at the end) before writing anything."""
    from hiend_data import load_volume

    inputs = {f.resolve() for case in cases for f in case.files}
    for case in cases:
        target = (out_dir / f"{case.name}.nii.gz").resolve()
        if target in inputs:
            raise InputError(f"{target}: the output would overwrite an input scan; choose another --out")
        vol = load_volume(list(case.files))
        channels = 1 if vol.array.ndim == 3 else vol.array.shape[0]
        if in_chans is not None and channels != in_chans:
            raise InputError(f"{case.files[0]}: case {case.name!r} has {channels} channel(s), the model "
                             f"takes {in_chans}")
        del vol


def predict_files(
    ckpt_path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    device: str = "cpu",
    overlap: float = 0.5,
    tta: bool = False,
    progress: bool = True,
    sw_batch_size: int = 1,
    amp: bool = False,
) -> list[Path]:
    """Segment scans with a UNETR checkpoint; write ``{out_dir}/{case}.nii.gz`` per scan.

    Every input is read and checked (readable, channel count) before the first output is written, so
    a bad file stops the run with an InputError naming it and nothing half-done. Outputs lie on their
    input's own grid and affine; dtype uint8 up to 256 classes, else uint16. Returns the paths written,
    in input order.
    """
    from hiend_data import load_volume, save_volume

    from .checkpoint import load_checkpoint

    device = resolve_device(device)
    model, info = load_checkpoint(ckpt_path, expected_kind="unetr", map_location=device)
    if info.plan is None:
        raise InputError(f"{ckpt_path}: checkpoint has no preprocessing plan; re-save it with "
                         "save_checkpoint(..., plan=Plan(...))")
    cases = collect_cases(inputs)
    out_dir = Path(out_dir)
    _check_inputs(cases, model.config.in_chans, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    written: list[Path] = []
    with _progress_bar(progress) as bar:
        for i, case in enumerate(cases, 1):
            label = f"[{i}/{len(cases)}] {case.name}"
            task = bar.add_task(f"{label}: reading", total=None) if bar else None

            def step(done: int, total: int, task=task, label=label) -> None:
                bar.update(task, description=f"{label}: windows", completed=done, total=total)

            volume = load_volume(list(case.files))
            if bar:
                bar.update(task, description=f"{label}: preprocessing")
            labels = predict_volume(model, volume, info.plan, overlap=overlap, tta=tta,
                                    sw_batch_size=sw_batch_size, device=device, amp=amp,
                                    progress=step if bar else None)
            if bar:
                bar.update(task, description=f"{label}: writing")
            path = save_volume(out_dir / f"{case.name}.nii.gz", labels, like=volume)
            written.append(Path(path))
            if bar:
                bar.update(task, description=f"{label}: done")
            del volume, labels
    return written


class _NoBar:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress_bar(enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True))
