import datetime

import numpy as np
import pytest
import torch

from geogfm.modules.embeddings.geo_encoding import (
    LocationEncoding,
    TemporalEncoding,
    band_wavelengths,
    date_features,
    wavelength_encoding,
)


def test_date_features() -> None:
    feats = date_features([["2021-08-14", "2024-12-31"], ["2022-01-01", "2024-02-29"]])
    assert feats.dtype == torch.float32 and feats.shape == (2, 2, 2)
    assert feats.tolist() == [[[2021, 226], [2024, 366]], [[2022, 1], [2024, 60]]]
    # datetime.date and datetime64 read the same
    same = date_features([datetime.date(2021, 8, 14), np.datetime64("2021-08-14")])
    assert same.tolist() == [[2021, 226], [2021, 226]]


def test_temporal_encoding_is_cyclic_in_the_year() -> None:
    enc = TemporalEncoding(32)
    e = enc(torch.tensor([[2021.0, 365.0], [2021.0, 1.0], [2021.0, 182.0], [2022.0, 1.0]]))
    assert e.shape == (4, 32)
    doy = e[:, 16:]  # the annual-cycle half
    # 31 Dec is nearer to 1 Jan than midsummer is, and 1 Jan of two years share that half
    assert (doy[0] - doy[1]).norm() < 0.2 * (doy[2] - doy[1]).norm()
    torch.testing.assert_close(doy[1], doy[3])
    assert not torch.allclose(e[1], e[3])  # the year half tells the years apart
    e.sum().backward()
    assert enc.scale.grad is not None


def test_location_encoding_wraps_at_the_antimeridian() -> None:
    enc = LocationEncoding(16)
    e = enc(torch.tensor([[46.0, 180.0], [46.0, -180.0], [46.0, 179.0], [-46.0, 180.0]]))
    assert e.shape == (4, 16)
    torch.testing.assert_close(e[0], e[1])  # the same meridian
    assert (e[0] - e[2]).norm() < (e[0] - e[3]).norm()  # 1° east is nearer than the other pole


def test_band_wavelengths_and_encoding() -> None:
    assert band_wavelengths(["red", "B8A"]) == [0.665, 0.865]
    with pytest.raises(ValueError, match=r"unknown band\(s\) \['B10'\]"):
        band_wavelengths(["B10"])
    enc = wavelength_encoding(torch.tensor([0.665, 0.865]), 64)
    assert enc.shape == (2, 64) and not torch.allclose(enc[0], enc[1])


def test_dims_multiple_of_four() -> None:
    with pytest.raises(ValueError, match="dim=18 must be a multiple of 4"):
        TemporalEncoding(18)
    with pytest.raises(ValueError, match="dim=18 must be a multiple of 4"):
        LocationEncoding(18)
