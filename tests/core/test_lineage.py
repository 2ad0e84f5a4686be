"""Checkpoint lineage: content hashes of everything a checkpoint saw, recorded and verified.

A real tiny run (the CI preset's data stages, then pretraining, in a copy of the DAG's layout)
records its lineage in ``meta.json``; ``verify-checkpoint`` must match it on the same files and
name every input that changed: a cache cell, the statistics, the manifest, the lock, a params key.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from geogfm.core.config import load_params
from geogfm.core.errors import DataError
from geogfm.core.io import sha256_file
from geogfm.core.lineage import checkpoint_lineage, git_state, params_record, tree_sha256
from geogfm.core.verify import read_meta, verify_checkpoint
from geogfm.stages import pretrain

ROOT = Path(__file__).resolve().parents[2]
CKPT = "results/pretrain/checkpoint.pt"


# ----------------------------------------------------------------------------------- tree hash


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_tree_hash_depends_on_paths_and_bytes_not_on_location_or_order(tmp_path):
    files = {"zarr.json": b"{}", "a/c/0/0": b"\x01\x02", "b/zarr.json": b"[]"}
    one = _tree(tmp_path / "one", files)
    two = _tree(tmp_path / "two", dict(reversed(files.items())))
    assert tree_sha256(one) == tree_sha256(two)
    (two / "a/c/0/0").write_bytes(b"\x01\x03")
    assert tree_sha256(one) != tree_sha256(two)
    three = _tree(tmp_path / "three", {**files, "a/c/0/1": b""})  # an extra (empty) chunk
    assert tree_sha256(one) != tree_sha256(three)
    four = _tree(
        tmp_path / "four", {"zarr.json": b"{}", "a/c/0/1": b"\x01\x02", "b/zarr.json": b"[]"}
    )
    assert tree_sha256(one) != tree_sha256(four)  # same bytes under another name


def test_tree_hash_of_a_missing_directory_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        tree_sha256(tmp_path / "nope.zarr")


# ---------------------------------------------------------------------------------- git state


def _git(cwd: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_git_state_names_the_commit_and_a_dirty_tree(tmp_path):
    assert git_state(tmp_path) is None  # not a repository
    _git(tmp_path, "init", "-q")
    assert git_state(tmp_path) is None  # no commit yet
    (tmp_path / "a.txt").write_text("1")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "one")
    assert git_state(tmp_path) == {"commit": _git(tmp_path, "rev-parse", "HEAD"), "dirty": False}
    (tmp_path / "a.txt").write_text("2")
    assert git_state(tmp_path)["dirty"] is True


# ------------------------------------------------------------------------- a real tiny run


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """The tiny data stages and a pretraining run, in the DAG's layout, with its params.yaml."""
    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(tiny_data["demo"].parents[1], root, dirs_exist_ok=True)
    shutil.copy(ROOT / "configs" / "ci_tiny.yaml", root / "params.yaml")
    cfg = load_params(root / "params.yaml")
    pretrain.run(
        cfg,
        cache=root / "data/cache",
        manifest=root / "data/manifests/patches.parquet",
        stats=root / "results/stats/channel_stats.json",
        out=root / "results/pretrain",
    )
    return root


@pytest.fixture
def run_dir(trained, tmp_path, monkeypatch) -> Path:
    """A copy of the trained run to change, as the working directory (paths are the defaults)."""
    root = tmp_path / "run"
    shutil.copytree(trained, root)
    monkeypatch.chdir(root)
    return root


def test_meta_records_the_hash_of_every_input(trained):
    meta = json.loads((trained / "results/pretrain/meta.json").read_text())
    lin = meta["lineage"]
    for key, rel in (
        ("stac_lock", "data/stac/lock.json"),
        ("stats", "results/stats/channel_stats.json"),
        ("manifest", "data/manifests/patches.parquet"),
    ):
        assert lin[key]["sha256"] == sha256_file(trained / rel), key
    index = json.loads((trained / "data/cache/index.json").read_text())
    assert sorted(lin["cache"]["cells"]) == sorted(c["id"] for c in index["cells"])
    for cid, sha in lin["cache"]["cells"].items():
        assert sha == tree_sha256(trained / "data/cache" / f"{cid}.zarr")
    assert lin["cache"]["index_sha256"] == sha256_file(trained / "data/cache/index.json")
    assert set(lin["params"]["sections"]) >= {"stac_query", "tile_cache", "model", "data", "train"}
    assert lin["versions"]["torch"] and lin["versions"]["zarr"] == zarr.__version__
    assert lin["git"] is None or len(lin["git"]["commit"]) == 40
    # the .pt file carries the same lineage
    assert read_meta(trained / CKPT)["lineage"] == lin


