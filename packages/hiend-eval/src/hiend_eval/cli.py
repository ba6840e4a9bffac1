"""Command line of hiend-eval. Heavy imports (scipy, nibabel, torch) happen inside commands so --help is fast.

``hiend-eval score PRED REF --out DIR``  Dice, IoU, HD95, ASSD, NSD per label and case
``hiend-eval run CKPT DATASET --out DIR``  predict a dataset's images with a checkpoint, then score them

The conventions of every hiend command line: ``--out`` (``-o``) names the output; ``--workers N`` is N
processes and ``0`` this process alone (default: the CPUs available, at most 8); ``--device`` defaults to
``auto``; ``--progress/--no-progress`` (``-q``). Exit codes: 0 success; 2 bad input or usage (one line
on stderr naming the file or value); 1 a bug (a traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from hiend_data.errors import OneLineErrors

app = typer.Typer(
    cls=OneLineErrors,
    name="hiend-eval",
    no_args_is_help=True,
    add_completion=False,
    help="Dice, IoU, HD95, ASSD and NSD for label maps, folder scoring and reports.",
)


@app.callback()
def _root() -> None:
    """Dice, IoU, HD95, ASSD and NSD for label maps, folder scoring and reports."""


def _score_and_report(
    pred: Path,
    ref: Path,
    out: Path,
    labels: Path | None,
    tolerance: float,
    as_json: bool,
    resample_to_reference: bool,
    workers: int | None,
) -> None:
    from hiend_data.errors import InputError, shown

    from .labelnames import read_label_source
    from .matching import check_no_loop
    from .plot import Plotter
    from .report import print_table, summary_json, write_outputs
    from .score import default_workers, score_folders

    _check_numbers(tolerance, workers)
    check_no_loop(out)
    if out.exists() and not out.is_dir():  # say so before minutes of scoring
        raise InputError(f"--out {out}: exists and is not a folder")
    plotter = Plotter()  # imports matplotlib in another process while we score
    try:
        names = read_label_source(labels) if labels is not None else None
        summary = score_folders(
            pred,
            ref,
            names,
            tolerance=tolerance,
            resample_to_reference=resample_to_reference,
            workers=default_workers() if workers is None else max(1, workers),  # 0: this process alone
        )
        write_outputs(summary, out, plotter)
    finally:
        plotter.close()
    print_table(summary, file=sys.stderr if as_json else None)
    if as_json:
        print(summary_json(summary, indent=None), flush=True)
    else:
        print(f"wrote {shown(out / 'summary.json')} and {shown(out / 'per_case.csv')}")


def _check_numbers(tolerance: float, workers: int | None) -> None:
    """``--tolerance`` a finite number of mm >= 0; ``--workers`` None (automatic), 0 (this process
    alone) or a positive count."""
    import math

    from hiend_data.errors import InputError

    if not math.isfinite(tolerance) or tolerance < 0:
        raise InputError(f"--tolerance {tolerance}: expected a finite number of mm >= 0")
    if workers is not None and workers < 0:
        raise InputError(f"--workers {workers}: expected 0 (this process alone) or a number of processes")


@app.command()
def score(
    pred: Path = typer.Argument(
        ..., help="Folder of predicted label maps (.nii/.nii.gz, DICOM-SEG {case}.dcm), or one file."
    ),
    ref: Path = typer.Argument(
        ..., help="Folder of reference label maps (e.g. labelsTr; NIfTI or DICOM-SEG .dcm), or one file."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder for summary.json, per_case.csv and per_label.png."
    ),
    labels: Path = typer.Option(
        None,
        "--labels",
        help="Label values and names to score: an nnU-Net dataset.json, or a fine-tuned hiend "
        "checkpoint (.safetensors) carrying its dataset's names (default: every value > 0 found in any map, "
        "named by a DICOM-SEG's segment labels where there is one).",
    ),
    tolerance: float = typer.Option(2.0, "--tolerance", help="NSD tolerance in mm."),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Also print the summary as one JSON line on stdout (the table then goes to stderr).",
    ),
    resample_to_reference: bool = typer.Option(
        False,
        "--resample-to-reference",
        help="Resample predictions on another grid onto the reference "
        "(nearest neighbour) instead of failing.",
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="Processes over cases (threads over labels for one case); 0: this process alone; "
        "default: the CPUs available, at most 8.",
    ),
) -> None:
    """Score predictions against references: Dice, IoU, HD95, ASSD, NSD and volumes per label and case.

    Cases are matched by file name (nnU-Net's _0000 suffix is dropped). See the README for how empty
    structures (missed, false positive, absent from both) are scored.
    """
    from hiend_data.errors import cli_errors

    with cli_errors():
        _score_and_report(pred, ref, out, labels, tolerance, as_json, resample_to_reference, workers)


@app.command()
def run(
    ckpt: Path = typer.Argument(..., help="hiend-model checkpoint (.safetensors) of a fine-tuned UNETR."),
    dataset: Path = typer.Argument(..., help="nnU-Net dataset folder (imagesTr, labelsTr, dataset.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for predictions/ and the score outputs."),
    device: str = typer.Option(
        "auto",
        "--device",
        help="torch device for inference: auto (cuda if available, else cpu), cpu, cuda:N.",
    ),
    tolerance: float = typer.Option(2.0, "--tolerance", help="NSD tolerance in mm."),
    as_json: bool = typer.Option(False, "--json", help="Also print the summary as one JSON line on stdout."),
    workers: int | None = typer.Option(
        None, "--workers", help="Scoring processes (0: this process alone; default: the CPUs, at most 8)."
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", " /-q", " /--quiet", help="Show progress (-q: no)."
    ),
) -> None:
    """Predict every image of DATASET/imagesTr with a checkpoint, then score against DATASET/labelsTr
    (labels named by DATASET/dataset.json, else by the checkpoint's label names)."""
    from hiend_data.errors import InputError, cli_errors

    with cli_errors():
        _check_numbers(tolerance, workers)
        try:
            from hiend_model.predict import predict_files
        except ImportError:
            raise InputError("hiend-eval run needs hiend-model: pip install 'hiend-eval[model]'") from None
        if not ckpt.is_file():
            raise FileNotFoundError(2, "no such file", str(ckpt))
        for sub in ("imagesTr", "labelsTr"):
            if not (dataset / sub).is_dir():
                raise InputError(f"{dataset}: no {sub} folder (expected an nnU-Net dataset folder)")
        predictions = out / "predictions"
        # predict_files groups nnU-Net channel files (case_0000, case_0001, ...) into one scan per case
        # and writes predictions/{case}.nii.gz on each image's own grid.
        predict_files(ckpt, [dataset / "imagesTr"], predictions, device=device, progress=progress)
        labels = dataset / "dataset.json"
        if not labels.is_file():  # no dataset.json: the names the fine-tuned checkpoint carries, if any
            labels = ckpt if _checkpoint_has_names(ckpt) else None
        _score_and_report(
            predictions,
            dataset / "labelsTr",
            out,
            labels,
            tolerance,
            as_json,
            False,
            workers,
        )


def _checkpoint_has_names(ckpt: Path) -> bool:
    """Whether the checkpoint's metadata names its labels (predict has read the file already; anything
    unreadable here just means no names)."""
    from hiend_data.errors import InputError

    from .labelnames import read_checkpoint_label_names

    try:
        return bool(read_checkpoint_label_names(ckpt))
    except InputError:
        return False


def main() -> None:
    app()
