"""Command line of hiend-model. Heavy imports (torch) happen inside commands so --help is fast; the
work itself is library code (:mod:`hiend_model.predict`, :mod:`~hiend_model.checkpoint`, :mod:`~hiend_model.official`).

``hiend-model predict CKPT INPUT... --out DIR``  segment scans (label maps on the inputs' grids)
``hiend-model predict CKPT1 CKPT2 ... INPUT... --out DIR``  the same with an ensemble (mean softmax)
``hiend-model info CKPT [--json]``               what a checkpoint holds
``hiend-model convert SRC DST --from official-pretrain|official-finetune``  the paper's .pth -> ours

The command line's own parsing is here: telling checkpoints from inputs in ``predict CKPT... INPUT...``
(:func:`split_checkpoint_args`), ``--keep-largest`` text to label values (:func:`keep_largest_values`),
the window options to one :class:`~hiend_model.window.WindowSettings`; the library checks the values.

The conventions of every hiend command line: ``--out`` (``-o``) names the output; ``--device`` defaults
to ``auto`` (cuda where there is one, else cpu); ``--progress/--no-progress`` (``-q``, ``--quiet``).

Exit codes: 0 success, 2 bad input (one line on stderr naming the file or value; an option value that
is out of range or not of its type included), 130 / 143 predict or convert stopped by SIGINT / SIGTERM (one line;
temporaries removed, every output file written so far complete), 1 unexpected.

Everything a user or a file supplied (paths, names, metadata) is printed through
:func:`hiend_data.errors.shown` (control characters made visible) and, where rich renders it (the
progress bar), :func:`hiend_data.errors.markup` (markup escaped).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path

import typer

from hiend_data.errors import InputError, OneLineErrors, cli_errors, shown

from .device import DEVICE_HELP
from .kinds import SOURCES
from .postprocess import label_values

app = typer.Typer(
    cls=OneLineErrors,
    name="hiend-model",
    no_args_is_help=True,
    add_completion=False,
    help="3D ViT, Hi-End-MAE pre-training model, UNETR, checkpoints and sliding-window segmentation.",
)


@app.callback()
def _root() -> None:
    """3D ViT, Hi-End-MAE pre-training model, UNETR, checkpoints and sliding-window segmentation."""


#: ``--from`` choices: the paper's two layouts (:data:`hiend_model.kinds.SOURCES`)
Source = Enum("Source", {name.replace("-", "_"): name for name in SOURCES}, type=str)


_PREDICT_HELP = (
    "Segment scans: label maps on each input's own grid and affine, named {case}.nii.gz.\n\n"
    "Ensembles: the leading arguments whose names end with .safetensors are all checkpoints (e.g. the K "
    "folds of a cross-validation), the first argument that does not is the first input: "
    "predict fold0.safetensors fold1.safetensors fold2.safetensors scans/ --out labels/. "
    "The members' softmax probabilities are averaged, then argmaxed. They must agree on num_classes, "
    "in_chans and the plan's preprocessing (orientation, spacing, modality, CT window, "
    "crop_to_foreground); their window (crop) sizes may differ. One checkpoint is the plain "
    "single-model prediction.\n\n"
    "DICOM: a folder of series folders (or .zip files) segments each series; --format dicom-seg writes "
    "{case}.dcm, a DICOM Segmentation of the series (one segment per class, named from the "
    "checkpoint's label names or --labels dataset.json) that PACS and viewers attach to the study."
)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (so every clean-up that runs for
    Ctrl-C runs for it: atomic writes remove their temporaries, the progress display stops)."""


_STOPPED = "outputs already written are whole, no temporary file left"


@contextlib.contextmanager
def stopped_by_signals(what: str) -> Iterator[None]:
    """SIGINT and SIGTERM stop ``what`` the same way: the clean-ups run, one line on stderr, exit code
    128 + the signal's number (130, 143). A second SIGTERM during the clean-up is ignored."""

    def terminate(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up finish
        raise Terminated()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, terminate) if main else None
    try:
        yield
    except Terminated:
        print(f"error: {what} terminated (SIGTERM); {_STOPPED}", file=sys.stderr)
        raise typer.Exit(128 + signal.SIGTERM) from None
    except KeyboardInterrupt:
        print(f"error: {what} interrupted (SIGINT); {_STOPPED}", file=sys.stderr)
        raise typer.Exit(128 + signal.SIGINT) from None
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


