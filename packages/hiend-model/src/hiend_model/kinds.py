"""The two model kinds, in one vocabulary: what a checkpoint holds, what builds it, what the paper calls it.

* ``mae``: :class:`~hiend_model.mae.HiEndMAE`, ``MAEConfig``, stage ``pretrain``, the paper's layout
  ``official-pretrain``;
* ``unetr``: :class:`~hiend_model.unetr.UNETR`, ``UNETRConfig``, stage ``finetune``, the paper's layout
  ``official-finetune``.

``kind`` is the name a hiend checkpoint's metadata stores (and ``expected_kind=`` takes); ``stage`` is
the training stage that makes it (hiend-train's ``pretrain`` / ``finetune``, and the layout names of
:func:`hiend_model.official.infer_arch_from_state_dict`); ``source`` is ``hiend-model convert --from``.
:func:`get_kind` accepts any of the three.

This module reads no torch when it is imported (``hiend-model --help`` takes its ``--from`` choices
from here): the model classes are imported when :attr:`Kind.model_class` is first read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from hiend_data.errors import InputError

from .config import MAEConfig, UNETRConfig, validated

__all__ = [
    "Kind",
    "MAE_KIND",
    "UNETR_KIND",
    "KINDS",
    "SOURCES",
    "get_kind",
    "lookup_kind",
    "kind_of",
    "build_empty",
]


@dataclass(frozen=True)
class Kind:
    """One model kind: its checkpoint name, training stage, the paper's layout name and config class."""

    name: str
    stage: str
    source: str
    config_class: type[BaseModel]

    @property
    def aliases(self) -> tuple[str, str, str]:
        """Every name :func:`get_kind` accepts for this kind: ``(name, stage, source)``."""
        return (self.name, self.stage, self.source)

    @property
    def model_class(self) -> type:
        """:class:`~hiend_model.mae.HiEndMAE` or :class:`~hiend_model.unetr.UNETR`.

        Imported on first use, for start-up time only (torch): neither module imports this one.
        """
        if self.name == "mae":
            from .mae import HiEndMAE

            return HiEndMAE
        from .unetr import UNETR

        return UNETR


MAE_KIND = Kind("mae", "pretrain", "official-pretrain", MAEConfig)
UNETR_KIND = Kind("unetr", "finetune", "official-finetune", UNETRConfig)
#: checkpoint kind name -> Kind
KINDS: dict[str, Kind] = {k.name: k for k in (MAE_KIND, UNETR_KIND)}
#: ``hiend-model convert --from`` values: the paper's two layouts
SOURCES: tuple[str, ...] = tuple(k.source for k in KINDS.values())
_BY_ALIAS: dict[str, Kind] = {alias: k for k in KINDS.values() for alias in k.aliases}


def lookup_kind(name: str) -> Kind | None:
    """The kind called ``name`` (its checkpoint name, stage or the paper's layout name), else None."""
    return _BY_ALIAS.get(name) if isinstance(name, str) else None


def get_kind(name: str | Kind) -> Kind:
    """:func:`lookup_kind` that raises :class:`InputError` naming the unknown value and the choices."""
    if isinstance(name, Kind):
        return name
    kind = lookup_kind(name)
    if kind is None:
        raise InputError(
            f"unknown model kind {name!r}; expected one of {', '.join(KINDS)} "
            f"(or {', '.join(a for k in KINDS.values() for a in k.aliases[1:])})"
        )
    return kind


def kind_of(model: Any) -> Kind | None:
    """The kind of a model instance (HiEndMAE -> ``mae``, UNETR -> ``unetr``), None for anything else."""
    for kind in KINDS.values():
        if isinstance(model, kind.model_class):
            return kind
    return None


def build_empty(kind: str | Kind, config: dict[str, Any] | BaseModel) -> tuple[Any, bool]:
    """``(model, on_meta)``: the ``kind`` model a config (fields or an instance; InputError if invalid)
    describes, built by :func:`hiend_model.mae.build` on the meta device when it can be (no random
    init, no memory: for shapes and parameter names, or for assigning weights read from a file), else
    normally initialised (``on_meta`` False)."""
    import torch  # start-up time: see the module docstring

    from .mae import build

    kind = get_kind(kind)
    if not isinstance(config, kind.config_class):
        config = validated(
            kind.config_class, dict(config.model_dump() if isinstance(config, BaseModel) else config)
        )
    try:
        with torch.device("meta"):
            return build(config), True
    except (NotImplementedError, RuntimeError):  # a layer that needs real data while being built
        return build(config), False
