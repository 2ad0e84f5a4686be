import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from geogfm.evaluation.nearest_neighbors import cosine_similarity, knn_classify, retrieval_scores

rng = np.random.default_rng(0)


def test_cosine_similarity_is_scale_free():
    a, b = rng.normal(size=(4, 8)), rng.normal(size=(5, 8))
    np.testing.assert_allclose(cosine_similarity(3 * a, 0.5 * b), cosine_similarity(a, b))
    np.testing.assert_allclose(np.diag(cosine_similarity(a, a)), 1.0)


@pytest.mark.parametrize("k", [5, 21])
def test_knn_matches_scikit_learn_cosine_brute_force(k):
    x = rng.normal(size=(120, 16))
    y = (x[:, 0] + 0.5 * rng.normal(size=120) > 0).astype(int)  # two classes, odd k: no ties
    test = rng.normal(size=(40, 16))
    ours = knn_classify(x, y, test, k=k, n_classes=2).argmax(1)
    ref = KNeighborsClassifier(k, metric="cosine", algorithm="brute").fit(x, y).predict(test)
    np.testing.assert_array_equal(ours, ref)


def test_knn_breaks_ties_by_similarity():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 1])
    scores = knn_classify(x, y, np.array([[0.2, 1.0]]), k=2, n_classes=2)
    assert scores.argmax(1)[0] == 1  # one vote each; class 1's neighbour is closer


def test_retrieval_of_separated_classes_is_perfect():
    centres = np.eye(3) * 10
    y = np.repeat(np.arange(3), 10)
    x = centres[y] + rng.normal(size=(30, 3))
    out = retrieval_scores(x[::2], x[1::2], y[::2, None] == y[None, 1::2], ks=(1, 5))
    assert out["map"] == pytest.approx(1.0) and out["recall@5"] == pytest.approx(1.0)
