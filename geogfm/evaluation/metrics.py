"""Evaluation metrics on plain arrays, with the conventions spelled out.

Reconstruction (per band, over valid pixels): :func:`psnr`, :func:`ssim`. Classification and
segmentation: :func:`topk_accuracy`, :func:`confusion_matrix`, :func:`iou`, :func:`miou`.
Regression: :func:`rmse`, :func:`r2`. Retrieval: :func:`recall_at_k`,
:func:`mean_average_precision`. Uncertainty: :func:`bootstrap_ci`, a percentile bootstrap that
resamples whole clusters (spatial neighbourhoods), since nearby patches are not independent.

Each function is checked in ``tests/evaluation/test_metrics.py`` against an independent reference
(scikit-image, scikit-learn or a hand-computed case).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "bootstrap_ci",
    "confusion_matrix",
    "iou",
    "mean_average_precision",
    "miou",
    "psnr",
    "r2",
    "recall_at_k",
    "rmse",
    "ssim",
    "topk_accuracy",
]


# ---------------------------------------------------------------------------------- reconstruction


def _check_images(pred: np.ndarray, target: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"pred {pred.shape} and target {target.shape} must both be (N, C, H, W) images"
        )
    N, _, H, W = target.shape
    if valid is None:
        return np.ones((N, H, W), bool)
    valid = np.asarray(valid, bool)
    if valid.shape != (N, H, W):
        raise ValueError(f"valid has shape {valid.shape}, expected (N, H, W) = {(N, H, W)}")
    return valid


def _per_band_range(data_range: float | np.ndarray, C: int) -> np.ndarray:
    rng = np.broadcast_to(np.asarray(data_range, np.float64), (C,))
    if not (rng > 0).all():
        raise ValueError(f"data_range must be > 0 for every band, got {rng.tolist()}")
    return rng


def psnr(
    pred: np.ndarray,
    target: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    data_range: float | np.ndarray,
) -> np.ndarray:
    """Peak signal-to-noise ratio of each image and band, over its valid pixels.

    ``PSNR = 10 log10(data_range² / MSE)``, the MSE over the pixels where ``valid`` is True.

    Args:
        pred: (N, C, H, W) predictions.
        target: (N, C, H, W) truth, same units.
        valid: (N, H, W) bool, the pixels that count; None: all.
        data_range: the band's value range (max - min), a scalar or one per band (C,).

    Returns:
        (N, C) float64 dB; NaN for an image with no valid pixel, +inf for an exact match.
    """
    valid = _check_images(pred, target, valid)
    C = target.shape[1]
    rng = _per_band_range(data_range, C)
    err = (np.asarray(pred, np.float64) - np.asarray(target, np.float64)) ** 2  # (N, C, H, W)
    n = valid.sum(axis=(1, 2)).astype(np.float64)[:, None]  # (N, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mse = (err * valid[:, None]).sum(axis=(2, 3)) / n  # (N, C)
        return 10.0 * np.log10(rng[None] ** 2 / mse)


def ssim(
    pred: np.ndarray,
    target: np.ndarray,
    valid: np.ndarray | None = None,
    *,
    data_range: float | np.ndarray,
    where: np.ndarray | None = None,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> np.ndarray:
    """Structural similarity of each image and band, averaged over fully valid windows.

    Wang et al. (2004) with scikit-image's defaults: a ``win_size`` square uniform window, sample
    (co)variances, ``C1 = (k1 L)²``, ``C2 = (k2 L)²``. The SSIM map is averaged over the window
    centres whose whole window lies on valid pixels (so nodata and cloud never enter a window)
    and, with ``where``, whose centre is in ``where`` (e.g. the removed patches of an MAE).

    Args:
        pred: (N, C, H, W) predictions.
        target: (N, C, H, W) truth.
        valid: (N, H, W) bool; None: all valid.
        data_range: value range ``L``, scalar or (C,).
        where: (N, H, W) bool, the centres that count; None: all.
        win_size: odd window side, pixels.
        k1: SSIM constant.
        k2: SSIM constant.

    Returns:
        (N, C) float64; NaN for an image with no counted window.
    """
    valid = _check_images(pred, target, valid)
    if win_size % 2 != 1 or win_size < 3:
        raise ValueError(f"win_size must be odd and >= 3, got {win_size}")
    N, C, H, W = target.shape
    if min(H, W) < win_size:
        raise ValueError(f"images of {H}x{W} px are smaller than the SSIM window {win_size}")
    rng = torch.from_numpy(_per_band_range(data_range, C).copy())[None, :, None, None]
    x = torch.as_tensor(np.asarray(target), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(pred), dtype=torch.float64)

    def filt(a: torch.Tensor) -> torch.Tensor:
        # the window mean at every interior centre: (N, C, H - win + 1, W - win + 1)
        return F.avg_pool2d(a, win_size, stride=1)

    cov = win_size**2 / (win_size**2 - 1)  # sample, not population, (co)variance
    ux, uy = filt(x), filt(y)
    vx = cov * (filt(x * x) - ux * ux)
    vy = cov * (filt(y * y) - uy * uy)
    vxy = cov * (filt(x * y) - ux * uy)
    c1, c2 = (k1 * rng) ** 2, (k2 * rng) ** 2
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))

    # a centre counts when its whole window is valid (and it is in `where`)
    v = torch.as_tensor(valid, dtype=torch.float64)[:, None]  # (N, 1, H, W)
    count = (filt(v) > 1.0 - 1e-9)[:, 0]  # (N, h', w')
    if where is not None:
        r = win_size // 2
        count &= torch.as_tensor(np.asarray(where, bool))[:, r : H - r, r : W - r]
    m = count[:, None].to(torch.float64)  # (N, 1, h', w')
    with np.errstate(invalid="ignore"):
        out = ((smap * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3))).numpy()
    return out


# ------------------------------------------------------------------- classification, segmentation


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores.

    Args:
        scores: (N, K) class scores (probabilities, logits or votes); column j is class j.
        labels: (N,) int class indices in ``[0, K)``.
        k: how many top classes count.

    Returns:
        The accuracy in [0, 1]. Ties at the k-th score count in the true class's favour only if
        it is strictly among the top k by a stable sort on ``-score`` (lower index first).
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"scores {scores.shape} must be (N, K) and labels {labels.shape} (N,)")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k)
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) int64 counts, rows = true class, columns = predicted class; labels < 0 are ignored."""
    y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    keep = (y_true >= 0) & (y_pred >= 0)
    flat = y_true[keep].astype(np.int64) * n_classes + y_pred[keep].astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou(conf: np.ndarray) -> np.ndarray:
    """Per-class intersection over union ``TP / (TP + FP + FN)`` from a confusion matrix.

    Returns:
        (K,) float64; NaN for a class that is neither in the truth nor predicted.
    """
    conf = np.asarray(conf, np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou(conf: np.ndarray) -> float:
    """Mean IoU over the classes present in the truth or the predictions (see :func:`iou`)."""
    return float(np.nanmean(iou(conf)))


# -------------------------------------------------------------------------------------- regression


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Root mean squared error over all values."""
    d = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    return float(np.sqrt(np.mean(d**2)))


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (over all values, flattened)."""
    p = np.asarray(pred, np.float64).ravel()
    t = np.asarray(target, np.float64).ravel()
    ss_tot = float(((t - t.mean()) ** 2).sum())
    if ss_tot == 0:
        raise ValueError("r2 is undefined for a constant target")
    return 1.0 - float(((t - p) ** 2).sum()) / ss_tot


# --------------------------------------------------------------------------------------- retrieval


def _ranked_relevance(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    scores, relevant = np.asarray(scores), np.asarray(relevant, bool)
    if scores.shape != relevant.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} must be (Q, M)")
    order = np.argsort(-scores, axis=1, kind="stable")  # best first
    return np.take_along_axis(relevant, order, axis=1)  # (Q, M) relevance in rank order


def recall_at_k(
    scores: np.ndarray, relevant: np.ndarray, k: int, *, per_query: bool = False
) -> float | np.ndarray:
    """Mean over queries of the fraction of a query's relevant items ranked in its top ``k``.

    Args:
        scores: (Q, M) similarity of each query to each database item (higher = closer).
        relevant: (Q, M) bool, the items that count as a correct answer to the query.
        k: the rank cut-off.
        per_query: return the (Q,) values instead (NaN for a query with no relevant item).

    Returns:
        The mean over the queries that have at least one relevant item (NaN if none has).
    """
    rel = _ranked_relevance(scores, relevant)
    n = rel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(n > 0, rel[:, :k].sum(axis=1) / n, np.nan)
    if per_query:
        return values
    return float(np.nanmean(values)) if (n > 0).any() else float("nan")


def mean_average_precision(
    scores: np.ndarray, relevant: np.ndarray, *, per_query: bool = False
) -> float | np.ndarray:
    """Mean over queries of average precision, ``Σ_k P@k · rel_k / #relevant``.

    Args:
        scores: (Q, M) similarities (higher = closer).
        relevant: (Q, M) bool.
        per_query: return each query's average precision (Q,) instead (NaN for a query with no
            relevant item).

    Returns:
        The mean over the queries with at least one relevant item (NaN if none has).
    """
    rel = _ranked_relevance(scores, relevant).astype(np.float64)
    n = rel.sum(axis=1)
    precision = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)  # P@k, (Q, M)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n > 0, (precision * rel).sum(axis=1) / n, np.nan)
    if per_query:
        return ap
    return float(np.nanmean(ap)) if (n > 0).any() else float("nan")


