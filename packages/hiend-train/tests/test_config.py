"""Configs: the paper's recipe as defaults, files (TOML / JSON), flag precedence, bad input."""

from __future__ import annotations

import json

import pytest

from hiend_data.errors import InputError
from hiend_model.config import MAEConfig, resolve_config
from hiend_train.cli import _resolve, parse_sets
from hiend_train.config import FinetuneConfig, PretrainConfig, load_config


def test_pretrain_defaults_are_the_papers_recipe():
    cfg = PretrainConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.betas, cfg.warmup_epochs) == (1e-4, 0.05, (0.9, 0.95), 10.0)
    assert cfg.num_samples == 8 and cfg.precision == "auto" and cfg.val_fraction == 0.0


def test_finetune_defaults_are_the_papers_recipe():
    cfg = FinetuneConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.warmup_epochs) == (1e-4, 1e-5, 50.0)
    assert (cfg.sw_overlap, cfg.num_samples, cfg.dice_weight, cfg.ce_weight) == (0.5, 4, 1.0, 1.0)


def test_toml_file_then_flags_override(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "tiny"\nepochs = 7\nlr = 3e-4\nbetas = [0.8, 0.9]\n[model]\ndepth = 4\n')
    cfg = load_config(PretrainConfig, path, overrides={"epochs": 9, "seed": None})
    assert cfg.preset == "tiny" and cfg.lr == 3e-4 and cfg.betas == (0.8, 0.9) and cfg.model == {"depth": 4}
    assert cfg.epochs == 9  # the flag wins over the file
    assert cfg.seed == 0  # a flag left unset (None) keeps the file's / default value


def test_json_file_and_cli_resolution(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"epochs": 3, "model": {"depth": 4}, "workers": 1}))
    cfg = _resolve(
        "finetune", path, {"workers": 0, "lr": None}, ["model.embed_dim=96", "seed=5"], resume=False
    )
    assert isinstance(cfg, FinetuneConfig)
    assert cfg.model == {"depth": 4, "embed_dim": 96}  # a dotted --set adds to the file's table
    assert (cfg.epochs, cfg.workers, cfg.seed, cfg.lr) == (3, 0, 5, 1e-4)


def test_parse_sets_reads_json_values():
    assert parse_sets(["betas=[0.9, 0.99]", "preset=tiny", "clip_grad=1.5", "sampler.flip_prob=0"]) == {
        "betas": [0.9, 0.99],
        "preset": "tiny",
        "clip_grad": 1.5,
        "sampler": {"flip_prob": 0},
    }
    with pytest.raises(InputError, match="FIELD=VALUE"):
        parse_sets(["epochs"])
    with pytest.raises(InputError, match="dotted"):
        parse_sets(["optim.lr=1"])


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("a.toml", "epochz = 3\n", r"a\.toml: epochz: unknown field"),
        ("b.toml", "epochs = [\n", r"b\.toml: not valid TOML"),
        ("c.json", '{"epochs": 3,}', r"c\.json: not valid JSON"),
        ("d.yaml", "epochs: 3\n", r"d\.yaml: config files are \.toml or \.json"),
        ("e.json", "[1, 2]", r"e\.json: expected a table"),
        ("f.toml", "epochs = 0\n", r"f\.toml: epochs: Input should be greater than or equal to 1"),
        ("g.toml", 'kind = "finetune"\n', r"g\.toml: kind 'finetune' is not a pretrain config"),
    ],
)
def test_bad_config_files_name_the_file_and_field(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        load_config(PretrainConfig, path)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="config file not found"):
        load_config(PretrainConfig, tmp_path / "nope.toml")


def test_resolved_config_round_trips_through_json(tmp_path):
    cfg = FinetuneConfig(cache=tmp_path, init=tmp_path / "m.safetensors", model={"drop_path": 0.1})
    again = FinetuneConfig(**json.loads(json.dumps(cfg.model_dump(mode="json"))))
    assert again == cfg


@pytest.mark.parametrize(
    ("flags", "sets", "message"),
    [
        ({"lr": float("inf")}, [], "^command line: lr: inf is not a finite number$"),
        ({}, ["warmup_epochs=Infinity"], "warmup_epochs: inf is not"),
        ({}, ["clip_grad=NaN"], "clip_grad: nan is not"),
        ({}, ["save_every_minutes=inf"], "save_every_minutes: inf is not"),  # text, parsed by pydantic
        ({}, ["model.mask_ratio=nan"], "model.mask_ratio: nan is not"),
        ({}, ["sampler.pad_value=-Infinity"], "sampler.pad_value: -inf is not"),
    ],
)
def test_a_non_finite_value_is_refused_naming_field_and_value(flags, sets, message):
    with pytest.raises(InputError, match=message):
        _resolve("pretrain", None, flags, sets, resume=False)


def test_a_non_finite_value_shadowed_by_a_later_layer_is_refused_too(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text("lr = inf\n")
    with pytest.raises(InputError, match=rf"^{path}: lr: inf is not a finite number$"):
        _resolve("pretrain", path, {"lr": 1e-3}, [], resume=False)
    with pytest.raises(ValueError, match="finite"):
        PretrainConfig(betas=(0.9, float("nan")))


def test_model_configs_refuse_non_finite_numbers():
    with pytest.raises(InputError, match="^invalid MAEConfig: mlp_ratio: inf is not a finite number$"):
        resolve_config("tiny", mlp_ratio=float("inf"))
    with pytest.raises(ValueError, match="finite"):
        MAEConfig(layer_norm_eps="nan")


def test_kind_of_older_configs_is_read_as_stage(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text('kind = "pretrain"\nepochs = 3\n')
    cfg = _resolve("pretrain", path, {}, [], resume=False)
    assert (cfg.stage, cfg.epochs) == ("pretrain", 3) and "kind" not in cfg.model_dump()
    assert PretrainConfig(kind="pretrain").stage == "pretrain"
    with pytest.raises(InputError, match=r"^command line: stage 'pretrain' is not a finetune config$"):
        _resolve("finetune", None, {}, ["stage=pretrain"], resume=False)
