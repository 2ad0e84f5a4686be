"""The tile cache as one job per cell: ``--plan``, ``--cell``, ``--gather`` equal one process.

On the CI preset's data (``tiny_data``: demo catalog, STAC query, and the cache built in one
process). The Snakemake rules that run these modes, one job per cell, are tested in
``tests/test_tile_cache_fanout_workflow.py``.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pystac
import pytest

from geogfm.cli import main
from geogfm.core.config import config_from_dict
from geogfm.core.errors import DataError
from geogfm.core.io import sha256_file
from geogfm.core.lineage import tree_sha256
from geogfm.stages import demo_catalog, stac_query, tile_cache
from geogfm.stages.tile_cache_fanout import cell_mem_mb


def _digests(cache: Path) -> dict[str, str]:
    """What tests/test_bit_for_bit.py compares: every store's tree hash, and index.json."""
    found = {p.name: tree_sha256(p) for p in sorted(cache.glob("*.zarr"))}
    found["index.json"] = sha256_file(cache / "index.json")
    return found


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _plan(tiny_data, tiny_cfg, tmp_path) -> tuple[Path, list[str]]:
    path = tmp_path / "cache_plan.json"
    tile_cache.run(tiny_cfg, items=tiny_data["stac"] / "items.json", out=path, plan=True)
    return path, [c["id"] for c in json.loads(path.read_text())["cells"]]


def _build_cells(tiny_data, tiny_cfg, cells: Path, ids: list[str]) -> None:
    for cid in ids:
        tile_cache.run(tiny_cfg, items=tiny_data["stac"] / "items.json", out=cells / cid, cell=cid)


@pytest.fixture(scope="module")
def fanned(tiny_data, tiny_cfg, tmp_path_factory) -> dict:
    """Plan, every cell on its own, then the gather: as the Snakemake jobs run them."""
    root = tmp_path_factory.mktemp("fanout")
    plan, ids = _plan(tiny_data, tiny_cfg, root)
    _build_cells(tiny_data, tiny_cfg, root / "cells", ids)
    items = tiny_data["stac"] / "items.json"
    summary = tile_cache.run(tiny_cfg, items=items, out=root / "cache", gather=root / "cells")
    return {"root": root, "plan": plan, "ids": ids, "summary": summary}


def test_the_plan_lists_the_cells_of_one_process_run(fanned, tiny_data):
    index = json.loads((tiny_data["cache"] / "index.json").read_text())
    planned = [e["id"] for e in index["cells"]] + index["skipped_cells"]
    assert sorted(fanned["ids"]) == sorted(planned) and len(planned) > 1
    plan = json.loads(fanned["plan"].read_text())
    assert plan["fingerprint"] == index["fingerprint"]
    assert plan["crs"] == index["crs"] and plan["cell_size"] == index["cell_size"]
    for cell in plan["cells"]:
        assert cell["items"] >= 1 and cell["mem_mb"] >= 1000 and cell["mem_mb"] % 100 == 0


def test_gathered_cells_equal_the_one_process_cache_byte_for_byte(fanned, tiny_data):
    cache = fanned["root"] / "cache"
    assert _digests(cache) == _digests(tiny_data["cache"])
    assert _listing(cache) == _listing(tiny_data["cache"])  # no record, plan or staging file
    assert fanned["summary"]["cells"] == len(list(cache.glob("*.zarr")))
    assert not [p for p in fanned["root"].iterdir() if p.name.startswith(".")]


def test_the_gather_links_the_cells_stores_instead_of_copying(fanned):
    cid = next(i for i in fanned["ids"] if (fanned["root"] / "cache" / f"{i}.zarr").is_dir())
    built = fanned["root"] / "cells" / cid / f"{cid}.zarr"
    files = [p.relative_to(built) for p in built.rglob("*") if p.is_file()]
    assert files
    for rel in files:
        assert os.path.samefile(built / rel, fanned["root"] / "cache" / f"{cid}.zarr" / rel)


def test_an_unknown_cell_is_an_error_naming_the_valid_ids(fanned, tiny_data, tiny_cfg, tmp_path):
    items = tiny_data["stac"] / "items.json"
    with pytest.raises(DataError) as err:
        tile_cache.run(tiny_cfg, items=items, out=tmp_path / "x", cell="32633_0000000_0000000")
    message = str(err.value)
    assert "unknown tile_cache cell '32633_0000000_0000000'" in message
    assert all(cid in message for cid in fanned["ids"])
    assert not list(tmp_path.iterdir())  # checked before any work: nothing written


