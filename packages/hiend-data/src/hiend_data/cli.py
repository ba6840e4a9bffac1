"""Command line of hiend-data. Heavy imports happen inside commands so ``--help`` is fast.

``hiend-data inspect PATH``, ``hiend-data preprocess SRC [OUT | --out OUT]``, ``hiend-data phantom OUT``,
``hiend-data bench CACHE``. The conventions of every hiend command line: the output folder is ``--out``
(``preprocess`` also takes it as its second argument, as DESIGN.md writes it); ``--workers N`` is N
worker processes, ``0`` the calling process alone; ``--progress/--no-progress`` (``-q``) shows or hides
progress bars. Exit codes: 0 success; 2 bad input or usage (one line on stderr naming the file or
value); 130 / 143 stopped by SIGINT / SIGTERM (``preprocess``: workers stopped, temporaries removed,
finished cases kept); 1 a bug (a traceback).

Whatever a user or a file supplied (paths, label and segment names, case ids) is printed through
:func:`hiend_data.errors.shown` (control characters escaped); ``--json`` output is escaped by
``json.dumps`` itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from .cli_sampling import register as _register_sampling
from .errors import InputError, OneLineErrors, cli_errors, from_validation_error, shown

app = typer.Typer(
    cls=OneLineErrors,
    name="hiend-data",
    no_args_is_help=True,
    add_completion=False,
    help="CT/MRI volume I/O, preprocessing, cache and patch sampling.",
)


@app.callback()
def _root() -> None:
    """CT/MRI volume I/O, preprocessing, cache and patch sampling."""


def _describe(path: Path, series: str | None = None) -> dict[str, Any]:
    """What ``inspect`` reports about one NIfTI file or DICOM series (loads it with every check)."""
    import numpy as np

    from .io import load_volume

    vol = load_volume(path, series=series)
    arr = vol.array
    info: dict[str, Any] = {
        "path": str(path),
        "shape": list(vol.shape),
        "channels": vol.channels,
        "spacing": [round(s, 6) for s in vol.spacing],
        "orientation": "".join(vol.orientation),
        "dtype": str(arr.dtype),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "mean": float(arr.mean(dtype=np.float64)),
        "affine": np.round(vol.affine, 6).tolist(),
        "label_values": None,
    }
    if arr.dtype.kind in "iu" and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if hi - lo <= 1 << 16:
            counts = np.bincount((arr.reshape(-1) - lo).astype(np.int64), minlength=hi - lo + 1)
            values = (np.flatnonzero(counts) + lo).tolist()
        else:
            values = np.unique(arr).tolist()
        info["n_values"] = len(values)
        if len(values) <= 256:
            info["label_values"] = values
    if path.is_file() and path.name.lower().endswith(".dcm") and arr.dtype.kind == "u":
        from .dicom_seg import segment_names  # {} unless a Segmentation (its header only)

        if names := segment_names(path):
            info["segments"] = {str(k): v for k, v in names.items()}
    return info


def _describe_cache(path: Path) -> dict[str, Any]:
    """What ``inspect`` reports about a cache folder: its plan, cases and how the images are stored."""
    import numpy as np

    from .cache import Cache
    from .labels import label_names_to_json
    from .storage import NUMPY_DTYPES

    cache = Cache.open(path)
    dtypes: dict[str, int] = {}
    voxels = stored_bytes = 0
    for name in cache.cases:
        case = cache.case(name)
        dtypes[case.image_dtype] = dtypes.get(case.image_dtype, 0) + 1
        shape = case.shape
        n = int(case.meta.get("channels", 1)) * shape[0] * shape[1] * shape[2]
        voxels += n
        stored_bytes += n * np.dtype(NUMPY_DTYPES[case.image_dtype]).itemsize
    return {
        "path": str(path),
        "cache": True,
        "plan": cache.plan.model_dump(mode="json"),
        "plan_digest": cache.plan.digest(),
        "cache_dtype": cache.plan.resolved_cache_dtype,
        "cases": len(cache.cases),
        "image_dtypes": dtypes,
        "voxels": voxels,
        "image_bytes": stored_bytes,
        "bytes_per_voxel": round(stored_bytes / voxels, 3) if voxels else None,
        "labels": None if cache.label_names is None else label_names_to_json(cache.label_names),
    }


@app.command()
def inspect(
    path: Path = typer.Argument(
        ...,
        help="A .nii or .nii.gz file, a DICOM series (folder, .zip, multi-frame file), or a cache folder.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    series: str | None = typer.Option(
        None, "--series", metavar="UID", help="DICOM: the SeriesInstanceUID to read from a folder of several."
    ),
) -> None:
    """Shape, spacing, orientation, dtype, intensity range and label values of a NIfTI file or a DICOM
    series (``hiend-data\\[dicom]``); for a cache folder (``hiend-data preprocess``), its plan, cases and
    image storage dtype.

    Refuses (exit 2) files that are unreadable, truncated, 2-D/5-D, with NaN/inf voxels (saying how
    many) or with invalid spacing, and DICOM folders with several series (unless --series), missing,
    duplicate or unevenly spaced slices, gantry tilt or no image series.
    """
    with cli_errors():
        from .naming import is_dicom_source

        if path.is_dir() and ((path / "plan.json").exists() or not is_dicom_source(path)):
            info = _describe_cache(path)
            if as_json:
                print(json.dumps(info))
                return
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(info["image_dtypes"].items())) or "none"
            print(f"{shown(info['path'])} (cache, plan {info['plan_digest']})")
            print(f"  cases        {info['cases']} (images stored as: {kinds})")
            print(f"  cache dtype  {info['plan']['cache_dtype']} -> {info['cache_dtype']}")
            print(
                f"  images       {info['image_bytes'] / 2**20:.1f} MiB, {info['bytes_per_voxel']} bytes/voxel"
            )
            if info["labels"]:
                print(f"  labels       {shown(', '.join(f'{v} {n}' for v, n in info['labels'].items()))}")
            return
        info = _describe(path, series)
        if as_json:
            print(json.dumps(info))
            return
        sp = " x ".join(f"{s:g}" for s in info["spacing"])
        print(shown(info["path"]))
        print(
            f"  shape        {' x '.join(map(str, info['shape']))}"
            + (f"  ({info['channels']} channels)" if info["channels"] > 1 else "")
        )
        print(f"  spacing      {sp} mm")
        print(f"  orientation  {info['orientation']}")
        print(f"  dtype        {info['dtype']}")
        print(f"  range        {info['min']:g} .. {info['max']:g} (mean {info['mean']:.4g})")
        if info["label_values"] is not None:
            print(f"  values       {info['label_values']}")
        elif "n_values" in info:
            print(f"  values       {info['n_values']} distinct integers")
        if info.get("segments"):
            print(f"  segments     {shown(', '.join(f'{k} {v}' for k, v in info['segments'].items()))}")


def _parse_spacing(text: str | None) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        parts = [float(p) for p in text.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        raise InputError(f"--spacing {text!r}: expected MM or MM,MM,MM") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or not all(0 < p < float("inf") for p in parts):
        raise InputError(f"--spacing {text!r}: expected one or three positive numbers (mm)")
    return tuple(parts)  # type: ignore[return-value]


@app.command()
def preprocess(
    src: Path = typer.Argument(
        ...,
        help="nnU-Net v2 dataset folder, folder of NIfTI files and/or DICOM series folders (recursive) "
        "or manifest file (one 'image[,label]' per line; an image may be a DICOM series folder or .zip).",
    ),
    out_arg: Path | None = typer.Argument(
        None, metavar="[OUT]", help="Cache folder to write (created; reruns skip finished cases); or --out."
    ),
    out_opt: Path | None = typer.Option(
        None, "--out", help="The cache folder, as every hiend command spells its output (or OUT)."
    ),
    spacing: str | None = typer.Option(
        None, "--spacing", metavar="MM", help="Target spacing: MM (isotropic) or MM,MM,MM. Default 1.5."
    ),
    window: tuple[float, float] | None = typer.Option(
        None, "--window", metavar="LO HI", help="CT window in HU. Default -175 250."
    ),
    workers: int = typer.Option(1, "--workers", min=0, help="Parallel worker processes (0 = in-process)."),
    modality: str = typer.Option(
        "ct", "--modality", metavar="[ct|mri]", help="ct (window to [0,1]) or mri (z-score)."
    ),
    include_test: bool = typer.Option(False, "--include-test", help="nnU-Net: also imagesTs (unlabelled)."),
    no_crop: bool = typer.Option(False, "--no-crop", help="Keep the whole volume (no foreground crop)."),
    cache_dtype: str = typer.Option(
        "auto",
        "--cache-dtype",
        metavar="[auto|uint8|int16|float16|float32]",
        help="How the image is stored: auto (CT: uint8 for windows up to 510 HU, else int16; MRI: "
        "float32), uint8, int16, float16 or float32. Crops are float32 [0, 1] whatever it is.",
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Report bad cases and go on instead of stopping."
    ),
    progress: bool = typer.Option(
        True, "--progress/--no-progress", " /-q", " /--quiet", help="Show a progress bar (-q: no)."
    ),
    series: list[str] | None = typer.Option(
        None,
        "--series",
        metavar="UID",
        help="DICOM: the SeriesInstanceUID to read where a case folder holds several (repeatable).",
    ),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        metavar="DATASET_JSON",
        help="nnU-Net dataset.json whose label names the cache keeps (labels.json; fine-tuned checkpoints "
        "carry them). Default: SRC/dataset.json when SRC is an nnU-Net folder.",
    ),
) -> None:
    """Preprocess a dataset into a cache (RAS, resample, intensity, foreground crop) for training.

    SIGTERM stops it (workers included, temporary files removed) with one line and exit code 143;
    finished cases are kept and a rerun goes on from them."""
    with cli_errors():
        import time

        from pydantic import ValidationError

        if (out_arg is None) == (out_opt is None):
            raise InputError(
                "preprocess: give the cache folder once, as OUT or as --out"
                + (f" (got {shown(out_arg)} and {shown(out_opt)})" if out_arg is not None else "")
            )
        out = out_arg if out_arg is not None else out_opt

        from .cache import Terminated, preprocess_dataset
        from .labels import read_label_names
        from .plan import CACHE_DTYPES, Plan

        if modality not in ("ct", "mri"):
            raise InputError(f"--modality {modality!r}: expected ct or mri")
        if cache_dtype not in CACHE_DTYPES:
            raise InputError(f"--cache-dtype {cache_dtype!r}: expected one of {', '.join(CACHE_DTYPES)}")
        fields: dict[str, Any] = {
            "modality": modality,
            "crop_to_foreground": not no_crop,
            "cache_dtype": cache_dtype,
        }
        if (sp := _parse_spacing(spacing)) is not None:
            fields["spacing"] = sp
        if window is not None:
            fields["window"] = tuple(window)
        try:
            plan = Plan(**fields)
        except ValidationError as exc:
            raise from_validation_error(exc, "invalid plan") from None
        names = read_label_names(labels) if labels is not None else None
        t0 = time.perf_counter()
        try:
            cache = preprocess_dataset(
                src,
                out,
                plan,
                workers=workers,
                include_test=include_test,
                progress=progress,
                skip_bad=skip_bad,
                series=tuple(series or ()),
                labels=names,
            )
        except Terminated as exc:
            print(
                f"error: {shown(out)}: preprocess stopped by SIGTERM (workers stopped, temporary files "
                "removed; finished cases are kept, run it again to go on)",
                file=sys.stderr,
            )
            raise typer.Exit(exc.code if isinstance(exc.code, int) else 143) from None
        print(
            f"{len(cache.cases)} cases in {shown(out)} ({time.perf_counter() - t0:.1f} s; plan {plan.digest()}, "
            f"image stored as {plan.resolved_cache_dtype})"
        )


_register_sampling(app)


def main() -> None:
    app()
