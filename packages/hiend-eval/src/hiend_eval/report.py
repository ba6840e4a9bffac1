"""Outputs of ``hiend-eval score``: ``summary.json``, ``per_case.csv``, a PNG and a terminal table.

Everything is written into a temporary folder beside ``DIR`` and moved into place at the end, so a run
that fails leaves no partial outputs behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hiend_data.errors import InputError

from .plot import Plotter
from .score import FIELDS

SUMMARY = "summary.json"
PER_CASE = "per_case.csv"
PLOT = "per_label.png"


def summary_json(summary: dict, indent: int | None = 2) -> str:
    """The summary as strict JSON (NaN never appears: undefined values are null)."""
    return json.dumps(summary, indent=indent, allow_nan=False)


def per_case_csv(summary: dict) -> str:
    """One row per case and label (and "foreground"): case, label, name, then :data:`FIELDS`; null -> empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "label", "name", *FIELDS])
    names = summary["names"]
    for row in summary["per_case"]:
        for key, vals in row["labels"].items():
            writer.writerow([row["case"], key, names.get(key, key),
                             *["" if vals[f] is None else vals[f] for f in FIELDS]])
    return buf.getvalue()


def write_outputs(summary: dict, out_dir: Path, plotter: Plotter | None = None) -> list[Path]:
    """Write summary.json, per_case.csv and (matplotlib permitting) the PNG into ``out_dir`` atomically.

    ``plotter`` draws the PNG (None: no PNG). Returns the files written. Prints one note on stderr
    when matplotlib is missing.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        (tmp / SUMMARY).write_text(summary_json(summary) + "\n")
        (tmp / PER_CASE).write_text(per_case_csv(summary))
        if plotter is not None and not plotter.draw(summary, tmp / PLOT):
            print(f"note: matplotlib is not installed, so {PLOT} is skipped "
                  "(pip install 'hiend-eval[plot]')", file=sys.stderr)
        names = sorted(p.name for p in tmp.iterdir())
        if not out_dir.exists():
            os.replace(tmp, out_dir)
        else:
            for name in names:
                os.replace(tmp / name, out_dir / name)
        return [out_dir / n for n in names]
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_table(summary: dict, file=None) -> None:
    """A rich table of the means and counts per label (to stdout, or ``file``)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hiend-eval: {len(summary['per_case'])} case(s), NSD tolerance "
                        f"{summary['tolerance_mm']:g} mm")
    for col in ("label", "name", "Dice", "IoU", "HD95 mm", "ASSD mm", "NSD", "scored", "missed", "false pos",
                "absent"):
        table.add_column(col, justify="left" if col in ("label", "name") else "right")
    for key, mean in summary["mean"].items():
        c = summary["counts"][key]
        table.add_row(key, summary["names"].get(key, ""), _fmt(mean["dice"]), _fmt(mean["iou"]),
                      _fmt(mean["hd95"], 2), _fmt(mean["assd"], 2), _fmt(mean["nsd"]), str(c["scored"]),
                      str(c["missed"]), str(c["false_positive"]), str(c["absent_both"]),
                      end_section=key == list(summary["mean"])[-2] if len(summary["mean"]) > 1 else False)
    console = Console(file=file, width=max(120, Console(file=file).width))
    console.print(table)
    for what, key in (("references without a prediction (scored as empty)", "missing_predictions"),
                      ("predictions without a reference (ignored)", "unmatched_predictions")):
        if summary[key]:
            console.print(f"{len(summary[key])} {what}: {', '.join(summary[key])}")
