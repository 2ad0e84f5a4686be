"""Shared fixtures: a tiny but real run of the data stages (demo catalog to channel statistics)."""

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from geogfm.core.config import GeoGFMConfig, load_params

ROOT = Path(__file__).resolve().parents[1]


def copy_repo(dst: Path, keep: Callable[[str], bool] = lambda rel: True) -> Path:
    """Copy the repository's files (what git tracks or would track) that ``keep`` accepts.

    ``dvc.lock`` is never copied: a developer's lock records other params than a test's.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if src.is_file() and rel != "dvc.lock" and keep(rel):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    return dst


def run_data_stages(cfg: GeoGFMConfig, root: Path) -> dict[str, Path]:
    """Run every data stage in-process into ``root``, with the DAG's default relative paths."""
    from geogfm.stages import channel_stats, demo_catalog, patch_manifest, stac_query, tile_cache

    paths = {
        "demo": root / "data/demo",
        "stac": root / "data/stac",
        "cache": root / "data/cache",
        "manifests": root / "data/manifests",
        "manifest": root / "data/manifests/patches.parquet",
        "stats": root / "results/stats/channel_stats.json",
    }
    demo_catalog.run(cfg, out=paths["demo"])
    stac_query.run(cfg, catalog_dir=paths["demo"], out=paths["stac"])
    tile_cache.run(cfg, items=paths["stac"] / "items.json", out=paths["cache"])
    patch_manifest.run(cfg, cache=paths["cache"], out=paths["manifests"])
    channel_stats.run(cfg, cache=paths["cache"], manifest=paths["manifest"], out=paths["stats"])
    return paths


@pytest.fixture(scope="session")
def tiny_cfg() -> GeoGFMConfig:
    """The CI preset: a 128 px demo tile, three dates, a one-block ViT."""
    return load_params(ROOT / "configs" / "ci_tiny.yaml")


@pytest.fixture(scope="session")
def tiny_data(tiny_cfg, tmp_path_factory) -> dict[str, Path]:
    """The data stages of the CI preset, run once per session."""
    return run_data_stages(tiny_cfg, tmp_path_factory.mktemp("tiny"))