def test_the_command_line_exits_2_naming_the_valid_ids(fanned, tiny_data, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "configs" / "ci_tiny.yaml", params)
    args = ["tile_cache", "--params", str(params), "--items", str(tiny_data["stac"] / "items.json")]
    assert main([*args, "--cell", "nope", "--out", str(tmp_path / "cell")]) == 2
    assert "unknown tile_cache cell 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "cell").exists()
    with pytest.raises(SystemExit):  # argparse: the modes exclude each other
        main([*args, "--plan", "--cell", fanned["ids"][0], "--out", str(tmp_path / "x")])


def test_the_gather_names_missing_and_stale_cells_and_writes_nothing(
    fanned, tiny_data, tiny_cfg, tmp_path
):
    cells = tmp_path / "cells"
    shutil.copytree(fanned["root"] / "cells", cells)
    gone, stale = fanned["ids"][0], fanned["ids"][1]
    shutil.rmtree(cells / gone)
    record = cells / stale / f"{stale}.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "fingerprint": "other"}))
    with pytest.raises(DataError) as err:
        tile_cache.run(
            tiny_cfg, items=tiny_data["stac"] / "items.json", out=tmp_path / "cache", gather=cells
        )
    message = str(err.value)
    assert f"1 not built: {gone}" in message
    assert "1 built from another plan" in message and stale in message
    assert "--cell ID" in message
    assert not (tmp_path / "cache").exists() and not (tmp_path / ".cache.partial").exists()


def test_a_cell_that_fails_leaves_no_folder(tmp_path):
    bands = ["blue", "green", "red"]
    cfg = config_from_dict(
        {
            "demo_catalog": {"size": 64, "dates": ["2022-05-11"]},
            "tile_cache": {"bands": bands, "cell_size": 32},
            "data": {"bands": bands},
        }
    )
    demo_catalog.run(cfg, out=tmp_path / "demo")
    stac_query.run(cfg, catalog_dir=tmp_path / "demo", out=tmp_path / "stac")
    items = tmp_path / "stac" / "items.json"
    _, ids = _plan({"stac": tmp_path / "stac"}, cfg, tmp_path)
    for item in pystac.ItemCollection.from_file(str(items)):  # every red band: truncated
        href = Path(item.assets["red"].get_absolute_href())
        href.write_bytes(href.read_bytes()[:1000])
    out = tmp_path / "cells" / ids[0]
    with pytest.raises(DataError, match="red"):
        tile_cache.run(cfg, items=items, out=out, cell=ids[0])
    assert not out.exists() and not list((tmp_path / "cells").iterdir())


def test_the_modes_exclude_each_other(tiny_data, tiny_cfg, tmp_path):
    with pytest.raises(ValueError, match=r"modes \['plan', 'gather'\] exclude each other"):
        tile_cache.run(
            tiny_cfg,
            items=tiny_data["stac"] / "items.json",
            out=tmp_path,
            plan=True,
            gather=tmp_path,
        )


def test_the_memory_estimate_grows_with_the_cell_and_covers_a_real_job(fanned, tiny_data, tmp_path):
    assert cell_mem_mb(50, 10, 256) < cell_mem_mb(100, 10, 256) < cell_mem_mb(100, 10, 1024)
    assert cell_mem_mb(100, 10, 1024) > 4 * 1024  # 100 steps of 10 uint16 bands, 1024 px: 4 GB+
    # a real `geogfm tile_cache --cell` process stays under what the plan asks for its job
    plan = json.loads(fanned["plan"].read_text())
    cell = max(plan["cells"], key=lambda c: c["items"])
    params = tmp_path / "params.yaml"
    shutil.copy(Path(__file__).resolve().parents[2] / "configs" / "ci_tiny.yaml", params)
    args = ["tile_cache", "--params", str(params), "--items", str(tiny_data["stac"] / "items.json"),
            "--cell", cell["id"], "--out", str(tmp_path / "c")]  # fmt: skip
    # (VmHWM: this process's peak; ru_maxrss would count the forking pytest process's memory)
    code = (
        "import sys; from geogfm.cli import main; rc = main(sys.argv[1:]); "
        "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]); "
        "sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mb = int(proc.stdout.split()[-1]) / 1024  # (kB)
    assert peak_mb < cell["mem_mb"], (peak_mb, cell)
    assert tree_sha256(tmp_path / "c" / f"{cell['id']}.zarr") == tree_sha256(
        fanned["root"] / "cells" / cell["id"] / f"{cell['id']}.zarr"
    )
