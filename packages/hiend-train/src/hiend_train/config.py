"""Run configurations: the paper's recipe as defaults, loadable from TOML / JSON, overridable by flags.

Precedence (lowest first): the defaults below < the config file < command-line flags. Both configs
are pydantic models with ``extra="forbid"``: a misspelt field is an error that names it. Every run
writes its resolved config to ``RUN/config.json``.

Units: learning rates per optimizer step, epochs = passes over the training cases, ``batch_size`` =
volumes per step (each gives ``num_samples`` crops, so a step sees ``batch_size * num_samples`` crops
per process), sizes in voxels.

No field takes NaN or infinity (``--lr inf``, ``--set warmup_epochs=Infinity``, ``lr = inf`` in TOML,
``Infinity`` in JSON, inside the ``model`` / ``sampler`` tables and lists too): the config is refused
with one line naming the field and the value, before the run folder is touched.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from hiend_data.errors import InputError, from_validation_error
from hiend_data.sampling import SamplerConfig
from hiend_model.config import MAEConfig, finite_error, nonfinite

Precision = Literal["auto", "fp32", "bf16", "fp16"]

#: fields that may change between a run and its ``--resume`` (they do not change what is computed)
RUNTIME_FIELDS = frozenset(
    {"out", "cache", "workers", "stop_after", "progress", "log_every", "device", "preview_every"}
    | {"stop_after_steps", "save_every_steps", "save_every_minutes", "keep_last", "tensorboard", "compile"}
    | {"prefetch", "labels"}
    | {"probe", "probe_every", "probe_cases", "probe_val_cases", "probe_crops"}
)


#: keys of earlier versions and the field each is now (config files, RUN/config.json of older runs):
#: ``kind`` was the run's stage; ``kind`` now means the model's kind (mae | unetr) only
LEGACY_KEYS = {"kind": "stage"}


def current_keys(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` with the keys of :data:`LEGACY_KEYS` under their current names (the current name
    wins where both are given; :func:`make_config` refuses the two when they disagree)."""
    out = dict(fields)
    for old, new in LEGACY_KEYS.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out


