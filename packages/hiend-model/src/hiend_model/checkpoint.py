"""hiend model checkpoints: one ``.safetensors`` file with everything needed to use the model.

Layout (DESIGN.md, "Model checkpoints"): the tensors are the model's ``state_dict`` (parameters and
persistent buffers, at the dtype they were saved with); the safetensors metadata holds JSON strings

* ``format``: ``"hiend"``;
* ``kind``: ``"mae"`` (pre-training model, :class:`~hiend_model.mae.HiEndMAE`) or ``"unetr"``
  (:class:`~hiend_model.unetr.UNETR`): the names of :mod:`hiend_model.kinds`;
* ``config``: the full model config (``MAEConfig`` / ``UNETRConfig`` fields);
* ``plan``: the preprocessing (:class:`hiend_data.Plan` fields) or ``null``;
* ``versions``: package versions that wrote the file (hiend-model, hiend-data, torch, python);
* ``extra``: free JSON provenance (e.g. what a converted file came from, training epochs); a
  fine-tuned UNETR's ``extra.labels`` holds its dataset's label names, ``{"1": "spleen", ...}``
  (:mod:`hiend_data.labels`; :attr:`CheckpointInfo.label_names`).

Loading never unpickles anything (safetensors holds raw tensors only). Every problem with a file
raises :class:`~hiend_data.errors.InputError` naming it. A model whose weights hold NaN or inf (a
diverged run, a corrupted file) computes nothing meaningful: loading it (:func:`load_checkpoint`) and
describing it (:func:`checkpoint_summary`) refuse it, naming the first such tensor
(:func:`check_finite`). The checks of the tensors themselves (names, shapes, finite values) live in
:mod:`hiend_model.tensors` and are re-exported here.
"""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import torch
from pydantic import ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

import hiend_data
from hiend_data import Plan
from hiend_data.atomic import atomic_path
from hiend_data.errors import InputError, from_validation_error
from hiend_data.jsonfile import parse_json
from hiend_data.labels import label_names_from_json, label_names_to_json

from .__about__ import __version__
from .config import validated
from .kinds import KINDS, build_empty, get_kind, kind_of
from .tensors import (
    FiniteCheck,
    Shape,
    check_file_finite,
    check_finite,
    check_state_dict,
    open_error,
    tensor_shapes,
)

__all__ = [
    "FORMAT",
    "CheckpointInfo",
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_info",
    "tensor_shapes",
    "check_state_dict",
    "check_finite",
    "check_file_finite",
    "checkpoint_summary",
    "parameter_names",
    "model_kind",
    "package_versions",
]

FORMAT = "hiend"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's metadata says. ``plan`` is a :class:`hiend_data.Plan` or None."""

    kind: str
    config: dict[str, Any]
    plan: Any = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def label_names(self) -> dict[int, str] | None:
        """Label value -> name (background left out) from ``extra["labels"]`` (what fine-tuning stores
        from the dataset.json); None when the checkpoint carries none. InputError naming the file when
        the entry is not ``{"1": "name", ...}``."""
        labels = self.extra.get("labels") if isinstance(self.extra, dict) else None
        if labels is None:
            return None
        return label_names_from_json(labels, f"{self.path or 'checkpoint'}: metadata extra.labels")


# ------------------------------------------------------------------------------------------ models


def model_kind(model: Any) -> str:
    """``"mae"`` for a :class:`HiEndMAE`, ``"unetr"`` for a :class:`UNETR`; InputError otherwise."""
    kind = kind_of(model)
    if kind is None:
        raise InputError(f"cannot save a {type(model).__name__}: expected a HiEndMAE or a UNETR")
    return kind.name


