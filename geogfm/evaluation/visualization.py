"""Figures: MAE reconstructions, per-band error maps, training curves, probe results, embeddings.

Inputs are plain arrays in reflectance units, so the functions know nothing of models or files:
``(N, C, H, W)`` images, ``(N, H, W)`` validity masks, ``(N, H, W)`` removed-pixel masks; with
multi-date input, ``(N, T, C, H, W)`` and ``(N, T, H, W)``, drawn one row per sample and date
(:func:`date_rows`). Every panel has a title or axis labels, every colour scale a labelled
colour bar or a legend.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "date_rows",
    "plot_confusion",
    "plot_embedding_map",
    "plot_error_maps",
    "plot_loss_curves",
    "plot_metric_bars",
    "plot_reconstructions",
    "rgb_composite",
]

_INVALID_RGB = (0.85, 0.0, 0.85)  # magenta: nodata or cloud, never a real surface colour
_REMOVED_RGB = (0.5, 0.5, 0.5)


def rgb_composite(
    image: np.ndarray, lo: Sequence[float], hi: Sequence[float], valid: np.ndarray | None = None
) -> np.ndarray:
    """Stretch three bands ``(3, H, W)`` linearly from ``lo`` to ``hi`` into an ``(H, W, 3)`` RGB.

    Args:
        image: red, green and blue reflectance, ``(3, H, W)``.
        lo: per-band values mapped to 0 (e.g. the 2nd percentile of the training pixels).
        hi: per-band values mapped to 1 (e.g. the 98th percentile).
        valid: ``(H, W)`` bool; invalid pixels are painted magenta.
    """
    lo_arr = np.asarray(lo, dtype=np.float64)[:, None, None]
    hi_arr = np.asarray(hi, dtype=np.float64)[:, None, None]
    rgb = np.clip((image - lo_arr) / np.maximum(hi_arr - lo_arr, 1e-6), 0.0, 1.0)
    rgb = np.moveaxis(rgb, 0, -1)  # (H, W, 3)
    if valid is not None:
        rgb = np.where(valid[..., None], rgb, np.asarray(_INVALID_RGB))
    return rgb


def plot_reconstructions(
    images: np.ndarray,
    recons: np.ndarray,
    removed: np.ndarray,
    valid: np.ndarray,
    *,
    rgb_index: Sequence[int],
    lo: Sequence[float],
    hi: Sequence[float],
    titles: Sequence[str],
    mask_ratio: float,
    dates: Sequence[Sequence[str]] | None = None,
) -> Figure:
    """One row per sample: input, masked input, reconstruction, reconstruction with visible pasted.

    Args:
        images: inputs, ``(N, C, H, W)`` reflectance, or ``(N, T, C, H, W)`` multi-date (one
            row per sample and date).
        recons: the model's reconstructions, shaped like ``images``, reflectance.
        removed: ``(N, [T,] H, W)`` bool, True where the patch was masked out.
        valid: ``(N, [T,] H, W)`` bool, False for nodata and cloud.
        rgb_index: indices of the red, green and blue bands in ``C``.
        lo: stretch minimum per RGB band.
        hi: stretch maximum per RGB band.
        titles: a label per sample (patch id).
        mask_ratio: the fraction of patches removed, for the column title.
        dates: multi-date only: the T dates of each sample, for the row labels.
    """
    images, recons, removed, valid, titles = date_rows(
        images, recons, removed, valid, titles=titles, dates=dates
    )
    n = len(images)
    columns = [
        "input (RGB)",
        f"masked input ({mask_ratio:.0%} removed)",
        "reconstruction",
        "reconstruction + visible",
    ]
    fig, axes = plt.subplots(n, 4, figsize=(12, 3.1 * n + 0.6), squeeze=False)
    idx = list(rgb_index)
    for i in range(n):
        x, r, m, v = images[i][idx], recons[i][idx], removed[i], valid[i]
        pasted = np.where(m[None], r, x)
        masked = rgb_composite(x, lo, hi, v)
        masked[m] = _REMOVED_RGB
        # nodata and cloud stay magenta everywhere: there is no truth to compare with there
        panels = [
            rgb_composite(x, lo, hi, v),
            masked,
            rgb_composite(r, lo, hi, v),
            rgb_composite(pasted, lo, hi, v),
        ]
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(columns[j], fontsize=10)
        axes[i, 0].set_ylabel(titles[i], fontsize=7)
    fig.suptitle(
        "MAE reconstructions of held-out patches (true colour, 2-98 % stretch of training "
        "reflectance; magenta = nodata/cloud, grey = removed)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def date_rows(
    *arrays: np.ndarray, titles: Sequence[str], dates: Sequence[Sequence[str]] | None = None
) -> tuple:
    """Multi-date arrays ``(N, T, ...)`` as rows ``(N * T, ...)``, titles ``"<title>  <date>"``.

    Args:
        *arrays: images ``(N, [T,] C, H, W)`` first, then masks ``(N, [T,] H, W)`` etc.
        titles: a label per sample.
        dates: the T dates of each sample (default ``"date 0"``, ``"date 1"``, ...).

    Returns:
        The arrays (unchanged for single-date input, where ``images.ndim == 4``), then titles.
    """
    if arrays[0].ndim == 4:
        return (*arrays, list(titles))
    N, T = arrays[0].shape[:2]
    if dates is None:
        dates = [[f"date {t}" for t in range(T)] for _ in range(N)]
    rows = [a.reshape(N * T, *a.shape[2:]) for a in arrays]
    labels = [f"{titles[i]}\n{dates[i][t]}" for i in range(N) for t in range(T)]
    return (*rows, labels)


def plot_error_maps(
    images: np.ndarray,
    recons: np.ndarray,
    removed: np.ndarray,
    valid: np.ndarray,
    *,
    band_names: Sequence[str],
    titles: Sequence[str],
    dates: Sequence[Sequence[str]] | None = None,
    units: str = "reflectance",
) -> Figure:
    """Absolute reconstruction error per band on the removed, valid pixels.

    One row per sample (and date), one column per band; pixels that were visible to the encoder,
    nodata or cloud are left blank (white). One colour scale for every panel (0 to the 99th
    percentile of the errors), with its colour bar in ``units``.

    Args:
        images: ``(N, [T,] C, H, W)`` inputs.
        recons: reconstructions, shaped like ``images``.
        removed: ``(N, [T,] H, W)`` bool.
        valid: ``(N, [T,] H, W)`` bool.
        band_names: the C band names, column titles.
        titles: a label per sample.
        dates: multi-date only: the dates of each sample.
        units: unit of the images, for the colour bar.
    """
    images, recons, removed, valid, titles = date_rows(
        images, recons, removed, valid, titles=titles, dates=dates
    )
    n, C = images.shape[:2]
    err = np.abs(recons - images)  # (n, C, H, W)
    shown = (removed & valid)[:, None] & np.ones(C, bool)[None, :, None, None]
    vmax = float(np.quantile(err[shown], 0.99)) if shown.any() else 1.0
    fig, axes = plt.subplots(
        n, C, figsize=(1.5 * C + 1.2, 1.55 * n + 1.0), squeeze=False, constrained_layout=True
    )
    cmap = plt.get_cmap("magma").with_extremes(bad="white")
    im = None
    for i in range(n):
        for c in range(C):
            ax = axes[i, c]
            panel = np.where(shown[i, c], err[i, c], np.nan)
            im = ax.imshow(panel, cmap=cmap, vmin=0.0, vmax=max(vmax, 1e-6))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(band_names[c], fontsize=9)
        axes[i, 0].set_ylabel(titles[i], fontsize=6)
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"|reconstruction - input| ({units})")
    fig.suptitle(
        "MAE per-band absolute error on removed patches of held-out images "
        "(white: visible to the encoder, nodata or cloud)",
        fontsize=10,
    )
    return fig


def plot_metric_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[tuple[float, float, float]]],
    *,
    ylabel: str,
    title: str,
    reference: tuple[str, float] | None = None,
) -> Figure:
    """Grouped bars with interval whiskers, e.g. each probe's accuracy for each encoder.

    Args:
        groups: x-axis groups (e.g. probes or bands).
        series: name -> one ``(value, low, high)`` per group (e.g. encoders); NaN draws nothing.
        ylabel: the y-axis label, with its unit.
        title: the figure title (say what the whiskers are).
        reference: optional ``(label, value)`` drawn as a dashed horizontal line.
    """
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) + 2.5), 4.2))
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, (name, values) in enumerate(series.items()):
        v = np.array(values, dtype=np.float64).reshape(-1, 3)
        pos = x - 0.4 + width * (k + 0.5)
        err = np.abs(np.stack([v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]]))
        ax.bar(pos, v[:, 0], width, yerr=err, capsize=3, label=name)
    if reference is not None:
        ax.axhline(reference[1], color="grey", linestyle="--", label=reference[0])
    ax.set_xticks(x, groups, rotation=15 if len(groups) > 6 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def plot_confusion(
    confusions: dict[str, np.ndarray], class_names: Sequence[str], *, title: str
) -> Figure:
    """Row-normalised confusion matrices side by side, with the counts written in the cells.

    Args:
        confusions: panel title -> (K, K) counts (rows true, columns predicted).
        class_names: the K class names.
        title: the figure title.
    """
    K = len(class_names)
    n = len(confusions)
    fig, axes = plt.subplots(
        1, n, figsize=(4.2 * n + 1.2, 0.45 * K + 2.6), squeeze=False, constrained_layout=True
    )
    im = None
    for ax, (name, conf) in zip(axes[0], confusions.items(), strict=True):
        rows = conf.sum(1, keepdims=True)
        frac = np.divide(conf, rows, out=np.zeros(conf.shape), where=rows > 0)
        im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(K):
            for j in range(K):
                if conf[i, j]:
                    color = "white" if frac[i, j] > 0.6 else "black"
                    ax.text(
                        j, i, str(conf[i, j]), ha="center", va="center", fontsize=7, color=color
                    )
        ax.set_xticks(range(K), class_names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(K), class_names, fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8, label="fraction of the true class (row)")
    fig.suptitle(title, fontsize=10)
    return fig


def plot_embedding_map(
    coords: dict[str, np.ndarray],
    labels: np.ndarray | dict[str, np.ndarray],
    class_names: Sequence[str],
    colors: Sequence[str],
    *,
    title: str,
    axis_names: dict[str, tuple[str, str]] | None = None,
) -> Figure:
    """2-D maps of embeddings (PCA, t-SNE, ...), one panel each, points coloured by class.

    Args:
        coords: panel title -> (N, 2) coordinates.
        labels: (N,) class index of each point, or one such array per panel.
        class_names: the K class names (legend).
        colors: a matplotlib colour per class.
        title: the figure title.
        axis_names: panel title -> (x label, y label); default "component 1/2".
    """
    n = len(coords)
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 4.3 * rows + 0.8), squeeze=False)
    for ax, (name, xy) in zip(axes.ravel(), coords.items(), strict=False):
        lab = labels[name] if isinstance(labels, dict) else labels
        for k, cname in enumerate(class_names):
            sel = lab == k
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=6, c=colors[k], label=cname, alpha=0.8)
        xl, yl = (axis_names or {}).get(name, ("component 1", "component 2"))
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.set_title(name, fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles, names = axes.ravel()[0].get_legend_handles_labels()
    fig.legend(
        handles,
        names,
        loc="lower center",
        ncol=min(len(names), 4),
        fontsize=8,
        markerscale=2,
        title="majority land-cover class of the patch",
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1 + 0.02 * (len(names) > 4), 1, 1))
    return fig


def plot_loss_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], lr=None) -> Figure:
    """Loss against step for each named curve, with the learning rate on a second axis.

    Args:
        curves: name -> (steps, values), e.g. ``{"train": ..., "val": ...}``.
        lr: optional (steps, values) of the learning rate.
    """
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, marker="o" if len(steps) < 20 else None, label=f"{name} loss")
    ax.set_xlabel("step")
    ax.set_ylabel("masked reconstruction loss (MSE, normalised units)")
    ax.set_title("MAE pretraining loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if lr is not None:
        ax2 = ax.twinx()
        ax2.plot(lr[0], lr[1], color="grey", linestyle="--", label="learning rate")
        ax2.set_ylabel("learning rate")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right")
    fig.tight_layout()
    return fig
