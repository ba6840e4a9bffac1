"""The tensors of a checkpoint file, checked against the model that will hold them.

A file's names and shapes must be those of the model its config describes (:func:`check_state_dict`,
from the header alone: :func:`tensor_shapes`), and its floating values finite (:func:`check_finite`,
:func:`check_file_finite`): NaN or inf weights (a diverged run, a corrupted file) compute nothing
meaningful. Every refusal is one :class:`~hiend_data.errors.InputError` line naming the file, the first
offending tensors and how many there are. Used for hiend's ``.safetensors`` files
(:mod:`hiend_model.checkpoint`) and the paper's ``.pth`` (:mod:`hiend_model.official`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from hiend_data.errors import InputError

from .kinds import SOURCES

__all__ = [
    "tensor_shapes",
    "check_state_dict",
    "check_finite",
    "check_file_finite",
    "open_error",
    "Shape",
    "FiniteCheck",
]

_MAX_SHOWN = 3  # mismatching keys named in one error line


def open_error(path: Path, exc: Exception) -> InputError:
    """The one line for a file safetensors cannot open (with a hint when it is a torch.save file)."""
    hint = ""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if head[:2] == b"PK" or head[:1] == b"\x80":
            hint = (
                " (it looks like a torch.save file: convert the paper's checkpoints with "
                f"'hiend-model convert SRC DST --from {'|'.join(SOURCES)}')"
            )
    except OSError:
        pass
    return InputError(
        f"{path}: not a readable safetensors checkpoint (truncated or another format: {exc}){hint}"
    )


def tensor_shapes(path: str | os.PathLike[str]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in the file, from the header only."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise open_error(path, exc) from None


class Shape:
    """Stands in for a tensor in :func:`check_state_dict` when only its shape is known."""

    def __init__(self, shape: list[int]) -> None:
        self.shape = tuple(shape)


def _shown(keys: list[str]) -> str:
    more = f" and {len(keys) - _MAX_SHOWN} more" if len(keys) > _MAX_SHOWN else ""
    return ", ".join(keys[:_MAX_SHOWN]) + more


def check_state_dict(path: Path | str, expected: dict[str, Any], found: dict[str, Any]) -> None:
    """InputError naming the first mismatching keys (with both shapes), missing and unexpected keys.

    ``expected`` is the model's state_dict, ``found`` the file's tensors (or anything with ``.shape``).
    """
    mismatched = [
        f"{k} (checkpoint {tuple(found[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in found and tuple(found[k].shape) != tuple(v.shape)
    ]
    if mismatched:
        raise InputError(
            f"{path}: {len(mismatched)} tensor shape mismatch(es) with the model its config "
            f"describes: {_shown(mismatched)}"
        )
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_shown(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_shown(unexpected)}")
        raise InputError(f"{path}: tensors do not match the model its config describes: " + "; ".join(parts))


def _non_finite(tensor: Any) -> int:
    """How many values of ``tensor`` are NaN or +-inf (0 for integer and bool tensors)."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or bool(torch.isfinite(tensor).all()):
        return 0
    return int(tensor.numel() - torch.isfinite(tensor).sum())


class FiniteCheck:
    """Collects the non-finite tensors of one file (fed one tensor at a time) and raises at the end.

    ``add(name, tensor, stored)``: ``tensor`` as the model holds it; ``stored`` the file's own tensor
    when it was cast (a float64 value beyond float32's range is finite in the file and inf in the
    model: refused too, and said so)."""

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self.first: tuple[str, int, int, bool] | None = None  # (name, bad values, values, overflow)
        self.bad_tensors = 0

    def add(self, name: str, tensor: Any, stored: Any = None) -> None:
        bad = _non_finite(tensor)
        if bad:
            self.bad_tensors += 1
            if self.first is None:
                overflow = stored is not None and stored is not tensor and not _non_finite(stored)
                self.first = (name, bad, int(tensor.numel()), overflow)

    def check(self) -> None:
        if self.first is None:
            return
        name, bad, total, overflow = self.first
        others = self.bad_tensors - 1
        more = f" (and {others} more tensor{'s' if others > 1 else ''} with NaN or inf)" if others else ""
        if overflow:
            raise InputError(
                f"{self.path}: tensor {name!r}: {bad} of its {total} values are beyond the range of "
                f"float32, the model's dtype (inf once cast){more}; the weights are corrupt or diverged"
            )
        raise InputError(
            f"{self.path}: tensor {name!r}: {bad} of its {total} values are NaN or inf{more}; "
            "the weights are corrupt or come from a diverged run, and would predict nothing"
        )


def check_finite(path: Path | str, tensors: Any) -> None:
    """InputError unless every floating tensor of ``tensors`` (a ``{name: tensor}`` mapping or
    ``(name, tensor)`` pairs) is finite: the rule for every checkpoint a model is built from. The line
    names ``path``, the first tensor holding NaN or inf, how many of its values are, and how many
    further tensors are affected. One ``torch.isfinite`` pass per tensor."""
    check = FiniteCheck(path)
    for name, tensor in tensors.items() if hasattr(tensors, "items") else tensors:
        check.add(name, tensor)
    check.check()


def check_file_finite(path: str | os.PathLike[str]) -> None:
    """Read every tensor of a checkpoint file (one at a time) and apply :func:`check_finite`, a float64
    tensor as the float32 the model would hold (a value beyond float32's range is refused here too)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            check = FiniteCheck(path)
            for key in fh.keys():
                t = fh.get_tensor(key)
                wide = t.is_floating_point() and t.element_size() > 4  # the model holds float32
                check.add(key, t.to(torch.float32) if wide else t, t)
    except (SafetensorError, OSError) as exc:
        raise open_error(path, exc) from None
    check.check()
