"""The tile_cache stage on the tiny catalog of ``_s2_fixture``: settings and helpers of its tests.

Each test module makes the catalog once, with
``catalog_dir = pytest.fixture(scope="module")(make_catalog_dir)`` (not a fixture in a
``conftest.py`` here: the tests import ``tests/conftest.py`` by its name, ``conftest``).
"""

from __future__ import annotations

import json
from pathlib import Path

from geogfm.core.config import GeoGFMConfig, config_from_dict
from geogfm.stages import stac_query, tile_cache

try:  # tests/ as a package or as rootdir-relative modules
    from . import _s2_fixture as fx
except ImportError:
    import _s2_fixture as fx

BANDS = ["blue", "green", "red", "nir08"]
CELL = 32  # pixels: 320 m cells, corners at multiples of 320 m


def make_catalog_dir(tmp_path_factory) -> Path:
    """The tiny Sentinel-2 catalog of ``_s2_fixture`` (three scenes): its folder."""
    return fx.make_catalog(tmp_path_factory.mktemp("catalog")).parent


def cfg(**tile_cache_kw) -> GeoGFMConfig:
    """The tests' params: scenes A and B, four bands, 32-pixel cells; ``tile_cache`` keys added."""
    return config_from_dict(
        {
            "stac_query": {"datetime": "2021/2022-06"},  # scenes A and B
            "tile_cache": {"bands": BANDS, "cell_size": CELL, **tile_cache_kw},
            "data": {"bands": BANDS},
        }
    )


def build(root: Path, catalog_dir: Path, *, bbox=None, **tile_cache_kw) -> Path:
    """Query ``catalog_dir`` into ``root / "stac"`` and build ``root / "cache"``; returns it."""
    c = cfg(**tile_cache_kw)
    if bbox is not None:
        c.stac_query.bbox = bbox
    stac_query.run(c, catalog_dir=catalog_dir, out=root / "stac")
    tile_cache.run(c, items=root / "stac" / "items.json", out=root / "cache")
    return root / "cache"


def files(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by relative path, with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Temporary or staging folders of the stage left in ``parent``."""
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def index(cache: Path) -> dict:
    """The cache's ``index.json``."""
    return json.loads((cache / "index.json").read_text())
