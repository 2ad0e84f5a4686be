import pytest
import torch

from geogfm.core.errors import DataError
from geogfm.data.transforms.normalization import DeviceNormalize, DynamicRange, PercentileClip

STATS = {
    "bands": ["a", "b"],
    "mean": [0.2, 0.1],
    "std": [0.05, 0.02],
    "min": [0.0, 0.01],
    "max": [0.9, 0.5],
    "percentiles": {"2.0": [0.1, 0.05], "98.0": [0.3, 0.2]},
}


def _sample():
    image = torch.tensor([[[0.05, 0.25, 0.6]], [[0.5, 0.1, 0.01]]])  # (C=2, H=1, W=3), bands b, a
    return {"image": image, "valid": torch.tensor([[True, True, False]]), "patch_id": "p"}


def test_percentile_clip_clips_each_band_to_its_percentiles_by_name():
    out = PercentileClip(STATS, ["b", "a"], low=2.0, high=98.0)(_sample())
    torch.testing.assert_close(out["image"], torch.tensor([[[0.05, 0.2, 0.2]], [[0.3, 0.1, 0.1]]]))
    assert out["patch_id"] == "p"


def test_dynamic_range_maps_percentiles_to_0_1_and_zeroes_invalid_pixels():
    out = DynamicRange(STATS, ["b", "a"])(_sample())
    # b: (x - 0.05) / 0.15, a: (x - 0.1) / 0.2, clipped; the third pixel is invalid
    expected = torch.tensor([[[0.0, 4 / 3, 0.0]], [[2.0, 0.0, 0.0]]]).clamp(0, 1)
    torch.testing.assert_close(out["image"], expected)
    full = DynamicRange(STATS, ["a"], low=None, high=None)({"image": torch.tensor([[[0.45]]])})
    torch.testing.assert_close(full["image"], torch.tensor([[[0.5]]]))  # min/max 0..0.9


def test_a_missing_percentile_is_refused():
    with pytest.raises(DataError, match=r"percentile 5.0 is not in the channel statistics"):
        PercentileClip(STATS, ["a"], low=5.0)


def test_device_normalize_folds_scale_offset_and_clips():
    dn = torch.tensor([[[[1000, 3000, 9000]], [[500, 1500, 100]]]], dtype=torch.uint16)
    valid = torch.tensor([[[True, True, False]]])
    z = DeviceNormalize(STATS, ["a", "b"], scale=1e-4, offset=-0.05)(dn, valid)
    mean = torch.tensor([0.2, 0.1], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.05, 0.02], dtype=torch.float64)[:, None, None]
    want = (dn.double() * 1e-4 - 0.05 - mean) / std  # (1, C, 1, 3)
    assert z.dtype == torch.float32
    torch.testing.assert_close(
        z.double(), torch.where(valid[:, None], want, 0.0), atol=1e-5, rtol=0
    )
    # with a clip, reflectance is clipped to the 2-98 % percentiles first
    clip = DeviceNormalize(STATS, ["a", "b"], scale=1e-4, offset=-0.05, clip=(2.0, 98.0))(dn)
    lo = (torch.tensor([0.1, 0.05], dtype=torch.float64)[:, None, None] - mean) / std
    hi = (torch.tensor([0.3, 0.2], dtype=torch.float64)[:, None, None] - mean) / std
    torch.testing.assert_close(clip.double(), want.clamp(lo, hi), atol=1e-5, rtol=0)
