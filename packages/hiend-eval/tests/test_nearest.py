"""The local search of hiend_eval.nearest gives exactly the k-d tree's distances."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from hiend_eval.nearest import local_offsets, nearest_distances


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.5), (3.0, 0.5, 1.2)])
def test_local_search_equals_tree(spacing):
    rng = np.random.default_rng(7)
    target = np.zeros((40, 36, 30), bool)
    target[8:30, 6:28, 5:24] = ndimage.binary_opening(rng.random((22, 22, 19)) < 0.7)
    target[1, 34, 28] = True  # a far, lone target voxel
    queries = np.flatnonzero(~target)
    queries = queries[rng.choice(len(queries), 4000, replace=False)]
    fast = nearest_distances(queries, target, spacing, local=True)
    slow = nearest_distances(queries, target, spacing, local=False)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)
    assert slow.max() > 3 * min(spacing)  # both stages were exercised
    assert slow.min() == pytest.approx(min(spacing))


def test_offsets_are_sorted_and_within_the_radius():
    offsets, lengths = local_offsets((0.8, 0.8, 2.5), 2.4)
    assert (
        np.all(np.diff(lengths) >= 0) and lengths.max() <= 2.4 + 1e-9 and lengths.min() == pytest.approx(0.8)
    )
    np.testing.assert_allclose(lengths, np.sqrt(((offsets * [0.8, 0.8, 2.5]) ** 2).sum(1)))
    assert np.abs(offsets[:, 2]).max() == 0  # 2.5 mm steps along z lie beyond 2.4 mm
    assert len(offsets) == len({tuple(o) for o in offsets.tolist()})
