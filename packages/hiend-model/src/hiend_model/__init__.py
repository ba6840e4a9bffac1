"""hiend-model: 3D ViT, Hi-End-MAE pre-training model, UNETR, checkpoints and sliding-window segmentation.

Names are imported lazily so ``import hiend_model`` (and the CLI's ``--help``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .__about__ import __version__

_LAZY = {
    "HiEndMAE": ".mae",
    "MAEOutput": ".mae",
    "build": ".mae",
    "UNETR": ".unetr",
    "MAEConfig": ".config",
    "UNETRConfig": ".config",
    "PRESETS": ".config",
    "load_official_pretrained": ".official",
    "load_official_finetuned": ".official",
    "export_official_pretrained": ".official",
    "export_official_finetuned": ".official",
    "infer_arch_from_state_dict": ".official",
    "convert_official": ".official",
    "load_pretrained_mae": ".pretrained",
    "load_unetr_init": ".pretrained",
    "DECODERS": ".decoders",
    "save_checkpoint": ".checkpoint",
    "load_checkpoint": ".checkpoint",
    "read_checkpoint_info": ".checkpoint",
    "predict_files": ".predict",
    "predict_volume": ".predict",
    "predict_ensemble": ".predict",
    "ensemble_probabilities": ".ensemble",
    "Predictor": ".predict",
    "WindowSettings": ".window",
}

__all__ = [
    "__version__",
    "HiEndMAE",
    "MAEOutput",
    "build",
    "UNETR",
    "MAEConfig",
    "UNETRConfig",
    "PRESETS",
    "load_official_pretrained",
    "load_official_finetuned",
    "export_official_pretrained",
    "export_official_finetuned",
    "infer_arch_from_state_dict",
    "convert_official",
    "load_pretrained_mae",
    "load_unetr_init",
    "DECODERS",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
    "predict_files",
    "predict_volume",
    "predict_ensemble",
    "ensemble_probabilities",
    "Predictor",
    "WindowSettings",
]

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
    from .config import PRESETS, MAEConfig, UNETRConfig
    from .decoders import DECODERS
    from .ensemble import ensemble_probabilities
    from .mae import HiEndMAE, MAEOutput, build
    from .official import (
        convert_official,
        export_official_finetuned,
        export_official_pretrained,
        infer_arch_from_state_dict,
        load_official_finetuned,
        load_official_pretrained,
    )
    from .predict import Predictor, predict_ensemble, predict_files, predict_volume
    from .pretrained import load_pretrained_mae, load_unetr_init
    from .unetr import UNETR
    from .window import WindowSettings


def __getattr__(name: str):  # noqa: ANN202 - PEP 562 lazy attribute
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hiend_model' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
