from pathlib import Path

import pytest
import yaml

from geogfm.core.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_from_dict,
    load_params,
)
from geogfm.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_quick_start_arguments_are_accepted():
    model_cfg = ModelConfig(architecture="gfm_vit", embed_dim=768, depth=12, image_size=224)
    data_cfg = DataConfig(dataset="stac", patch_size=16, num_workers=8)
    train_cfg = TrainConfig(epochs=50, batch_size=64, optimizer={"name": "adamw", "lr": 2e-4})
    assert model_cfg.num_heads == 12  # derived: embed_dim // 64
    assert data_cfg.num_workers == 8
    assert train_cfg.optimizer.lr == 2e-4
    assert train_cfg.effective_lr == pytest.approx(2e-4 * 64 / 256)


@pytest.mark.parametrize("path", [ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))])
def test_shipped_params_and_presets_are_valid(path):
    cfg = load_params(path)
    assert cfg.model.in_chans == len(cfg.data.bands)
    assert cfg.model.patch_size == cfg.data.patch_size
    assert cfg.data.chip_size == cfg.model.image_size
    assert cfg.data.batch_size == cfg.train.batch_size


@pytest.mark.parametrize(
    ("raw", "key", "expected"),
    [
        # unknown keys, at the top and nested
        ({"trian": {}}, "trian", "unknown key"),
        ({"train": {"optimizer": {"lrr": 0.1}}}, "train.optimizer.lrr", "unknown key"),
        # wrong types
        ({"train": {"epochs": "ten"}}, "train.epochs", "valid integer"),
        ({"train": {"epochs": 2.5}}, "train.epochs", "valid integer"),
        ({"model": {"norm_pix_loss": "yes"}}, "model.norm_pix_loss", "valid boolean"),
        ({"data": {"bands": "red"}}, "data.bands", "valid list"),
        ({"model": "big"}, "model", "valid dictionary"),
        # out of range
        ({"train": {"optimizer": {"lr": -1.0}}}, "train.optimizer.lr", "greater than 0"),
        ({"model": {"mask_ratio": 1.0}}, "model.mask_ratio", "less than 1"),
        ({"train": {"epochs": 0}}, "train.epochs", "greater than or equal to 1"),
        ({"stac_query": {"max_cloud_cover": 120.0}}, "stac_query.max_cloud_cover", "100"),
        ({"stac_query": {"bbox": [10.0, 46.0, 9.0, 47.0]}}, "stac_query.bbox", "west < east"),
        ({"train": {"device": "tpu"}}, "train.device", "cuda:N"),
        # bad choices
        ({"train": {"optimizer": {"name": "sgd"}}}, "train.optimizer.name", "'adamw'"),
        ({"data": {"bands": ["red", "B99"]}}, "data.bands", "unknown band(s) ['B99']"),
    ],
)
def test_bad_values_name_the_dotted_key(raw, key, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    message = str(info.value)
    assert key in message
    assert expected in message


def test_yaml_exponent_without_dot_gets_a_hint(tmp_path):
    # YAML 1.1 reads 1e-4 as a string: a classic silent trap, here a clear error
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  optimizer:\n    lr: 1e-4\n")
    with pytest.raises(ConfigError, match=r"train\.optimizer\.lr = '1e-4'.*write it with a dot"):
        load_params(path)


def test_unquoted_date_gets_a_hint(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("demo_catalog:\n  dates: [2022-05-11]\n")
    with pytest.raises(ConfigError, match=r"demo_catalog\.dates\.0.*quote it"):
        load_params(path)


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"epochs": 0, "batch_size": "x"}, "model": {"foo": 1}})
    message = str(info.value)
    assert "3 invalid value(s)" in message
    for key in ("train.epochs", "train.batch_size", "model.foo"):
        assert key in message


def test_derived_keys_cannot_be_set_by_hand():
    with pytest.raises(ConfigError, match=r"model\.in_chans: set from len\(data\.bands\)"):
        config_from_dict({"model": {"in_chans": 3}})


def test_derived_values_follow_their_source():
    cfg = config_from_dict(
        {
            "data": {"bands": ["red", "green", "blue"], "patch_size": 8},
            "model": {"image_size": 64},
            "train": {"batch_size": 16},
        }
    )
    assert (cfg.model.in_chans, cfg.model.patch_size) == (3, 8)
    assert (cfg.data.chip_size, cfg.data.batch_size) == (64, 16)


def test_checks_across_keys_name_both_keys():
    with pytest.raises(ConfigError, match=r"model\.image_size=100 .* patch size 16"):
        config_from_dict({"model": {"image_size": 100}})
    with pytest.raises(ConfigError, match=r"data\.bands \['coastal'\] are not cached.*tile_cache"):
        config_from_dict({"data": {"bands": ["red", "coastal"]}})
    with pytest.raises(ConfigError, match=r"model\.embed_dim=100 is not divisible"):
        config_from_dict({"model": {"embed_dim": 100, "num_heads": 3}})


def test_missing_params_file_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="--params"):
        load_params(tmp_path / "nope.yaml")


def test_params_not_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(path)


def test_model_frames_follow_data_frames():
    cfg = config_from_dict({"data": {"num_frames": 3}})
    assert cfg.model.num_frames == 3
    with pytest.raises(ConfigError, match=r"model\.num_frames: set from data\.num_frames"):
        config_from_dict({"model": {"num_frames": 2}})
