"""The probe at work: inside pre-training (:class:`PretrainProbe`) and on any encoder
(:func:`load_encoder`, ``hiend-train probe``). The probe itself is :mod:`hiend_train.probe`.

Inside pre-training (``probe = LABELLED_CACHE``): at step 0 (the random initialisation) and every
``probe_every`` optimizer steps, the run's encoder is probed on the labelled cache's fixed crops and
the result is one ``probe`` event in log.jsonl (and TensorBoard: ``probe/mean``,
``probe/dice/<organ>``, ``probe/<layer>/mean``): ``step``, ``epoch``, ``mean`` and ``dice`` (the best
layer's), ``layer``, ``layers`` (every layer's), ``best`` (the best mean so far) and ``best_step``,
``seconds``. The weights with the best probe mean so far are kept as ``best_probe.safetensors`` beside
``last.safetensors`` (its ``extra.hiend_train`` holds the step and ``probe``: the mean).

The probe runs before the checkpointer of that step decides to save, and its state (last step
probed, best mean and its step) is saved in state.pt: a resumed run neither repeats a probe nor skips
one, and its numbers are those of an uninterrupted run (the probe draws no random number and the
weights are bit-identical). Under DDP rank 0 probes; the other ranks go on to their next collective
and wait there for as long as the probe takes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hiend_data.errors import InputError

from .probe import ProbeData, ProbeResult, ProbeSettings, load_probe_data, probe_layers, run_probe
from .signals import interrupts_deferred

if TYPE_CHECKING:
    from hiend_model.vit import ViTEncoder

    from .dist import DistEnv
    from .events import EventSink

__all__ = ["PretrainProbe", "load_encoder", "probe_settings"]


def probe_settings(cfg: Any) -> ProbeSettings:
    """The :class:`~hiend_train.probe.ProbeSettings` of a :class:`~hiend_train.config.PretrainConfig`.
    The cases and crops do not depend on the run's seed (the probe's seed is 0, as ``hiend-train
    probe``'s default): runs of any seed on the same labelled cache are probed on the same crops, so
    their curves compare."""
    return ProbeSettings(cases=cfg.probe_cases, val_cases=cfg.probe_val_cases, crops=cfg.probe_crops, seed=0)


class PretrainProbe:
    """The step hook (:class:`hiend_train.task.StepHook`) that probes a pre-training model's encoder.

    ``model``: the unwrapped :class:`hiend_model.HiEndMAE`; ``every``: optimizer steps between probes;
    ``save(path, epoch, batch, step, extra)``: writes the model's weights (the run's checkpoint writer);
    ``best_path``: where the best probe's weights go; ``events``: where ``probe`` events go."""

    def __init__(
        self,
        model: torch.nn.Module,
        data: ProbeData,
        settings: ProbeSettings,
        every: int,
        env: DistEnv,
        precision: str,
        events: EventSink,
        best_path: Path,
        save: Callable[[Path, int, int, int, dict[str, Any]], None],
    ) -> None:
        self.model = model
        self.data = data
        self.settings = settings
        self.every = int(every)
        self.env = env
        self.precision = precision
        self.events = events
        self.best_path = best_path
        self.save = save
        cfg = model.config  # type: ignore[attr-defined]
        self.patch = int(cfg.patch_size)
        self.layers = probe_layers(int(cfg.depth), tuple(cfg.tap_blocks) if cfg.tap_blocks else None)
        #: the last step probed, the best mean so far and its step (saved in state.pt)
        self.last: int | None = None
        self.best: float | None = None
        self.best_step: int | None = None

    def __call__(self, epoch: int, batch: int, step: int) -> None:
        if step % self.every or step == self.last:
            return
        self.last = step
        if not self.env.main:  # rank 0 probes; the others wait at their next collective
            return
        encoder: ViTEncoder = self.model.encoder  # type: ignore[assignment]
        result = run_probe(
            encoder, self.patch, self.data, self.settings, self.layers, self.env.device, self.precision
        )
        improved = result.mean is not None and (self.best is None or result.mean > self.best)
        if improved:
            self.best, self.best_step = result.mean, step
            with interrupts_deferred():
                self.save(self.best_path, epoch, batch, step, {"probe": result.mean})
        self.events.emit("probe", **self.record(result, epoch, step))

    def record(self, result: ProbeResult, epoch: int, step: int) -> dict[str, Any]:
        """The ``probe`` event's fields."""
        out = result.to_json()
        del out["fit_cases"], out["val_cases"]
        return {"step": step, "epoch": epoch, **out, "best": self.best, "best_step": self.best_step}

    def state_dict(self) -> dict[str, Any]:
        return {"last": self.last, "best": self.best, "best_step": self.best_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.last = state.get("last")
        self.best = state.get("best")
        self.best_step = state.get("best_step")


def make_pretrain_probe(
    cfg: Any, model: torch.nn.Module, env: DistEnv, precision: str, events: EventSink, run: Any, save: Any
) -> PretrainProbe | None:
    """The run's :class:`PretrainProbe` (None without ``cfg.probe``): the labelled cache's crops are
    read once, at the start (InputError naming the cache for one that cannot serve)."""
    if cfg.probe is None:
        return None
    settings = probe_settings(cfg)
    mcfg = model.config  # type: ignore[attr-defined]
    data = load_probe_data(cfg.probe, tuple(mcfg.img_size), settings, int(mcfg.in_chans))
    return PretrainProbe(model, data, settings, cfg.probe_every, env, precision, events, run.best_probe, save)


# -- any encoder ---------------------------------------------------------------------------------------
def load_encoder(
    source: str | os.PathLike[str] | None,
    random_preset: str | None = None,
    arch: dict[str, Any] | None = None,
    **overrides: Any,
) -> tuple[ViTEncoder, Any, str]:
    """The encoder ``hiend-train probe`` measures: ``(encoder, its model config, what it is)``.

    ``source``: a hiend checkpoint (``.safetensors``: a pre-training model, plain-MAE or Hi-End, or a
    fine-tuned UNETR, whose encoder is taken) or the paper's pre-training ``.pth``
    (:func:`hiend_model.pretrained.load_pretrained_mae`; ``arch``: its head counts, ``num_heads`` and
    ``decoder_num_heads``, which the tensors do not hold; default the released model's). ``random_preset``: instead, a model preset at
    its random initialisation (seeded by ``overrides["seed"]``, default 0; other ``overrides`` are
    MAEConfig fields such as ``img_size``), the baseline every pre-training starts from."""
    from hiend_model.checkpoint import load_checkpoint
    from hiend_model.pretrained import load_pretrained_mae

    if random_preset is not None:
        if source is not None:
            raise InputError(f"{source}: give a checkpoint or --random PRESET, not both")
        from hiend_model import HiEndMAE
        from hiend_model.config import resolve_config

        seed = int(overrides.pop("seed", 0))
        try:
            config = resolve_config(random_preset, **overrides)
        except (KeyError, ValueError) as exc:
            raise InputError(f"--random {random_preset}: {exc}") from None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = HiEndMAE(config)
        return model.encoder, config, f"random {random_preset} (seed {seed})"
    if source is None:
        raise InputError("give a checkpoint to probe, or --random PRESET for the random baseline")
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        if arch:
            raise InputError(
                f"{path}: a hiend checkpoint holds its architecture; --num-heads is for the paper's .pth"
            )
        model, info = load_checkpoint(path)
        decoder = getattr(model.config, "decoder", None)
        what = f"{info.kind} checkpoint" + (f" ({decoder} decoder)" if decoder else "")
        return model.encoder, model.config, what
    model = load_pretrained_mae(path, **(arch or {}))
    return model.encoder, model.config, "the paper's pre-training checkpoint"
