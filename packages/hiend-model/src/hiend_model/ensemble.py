"""Ensembles: which checkpoints may be averaged, and the averaging.

Members (several checkpoints, e.g. the K folds of a cross-validated fine-tuning) are averaged in
probability space: each member's sliding-window logits are softmaxed and summed into one running
float32 buffer (one member's logits held at a time), then divided by the number of members. Averaging
is only meaningful between members that see the same preprocessed image and mean the same structure by
each class index, so :func:`check_ensemble` refuses, before any weights are loaded, checkpoints that
differ in classes, channels, preprocessing (:data:`PREPROCESSING_FIELDS`) or label names. Their
window (crop) sizes may differ: each member slides its own.

Whole scans (preprocess, restore to the input grid) are :mod:`hiend_model.predict`, built on this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from hiend_data.errors import InputError

from .inference import sliding_window_logits
from .window import Progress, WindowSettings

__all__ = [
    "PREPROCESSING_FIELDS",
    "check_ensemble",
    "ensemble_probabilities",
    "label_differences",
    "members",
    "plan_differences",
    "softmax_into",
]

#: The plan fields that change what a model sees; members of an ensemble must agree on them
#: (``window`` only matters, and is only compared, for CT). ``crop_size`` may differ: each member slides
#: its own window (its ``img_size``).
PREPROCESSING_FIELDS = ("orientation", "spacing", "modality", "window", "crop_to_foreground")


# --------------------------------------------------------------------- which members agree


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


def _config_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
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
        diffs = _config_differences(first.config, other.config) + plan_differences(first.plan, other.plan)
        diffs += label_differences(getattr(first, "label_names", None), getattr(other, "label_names", None))
        if diffs:
            raise InputError(f"{first.path} and {other.path} cannot be ensembled: " + "; ".join(diffs))


# ------------------------------------------------------------------------- loaded members


def window_size(model: Any, plan: Any) -> tuple[int, int, int]:
    """The window a member slides: its ``config.img_size``, else the plan's ``crop_size``."""
    config = getattr(model, "config", None)
    size = getattr(config, "img_size", None) or (plan.crop_size if plan is not None else None)
    if size is None:
        raise ValueError(f"{type(model).__name__} has no config.img_size and no plan gives a crop_size")
    return tuple(int(s) for s in size)  # type: ignore[return-value]


def num_classes(model: Any) -> int | None:
    """``model.config.num_classes``, or None for a model without a config."""
    return getattr(getattr(model, "config", None), "num_classes", None)


def in_chans(model: Any) -> int | None:
    """``model.config.in_chans``, or None for a model without a config."""
    return getattr(getattr(model, "config", None), "in_chans", None)


def members(models: Any) -> list[Any]:
    """A list of ensemble members from a sequence of models (a lone model counts as one member);
    InputError for none, or for two whose configs disagree on ``num_classes`` or ``in_chans``."""
    if isinstance(models, torch.nn.ModuleList):
        found = list(models)
    elif callable(models):  # one model (an nn.Sequential is a model, not a list of members)
        found = [models]
    else:
        found = list(models)
    if not found:
        raise InputError("an ensemble needs at least one model")
    for i, m in enumerate(found[1:], 2):
        for what, get in (("num_classes", num_classes), ("in_chans", in_chans)):
            a, b = get(found[0]), get(m)
            if a is not None and b is not None and a != b:
                raise InputError(f"ensemble members 1 and {i} cannot be averaged: {what} {a} vs {b}")
    return found


# ---------------------------------------------------------------------------- averaging


def softmax_into(logits: Any, total: Any = None, max_chunk_bytes: int = 256 * 2**20) -> Any:
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
    progress: Progress | None, member: int, count: int, offset: list[int]
) -> Progress | None:
    """Windows done over all members (the remaining members assumed to need as many windows)."""
    if progress is None or count == 1:
        return progress

    def step(done: int, total: int) -> None:
        progress(offset[0] + done, offset[0] + total * (count - member))
        if done == total:
            offset[0] += total

    return step


def ensemble_probabilities(
    models: Sequence[Any], image: Any, plan: Any = None, settings: WindowSettings | None = None
) -> Any:
    """Mean softmax probabilities of several models over one preprocessed volume.

    Args:
        models: the members (a lone model is one member); each slides its own window
            (:func:`window_size`). They must agree on the number of classes.
        image: the preprocessed volume, a float tensor ``[C, X', Y', Z']``.
        plan: the shared plan (only its ``crop_size`` is read, for members without ``img_size``).
        settings: how the windows run (:class:`~hiend_model.window.WindowSettings`; default: its
            defaults); its ``progress`` counts the windows of all members together.

    Returns:
        float32 CPU tensor ``[K, X', Y', Z']``: ``mean_m softmax(logits_m)``. Memory: one running sum
        plus one member's logits at a time.
    """
    found = members(models)
    settings = settings if settings is not None else WindowSettings()
    total = None
    offset = [0]
    for m, model in enumerate(found):
        progress = _ensemble_progress(settings.progress, m, len(found), offset)
        logits = sliding_window_logits(
            model,
            image,
            window_size(model, plan),
            out_device="cpu",
            settings=settings.with_progress(progress),
        )
        if total is not None and logits.shape != total.shape:
            raise InputError(
                f"ensemble member {m + 1} returned {logits.shape[0]} classes, member 1 {total.shape[0]}"
            )
        total = softmax_into(logits, total)
        del logits
    if len(found) > 1:
        total.div_(len(found))
    return total
