"""Label value -> name: from ``--labels`` (an nnU-Net dataset.json or a hiend checkpoint) and from
DICOM-SEGs' segment labels, checked to agree.

Read without torch or hiend-model: a checkpoint's names are its safetensors metadata ``extra.labels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hiend_data.errors import InputError
from hiend_data.jsonfile import parse_json
from hiend_data.labels import label_names_from_json, read_label_names

from .matching import CasePair, is_seg_name

#: the ``format`` of hiend model checkpoints' metadata (hiend_model.checkpoint.FORMAT; not imported:
#: hiend-eval reads checkpoints' label names without hiend-model or torch)
CHECKPOINT_FORMAT = "hiend"


def read_checkpoint_label_names(path: Path) -> dict[int, str]:
    """Label value -> name from a hiend checkpoint (``.safetensors``): its metadata ``extra.labels``
    (what ``hiend-train finetune`` stores from the dataset.json), read without torch.

    InputError naming ``path`` for a file that is not a readable hiend checkpoint, and for one that
    carries no label names (then a dataset.json gives them).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    try:
        with safe_open(str(path), framework="numpy") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise InputError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise InputError(
            f"{path}: not a hiend checkpoint (metadata format is {metadata.get('format')!r}, "
            f"expected {CHECKPOINT_FORMAT!r})"
        )
    extra = parse_json(metadata.get("extra", "{}"), f"{path}: metadata 'extra'")
    labels = extra.get("labels") if isinstance(extra, dict) else None
    if labels is None:
        raise InputError(
            f"{path}: this checkpoint carries no label names (fine-tuned without a dataset.json's "
            "labels); give --labels the dataset.json instead"
        )
    return label_names_from_json(labels, f"{path}: metadata extra.labels")


def read_label_source(path: Path) -> dict[int, str]:
    """Label value -> name from ``--labels``: a hiend checkpoint (``.safetensors``:
    :func:`read_checkpoint_label_names`) or an nnU-Net ``dataset.json`` (anything else:
    :func:`hiend_data.labels.read_label_names`)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        return read_checkpoint_label_names(path)
    return read_label_names(path)


def _placeholder(value: int, name: str) -> bool:
    """``label 3`` for segment 3: what ``hiend-model predict`` names a class it has no name for."""
    return name == f"label {value}"


def check_seg_names(pairs: Sequence[CasePair], labels: dict[int, str] | None) -> dict[int, str]:
    """The names the DICOM-SEGs among ``pairs`` give their segments (references first), after checking
    that they agree: every SEG names each segment number as ``labels`` (``--labels``) names that value,
    or, without ``labels``, as the first SEG that names it. A SEG whose segment 1 is ``spleen`` scored
    against maps whose 1 is ``liver`` would be scored as the same structure, silently: an InputError
    names the SEG, the segment and both names. hiend's placeholder ``label N`` (predict without names)
    agrees with any name. Reads each SEG's header only."""
    from hiend_data.dicom_seg import segment_names

    known: dict[int, tuple[str, str]] = {v: (n, "--labels") for v, n in (labels or {}).items()}
    for what in ("ref", "pred"):
        for pair in pairs:
            path = getattr(pair, what)
            if path is None or not is_seg_name(path):
                continue
            for value, name in segment_names(path).items():
                if _placeholder(value, name):
                    continue
                if value not in known:
                    known[value] = (name, path.name)
                elif known[value][0] != name:
                    other, where = known[value]
                    raise InputError(
                        f"{path}: segment {value} is {name!r} but {where} names label {value} {other!r}: "
                        "the maps do not mean the same structures"
                    )
    return {v: n for v, (n, _) in known.items()}