# ------------------------------------------------------------------------------------- uncertainty


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    clusters: np.ndarray | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` samples.

    With ``clusters``, whole clusters are drawn with replacement (a cluster bootstrap), so samples
    that share a cluster (the same spatial neighbourhood) enter or leave a replicate together.

    Args:
        statistic: maps an index array (with repeats) into the samples to the statistic.
        n: number of samples.
        clusters: (n,) cluster id of each sample; None: every sample is its own cluster.
        n_boot: bootstrap replicates.
        level: coverage of the interval, e.g. 0.95.
        seed: seed of the draws.

    Returns:
        ``(low, high)`` percentiles ``(1 - level) / 2`` and ``(1 + level) / 2`` of the
        replicates (replicates whose statistic is NaN are left out).
    """
    rng = np.random.default_rng(seed)
    if clusters is None:
        groups = [np.array([i]) for i in range(n)]
    else:
        clusters = np.asarray(clusters)
        assert clusters.shape == (n,), (clusters.shape, n)
        _, inverse = np.unique(clusters, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    sizes = np.array([len(g) for g in groups])
    flat = np.concatenate(groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    stats = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        lengths = sizes[pick]
        # the members of every picked cluster, concatenated: a ragged arange per cluster
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        idx = flat[np.repeat(starts[pick], lengths) + np.arange(lengths.sum()) - offsets]
        stats.append(statistic(idx))
    stats = np.asarray(stats, np.float64)
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    return float(np.quantile(stats, a)), float(np.quantile(stats, 1.0 - a))
