"""Leave-one-out kNN accuracy: votes, ties, unlabelled points."""
from __future__ import annotations

import numpy as np
import pytest

from revelio_svc.interpret.knn import knn_accuracy


def test_leave_one_out_votes_ties_and_unlabelled_points():
    X = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2], [10.0]])
    y = [0, 0, 0, 1, 1, 1, None]  # the far point is unlabelled: neither queried nor a neighbour
    assert knn_accuracy(X, y, k=2) == 1.0
    # each point alone would be judged by itself: leave-one-out never counts the point
    assert knn_accuracy(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 1, 0, 1], k=1) == 0.0
    # a 1–1 tie goes to the nearer neighbour's label
    assert knn_accuracy(np.array([[0.0], [1.0], [3.0]]), [0, 0, 1], k=2) == pytest.approx(2 / 3)
    assert np.isnan(knn_accuracy(X[:3], [0, 1, 0], k=5))
    with pytest.raises(ValueError, match="metric"):
        knn_accuracy(X, y, metric="manhattan")
