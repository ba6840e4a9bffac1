"""Command line of hiend-train. Heavy imports (torch) happen inside commands so --help is fast.

``hiend-train pretrain [CONFIG] --cache DIR --out RUN [--preset tiny] [--epochs N] [--resume] ...``
``hiend-train finetune [CONFIG] --cache DIR --out RUN [--init CKPT | --preset NAME] [--labels JSON] [--resume] ...``
``hiend-train probe [CKPT | --random PRESET] --cache LABELLED_CACHE [--out JSON]``

Config precedence: defaults < CONFIG (.toml / .json) < flags. ``--resume`` without CONFIG continues
from ``RUN/config.json``. Under torchrun every process runs the same command (DDP). The options both
commands share are one list (:data:`SHARED`; each sets the config field of its name), and each
command adds its own (:data:`PRETRAIN`, :data:`FINETUNE`).

Exit codes (every error is one line on stderr):

- 0: the run finished (or stopped at ``--stop-after`` / ``--stop-after-steps``); the last line of
  stdout is a JSON summary;
- 1: a bug (anything not listed here; a traceback);
- 2: bad input, naming the file or value (:func:`hiend_data.errors.cli_errors`);
- 3: the loss became NaN or infinite (:data:`NON_FINITE`); the last checkpoint is as it was;
- 130: interrupted by SIGINT; the last checkpoint stays intact, ``--resume`` continues from it;
- 143 (138): a SIGTERM (SIGUSR1) from a scheduler: the run saved a checkpoint at the next optimizer
  step and stopped; ``--resume`` continues (:mod:`hiend_train.signals`).

``--workers N``: DataLoader worker processes per training process; 0 loads in the main process.
"""

from __future__ import annotations

import inspect
import json
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hiend_data.errors import InputError, OneLineErrors, cli_errors, shown

if TYPE_CHECKING:  # (torch stays unimported until a command runs)
    from .config import TrainConfig
    from .runner import RunResult

