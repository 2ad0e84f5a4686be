import numpy as np

from geogfm.evaluation.visualization import plot_reconstructions, rgb_composite


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
