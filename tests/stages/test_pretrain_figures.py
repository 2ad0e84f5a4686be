import json

import matplotlib.image
import pytest
import torch

from geogfm.core.errors import DataError
from geogfm.stages import figures, pretrain
from geogfm.training.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def pretrained(tiny_cfg, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "results" / "pretrain"
    metrics = pretrain.run(
        tiny_cfg,
        cache=tiny_data["cache"],
        manifest=tiny_data["manifest"],
        stats=tiny_data["stats"],
        out=out,
    )
    return out, metrics


def test_pretrain_writes_a_self_describing_checkpoint(pretrained, tiny_cfg, tiny_data):
    out, metrics = pretrained
    assert metrics["steps"] == tiny_cfg.train.max_steps
    model, ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["bands"] == tiny_cfg.data.bands
    assert ckpt["stats"] == json.loads(tiny_data["stats"].read_text())
    assert ckpt["config"]["model"]["in_chans"] == len(tiny_cfg.data.bands)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["step"] == metrics["steps"] and "torch" in meta["versions"]
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    assert (out / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert not list(out.glob(".*tmp*")), "temporary files left behind"
    # the reloaded weights are the trained ones
    x = torch.zeros(1, len(ckpt["bands"]), 16, 16)
    assert torch.isfinite(model.encoder(x)).all()


def test_figures_draws_reconstructions_and_curves(pretrained, tiny_cfg, tiny_data, tmp_path):
    out, _ = pretrained
    written = figures.run(
        tiny_cfg,
        checkpoint=out / "checkpoint.pt",
        cache=tiny_data["cache"],
        manifest=tiny_data["manifest"],
        out=tmp_path / "figures",
    )
    recon = matplotlib.image.imread(written["reconstructions"])
    assert recon.shape[1] > recon.shape[0] / 2 and recon.std() > 0.05
    assert matplotlib.image.imread(written["loss_curve"]).std() > 0.01


def test_figures_refuses_rgb_bands_the_checkpoint_lacks(pretrained, tiny_cfg, tiny_data, tmp_path):
    out, _ = pretrained
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.figures.rgb_bands = ["red", "green", "rededge1"]
    with pytest.raises(DataError, match=r"figures.rgb_bands \['rededge1'\] are not among"):
        figures.run(
            cfg,
            checkpoint=out / "checkpoint.pt",
            cache=tiny_data["cache"],
            manifest=tiny_data["manifest"],
            out=tmp_path,
        )