app = typer.Typer(
    cls=OneLineErrors,
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
_OPTION_NAMES = {"compile": "--compile"}


def _flag_text(field: str, value: Any) -> str:
    """How the option that set ``field`` to ``value`` reads on the command line (``--lr 0.001``)."""
    if field == "progress":
        return "--progress" if value else "--quiet"  # (-q, --quiet and --no-progress are one flag)
    name = _OPTION_NAMES.get(field, "--" + field.replace("_", "-"))
    return name if isinstance(value, bool) else f"{name} {value}"


def _resolve(
    stage: str, config: Path | None, flags: dict[str, Any], sets: list[str], resume: bool
) -> TrainConfig:
    """The run's config: defaults < ``RUN/config.json`` (``--resume`` without CONFIG) < CONFIG < flags
    and ``--set``. A field given by a flag and a ``--set``, or by two ``--set``, is an InputError; a
    value a later layer replaces is validated all the same (:func:`hiend_train.config.make_config`)."""
    from .config import FinetuneConfig, PretrainConfig, make_config, read_config_file
    from .rundir import RunDir

    cls = PretrainConfig if stage == "pretrain" else FinetuneConfig
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

#: exit code of a run whose loss became NaN or infinite (a property of the run, not bad input nor a bug)
NON_FINITE = 3


def _interrupted(cfg: TrainConfig) -> str:
    """The line for a run stopped by SIGINT: what is on disk and how to go on."""
    from .checkpointing import last_saved
    from .rundir import RunDir

    if cfg.out is None:
        return "interrupted (SIGINT)"
    run = RunDir(cfg.out)
    if not run.has_checkpoint():
        return (
            f"{run.root}: interrupted (SIGINT) before the first checkpoint; start it again without --resume"
        )
    at = last_saved(run) or {}
    where = f" (epoch {at.get('epoch')}, batch {at.get('batch', 0)}, step {at.get('step')})" if at else ""
    return f"{run.root}: interrupted (SIGINT); the last checkpoint{where} is intact: continue with --resume"


def _preempted(result: RunResult) -> str:
    """The line for a run stopped by SIGTERM / SIGUSR1 (:mod:`hiend_train.signals`)."""
    fit = result.fit
    return (
        f"{result.out}: stopped by {fit.signal} after step {fit.steps}; checkpoint saved there: "
        "continue with --resume"
    )


def _execute(stage: str, cfg: TrainConfig, resume: bool) -> None:
    """Run and report: every line to the terminal goes through :func:`hiend_data.errors.shown` (the
    run folder's name is the user's and may hold control characters); the JSON summary is escaped by
    ``json.dumps``."""
    from .progress import NonFiniteLoss

    if stage == "pretrain":
        from .pretrain import run
    else:
        from .finetune import run
    from .signals import stop_on_signals

    try:
        with stop_on_signals() as request:  # SIGTERM / SIGUSR1: stop at the next step with a checkpoint
            result = run(cfg, resume=resume)
    except NonFiniteLoss as exc:
        print(f"error: {shown(exc)}", file=sys.stderr)
        raise typer.Exit(NON_FINITE) from None
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


@dataclass(frozen=True)
class Flag:
    """One command-line option that sets the config field ``field``: its type (None: not given), its
    names and help, and typer's other arguments (``min``, ``show_default``)."""

    field: str
    type: object
    names: tuple[str, ...]
    help: str
    extra: dict[str, Any] = dc_field(default_factory=dict)

    def option(self) -> Any:
        return typer.Option(None, *self.names, help=self.help, **self.extra)


def _flag(field: str, kind: object, *names: str, help: str, **extra: Any) -> Flag:
    return Flag(field, kind, names or ("--" + field.replace("_", "-"),), help, extra)


#: the options both commands take (the one list of them), in --help's order
SHARED: tuple[Flag, ...] = (
    _flag("cache", Path, help="hiend-data cache folder (hiend-data preprocess)."),
    _flag("out", Path, "--out", "-o", help="Run folder (config.json, log.jsonl, checkpoints, state.pt)."),
    _flag("preset", str, help="Model preset: vit-b16, vit-l12, vit-l16, tiny."),
    _flag("epochs", int, help="Epochs (passes over the training cases).", min=1),
    _flag("batch_size", int, help="Volumes per step and process.", min=1),
    _flag("num_samples", int, help="Crops per volume.", min=1),
    _flag("workers", int, help="DataLoader workers per process.", min=0),
    _flag("seed", int, help="Seed of weights, split, crops and masks."),
    _flag("device", str, help="auto | cpu | cuda | cuda:N."),
    _flag("precision", str, help="auto | fp32 | bf16 | fp16."),
    _flag("grad_accum", int, help="Micro-batches per optimizer step.", min=1),
    _flag("lr", float, help="Peak learning rate."),
    _flag("warmup_epochs", float, help="Linear warm-up epochs before the cosine."),
    _flag("val_every", int, help="Validate every N epochs.", min=1),
    _flag("val_fraction", float, help="Fraction of cases held out (seeded)."),
    _flag("stop_after", int, help="Stop after this epoch (continue with --resume).", min=1),
    _flag(
        "stop_after_steps",
        int,
        help="Stop after this optimizer step, mid-epoch too (continue with --resume).",
        min=1,
    ),
    _flag(
        "save_every_steps", int, help="Also checkpoint every N optimizer steps (resumable mid-epoch).", min=1
    ),
    _flag(
        "save_every_minutes",
        float,
        help="Also checkpoint every M minutes of wall time (resumable mid-epoch).",
    ),
    _flag("keep_last", int, help="Periodic checkpoints kept in RUN/checkpoints (default 3).", min=0),
    _flag(
        "tensorboard",
        bool,
        help="Also write RUN/tb/ for TensorBoard (pip install 'hiend-train\\[tensorboard]').",
        show_default=False,
    ),
    _flag(
        "compile",
        bool,
        help="torch.compile the model (off by default; slow to compile on a CPU).",
        show_default=False,
    ),
)

#: the options of one command only
PRETRAIN: tuple[Flag, ...] = (
    _flag("preview_every", int, help="Reconstruction PNG every N epochs (0: never).", min=0),
    _flag(
        "probe",
        Path,
        help="A labelled cache: probe the encoder's segmentation features at step 0 and every "
        "--probe-every steps (log.jsonl 'probe' events, best_probe.safetensors).",
    ),
    _flag("probe_every", int, help="Optimizer steps between two probes.", min=1),
    _flag("probe_cases", int, help="Labelled cases the probe's head is fitted on.", min=1),
)
FINETUNE: tuple[Flag, ...] = (
    _flag(
        "init",
        Path,
        help="hiend mae/unetr .safetensors or the paper's pre-training .pth (without it: a random --preset encoder).",
    ),
    _flag("num_classes", int, help="Classes with background (default: 1 + the cache's largest label)."),
    _flag("feature_size", int, help="UNETR feature size.", min=1),
    _flag(
        "class_weights",
        str,
        help="Cross-entropy class weights: none (the paper's loss) or inverse_sqrt (1/sqrt of each class's "
        "voxel share in the training cases; a list via --set class_weights=[...]).",
    ),
    _flag(
        "train_cases",
        int,
        help="Train on N of the training split's cases (seeded, nested in N; the validation cases stay the same).",
    ),
    _flag(
        "fold",
        int,
        help="k-fold: validate on fold k (0-based), train on the others (with --folds; replaces --val-fraction).",
    ),
    _flag("folds", int, help="k-fold: number of seeded folds K."),
    _flag(
        "layer_decay",
        float,
        help="Layer-wise lr decay in (0, 1]: encoder block i gets lr x decay^(depth - i), "
        "patch and position embedding decay^(depth + 1), decoder lr.",
    ),
    _flag(
        "encoder_lr_scale",
        float,
        help="Multiplier on the encoder's learning rate (with --layer-decay: both).",
    ),
    _flag(
        "freeze_encoder",
        bool,
        help="Keep the ViT encoder's weights fixed; train the decoder only.",
        show_default=False,
    ),
    _flag(
        "labels",
        Path,
        help="nnU-Net dataset.json whose label names the checkpoints carry "
        "(default: the cache's, from the dataset.json it was preprocessed from).",
    ),
)

#: the arguments every command has besides its flags: (name, type, typer's parameter)
_FIXED: tuple[tuple[str, object, Any], ...] = (
    (
        "config",
        Path | None,
        typer.Argument(None, help="Config file (.toml or .json) with any of the config fields."),
    ),
    (
        "resume",
        bool,
        typer.Option(False, "--resume", help="Continue the run in --out exactly where it stopped."),
    ),
    (
        "progress",
        bool | None,
        typer.Option(
            None, "--progress/--no-progress", " /-q", " /--quiet", help="Show the progress bar (-q: no)."
        ),
    ),
    ("set_", list[str], typer.Option([], "--set", help=_SET_HELP)),
)


def _command(stage: str, flags: tuple[Flag, ...], doc: str) -> Callable[..., None]:
    """The command of ``stage``: a function whose signature typer reads (the fixed arguments, then
    one option per flag), that turns the flags given into config fields and runs."""

    def command(**values: Any) -> None:
        given = {f.field: values[f.field] for f in flags}
        given["progress"] = values["progress"]  # None: the config's (default: shown)
        resume = values["resume"]
        with cli_errors():
            _execute(stage, _resolve(stage, values["config"], given, values["set_"], resume), resume)

    kw = inspect.Parameter.KEYWORD_ONLY
    fixed = [inspect.Parameter(n, kw, default=d, annotation=t) for n, t, d in _FIXED]
    options = [inspect.Parameter(f.field, kw, default=f.option(), annotation=f.type | None) for f in flags]
    params = [fixed[0], *options, *fixed[1:]]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = command.__qualname__ = stage
    command.__doc__ = doc
    return command


pretrain = app.command(name="pretrain")(
    _command(
        "pretrain",
        SHARED + PRETRAIN,
        "Pre-train a Hi-End-MAE on a cache (the paper's recipe unless told otherwise).",
    )
)
finetune = app.command(name="finetune")(
    _command(
        "finetune",
        SHARED + FINETUNE,
        "Fine-tune a UNETR (Dice + CE) on a labelled cache; best.safetensors by validation Dice.",
    )
)


@app.command(name="probe")
def probe_command(
    checkpoint: Path | None = typer.Argument(
        None,
        help="hiend .safetensors (pre-training, plain-MAE or Hi-End, or fine-tuned UNETR) or the paper's .pth.",
    ),
    cache: Path = typer.Option(
        ..., "--cache", help="A labelled hiend-data cache (same plan as pre-training)."
    ),
    random: str | None = typer.Option(
        None, "--random", help="Probe a model preset at its random initialisation instead (the baseline)."
    ),
    img_size: int | None = typer.Option(
        None, "--img-size", help="With --random: the crop size (a cube).", min=1
    ),
    cases: int = typer.Option(4, "--cases", help="Labelled cases the head is fitted on.", min=1),
    val_cases: int = typer.Option(2, "--val-cases", help="Held-out labelled cases scored.", min=1),
    crops: int = typer.Option(4, "--crops", help="Crops per case.", min=1),
    seed: int = typer.Option(0, "--seed", help="Which cases and crops (and --random's weights)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda, cuda:N."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write the result as JSON here."),
    num_heads: int | None = typer.Option(
        None,
        "--num-heads",
        help="The paper's .pth: encoder heads (not in the tensors; default: the released 16).",
        min=1,
    ),
    decoder_num_heads: int | None = typer.Option(
        None, "--decoder-num-heads", help="The paper's .pth: decoder heads (default 16).", min=1
    ),
) -> None:
    """Probe an encoder: Dice per organ of a per-token linear head on its frozen features (see the README)."""
    with cli_errors():
        from .probe_cli import probe_main

        arch = {k: v for k, v in (("num_heads", num_heads), ("decoder_num_heads", decoder_num_heads)) if v}
        probe_main(checkpoint, cache, random, img_size, cases, val_cases, crops, seed, device, out, arch)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
