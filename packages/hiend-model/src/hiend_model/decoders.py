"""The pre-training model's decoders, as a table: ``DECODERS[name]`` is everything a decoder decides.

* ``hiend`` (default): Hi-End-MAE's hierarchical, encoder-driven decoder (DESIGN.md, "What Hi-End-MAE
  computes", steps 4-6): every tapped encoder block's output and the final normed output are
  projected to the decoder width (``encoder_to_decoder.{i}``); ``decoder_depth`` self-attention blocks
  (default 2), then one cross-attention block per tapped block, deep to shallow
  (:class:`~hiend_model.decoder_blocks.HiEndDecoder`).
* ``plain``: the paper's ablation baseline, plain MAE (He et al. 2022): only the final normed encoder
  output is projected (``decoder_embed``), then ``decoder_depth`` plain self-attention blocks (default
  5, as many as Hi-End-MAE's 2 self + 3 cross), norm and head
  (:class:`~hiend_model.decoder_blocks.PlainMAEDecoder`). It reads no tapped block.

Each entry (:class:`DecoderSpec`) owns its default depth, the encoder blocks it reads
(:meth:`DecoderSpec.taps`: what the probe of a pre-training run reads too), how many cross-attention
blocks it has, and its projection (the model attribute, i.e. the state-dict prefix, and the module
that builds and applies it). A new decoder is one entry here and one module class.

The value ``"mae"`` is the old name of ``plain``: it is accepted wherever a decoder is named
(:func:`decoder_name`, used by ``MAEConfig``'s validator), so checkpoints saved with
``"decoder": "mae"`` in their config keep loading (as ``plain``).

This module imports no torch (``MAEConfig`` validates with it, and ``hiend-model --help`` reads
configs): the modules live in :mod:`hiend_model.decoder_blocks`, imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DecoderSpec", "DECODERS", "ALIASES", "decoder_name", "default_taps"]


def default_taps(depth: int) -> tuple[int, ...]:
    """Blocks whose outputs feed the decoder / UNETR skips: (3, 6, 9) for depth 12 (0-based)."""
    return (depth // 4, depth // 2, (3 * depth) // 4)


@dataclass(frozen=True)
class DecoderSpec:
    """One decoder of the pre-training model.

    ``default_depth``: ``decoder_depth`` when unset. ``cross_attention``: one cross-attention block per
    tapped encoder block (the blocks it reads); without it the decoder reads the final normed output
    only. ``projection_name``: the model's attribute (and state-dict prefix) holding the encoder ->
    decoder projection. ``module``: its class in :mod:`hiend_model.decoder_blocks`.
    """

    name: str
    default_depth: int
    cross_attention: bool
    projection_name: str
    module: str

    def taps(self, depth: int, tap_blocks: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """The encoder blocks (0-based, shallow to deep) whose outputs this decoder reads, for an
        encoder of ``depth`` blocks: ``tap_blocks`` (default :func:`default_taps`) for a decoder with
        cross-attention, none for one that reads the final normed output only."""
        if not self.cross_attention:
            return ()
        return tuple(tap_blocks) if tap_blocks is not None else default_taps(depth)

    def cross_depth(self, taps: tuple[int, ...]) -> int:
        """The number of cross-attention blocks this decoder has when it reads ``taps``."""
        return len(taps) if self.cross_attention else 0

    @property
    def module_class(self) -> Any:
        """Its ``nn.Module`` class (imported on first use: torch)."""
        from . import decoder_blocks

        return getattr(decoder_blocks, self.module)


HIEND = DecoderSpec("hiend", 2, True, "encoder_to_decoder", "HiEndDecoder")
PLAIN = DecoderSpec("plain", 5, False, "decoder_embed", "PlainMAEDecoder")
#: decoder name -> its entry
DECODERS: dict[str, DecoderSpec] = {d.name: d for d in (HIEND, PLAIN)}
#: old names still accepted on input and in saved configs -> the name they stand for
ALIASES: dict[str, str] = {"mae": PLAIN.name}


def decoder_name(value: Any) -> Any:
    """A decoder's name as :data:`DECODERS` spells it: an old name (``"mae"``) becomes its new one
    (``"plain"``); anything else is returned unchanged (the config's validation refuses it)."""
    return ALIASES.get(value, value) if isinstance(value, str) else value