class TrainConfig(BaseModel):
    """Fields shared by pre-training and fine-tuning."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    cache: Path | None = Field(None, description="hiend-data cache folder (hiend-data preprocess)")
    out: Path | None = Field(None, description="run folder: config.json, log.jsonl, checkpoints, state.pt")
    preset: str = Field("vit-b16", description="model preset: vit-b16, vit-l12, vit-l16, tiny")
    model: dict[str, Any] = Field(default_factory=dict, description="MAEConfig field overrides")
    sampler: dict[str, Any] = Field(default_factory=dict, description="SamplerConfig field overrides")
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(2, ge=1, description="volumes per step and process")
    num_samples: int = Field(8, ge=1, description="crops per volume")
    workers: int = Field(4, ge=0, description="DataLoader worker processes per training process")
    prefetch: int = Field(2, ge=1, description="batches each DataLoader worker prepares ahead")
    augment_on: Literal["cpu", "gpu"] = Field(
        "cpu",
        description="where the crop augmentation runs: cpu (in the DataLoader workers) or gpu (workers only "
        "crop; flips, rot90 and intensity on the device, same distribution)",
    )
    seed: int = 0
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:N")
    precision: Precision = Field(
        "auto", description="auto: bf16 on CUDA (fp16 where bf16 is missing), fp32 on CPU"
    )
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0)
    min_lr: float = Field(0.0, ge=0, description="end of the cosine")
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_epochs: float = Field(10.0, ge=0)
    clip_grad: float | None = Field(None, gt=0, description="max gradient norm (None: no clipping)")
    val_every: int = Field(10, ge=1, description="validate every N epochs (and after the last)")
    val_fraction: float = Field(0.0, ge=0, lt=1, description="cases held out for validation (seeded split)")
    save_every: int = Field(1, ge=1, description="write last.safetensors + state.pt every N epochs")
    log_every: int = Field(10, ge=1, description="one log.jsonl line every N optimizer steps")
    stop_after: int | None = Field(None, ge=1, description="stop once this epoch is done (resume later)")
    stop_after_steps: int | None = Field(
        None, ge=1, description="stop once this optimizer step is done, mid-epoch too (resume later)"
    )
    save_every_steps: int | None = Field(
        None, ge=1, description="also save every N optimizer steps, inside epochs too (resumable there)"
    )
    save_every_minutes: float | None = Field(
        None, gt=0, description="also save every M minutes of wall time (rank 0's clock), inside epochs too"
    )
    keep_last: int = Field(
        3, ge=0, description="periodic checkpoints kept as RUN/checkpoints/step_N.* (the newest K by step)"
    )
    tensorboard: bool = Field(
        False, description="also write RUN/tb/ for TensorBoard (pip install 'hiend-train[tensorboard]')"
    )
    compile: bool = Field(
        False,
        description="wrap the model in torch.compile (off by default: compiling takes minutes on a CPU)",
    )
    progress: bool = True

    @model_validator(mode="before")
    @classmethod
    def _legacy(cls, data: Any) -> Any:
        """``kind = "pretrain" | "finetune"`` (the name before ``stage``) is read as ``stage``."""
        return current_keys(data) if isinstance(data, dict) else data

    @model_validator(mode="before")
    @classmethod
    def _finite(cls, data: Any) -> Any:
        """NaN or infinity anywhere in the given fields (the ``model`` and ``sampler`` tables and lists
        included, which ``allow_inf_nan=False`` does not reach) is an error naming the field."""
        if isinstance(data, dict):
            problem = nonfinite(data, "")
            if problem is not None:
                raise ValueError(problem)
        return data

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} must not exceed lr={self.lr}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas} must be in [0, 1)")
        return self

    def identity(self) -> dict[str, Any]:
        """The fields that decide what the run computes (all but :data:`RUNTIME_FIELDS`), as JSON."""
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in RUNTIME_FIELDS}


class PretrainConfig(TrainConfig):
    """Hi-End-MAE pre-training: AdamW (0.9, 0.95), wd 0.05, lr 1e-4, 10 warm-up epochs then cosine,
    8 crops per volume, mixed precision on CUDA."""

    stage: Literal["pretrain"] = "pretrain"
    preview_every: int = Field(10, ge=0, description="reconstruction PNG every N epochs (0: never)")
    probe: Path | None = Field(
        None,
        description="a labelled cache: probe the encoder's segmentation features at step 0 and every "
        "probe_every optimizer steps (hiend_train.probe; log.jsonl 'probe' events, best_probe.safetensors)",
    )
    probe_every: int = Field(500, ge=1, description="optimizer steps between two probes")
    probe_cases: int = Field(4, ge=1, description="labelled cases the probe's head is fitted on")
    probe_val_cases: int = Field(2, ge=1, description="held-out labelled cases the probe scores")
    probe_crops: int = Field(4, ge=1, description="crops per probed case")


class FinetuneConfig(TrainConfig):
    """UNETR fine-tuning: AdamW 1e-4, wd 1e-5, 50 warm-up epochs then cosine, Dice + cross-entropy,
    4 crops per volume, sliding-window validation (overlap 0.5) by mean foreground Dice."""

    stage: Literal["finetune"] = "finetune"
    init: Path | None = Field(
        None, description="hiend mae/unetr .safetensors or the paper's pre-training .pth"
    )
    num_classes: int | None = Field(None, ge=2, description="None: 1 + the largest label in the cache")
    feature_size: int = Field(16, ge=1)
    num_samples: int = Field(4, ge=1)
    weight_decay: float = Field(1e-5, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_epochs: float = Field(50.0, ge=0)
    epochs: int = Field(1000, ge=1)
    val_fraction: float = Field(0.2, ge=0, lt=1)
    sw_overlap: float = Field(0.5, ge=0, lt=1)
    sw_batch: int = Field(1, ge=1)
    dice_weight: float = Field(1.0, ge=0)
    ce_weight: float = Field(1.0, ge=0)
    class_weights: Literal["none", "inverse_sqrt"] | list[float] = Field(
        "none",
        description="cross-entropy class weights: none (the paper's loss), inverse_sqrt (1/sqrt of "
        "each class's voxel share in the training cases, mean 1) or one weight per class",
    )
    train_cases: int | None = Field(
        None,
        ge=1,
        description="train on N of the training split's cases "
        "(seeded, nested in N; validation unchanged); None: all",
    )
    fold: int | None = Field(
        None,
        ge=0,
        description="k-fold: validate on fold k (0-based) of `folds`, "
        "train on the rest (instead of val_fraction)",
    )
    folds: int | None = Field(None, ge=2, description="k-fold: number of seeded folds K (with `fold`)")
    layer_decay: float | None = Field(
        None,
        gt=0,
        le=1,
        description="layer-wise lr decay of the encoder: "
        "block i gets lr x decay^(depth - i), patch/position embedding "
        "decay^(depth + 1), decoder 1",
    )
    encoder_lr_scale: float = Field(1.0, gt=0, description="multiplier on every encoder parameter's lr")
    freeze_encoder: bool = Field(
        False, description="keep the ViT encoder's weights fixed (train the decoder)"
    )
    labels: Path | None = Field(
        None,
        description="nnU-Net dataset.json whose label names the checkpoints carry "
        "(None: the cache's, from its dataset.json)",
    )

    @model_validator(mode="before")
    @classmethod
    def _fold_replaces_val_fraction(cls, data: Any) -> Any:
        """With ``fold`` the fold is the validation set: ``val_fraction`` becomes 0 (an explicit
        non-zero one is a contradiction)."""
        if isinstance(data, dict) and data.get("fold") is not None:
            given = data.get("val_fraction")
            if given is not None and given != 0:
                raise ValueError(
                    f"fold={data['fold']} and val_fraction={given}: with k-fold the fold is the "
                    "validation set; leave val_fraction out (or 0)"
                )
            data = {**data, "val_fraction": 0.0}
        return data

    @model_validator(mode="after")
    def _check_finetune(self) -> FinetuneConfig:
        if (self.fold is None) != (self.folds is None):
            raise ValueError(f"fold={self.fold}, folds={self.folds}: k-fold needs both (fold k of K folds)")
        if self.fold is not None and self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"fold={self.fold}: folds are numbered 0 to {self.folds - 1}")
        if self.freeze_encoder and (self.layer_decay is not None or self.encoder_lr_scale != 1.0):
            raise ValueError(
                "freeze_encoder: the frozen encoder has no learning rate; drop layer_decay / encoder_lr_scale"
            )
        return self


def _unique_keys(path: Path) -> Any:
    """A ``json.loads`` ``object_pairs_hook`` that refuses a key given twice in one object (json keeps
    the last one silently; TOML parsers refuse it themselves)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise InputError(f"{path}: {key}: given twice ({out[key]!r} and {value!r})")
            out[key] = value
        return out

    return hook


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``.toml`` or ``.json`` file -> dict of config fields (InputError naming the file otherwise;
    a JSON key given twice in one object is an error, as TOML has it)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            data = tomllib.loads(path.read_text())
        elif suffix == ".json":
            data = json.loads(path.read_text(), object_pairs_hook=_unique_keys(path))
        else:
            raise InputError(f"{path}: config files are .toml or .json, got {suffix or 'no suffix'!r}")
    except InputError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"{path}: not valid {suffix[1:].upper()} ({exc})") from None
    except RecursionError:
        raise InputError(f"{path}: not valid {suffix[1:].upper()} (nested too deeply)") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a table of config fields, got {type(data).__name__}")
    return data


