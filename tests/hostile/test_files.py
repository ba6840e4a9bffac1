"""Hostile files (issue 11): JSON nested to blow the stack, checkpoints with malformed or lying
metadata, and a .pth whose pickle would run code. Each: exit 2, one line naming the file, no traceback,
and the payload never runs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from hostile_cli import one_line_exit_2, run
from safetensors.torch import save_file

from hiend_data import Plan
from hiend_data.cache import preprocess_dataset
from hiend_data.phantom import make_phantom_dataset
from hiend_model.checkpoint import save_checkpoint
from hiend_model.mae import build

DEEP = "[" * 200_000 + "]" * 200_000


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("files") / "raw"
    make_phantom_dataset(root, cases=2, seed=9)
    return root


def test_json_nested_too_deeply(phantom, tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "dataset.json").write_text(DEEP)
    one_line_exit_2(run("hiend-data", "preprocess", ds, tmp_path / "c"), "dataset.json", "nested too deeply")
    labels = tmp_path / "labels.json"
    labels.write_text(DEEP)
    ref = phantom / "labelsTr"
    one_line_exit_2(
        run("hiend-eval", "score", ref, ref, "--out", tmp_path / "s", "--labels", labels),
        "labels.json",
        "nested too deeply",
    )
    assert not (tmp_path / "s").exists() and not (tmp_path / "c").exists()


def _tiny_mae():
    torch.manual_seed(0)
    return build("tiny", img_size=32, patch_size=16, embed_dim=24, depth=4, num_heads=2, decoder_embed_dim=24,
                 decoder_num_heads=2)  # fmt: skip


def test_safetensors_with_malformed_or_lying_metadata(tmp_path, phantom):
    mae = _tiny_mae()
    good = save_checkpoint(
        tmp_path / "good.safetensors", mae, plan=Plan(spacing=(6.0, 6.0, 6.0), crop_size=(32, 32, 32))
    )
    tensors = {k: v.contiguous() for k, v in mae.state_dict().items()}
    meta = {"format": "hiend", "kind": "mae", "config": json.dumps(mae.config.model_dump(mode="json"))}
    # metadata nested to blow the stack
    deep = tmp_path / "deep.safetensors"
    save_file(tensors, str(deep), metadata={**meta, "config": DEEP})
    one_line_exit_2(
        run("hiend-model", "info", deep), "deep.safetensors", "metadata 'config'", "nested too deeply"
    )
    # a header whose length field claims 2^60 bytes
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**60) + good.read_bytes()[8:])
    one_line_exit_2(run("hiend-model", "info", huge), "huge.safetensors")
    # a header that is not JSON
    garbled = tmp_path / "garbled.safetensors"
    raw = good.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    garbled.write_bytes(raw[:8] + b"{" + b"\xff" * (n - 1) + raw[8 + n :])
    one_line_exit_2(run("hiend-model", "info", garbled), "garbled.safetensors")
    # metadata claiming another kind than its tensors: predict refuses it by its tensors, naming the file
    lying = tmp_path / "lying.safetensors"
    unetr_meta = {**meta, "kind": "unetr", "plan": Plan(spacing=(6.0, 6.0, 6.0), crop_size=(32, 32, 32)).model_dump_json(),
                  "config": json.dumps({**mae.config.encoder_fields(), "num_classes": 3, "feature_size": 4})}  # fmt: skip
    save_file(tensors, str(lying), metadata=unetr_meta)
    line = one_line_exit_2(
        run("hiend-model", "predict", lying, phantom / "imagesTr", "--out", tmp_path / "p", "-q"),
        "lying.safetensors",
    )
    assert "missing" in line or "unexpected" in line or "shape" in line
    assert not (tmp_path / "p").exists()


class _Payload:
    """Unpickling this runs ``Path(marker).touch()``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pth_carrying_a_pickle_payload_never_runs(tmp_path, phantom):
    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {"encoder.cls_token": torch.zeros(1, 1, 24)}, "x": _Payload(marker)}, evil)
    one_line_exit_2(
        run("hiend-model", "convert", evil, tmp_path / "out.safetensors", "--from", "official-pretrain"),
        "evil.pth",
    )
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()
    cache = tmp_path / "cache"
    preprocess_dataset(
        phantom, cache, Plan(spacing=(6.0, 6.0, 6.0), crop_size=(32, 32, 32)), workers=0, progress=False
    )
    proc = run("hiend-train", "finetune", "--cache", cache, "--out", tmp_path / "run", "--init", evil, "--epochs", "1",
               "--workers", "0", "-q")  # fmt: skip
    one_line_exit_2(proc, "evil.pth")
    assert not marker.exists()
