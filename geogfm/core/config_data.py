"""The data stages' sections of ``params.yaml``, and the strict base every section shares.

The sections of the demo catalog, the STAC query, the tile cache, the patch manifest and the
channel statistics.

:mod:`geogfm.core.config` gathers these with the model, data, training and evaluation sections into
:class:`~geogfm.core.config.GeoGFMConfig`, and loads ``params.yaml``; import them from there.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from geogfm.data.datasets.sentinel2 import BANDS, DEFAULT_BANDS, SCL_CLASSES, SCL_INVALID_DEFAULT

__all__ = [
    "ChannelStatsConfig",
    "DemoCatalogConfig",
    "PatchManifestConfig",
    "Section",
    "StacQueryConfig",
    "TileCacheConfig",
    "known_bands",
]

_S2_KEYS = tuple(b.key for b in BANDS)


class Section(BaseModel):
    """A ``params.yaml`` section: unknown keys and values of the wrong type are refused."""

    # strict: "2" is not an int and 1e-4 (which YAML reads as a string) is not a float.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def known_bands(bands: list[str]) -> list[str]:
    """``bands`` if each is a Sentinel-2 band key, listed once; else a ValueError naming them."""
    unknown = [b for b in bands if b not in _S2_KEYS]
    if unknown:
        raise ValueError(f"unknown band(s) {unknown}; valid bands are {list(_S2_KEYS)}")
    if len(set(bands)) != len(bands):
        raise ValueError(f"bands listed twice in {bands}")
    return bands


class DemoCatalogConfig(Section):
    """The offline demo catalog (``demo_catalog`` stage)."""

    seed: int = Field(42, ge=0)
    size: int = Field(512, ge=64, le=8192, description="side of each of the two tiles, 10 m pixels")
    dates: list[str] = Field(
        default_factory=lambda: [
            "2021-08-14",
            "2021-11-02",
            "2022-02-20",
            "2022-05-11",
            "2022-07-30",
            "2022-10-18",
        ],
        min_length=1,
    )
    cloud_cover: float = Field(0.25, ge=0.0, le=1.0, description="mean cloud fraction per date")
    lon: float = Field(
        12.04,
        ge=-180.0,
        le=180.0,
        description=(
            "first tile's centre longitude, degrees; the second tile lies in the neighbouring UTM "
            "zone nearer to it, so a longitude near a zone boundary (a multiple of 6) is realistic"
        ),
    )
    lat: float = Field(46.0, ge=-80.0, le=84.0, description="tile centre latitude (UTM range)")

    @field_validator("dates")
    @classmethod
    def _dates(cls, v: list[str]) -> list[str]:
        for d in v:
            try:
                datetime.date.fromisoformat(d)
            except ValueError:
                raise ValueError(f"{d!r} is not an ISO date; write it as YYYY-MM-DD") from None
            if len(d) != 10:
                raise ValueError(f"{d!r} is not a plain date; write it as YYYY-MM-DD")
        if len(set(v)) != len(v):
            raise ValueError(f"dates listed twice in {v}")
        return sorted(v)


class StacQueryConfig(Section):
    """What to search for (``stac_query`` stage)."""

    catalog: str = Field(
        "demo", description='"demo", an http(s) STAC API URL or a catalog.json path'
    )
    collections: list[str] = Field(default_factory=lambda: ["sentinel-2-l2a"], min_length=1)
    bbox: list[float] | None = Field(None, description="[west, south, east, north] in degrees")
    intersects: dict[str, Any] | None = Field(
        None, description="a GeoJSON geometry in lon/lat to search instead of bbox"
    )
    datetime: str | None = None
    max_cloud_cover: float | None = Field(None, ge=0.0, le=100.0)
    max_items: int | None = Field(None, ge=1)
    page_size: int = Field(100, ge=1, le=10000)
    retries: int = Field(
        5, ge=0, le=20, description="retries of a failed HTTP request (5xx, 429, timeout)"
    )
    timeout: float = Field(60.0, gt=0.0, description="seconds to wait for an HTTP response")

    @field_validator("intersects")
    @classmethod
    def _intersects(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and not ("type" in v and ("coordinates" in v or "geometries" in v)):
            raise ValueError(
                f"{v} is not a GeoJSON geometry; expected e.g. {{type: Polygon, coordinates: ...}}"
            )
        return v

    @model_validator(mode="after")
    def _one_area(self) -> StacQueryConfig:
        if self.bbox is not None and self.intersects is not None:
            raise ValueError("give bbox or intersects, not both (set the other to null)")
        return self

    @field_validator("bbox")
    @classmethod
    def _bbox(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if len(v) != 4:
            raise ValueError(f"expected [west, south, east, north], got {len(v)} numbers")
        w, s, e, n = v
        if s >= n or w >= e:
            side = "south >= north" if s >= n else "west >= east"
            raise ValueError(
                f"inverted ({side}): expected west < east and south < north, "
                "as [west, south, east, north]"
            )
        if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
            raise ValueError("expected -180 <= west < east <= 180 and -90 <= south < north <= 90")
        return v


class TileCacheConfig(Section):
    """How scenes become a Zarr tile cache on one grid (``tile_cache`` stage)."""

    bands: list[str] = Field(default_factory=lambda: list(DEFAULT_BANDS), min_length=1)
    crs: str = Field("auto", description='"auto" (dominant UTM zone) or e.g. "EPSG:32633"')
    resolution: float = Field(10.0, gt=0)
    cell_size: int = Field(256, ge=16, le=16384, description="cell side in pixels")
    resampling: Literal["bilinear", "average", "nearest", "cubic"] = Field(
        "bilinear", description="kernel for reflectance; scl and masks always use nearest"
    )
    mask_scl_classes: list[int] = Field(default_factory=lambda: list(SCL_INVALID_DEFAULT))
    workers: int = Field(2, ge=1, le=64, description="cells built in parallel (threads)")
    fail_on_error: bool = Field(
        True,
        description=(
            "stop at the first asset that cannot be read (missing, truncated or corrupt file); "
            "false: leave its item out of the cell, count it, and fail only above "
            "max_failed_fraction"
        ),
    )
    max_failed_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="with fail_on_error false: the largest fraction of items that may be skipped",
    )

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: list[str]) -> list[str]:
        return known_bands(v)

    @field_validator("mask_scl_classes")
    @classmethod
    def _scl(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if not 0 <= c <= 11]
        if bad:
            known = ", ".join(f"{c} {name}" for c, name in SCL_CLASSES.items())
            raise ValueError(
                f"unknown SCL class(es) {bad}: Sentinel-2 scene classes are {known}; list only "
                "those (the default masks 0, 1, 3, 8, 9, 10)"
            )
        return v


class PatchManifestConfig(Section):
    """Patch windows, their QA and the spatial split (``patch_manifest`` stage)."""

    stride: int | None = Field(None, ge=1, description="pixels; default: the chip size")
    block_size: int = Field(256, ge=1, description="side of a spatial split block, pixels")
    val_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    test_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of blocks for a test split; 0 = no test split"
    )
    buffer: int | None = Field(
        None,
        ge=1,
        description="pixels between windows of different splits, >= the chip size; "
        "null = the chip size (model.image_size)",
    )
    min_valid_fraction: float = Field(0.5, ge=0.0, le=1.0)
    max_cloud_fraction: float = Field(
        1.0, ge=0.0, le=1.0, description="windows with a larger share of cloud_scl_classes go"
    )
    seed: int = Field(0, ge=0)
    cloud_scl_classes: list[int] = Field(
        default_factory=lambda: [3, 8, 9, 10],
        description="SCL classes counted in cloud_fraction (shadows, clouds, cirrus)",
    )

    @field_validator("cloud_scl_classes")
    @classmethod
    def _cloud_scl(cls, v: list[int]) -> list[int]:
        bad = [c for c in v if not 0 <= c <= 11]
        if bad:
            raise ValueError(f"SCL classes are 0..11, got {bad}")
        return v

    @model_validator(mode="after")
    def _fractions(self) -> PatchManifestConfig:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"patch_manifest.val_fraction ({self.val_fraction}) + test_fraction "
                f"({self.test_fraction}) must be < 1 to leave blocks for train"
            )
        return self


class ChannelStatsConfig(Section):
    """Per-band statistics over valid training pixels (``channel_stats`` stage)."""

    percentiles: list[float] = Field(default_factory=lambda: [1.0, 2.0, 50.0, 98.0, 99.0])
    workers: int | None = Field(
        None, ge=1, description="threads reading the cache; null = the CPU cores available"
    )

    @field_validator("percentiles")
    @classmethod
    def _pct(cls, v: list[float]) -> list[float]:
        bad = [p for p in v if not 0.0 <= p <= 100.0]
        if bad:
            raise ValueError(f"percentiles are in [0, 100], got {bad}")
        return v
