"""Segment whole scans with a UNETR checkpoint: files in, label maps on the inputs' own grids out.

:func:`predict_files` (what ``hiend-model predict`` runs) reads as its steps: load the models (one
checkpoint, or an ensemble checked by :func:`hiend_model.ensemble.check_ensemble`) into a
:class:`Predictor` -> collect the cases (:func:`hiend_data.discovery.collect_cases`, the folder rule
``preprocess`` uses too) and read each once to check it -> per case: read, infer
(:meth:`Predictor.predict`), post-process (:func:`hiend_model.postprocess.clean_components`), write
(:class:`hiend_model.outputs.OutputWriter`).

Inference of one scan: :func:`hiend_data.preprocess_case` with the checkpoint's plan (reorient,
resample, normalise, crop to the foreground) -> :func:`~hiend_model.inference.sliding_window_logits`
(float32 logits ``[K, X', Y', Z']`` in preprocessed space) -> per-voxel argmax (in slabs) ->
:func:`hiend_data.restore_label` back to the original grid. An ensemble's members are averaged in
probability space (:func:`hiend_model.ensemble.ensemble_probabilities`); one member takes exactly the
single-model path (argmax of its logits). How the windows run (overlap, flips, windows per call,
device, autocast, progress) is one :class:`~hiend_model.window.WindowSettings`, kept on the Predictor.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hiend_data import load_volume, preprocess_case, restore_label
from hiend_data.discovery import collect_cases
from hiend_data.errors import InputError, markup, shown
from hiend_data.io import check_oriented
from hiend_data.naming import (
    ChannelGroup,
    is_dicom_source,
    safe_case_name,
)

from .checkpoint import load_checkpoint, read_checkpoint_info
from .device import resolve_device
from .ensemble import check_ensemble, ensemble_probabilities, in_chans, members, softmax_into, window_size
from .ensemble import num_classes as model_classes
from .inference import argmax_labels, label_dtype, sliding_window_logits
from .outputs import OutputWriter, check_case_outputs, check_formats, check_output_folder, segment_names
from .postprocess import check_min_component, clean_components, keep_largest_classes, parse_keep_largest
from .window import Progress as WindowProgress
from .window import WindowSettings, flips_over, trained_flip_axes

__all__ = [
    "Predictor",
    "WindowSettings",
    "collect_cases",
    "ensemble_probabilities",
    "predict_ensemble",
    "predict_files",
    "predict_volume",
]


class Predictor:
    """One model or an ensemble, the plan they share and how their windows run.

    As nnU-Net's ``nnUNetPredictor`` keeps its tile step, mirroring and device, the predictor keeps
    its :class:`WindowSettings`; :meth:`predict` takes a scan and gives its label map. ``models``: a
    lone model or the ensemble members (:func:`hiend_model.ensemble.members`: they must agree on
    ``num_classes`` and ``in_chans``); ``plan``: the :class:`hiend_data.Plan` they were trained with.
    """

    def __init__(self, models: Any, plan: Any, settings: WindowSettings | None = None) -> None:
        self.members = members(models)
        self.plan = plan
        self.settings = settings if settings is not None else WindowSettings()

    @classmethod
    def from_checkpoints(
        cls, paths: Sequence[Path], plan: Any, settings: WindowSettings | None = None
    ) -> Predictor:
        """The UNETR checkpoints ``paths`` loaded onto ``settings.device`` (None: cpu), all held in
        memory together; check them first (:func:`~hiend_model.ensemble.check_ensemble`)."""
        settings = settings if settings is not None else WindowSettings()
        where = settings.device if settings.device is not None else "cpu"
        models = [load_checkpoint(p, expected_kind="unetr", map_location=where)[0] for p in paths]
        return cls(models, plan, settings)

    @property
    def in_chans(self) -> int | None:
        """The channels each scan must have (None: a model without a config)."""
        return in_chans(self.members[0])

    def scores(self, image: torch.Tensor, progress: WindowProgress | None = None) -> torch.Tensor:
        """One member: its logits; several: their mean probabilities (float32 CPU ``[K, X', Y', Z']``).
        ``progress`` replaces the settings' callback where given."""
        settings = self.settings if progress is None else self.settings.with_progress(progress)
        if len(self.members) > 1:
            return ensemble_probabilities(self.members, image, self.plan, settings)
        model = self.members[0]
        return sliding_window_logits(
            model, image, window_size(model, self.plan), out_device="cpu", settings=settings
        )

    def predict(
        self, volume: Any, *, progress: WindowProgress | None = None, return_probabilities: bool = False
    ) -> Any:
        """Label map of one scan (:class:`hiend_data.Volume`) on its ORIGINAL grid: ``[X, Y, Z]`` class
        indices (uint8 up to 256 classes, else uint16) of ``volume``'s shape; with
        ``return_probabilities``, ``(labels, probabilities)``, the (mean) softmax probabilities in
        PREPROCESSED space (the grid of ``preprocess_case(volume, plan).image``), not restored."""
        image, pre = _preprocessed(volume, self.plan, self.in_chans)
        scores = self.scores(image, progress)
        del image
        dtype = label_dtype(model_classes(self.members[0]) or scores.shape[0])
        labels = argmax_labels(scores, dtype)
        if not return_probabilities:
            del scores
        labels = np.asarray(restore_label(labels, pre.record)).astype(dtype, copy=False)
        if not return_probabilities:
            return labels
        return labels, (softmax_into(scores) if len(self.members) == 1 else scores)


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
    settings: WindowSettings | None = None,
    *,
    return_probabilities: bool = False,
) -> Any:
    """Label map of one scan on its ORIGINAL grid from the mean softmax of several models:
    ``Predictor(models, plan, settings).predict(volume)`` (a lone model, or a list of one, is exactly
    :func:`predict_volume`: argmax of its logits). With ``return_probabilities``:
    ``(labels, probabilities)``, see :meth:`Predictor.predict`."""
    return Predictor(models, plan, settings).predict(volume, return_probabilities=return_probabilities)


def predict_volume(model: Any, volume: Any, plan: Any, settings: WindowSettings | None = None) -> np.ndarray:
    """Label map of one scan on its ORIGINAL grid.

    Args:
        model: a UNETR (or any module mapping ``[N, C, *roi]`` to logits ``[N, K, *roi]``; its
            ``config.img_size`` is the window, else ``plan.crop_size``), in eval mode.
        volume: :class:`hiend_data.Volume` (``array`` ``[X, Y, Z]`` or ``[C, X, Y, Z]``).
        plan: the :class:`hiend_data.Plan` the model was trained with.
        settings: how the windows run (:class:`WindowSettings`; default: its defaults).

    Returns:
        ``[X, Y, Z]`` class indices (uint8 up to 256 classes, else uint16) of ``volume``'s shape.
    """
    return Predictor([model], plan, settings).predict(volume)


def _check_inputs(
    cases: list[ChannelGroup],
    in_chans: int | None,
    out_dir: Path,
    output_format: str = "nifti",
    series: Sequence[str] = (),
) -> None:
    """Read every scan once (all of it: a truncated .gz only shows at the end) before writing anything.
    A DICOM Segmentation file is a label map, not a scan: refused; DICOM-SEG output needs DICOM scans."""
    inputs = {f.resolve() for case in cases for f in case.files}
    for case in cases:
        name = safe_case_name(case.name, case.files[0])
        check_case_outputs(out_dir, name, case.files, output_format, inputs)
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


def _keep_largest(values: str | Sequence[int], num_classes: int) -> list[int]:
    """``--keep-largest`` (text as ``"1,2"`` / ``"all"``, or label values) checked against the classes."""
    try:
        if isinstance(values, str):
            return parse_keep_largest(values, num_classes)
        return keep_largest_classes(values, num_classes)
    except ValueError as exc:
        raise InputError(str(exc)) from None


#: predict_files' window arguments and their defaults (given together with ``settings=``: a TypeError)
_WINDOW_DEFAULTS = {"device": "cpu", "overlap": 0.5, "tta": False, "sw_batch_size": 1, "amp": False}


def _window_settings(settings: WindowSettings | None, **given: Any) -> WindowSettings:
    """``settings``, or the one made of predict_files' separate window arguments (checked now)."""
    if settings is None:
        return WindowSettings(**given)
    both = [k for k, v in given.items() if v is not _WINDOW_DEFAULTS[k] and v != _WINDOW_DEFAULTS[k]]
    if both:
        raise TypeError(f"predict_files: {', '.join(both)} given both directly and in settings")
    return settings


def _progress_bar(show: bool) -> Progress:
    """The bar on a terminal (a scan's windows, elapsed time and ETA); disabled elsewhere: a batch log
    gets :class:`_LogLines` instead."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (show and console.is_terminal),
    )


class _LogLines:
    """Progress where stderr is not a terminal (a batch job's log): one line when a scan is written,
    with its stages' seconds and the ETA of the rest from the mean so far. (No line when a scan
    starts: a scan refused while it is read stays one line on stderr, the error.)"""

    def __init__(self, show: bool, total: int) -> None:
        import time

        self.show = show and not Console(stderr=True).is_terminal
        self.total = total
        self.clock = time.perf_counter
        self.t0 = self.clock()
        self.stages: dict[str, float] = {}
        self.last = self.t0

    def start(self) -> None:
        self.stages, self.last = {}, self.clock()

    def stage(self, name: str) -> None:
        now = self.clock()
        self.stages[name] = self.stages.get(name, 0.0) + now - self.last
        self.last = now

    def done(self, i: int, name: str) -> None:
        if not self.show:
            return
        spent = sum(self.stages.values())
        parts = ", ".join(f"{k} {v:.1f} s" for k, v in self.stages.items())
        left = (self.clock() - self.t0) / i * (self.total - i)
        eta = f"; about {left:.0f} s left" if i < self.total else ""
        print(
            f"[{i}/{self.total}] {shown(name)}: done in {spent:.1f} s ({parts}){eta}",
            file=sys.stderr,
            flush=True,
        )


def _trained_flips(settings: WindowSettings, infos: Sequence[Any]) -> WindowSettings:
    """``--tta`` (all 8 flips asked for) restricted to the flips the models were trained with
    (:func:`hiend_model.window.trained_flip_axes`), with a note on stderr saying which; explicit flip
    lists and checkpoints that do not say are left as they are."""
    if settings.tta is not True:
        return settings
    axes = trained_flip_axes([info.extra for info in infos])
    if axes is None or len(axes) == 3:
        return settings
    flips = flips_over(axes)
    if len(flips) == 1:
        print(
            "note: --tta: the model was trained without flips; predicting without test-time flips",
            file=sys.stderr,
        )
    else:
        print(
            f"note: --tta: averaging the {len(flips)} flips of axes {list(axes)}, the ones the model was "
            "trained with (a flip it never saw would mirror paired organs)",
            file=sys.stderr,
        )
    return replace(settings, tta=flips if len(flips) > 1 else False)


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
    *,
    settings: WindowSettings | None = None,
) -> list[Path]:
    """Segment scans with a UNETR checkpoint, or an ensemble; write ``{out_dir}/{case}.nii.gz`` per scan.

    ``ckpt_path`` is one checkpoint or a list of them: an ensemble averaging the members' softmax
    probabilities (:func:`predict_ensemble`). Members must agree on ``num_classes``, ``in_chans`` and
    the plan's preprocessing fields (:data:`hiend_model.ensemble.PREPROCESSING_FIELDS`; crop sizes,
    i.e. sliding windows, may differ); otherwise an InputError names both files and what differs. Every
    checkpoint's metadata and every input is read and checked (readable, channel count) before the first
    output is written, so a bad file stops the run with an InputError naming it and nothing half-done.
    Outputs lie on their input's own grid and affine; dtype uint8 up to 256 classes, else uint16.
    Returns the paths written, in input order. All members are held in memory (on ``device``) together.
    Refused before anything is read: option values out of range (:class:`WindowSettings`,
    ``min_component``, ``output_format``, ``seg_type``) and an ``out_dir`` that is an input folder or
    lies inside a DICOM one (:func:`hiend_model.outputs.check_output_folder`); a checkpoint whose
    weights hold NaN or inf is refused when loaded; ensemble members must also agree on their label
    names (:func:`hiend_model.ensemble.check_ensemble`).

    How the windows run: ``settings`` (a :class:`WindowSettings`), or the separate ``device``,
    ``overlap``, ``tta``, ``sw_batch_size``, ``amp`` (not both); ``device`` goes through
    :func:`hiend_model.device.resolve_device` (None: cpu). ``progress``: a progress bar on stderr (its
    per-scan callback replaces ``settings.progress``).

    ``output_format`` (:data:`hiend_model.outputs.FORMATS`): ``"nifti"``; ``"dicom-seg"``:
    ``{case}.dcm``, a DICOM Segmentation referencing the input series
    (:func:`hiend_data.dicom_seg.write_seg`; every input must be DICOM); ``"both"``. ``labels``: the
    segments' names, a dataset.json path or a ``{value: name}`` dict; default: the checkpoint's
    (:func:`output_label_names`). ``seg_type``: ``"binary"`` (every viewer) or ``"labelmap"`` (compact,
    newer viewers). ``series``: SeriesInstanceUIDs to read where a DICOM folder holds several series (a
    PACS export of a whole study; each such folder must hold one of them), as ``hiend-data preprocess
    --series``. ``keep_largest`` (label values, ``"all"``, or the text ``"1,2"``) and ``min_component``
    (0..1): connected-component clean-up of each label map (:func:`hiend_model.postprocess.clean_components`).
    """
    settings = _window_settings(
        settings, device=device, overlap=overlap, tta=tta, sw_batch_size=sw_batch_size, amp=amp
    )
    check_min_component(min_component)
    seg = check_formats(output_format, seg_type)
    paths = _checkpoint_list(ckpt_path)
    check_output_folder(out_dir, inputs, output_format)
    settings = replace(settings, device=resolve_device(settings.device))

    # load the models: every checkpoint's metadata checked before any weights are read
    infos = [read_checkpoint_info(p, expected_kind="unetr") for p in paths]
    check_ensemble(infos)
    settings = _trained_flips(settings, infos)
    num_classes = int(infos[0].config.get("num_classes", 2))
    check_num_classes(infos[0].path, num_classes)
    largest = _keep_largest(keep_largest, num_classes)
    names = output_label_names(infos, labels, num_classes)
    seg_names = segment_names(names, num_classes, seg, labels if labels is not None else paths[0])
    predictor = Predictor.from_checkpoints(paths, infos[0].plan, settings)

    # collect the cases, and read each once before anything is written
    cases = collect_cases(inputs)
    out_dir = Path(out_dir)
    _check_inputs(cases, predictor.in_chans, out_dir, output_format, series)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = OutputWriter(out_dir, output_format, seg_names, seg_type, series, len(predictor.members))

    what = f" ({len(predictor.members)} models)" if len(predictor.members) > 1 else ""
    written: list[Path] = []
    lines = _LogLines(progress, len(cases))
    with _progress_bar(progress) as bar:
        for i, case in enumerate(cases, 1):
            label = f"[{i}/{len(cases)}] {markup(case.name)}"  # a file's name, shown as written
            task = bar.add_task(f"{label}: reading", total=None)
            lines.start()

            def step(done: int, total: int, task=task, label=label) -> None:
                bar.update(task, description=f"{label}: windows{what}", completed=done, total=total)

            volume = load_volume(list(case.files), series=series or None)
            lines.stage("read")
            bar.update(task, description=f"{label}: preprocessing")
            labels_map = predictor.predict(volume, progress=step if progress else None)
            lines.stage("model")
            if largest or min_component > 0:
                bar.update(task, description=f"{label}: connected components")
                labels_map = clean_components(labels_map, largest, min_component)
                lines.stage("components")
            bar.update(task, description=f"{label}: writing")
            written += writer.write(case.name, case.files[0], labels_map, volume)
            lines.stage("write")
            bar.update(task, description=f"{label}: done")
            lines.done(i, case.name)
            del volume, labels_map
    return written
