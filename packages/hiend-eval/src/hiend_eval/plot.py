"""The PNG of per-label Dice and HD95 distributions, drawn in a helper process.

Importing matplotlib and drawing some 40 box plots costs about a second of CPU. :class:`Plotter`
starts ``python -m hiend_eval.plot`` when the command starts, so the import runs on another core while
the scoring runs; the summary is sent over stdin at the end. Exit code 3 of the helper means
"matplotlib is not installed" (the PNG is then skipped with a note, everything else is written).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

NO_MATPLOTLIB = 3


def plain(text: object) -> str:
    """A user-supplied name as matplotlib text drawn literally: control characters escaped
    (:func:`hiend_data.errors.shown`), ``$`` escaped so mathtext never parses it (``$\\frac$`` would
    raise), and a leading ``_`` kept visible (matplotlib hides legend entries named ``_...``)."""
    from hiend_data.errors import shown

    out = shown(text).replace("$", r"\$")
    return " " + out if out.startswith("_") else out


#: the longest tick label drawn whole (longer ones end in an ellipsis)
MAX_LABEL = 40


def tick_label(key: str, name: str | None) -> str:
    """``"3 kidney_right"`` (the value and its name; the name alone where it is the key), at most
    :data:`MAX_LABEL` characters."""
    text = key if not name or name == key else f"{key} {name}"
    return plain(text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "\u2026")


def figure(summary: dict):  # -> matplotlib.figure.Figure
    """Box plots of per-case Dice and HD95 per label (null values left out), without pyplot's state;
    constrained layout, so that the axis titles and the tick labels stay inside the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(summary["mean"])
    names = summary["names"]
    fig = Figure(figsize=(max(6.0, 0.28 * len(keys) + 2), 7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, metric, unit in ((axes[0], "dice", ""), (axes[1], "hd95", " (mm)")):
        data = [
            [r["labels"][k][metric] for r in summary["per_case"] if r["labels"][k][metric] is not None]
            for k in keys
        ]
        ax.boxplot([d if d else [math.nan] for d in data], showfliers=True)
        ax.set_ylabel(metric.upper() + unit)
        ax.grid(axis="y", alpha=0.3)
    labels = [tick_label(k, names.get(k)) for k in keys]
    axes[1].set_xticks(range(1, len(keys) + 1), labels, rotation=90, fontsize=7)
    axes[0].set_title(f"per-label distributions over {len(summary['per_case'])} case(s)")
    return fig


def draw(summary: dict, path: Path) -> None:
    """:func:`figure`, written as a PNG at ``path``."""
    figure(summary).savefig(path, dpi=100)


class Plotter:
    """Handle on the helper process; :meth:`draw` sends the summary and waits, :meth:`close` ends it."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = subprocess.Popen(
            [sys.executable, "-m", "hiend_eval.plot"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def draw(self, summary: dict, path: Path) -> bool:
        """Draw ``path``; False when matplotlib is missing. Raises RuntimeError if the helper fails."""
        proc, self._proc = self._proc, None
        if proc is None:
            raise RuntimeError("Plotter.draw called twice")
        message = json.dumps({"path": str(path), "summary": summary}).encode()
        try:
            _, err = proc.communicate(message, timeout=600)
        except BrokenPipeError:  # the helper already exited (matplotlib missing): collect its code
            err = proc.stderr.read() if proc.stderr else b""
            proc.wait()
        if proc.returncode == NO_MATPLOTLIB:
            return False
        if proc.returncode != 0:
            raise RuntimeError(f"plotting failed: {err.decode(errors='replace').strip()}")
        return True

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None


def _main() -> int:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return NO_MATPLOTLIB
    request = json.loads(sys.stdin.buffer.read() or b"null")
    if request is None:  # the command ended without a summary (it failed): nothing to draw
        return 0
    draw(request["summary"], Path(request["path"]))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
