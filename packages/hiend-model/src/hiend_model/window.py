"""How a model slides over a volume: one :class:`WindowSettings` instead of six arguments.

Overlap, test-time flips, windows per model call, device, bfloat16 autocast and the progress callback
travel together from ``hiend-model predict``'s options through :func:`hiend_model.predict.predict_files`,
the :class:`~hiend_model.predict.Predictor` (which keeps them, as nnU-Net's ``nnUNetPredictor`` keeps its
tile step, mirroring and device) and :func:`~hiend_model.ensemble.ensemble_probabilities` down to
:func:`~hiend_model.inference.sliding_window_logits`. The object is frozen and checks its values when
made, so a bad value is refused before anything is read, with the message of the matching command-line
option (``--overlap 1.0: ...``, ``--sw-batch 0: ...``). The window size itself is not a setting: each
model slides its own (``config.img_size``).
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hiend_data.errors import InputError

__all__ = ["FLIPS_ALL", "Progress", "WindowSettings", "flip_set", "flips_over", "trained_flip_axes"]

#: The eight axis-flip combinations of a 3-D volume (spatial axes 0, 1, 2), identity first.
FLIPS_ALL: tuple[tuple[int, ...], ...] = tuple(
    c for r in range(4) for c in itertools.combinations((0, 1, 2), r)
)

#: ``progress(windows_done, windows_total)``, called after each model call
Progress = Callable[[int, int], None]


def flips_over(axes: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Every flip combination of ``axes`` (identity first): ``(1, 2)`` -> ``((), (1,), (2,), (1, 2))``."""
    import itertools

    axes = sorted(set(int(a) for a in axes))
    return tuple(c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n))


def trained_flip_axes(extras: Sequence[Any]) -> tuple[int, ...] | None:
    """The flip axes every model of an ensemble was trained with (``extra.augment.flip_axes`` of each
    checkpoint, which hiend-train's fine-tuning writes), or None when a checkpoint does not say (the
    paper's, older ones): test-time flips should stay among them, or a model trained without
    left/right flips sees a mirrored body (its "left kidney" on the right)."""
    common: set[int] | None = None
    for extra in extras:
        augment = extra.get("augment") if isinstance(extra, dict) else None
        if not isinstance(augment, dict) or not isinstance(augment.get("flip_axes"), list):
            return None
        axes = {int(a) for a in augment["flip_axes"] if a in (0, 1, 2)}
        common = axes if common is None else common & axes
    return tuple(sorted(common)) if common is not None else None


def flip_set(tta: bool | Sequence[Sequence[int]] | None) -> tuple[tuple[int, ...], ...]:
    """The flips a ``tta`` value asks for: ``True`` -> :data:`FLIPS_ALL`, ``False``/None -> identity
    only, else the given spatial-axis tuples (sorted), e.g. ``[(), (0,)]``; InputError for an empty
    list or an axis outside (0, 1, 2)."""
    if tta is True:
        return FLIPS_ALL
    if tta is False or tta is None:
        return ((),)
    try:
        flips = tuple(tuple(sorted(int(a) for a in f)) for f in tta)
    except (TypeError, ValueError):
        flips = ()
    if not flips or any(a not in (0, 1, 2) for f in flips for a in f):
        raise InputError(f"tta flips {tta!r} must be a non-empty list of spatial axis tuples from (0, 1, 2)")
    return flips


@dataclass(frozen=True)
class WindowSettings:
    """How the sliding window runs; every field is checked when the object is made (InputError, one
    line named like the command-line option).

    Attributes:
        overlap: fraction of the window shared by neighbours along each axis, in ``[0, 1)``
            (``--overlap``).
        tta: flip test-time augmentation: ``True`` averages all 8 axis-flip combinations, or the flips
            as spatial-axis tuples ``[(), (0,)]`` (stored as tuples) (``--tta``).
        sw_batch_size: windows per model call, a whole number >= 1 (``--sw-batch``).
        device: where the models run (a ``torch.device`` or its name; None: each model's own device).
            :func:`~hiend_model.predict.predict_files` resolves it (:func:`hiend_model.device.resolve_device`).
        amp: bfloat16 autocast on CUDA (logits are accumulated in float32) (``--amp``).
        progress: called as ``progress(windows_done, windows_total)`` after each model call, or None.
    """

    overlap: float = 0.5
    tta: bool | tuple[tuple[int, ...], ...] = False
    sw_batch_size: int = 1
    device: Any = None
    amp: bool = False
    progress: Progress | None = None

    def __post_init__(self) -> None:
        overlap = self.overlap
        if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real):
            raise InputError(f"--overlap {overlap!r}: expected a fraction of the window in [0, 1)")
        if not 0.0 <= overlap < 1.0:  # NaN fails every comparison
            raise InputError(f"--overlap {overlap}: expected a fraction of the window in [0, 1)")
        sw = self.sw_batch_size
        if isinstance(sw, bool) or not isinstance(sw, numbers.Integral) or sw < 1:
            raise InputError(f"--sw-batch {sw}: expected a whole number of windows >= 1")
        if self.tta is None:
            object.__setattr__(self, "tta", False)
        elif not isinstance(self.tta, bool):
            object.__setattr__(self, "tta", flip_set(self.tta))  # checked, and hashable
        if not isinstance(self.amp, bool):
            raise InputError(f"--amp {self.amp!r}: expected True or False")
        if self.progress is not None and not callable(self.progress):
            raise InputError(f"progress {self.progress!r}: expected a callable(done, total) or None")

    @property
    def flips(self) -> tuple[tuple[int, ...], ...]:
        """The flips each window is predicted under (identity only without ``tta``)."""
        return flip_set(self.tta)

    def with_progress(self, progress: Progress | None) -> WindowSettings:
        """The same settings reporting to ``progress`` (e.g. one progress-bar task per scan)."""
        return replace(self, progress=progress)
