"""Our checkpoint format: round trips, metadata, and every way a file can be wrong."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hiend_data import Plan
from hiend_data.errors import InputError
from hiend_model.checkpoint import (
    FORMAT,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
    tensor_shapes,
)


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_mae_round_trip(tmp_path: Path, mae_model, tiny):
    plan = tiny.plan()
    path = save_checkpoint(tmp_path / "m.safetensors", mae_model, plan=plan, extra={"epoch": 3})
    model, info = load_checkpoint(path, expected_kind="mae")
    assert type(model) is type(mae_model) and not model.training
    _same_state(model, mae_model)
    images = torch.rand(2, 1, 32, 32, 32)
    noise = torch.rand(2, 8)
    with torch.no_grad():
        a, b = mae_model(images, noise=noise), model(images, noise=noise)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.pred, b.pred) and torch.equal(a.mask, b.mask)
    assert info.kind == "mae" and info.plan == plan and info.extra == {"epoch": 3}
    assert info.config == mae_model.config.model_dump(mode="json")
    assert info.versions["torch"] == torch.__version__ and "hiend-model" in info.versions
    assert read_checkpoint_info(path) == info
    # Nothing but the file itself is left in the folder (the temporary name was renamed).
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_unetr_round_trip(tmp_path: Path, unetr_model, tiny):
    path = save_checkpoint(tmp_path / "u.safetensors", unetr_model, plan=tiny.plan())
    model, info = load_checkpoint(path, expected_kind="unetr")
    _same_state(model, unetr_model)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), unetr_model(x))
    assert info.kind == "unetr" and info.config["num_classes"] == 3 and info.config["feature_size"] == 4


def test_metadata_is_json_strings(mae_ckpt: Path):
    from safetensors import safe_open

    with safe_open(str(mae_ckpt), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == FORMAT and meta["kind"] == "mae"
    assert json.loads(meta["config"])["embed_dim"] == 24
    assert Plan.model_validate_json(meta["plan"]).spacing == (3.0, 3.0, 3.0)
    assert set(json.loads(meta["versions"])) >= {"hiend-model", "hiend-data", "torch"}


def test_plan_is_optional(tmp_path: Path, mae_model):
    _, info = load_checkpoint(save_checkpoint(tmp_path / "m.safetensors", mae_model))
    assert info.plan is None


def test_tied_weights_are_saved(tmp_path: Path, tiny):
    """safetensors refuses aliased tensors; tied parameters must still save and load."""
    model = tiny.mae()
    blocks = model.encoder.blocks
    blocks[1].attn.proj.weight = blocks[0].attn.proj.weight  # tie two same-shape weights
    loaded, _ = load_checkpoint(save_checkpoint(tmp_path / "t.safetensors", model))
    assert torch.equal(loaded.encoder.blocks[1].attn.proj.weight, blocks[0].attn.proj.weight)
    images, noise = torch.rand(1, 1, 32, 32, 32), torch.rand(1, 8)
    with torch.no_grad():
        assert torch.equal(loaded(images, noise=noise).pred, model(images, noise=noise).pred)


def test_map_location_and_overrides(mae_ckpt: Path):
    model, info = load_checkpoint(mae_ckpt, map_location="cpu", config_overrides={"attn_backend": "sdpa"})
    assert model.config.attn_backend == "sdpa" and info.config["attn_backend"] == "sdpa"
    assert next(model.parameters()).device.type == "cpu"


# ------------------------------------------------------------------------------------- bad files


def test_wrong_kind(mae_ckpt: Path):
    with pytest.raises(InputError, match=r"tiny_mae.safetensors: expected a unetr checkpoint, got mae"):
        load_checkpoint(mae_ckpt, expected_kind="unetr")


@pytest.mark.parametrize("cut", [0, 7, 100, -10])
def test_truncated(tmp_path: Path, mae_ckpt: Path, cut: int):
    data = mae_ckpt.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(InputError, match=r"cut.safetensors: not a readable safetensors checkpoint"):
        load_checkpoint(bad)


def test_random_bytes(tmp_path: Path):
    bad = tmp_path / "noise.safetensors"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(InputError, match=r"noise.safetensors: not a readable safetensors"):
        read_checkpoint_info(bad)


def test_torch_pickle_gets_a_hint(tmp_path: Path, mae_model):
    pth = tmp_path / "paper.pth"
    torch.save({"state_dict": mae_model.state_dict()}, pth)
    with pytest.raises(InputError, match=r"paper.pth: .*hiend-model convert"):
        load_checkpoint(pth)


def test_missing_file(tmp_path: Path):
    with pytest.raises(InputError, match=r"nope.safetensors: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_not_a_hiend_file(tmp_path: Path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(
        InputError, match=r"other.safetensors: not a hiend checkpoint \(metadata format is 'pt'"
    ):
        load_checkpoint(other)
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(InputError, match=r"not a hiend checkpoint \(metadata format is None"):
        read_checkpoint_info(other)


def _rewrite(src: Path, dst: Path, tensors=None, **meta_changes) -> Path:
    from safetensors import safe_open

    with safe_open(str(src), framework="pt") as fh:
        meta = dict(fh.metadata())
    meta.update(meta_changes)
    save_file(tensors if tensors is not None else load_file(str(src)), str(dst), metadata=meta)
    return dst


def test_shape_mismatch_names_key_and_shapes(tmp_path: Path, mae_ckpt: Path):
    config = dict(read_checkpoint_info(mae_ckpt).config)
    config["mlp_ratio"] = 2.0  # fc1/fc2 of every block change shape: [96, 24] in the file, [48, 24] now
    bad = _rewrite(mae_ckpt, tmp_path / "shape.safetensors", config=json.dumps(config))
    with pytest.raises(InputError) as err:
        load_checkpoint(bad)
    msg = str(err.value)
    assert "shape.safetensors" in msg and "\n" not in msg
    assert "encoder.blocks.0.mlp.fc1.weight (checkpoint (96, 24), model (48, 24))" in msg
    assert "and " in msg and "more" in msg  # the rest are counted, not listed


def test_missing_and_unexpected_keys(tmp_path: Path, mae_ckpt: Path):
    tensors = load_file(str(mae_ckpt))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    tensors["stray.weight"] = torch.zeros(3)
    bad = _rewrite(mae_ckpt, tmp_path / "keys.safetensors", tensors=tensors)
    with pytest.raises(
        InputError, match=rf"1 missing key\(s\): {dropped}; 1 unexpected key\(s\): stray.weight"
    ):
        load_checkpoint(bad)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"kind": "vae"}, r"unknown checkpoint kind 'vae'"),
        ({"config": "{not json"}, r"metadata 'config': not valid JSON"),
        ({"config": "{}"}, r"metadata 'config' is missing"),
        ({"config": json.dumps({"embed_dim": 25, "num_heads": 2})}, r"invalid MAEConfig"),
        ({"plan": json.dumps({"spacing": [0, 1, 1]})}, r"metadata 'plan' is invalid: spacing"),
    ],
)
def test_bad_metadata(tmp_path: Path, mae_ckpt: Path, change: dict, match: str):
    bad = _rewrite(mae_ckpt, tmp_path / "meta.safetensors", **change)
    with pytest.raises(InputError, match=match):
        load_checkpoint(bad)


def test_failed_save_leaves_nothing(tmp_path: Path, mae_model):
    with pytest.raises(InputError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "x.safetensors", mae_model, extra={"bad": object()})
    assert os.listdir(tmp_path) == []
    with pytest.raises(InputError, match="cannot save a Linear"):
        save_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2))
    assert os.listdir(tmp_path) == []


def test_tensor_shapes_from_header(mae_ckpt: Path, mae_model):
    shapes = tensor_shapes(mae_ckpt)
    assert shapes == {k: tuple(v.shape) for k, v in mae_model.state_dict().items()}


def test_label_names_in_info_and_summary(tmp_path: Path, unetr_model, tiny):
    from hiend_model.checkpoint import checkpoint_summary

    labels = {"1": "liver", "2": "spleen"}
    path = save_checkpoint(
        tmp_path / "u.safetensors", unetr_model, plan=tiny.plan(), extra={"labels": labels}
    )
    info = read_checkpoint_info(path)
    assert info.label_names == {1: "liver", 2: "spleen"}
    summary = checkpoint_summary(path)
    assert summary["labels"] == labels and summary["extra"]["labels"] == labels
    assert json.loads(json.dumps(summary))["labels"] == labels
    plain = save_checkpoint(tmp_path / "plain.safetensors", unetr_model, plan=tiny.plan())
    assert read_checkpoint_info(plain).label_names is None and checkpoint_summary(plain)["labels"] is None


@pytest.mark.parametrize(
    ("labels", "what"),
    [
        ({"0": "background"}, "label key '0'"),
        (["liver"], "must be an object"),
        ({"1": ""}, "label 1 has name"),
    ],
)
def test_bad_label_names_name_the_file(tmp_path: Path, unetr_model, labels, what):
    from hiend_model.checkpoint import checkpoint_summary

    path = save_checkpoint(tmp_path / "bad.safetensors", unetr_model, extra={"labels": labels})
    info = read_checkpoint_info(path)  # the rest of the metadata stays readable
    with pytest.raises(InputError) as err:
        _ = info.label_names
    assert str(err.value).startswith(f"{path}: metadata extra.labels: ") and what in str(err.value)
    with pytest.raises(InputError, match="extra.labels"):
        checkpoint_summary(path)


# ----------------------------------------------------------------------- weights that are not finite


def test_check_finite_names_the_first_bad_tensor_and_counts():
    from hiend_model.checkpoint import check_finite

    good = {"a": torch.zeros(4), "steps": torch.tensor([3], dtype=torch.int64)}
    check_finite("m.safetensors", good)  # integer tensors are never "non-finite"
    bad = {
        **good,
        "b": torch.tensor([1.0, float("nan"), float("-inf"), 2.0]),
        "c": torch.full((2,), float("inf")),
    }
    with pytest.raises(
        InputError, match=r"^m.safetensors: tensor 'b': 2 of its 4 values are NaN or inf \(and 1 more"
    ):
        check_finite("m.safetensors", bad)
    with pytest.raises(InputError, match=r"'c': 2 of its 2 values"):
        check_finite("m.safetensors", [("c", bad["c"]), ("a", good["a"])])
    half = torch.tensor([float("nan")], dtype=torch.bfloat16)
    with pytest.raises(InputError, match=r"'h': 1 of its 1 values"):
        check_finite("x", {"h": half})


def test_loading_refuses_values_that_are_not_finite_once_loaded(tmp_path: Path, unetr_ckpt: Path):
    """A float64 file value too large for the model's float32 becomes inf when loaded: refused too."""
    from safetensors import safe_open

    from hiend_model.checkpoint import checkpoint_summary

    with safe_open(str(unetr_ckpt), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(unetr_ckpt))
    key = "encoder.blocks.0.mlp.fc1.bias"
    tensors[key] = tensors[key].double()
    tensors[key][5] = 1e300
    big = tmp_path / "big.safetensors"
    save_file(tensors, str(big), metadata=meta)
    beyond = rf"big.safetensors: tensor '{key}': 1 of its \d+ values are beyond the range of float32"
    with pytest.raises(InputError, match=beyond):
        load_checkpoint(big, expected_kind="unetr")
    with pytest.raises(InputError, match=beyond):  # finite in the file, but not in the model: info says so
        checkpoint_summary(big)
    tensors[key][5] = float("nan")
    save_file(tensors, str(big), metadata=meta)
    with pytest.raises(InputError, match=rf"tensor '{key}'"):
        checkpoint_summary(big)
    assert checkpoint_summary(big, check_values=False)["tensors"] == len(tensors)  # header only
    # a buffer (not a parameter) counts as well
    tensors = load_file(str(unetr_ckpt))
    tensors["encoder.pos_embed"][0, 0, 0] = float("inf")
    save_file(tensors, str(big), metadata=meta)
    with pytest.raises(InputError, match=r"tensor 'encoder.pos_embed': 1 of its"):
        load_checkpoint(big)


def test_checkpoints_follow_the_umask_not_safetensors_0600(tmp_path):
    import stat

    from hiend_model import build
    from hiend_model.checkpoint import save_checkpoint

    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "m.safetensors", build("tiny", depth=4, embed_dim=24, num_heads=2))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the group and others, as open() makes it
