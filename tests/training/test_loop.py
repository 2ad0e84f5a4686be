import math
from pathlib import Path

import pytest
import torch
import yaml

from geogfm.core.config import TrainConfig, config_from_dict
from geogfm.core.errors import ConfigError
from geogfm.data.loaders import build_dataloader
from geogfm.models.gfm_mae import MaskedAutoencoder
from geogfm.models.gfm_vit import GeoViTBackbone
from geogfm.training.loop import fit
from geogfm.training.optimizer import build_scheduler, layer_id, param_groups, param_groups_lrd

ROOT = Path(__file__).resolve().parents[2]


def _loaders(cfg, data, batch_size):
    data_cfg = cfg.data.model_copy(
        update={
            "manifest": str(data["manifest"]),
            "cache_dir": str(data["cache"]),
            "stats": str(data["stats"]),
            "batch_size": batch_size,
        }
    )
    return build_dataloader(data_cfg, seed=0)


def _model(cfg):
    torch.manual_seed(0)
    return MaskedAutoencoder(cfg.model, GeoViTBackbone(cfg.model))


def test_short_fit_on_demo_patches_lowers_the_loss(tiny_cfg, tiny_data):
    train_cfg = TrainConfig(
        epochs=3, batch_size=8, optimizer={"lr": 0.05}, device="cpu", log_every=1
    )
    events = []
    history = fit(
        _model(tiny_cfg),
        _loaders(tiny_cfg, tiny_data, 8),
        train_cfg,
        callbacks=[lambda event, m: events.append((event, m))],
    )
    losses = history["train_loss"]
    assert history["steps"] == len(losses) > 3
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first
    assert len(history["val_loss"]) == 3 and all(math.isfinite(v) for v in history["val_loss"])
    assert [e for e, _ in events].count("epoch") == 3
    assert {"loss", "lr", "images_per_s"} <= set(events[0][1])


def test_fit_is_deterministic_under_a_seed(tiny_cfg, tiny_data):
    train_cfg = TrainConfig(epochs=1, batch_size=8, max_steps=3, device="cpu")
    runs = []
    for _ in range(2):
        model = _model(tiny_cfg)
        fit(model, _loaders(tiny_cfg, tiny_data, 8), train_cfg)
        runs.append(model.state_dict())
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=0, atol=0)


def test_max_steps_stops_early(tiny_cfg, tiny_data):
    train_cfg = TrainConfig(epochs=5, batch_size=8, max_steps=2, device="cpu")
    history = fit(_model(tiny_cfg), _loaders(tiny_cfg, tiny_data, 8), train_cfg)
    assert history["steps"] == 2


def test_loader_batch_size_must_match_the_config(tiny_cfg, tiny_data):
    train_cfg = TrainConfig(epochs=1, batch_size=16, device="cpu")
    with pytest.raises(ValueError, match=r"train.batch_size is 16 .* batches of 8"):
        fit(_model(tiny_cfg), _loaders(tiny_cfg, tiny_data, 8), train_cfg)


def test_non_finite_loss_names_the_step(tiny_cfg, tiny_data):
    model = _model(tiny_cfg)
    with torch.no_grad():
        model.encoder.patch_embed.proj.weight.fill_(float("nan"))
    train_cfg = TrainConfig(epochs=1, batch_size=8, device="cpu")
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at step 0"):
        fit(model, _loaders(tiny_cfg, tiny_data, 8), train_cfg)


def test_no_weight_decay_on_norms_biases_and_tokens(tiny_cfg):
    model = _model(tiny_cfg)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert "encoder.cls_token" in undecayed and "decoder.mask_token" in undecayed
    assert all(names[id(p)].endswith("weight") for p in decay["params"])
    assert not any("norm" in names[id(p)] for p in decay["params"])


def test_warmup_then_cosine_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, warmup_steps=4, total_steps=12)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] < 0.05
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))


def test_constant_schedule_after_warmup():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, warmup_steps=2, total_steps=6, schedule="constant")
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0])


def test_layer_wise_lr_decay_scales_deeper_layers_less(tiny_cfg):
    torch.manual_seed(0)
    encoder = GeoViTBackbone(tiny_cfg.model.model_copy(update={"depth": 3}))
    groups = param_groups_lrd(encoder, 0.05, 0.5, lr=1e-3)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(encoder.named_parameters())
    # 3 blocks: embeddings 0.5**4, block i 0.5**(3 - i), the final norm 1
    assert scale[id(named["patch_embed.proj.weight"])] == 0.5**4
    assert scale[id(named["cls_token"])] == 0.5**4
    assert [scale[id(named[f"blocks.{i}.attn.qkv.weight"])] for i in range(3)] == [
        0.5**3,
        0.5**2,
        0.5**1,
    ]
    assert scale[id(named["norm.weight"])] == 1.0
    assert decay[id(named["blocks.0.attn.qkv.weight"])] == 0.05
    assert decay[id(named["blocks.0.norm1.weight"])] == 0.0 and decay[id(named["cls_token"])] == 0.0
    assert all(g["lr"] == pytest.approx(1e-3 * g["lr_scale"]) for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(named)
    assert layer_id("encoder.blocks.2.mlp.fc1.weight", 3) == 3
    with pytest.raises(ValueError, match=r"layer_decay is 1.5; use a value in \(0, 1\]"):
        param_groups_lrd(encoder, 0.05, 1.5)


def test_a_batch_larger_than_the_train_split_is_refused(tiny_cfg, tiny_data):
    train_cfg = TrainConfig(epochs=1, batch_size=100, device="cpu")
    with pytest.raises(
        ValueError, match=r"train.batch_size is 100 but the train split has only 83"
    ):
        fit(_model(tiny_cfg), _loaders(tiny_cfg, tiny_data, 100), train_cfg)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lr", 0.0, r"train.optimizer.lr = 0.0: Input should be greater than 0"),
        ("lr", -1e-3, r"train.optimizer.lr = -0.001: Input should be greater than 0"),
        ("epochs", 0, r"train.epochs = 0: Input should be greater than or equal to 1"),
    ],
)
def test_non_positive_lr_and_zero_epochs_are_refused_at_load(key, value, message):
    raw = yaml.safe_load((ROOT / "configs" / "ci_tiny.yaml").read_text())
    if key == "lr":
        raw["train"]["optimizer"]["lr"] = value
    else:
        raw["train"][key] = value
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)
