"""Linear probes on frozen embeddings, cross-fitted over spatial folds.

A linear probe is a logistic regression (scikit-learn, L2, features standardised on the training
part) on frozen pooled embeddings; its regularisation ``C`` is picked from a grid by accuracy on
a validation split held out of the training part. The segmentation probe is the same classifier
applied to every patch token (each token labelled with the majority class of its pixels); its
token probabilities are upsampled bilinearly to pixels.

Spatial honesty: samples carry a group (the manifest's spatial block) and a footprint. Groups are
dealt into folds (:func:`spatial_folds`); for each fold, the probe is trained on the other folds
*minus every sample whose footprint comes within ``radius`` of a sample of the held-out fold*
(:func:`honest_train_mask`), so no training window shares, or nearly shares, pixels with a test
window. The validation split that picks ``C`` is made the same way inside the training part. Every
sample is predicted once, by the probe that did not see its fold (cross-fitting).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from geogfm.data.splits import near_pairs

__all__ = [
    "ProbeResult",
    "cross_fit_linear_probe",
    "cross_fit_segmentation_probe",
    "fit_logistic",
    "honest_train_mask",
    "spatial_folds",
]

log = logging.getLogger(__name__)


def spatial_folds(groups: np.ndarray, n_folds: int, *, seed: int = 0) -> np.ndarray:
    """Deal whole groups into ``n_folds`` folds of about equal sample counts.

    Groups are shuffled with ``seed``, then taken largest first, each into the fold that has the
    fewest samples so far.

    Args:
        groups: (N,) group id of each sample (e.g. the spatial block).
        n_folds: folds wanted; at most the number of groups.
        seed: seed of the shuffle that orders groups of equal size.

    Returns:
        (N,) int fold of each sample, in ``[0, n_folds)``.
    """
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if not 2 <= n_folds <= len(names):
        raise ValueError(f"need 2 <= n_folds <= {len(names)} groups, got n_folds={n_folds}")
    order = np.random.default_rng(seed).permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]
    fold_of_group, load = np.zeros(len(names), np.int64), np.zeros(n_folds, np.int64)
    for g in order:
        f = int(np.argmin(load))
        fold_of_group[g], load[f] = f, load[f] + counts[g]
    return fold_of_group[inverse]


def honest_train_mask(
    folds: np.ndarray, test_fold: int, bounds: np.ndarray | None, radius: float
) -> np.ndarray:
    """Samples that may train a probe tested on ``test_fold``.

    Args:
        folds: (N,) fold of each sample.
        test_fold: the held-out fold.
        bounds: (N, 4) footprints ``(minx, miny, maxx, maxy)`` in one CRS; None: no buffer.
        radius: samples of other folds closer than this (CRS units) to a test sample are left
            out; 0 leaves out only overlapping ones.

    Returns:
        (N,) bool.
    """
    train = folds != test_fold
    if bounds is None:
        return train
    # distinct footprints only: the tokens of a patch, or the dates of a window, share one
    cand_boxes, cand_of = np.unique(bounds[train], axis=0, return_inverse=True)
    test_boxes = np.unique(bounds[~train], axis=0)
    ia, _, _ = near_pairs(cand_boxes, test_boxes, max(radius, 1e-6))
    near = np.zeros(len(cand_boxes), bool)
    near[ia] = True
    train[np.flatnonzero(train)[near[cand_of.ravel()]]] = False
    return train


def _proba(model, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(M, K) probabilities in global class columns (a fit may have seen fewer classes)."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


class _Constant:
    """The probe of a training part with a single class: predicts it with probability 1."""

    def __init__(self, label: int):
        self.classes_ = np.array([label])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.ones((len(x), 1))


class _Standardised:
    """A fitted classifier behind the standardisation of its training features."""

    def __init__(self, scaler: StandardScaler, clf):
        self.scaler, self.clf, self.classes_ = scaler, clf, clf.classes_

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.clf.predict_proba(self.scaler.transform(x))


class _Logistic(LogisticRegression):
    """L-BFGS logistic regression, warm-started, stopped at 200 iterations, on one thread, quietly.

    ``warm_start``: refitting at the next ``C`` starts from this solution, so the whole ``C`` path
    costs a few fits. One BLAS/OpenMP thread: these small problems run 10-20x slower when threads
    contend for the cores of a busy machine. The iteration cap (tol 1e-3) keeps the probe fast; a
    probe's accuracy does not move once the loss is that flat, so the ConvergenceWarning is
    silenced.
    """

    def fit(self, x, y):  # noqa: D102
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            return super().fit(x, y)


def _logistic(C: float, seed: int) -> LogisticRegression:
    return _Logistic(C=C, max_iter=200, tol=1e-3, warm_start=True, random_state=seed)


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    *,
    groups: np.ndarray,
    bounds: np.ndarray | None,
    radius: float,
    Cs: Sequence[float],
    n_classes: int,
    seed: int = 0,
):
    """Fit a standardised logistic regression, ``C`` picked on a spatial validation split.

    A third of the training samples' groups (one of :func:`spatial_folds`' three folds) is held
    out as the validation split, with the buffer (:func:`honest_train_mask`); each ``C`` of the
    grid, from the strongest regularisation up, is fitted on the rest (warm-started from the
    previous ``C``) and scored by validation accuracy; the best wins (ties: the smaller ``C``).
    The probe is then refitted on every training sample with it. Features are standardised with
    the training part's mean and std.

    Args:
        x: (N, D) features.
        y: (N,) int class indices.
        groups: (N,) spatial group of each sample.
        bounds: (N, 4) footprints, or None.
        radius: buffer, CRS units (see :func:`honest_train_mask`).
        Cs: the grid of inverse regularisation strengths.
        n_classes: K.
        seed: solver seed.

    Returns:
        ``(model, C)``: the fitted model (``predict_proba``, ``classes_``) and the chosen ``C``.
    """
    Cs = sorted(float(c) for c in Cs)
    best_C = Cs[len(Cs) // 2]
    n_groups = len(np.unique(groups))
    if n_groups >= 2 and len(Cs) > 1:
        inner = spatial_folds(groups, min(3, n_groups), seed=seed)
        train = honest_train_mask(inner, 0, bounds, radius)
        val = inner == 0
        if train.any() and len(np.unique(y[train])) >= 2:
            scaler = StandardScaler().fit(x[train])
            xt, xv = scaler.transform(x[train]), scaler.transform(x[val])
            clf, best = _logistic(Cs[0], seed), -1.0
            for C in Cs:
                clf.set_params(C=C)
                clf.fit(xt, y[train])
                acc = float((_proba(clf, xv, n_classes).argmax(1) == y[val]).mean())
                if acc > best + 1e-12:
                    best, best_C = acc, C
    if len(np.unique(y)) < 2:
        return _Constant(int(y[0])), best_C
    scaler = StandardScaler().fit(x)
    return _Standardised(scaler, _logistic(best_C, seed).fit(scaler.transform(x), y)), best_C


@dataclass
class ProbeResult:
    """Out-of-fold predictions of a cross-fitted probe."""

    scores: np.ndarray  #: (N, K) class probabilities, each from the probe that did not see it
    chosen_C: list[float]  #: the ``C`` picked for each fold
    n_train: list[int]  #: training samples of each fold (after the buffer)


def cross_fit_linear_probe(
    x: np.ndarray,
    y: np.ndarray,
    *,
    folds: np.ndarray,
    groups: np.ndarray,
    bounds: np.ndarray | None,
    radius: float,
    Cs: Sequence[float],
    n_classes: int,
    seed: int = 0,
) -> ProbeResult:
    """Linear probe, cross-fitted over spatial folds: every sample predicted out of fold.

    Args:
        x: (N, D) frozen embeddings.
        y: (N,) int class indices in ``[0, n_classes)``.
        folds: (N,) fold of each sample (:func:`spatial_folds`).
        groups: (N,) spatial group (for the inner validation split).
        bounds: (N, 4) footprints, or None.
        radius: buffer between training and test footprints, CRS units.
        Cs: regularisation grid.
        n_classes: K.
        seed: solver seed.

    Returns:
        The out-of-fold :class:`ProbeResult`.
    """
    scores = np.zeros((len(x), n_classes))
    chosen, n_train = [], []
    for f in np.unique(folds):
        train = honest_train_mask(folds, int(f), bounds, radius)
        test = folds == f
        if not train.any():
            raise ValueError(f"fold {f}: every other sample is within the buffer of the fold")
        tb = None if bounds is None else bounds[train]
        model, C = fit_logistic(
            x[train],
            y[train],
            groups=groups[train],
            bounds=tb,
            radius=radius,
            Cs=Cs,
            n_classes=n_classes,
            seed=seed,
        )
        scores[test] = _proba(model, x[test], n_classes)
        chosen.append(C)
        n_train.append(int(train.sum()))
    return ProbeResult(scores, chosen, n_train)


def cross_fit_segmentation_probe(
    tokens: np.ndarray,
    token_labels: np.ndarray,
    *,
    image_size: tuple[int, int],
    folds: np.ndarray,
    groups: np.ndarray,
    bounds: np.ndarray | None,
    radius: float,
    Cs: Sequence[float],
    n_classes: int,
    max_train_tokens: int = 8000,
    seed: int = 0,
) -> np.ndarray:
    """Per-token linear segmentation probe, cross-fitted; returns per-pixel predictions.

    For each fold, a logistic regression is fitted on (up to ``max_train_tokens``, drawn with
    ``seed``) labelled tokens of the honest training patches, ``C`` picked as in
    :func:`fit_logistic` with patches' groups; the held-out patches' token probabilities
    (h, w, K) are upsampled bilinearly to ``image_size`` pixels and the argmax is the prediction.

    Args:
        tokens: (N, h, w, D) patch-token features.
        token_labels: (N, h, w) int class of each token, -1 for none.
        image_size: (H, W) pixels of a patch.
        folds: (N,) fold of each patch.
        groups: (N,) spatial group of each patch.
        bounds: (N, 4) patch footprints, or None.
        radius: buffer, CRS units.
        Cs: regularisation grid.
        n_classes: K.
        max_train_tokens: training tokens per fit, at most.
        seed: seed of the token draw and of the solver.

    Returns:
        (N, H, W) int64 predicted class of each pixel.
    """
    N, h, w, D = tokens.shape
    rng = np.random.default_rng(seed)
    out = np.zeros((N, *image_size), np.int64)
    for f in np.unique(folds):
        train = np.flatnonzero(honest_train_mask(folds, int(f), bounds, radius))
        test = np.flatnonzero(folds == f)
        # labelled tokens of the training patches, with the patch they come from
        patch, ti, tj = np.nonzero(token_labels[train] >= 0)
        if len(patch) > max_train_tokens:
            keep = np.sort(rng.choice(len(patch), max_train_tokens, replace=False))
            patch, ti, tj = patch[keep], ti[keep], tj[keep]
        src = train[patch]
        x, y = tokens[src, ti, tj], token_labels[src, ti, tj]
        model, _ = fit_logistic(
            x,
            y,
            groups=groups[src],
            bounds=None if bounds is None else bounds[src],
            radius=radius,
            Cs=Cs,
            n_classes=n_classes,
            seed=seed,
        )
        p = _proba(model, tokens[test].reshape(-1, D), n_classes).reshape(len(test), h, w, -1)
        p = torch.from_numpy(p).permute(0, 3, 1, 2)  # (n, K, h, w)
        up = F.interpolate(p, size=image_size, mode="bilinear", align_corners=False)
        out[test] = up.argmax(1).numpy()
    return out
