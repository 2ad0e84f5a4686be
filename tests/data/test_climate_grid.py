"""Climate grids: a real Zarr store written with xarray, patched, with its own statistics."""

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from geogfm.core.errors import DataError
from geogfm.data.datasets.climate_grid import ClimateGridDataset, climate_stats
from geogfm.data.transforms.patchify import tile_windows

T, H, W = 12, 20, 30


def _grid() -> xr.Dataset:
    """A monthly 1.5-degree grid over Europe: 2 m temperature (K) and precipitation (NaN at sea)."""
    rng = np.random.default_rng(0)
    time = pd.date_range("2020-01-01", periods=T, freq="MS")
    lat = np.linspace(70.0, 41.5, H)  # descending, like ERA5
    lon = np.linspace(-10.0, 33.5, W)
    season = 10 * np.cos((np.arange(T) - 6.5) / 12 * 2 * np.pi)[:, None, None]
    t2m = 288 - 0.7 * (lat[None, :, None] - 45) + season + rng.normal(0, 1, (T, H, W))
    tp = rng.gamma(2.0, 1.5, (T, H, W))
    tp[:, 12:, :5] = np.nan  # "sea": no land precipitation product there
    return xr.Dataset(
        {
            "t2m": (("time", "latitude", "longitude"), t2m, {"units": "K"}),
            "tp": (("time", "latitude", "longitude"), tp, {"units": "mm/day"}),
        },
        coords={"time": time, "latitude": lat, "longitude": lon},
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("climate") / "era5_like.zarr"
    _grid().to_zarr(
        path, zarr_format=3, consolidated=False, encoding={"t2m": {"chunks": (1, 10, 15)}}
    )
    return path


def test_stats_are_exact_over_the_finite_values(store):
    stats = climate_stats(store)
    grid = _grid()
    assert stats["bands"] == ["t2m", "tp"]
    for k, name in enumerate(stats["bands"]):
        x = grid[name].values
        x = x[np.isfinite(x)]
        assert stats["count"][k] == x.size
        assert stats["mean"][k] == pytest.approx(x.mean(), rel=1e-9)
        assert stats["std"][k] == pytest.approx(x.std(), rel=1e-9)
        assert (stats["min"][k], stats["max"][k]) == (x.min(), x.max())
        width = (x.max() - x.min()) / 4096
        for q, values in stats["percentiles"].items():
            exact = np.percentile(x, float(q), method="inverted_cdf")
            assert abs(values[k] - exact) <= width


def test_patches_are_the_store_s_values_normalised_with_nan_invalid(store):
    ds = ClimateGridDataset(store, size=8, overlap=2)
    rows, cols = tile_windows(H, W, size=8, overlap=2)
    assert len(ds) == T * len(rows)  # min_valid_fraction 0 keeps every window
    grid, stats = _grid(), ds.stats
    i = len(ds) - 1  # the last time step's bottom-right window
    t, r, c = ds.samples[i]
    s = ds[i]
    assert s["image"].shape == (2, 8, 8) and s["image"].dtype == torch.float32
    for k, name in enumerate(["t2m", "tp"]):
        x = grid[name].values[t, r : r + 8, c : c + 8]
        z = (x - stats["mean"][k]) / stats["std"][k]
        np.testing.assert_allclose(s["image"][k].numpy(), np.nan_to_num(z), rtol=1e-5, atol=1e-5)
    sea = ds[[k for k, (tt, rr, cc) in enumerate(ds.samples) if (tt, rr, cc) == (0, 12, 0)][0]]
    assert not sea["valid"][:, :5].any() and sea["valid"][:, 5:].all()
    assert (sea["image"][:, ~sea["valid"]] == 0).all()
    # rows 12..19: latitudes 52 .. 41.5; columns 0..7: longitudes -10 .. 0.5; cells 1.5 degrees
    assert sea["bounds"] == pytest.approx((-10.75, 40.75, 1.25, 52.75))
    assert sea["crs"] == "EPSG:4326" and sea["cell"] == "era5_like"
    assert int(sea["time"]) == pd.Timestamp("2020-01-01").timestamp()


def test_a_dataarray_with_a_variable_dim_and_given_stats(store):
    grid = _grid()
    da = grid.to_array("variable").transpose("time", "variable", "latitude", "longitude")
    train_stats = climate_stats(grid.isel(time=slice(0, 9)))
    val = ClimateGridDataset(
        da.isel(time=slice(9, None)), ["tp"], size=10, stats=train_stats, min_valid_fraction=1.0
    )
    assert val.variables == ["tp"] and all(t < 3 for t, _, _ in val.samples)
    assert all(val[i]["valid"].all() for i in range(len(val)))  # no window touches the sea
    x = grid["tp"].values[9 + val.samples[0][0], :10, :10]
    k = train_stats["bands"].index("tp")
    z = (x - train_stats["mean"][k]) / train_stats["std"][k]
    np.testing.assert_allclose(val[0]["image"][0].numpy(), z, rtol=1e-5, atol=1e-5)


def test_bad_grids_are_named(store, tmp_path):
    with pytest.raises(
        DataError, match=r"variable\(s\) \['sst'\] are not .* it has \['t2m', 'tp'\]"
    ):
        ClimateGridDataset(store, ["sst"], size=8)
    with pytest.raises(DataError, match="window size 24 is larger than the 20 x 30 climate grid"):
        ClimateGridDataset(store, size=24)
    flat = _grid().rename({"latitude": "y"})
    with pytest.raises(DataError, match=r"no 'lat' or 'latitude' dimension"):
        ClimateGridDataset(flat, size=8)
    with pytest.raises(FileNotFoundError, match="not found"):
        ClimateGridDataset(tmp_path / "missing.zarr", size=8)