#: the tables of a config and the model whose fields their entries are
TABLES: dict[str, type[BaseModel]] = {"model": MAEConfig, "sampler": SamplerConfig}


def check_value(cls: type[BaseModel], name: str, value: Any, where: str) -> None:
    """InputError ``where: message`` unless ``value`` is valid for the field ``name`` of ``cls`` on its
    own (its type and bounds; checks across fields belong to the whole config). Unknown names are left
    to the whole config, which reports them with the known ones."""
    field = cls.model_fields.get(name)
    if field is None:
        return
    problem = nonfinite(value, where)
    if problem is not None:
        raise InputError(problem)
    try:
        TypeAdapter(Annotated[field.annotation, field], config=_FINITE).validate_python(value)
    except ValidationError as exc:
        raise finite_error(exc, where) or from_validation_error(exc, where) from None


#: the validation settings of a lone field (:func:`check_value`): as in the configs, no NaN or infinity
_FINITE = ConfigDict(allow_inf_nan=False)


def check_tables_finite(fields: dict[str, Any], source: str) -> None:
    """InputError ``source: model.mlp_ratio: inf is not a finite number`` for a NaN or infinity in the
    ``model`` / ``sampler`` tables, given as a number or as text (``--set sampler.pos=inf``); the
    tables' other checks are left to their models when the run builds them."""
    for key, table in TABLES.items():
        entries = fields.get(key)
        if not isinstance(entries, dict):
            continue
        for sub, value in entries.items():
            field = table.model_fields.get(sub)
            if field is None or value is None:
                continue
            try:
                TypeAdapter(field.annotation, config=_FINITE).validate_python(value)
            except ValidationError as exc:
                error = finite_error(exc, f"{source}: {key}.{sub}")
                if error is not None:
                    raise error from None


