"""fit's features on tiny in-memory batches: accumulation, AMP, EMA, schedules, PSNR, callbacks."""

import logging
import math

import pytest
import torch
from _synthetic import batches, tiny_model

from geogfm.core.config import TrainConfig
from geogfm.training.callbacks import LoggingCallback
from geogfm.training.ema import ModelEMA
from geogfm.training.loop import fit
from geogfm.training.steps import evaluate, train_step


def test_two_micro_batches_make_the_gradient_of_one_batch_of_both():
    data = batches(2, batch_size=4)
    both = {k: torch.cat([b[k] for b in data]) for k in ("image", "valid")}
    models = tiny_model(), tiny_model()
    for model, batch in zip(models, (data, both), strict=True):
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        gen = torch.Generator().manual_seed(0)  # (4, L) twice == (8, L) once: the same masks
        train_step(model, batch, opt, device=torch.device("cpu"), generator=gen)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_accumulation_counts_optimizer_steps_and_scales_the_lr():
    cfg = TrainConfig(epochs=1, batch_size=4, accum_steps=2, device="cpu", log_every=1)
    assert cfg.effective_batch == 8 and cfg.effective_lr == pytest.approx(1.5e-4 * 8 / 256)
    history = fit(tiny_model(), (batches(7), None), cfg)
    assert history["steps"] == 3  # 7 batches // 2: the odd one is left out
    with pytest.raises(ValueError, match=r"yields 1 batches of 4 .* train.accum_steps=2"):
        fit(tiny_model(), (batches(1), None), cfg)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(precision, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=4, precision=precision, device="cpu")
    history = fit(tiny_model(), (batches(3), batches(1, seed=9)), cfg)
    assert history["steps"] == 6 and all(math.isfinite(v) for v in history["train_loss"])
    assert all(math.isfinite(v) for v in history["val_loss"])


def test_ema_averages_the_weights_and_is_validated():
    model = tiny_model()
    ema = ModelEMA(model, 0.75)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(
            ema.module.get_parameter(name), 0.75 * before[name] + 0.25 * p.detach()
        )
    cfg = TrainConfig(epochs=1, batch_size=4, ema_decay=0.5, device="cpu")
    model = tiny_model()
    history = fit(model, (batches(4), batches(1, seed=9)), cfg)
    ema = history["ema"]
    val = evaluate(ema.module, batches(1, seed=9), device=torch.device("cpu"), seed=0)
    assert history["val_loss"] == [pytest.approx(val["val_loss"])]
    raw = evaluate(model, batches(1, seed=9), device=torch.device("cpu"), seed=0)
    assert raw["val_loss"] != val["val_loss"]


def test_val_psnr_is_in_normalised_units_on_the_removed_patches():
    model = tiny_model(norm_pix_loss=False)
    val = evaluate(model, batches(1, batch_size=6), device=torch.device("cpu"), seed=0)
    # one batch, plain MSE loss: the loss is the MSE the PSNR is made of, peak 1
    assert val["val_psnr"] == pytest.approx(-10 * math.log10(val["val_loss"]), rel=1e-5)


def test_constant_schedule_keeps_the_lr_after_warmup():
    cfg = TrainConfig(epochs=1, batch_size=4, schedule="constant", warmup_epochs=0.5, device="cpu")
    history = fit(tiny_model(), (batches(8), None), cfg)
    lr = cfg.effective_lr
    assert history["lr"] == pytest.approx([lr / 4, lr / 2, 3 * lr / 4, lr, lr, lr, lr, lr])


def test_logging_callback_logs_step_and_epoch_metrics(caplog):
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", log_every=2)
    with caplog.at_level(logging.INFO, logger="geogfm.training"):
        fit(tiny_model(), (batches(4), batches(1)), cfg, callbacks=[LoggingCallback()])
    lines = [r.getMessage() for r in caplog.records if r.name == "geogfm.training"]
    assert lines[0].startswith("step: step 2, epoch 0, loss ")
    assert any(x.startswith("epoch: ") and "val_psnr" in x for x in lines)


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one():
    data = batches(3)
    eager, compiled = tiny_model(), tiny_model()
    fit(eager, (data, None), TrainConfig(epochs=1, batch_size=4, device="cpu"))
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", compile=True)
    fit(compiled, (data, None), cfg)
    for a, b in zip(eager.parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
