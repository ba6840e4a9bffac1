"""Sliding-window inference: same numbers as MONAI's sliding_window_inference, padding, TTA, argmax."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai import inferers as monai_inferers
from monai.data import utils as monai_utils  # dev dependency: the reference the numbers must match

from hiend_data.errors import InputError
from hiend_model.inference import (
    FLIPS_ALL,
    argmax_labels,
    gaussian_importance_map,
    label_dtype,
    sliding_window_logits,
    window_starts,
)


def conv_net(in_ch: int = 2, out_ch: int = 3, seed: int = 0) -> torch.nn.Module:
    """A small non-linear conv net whose output depends on each voxel's neighbourhood."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_ch, 6, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(6, out_ch, 3, padding=1)
    ).eval()


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "blend", "sw_batch"),
    [
        ((1, 2, 37, 29, 41), (16, 16, 16), 0.5, "gaussian", 3),  # odd sizes, several windows
        ((2, 2, 21, 17, 26), (12, 10, 16), 0.25, "gaussian", 4),  # batch 2, anisotropic window
        ((1, 2, 10, 29, 8), (16, 16, 16), 0.5, "gaussian", 2),  # window larger than two axes: padded
        ((1, 2, 16, 16, 16), (16, 16, 16), 0.5, "gaussian", 1),  # window == volume
        ((1, 2, 23, 19, 20), (12, 12, 12), 0.7, "constant", 5),
    ],
)
def test_matches_monai(shape, roi, overlap, blend, sw_batch):
    net = conv_net()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = monai_inferers.sliding_window_inference(x, roi, sw_batch, net, overlap=overlap, mode=blend)
    out = sliding_window_logits(net, x, roi, overlap, sw_batch_size=sw_batch, blend=blend)
    assert out.shape == ref.shape == (shape[0], 3, *shape[2:])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # Unbatched input gives the first item's result without the batch axis.
    torch.testing.assert_close(
        sliding_window_logits(net, x[0], roi, overlap, sw_batch_size=sw_batch, blend=blend),
        ref[0],
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("roi", [(96, 96, 96), (7, 10, 13)])
def test_importance_map_is_monais(roi):
    ref = monai_utils.compute_importance_map(roi, mode="gaussian", sigma_scale=0.125)
    torch.testing.assert_close(gaussian_importance_map(roi, 0.125), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("size", "roi", "overlap"), [(160, 96, 0.5), (96, 96, 0.5), (97, 96, 0.5), (37, 16, 0.25), (50, 12, 0.9)]
)
def test_window_starts_are_monais(size, roi, overlap):
    step = roi if size == roi else max(int(roi * (1 - overlap)), 1)
    slices = monai_utils.dense_patch_slices((size,), (roi,), (step,))
    assert window_starts(size, roi, overlap) == [s[0].start for s in slices]
    assert window_starts(160, 96, 0.5) == [0, 48, 64]


def test_pointwise_model_is_reproduced_exactly():
    """Blending identical per-voxel predictions must return them, whatever the windows."""
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 4, 1).eval()
    x = torch.randn(1, 1, 30, 25, 19)
    out = sliding_window_logits(net, x, (12, 12, 12), 0.5, sw_batch_size=4)
    with torch.no_grad():
        torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-6)


def test_progress_and_batching():
    calls, sizes = [], []

    def net(w):
        sizes.append(w.shape[0])
        return w[:, :1] * 2

    x = torch.rand(1, 1, 20, 20, 20)
    out = sliding_window_logits(
        net, x, (12, 12, 12), 0.5, sw_batch_size=5, progress=lambda d, t: calls.append((d, t))
    )
    n = len(window_starts(20, 12, 0.5)) ** 3  # 3 starts per axis -> 27 windows
    assert n == 27 and sizes == [5] * 5 + [2]
    assert calls[-1] == (27, 27) and len(calls) == 6
    torch.testing.assert_close(out, 2 * x)


def flip_equivariant_net() -> torch.nn.Module:
    """Conv kernels symmetric under every axis flip, pointwise non-linearity: flip-equivariant."""
    net = conv_net(1, 2)
    with torch.no_grad():
        for m in net:
            if isinstance(m, torch.nn.Conv3d):
                w = m.weight
                m.weight.copy_(sum(torch.flip(w, [a + 2 for a in f]) for f in FLIPS_ALL) / 8)
    return net