def check_shadowed(
    cls: type[TrainConfig], earlier: dict[str, Any], later: dict[str, Any], source: str
) -> None:
    """Validate each value of ``earlier`` (from ``source``) that ``later`` replaces, field by field, so
    that no value given is dropped unchecked: a config file's ``lr = "banana"`` under ``--lr 1e-3`` is
    an error naming the file and the field. Entries of the ``model`` and ``sampler`` tables are checked
    against :class:`~hiend_model.config.MAEConfig` / :class:`~hiend_data.sampling.SamplerConfig`."""
    for key, value in earlier.items():
        if value is None or key not in later or later[key] == value:
            continue
        new = later[key]
        if key in TABLES and isinstance(value, dict) and isinstance(new, dict):
            for sub, sub_value in value.items():
                if new.get(sub, ...) != sub_value:
                    check_value(TABLES[key], sub, sub_value, f"{source}: {key}.{sub}")
        else:
            check_value(cls, key, value, f"{source}: {key}")


def make_config(
    cls: type[TrainConfig],
    *layers: dict[str, Any],
    source: str = "config",
    sources: Sequence[str] | None = None,
    nulls: Iterable[str] = (),
) -> TrainConfig:
    """Merge ``layers`` (later wins; ``None`` values are skipped) and validate into ``cls``.

    ``source`` names where the fields came from in the one-line InputError; ``sources`` (one per
    layer) names each layer for a value that a later layer replaces: such a value is validated on its
    own all the same (:func:`check_shadowed`). ``nulls``: fields set to None explicitly (``--set
    clip_grad=null``), over every layer (and validated: ``lr`` cannot be None).
    """
    nulls = set(nulls)
    names = list(sources) if sources is not None else [source] * len(layers)
    for i, layer in enumerate(layers[:-1]):
        after: dict[str, Any] = dict.fromkeys(nulls)
        for other in layers[i + 1 :]:
            after.update({k: v for k, v in other.items() if v is not None})
        check_shadowed(cls, layer, after, names[i])
    fields: dict[str, Any] = {}
    for layer in layers:
        fields.update({k: v for k, v in layer.items() if v is not None})
    fields.update(dict.fromkeys(nulls))
    check_tables_finite(fields, str(source))
    expected = cls.model_fields["stage"].default if "stage" in cls.model_fields else None
    for key in ("stage", *LEGACY_KEYS):  # the key as given (kind: an older config)
        stage = fields.get(key)
        if stage is not None and expected is not None and stage != expected:
            raise InputError(f"{source}: {key} {stage!r} is not a {expected} config")
    try:
        return cls(**fields)
    except ValidationError as exc:
        raise finite_error(exc, str(source)) or from_validation_error(
            exc, str(source), cls.model_fields
        ) from None


def load_config(
    cls: type[TrainConfig],
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> TrainConfig:
    """defaults < ``base`` (e.g. a resumed run's config.json) < the file at ``path`` < ``overrides``."""
    file_fields = read_config_file(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    return make_config(
        cls, base or {}, file_fields, overrides or {}, source=source, sources=("base", source, "overrides")
    )