def test_params_sections_ignore_formatting_but_not_values(tmp_path):
    text = (ROOT / "configs" / "ci_tiny.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text("# a comment\n" + text)
    a, b = (params_record(load_params(tmp_path / n), tmp_path / n) for n in ("a.yaml", "b.yaml"))
    assert a["sections"] == b["sections"] and a["sha256"] != b["sha256"]
    (tmp_path / "c.yaml").write_text(text.replace("mask_ratio: 0.75", "mask_ratio: 0.9"))
    c = params_record(load_params(tmp_path / "c.yaml"), tmp_path / "c.yaml")
    assert [s for s in a["sections"] if a["sections"][s] != c["sections"][s]] == ["model"]


def test_verify_matches_the_files_it_was_trained_on(run_dir):
    report = verify_checkpoint(CKPT)
    assert report.ok, report.mismatches
    assert any(m.startswith("cache data/cache: ") for m in report.matched)
    assert {m.split()[0] for m in report.matched} == {
        "STAC",
        "cache",
        "manifest",
        "stats",
        "params",
    }


def test_verify_names_a_changed_cache_cell_and_changed_stats(run_dir):
    index = json.loads(Path("data/cache/index.json").read_text())
    cell = index["cells"][0]["id"]
    chunk = next(
        p
        for p in sorted(Path(f"data/cache/{cell}.zarr/reflectance").rglob("*"))
        if p.is_file() and p.name != "zarr.json"
    )
    chunk.write_bytes(chunk.read_bytes()[::-1])
    stats = json.loads(Path("results/stats/channel_stats.json").read_text())
    stats["mean"][0] += 0.01
    Path("results/stats/channel_stats.json").write_text(json.dumps(stats))
    report = verify_checkpoint(CKPT)
    assert len(report.mismatches) == 2, report.mismatches
    assert report.mismatches[0].startswith(f"cache cell {cell}: content ")
    assert report.mismatches[1].startswith("stats results/stats/channel_stats.json: sha256 ")


def test_verify_names_missing_and_new_cells_the_lock_and_the_manifest(run_dir):
    cells = sorted(Path("data/cache").glob("*.zarr"))
    shutil.rmtree(cells[0])
    shutil.copytree(cells[1], "data/cache/32633_9999999_9999999.zarr")
    Path("data/stac/lock.json").write_text("{}")
    Path("data/manifests/patches.parquet").unlink()
    found = verify_checkpoint(CKPT).mismatches
    assert f"cache cell {cells[0].stem}: missing from data/cache" in found
    assert (
        "cache cell 32633_9999999_9999999: in data/cache but not in the checkpoint's data" in found
    )
    assert any(m.startswith("STAC lock data/stac/lock.json: sha256 ") for m in found)
    assert any(m.startswith("manifest data/manifests/patches.parquet: not found") for m in found)


def test_verify_names_the_params_keys_that_changed(run_dir):
    text = Path("params.yaml").read_text()
    Path("params.yaml").write_text(text.replace("lr: 1.0e-3", "lr: 2.0e-3"))
    (mismatch,) = verify_checkpoint(CKPT).mismatches
    assert mismatch == (
        "params params.yaml: section 'train' differs from the checkpoint's "
        "(train.optimizer.lr: 0.001 -> 0.002)"
    )
    # a comment only: a note, not a mismatch
    Path("params.yaml").write_text("# tuned\n" + text)
    report = verify_checkpoint(CKPT)
    assert report.ok and any("the file differs but not its values" in n for n in report.notes)


def test_cli_exit_status_and_report(run_dir):
    cmd = [sys.executable, "-m", "geogfm", "verify-checkpoint", CKPT]
    ok = subprocess.run(cmd, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok        stats results/stats/channel_stats.json" in ok.stdout
    stats = json.loads(Path("results/stats/channel_stats.json").read_text())
    stats["std"][1] *= 2
    Path("results/stats/channel_stats.json").write_text(json.dumps(stats))
    bad = subprocess.run(cmd, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "MISMATCH  stats results/stats/channel_stats.json: sha256 " in bad.stdout
    assert "1 mismatch(es) with its lineage" in bad.stderr
    gone = subprocess.run(cmd[:-1] + ["results/nope.pt"], capture_output=True, text=True)
    assert gone.returncode == 2 and "checkpoint 'results/nope.pt' not found" in gone.stderr


def test_a_checkpoint_without_lineage_is_refused(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"bands": ["red"]}))
    with pytest.raises(DataError, match="records no lineage .* train it again"):
        read_meta(tmp_path / "meta.json")


def test_lineage_defaults_the_lock_beside_the_cache(trained):
    cfg = load_params(trained / "params.yaml")
    lin = checkpoint_lineage(
        cfg,
        cache=trained / "data/cache",
        manifest=trained / "data/manifests/patches.parquet",
        stats=trained / "results/stats/channel_stats.json",
        params=None,
    )
    assert lin["stac_lock"]["path"] == str(trained / "data/stac/lock.json")
    assert lin["params"]["sha256"] is None and lin["params"]["sections"]
