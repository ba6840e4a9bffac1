"""Where a run's events go: one sink interface, so that log.jsonl is one sink and TensorBoard (or any
other logger) can be one more.

An event is a name and its fields: ``start`` (``resume``), ``setup`` (what the run is), ``step`` (the
means since the previous step line), ``epoch``, ``warning``, ``end`` (README, "Outputs of a run").
The training loop (:mod:`hiend_train.loop`) and its setup (:mod:`hiend_train.runner`) call
:meth:`EventSink.emit` and nothing else; :func:`hiend_train.runner.event_sink` decides, in one
place, which sinks a run has: today a :class:`MultiSink` holding the run folder's :class:`JsonlSink`.

To add a sink, write a class with ``emit(event, **fields)`` and ``close()`` (no base class needed: the
protocol is structural) and add it to the :class:`MultiSink` that :func:`hiend_train.runner.event_sink`
returns. Fields are JSON-friendly: numbers (NaN allowed), strings, ``None``, lists and dicts of them.
A sink on a rank other than 0 should write nothing (every rank emits the same events; only rank 0's
count). ``close()`` is called once, when the run ends or fails.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["EventSink", "JsonlSink", "MultiSink"]


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
        with open(self.path, "a") as f:
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
