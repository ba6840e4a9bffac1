"""Command line of hiend-model. Heavy imports (torch) happen inside commands so --help is fast.

``hiend-model predict CKPT INPUT... --out DIR``  segment scans (label maps on the inputs' grids)
``hiend-model predict CKPT1 CKPT2 ... INPUT... --out DIR``  the same with an ensemble (mean softmax)
``hiend-model info CKPT [--json]``               what a checkpoint holds
``hiend-model convert SRC DST --from official-pretrain|official-finetune``  the paper's .pth -> ours

Exit codes: 0 success, 2 bad input (one line on stderr naming the file or value), 1 unexpected.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from hiend_data.errors import cli_errors

app = typer.Typer(name="hiend-model", no_args_is_help=True, add_completion=False,
                  help="3D ViT, Hi-End-MAE pre-training model, UNETR, checkpoints and sliding-window segmentation.")


@app.callback()
def _root() -> None:
    """3D ViT, Hi-End-MAE pre-training model, UNETR, checkpoints and sliding-window segmentation."""


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"
    auto = "auto"


class Source(str, Enum):
    official_pretrain = "official-pretrain"
    official_finetune = "official-finetune"


_PREDICT_HELP = (
    "Segment scans: label maps on each input's own grid and affine, named {case}.nii.gz.\n\n"
    "Ensembles: the leading arguments whose names end with .safetensors are all checkpoints (e.g. the K "
    "folds of a cross-validation), the first argument that does not is the first input: "
    "predict fold0.safetensors fold1.safetensors fold2.safetensors scans/ --out labels/. "
    "The members' softmax probabilities are averaged, then argmaxed. They must agree on num_classes, "
    "in_chans and the plan's preprocessing (orientation, spacing, modality, CT window, "
    "crop_to_foreground); their window (crop) sizes may differ. One checkpoint is the plain "
    "single-model prediction."
)


@app.command(help=_PREDICT_HELP)
def predict(
    ckpt: Path = typer.Argument(..., metavar="CKPT", help="UNETR checkpoint (.safetensors). Further "
                                "*.safetensors arguments right after it are more ensemble members."),
    inputs: list[Path] = typer.Argument(..., metavar="[CKPT]... INPUT",
                                        help="NIfTI files and/or folders of them (nnU-Net {case}_0000 "
                                        "channel files are grouped), after any further checkpoints."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: one {case}.nii.gz per scan."),
    device: Device = typer.Option(Device.cpu, help="Where the model runs."),
    overlap: float = typer.Option(0.5, min=0.0, max=0.99, help="Window overlap fraction."),
    tta: bool = typer.Option(False, "--tta", help="Average over the 8 axis-flip combinations (8x slower)."),
    sw_batch: int = typer.Option(1, "--sw-batch", min=1, help="Windows per model call."),
    amp: bool = typer.Option(False, "--amp", help="bfloat16 autocast on CUDA."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Segment scans with one checkpoint or an ensemble of them (help text: _PREDICT_HELP)."""
    with cli_errors():
        from .predict import predict_files, split_checkpoint_args

        ckpts, scans = split_checkpoint_args([ckpt, *inputs])
        written = predict_files(ckpts if len(ckpts) > 1 else ckpts[0], scans, out, device=device.value,
                                overlap=overlap, tta=tta, progress=not quiet, sw_batch_size=sw_batch,
                                amp=amp)
        for path in written:
            typer.echo(str(path))


def _parameter_names(kind: str, config: dict) -> set[str]:
    """Which state-dict entries are parameters (the rest are buffers such as sin-cos embeddings)."""
    import torch

    from .checkpoint import build_model

    try:
        with torch.device("meta"):  # no weights allocated or initialised
            model = build_model(kind, config)
    except (NotImplementedError, RuntimeError):  # a layer that needs real data while being built
        with torch.no_grad():
            model = build_model(kind, config)
    return {name for name, _ in model.named_parameters()}