def test_tta_with_flip_equivariant_model_changes_nothing():
    net = flip_equivariant_net()
    x = torch.randn(1, 1, 26, 21, 30)
    plain = sliding_window_logits(net, x, (16, 16, 16), 0.5, sw_batch_size=2)
    tta = sliding_window_logits(net, x, (16, 16, 16), 0.5, sw_batch_size=2, tta=True)
    torch.testing.assert_close(tta, plain, rtol=1e-5, atol=1e-5)


def test_tta_averages_flipped_predictions():
    """One window covering the volume: TTA = mean over the 8 flips of flip(model(flip(x)))."""
    net = conv_net(1, 2)
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expect = (
            sum(torch.flip(net(torch.flip(x, [a + 2 for a in f])), [a + 2 for a in f]) for f in FLIPS_ALL) / 8
        )
        assert not torch.allclose(expect, net(x), atol=1e-3)  # the model is not flip-equivariant
    out = sliding_window_logits(net, x, (16, 16, 16), tta=True)
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
    # An explicit subset of flips.
    subset = [(), (2,)]
    with torch.no_grad():
        expect2 = (net(x) + torch.flip(net(torch.flip(x, [4])), [4])) / 2
    torch.testing.assert_close(
        sliding_window_logits(net, x, (16, 16, 16), tta=subset), expect2, rtol=1e-5, atol=1e-6
    )


def test_flip_set_is_every_combination():
    assert len(FLIPS_ALL) == 8 and FLIPS_ALL[0] == ()
    assert set(FLIPS_ALL) == {c for r in range(4) for c in itertools.combinations(range(3), r)}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"sw_batch_size": 0}, "sw_batch_size"),
        ({"blend": "linear"}, "blend"),
        ({"roi": (8, 8)}, "window"),
        ({"tta": [(3,)]}, "tta"),
        ({"sigma_scale": 0.0}, "sigma_scale"),
    ],
)
def test_bad_arguments(kwargs, match):
    x = torch.rand(1, 1, 8, 8, 8)
    args = {"roi": (8, 8, 8), **kwargs}
    with pytest.raises(InputError, match=match):
        sliding_window_logits(lambda w: w, x, **args)


@pytest.mark.parametrize("image", [torch.rand(8, 8, 8), torch.zeros(1, 1, 8, 8, 8, dtype=torch.int16)])
def test_bad_images(image):
    with pytest.raises(InputError, match="image"):
        sliding_window_logits(lambda w: w, image, (8, 8, 8))


def test_argmax_in_chunks_equals_argmax():
    logits = torch.randn(5, 13, 7, 6)
    expect = torch.argmax(logits, dim=0).numpy()
    out = argmax_labels(logits, np.uint8, max_chunk_bytes=8 * 7 * 6 * 2)  # two X planes per chunk
    assert out.dtype == np.uint8 and out.shape == (13, 7, 6)
    np.testing.assert_array_equal(out, expect)
    assert label_dtype(2) == np.uint8 and label_dtype(256) == np.uint8 and label_dtype(257) == np.uint16


@pytest.mark.gpu
def test_cuda_windows_match_cpu(monkeypatch):
    """Model on CUDA, image and output on the CPU; bf16 autocast stays close to float32."""
    # cuDNN convolutions default to TF32 (10-bit mantissa, ~1e-3 error here): compare true float32.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    net = conv_net()
    x = torch.randn(1, 2, 37, 29, 41)
    ref = sliding_window_logits(net, x, (16, 16, 16), 0.5, sw_batch_size=3)
    net = net.cuda()
    out = sliding_window_logits(net, x, (16, 16, 16), 0.5, sw_batch_size=3, out_device="cpu")
    assert out.device.type == "cpu"
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    on_gpu = sliding_window_logits(net, x.cuda(), (16, 16, 16), 0.5, sw_batch_size=3, tta=True, amp=True)
    assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32
    tta_ref = sliding_window_logits(net.cpu(), x, (16, 16, 16), 0.5, sw_batch_size=3, tta=True)
    torch.testing.assert_close(on_gpu.cpu(), tta_ref, rtol=0.05, atol=0.05)
