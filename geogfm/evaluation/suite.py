"""The evaluation suite of one frozen encoder: probes, kNN and retrieval, each with an interval.

Given embeddings and labels of samples laid out in space (:class:`SpatialLayout`: spatial group,
fold, footprint, buffer and bootstrap cluster of each sample), :func:`classification_suite` runs

- the linear probe (:func:`~geogfm.evaluation.probes.cross_fit_linear_probe`): top-1 and top-3
  accuracy and balanced accuracy;
- kNN classification at each ``k`` (cosine,
  :func:`~geogfm.evaluation.nearest_neighbors.knn_classify`);
- retrieval (queries: a fold; database: its honest training part; relevant: same label):
  mAP and recall@k;

and :func:`segmentation_suite` the per-token segmentation probe (pixel accuracy and mIoU);
:func:`reconstruction_suite` scores the MAE's reconstructions against two baselines. Every
number comes with a cluster-bootstrap interval (:func:`~geogfm.evaluation.metrics.bootstrap_ci`).
The same functions run on the demo's land cover (``evaluate`` stage) and, in the tests, on real
labelled Sentinel-2 (eo-learn Slovenia, BigEarthNet).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from geogfm.evaluation.embeddings import patch_mean_baseline, reconstruct
from geogfm.evaluation.metrics import (
    bootstrap_ci,
    confusion_matrix,
    iou,
    mean_average_precision,
    miou,
    psnr,
    recall_at_k,
    ssim,
    topk_accuracy,
)
from geogfm.evaluation.nearest_neighbors import cosine_similarity, knn_classify
from geogfm.evaluation.probes import (
    cross_fit_linear_probe,
    cross_fit_segmentation_probe,
    honest_train_mask,
)

__all__ = [
    "SpatialLayout",
    "classification_suite",
    "majority_baseline",
    "paired_difference",
    "reconstruction_suite",
    "segmentation_suite",
    "with_interval",
]


@dataclass
class SpatialLayout:
    """Where the evaluation samples are, for honest splits and honest intervals."""

    groups: np.ndarray  #: (N,) spatial group (block) of each sample
    folds: np.ndarray  #: (N,) probe fold of each sample (whole groups per fold)
    bounds: np.ndarray | None  #: (N, 4) footprints in one CRS, or None (no buffer)
    radius: float  #: training samples closer than this to a test sample are left out
    clusters: np.ndarray  #: (N,) bootstrap cluster (spatial neighbourhood) of each sample

    def subset(self, keep: np.ndarray) -> SpatialLayout:
        """The layout of the samples ``keep`` (bool or indices)."""
        b = None if self.bounds is None else self.bounds[keep]
        return SpatialLayout(
            self.groups[keep], self.folds[keep], b, self.radius, self.clusters[keep]
        )


def with_interval(
    name: str,
    statistic: Callable[[np.ndarray], float],
    n: int,
    clusters: np.ndarray,
    *,
    n_boot: int,
    level: float,
    seed: int,
) -> dict[str, float]:
    """``{name: statistic(all), name_low: ..., name_high: ...}`` with a cluster bootstrap."""
    lo, hi = bootstrap_ci(statistic, n, clusters=clusters, n_boot=n_boot, level=level, seed=seed)
    return {name: float(statistic(np.arange(n))), f"{name}_low": lo, f"{name}_high": hi}


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    clusters: np.ndarray,
    *,
    name: str,
    n_boot: int,
    level: float,
    seed: int,
) -> dict[str, float]:
    """Mean of ``a - b`` (NaN left out) with a cluster-bootstrap interval: a paired comparison.

    ``a`` and ``b`` are two predictors' scores of the same samples (per-sample correctness, or
    per-image PSNR). Each bootstrap replicate draws the same clusters for both, so the interval is
    that of the difference itself: narrower than the two marginal intervals suggest whenever
    the predictors are right and wrong on the same samples, and it excludes 0 exactly when
    one beats the other at ``level``.
    """
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return with_interval(
        name, lambda i: np.nanmean(d[i]), len(d), clusters, n_boot=n_boot, level=level, seed=seed
    )


def _accuracy_block(
    scores: np.ndarray, y: np.ndarray, clusters: np.ndarray, boot: dict
) -> dict[str, float]:
    correct = scores.argmax(1) == y
    out = with_interval("accuracy", lambda i: correct[i].mean(), len(y), clusters, **boot)
    if scores.shape[1] > 3:
        out["top3_accuracy"] = topk_accuracy(scores, y, 3)
    recall = [correct[y == c].mean() for c in np.unique(y)]
    out["balanced_accuracy"] = float(np.mean(recall))
    return out


def majority_baseline(y: np.ndarray, layout: SpatialLayout, *, n_classes: int, boot: dict) -> dict:
    """Accuracy of predicting, per fold, the most frequent class of its training part."""
    scores = np.zeros((len(y), n_classes))
    for f in np.unique(layout.folds):
        train = honest_train_mask(layout.folds, int(f), layout.bounds, layout.radius)
        major = np.bincount(y[train], minlength=n_classes).argmax()
        scores[layout.folds == f, major] = 1.0
    return _accuracy_block(scores, y, layout.clusters, boot)


def classification_suite(
    x: np.ndarray,
    y: np.ndarray,
    layout: SpatialLayout,
    *,
    n_classes: int,
    Cs: Sequence[float],
    knn_k: Sequence[int] = (5, 20),
    recall_ks: Sequence[int] = (1, 5, 10),
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[dict, dict]:
    """Linear probe, kNN and retrieval of one encoder's pooled embeddings.

    Args:
        x: (N, D) pooled embeddings.
        y: (N,) int class indices.
        layout: the samples' spatial layout.
        n_classes: K.
        Cs: logistic-regression C grid.
        knn_k: neighbour counts.
        recall_ks: retrieval cut-offs.
        n_boot: bootstrap replicates.
        level: interval coverage.
        seed: seed of the solver and the bootstrap.

    Returns:
        ``(metrics, extras)``: metrics is ``{"linear_probe": {...}, "knn5": {...}, ...,
        "retrieval": {...}}`` of floats; extras holds the linear probe's out-of-fold ``scores``
        (N, K), its ``confusion`` (K, K) and ``chosen_C``.
    """
    boot = {"n_boot": n_boot, "level": level, "seed": seed}
    probe = cross_fit_linear_probe(
        x,
        y,
        folds=layout.folds,
        groups=layout.groups,
        bounds=layout.bounds,
        radius=layout.radius,
        Cs=Cs,
        n_classes=n_classes,
        seed=seed,
    )
    metrics = {"linear_probe": _accuracy_block(probe.scores, y, layout.clusters, boot)}

    knn_scores = {k: np.zeros((len(y), n_classes)) for k in knn_k}
    ap = np.full(len(y), np.nan)
    rec = {k: np.full(len(y), np.nan) for k in recall_ks}
    for f in np.unique(layout.folds):
        train = honest_train_mask(layout.folds, int(f), layout.bounds, layout.radius)
        test = layout.folds == f
        for k in knn_k:
            knn_scores[k][test] = knn_classify(
                x[train], y[train], x[test], k=k, n_classes=n_classes
            )
        sim = cosine_similarity(x[test], x[train])
        relevant = y[test][:, None] == y[train][None, :]
        ap[test] = mean_average_precision(sim, relevant, per_query=True)
        for k in recall_ks:
            rec[k][test] = recall_at_k(sim, relevant, k, per_query=True)
    for k in knn_k:
        metrics[f"knn{k}"] = _accuracy_block(knn_scores[k], y, layout.clusters, boot)

    retrieval = with_interval("map", lambda i: np.nanmean(ap[i]), len(y), layout.clusters, **boot)
    for k in recall_ks:
        retrieval[f"recall@{k}"] = float(np.nanmean(rec[k]))
    metrics["retrieval"] = retrieval
    extras = {
        "scores": probe.scores,
        "confusion": confusion_matrix(y, probe.scores.argmax(1), n_classes),
        "chosen_C": probe.chosen_C,
    }
    return metrics, extras


def segmentation_suite(
    tokens: np.ndarray,
    token_labels: np.ndarray,
    pixel_labels: np.ndarray,
    layout: SpatialLayout,
    *,
    n_classes: int,
    Cs: Sequence[float],
    max_train_tokens: int = 8000,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[dict, dict]:
    """Per-token linear segmentation probe, scored per pixel.

    Args:
        tokens: (N, h, w, D) patch tokens.
        token_labels: (N, h, w) int class index per token, -1 for none.
        pixel_labels: (N, H, W) int class index per pixel, -1 where the pixel does not count.
        layout: the patches' spatial layout.
        n_classes: K.
        Cs: C grid.
        max_train_tokens: training tokens per fit.
        n_boot: bootstrap replicates.
        level: interval coverage.
        seed: seed.

    Returns:
        ``(metrics, extras)``: ``{"pixel_accuracy", "miou", ... with _low/_high}`` and
        ``{"pred": (N, H, W), "confusion": (K, K), "iou": (K,)}``.
    """
    boot = {"n_boot": n_boot, "level": level, "seed": seed}
    pred = cross_fit_segmentation_probe(
        tokens,
        token_labels,
        image_size=pixel_labels.shape[1:],
        folds=layout.folds,
        groups=layout.groups,
        bounds=layout.bounds,
        radius=layout.radius,
        Cs=Cs,
        n_classes=n_classes,
        max_train_tokens=max_train_tokens,
        seed=seed,
    )
    # one confusion matrix per patch, so a bootstrap replicate is a sum of them
    per = np.stack(
        [confusion_matrix(t, p, n_classes) for t, p in zip(pixel_labels, pred, strict=True)]
    )

    def acc(i: np.ndarray) -> float:
        c = per[i].sum(0)
        return float(np.trace(c) / max(c.sum(), 1))

    def miou_of(i: np.ndarray) -> float:
        return miou(per[i].sum(0))

    n, cl = len(pred), layout.clusters
    metrics = {
        **with_interval("pixel_accuracy", acc, n, cl, **boot),
        **with_interval("miou", miou_of, n, cl, **boot),
    }
    conf = per.sum(0)
    return metrics, {"pred": pred, "confusion": conf, "iou": iou(conf)}


def reconstruction_suite(
    model,
    images: torch.Tensor,
    valid: torch.Tensor,
    refl: torch.Tensor,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    data_range: np.ndarray,
    bands: Sequence[str],
    clusters: np.ndarray,
    seed: int,
    batch_size: int,
    boot: dict,
) -> tuple[dict, dict, torch.Tensor]:
    """PSNR and SSIM of the MAE and of the two baselines, per band and overall, with intervals.

    Removed patches are scored on their valid pixels, in reflectance: PSNR with each band's
    ``data_range``; SSIM of the reconstruction with the visible patches pasted back, over windows
    wholly on valid pixels centred on removed ones. Predictors: ``mae``, ``patch_mean`` and
    ``token_mean`` (see :mod:`geogfm.evaluation.embeddings`).

    Args:
        model: the masked autoencoder.
        images: (N, [T,] C, H, W) normalised.
        valid: (N, [T,] H, W) bool.
        refl: the images in reflectance.
        mean: (C, 1, 1) per-band mean of the normalisation.
        std: (C, 1, 1) per-band std.
        data_range: (C,) PSNR/SSIM range per band.
        bands: the C band names.
        clusters: (N,) bootstrap cluster of each image.
        seed: seed of the masks.
        batch_size: images per forward pass.
        boot: ``n_boot``, ``level``, ``seed`` of the intervals.

    Returns:
        ``(metrics, arrays, removed)``: metrics per predictor (``psnr``, ``psnr_low``, ...,
        ``psnr_<band>``, ``ssim...``), the paired ``mae_minus_patch_mean`` (``psnr``, ``ssim``
        and their intervals: per image, MAE minus patch mean), ``mask_ratio`` and ``n_images``;
        per predictor its reflectance reconstruction (N*T, C, H, W) and per-image PSNR (N*T, C);
        the removed mask.
    """
    out = reconstruct(model, images, valid, seed=seed, batch_size=batch_size)
    removed = out["removed"]
    preds = {
        "mae": out["recon"],
        "patch_mean": patch_mean_baseline(images, valid, removed),
        "token_mean": out["token_mean"],
    }
    truth = refl.flatten(0, -4).numpy()  # (N*T, C, H, W) reflectance
    where = (removed & valid).flatten(0, -3).numpy()  # (N*T, H, W)
    vis = valid.flatten(0, -3).numpy()
    T = truth.shape[0] // len(images)
    cl = np.repeat(clusters, T)
    report, arrays, per = {}, {}, {}
    for name, pred in preds.items():
        r = (pred * std + mean).flatten(0, -4).numpy()  # reflectance
        pasted = np.where(where[:, None], r, truth)
        p = psnr(r, truth, where, data_range=data_range)  # (n, C)
        s = ssim(pasted, truth, vis, data_range=data_range, where=where)  # (n, C)
        entry = {}
        for key, v in (("psnr", p), ("ssim", s)):
            ok = np.isfinite(v)  # an image with no removed valid pixel has none
            per_image = np.where(ok, v, 0.0).sum(1) / np.where(ok.any(1), ok.sum(1), np.nan)
            entry.update(
                with_interval(key, lambda i, a=per_image: np.nanmean(a[i]), len(v), cl, **boot)
            )
            per[name, key] = per_image
            for c, band in enumerate(bands):
                entry[f"{key}_{band}"] = float(np.nanmean(v[:, c]))
        report[name] = entry
        arrays[name] = (r, p)
    # the MAE against the patch-mean predictor on the same images, paired
    report["mae_minus_patch_mean"] = {
        k: v
        for key in ("psnr", "ssim")
        for k, v in paired_difference(
            per["mae", key], per["patch_mean", key], cl, name=key, **boot
        ).items()
    }
    report["mask_ratio"] = float(model.mask_ratio)
    report["n_images"] = int(truth.shape[0])
    return report, arrays, removed