def package_versions() -> dict[str, str]:
    """Versions recorded in every checkpoint."""
    return {
        "hiend-model": __version__,
        "hiend-data": hiend_data.__version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------------ saving


def _plan_json(plan: Any) -> str:
    if plan is None:
        return "null"
    if hasattr(plan, "model_dump_json"):
        return plan.model_dump_json()
    if isinstance(plan, dict):
        return Plan.model_validate(plan).model_dump_json()
    raise InputError(f"plan must be a hiend_data.Plan, a dict or None, got {type(plan).__name__}")


def _unshared(state: dict[str, Any]) -> dict[str, Any]:
    """CPU, contiguous copies of the tensors with no two sharing memory (safetensors refuses aliases).

    Tied parameters are stored once per name; loading copies the same values into each.
    """
    out, seen = {}, set()
    for name, tensor in state.items():
        t = tensor.detach().to("cpu").contiguous()
        storage = t.untyped_storage().data_ptr() if t.numel() else None
        if storage is not None and storage in seen:
            t = t.clone()  # an alias (tied weight or view) of a tensor already stored
        elif storage is not None:
            seen.add(storage)
        out[name] = t
    return out


def save_checkpoint(
    path: str | os.PathLike[str], model: Any, plan: Any = None, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` (HiEndMAE or UNETR) with its config, ``plan`` and ``extra`` to one .safetensors file.

    The file is written atomically (:func:`hiend_data.atomic.atomic_path`: a temporary name in the same
    folder, fsync-ed and renamed), so it appears complete or not at all. Returns the path.
    """
    path = Path(path)
    kind = model_kind(model)
    try:
        extra_json = json.dumps(extra or {})
    except TypeError as exc:
        raise InputError(f"checkpoint extra metadata for {path} is not JSON-serialisable: {exc}") from None
    metadata = {
        "format": FORMAT,
        "kind": kind,
        "config": json.dumps(model.config.model_dump(mode="json")),
        "plan": _plan_json(plan),
        "versions": json.dumps(package_versions()),
        "extra": extra_json,
    }
    tensors = _unshared(model.state_dict())
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


# ----------------------------------------------------------------------------------------- loading


def _parse_metadata(path: Path, metadata: dict[str, str] | None) -> CheckpointInfo:
    if not metadata or metadata.get("format") != FORMAT:
        got = (metadata or {}).get("format")
        raise InputError(f"{path}: not a hiend checkpoint (metadata format is {got!r}, expected {FORMAT!r})")
    kind = metadata.get("kind")
    if kind not in KINDS:  # the checkpoint names only, not the aliases
        raise InputError(f"{path}: unknown checkpoint kind {kind!r}; expected one of {', '.join(KINDS)}")
    fields = {}
    for name in ("config", "plan", "versions", "extra"):
        raw = metadata.get(name, "null" if name == "plan" else "{}")
        fields[name] = parse_json(raw, f"{path}: metadata {name!r}")
    if not isinstance(fields["config"], dict) or not fields["config"]:
        raise InputError(f"{path}: metadata 'config' is missing or not a JSON object")
    for name in ("versions", "extra"):
        if fields[name] is not None and not isinstance(fields[name], dict):
            got = type(fields[name]).__name__
            raise InputError(f"{path}: metadata {name!r} is a JSON {got}, expected an object (or null)")
    try:
        validated(KINDS[kind].config_class, fields["config"])
    except InputError as exc:
        raise InputError(f"{path}: metadata 'config': {exc}") from None
    plan = None
    if fields["plan"] is not None:
        try:
            plan = Plan.model_validate(fields["plan"])
        except ValidationError as exc:
            raise from_validation_error(exc, f"{path}: metadata 'plan' is invalid") from None
        _check_window(path, plan)
    return CheckpointInfo(
        kind=kind,
        config=fields["config"],
        plan=plan,
        versions=fields["versions"] or {},
        extra=fields["extra"] or {},
        path=path,
    )


#: The largest magnitude (HU) a checkpoint plan's CT window end may have: far beyond any scanner's
#: range (-1024 .. about 30,000), and small enough that the window's float32 arithmetic stays exact.
MAX_WINDOW_HU = 1e6


def _check_window(path: Path, plan: Any) -> None:
    """InputError naming ``path`` unless the plan's window ends are finite and within
    :data:`MAX_WINDOW_HU`: a window of ``[-1e308, 1e308]`` or ``[-inf, inf]`` maps every scan to NaN or
    one grey value, which would be blamed on the scan."""
    lo, hi = plan.window
    if not all(math.isfinite(v) and abs(v) <= MAX_WINDOW_HU for v in (lo, hi)):
        raise InputError(
            f"{path}: metadata 'plan' window [{lo}, {hi}]: each end must be a finite number of HU within "
            f"+-{MAX_WINDOW_HU:,.0f}"
        )


def _check_kind(path: Path, info: CheckpointInfo, expected_kind: str | None) -> None:
    if expected_kind is not None and info.kind != (expected_kind := get_kind(expected_kind).name):
        raise InputError(f"{path}: expected a {expected_kind} checkpoint, got {info.kind}")


def read_checkpoint_info(path: str | os.PathLike[str], expected_kind: str | None = None) -> CheckpointInfo:
    """The metadata of a checkpoint without reading its tensors (fast even for GB files)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
    except (SafetensorError, OSError) as exc:
        raise open_error(path, exc) from None
    info = _parse_metadata(path, metadata)
    _check_kind(path, info, expected_kind)
    return info


def load_checkpoint(
    path: str | os.PathLike[str],
    expected_kind: str | None = None,
    map_location: Any = "cpu",
    config_overrides: dict[str, Any] | None = None,
) -> tuple[Any, CheckpointInfo]:
    """Rebuild the model a checkpoint describes and load its weights.

    Args:
        path: the ``.safetensors`` file.
        expected_kind: ``"mae"`` or ``"unetr"`` to refuse the other kind (InputError).
        map_location: device the model ends up on.
        config_overrides: runtime config fields to change (e.g. ``{"attn_backend": "math"}``).

    Returns:
        ``(model, info)``: the model in eval mode and the checkpoint's :class:`CheckpointInfo`.

    Raises InputError naming the file for a file that cannot be read, metadata that do not describe its
    tensors, and weights holding NaN or inf (:func:`check_finite`, checked on the values the model gets).
    """
    path = Path(path)
    info = read_checkpoint_info(path, expected_kind)
    config = {**info.config, **(config_overrides or {})}
    # On the meta device when it can be: no random init, no memory (the file's tensors are assigned).
    model, empty = build_empty(info.kind, config)
    state = model.state_dict()  # meta tensors (shapes, dtypes) or the live parameters and buffers
    finite = FiniteCheck(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            check_state_dict(path, state, {k: Shape(fh.get_slice(k).get_shape()) for k in fh.keys()})
            if empty:
                # The file's tensors become the model's (cast to its dtypes): one copy in memory.
                loaded = {}
                for key in fh.keys():
                    t = fh.get_tensor(key)
                    loaded[key] = t if t.dtype == state[key].dtype else t.to(state[key].dtype)
                    finite.add(key, loaded[key], t)
                finite.check()  # before the model holds them
                model.load_state_dict(loaded, strict=True, assign=True)
                del loaded
            else:
                # One tensor at a time straight into the initialised model.
                with torch.no_grad():
                    for key in fh.keys():
                        t = fh.get_tensor(key)
                        state[key].copy_(t)
                        finite.add(key, state[key], t)
                finite.check()
    except (SafetensorError, OSError) as exc:
        raise open_error(path, exc) from None
    del state
    model.to(map_location).eval()
    if config_overrides:
        info = CheckpointInfo(
            kind=info.kind,
            config=model.config.model_dump(mode="json"),
            plan=info.plan,
            versions=info.versions,
            extra=info.extra,
            path=path,
        )
    return model, info


# ----------------------------------------------------------------------------------------- summary


def parameter_names(kind: str, config: dict[str, Any]) -> set[str]:
    """Which state-dict entries of a ``kind`` model are parameters (the rest are buffers such as sin-cos
    embeddings), from a model built on the meta device (no weights allocated or initialised)."""
    model, _ = build_empty(kind, config)
    return {name for name, _ in model.named_parameters()}


def checkpoint_summary(path: str | os.PathLike[str], check_values: bool = True) -> dict[str, Any]:
    """JSON-ready description of a checkpoint: metadata, parameter counts.

    The tensors' names and shapes must be those of the model the config describes
    (:func:`check_state_dict`, from the header): ``in_chans`` or ``num_classes`` that lie are refused
    as loading refuses them. ``check_values``: read every tensor once and refuse weights holding NaN or
    inf (:func:`check_file_finite`), as loading would; False reads the header only (fast for GB files).

    What ``hiend-model info`` prints: ``path``, ``file_bytes``, ``kind``, ``parameters``,
    ``parameters_by_module`` (per top-level module), ``buffer_values``, ``tensors``, ``config``, ``plan``
    (or None), ``labels`` (label value -> name as ``{"1": "spleen"}``, or None), ``versions``, ``extra``.
    """
    path = Path(path)
    info = read_checkpoint_info(path)
    names = info.label_names
    shapes = tensor_shapes(path)
    model, _ = build_empty(info.kind, info.config)  # meta device: shapes and names, no memory
    check_state_dict(path, model.state_dict(), {k: Shape(list(s)) for k, s in shapes.items()})
    param_names = {name for name, _ in model.named_parameters()}
    del model
    if check_values:
        check_file_finite(path)
    numel = {k: int(torch.Size(s).numel()) for k, s in shapes.items()}
    by_module: dict[str, int] = {}
    for k, n in numel.items():
        if k in param_names:
            top = k.split(".")[0]
            by_module[top] = by_module.get(top, 0) + n
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "kind": info.kind,
        "parameters": sum(n for k, n in numel.items() if k in param_names),
        "parameters_by_module": by_module,
        "buffer_values": sum(n for k, n in numel.items() if k not in param_names),
        "tensors": len(shapes),
        "config": info.config,
        "plan": None if info.plan is None else info.plan.model_dump(mode="json"),
        "labels": None if names is None else label_names_to_json(names),
        "versions": info.versions,
        "extra": info.extra,
    }
