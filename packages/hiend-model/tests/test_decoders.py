"""The decoders table (hiend_model.decoders.DECODERS): each entry owns its default depth, the encoder
blocks it reads, its cross-attention count and its projection; the model follows the entry."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hiend_model import DECODERS, build
from hiend_model.decoder_blocks import HiEndDecoder, PlainMAEDecoder
from hiend_model.decoders import decoder_name, default_taps


def test_the_table_says_what_each_decoder_reads_and_builds():
    hiend, plain = DECODERS["hiend"], DECODERS["plain"]
    assert set(DECODERS) == {"hiend", "plain"}
    assert hiend.taps(12) == default_taps(12) == (3, 6, 9) and hiend.taps(8) == (2, 4, 6)
    assert hiend.taps(12, (1, 11)) == (1, 11) and plain.taps(12) == plain.taps(12, (1, 11)) == ()
    assert (hiend.default_depth, plain.default_depth) == (2, 5)
    assert (hiend.cross_depth((3, 6, 9)), plain.cross_depth(())) == (3, 0)
    assert hiend.module_class is HiEndDecoder and plain.module_class is PlainMAEDecoder
    assert (hiend.projection_name, plain.projection_name) == ("encoder_to_decoder", "decoder_embed")
    assert decoder_name("mae") == "plain" and decoder_name("hiend") == "hiend" and decoder_name(3) == 3


@pytest.mark.parametrize("name", ["hiend", "plain"])
def test_the_model_follows_its_entry(name):
    with torch.device("meta"):
        model = build("tiny", decoder=name, depth=8)
    spec = DECODERS[name]
    assert model.decoder_spec is spec and isinstance(model.decoder, spec.module_class)
    assert model.taps == spec.taps(8) and model.projection is getattr(model, spec.projection_name)
    other = ({"encoder_to_decoder", "decoder_embed"} - {spec.projection_name}).pop()
    assert not any(k.startswith(other + ".") for k in model.state_dict())
    n_linears = len(model.projection) if isinstance(model.projection, torch.nn.ModuleList) else 1
    assert n_linears == len(model.taps) + 1


def test_the_table_imports_no_torch():
    code = "import sys, hiend_model.decoders, hiend_model.config; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
