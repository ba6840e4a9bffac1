"""``hiend-data phantom`` and ``hiend-data bench`` (the sampling side of the command line).

Heavy imports (nibabel, scipy) happen inside the commands so that ``hiend-data --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .errors import cli_errors, shown


def register(app: typer.Typer) -> None:
    """Add the sampling-side commands to the ``hiend-data`` app."""

    @app.command()
    def phantom(
        out: Path = typer.Argument(..., help="dataset folder to create (nnU-Net v2 layout)"),
        cases: int = typer.Option(8, "--cases", help="labelled training cases (imagesTr + labelsTr)"),
        seed: int = typer.Option(0, "--seed", help="random seed; the same seed writes the same dataset"),
        test_cases: int = typer.Option(0, "--test-cases", help="extra held-out cases: imagesTs + labelsTs"),
        overwrite: bool = typer.Option(False, "--overwrite", help="allow writing into a non-empty folder"),
        resolution: str = typer.Option(
            "coarse", "--resolution", help="coarse (2.5-4 mm in-plane, 2.5-5 mm slices) | clinical (0.6-1 mm)"
        ),
        phase: str = typer.Option("native", "--phase", help="native | arterial | portal | random (per case)"),
        coverage: str = typer.Option(
            "", "--coverage", help="abdomen | thorax-abdomen | abdomen-pelvis (default: drawn per case)"
        ),
    ) -> None:
        """Write a synthetic CT dataset (adult torsos in mm, 6 labelled organs) in nnU-Net v2 layout."""
        with cli_errors():
            from .atomic import check_output_path
            from .phantom import make_phantom_dataset

            path = make_phantom_dataset(
                check_output_path(out),
                cases=cases,
                seed=seed,
                test_cases=test_cases,
                overwrite=overwrite,
                resolution=resolution,
                phase=phase,
                coverage=coverage or None,
            )
            typer.echo(f"wrote {cases} labelled + {test_cases} test phantoms to {shown(path)}")

    @app.command()
    def bench(
        cache: Path = typer.Argument(..., help="a cache folder made by `hiend-data preprocess`"),
        seconds: float = typer.Option(5.0, "--seconds", help="how long to sample"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last line"),
        config: str = typer.Option("pretrain", "--config", help="sampler recipe: pretrain | finetune"),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """Crops per second of the sampler in this process, one thread, full augmentation recipe."""
        with cli_errors():
            from .bench import bench_sampler, config_named
            from .cache import Cache

            cfg = config_named(config)
            result = bench_sampler(Cache.open(cache), seconds=seconds, cfg=cfg, seed=seed)
            result["config"] = config
            shape = "x".join(str(v) for v in result["crop_shape"])
            typer.echo(
                f"{result['crops_per_s']:.1f} crops/s ({result['crops']} crops of {shape} float32"
                f"{' + labels' if result['labelled'] else ''} from {result['volumes']} volumes "
                f"stored as {result['cache_dtype']} in "
                f"{result['seconds']:.1f} s, {config} recipe, one thread)"
            )
            if as_json:
                typer.echo(json.dumps(result))
