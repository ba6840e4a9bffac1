"""``hiend-train probe``: the segmentation probe (:mod:`hiend_train.probe`) on any encoder, as a table
and as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hiend_data.errors import InputError, markup

from .probe import ProbeResult, ProbeSettings, load_probe_data, probe_layers, run_probe

__all__ = ["probe_main", "table"]


def table(result: ProbeResult, title: str) -> Any:
    """A rich table: one row per organ, one column per probed layer (the best one marked)."""
    from rich.table import Table

    t = Table(title=markup(title))
    t.add_column("organ")
    for name in result.layers:
        t.add_column(name + (" *" if name == result.layer else ""), justify="right")
    organs = list(next(iter(result.layers.values())).dice)

    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for organ in organs:
        t.add_row(markup(organ), *(cell(s.dice[organ]) for s in result.layers.values()))
    t.add_row("[b]mean[/b]", *(f"[b]{cell(s.mean)}[/b]" for s in result.layers.values()))
    return t


def probe_main(
    checkpoint: Path | None,
    cache: Path,
    random: str | None,
    img_size: int | None,
    cases: int,
    val_cases: int,
    crops: int,
    seed: int,
    device: str,
    out: Path | None,
    arch: dict[str, Any] | None = None,
) -> ProbeResult:
    """What ``hiend-train probe`` does: load the encoder, probe it, print the table (stdout) and write
    the JSON (``out``). InputError for a setting that makes no sense (``--img-size`` without
    ``--random``, a crop size the checkpoint's encoder does not take)."""
    from rich.console import Console

    from hiend_data.atomic import write_text
    from hiend_model.device import resolve_device

    from .probing import load_encoder

    if img_size is not None and random is None:
        raise InputError(f"--img-size {img_size}: only with --random (a checkpoint holds its own size)")
    if out is not None and out.is_dir():
        raise InputError(f"{out}: is a folder; --out names the JSON file to write")
    overrides: dict[str, Any] = {"seed": seed}
    if img_size is not None:
        overrides["img_size"] = img_size
    encoder, config, what = load_encoder(checkpoint, random, arch, **overrides)
    dev = resolve_device(device)
    encoder.to(dev)
    settings = ProbeSettings(cases=cases, val_cases=val_cases, crops=crops, seed=seed)
    data = load_probe_data(cache, tuple(config.img_size), settings, int(config.in_chans))
    layers = probe_layers(int(config.depth), tuple(config.tap_blocks) if config.tap_blocks else None)
    result = run_probe(encoder, int(config.patch_size), data, settings, layers, dev)
    source = str(checkpoint) if checkpoint is not None else f"--random {random}"
    Console(file=sys.stdout).print(table(result, f"probe of {source}: {what} on {cache}"))
    if out is not None:
        record = {"encoder": source, "what": what, "cache": str(cache), **result.to_json()}
        record["settings"] = {"cases": cases, "val_cases": val_cases, "crops": crops, "seed": seed}
        write_text(out, json.dumps(record, indent=1) + "\n")
    return result
