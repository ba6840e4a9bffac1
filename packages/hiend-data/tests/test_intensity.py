"""CT windowing and MRI z-score on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from hiend_data import InputError
from hiend_data.intensity import ct_window, zscore


def test_ct_window_paper_default():
    hu = np.array([-1000, -175, 37.5, 250, 3000], dtype=np.float64)
    out = ct_window(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)
    assert hu[0] == -1000  # input untouched


def test_ct_window_custom_and_inplace():
    x = np.array([-1000.0, 0.0, 1000.0, 2000.0], dtype=np.float32)
    out = ct_window(x, (-1000, 1000), inplace=True)
    assert out is x
    np.testing.assert_allclose(x, [0.0, 0.5, 1.0, 1.0])


@pytest.mark.parametrize("window", [(10, 10), (100, -100), (float("nan"), 1)])
def test_ct_window_refuses_bad_windows(window):
    with pytest.raises(InputError, match="window"):
        ct_window(np.zeros(3), window)


def test_zscore_on_nonzero_foreground():
    x = np.zeros((2, 4, 4, 4), np.float32)
    x[0, 1:3, 1:3, 1:3] = [[[1, 2], [3, 4]], [[5, 6], [7, 8]]]
    x[1, :2] = 10.0  # constant channel
    out, stats = zscore(x)
    fg = out[0, 1:3, 1:3, 1:3]
    assert stats[0] == pytest.approx((4.5, np.std(np.arange(1, 9))))
    np.testing.assert_allclose(fg.ravel(), (np.arange(1, 9) - 4.5) / np.std(np.arange(1, 9)), rtol=1e-6)
    assert out[0][x[0] == 0].max() == 0 and out[0][x[0] == 0].min() == 0
    assert stats[1] == (10.0, 1.0) and not out[1].any()  # constant: centred, no division by zero


def test_zscore_with_explicit_mask():
    x = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    mask = np.zeros_like(x, bool)
    mask[0] = True
    out, ((mean, std),) = zscore(x, mask)
    assert mean == pytest.approx(4.0) and std == pytest.approx(np.std(np.arange(9)))
    assert not out[1:].any()
