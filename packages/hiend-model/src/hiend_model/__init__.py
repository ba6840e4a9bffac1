"""hiend-model: 3D ViT, Hi-End-MAE pre-training model, UNETR, checkpoints and sliding-window segmentation."""

from .__about__ import __version__

__all__ = ["__version__"]
