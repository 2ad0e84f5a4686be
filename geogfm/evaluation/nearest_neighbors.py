"""k-nearest-neighbour classification and retrieval on frozen embeddings, by cosine similarity.

The usual self-supervised evaluation (DINO's kNN monitor uses k = 20; k = 5 is the other common
choice): an embedding votes with the labels of its ``k`` most cosine-similar training
embeddings, each neighbour one vote, ties broken by the summed similarity of the tied classes.
Retrieval ranks a database by cosine similarity to each query; an item is relevant when it shares
the query's label (or, for multi-label data, any label).
"""

from __future__ import annotations

import numpy as np

from geogfm.evaluation.metrics import mean_average_precision, recall_at_k

__all__ = ["cosine_similarity", "knn_classify", "retrieval_scores"]


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(Na, D) x (Nb, D) -> (Na, Nb) cosine similarities (a zero vector is similar to nothing)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def knn_classify(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    *,
    k: int,
    n_classes: int,
) -> np.ndarray:
    """Class scores of ``test_x`` by a vote of its ``k`` cosine-nearest training samples.

    Args:
        train_x: (N, D) training embeddings.
        train_y: (N,) int class indices in ``[0, n_classes)``.
        test_x: (M, D) embeddings to classify.
        k: neighbours that vote (capped at N).
        n_classes: K.

    Returns:
        (M, K) scores: votes plus a tie-breaking ``1e-6 *`` summed similarity; ``argmax`` is the
        prediction.
    """
    train_y = np.asarray(train_y, np.int64)
    if len(train_y) == 0:
        raise ValueError("knn_classify needs at least one training sample")
    k = min(int(k), len(train_y))
    sim = cosine_similarity(test_x, train_x)  # (M, N)
    nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]  # (M, k) the k most similar, any order
    votes = np.zeros((len(sim), n_classes))
    rows = np.repeat(np.arange(len(sim)), k)
    np.add.at(votes, (rows, train_y[nn].ravel()), 1.0)
    sims = np.zeros_like(votes)
    np.add.at(sims, (rows, train_y[nn].ravel()), np.take_along_axis(sim, nn, 1).ravel())
    return votes + 1e-6 * sims


def retrieval_scores(
    query_x: np.ndarray,
    db_x: np.ndarray,
    relevant: np.ndarray,
    *,
    ks: tuple[int, ...] = (1, 5, 10),
) -> dict[str, float]:
    """Recall@k and mAP of cosine-similarity retrieval.

    Args:
        query_x: (Q, D) query embeddings.
        db_x: (M, D) database embeddings.
        relevant: (Q, M) bool, which database items answer each query.
        ks: the cut-offs of recall@k.

    Returns:
        ``{"map": ..., "recall@1": ..., ...}``.
    """
    sim = cosine_similarity(query_x, db_x)
    out = {"map": mean_average_precision(sim, relevant)}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(sim, relevant, k)
    return out