def checkpoint_summary(path: Path) -> dict:
    """JSON-ready description of a checkpoint: metadata, parameter counts (no tensor data read)."""
    import torch

    from .checkpoint import read_checkpoint_info, tensor_shapes

    info = read_checkpoint_info(path)
    shapes = tensor_shapes(path)
    param_names = _parameter_names(info.kind, info.config)
    numel = {k: int(torch.Size(s).numel()) for k, s in shapes.items()}
    by_module: dict[str, int] = {}
    for k, n in numel.items():
        if k in param_names:
            top = k.split(".")[0]
            by_module[top] = by_module.get(top, 0) + n
    return {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "kind": info.kind,
        "parameters": sum(n for k, n in numel.items() if k in param_names),
        "parameters_by_module": by_module,
        "buffer_values": sum(n for k, n in numel.items() if k not in param_names),
        "tensors": len(shapes),
        "config": info.config,
        "plan": None if info.plan is None else info.plan.model_dump(mode="json"),
        "versions": info.versions,
        "extra": info.extra,
    }


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
        s = checkpoint_summary(ckpt)
        if as_json:
            typer.echo(json.dumps(s))
            return
        lines = [f"file: {s['path']} ({s['file_bytes'] / 2**20:.1f} MiB, {s['tensors']} tensors)",
                 f"kind: {s['kind']}",
                 f"parameters: {s['parameters']:,} ("
                 + ", ".join(f"{k} {v:,}" for k, v in s["parameters_by_module"].items()) + ")"]
        lines.append("config:")
        lines += [f"  {k}: {_fmt(k, v)}" for k, v in s["config"].items()]
        if s["plan"] is None:
            lines.append("plan: none (predict needs one)")
        else:
            lines.append("plan:")
            lines += [f"  {k}: {_fmt(k, v)}" for k, v in s["plan"].items()]
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in s["versions"].items()))
        if s["extra"]:
            lines.append("provenance:")
            lines += [f"  {k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in s["extra"].items()]
        typer.echo("\n".join(lines))


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_official(src: Path, dst: Path, source: str, num_heads: int | None = None,
                     decoder_num_heads: int | None = None) -> Path:
    """The paper's ``.pth`` -> our checkpoint with the paper's plan; sizes inferred from the tensors."""
    from hiend_data import Plan

    from .checkpoint import save_checkpoint
    from .official import (
        infer_arch_from_state_dict,
        load_official_finetuned,
        load_official_pretrained,
        read_state_dict,
    )

    if not src.is_file():
        raise FileNotFoundError(2, "No such file or directory", str(src))
    sd = read_state_dict(src)
    kind = "pretrain" if source == "official-pretrain" else "finetune"
    arch = infer_arch_from_state_dict(sd, kind, num_heads=num_heads, decoder_num_heads=decoder_num_heads)
    if kind == "pretrain":
        model = load_official_pretrained(sd, **arch)
    else:
        model = load_official_finetuned(sd, **arch)
    del sd
    extra = {"converted_from": str(src), "source_format": source, "source_sha256": _sha256(src)}
    return save_checkpoint(dst, model, plan=Plan.paper(), extra=extra)


@app.command()
def convert(
    src: Path = typer.Argument(..., help="The paper's checkpoint (.pth, read with weights_only=True)."),
    dst: Path = typer.Argument(..., help="Output .safetensors checkpoint."),
    source: Source = typer.Option(..., "--from", help="Layout of SRC."),
    num_heads: int = typer.Option(None, "--num-heads", min=1,
                                  help="Encoder heads (not in the tensors; default: the released 16)."),
    decoder_num_heads: int = typer.Option(None, "--decoder-num-heads", min=1,
                                          help="Decoder heads of a pre-training checkpoint (default 16)."),
) -> None:
    """Convert the paper's checkpoint to ours; every size except head counts comes from the tensors."""
    with cli_errors():
        path = convert_official(src, dst, source.value, num_heads, decoder_num_heads)
        typer.echo(str(path))


def main() -> None:
    app()
