"""Figures: MAE reconstructions as RGB composites, and training curves.

Inputs are plain arrays in reflectance units, so the functions know nothing of models or files:
``(N, C, H, W)`` images, ``(N, H, W)`` validity masks, ``(N, H, W)`` removed-pixel masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["plot_loss_curves", "plot_reconstructions", "rgb_composite"]

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
) -> Figure:
    """One row per sample: input, masked input, reconstruction, reconstruction with visible pasted.

    Args:
        images: inputs, ``(N, C, H, W)`` reflectance.
        recons: the model's reconstructions, ``(N, C, H, W)`` reflectance.
        removed: ``(N, H, W)`` bool, True where the patch was masked out.
        valid: ``(N, H, W)`` bool, False for nodata and cloud.
        rgb_index: indices of the red, green and blue bands in ``C``.
        lo: stretch minimum per RGB band.
        hi: stretch maximum per RGB band.
        titles: a label per sample (patch id).
        mask_ratio: the fraction of patches removed, for the column title.
    """
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
