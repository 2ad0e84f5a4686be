"""DESIGN.md's quick start, as written, on demo data made by the real data stages."""

import math

import torch
from conftest import run_data_stages

from geogfm.core.config import config_from_dict


def test_quick_start_vit_base_one_step_on_demo_data(tmp_path, monkeypatch):
    # data stages with the quick start's 224 px images, at the DAG's default paths
    cfg = config_from_dict(
        {
            "demo_catalog": {"size": 512, "dates": ["2021-08-14", "2022-05-11", "2022-07-30"]},
            "tile_cache": {"cell_size": 256},
            "patch_manifest": {"stride": 32, "block_size": 256, "min_valid_fraction": 0.0},
            "model": {"image_size": 224},
            "data": {"patch_size": 16},
        }
    )
    run_data_stages(cfg, tmp_path)
    monkeypatch.chdir(tmp_path)

    # --- the quick start (small batch, one step) ---
    from geogfm.core.config import DataConfig, ModelConfig, TrainConfig
    from geogfm.data.loaders import build_dataloader
    from geogfm.training.loop import fit

    model_cfg = ModelConfig(architecture="gfm_vit", embed_dim=768, depth=12, image_size=224)
    data_cfg = DataConfig(dataset="stac", patch_size=16, num_workers=2, batch_size=2)
    train_cfg = TrainConfig(
        epochs=50, batch_size=2, optimizer={"name": "adamw", "lr": 2e-4}, max_steps=1
    )

    from geogfm.models.gfm_mae import MaskedAutoencoder
    from geogfm.models.gfm_vit import GeoViTBackbone

    encoder = GeoViTBackbone(model_cfg)
    model = MaskedAutoencoder(model_cfg, encoder)
    train_dl, val_dl = build_dataloader(data_cfg)
    before = model.encoder.patch_embed.proj.weight.detach().clone()
    history = fit(model, (train_dl, val_dl), train_cfg)
    # ---

    assert history["steps"] == 1 and math.isfinite(history["train_loss"][0])
    assert sum(p.numel() for p in encoder.parameters()) > 85e6  # ViT-B
    assert not torch.equal(before, model.encoder.patch_embed.proj.weight)
