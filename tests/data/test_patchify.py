import numpy as np
import pytest

from geogfm.data.transforms.patchify import (
    extract_patches,
    merge_patches,
    tile_windows,
    window_weights,
)
from geogfm.data.windows import window_grid


def test_tiles_cover_the_image_with_the_overlap():
    rows, cols = tile_windows(50, 70, size=16, overlap=4)
    assert sorted(set(rows)) == [0, 12, 24, 34]  # stride 12, last flush with the bottom
    assert sorted(set(cols)) == [0, 12, 24, 36, 48, 54]
    covered = np.zeros((50, 70), int)
    for r, c in zip(rows, cols, strict=True):
        covered[r : r + 16, c : c + 16] += 1
    assert covered.min() >= 1


def test_without_cover_the_tiles_are_the_manifest_window_grid():
    got = tile_windows(50, 70, size=16, overlap=4, cover=False)
    want = window_grid(50, 70, size=16, stride=12)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def test_bad_overlap_and_oversized_windows_are_refused():
    with pytest.raises(ValueError, match=r"overlap must be in \[0, size=16\), got 16"):
        tile_windows(50, 50, size=16, overlap=16)
    with pytest.raises(ValueError, match="larger than the 10 x 50 cell"):
        tile_windows(10, 50, size=16)


@pytest.mark.parametrize("taper", [0, 3])
def test_extract_then_merge_is_the_identity(taper):
    image = np.random.default_rng(0).normal(size=(2, 3, 37, 45))  # (T, C, H, W), non-square
    rows, cols = tile_windows(37, 45, size=16, overlap=5)
    patches = extract_patches(image, rows, cols, size=16)
    assert patches.shape == (len(rows), 2, 3, 16, 16)
    np.testing.assert_array_equal(
        patches[1], image[..., rows[1] : rows[1] + 16, cols[1] : cols[1] + 16]
    )
    merged = merge_patches(patches, rows, cols, height=37, width=45, taper=taper)
    np.testing.assert_allclose(merged, image)


def test_merge_averages_overlaps_and_leaves_uncovered_pixels_nan():
    rows, cols = np.array([0, 0]), np.array([0, 2])
    patches = np.stack([np.full((4, 4), 1.0), np.full((4, 4), 3.0)])
    merged = merge_patches(patches, rows, cols, height=5, width=6)
    assert merged[0].tolist() == [1, 1, 2, 2, 3, 3]
    assert np.isnan(merged[4]).all()
    w = window_weights(6, taper=2)
    assert w[0, 0] == pytest.approx(1 / 9) and w[2:4, 2:4].min() == 1.0
