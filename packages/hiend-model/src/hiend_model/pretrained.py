"""A model from a pre-trained file of either format: a hiend ``.safetensors`` checkpoint or the paper's
``.pth`` (:mod:`hiend_model.official`).

:func:`load_pretrained_mae` reads a pre-training model; :func:`load_unetr_init` builds a UNETR whose
encoder comes from one (what ``hiend-train finetune --init PATH`` runs for a pre-training file). A
``.safetensors`` path is a hiend checkpoint (:func:`hiend_model.checkpoint.load_checkpoint`: its own
config, kind ``mae`` required); any other path, or a state dict, is the paper's pre-training layout.
"""

from __future__ import annotations

import os
from pathlib import Path

from hiend_data.errors import InputError

from .checkpoint import load_checkpoint
from .kinds import MAE_KIND
from .mae import HiEndMAE
from .official import load_official_pretrained
from .unetr import UNETR

__all__ = ["load_pretrained_mae", "load_unetr_init"]


def load_pretrained_mae(source: str | os.PathLike[str] | dict, **arch: object) -> HiEndMAE:
    """A pre-training model from a file of either format.

    ``source``: a hiend ``.safetensors`` checkpoint of kind ``"mae"`` (its config is used; ``arch``
    must be empty), or the paper's pre-training checkpoint, a path or its state dict (``arch``: see
    :func:`load_official_pretrained`; head counts default to the released model's).
    """
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".safetensors":
        if arch:
            raise InputError(
                f"{source}: a hiend checkpoint holds its architecture; "
                f"{', '.join(sorted(arch))} apply to the paper's .pth only"
            )
        mae, _ = load_checkpoint(source, expected_kind=MAE_KIND.name)
        return mae
    if isinstance(source, (str, os.PathLike, dict)):
        return load_official_pretrained(source, **arch)
    raise InputError(f"expected a checkpoint path or the paper's state dict, got {type(source).__name__}")


def load_unetr_init(
    source: str | os.PathLike[str] | dict | HiEndMAE,
    num_classes: int,
    feature_size: int = 16,
    *,
    arch: dict | None = None,
    **overrides: object,
) -> UNETR:
    """A UNETR whose encoder comes from a pre-training model: :meth:`UNETR.from_mae` of
    :func:`load_pretrained_mae` (``source`` may also be a HiEndMAE).

    ``arch``: the paper's architecture fields for a ``.pth`` (e.g. ``{"num_heads": 4}``); ``overrides``:
    UNETRConfig fields of the new model (e.g. ``drop_path``). What ``hiend-train finetune --init PATH``
    runs for a pre-training checkpoint.
    """
    mae = source if isinstance(source, HiEndMAE) else load_pretrained_mae(source, **(arch or {}))
    return UNETR.from_mae(mae, num_classes=num_classes, feature_size=feature_size, **overrides)
