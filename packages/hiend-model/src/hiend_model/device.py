"""Choosing a torch device from a user's ``--device`` value: one rule for predict and for training.

``auto`` -> ``cuda`` when a CUDA GPU is visible, else ``mps`` when Apple's Metal backend is, else ``cpu``;
``cpu``; ``cuda`` (``cuda:LOCAL_RANK`` under torchrun: pass ``local_rank``); ``cuda:N``; ``mps``.
Anything else, or a backend this torch build or machine lacks, is an :class:`InputError` naming the value.
"""

from __future__ import annotations

from typing import Any

from hiend_data.errors import InputError

__all__ = ["resolve_device", "DEVICE_HELP"]

DEVICE_HELP = "auto | cpu | cuda | cuda:N | mps"


def resolve_device(name: str | None, local_rank: int = 0) -> Any:
    """``name`` (see the module) -> ``torch.device``; ``None`` means ``cpu``.

    ``local_rank`` picks the GPU of a bare ``cuda`` (each torchrun process its own); an explicit
    ``cuda:N`` is kept as given.
    """
    import torch

    spec = (name or "cpu").strip().lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps is not None and mps.is_available())
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else ("mps" if has_mps else "cpu")
    kind, _, index = spec.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (
        index and (kind != "cuda" or not (index.isascii() and index.isdigit()))
    ):
        raise InputError(f"device {name!r}: expected {DEVICE_HELP}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                f"device {name!r}: CUDA is not available in this torch build or machine (use --device cpu)"
            )
        if index and int(index) >= torch.cuda.device_count():
            raise InputError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(spec if index else f"cuda:{local_rank}")
    if kind == "mps" and not has_mps:
        raise InputError(f"device {name!r}: Apple's MPS backend is not available here (use --device cpu)")
    return torch.device(kind)
