"""Where the demo catalog's tiles lie on its landscape, at any tile size.

The second tile is in the neighbouring UTM zone. The map between the two zones' pixel grids is not
affine: at the default centre it bends by 0.12 px over a 1024-pixel tile and by several pixels
over 8192, so the catalog used to fail from size 768 on ("tile 32TQR is not affine on the
landscape grid"). The tile is now placed by the exact projection, on a lattice of nodes.
"""

from __future__ import annotations

import math

import numpy as np
import pystac
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.warp import transform as warp_transform

from geogfm.core.config import config_from_dict
from geogfm.data.demo_tiles import demo_tiles, landscape_views
from geogfm.data.demo_view import TileView
from geogfm.stages.demo_catalog import run


def _exact(grid, transform, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Landscape (col, row) of tile points (x, y), through PROJ directly."""
    xs, ys = warp_transform(grid.crs, "EPSG:32633", grid.x0 + 10.0 * x, grid.y0 - 10.0 * y)
    col, row = ~transform * (np.asarray(xs), np.asarray(ys))
    return np.asarray(col), np.asarray(row)


@pytest.mark.parametrize("size", [768, 1024, 2000, 8192])
def test_the_other_zones_tile_follows_the_exact_projection(size):
    grids = demo_tiles(lon=12.04, lat=46.0, size=size)
    transform, (h, w), views = landscape_views(grids)
    assert [g.epsg for g in grids] == [32633, 32632]
    home, other = views
    assert home.crop is not None and other.crop is None

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, size, 4000), [0.5, size - 0.5, 0.5, size - 0.5]])
    y = np.concatenate([rng.uniform(0, size, 4000), [0.5, 0.5, size - 0.5, size - 0.5]])
    col, row = _exact(grids[1], transform, x, y)
    got_col, got_row = other.locate(x, y)
    assert np.hypot(got_col - col, got_row - row).max() < 0.01  # px

    # no affine map can place this tile: the best through three corners misses the fourth
    a = other.to_landscape
    c4, r4 = _exact(grids[1], transform, np.array([other.side]), np.array([other.side]))
    miss = math.dist(a * (other.side, other.side), (c4[0], r4[0]))
    assert miss > 0.05 * (size / 1024) ** 2

    # the landscape covers every pixel both tiles sample, at every resolution
    for view in views:
        for res in (10, 60) if size <= 2048 else (60,):  # (67 M positions at 10 m for 8192)
            cs, rs = view.positions(res)
            assert cs.min() >= 0 and rs.min() >= 0 and cs.max() < w and rs.max() < h


def test_a_view_needs_a_square_lattice():
    with pytest.raises(ValueError, match=r"nodes of shape \(2, 3, 4\).*\(2, m, m\)"):
        TileView.from_nodes(64, np.zeros((2, 3, 4)))
    corners = np.array(np.meshgrid([5.0, 71.0], [7.0, 73.0]))  # a 66-px square: a shift
    view = TileView.from_nodes(64, corners)
    np.testing.assert_allclose(np.stack(view.locate(np.array([0.0, 33.0]), np.array([0.0, 66.0]))),
                               [[5.0, 38.0], [7.0, 73.0]])  # fmt: skip
    assert view.crop is None  # a lattice is sampled, never cropped


def test_a_tile_of_a_size_that_used_to_fail_is_written_and_matches_the_other(tmp_path):
    size = 768  # the smallest multiple of 256 that the affine placement refused (0.067 px off)
    cfg = config_from_dict({"demo_catalog": {"size": size, "dates": ["2022-07-30"]}})
    summary = run(cfg, out=tmp_path / "demo")
    assert summary["tiles"] == ["33TTL", "32TQR"] and len(summary["items"]) == 2
    cat = pystac.Catalog.from_file(str(tmp_path / "demo" / "catalog.json"))
    maps = {it.id.split("_")[1]: it for it in cat.get_child("landcover").get_items()}
    with rasterio.open(maps["33TTL"].assets["map"].get_absolute_href()) as a:
        assert a.shape == (size, size)
        ref = a.read(1)
        moved = np.zeros(a.shape, np.uint8)
        with rasterio.open(maps["32TQR"].assets["map"].get_absolute_href()) as b:
            assert b.shape == (size, size) and b.crs.to_epsg() == 32632
            reproject(
                rasterio.band(b, 1), moved, src_nodata=0, dst_crs=a.crs,
                dst_transform=a.transform, dst_nodata=0, resampling=Resampling.nearest,
            )  # fmt: skip
    # the two tiles' labels agree where they overlap, but at class edges (nearest neighbour twice)
    both = moved > 0
    assert both.sum() > 0.3 * ref.size
    assert (ref[both] == moved[both]).mean() > 0.95
