"""Where a run's events go: one sink interface, so that log.jsonl is one sink and TensorBoard (or any
other logger) can be one more.

An event is a name and its fields: ``start`` (``resume``), ``setup`` (what the run is), ``step`` (the
means since the previous step line), ``epoch``, ``probe``, ``warning``, ``end`` (README, "Outputs of a run").
The training loop (:mod:`hiend_train.loop`) and its setup (:mod:`hiend_train.runner`) call
:meth:`EventSink.emit` and nothing else; :func:`hiend_train.runner.event_sink` decides, in one
place, which sinks a run has: a :class:`MultiSink` holding the run folder's :class:`JsonlSink` and,
with ``tensorboard = true``, a :class:`TensorBoardSink` (RUN/tb/). log.jsonl is the source of truth;
other sinks are views of the same events.

To add a sink, write a class with ``emit(event, **fields)`` and ``close()`` (no base class needed: the
protocol is structural) and add it to the :class:`MultiSink` that :func:`hiend_train.runner.event_sink`
returns. Fields are JSON-friendly: numbers (NaN allowed), strings, ``None``, lists and dicts of them.
A sink on a rank other than 0 should write nothing (every rank emits the same events; only rank 0's
count). ``close()`` is called once, when the run ends or fails.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hiend_data.errors import InputError

from .outputs import writing

__all__ = ["EventSink", "JsonlSink", "MultiSink", "TensorBoardSink"]


@runtime_checkable
class EventSink(Protocol):
    """What the training loop writes its events to."""

    def emit(self, event: str, **fields: Any) -> None:
        """Record ``event`` with ``fields`` (in the order given)."""

    def close(self) -> None:
        """Flush and release whatever the sink holds; no event comes after."""


class JsonlSink:
    """``log.jsonl``: one JSON object per event, ``{"time": UNIX seconds, "event": ..., **fields}``.

    Each line is appended with the file opened for it (a reader such as ``tail -f`` sees it at once,
    and a killed process loses nothing written before). ``enabled=False`` (ranks other than 0) writes
    nothing. The file is created by the first line; truncating it for a fresh run is
    :meth:`hiend_train.rundir.RunDir.start`'s job.
    """

    def __init__(self, path: str | os.PathLike[str], enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps({"time": time.time(), "event": event, **fields}, allow_nan=True)
        with writing(self.path), open(self.path, "a") as f:
            f.write(line + "\n")

    def close(self) -> None:
        """Nothing to release: every line is written and closed by :meth:`emit`."""


class MultiSink:
    """Every event to each of ``sinks``, in order; :meth:`close` closes them all (the first error, if
    any, is raised once every sink has been closed)."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks: list[EventSink] = list(sinks)

    def add(self, sink: EventSink) -> None:
        """One more sink (it gets the events emitted from now on)."""
        self.sinks.append(sink)

    def emit(self, event: str, **fields: Any) -> None:
        for sink in self.sinks:
            sink.emit(event, **fields)

    def close(self) -> None:
        error: BaseException | None = None
        for sink in self.sinks:
            try:
                sink.close()
            except BaseException as exc:  # noqa: BLE001 - close the others, then raise the first
                error = error or exc
        if error is not None:
            raise error


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class TensorBoardSink:
    """TensorBoard event files in ``logdir`` (RUN/tb/): a view of the run's events for
    ``tensorboard --logdir RUN/tb``; log.jsonl stays the source of truth.

    What is written, at the global step = the optimizer step of the event:

    - ``step`` lines: ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/crops_per_s`` and any
      other metric of the line (fine-tuning: ``train/dice``);
    - ``epoch`` records: ``epoch/loss``, ``epoch/lr``, ``epoch/grad_norm``, ``epoch/crops_per_s``,
      ``epoch/seconds`` ...; validation: ``val/loss`` (``val_loss``), ``val/dice`` (``val_dice``),
      ``val/dice_per_class/K`` (foreground class K), ``val/best_score``;
    - ``preview`` events (pre-training): the PNG at ``path`` as the image ``preview`` (read with
      matplotlib, which wrote it);
    - ``probe`` events (pre-training with ``probe``): ``probe/mean``, ``probe/dice/<organ>`` and
      ``probe/<layer>/mean`` (:mod:`hiend_train.probing`);
    - ``resume``: TensorBoard hides what the interrupted run wrote after the resumed step
      (SummaryWriter's ``purge_step``), so curves do not fold back on themselves.

    Scalars are stored as float32 (TensorBoard's simple values). Needs the ``tensorboard`` package
    (``pip install 'hiend-train[tensorboard]'``): the constructor raises a one-line InputError without
    it (on every rank). ``enabled=False`` (ranks other than 0) writes nothing. The writer, and the
    folder, are created by the first event that writes something; event files are flushed at every
    ``epoch`` record and at :meth:`close`.
    """

    def __init__(self, logdir: str | os.PathLike[str], enabled: bool = True) -> None:
        try:  # optional: the tensorboard extra
            with warnings.catch_warnings():  # torch's own deprecations, raised while importing it
                warnings.simplefilter("ignore", DeprecationWarning)
                from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise InputError(
                f"tensorboard = true ({logdir}): the tensorboard package is not installed "
                "(pip install 'hiend-train[tensorboard]')"
            ) from None
        self._writer_cls = SummaryWriter
        self.logdir = Path(logdir)
        self.enabled = enabled
        self._writer: Any = None
        self._purge_step: int | None = None

    @property
    def writer(self) -> Any:
        """The SummaryWriter (created on first use)."""
        if self._writer is None:
            self._writer = self._writer_cls(log_dir=str(self.logdir), purge_step=self._purge_step)
        return self._writer

    def emit(self, event: str, **fields: Any) -> None:
        if not self.enabled:
            return
        if event == "resume":
            self._purge_step = int(fields.get("step", 0)) + 1
        elif event in ("step", "epoch"):
            self._scalars("train" if event == "step" else "epoch", fields)
            if event == "epoch":
                self.writer.flush()
        elif event == "preview" and fields.get("path"):
            self._image("preview", fields["path"], int(fields.get("step", 0)))
        elif event == "probe":
            self._probe(fields)

    def _probe(self, fields: dict[str, Any]) -> None:
        """A ``probe`` event: ``probe/mean``, ``probe/dice/<organ>`` (the best layer's) and
        ``probe/<layer>/mean``."""
        step = int(fields.get("step", 0))
        scalars = {"probe/mean": fields.get("mean")}
        scalars.update({f"probe/dice/{organ}": d for organ, d in (fields.get("dice") or {}).items()})
        for layer, score in (fields.get("layers") or {}).items():
            scalars[f"probe/{layer}/mean"] = (score or {}).get("mean")
        for tag, value in scalars.items():
            if _number(value) and not math.isnan(value):
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def _scalars(self, prefix: str, fields: dict[str, Any]) -> None:
        step = int(fields.get("step", 0))
        for key, value in fields.items():
            if key in ("epoch", "step"):
                continue
            if key.startswith("val_"):
                tag = f"val/{key[4:]}"
            elif key == "best_score":
                tag = "val/best_score"
            else:
                tag = f"{prefix}/{key}"
            if _number(value):
                self.writer.add_scalar(tag, float(value), step)
            elif isinstance(value, list):
                for k, v in enumerate(value, start=1):  # per foreground class
                    if _number(v) and not math.isnan(v):
                        self.writer.add_scalar(f"{tag}/{k}", float(v), step)

    def _image(self, tag: str, path: str | os.PathLike[str], step: int) -> None:
        try:
            from matplotlib.image import imread
        except ImportError:  # the PNG was written with matplotlib: cannot happen in a run
            return
        image = imread(str(path))  # [H, W, 3 or 4], float in [0, 1]
        self.writer.add_image(tag, image[..., :3], step, dataformats="HWC")

    def close(self) -> None:
        """Flush and close the event file (if anything was written)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
