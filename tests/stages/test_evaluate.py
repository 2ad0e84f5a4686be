import json

import matplotlib.image
import pytest

from geogfm.core.errors import DataError
from geogfm.stages import evaluate, pretrain

FIGURES = [
    "probe_scores.png",
    "confusion_matrix.png",
    "embedding_map.png",
    "error_maps.png",
    "reconstruction_psnr.png",
]


@pytest.fixture(scope="module")
def checkpoint(tiny_cfg, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain_eval") / "results" / "pretrain"
    pretrain.run(
        tiny_cfg,
        cache=tiny_data["cache"],
        manifest=tiny_data["manifest"],
        stats=tiny_data["stats"],
        out=out,
    )
    return out / "checkpoint.pt"


def _run(cfg, data, checkpoint, out, **over):
    paths = {
        "checkpoint": checkpoint,
        "cache": data["cache"],
        "manifest": data["manifest"],
        "stats": data["stats"],
        "labels": data["demo"],
        "out": out,
    }
    return evaluate.run(cfg, **{**paths, **over})


@pytest.fixture(scope="module")
def evaluated(tiny_cfg, tiny_data, checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "results" / "evaluate"
    summary = _run(tiny_cfg, tiny_data, checkpoint, out)
    return out, summary


def test_evaluate_writes_metrics_with_intervals_for_both_encoders_and_baselines(evaluated):
    out, summary = evaluated
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_patches"] > 0 and m["n_classes"] >= 2 and m["n_folds"] >= 2
    for enc in ("pretrained", "random_init"):
        for probe, key in (
            ("linear_probe", "accuracy"),
            ("knn5", "accuracy"),
            ("knn20", "accuracy"),
            ("retrieval", "map"),
            ("segmentation", "miou"),
        ):
            block = m[enc][probe]
            assert 0.0 <= block[f"{key}_low"] <= block[key] <= block[f"{key}_high"] <= 1.0
    rec = m["reconstruction"]
    for name in ("mae", "patch_mean", "token_mean"):
        assert rec[name]["psnr_low"] <= rec[name]["psnr"] <= rec[name]["psnr_high"]
        assert -1.0 <= rec[name]["ssim"] <= 1.0
        assert "psnr_red" in rec[name]
    # paired comparisons: the mean of the per-patch differences, with its own interval
    diff = m["pretrained_minus_random_init"]["linear_probe"]
    assert diff["accuracy"] == pytest.approx(
        m["pretrained"]["linear_probe"]["accuracy"] - m["random_init"]["linear_probe"]["accuracy"]
    )
    assert diff["accuracy_low"] <= diff["accuracy"] <= diff["accuracy_high"]
    gain = rec["mae_minus_patch_mean"]
    assert gain["psnr"] == pytest.approx(rec["mae"]["psnr"] - rec["patch_mean"]["psnr"])
    assert gain["psnr_low"] <= gain["psnr"] <= gain["psnr_high"]
    assert gain["ssim_low"] <= gain["ssim"] <= gain["ssim_high"]
    assert summary["pretrained_linear_probe"] == pytest.approx(
        m["pretrained"]["linear_probe"]["accuracy"], abs=1e-4
    )
    report = json.loads((out / "report.json").read_text())
    assert sum(report["class_counts"].values()) <= m["n_patches"]
    assert report["buffer_m"] > 0
    # folds hold whole blocks: no block in two folds
    seen = [b for blocks in report["blocks_per_fold"].values() for b in blocks]
    assert len(seen) == len(set(seen))


def test_evaluate_draws_every_figure(evaluated):
    out, _ = evaluated
    for name in FIGURES:
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0.02, name
    assert not list(out.parent.glob("*.tmp*")), "temporary output left behind"


def test_evaluate_is_deterministic(evaluated, tiny_cfg, tiny_data, checkpoint, tmp_path):
    out, _ = evaluated
    _run(tiny_cfg, tiny_data, checkpoint, tmp_path / "again")
    assert (tmp_path / "again" / "metrics.json").read_bytes() == (out / "metrics.json").read_bytes()


def test_evaluate_refuses_a_checkpoint_of_other_statistics(
    tiny_cfg, tiny_data, checkpoint, tmp_path
):
    stats = json.loads(tiny_data["stats"].read_text())
    stats["mean"][stats["bands"].index("nir")] += 0.01
    other = tmp_path / "stats.json"
    other.write_text(json.dumps(stats))
    with pytest.raises(DataError, match=r"other channel statistics.*nir\.mean"):
        _run(tiny_cfg, tiny_data, checkpoint, tmp_path / "out", stats=other)
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_checkpoint_of_other_bands(tiny_cfg, tiny_data, checkpoint, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.data.bands = list(reversed(cfg.data.bands))
    with pytest.raises(DataError, match=r"trained on bands \['blue'.*data.bands is \['swir16'"):
        _run(cfg, tiny_data, checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_names_a_missing_label_collection(tiny_cfg, tiny_data, checkpoint, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.evaluate.label_collection = "worldcover"
    with pytest.raises(DataError, match=r"no collection 'worldcover'.*landcover"):
        _run(cfg, tiny_data, checkpoint, tmp_path / "out")
