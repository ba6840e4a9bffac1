"""Test-time flips follow the training recipe: a model trained without left/right flips must not see a
mirrored body under --tta (issue 16: spleen 0.15 -> 0.00, kidney_left 0.25 -> 0.00 with all 8 flips)."""

from __future__ import annotations

import numpy as np
import torch

from hiend_model.inference import sliding_window_logits
from hiend_model.window import WindowSettings, flips_over, trained_flip_axes


class Lateralised(torch.nn.Module):
    """A 'model' that tells left from right as a lateralised segmenter does: class 1 where the image
    rises along axis 0, class 2 where it falls (a left and a right organ look alike but for their side)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.zeros_like(x[:, :1])
        g[:, :, 1:-1] = x[:, :1, 2:] - x[:, :1, :-2]
        return torch.cat([torch.zeros_like(g), 10 * g, -10 * g], dim=1)


def _dice(pred: np.ndarray, ref: np.ndarray, k: int) -> float:
    a, b = pred == k, ref == k
    return 2 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_tta_over_the_trained_flips_keeps_paired_organs_on_their_side():
    x = np.linspace(-1, 1, 32, dtype=np.float32)
    image = torch.from_numpy(np.broadcast_to((x**2)[:, None, None], (32, 16, 16)).copy())[None]
    ref = np.where(np.arange(32) < 16, 2, 1)[:, None, None] * np.ones((1, 16, 16), int)  # falls, then rises
    ref[[0, -1]] = 0  # the model's edges
    model = Lateralised().eval()

    def predict(flips) -> np.ndarray:
        settings = WindowSettings(tta=flips)
        logits = sliding_window_logits(model, image, roi=(16, 16, 16), overlap=0.5, settings=settings)
        return logits.argmax(0).numpy()  # [K, X, Y, Z] for a [C, X, Y, Z] image

    plain = predict(False)
    every = predict(True)  # all 8 flips: axis 0 mirrors the sides
    trained = predict(flips_over(trained_flip_axes([{"augment": {"flip_axes": [1, 2]}}])))
    inner = (slice(1, 31), slice(None), slice(None))
    for k in (1, 2):
        assert _dice(trained[inner], ref[inner], k) >= _dice(plain[inner], ref[inner], k) - 1e-9
        assert _dice(plain[inner], ref[inner], k) > 0.9
        assert _dice(every[inner], ref[inner], k) < 0.5  # what --tta did before: the sides cancel
    np.testing.assert_array_equal(trained, plain)


def test_trained_flip_axes_of_an_ensemble_and_of_checkpoints_that_do_not_say():
    assert trained_flip_axes([{"augment": {"flip_axes": [1, 2]}}, {"augment": {"flip_axes": [2, 0]}}]) == (2,)
    assert trained_flip_axes([{"augment": {"flip_axes": []}}]) == ()
    assert trained_flip_axes([{"labels": {}}]) is None  # the paper's or an older checkpoint: all 8 stay
    assert flips_over((1, 2)) == ((), (1,), (2,), (1, 2))


def test_predict_with_tta_uses_the_flips_the_checkpoint_was_trained_with(tmp_path, capsys):
    from hiend_data import Plan
    from hiend_model import UNETR, build
    from hiend_model.checkpoint import read_checkpoint_info, save_checkpoint
    from hiend_model.predict import _trained_flips

    model = UNETR.from_mae(build("tiny", depth=4, embed_dim=48, num_heads=4), num_classes=3, feature_size=4)
    path = save_checkpoint(
        tmp_path / "m.safetensors", model, plan=Plan(), extra={"augment": {"flip_axes": [1, 2]}}
    )
    info = read_checkpoint_info(path)
    got = _trained_flips(WindowSettings(tta=True), [info])
    assert got.flips == ((), (1,), (2,), (1, 2))
    assert "averaging the 4 flips of axes [1, 2]" in capsys.readouterr().err
    none = save_checkpoint(
        tmp_path / "n.safetensors", model, plan=Plan(), extra={"augment": {"flip_axes": []}}
    )
    assert _trained_flips(WindowSettings(tta=True), [read_checkpoint_info(none)]).flips == ((),)
