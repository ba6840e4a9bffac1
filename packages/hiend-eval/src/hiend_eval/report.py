"""Outputs of ``hiend-eval score``: ``summary.json``, ``per_case.csv``, a PNG and a terminal table.

The CSV columns and the table's metric columns are the metrics of the registry
(:data:`hiend_eval.registry.REGISTRY`), in its order. Every file is written with
:func:`hiend_data.atomic.atomic_path` (a temporary file beside it, fsync-ed, renamed into place), and
the renames wait until every file has been written: a run that fails leaves the old outputs as they
were and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from hiend_data.atomic import atomic_path, fsync_dir
from hiend_data.errors import InputError

from .plot import Plotter
from .registry import registered_metrics

SUMMARY = "summary.json"
PER_CASE = "per_case.csv"
PLOT = "per_label.png"


class _Skipped(Exception):
    """A writer had nothing to write (the PNG without matplotlib)."""


def summary_json(summary: dict, indent: int | None = 2) -> str:
    """The summary as strict JSON (NaN never appears: undefined values are null)."""
    return json.dumps(summary, indent=indent, allow_nan=False)


def csv_columns() -> list[str]:
    """The columns of per_case.csv: case, label, name, every registered metric, flag."""
    return ["case", "label", "name", *(m.name for m in registered_metrics()), "flag"]


def per_case_csv(summary: dict) -> str:
    """One row per case and label (and "foreground"): the :func:`csv_columns`; null -> empty cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = csv_columns()
    writer.writerow(columns)
    fields = columns[3:]
    names = summary["names"]
    for row in summary["per_case"]:
        for key, vals in row["labels"].items():
            writer.writerow(
                [row["case"], key, names.get(key, key), *["" if vals[f] is None else vals[f] for f in fields]]
            )
    return buf.getvalue()


def _text_writer(text: str) -> Callable[[Path], bool]:
    """A writer of ``text`` (UTF-8), fsync-ed so that the renames are all that is left to fail."""

    def write(path: Path) -> bool:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    return write


def _write_together(out_dir: Path, writers: dict[str, Callable[[Path], bool]]) -> list[Path]:
    """Run each writer on a temporary file beside ``out_dir / name``, then rename them all into place.

    A writer fills the path it is given and returns True, or returns False to skip its file. Each file
    is an :func:`~hiend_data.atomic.atomic_path`; they are committed together, in reverse order, only
    after every writer has returned (the last one, drawn by another process, is fsync-ed first). If a
    writer or a commit raises, every file not yet renamed keeps its old content and every temporary file
    is removed. Returns the files written, sorted by name.
    """
    written = []
    with ExitStack() as commit:
        for name, write in writers.items():
            try:
                with ExitStack() as one:
                    tmp = one.enter_context(atomic_path(out_dir / name, mkdir=False))
                    if not write(tmp):
                        raise _Skipped
                    commit.push(one.pop_all())
            except _Skipped:
                continue
            written.append(out_dir / name)
    return sorted(written)


def write_outputs(summary: dict, out_dir: Path, plotter: Plotter | None = None) -> list[Path]:
    """Write summary.json, per_case.csv and (matplotlib permitting) the PNG into ``out_dir`` atomically.

    ``plotter`` draws the PNG (None: no PNG). Returns the files written. Prints one note on stderr
    when matplotlib is missing. On any failure nothing is left behind: files already in ``out_dir``
    keep their content, no temporary file remains, and ``out_dir`` is removed again if this call
    created it.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder")

    def draw(path: Path) -> bool:
        if plotter is not None and plotter.draw(summary, path):
            return True
        if plotter is not None:
            print(
                f"note: matplotlib is not installed, so {PLOT} is skipped (pip install 'hiend-eval[plot]')",
                file=sys.stderr,
            )
        return False

    writers = {
        SUMMARY: _text_writer(summary_json(summary) + "\n"),
        PER_CASE: _text_writer(per_case_csv(summary)),
        PLOT: draw,
    }
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        if created:
            fsync_dir(out_dir.parent)
        return _write_together(out_dir, writers)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # empty again: every temporary file was removed
        raise


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_table(summary: dict, file=None) -> None:
    """A rich table of the means and counts per label (to stdout, or ``file``).

    The metric columns are the registered metrics with ``mean``: header ``title unit``, ``digits`` decimals.
    """
    from rich.console import Console
    from rich.table import Table

    from hiend_data.errors import markup

    metrics = [m for m in registered_metrics() if m.mean]
    table = Table(
        title=f"hiend-eval: {len(summary['per_case'])} case(s), NSD tolerance {summary['tolerance_mm']:g} mm"
    )
    for col in ("label", "name", *(m.header for m in metrics), "scored", "missed", "false pos", "absent"):
        table.add_column(col, justify="left" if col in ("label", "name") else "right")
    for key, mean in summary["mean"].items():
        c = summary["counts"][key]
        table.add_row(  # label names and case ids come from user files: escaped (control chars, markup)
            markup(key),
            markup(summary["names"].get(key, "")),
            *(_fmt(mean.get(m.name), m.digits) for m in metrics),
            str(c["scored"]),
            str(c["missed"]),
            str(c["false_positive"]),
            str(c["absent_both"]),
            end_section=key == list(summary["mean"])[-2] if len(summary["mean"]) > 1 else False,
        )
    console = Console(file=file, width=max(120, Console(file=file).width))
    console.print(table)
    for what, key in (
        ("references without a prediction (scored as empty)", "missing_predictions"),
        ("predictions without a reference (ignored)", "unmatched_predictions"),
    ):
        if summary[key]:
            console.print(f"{len(summary[key])} {what}: {markup(', '.join(summary[key]))}")
