import numpy as np
import pytest

from geogfm.evaluation.visualization import (
    plot_confusion,
    plot_embedding_map,
    plot_error_maps,
    plot_metric_bars,
    plot_reconstructions,
    rgb_composite,
)


def test_rgb_composite_stretches_each_band_and_paints_invalid_magenta():
    image = np.stack([np.full((2, 2), v) for v in (0.05, 0.10, 0.30)])  # (3, H, W)
    valid = np.array([[True, True], [True, False]])
    rgb = rgb_composite(image, lo=[0.0, 0.1, 0.1], hi=[0.1, 0.2, 0.2], valid=valid)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[0, 0], [0.5, 0.0, 1.0])  # mid, at lo (clipped), above hi
    np.testing.assert_allclose(rgb[1, 1], [0.85, 0.0, 0.85])


def test_reconstruction_figure_has_a_row_per_sample_and_titled_columns():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 0.3, (3, 4, 8, 8))
    removed = np.zeros((3, 8, 8), bool)
    removed[:, :4] = True
    fig = plot_reconstructions(
        images,
        images * 0.9,
        removed,
        np.ones((3, 8, 8), bool),
        rgb_index=[2, 1, 0],
        lo=[0, 0, 0],
        hi=[0.3, 0.3, 0.3],
        titles=["a", "b", "c"],
        mask_ratio=0.5,
    )
    axes = np.array(fig.axes).reshape(3, 4)
    assert [ax.get_title() for ax in axes[0]][1] == "masked input (50% removed)"
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["a", "b", "c"]


def test_multi_date_reconstructions_get_a_row_per_date_labelled_with_it():
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 0.3, (2, 3, 4, 8, 8))  # (N, T, C, H, W)
    masks = np.zeros((2, 3, 8, 8), bool)
    fig = plot_reconstructions(
        images,
        images,
        masks,
        ~masks,
        rgb_index=[2, 1, 0],
        lo=[0, 0, 0],
        hi=[0.3] * 3,
        titles=["a", "b"],
        mask_ratio=0.75,
        dates=[["2021-08-14", "2022-05-11", "2022-07-30"]] * 2,
    )
    labels = [ax.get_ylabel() for ax in np.array(fig.axes).reshape(6, 4)[:, 0]]
    assert labels[0] == "a\n2021-08-14" and labels[5] == "b\n2022-07-30"


def test_error_maps_show_only_removed_valid_pixels_with_a_labelled_colour_bar():
    rng = np.random.default_rng(2)
    images = rng.uniform(0, 0.3, (2, 3, 8, 8))
    recons = images + 0.05
    removed = np.zeros((2, 8, 8), bool)
    removed[:, :4] = True
    valid = np.ones((2, 8, 8), bool)
    valid[:, 0, 0] = False
    fig = plot_error_maps(
        images, recons, removed, valid, band_names=["blue", "green", "red"], titles=["a", "b"]
    )
    panels = [ax for ax in fig.axes if ax.get_title() in ("blue", "green", "red") or ax.images]
    first = panels[0].images[0].get_array()
    assert np.ma.is_masked(first[0, 0]) or np.isnan(first[0, 0])  # invalid: blank
    assert np.isnan(np.asarray(first.filled(np.nan))[6, 6])  # visible: blank
    assert np.asarray(first)[2, 3] == pytest.approx(0.05)
    assert any("reflectance" in ax.get_ylabel() for ax in fig.axes)  # the colour bar
    assert [ax.get_title() for ax in fig.axes[:3]] == ["blue", "green", "red"]


def test_confusion_bars_and_embedding_map_are_labelled():
    conf = np.array([[5, 1], [2, 7]])
    fig = plot_confusion({"enc": conf}, ["tree", "crop"], title="t")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert [t.get_text() for t in ax.texts] == ["5", "1", "2", "7"]
    fig = plot_metric_bars(
        ["probe"], {"a": [(0.5, 0.4, 0.6)], "b": [(0.7, 0.6, 0.8)]}, ylabel="acc", title="t"
    )
    assert fig.axes[0].get_ylabel() == "acc" and len(fig.axes[0].get_legend().texts) == 2
    xy = np.random.default_rng(0).normal(size=(10, 2))
    fig = plot_embedding_map(
        {"PCA": xy}, np.array([0, 1] * 5), ["tree", "crop"], ["green", "orange"], title="t"
    )
    assert [t.get_text() for t in fig.legends[0].texts] == ["tree", "crop"]
