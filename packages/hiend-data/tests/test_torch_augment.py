"""The GPU form of the crop augmentation (hiend_data.torch_augment) against the NumPy recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hiend_data.augment import N_UNIFORMS, augment, draw_augment, params_from_uniforms
from hiend_data.sampling import SamplerConfig
from hiend_data.torch_augment import NO_AUGMENT, augment_batch, draw_uniforms

EVERY_BRANCH = dict(flip_prob=0.5, rot90_prob=0.6, scale_prob=0.5, shift_prob=0.5)


def _batch(n: int, size: tuple[int, int, int] = (6, 6, 5), seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 2, *size)).astype(np.float32)  # 2 channels: both move together
    labels = rng.integers(0, 7, size=(n, *size)).astype(np.uint8)
    return images, labels


@pytest.mark.parametrize("rot90_axes", [(0, 1), (1, 2)])
def test_same_uniforms_give_exactly_the_numpy_recipe(rot90_axes):
    size = (6, 6, 5) if rot90_axes == (0, 1) else (5, 6, 6)
    cfg = SamplerConfig.pretrain(crop_size=size, rot90_axes=rot90_axes, **EVERY_BRANCH)
    images, labels = _batch(64, size)
    u = np.random.default_rng(1).random((64, N_UNIFORMS))
    got_img, got_lbl = augment_batch(
        torch.from_numpy(images), torch.from_numpy(labels), cfg, uniforms=torch.from_numpy(u)
    )
    kinds = set()
    for i in range(64):
        params = params_from_uniforms(cfg, u[i])
        kinds.add((params.flips, params.rot_k, params.scale is not None, params.shift is not None))
        want_img, want_lbl = augment(images[i], labels[i], params)
        assert torch.equal(got_img[i], torch.from_numpy(want_img)), (i, params)
        assert torch.equal(got_lbl[i], torch.from_numpy(want_lbl)), (i, params)
    # the batch covered flips of each axis, every k, and both intensity transforms
    assert {k[1] for k in kinds} == {0, 1, 2, 3}
    assert all(any(a in k[0] for k in kinds) for a in (0, 1, 2))
    assert any(k[2] for k in kinds) and any(k[3] for k in kinds)


def test_inputs_are_not_modified_and_no_augment_is_the_identity():
    cfg = SamplerConfig.pretrain(crop_size=(6, 6, 5), **EVERY_BRANCH)
    images, labels = _batch(16)
    img_t, lbl_t = torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())
    augment_batch(img_t, lbl_t, cfg, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(img_t.numpy(), images) and np.array_equal(lbl_t.numpy(), labels)
    off = cfg.model_copy(update=NO_AUGMENT)
    same_img, same_lbl = augment_batch(img_t, None, off, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same_img, img_t) and same_lbl is None


def test_the_distribution_matches_the_cpu_recipe():
    # The paper's pre-training recipe drawn 6,000 times on each path: the frequency of each transform
    # and the mean augmented crop agree within binomial / sampling noise (4 sigma).
    cfg = SamplerConfig.pretrain(crop_size=(2, 2, 2))
    n = 6000
    ramp = torch.arange(8, dtype=torch.float32).reshape(1, 1, 2, 2, 2).expand(n, 1, 2, 2, 2).contiguous()
    u = draw_uniforms(n, torch.Generator().manual_seed(3))
    gpu, _ = augment_batch(ramp, None, cfg, uniforms=u)
    rng = np.random.default_rng(4)
    cpu_params = [draw_augment(cfg, rng) for _ in range(n)]
    cpu = np.stack([augment(ramp[0].numpy(), None, p)[0] for p in cpu_params])
    gpu_params = [params_from_uniforms(cfg, row) for row in u.numpy()]

    def freqs(params):
        return np.array(
            [[a in p.flips for a in (0, 1, 2)] + [p.rot_k == k for k in (1, 2, 3)] + [p.scale is not None, p.shift is not None]
             for p in params], dtype=float,
        ).mean(0)  # fmt: skip

    want = np.array([0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1])  # rot90 p 0.3 over k = 1..3
    for f in (freqs(cpu_params), freqs(gpu_params)):
        assert np.all(np.abs(f - want) < 4 * np.sqrt(want * (1 - want) / n)), f
    # the mean crop and its spread per voxel, CPU vs GPU path
    g = gpu.numpy()
    sd = np.sqrt((cpu.var(0) + g.var(0)) / n)
    assert np.all(np.abs(cpu.mean(0) - g.mean(0)) < 4 * sd + 1e-6)
    assert np.allclose(cpu.std(0), g.std(0), rtol=0.05)


def test_a_seeded_generator_repeats_and_bad_shapes_are_refused():
    cfg = SamplerConfig.pretrain(crop_size=(6, 6, 5), **EVERY_BRANCH)
    images, labels = _batch(8)
    a = augment_batch(
        torch.from_numpy(images), torch.from_numpy(labels), cfg, torch.Generator().manual_seed(5)
    )
    b = augment_batch(
        torch.from_numpy(images), torch.from_numpy(labels), cfg, torch.Generator().manual_seed(5)
    )
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    with pytest.raises(ValueError, match="labels hold 7 crops, images 8"):
        augment_batch(torch.from_numpy(images), torch.from_numpy(labels[:7]), cfg)
    with pytest.raises(ValueError, match=r"uniforms must be \[8, 9\]"):
        augment_batch(torch.from_numpy(images), None, cfg, uniforms=torch.zeros(8, 3))