CHECKPOINT_SUFFIX = ".safetensors"


def split_checkpoint_args(args: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """``CKPT1 [CKPT2 ...] INPUT...`` -> (checkpoints, inputs).

    The first argument is always a checkpoint; the arguments after it whose names end with
    ``.safetensors`` are further ensemble members, up to the first one that does not, which is the first
    input. A ``.safetensors`` name after that is an InputError (checkpoints go before the inputs), and so
    is a command line without inputs.
    """
    paths = [Path(a) for a in args]
    if not paths:
        raise InputError("no checkpoint given")
    n = 1
    while n < len(paths) and paths[n].name.lower().endswith(CHECKPOINT_SUFFIX):
        n += 1
    ckpts, inputs = paths[:n], paths[n:]
    if not inputs:
        raise InputError(f"{ckpts[-1]}: no input scans given after the checkpoint(s)")
    for p in inputs:
        if p.name.lower().endswith(CHECKPOINT_SUFFIX):
            raise InputError(
                f"{p}: a checkpoint after the first input {inputs[0]}; name every ensemble "
                "checkpoint before the inputs"
            )
    return ckpts, inputs


def keep_largest_values(text: str) -> list[int] | str:
    """``--keep-largest`` text -> label values or ``"all"`` (:func:`hiend_model.postprocess.label_values`);
    InputError naming a part that is not a whole number. Whether they are classes of the model is
    checked by ``predict_files`` once the checkpoint is read."""
    try:
        return label_values(text)
    except ValueError as exc:
        raise InputError(str(exc)) from None


@app.command(help=_PREDICT_HELP)
def predict(
    ckpt: Path = typer.Argument(
        ...,
        metavar="CKPT",
        help="UNETR checkpoint (.safetensors). Further "
        "*.safetensors arguments right after it are more ensemble members.",
    ),
    inputs: list[Path] = typer.Argument(
        ...,
        metavar="[CKPT]... INPUT",
        help="NIfTI files and/or folders of them (nnU-Net {case}_0000 "
        "channel files are grouped), DICOM series folders, zips and multi-frame files "
        "(hiend-data\\[dicom]), after any further checkpoints.",
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder: {case}.nii.gz and/or {case}.dcm (DICOM-SEG) per scan."
    ),
    output_format: str = typer.Option(
        "nifti",
        "--format",
        metavar="[nifti|dicom-seg|both]",
        help="nifti: {case}.nii.gz; dicom-seg: {case}.dcm, a DICOM Segmentation referencing the input "
        "series (DICOM input only; needs hiend-model\\[dicom]); both.",
    ),
    seg_type: str = typer.Option(
        "binary",
        "--seg-type",
        metavar="[binary|labelmap]",
        help="DICOM-SEG kind: binary (read by every viewer and PACS) or labelmap (DICOM 2024 label-map "
        "SEG, JPEG-LS: for 41 labels 136x smaller and 11x faster to write; newer viewers only).",
    ),
    series: list[str] = typer.Option(
        [],
        "--series",
        help="DICOM: where a folder holds several series (a whole study), segment this "
        "SeriesInstanceUID (repeatable: one of them per folder).",
    ),
    labels: Path = typer.Option(
        None,
        "--labels",
        help="nnU-Net dataset.json naming the labels (the segments of a DICOM-SEG); default: the "
        "names the checkpoint carries.",
    ),
    device: str = typer.Option("auto", help=f"Where the model runs: {DEVICE_HELP}."),
    overlap: float = typer.Option(0.5, help="Window overlap fraction, in [0, 1)."),
    tta: bool = typer.Option(False, "--tta", help="Average over the 8 axis-flip combinations (8x slower)."),
    sw_batch: int = typer.Option(1, "--sw-batch", help="Windows per model call (>= 1)."),
    amp: bool = typer.Option(False, "--amp", help="bfloat16 autocast on CUDA."),
    keep_largest: str = typer.Option(
        "",
        "--keep-largest",
        help="Labels that keep only their largest connected component: '1,2,3' or 'all' "
        "(organs that are one piece: liver, spleen, each kidney).",
    ),
    min_component: float = typer.Option(
        0.0,
        "--min-component",
        help="Other labels drop components smaller than this fraction of their largest (0..1; 0: off).",
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", " /-q", " /--quiet", help="Show the progress bar (-q: no)."
    ),
) -> None:
    """Segment scans with one checkpoint or an ensemble of them (help text: _PREDICT_HELP)."""
    with stopped_by_signals("predict"), cli_errors():
        from .predict import WindowSettings, predict_files

        ckpts, scans = split_checkpoint_args([ckpt, *inputs])
        settings = WindowSettings(overlap=overlap, tta=tta, sw_batch_size=sw_batch, device=device, amp=amp)
        largest = keep_largest_values(keep_largest)
        written = predict_files(
            ckpts if len(ckpts) > 1 else ckpts[0],
            scans,
            out,
            progress=progress,
            output_format=output_format,
            labels=labels,
            seg_type=seg_type,
            series=series,
            keep_largest=largest,
            min_component=min_component,
            settings=settings,
        )
        for path in written:
            typer.echo(shown(path))


def _fmt(key: str, value: object) -> str:
    if key in ("img_size", "crop_size") and isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(list(value)) if isinstance(value, tuple) else str(value)


@app.command()
def info(
    ckpt: Path = typer.Argument(..., help="A hiend checkpoint (.safetensors)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of text."),
) -> None:
    """Show a checkpoint's kind, config, parameter counts, preprocessing plan and provenance."""
    with cli_errors():
        from .checkpoint import checkpoint_summary

        s = checkpoint_summary(ckpt)
        if as_json:
            typer.echo(json.dumps(s))
            return
        lines = [
            f"file: {s['path']} ({s['file_bytes'] / 2**20:.1f} MiB, {s['tensors']} tensors)",
            f"kind: {s['kind']}",
            f"parameters: {s['parameters']:,} ("
            + ", ".join(f"{k} {v:,}" for k, v in s["parameters_by_module"].items())
            + ")",
        ]
        lines.append("config:")
        lines += [f"  {k}: {_fmt(k, v)}" for k, v in s["config"].items()]
        if s["plan"] is None:
            lines.append("plan: none (predict needs one)")
        else:
            lines.append("plan:")
            lines += [f"  {k}: {_fmt(k, v)}" for k, v in s["plan"].items()]
        if s.get("labels"):
            lines.append("labels: " + ", ".join(f"{k} {v}" for k, v in s["labels"].items()))
        else:
            lines.append("labels: none (predict names segments 'label N'; give --labels dataset.json)")
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()))
        if s["extra"]:
            lines.append("provenance:")
            lines += [f"  {k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in s["extra"].items()]
        typer.echo("\n".join(shown(line) for line in lines))  # metadata and names are the file's


@app.command()
def convert(
    src: Path = typer.Argument(..., help="The paper's checkpoint (.pth, read with weights_only=True)."),
    dst: Path = typer.Argument(..., help="Output .safetensors checkpoint."),
    source: Source = typer.Option(..., "--from", help="Layout of SRC."),
    num_heads: int = typer.Option(
        None, "--num-heads", help="Encoder heads (not in the tensors; default: the released 16)."
    ),
    decoder_num_heads: int = typer.Option(
        None, "--decoder-num-heads", help="Decoder heads of a pre-training checkpoint (default 16)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DST if it exists (never SRC itself)."),
) -> None:
    """Convert the paper's checkpoint to ours; every size except head counts comes from the tensors."""
    with stopped_by_signals("convert"), cli_errors():
        from .official import convert_official

        for option, value in (("--num-heads", num_heads), ("--decoder-num-heads", decoder_num_heads)):
            if value is not None and value < 1:
                raise InputError(f"{option} {value}: expected a whole number of heads >= 1")
        path = convert_official(src, dst, source.value, num_heads, decoder_num_heads, overwrite=overwrite)
        typer.echo(shown(path))


def main() -> None:
    app()
