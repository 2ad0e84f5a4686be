"""The evaluate stage's figures, drawn from its metrics and arrays (no files here).

Probe scores with intervals, confusion matrices, embedding maps (PCA; t-SNE when scikit-learn is
installed), per-band error maps and PSNR per band: :func:`evaluation_figures` returns them as
matplotlib figures keyed by file name; the stage saves them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from geogfm.evaluation.suite import with_interval
from geogfm.evaluation.visualization import (
    plot_confusion,
    plot_embedding_map,
    plot_error_maps,
    plot_metric_bars,
)

__all__ = ["evaluation_figures"]

_TSNE_POINTS = 600  # t-SNE of at most this many patches (PCA shows them all)


def _band_intervals(p: np.ndarray, clusters: np.ndarray, boot: dict) -> list[tuple]:
    rows = []
    for c in range(p.shape[1]):
        v = p[:, c]
        d = with_interval("x", lambda i, v=v: np.nanmean(v[i]), len(v), clusters, **boot)
        rows.append((d["x"], d["x_low"], d["x_high"]))
    return rows


def _paired(what: str, d: dict, key: str) -> str:
    # a paired difference for a title: "what, paired: +0.012 [-0.010, +0.035]"
    return f"{what}, paired: {d[key]:+.3f} [{d[key + '_low']:+.3f}, {d[key + '_high']:+.3f}]"


def _embedding_coords(
    x: np.ndarray, seed: int, pick: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """PCA of every embedding, and t-SNE of those in ``pick`` when scikit-learn is installed."""
    z = (x - x.mean(0)) / (x.std(0) + 1e-8)
    _, _, vt = np.linalg.svd(z, full_matrices=False)
    pca = z @ vt[:2].T
    try:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits
    except ImportError:
        return pca, None
    perplexity = float(min(30, max(5, (len(pick) - 1) // 4)))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500)
    with threadpool_limits(1):  # threads only contend on a busy machine
        return pca, tsne.fit_transform(z[pick])


def evaluation_figures(
    *,
    metrics: dict,
    extras: dict,
    pooled: dict,
    y: np.ndarray,
    names: Sequence[str],
    colors: Sequence[str],
    patches: dict,
    arrays: dict,
    removed: torch.Tensor,
    bands: Sequence[str],
    clusters: np.ndarray,
    boot: dict,
    knn_k: Sequence[int],
    n_samples: int,
    seed: int,
) -> dict[str, Figure]:
    """The evaluate stage's figures, by file name.

    Args:
        metrics: the stage's metrics (``metrics.json``).
        extras: per encoder, the classification suite's extras (``confusion``).
        pooled: per encoder, (N, D) pooled embeddings of the labelled patches.
        y: (N,) their class indices.
        names: class names.
        colors: class colours.
        patches: the evaluated patches (``image`` reflectance, ``valid``, ``patch_id``,
            ``dates``).
        arrays: per predictor, (reconstruction, per-image PSNR) from :func:`reconstruction_suite`.
        removed: the removed-pixel mask.
        bands: band names.
        clusters: (N_all,) bootstrap cluster of every evaluated patch.
        boot: bootstrap settings.
        knn_k: the kNN neighbour counts.
        n_samples: patches in the error-map figure.
        seed: seed of the t-SNE and its subsample.

    Returns:
        ``{"probe_scores.png": Figure, ...}``.
    """
    figs: dict[str, Figure] = {}
    level = f"{boot['level']:.0%}"
    encoders = {"pretrained": "pretrained encoder", "random_init": "random-init encoder"}
    probes = [("linear_probe", "accuracy", "linear probe")]
    probes += [(f"knn{k}", "accuracy", f"kNN k={k}") for k in knn_k]
    probes += [("retrieval", "map", "retrieval mAP"), ("segmentation", "miou", "segm. mIoU")]
    series = {
        label: [
            (metrics[enc][p][m], metrics[enc][p][f"{m}_low"], metrics[enc][p][f"{m}_high"])
            for p, m, _ in probes
        ]
        for enc, label in encoders.items()
    }
    d = metrics["pretrained_minus_random_init"]
    figs["probe_scores.png"] = plot_metric_bars(
        [t for _, _, t in probes],
        series,
        ylabel="score (accuracy, mAP or mIoU; 0-1)",
        title=f"Frozen embeddings of held-out blocks: pretrained vs random init "
        f"({level} cluster-bootstrap intervals)\n"
        + _paired("linear probe, pretrained - random init", d["linear_probe"], "accuracy"),
        reference=("majority-class accuracy", metrics["majority_class"]["accuracy"]),
    )
    present = [k for k in range(len(names)) if (y == k).any()]
    confs = {
        f"{label}: accuracy {metrics[enc]['linear_probe']['accuracy']:.3f}": np.asarray(
            extras[enc]["confusion"]
        )[np.ix_(present, present)]
        for enc, label in encoders.items()
    }
    figs["confusion_matrix.png"] = plot_confusion(
        confs,
        [names[k] for k in present],
        title="Linear probe on held-out patches (majority land-cover class), out-of-fold",
    )
    coords, axis_names, members = {}, {}, {}
    n_y = len(y)
    sub = np.random.default_rng(seed).choice(n_y, min(n_y, _TSNE_POINTS), replace=False)
    sub = np.sort(sub)
    for enc, label in encoders.items():
        pca, tsne = _embedding_coords(pooled[enc], seed, sub)
        coords[f"PCA, {label}"], members[f"PCA, {label}"] = pca, np.arange(n_y)
        axis_names[f"PCA, {label}"] = ("principal component 1", "principal component 2")
        if tsne is not None:
            name = f"t-SNE ({len(sub)} patches), {label}"
            coords[name], members[name], axis_names[name] = tsne, sub, ("t-SNE 1", "t-SNE 2")
    order = sorted(coords, key=lambda k: (not k.startswith("PCA"), k))
    figs["embedding_map.png"] = plot_embedding_map(
        {k: coords[k] for k in order},
        {k: y[members[k]] for k in order},
        names,
        colors,
        title="Pooled embeddings of held-out patches, coloured by land-cover class",
        axis_names=axis_names,
    )
    # error maps of a few patches, spread over the set
    r_mae = arrays["mae"][0]
    N = len(patches["patch_id"])
    T = r_mae.shape[0] // N
    pick = np.linspace(0, N - 1, min(n_samples, N)).round().astype(int)
    refl = patches["image"].numpy()
    shape = refl.shape
    recon = r_mae.reshape(shape)
    rem, val = removed.numpy(), patches["valid"].numpy()
    figs["error_maps.png"] = plot_error_maps(
        refl[pick],
        recon[pick],
        rem[pick],
        val[pick],
        band_names=bands,
        titles=[patches["patch_id"][i].replace("_t", "\nt", 1) for i in pick],
        dates=[patches["dates"][i] for i in pick] if T > 1 else None,
    )
    cl = np.repeat(clusters, T)
    labels = {"mae": "MAE", "patch_mean": "patch per-band mean", "token_mean": "token mean"}
    psnr_series = {}
    for key, label in labels.items():
        p = arrays[key][1]
        overall = metrics["reconstruction"][key]
        psnr_series[label] = _band_intervals(p, cl, boot) + [
            (overall["psnr"], overall["psnr_low"], overall["psnr_high"])
        ]
    figs["reconstruction_psnr.png"] = plot_metric_bars(
        [*bands, "all bands"],
        psnr_series,
        ylabel="PSNR on removed valid pixels (dB)",
        title=f"Reconstruction of held-out patches: MAE vs predictors without a model "
        f"({level} cluster-bootstrap intervals)\n"
        + _paired("MAE - patch mean", metrics["reconstruction"]["mae_minus_patch_mean"], "psnr")
        + " dB",
    )
    return figs
