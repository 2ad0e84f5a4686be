"""``geogfm model_card``: the card of a real tiny run, complete, linked and byte-for-byte stable."""

import json
import re
import shutil
from pathlib import Path

import pytest

from geogfm.core.config import load_params
from geogfm.stages import figures, model_card, pretrain

ROOT = Path(__file__).resolve().parents[2]


def _paths(root: Path) -> dict[str, Path]:
    return {
        "lock": root / "data/stac/lock.json",
        "cache": root / "data/cache",
        "audit": root / "data/manifests/split_audit.json",
        "stats": root / "results/stats/channel_stats.json",
        "meta": root / "results/pretrain/meta.json",
        "metrics": root / "results/pretrain/metrics.json",
        "evaluation": root / "results/evaluate/metrics.json",
        "figures": root / "results/figures",
        "out": root / "results/model_card.md",
    }


@pytest.fixture(scope="module")
def run_root(tiny_data, tmp_path_factory) -> Path:
    """The tiny data stages, pretraining and figures, in the DAG's layout."""
    root = tmp_path_factory.mktemp("card")
    shutil.copytree(tiny_data["demo"].parents[1], root, dirs_exist_ok=True)
    cfg = load_params(ROOT / "configs" / "ci_tiny.yaml")
    kw = {"cache": root / "data/cache", "manifest": root / "data/manifests/patches.parquet"}
    pretrain.run(cfg, **kw, stats=root / "results/stats/channel_stats.json",
                 out=root / "results/pretrain")  # fmt: skip
    figures.run(
        cfg, **kw, checkpoint=root / "results/pretrain/checkpoint.pt", out=root / "results/figures"
    )
    return root


@pytest.fixture
def card(run_root, tiny_cfg) -> str:
    model_card.run(tiny_cfg, **_paths(run_root))
    return _paths(run_root)["out"].read_text()


def test_card_states_the_data_provenance(card, run_root):
    lock = json.loads((run_root / "data/stac/lock.json").read_text())
    assert "| catalog | demo |" in card
    assert "| collections | sentinel-2-l2a |" in card
    assert "| cloud filter | eo:cloud_cover <= 90.0 % |" in card
    assert f"| items found | {len(lock['items'])} |" in card
    times = sorted(i["datetime"] for i in lock["items"])
    assert f"| date range | {times[0]} to {times[-1]} |" in card
    for item in lock["items"]:
        assert f"| {item['id']} | sentinel-2-l2a | {item['datetime']} |" in card
    index = json.loads((run_root / "data/cache/index.json").read_text())
    for cell in index["cells"]:
        assert f"| {cell['id']} | {cell['n_times']} |" in card


def test_card_has_stats_split_config_metrics_and_lineage(card, run_root):
    stats = json.loads((run_root / "results/stats/channel_stats.json").read_text())
    for i, band in enumerate(stats["bands"]):
        assert f"| {band} | {stats['count'][i]} | {stats['mean'][i]:.4g} | " in card
    audit = json.loads((run_root / "data/manifests/split_audit.json").read_text())
    assert f"| train | {audit['rows']['train']} | {audit['n_blocks']['train']} |" in card
    assert "Independent leakage audit: passed." in card
    assert '"mask_ratio": 0.75' in card and '"max_steps": 4' in card
    metrics = json.loads((run_root / "results/pretrain/metrics.json").read_text())
    assert f"| train_loss | {metrics['train_loss']:.4g} |" in card
    meta = json.loads((run_root / "results/pretrain/meta.json").read_text())
    for cid, sha in meta["lineage"]["cache"]["cells"].items():
        assert f"| cell {cid} | {sha} |" in card
    assert f"| STAC lock | {meta['lineage']['stac_lock']['sha256']} |" in card
    assert "Not evaluated" in card


def test_figure_links_resolve(card, run_root):
    links = re.findall(r"!\[[^]]*\]\(([^)]+)\)", card)
    assert sorted(links) == ["figures/loss_curve.png", "figures/reconstructions.png"]
    assert all((run_root / "results" / link).is_file() for link in links)


def test_same_inputs_elsewhere_give_the_same_bytes(card, run_root, tiny_cfg, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(run_root, copy)
    (copy / "results/model_card.md").unlink()
    model_card.run(tiny_cfg, **_paths(copy))
    assert (copy / "results/model_card.md").read_text() == card
    assert str(run_root) not in card  # no machine-specific path


def test_evaluation_metrics_appear_with_their_intervals(run_root, tiny_cfg, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(run_root, root)
    (root / "results/evaluate").mkdir()
    evaluation = {
        "linear_probe": {"accuracy": 0.81, "accuracy_low": 0.74, "accuracy_high": 0.87},
        "reconstruction": {"psnr": 23.456789, "n_patches": 51},
    }
    (root / "results/evaluate/metrics.json").write_text(json.dumps(evaluation))
    model_card.run(tiny_cfg, **_paths(root))
    card = (root / "results/model_card.md").read_text()
    assert "| linear_probe.accuracy | 0.81 | [0.74, 0.87] |" in card
    assert "| reconstruction.psnr | 23.46 |  |" in card
    assert "| reconstruction.n_patches | 51 |  |" in card
    assert "accuracy_low" not in card and "Not evaluated" not in card


def test_missing_input_names_the_stage_to_run(run_root, tiny_cfg, tmp_path):
    paths = {**_paths(run_root), "out": tmp_path / "card.md"}
    paths["meta"] = tmp_path / "nope/meta.json"
    with pytest.raises(FileNotFoundError, match=r"checkpoint metadata .* run `geogfm pretrain`"):
        model_card.run(tiny_cfg, **paths)
    assert not (tmp_path / "card.md").exists()
