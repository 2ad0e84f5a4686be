import pytest
import torch

from geogfm.models.gfm_mae import patchify
from geogfm.modules.losses.mae_loss import mae_loss

B, C, p, h, w = 2, 3, 4, 2, 3
L, K = h * w, p * p * C


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(B, C, h * p, w * p, generator=g)
    valid = torch.rand(B, h * p, w * p, generator=g) > 0.3  # (B, H, W), True = clear
    pred = torch.randn(B, L, K, generator=g)
    mask = torch.zeros(B, L)
    mask[:, [0, 2, 5]] = 1.0  # 1 = removed
    return imgs, valid, pred, mask


def _weights(valid: torch.Tensor) -> torch.Tensor:
    return patchify(valid[:, None].float(), p)  # (B, L, p*p)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_all_valid_equals_mae(norm_pix: bool) -> None:
    imgs, _, pred, mask = _batch()
    target = patchify(imgs, p)
    # facebookresearch/mae forward_loss
    ref_target = target
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        ref_target = (target - mean) / (var + 1e-6) ** 0.5
    ref = (((pred - ref_target) ** 2).mean(-1) * mask).sum() / mask.sum()
    torch.testing.assert_close(mae_loss(pred, target, mask, norm_pix=norm_pix), ref)
    ones = torch.ones(B, L, p * p)
    torch.testing.assert_close(mae_loss(pred, target, mask, ones, norm_pix=norm_pix), ref)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_unchanged_when_visible_patches_change(norm_pix: bool) -> None:
    imgs, valid, pred, mask = _batch()
    target, weight = patchify(imgs, p), _weights(valid)
    loss = mae_loss(pred, target, mask, weight, norm_pix=norm_pix)
    kept = mask == 0
    target2, pred2 = target.clone(), pred.clone()
    target2[kept] = 50.0 * torch.randn_like(target2[kept])
    pred2[kept] = -7.0
    torch.testing.assert_close(mae_loss(pred2, target2, mask, weight, norm_pix=norm_pix), loss)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_unchanged_when_invalid_pixels_change(norm_pix: bool) -> None:
    imgs, valid, pred, mask = _batch()
    weight = _weights(valid)
    pred = pred.requires_grad_()
    loss = mae_loss(pred, patchify(imgs, p), mask, weight, norm_pix=norm_pix)

    imgs2 = imgs.clone()
    invalid = ~valid[:, None].expand_as(imgs)
    imgs2[invalid] = 1e4  # a fill value ...
    imgs2[:, 0][~valid] = float("nan")  # ... or NaN in band 0
    loss2 = mae_loss(pred, patchify(imgs2, p), mask, weight, norm_pix=norm_pix)
    torch.testing.assert_close(loss2, loss)

    # no gradient reaches a prediction of an invalid pixel
    loss2.backward()
    grad = pred.grad
    assert torch.isfinite(grad).all()
    invalid_values = patchify(invalid.float(), p) > 0  # (B, L, K)
    assert (grad[invalid_values] == 0).all()
    removed_valid = (mask[..., None].expand_as(grad) > 0) & ~invalid_values
    assert (grad[removed_valid] != 0).all()


def test_changes_when_a_valid_removed_pixel_changes() -> None:
    # the invariances above are not vacuous
    imgs, valid, pred, mask = _batch()
    valid[:] = True
    loss = mae_loss(pred, patchify(imgs, p), mask, _weights(valid))
    imgs[0, 1, 0, 0] += 3.0  # pixel (0, 0) lies in patch 0, which is removed
    assert not torch.allclose(mae_loss(pred, patchify(imgs, p), mask, _weights(valid)), loss)


@pytest.mark.parametrize("norm_pix", [False, True])
def test_zero_when_all_removed_patches_invalid(norm_pix: bool) -> None:
    imgs, _, pred, mask = _batch()
    weight = torch.ones(B, L, p * p)
    weight[mask > 0] = 0.0  # every removed patch is all cloud
    pred = pred.requires_grad_()
    loss = mae_loss(pred, patchify(imgs, p), mask, weight, norm_pix=norm_pix)
    assert loss.item() == 0.0
    loss.backward()
    assert (pred.grad == 0).all()


def test_empty_patch_contributes_nothing() -> None:
    imgs, valid, pred, mask = _batch()
    weight = _weights(valid)
    weight[0, 2] = 0.0  # a removed patch with no valid pixel
    target = patchify(imgs, p)
    loss = mae_loss(pred, target, mask, weight)
    pred2 = pred.clone()
    pred2[0, 2] += 100.0
    torch.testing.assert_close(mae_loss(pred2, target, mask, weight), loss)


def test_per_pixel_weight_equals_per_band_weight() -> None:
    # (B, L, p*p) is broadcast over bands in patchify's (row, col, band) layout
    imgs, valid, pred, mask = _batch()
    per_band = patchify(valid[:, None].expand(B, C, -1, -1).float(), p)  # (B, L, p*p*C)
    target = patchify(imgs, p)
    for norm_pix in (False, True):
        torch.testing.assert_close(
            mae_loss(pred, target, mask, _weights(valid), norm_pix=norm_pix),
            mae_loss(pred, target, mask, per_band, norm_pix=norm_pix),
        )
