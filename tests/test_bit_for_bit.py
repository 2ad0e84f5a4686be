"""Bit for bit: two runs of the DAG with the same params give the same data and the same weights.

Each run is a separate Python process (with its own hash seed, so that nothing may depend on set or
dict order of strings) that runs every stage from the demo catalog to pretraining with the CI
preset, in its own folder, with the DAG's relative paths. The tile cache (every file of every
Zarr store), the manifest, the statistics and the checkpoint's weights must be identical; and the
weights must not depend on the number of loader worker processes either. (The checkpoint files
themselves differ: their metadata holds the throughput and the lock's hash, and the lock records
absolute asset paths.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geogfm.core.io import sha256_file
from geogfm.core.lineage import tree_sha256

ROOT = Path(__file__).resolve().parents[1]

_RUN = """
from pathlib import Path
from geogfm.core.config import load_params
from geogfm.stages import channel_stats, demo_catalog, patch_manifest, pretrain, stac_query
from geogfm.stages import tile_cache

cfg = load_params("params.yaml")
demo_catalog.run(cfg, out=Path("data/demo"))
stac_query.run(cfg, catalog_dir=Path("data/demo"), out=Path("data/stac"))
tile_cache.run(cfg, items=Path("data/stac/items.json"), out=Path("data/cache"))
patch_manifest.run(cfg, cache=Path("data/cache"), out=Path("data/manifests"))
kw = {"cache": Path("data/cache"), "manifest": Path("data/manifests/patches.parquet")}
channel_stats.run(cfg, **kw, out=Path("results/stats/channel_stats.json"))
pretrain.run(cfg, **kw, stats=Path("results/stats/channel_stats.json"),
             out=Path("results/pretrain"))
"""


def _run_dag(root: Path, hash_seed: int, num_workers: int | None = None) -> Path:
    root.mkdir()
    params = (ROOT / "configs" / "ci_tiny.yaml").read_text()
    if num_workers is not None:
        assert "  num_workers: 0\n" in params
        params = params.replace("  num_workers: 0\n", f"  num_workers: {num_workers}\n")
    (root / "params.yaml").write_text(params)
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    proc = subprocess.run(
        [sys.executable, "-c", _RUN], cwd=root, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root


def _digests(root: Path) -> dict[str, str]:
    cache = root / "data/cache"
    found = {f"cache/{p.name}": tree_sha256(p) for p in sorted(cache.glob("*.zarr"))}
    found["cache/index.json"] = sha256_file(cache / "index.json")
    found["manifest"] = sha256_file(root / "data/manifests/patches.parquet")
    found["split_audit"] = sha256_file(root / "data/manifests/split_audit.json")
    found["stats"] = sha256_file(root / "results/stats/channel_stats.json")
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("bit_for_bit")
    return _run_dag(base / "one", 1), _run_dag(base / "two", 2)


def test_cache_manifest_and_stats_are_identical(runs):
    one, two = (_digests(r) for r in runs)
    assert len([k for k in one if k.endswith(".zarr")]) > 1
    assert one == two, {k: (one[k], two.get(k)) for k in one if one[k] != two.get(k)}


def _weights_differ(one: Path, two: Path) -> list[str]:
    a, b = (torch.load(r / "results/pretrain/checkpoint.pt", weights_only=True) for r in (one, two))
    assert a["model"].keys() == b["model"].keys()
    return [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]


def test_checkpoint_weights_are_identical(runs):
    differ = _weights_differ(*runs)
    assert not differ, f"weights differ: {differ}"
    one, two = (json.loads((r / "results/pretrain/metrics.json").read_text()) for r in runs)
    assert one["train_loss"] == two["train_loss"] and one["val_loss"] == two["val_loss"]


def test_lineage_records_the_same_hashes(runs):
    a, b = (json.loads((r / "results/pretrain/meta.json").read_text())["lineage"] for r in runs)
    assert a["cache"]["cells"] == b["cache"]["cells"]
    for key in ("manifest", "stats", "params"):
        assert a[key] == b[key], key  # the same relative paths, the same bytes


@pytest.mark.slow  # a third run, with loader processes: ~10 s more
def test_loader_worker_processes_do_not_change_the_weights(runs, tmp_path):
    # data.num_workers only says how many processes load the batches: not which, nor in what order
    workers = _run_dag(tmp_path / "workers", 3, num_workers=2)
    assert _digests(workers) == _digests(runs[0])
    differ = _weights_differ(runs[0], workers)
    assert not differ, f"weights differ with data.num_workers=2: {differ}"
