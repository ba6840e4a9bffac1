"""WindowSettings: the six sliding-window settings as one checked, frozen object."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hiend_data.errors import InputError
from hiend_model.inference import FLIPS_ALL, sliding_window_logits
from hiend_model.window import WindowSettings


@pytest.mark.parametrize(
    ("overlap", "sw", "match"),
    [
        (1.0, 1, r"^--overlap 1.0: expected a fraction of the window in \[0, 1\)$"),
        (-0.5, 1, r"^--overlap -0.5:"),
        (float("nan"), 1, r"^--overlap nan:"),
        ("0.5", 1, r"^--overlap '0.5':"),
        (0.5, 0, r"^--sw-batch 0: expected a whole number"),
        (0.5, 1.5, r"^--sw-batch 1.5: expected a whole number"),
        (0.5, True, r"^--sw-batch True: expected a whole number"),
    ],
)
def test_values_out_of_range_are_refused_as_the_options(overlap, sw, match):
    with pytest.raises(InputError, match=match):
        WindowSettings(overlap=overlap, sw_batch_size=sw)


def test_the_edges_are_accepted():
    WindowSettings(overlap=0.0, sw_batch_size=1)
    WindowSettings(overlap=0.99, sw_batch_size=64)


def test_flips_are_checked_and_kept_as_tuples():
    assert WindowSettings().flips == ((),) and WindowSettings(tta=True).flips == FLIPS_ALL
    s = WindowSettings(tta=[[1, 0], ()])
    assert s.tta == ((0, 1), ()) and s.flips == ((0, 1), ())
    hash(s)  # frozen and hashable, flips included
    for bad in ([(3,)], [], [1]):
        with pytest.raises(InputError, match=r"^tta flips .* must be a non-empty list of spatial axis"):
            WindowSettings(tta=bad)
    with pytest.raises(InputError, match=r"^--amp 'yes'"):
        WindowSettings(amp="yes")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.overlap = 0.1  # type: ignore[misc]


def test_with_progress_changes_only_the_callback():
    calls = []
    s = WindowSettings(overlap=0.25, sw_batch_size=3)
    t = s.with_progress(lambda d, n: calls.append(d))
    assert (t.overlap, t.sw_batch_size, s.progress) == (0.25, 3, None) and callable(t.progress)


def test_sliding_window_takes_the_settings():
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    image = torch.randn(1, 20, 18, 12)
    calls: list[tuple[int, int]] = []
    plain = sliding_window_logits(net, image, (8, 8, 8), 0.25, 3, tta=[(), (1,)])
    settings = WindowSettings(
        overlap=0.25, sw_batch_size=3, tta=[(), (1,)], progress=lambda *a: calls.append(a)
    )
    got = sliding_window_logits(net, image, (8, 8, 8), settings=settings)
    torch.testing.assert_close(got, plain, rtol=0, atol=0)
    assert calls[-1][0] == calls[-1][1] and calls[-1][1] > 2
    with pytest.raises(TypeError, match=r"overlap, sw_batch_size given both directly and in settings"):
        sliding_window_logits(net, image, (8, 8, 8), 0.25, 3, settings=settings)
