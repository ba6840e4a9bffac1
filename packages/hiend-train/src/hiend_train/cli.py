"""Command line of hiend-train. Heavy imports (torch) happen inside commands so --help is fast.

``hiend-train pretrain [CONFIG] --cache DIR --out RUN [--preset tiny] [--epochs N] [--resume] ...``
``hiend-train finetune [CONFIG] --cache DIR --out RUN [--init CKPT | --preset NAME] [--labels JSON] [--resume] ...``

Config precedence: defaults < CONFIG (.toml / .json) < flags. ``--resume`` without CONFIG continues
from ``RUN/config.json``. Under torchrun every process runs the same command (DDP).
Exit codes: 0 success, 2 bad input (one line on stderr naming the file or value), 130 interrupted by
SIGINT (one line; the last checkpoint stays intact, ``--resume`` continues from it), 143 (138) a
SIGTERM (SIGUSR1) from a scheduler: the run saved a checkpoint at the next optimizer step and stopped
(one line; ``--resume`` continues; :mod:`hiend_train.signals`), 1 anything else.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import typer

from hiend_data.errors import InputError, cli_errors, shown

app = typer.Typer(
    name="hiend-train",
    no_args_is_help=True,
    add_completion=False,
    help="Hi-End-MAE pre-training and UNETR fine-tuning loops (DDP via torchrun).",
)

_SET_HELP = (
    "Any config field as FIELD=VALUE (VALUE read as JSON when it parses, else text); "
    "model.FIELD / sampler.FIELD set model or sampler overrides. Repeatable."
)


@app.callback()
def _root() -> None:
    """Hi-End-MAE pre-training and UNETR fine-tuning loops (DDP via torchrun)."""


def parse_sets(items: list[str], origins: dict[str, str] | None = None) -> dict[str, Any]:
    """``["epochs=5", "model.depth=4", "betas=[0.9,0.99]"]`` -> nested dict of overrides.

    One field set twice (``lr=1`` and ``lr=2``, or ``model={...}`` and ``model.depth=4``) is an
    InputError naming it and both items. ``origins``, when given, receives each key (``"lr"``,
    ``"model.depth"``) with the item that set it.
    """
    out: dict[str, Any] = {}
    seen: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected FIELD=VALUE")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            value = raw
        head, dot, sub = key.partition(".")
        if dot and head not in ("model", "sampler"):
            raise InputError(f"--set {item!r}: only model.FIELD and sampler.FIELD take a dotted name")
        clash = next(
            (k for k in seen if k == key or k == head or k.startswith(f"{key}.")),
            None,
        )
        if clash is not None:
            raise InputError(
                f"{max(key, clash, key=len)}: given twice (--set {seen[clash]} and --set {item})"
            )
        seen[key] = item
        if dot:
            out.setdefault(head, {})[sub] = value
        else:
            out[key] = value
    if origins is not None:
        origins.update(seen)
    return out


#: command-line options whose name is not ``--`` + the field with dashes
_OPTION_NAMES = {"progress": "--quiet", "compile": "--compile"}


def _flag_text(field: str, value: Any) -> str:
    """How the option that set ``field`` to ``value`` reads on the command line (``--lr 0.001``)."""
    name = _OPTION_NAMES.get(field, "--" + field.replace("_", "-"))
    return name if isinstance(value, bool) else f"{name} {value}"


def _resolve(kind: str, config: Path | None, flags: dict[str, Any], sets: list[str], resume: bool) -> Any:
    """The run's config: defaults < ``RUN/config.json`` (``--resume`` without CONFIG) < CONFIG < flags
    and ``--set``. A field given by a flag and a ``--set``, or by two ``--set``, is an InputError; a
    value a later layer replaces is validated all the same (:func:`hiend_train.config.make_config`)."""
    from .config import FinetuneConfig, PretrainConfig, make_config, read_config_file
    from .rundir import RunDir

    cls = PretrainConfig if kind == "pretrain" else FinetuneConfig
    file_fields = read_config_file(config) if config is not None else {}
    origins: dict[str, str] = {}
    extra = parse_sets(sets, origins)
    given = {k: v for k, v in flags.items() if v is not None}
    for name, value in given.items():
        clash = next((k for k in origins if k == name or k.startswith(f"{name}.")), None)
        if clash is not None:
            raise InputError(f"{name}: given twice ({_flag_text(name, value)} and --set {origins[clash]})")
    for sub in ("model", "sampler"):  # dotted --set entries add to the file's tables
        if sub in extra and isinstance(file_fields.get(sub), dict) and isinstance(extra[sub], dict):
            extra[sub] = {**file_fields[sub], **extra[sub]}
    overrides = {**extra, **given}
    base: dict[str, Any] = {}
    out = overrides.get("out", file_fields.get("out"))
    saved = "config.json"
    if resume and config is None and out is not None:
        run = RunDir(out)
        saved = str(run.config_path)
        base = run.saved_config() or {}
        # where the earlier invocation stopped is not where this one stops
        base.pop("stop_after", None)
        base.pop("stop_after_steps", None)
    source = str(config) if config is not None else "command line"
    nulls = [k for k, v in extra.items() if v is None]  # --set FIELD=null: None, not "not given"
    return make_config(
        cls, base, file_fields, overrides, source=source, sources=(saved, source, "command line"), nulls=nulls
    )


#: exit code of a run stopped by SIGINT (128 + the signal's number, as shells report it)
INTERRUPTED = 130


def _interrupted(cfg: Any) -> str:
    """The line for a run stopped by SIGINT: what is on disk and how to go on."""
    from .rundir import RunDir

    if cfg.out is None:
        return "interrupted (SIGINT)"
    run = RunDir(cfg.out)
    if not run.has_checkpoint():
        return (
            f"{run.root}: interrupted (SIGINT) before the first checkpoint; start it again without --resume"
        )
    at = run.last_saved() or {}
    where = f" (epoch {at.get('epoch')}, batch {at.get('batch', 0)}, step {at.get('step')})" if at else ""
    return f"{run.root}: interrupted (SIGINT); the last checkpoint{where} is intact: continue with --resume"


def _preempted(result: Any) -> str:
    """The line for a run stopped by SIGTERM / SIGUSR1 (:mod:`hiend_train.signals`)."""
    fit = result.fit
    return (
        f"{result.out}: stopped by {fit.signal} after step {fit.steps}; checkpoint saved there: "
        "continue with --resume"
    )


def _execute(kind: str, cfg: Any, resume: bool) -> None:
    """Run and report: every line to the terminal goes through :func:`hiend_data.errors.shown` (the
    run folder's name is the user's and may hold control characters); the JSON summary is escaped by
    ``json.dumps``."""
    from .loop import NonFiniteLoss

    if kind == "pretrain":
        from .pretrain import run
    else:
        from .finetune import run
    from .signals import stop_on_signals

    try:
        with stop_on_signals() as request:  # SIGTERM / SIGUSR1: stop at the next step with a checkpoint
            result = run(cfg, resume=resume)
    except NonFiniteLoss as exc:
        print(f"error: {shown(exc)}", file=sys.stderr)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:  # SIGINT (Ctrl-C): one line, exit 130, the last checkpoint as it was
        print(f"error: {shown(_interrupted(cfg))}", file=sys.stderr)
        raise typer.Exit(INTERRUPTED) from None
    if result.fit.signal is not None:  # preempted: saved where it stopped, exit 128 + the signal
        if result.env.main:
            print(f"error: {shown(_preempted(result))}", file=sys.stderr)
        raise typer.Exit(128 + int(request.signum or signal.SIGTERM))
    if result.env.main:
        last = result.fit.last
        typer.echo(
            json.dumps(
                {
                    "out": str(result.out),
                    "epochs": result.fit.epochs,
                    "steps": result.fit.steps,
                    "loss": last.get("loss"),
                    "best_score": result.fit.best,
                }
            )
        )


_CONFIG = typer.Argument(None, help="Config file (.toml or .json) with any of the config fields.")
_CACHE = typer.Option(None, "--cache", help="hiend-data cache folder (hiend-data preprocess).")
_OUT = typer.Option(None, "--out", "-o", help="Run folder (config.json, log.jsonl, checkpoints, state.pt).")
_PRESET = typer.Option(None, "--preset", help="Model preset: vit-b16, vit-l12, vit-l16, tiny.")
_EPOCHS = typer.Option(None, "--epochs", min=1, help="Epochs (passes over the training cases).")
_BATCH = typer.Option(None, "--batch-size", min=1, help="Volumes per step and process.")
_SAMPLES = typer.Option(None, "--num-samples", min=1, help="Crops per volume.")
_WORKERS = typer.Option(None, "--workers", min=0, help="DataLoader workers per process.")
_SEED = typer.Option(None, "--seed", help="Seed of weights, split, crops and masks.")
_DEVICE = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N.")
_PRECISION = typer.Option(None, "--precision", help="auto | fp32 | bf16 | fp16.")
_ACCUM = typer.Option(None, "--grad-accum", min=1, help="Micro-batches per optimizer step.")
_LR = typer.Option(None, "--lr", help="Peak learning rate.")
_WARMUP = typer.Option(None, "--warmup-epochs", help="Linear warm-up epochs before the cosine.")
_VAL_EVERY = typer.Option(None, "--val-every", min=1, help="Validate every N epochs.")
_VAL_FRACTION = typer.Option(None, "--val-fraction", help="Fraction of cases held out (seeded).")
_STOP = typer.Option(None, "--stop-after", min=1, help="Stop after this epoch (continue with --resume).")
_STOP_STEPS = typer.Option(
    None,
    "--stop-after-steps",
    min=1,
    help="Stop after this optimizer step, mid-epoch too (continue with --resume).",
)
_SAVE_STEPS = typer.Option(
    None, "--save-every-steps", min=1, help="Also checkpoint every N optimizer steps (resumable mid-epoch)."
)
_SAVE_MINUTES = typer.Option(
    None, "--save-every-minutes", help="Also checkpoint every M minutes of wall time (resumable mid-epoch)."
)
_KEEP_LAST = typer.Option(
    None, "--keep-last", min=0, help="Periodic checkpoints kept in RUN/checkpoints (default 3)."
)
_TENSORBOARD = typer.Option(
    None,
    "--tensorboard",
    help="Also write RUN/tb/ for TensorBoard (pip install 'hiend-train\\[tensorboard]').",
    show_default=False,
)
_COMPILE = typer.Option(
    None,
    "--compile",
    help="torch.compile the model (off by default; slow to compile on a CPU).",
    show_default=False,
)
_RESUME = typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")
_SET = typer.Option([], "--set", help=_SET_HELP)


@app.command()
def pretrain(
    config: Path | None = _CONFIG,
    cache: Path | None = _CACHE,
    out: Path | None = _OUT,
    preset: str | None = _PRESET,
    epochs: int | None = _EPOCHS,
    batch_size: int | None = _BATCH,
    num_samples: int | None = _SAMPLES,
    workers: int | None = _WORKERS,
    seed: int | None = _SEED,
    device: str | None = _DEVICE,
    precision: str | None = _PRECISION,
    grad_accum: int | None = _ACCUM,
    lr: float | None = _LR,
    warmup_epochs: float | None = _WARMUP,
    val_every: int | None = _VAL_EVERY,
    val_fraction: float | None = _VAL_FRACTION,
    stop_after: int | None = _STOP,
    stop_after_steps: int | None = _STOP_STEPS,
    save_every_steps: int | None = _SAVE_STEPS,
    save_every_minutes: float | None = _SAVE_MINUTES,
    keep_last: int | None = _KEEP_LAST,
    tensorboard: bool | None = _TENSORBOARD,
    compile_: bool | None = _COMPILE,
    preview_every: int | None = typer.Option(
        None, "--preview-every", min=0, help="Reconstruction PNG every N epochs (0: never)."
    ),
    resume: bool = _RESUME,
    quiet: bool = _QUIET,
    set_: list[str] = _SET,
) -> None:
    """Pre-train a Hi-End-MAE on a cache (the paper's recipe unless told otherwise)."""
    flags = dict(
        cache=cache,
        out=out,
        preset=preset,
        epochs=epochs,
        batch_size=batch_size,
        num_samples=num_samples,
        workers=workers,
        seed=seed,
        device=device,
        precision=precision,
        grad_accum=grad_accum,
        lr=lr,
        warmup_epochs=warmup_epochs,
        val_every=val_every,
        val_fraction=val_fraction,
        stop_after=stop_after,
        stop_after_steps=stop_after_steps,
        save_every_steps=save_every_steps,
        save_every_minutes=save_every_minutes,
        keep_last=keep_last,
        tensorboard=tensorboard,
        compile=compile_,
        preview_every=preview_every,
        progress=False if quiet else None,
    )
    with cli_errors():
        _execute("pretrain", _resolve("pretrain", config, flags, set_, resume), resume)


@app.command()
def finetune(
    config: Path | None = _CONFIG,
    cache: Path | None = _CACHE,
    out: Path | None = _OUT,
    init: Path | None = typer.Option(
        None,
        "--init",
        help="hiend mae/unetr .safetensors or the paper's "
        "pre-training .pth (without it: a random --preset encoder).",
    ),
    preset: str | None = _PRESET,
    num_classes: int | None = typer.Option(
        None, "--num-classes", help="Classes with background (default: 1 + the cache's largest label)."
    ),
    feature_size: int | None = typer.Option(None, "--feature-size", min=1, help="UNETR feature size."),
    class_weights: str | None = typer.Option(
        None,
        "--class-weights",
        help="Cross-entropy class weights: none (the paper's loss) or inverse_sqrt "
        "(1/sqrt of each class's voxel share in the training cases; a list via --set class_weights=[...]).",
    ),
    epochs: int | None = _EPOCHS,
    batch_size: int | None = _BATCH,
    num_samples: int | None = _SAMPLES,
    workers: int | None = _WORKERS,
    seed: int | None = _SEED,
    device: str | None = _DEVICE,
    precision: str | None = _PRECISION,
    grad_accum: int | None = _ACCUM,
    lr: float | None = _LR,
    warmup_epochs: float | None = _WARMUP,
    val_every: int | None = _VAL_EVERY,
    val_fraction: float | None = _VAL_FRACTION,
    stop_after: int | None = _STOP,
    stop_after_steps: int | None = _STOP_STEPS,
    save_every_steps: int | None = _SAVE_STEPS,
    save_every_minutes: float | None = _SAVE_MINUTES,
    keep_last: int | None = _KEEP_LAST,
    tensorboard: bool | None = _TENSORBOARD,
    compile_: bool | None = _COMPILE,
    train_cases: int | None = typer.Option(
        None,
        "--train-cases",
        help="Train on N of the training split's cases (seeded, nested in N; "
        "the validation cases stay the same).",
    ),
    fold: int | None = typer.Option(
        None,
        "--fold",
        help="k-fold: validate on fold k (0-based), train on "
        "the others (with --folds; replaces --val-fraction).",
    ),
    folds: int | None = typer.Option(None, "--folds", help="k-fold: number of seeded folds K."),
    layer_decay: float | None = typer.Option(
        None,
        "--layer-decay",
        help="Layer-wise lr decay in (0, 1]: encoder block i gets lr x decay^(depth - i), "
        "patch and position embedding decay^(depth + 1), decoder lr.",
    ),
    encoder_lr_scale: float | None = typer.Option(
        None,
        "--encoder-lr-scale",
        help="Multiplier on the encoder's learning rate (with --layer-decay: both).",
    ),
    freeze_encoder: bool | None = typer.Option(
        None,
        "--freeze-encoder",
        help="Keep the ViT encoder's weights fixed; train the decoder only.",
        show_default=False,
    ),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        help="nnU-Net dataset.json whose label names the checkpoints carry "
        "(default: the cache's, from the dataset.json it was preprocessed from).",
    ),
    resume: bool = _RESUME,
    quiet: bool = _QUIET,
    set_: list[str] = _SET,
) -> None:
    """Fine-tune a UNETR (Dice + CE) on a labelled cache; best.safetensors by validation Dice."""
    flags = dict(
        cache=cache,
        out=out,
        init=init,
        preset=preset,
        num_classes=num_classes,
        feature_size=feature_size,
        class_weights=class_weights,
        epochs=epochs,
        batch_size=batch_size,
        num_samples=num_samples,
        workers=workers,
        seed=seed,
        device=device,
        precision=precision,
        grad_accum=grad_accum,
        lr=lr,
        warmup_epochs=warmup_epochs,
        val_every=val_every,
        val_fraction=val_fraction,
        stop_after=stop_after,
        stop_after_steps=stop_after_steps,
        save_every_steps=save_every_steps,
        save_every_minutes=save_every_minutes,
        keep_last=keep_last,
        tensorboard=tensorboard,
        compile=compile_,
        train_cases=train_cases,
        fold=fold,
        folds=folds,
        layer_decay=layer_decay,
        encoder_lr_scale=encoder_lr_scale,
        freeze_encoder=freeze_encoder,
        labels=labels,
        progress=False if quiet else None,
    )
    with cli_errors():
        _execute("finetune", _resolve("finetune", config, flags, set_, resume), resume)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
