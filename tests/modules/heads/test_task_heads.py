import pytest
import torch

from geogfm.modules.heads.classification_head import ClassificationHead
from geogfm.modules.heads.regression_head import RegressionHead
from geogfm.modules.heads.segmentation_head import SegmentationHead

B, D, p, h, w = 2, 16, 4, 2, 3
L = h * w


def _tokens(T: int = 1) -> torch.Tensor:
    return torch.randn(B, 1 + T * L, D, generator=torch.Generator().manual_seed(0))


def test_classification_cls_and_mean() -> None:
    torch.manual_seed(0)
    x = _tokens().requires_grad_()
    cls = ClassificationHead(D, 5, pool="cls")
    mean = ClassificationHead(D, 5, pool="mean")
    assert cls(x).shape == mean(x).shape == (B, 5)
    torch.testing.assert_close(cls.pooled(x), x[:, 0])
    torch.testing.assert_close(mean.pooled(x), mean.norm(x[:, 1:].mean(1)))
    (cls(x).sum() + mean(x).sum()).backward()
    assert all(q.grad is not None for q in [*cls.parameters(), *mean.parameters()])
    with pytest.raises(ValueError, match="pool='max'"):
        ClassificationHead(D, 5, pool="max")


def test_segmentation_maps_each_token_to_its_patch() -> None:
    torch.manual_seed(0)
    head = SegmentationHead(D, 3, p, (h, w)).eval()
    x = _tokens()
    out = head(x)
    assert out.shape == (B, 3, h * p, w * p)
    x2 = x.clone()
    x2[:, 1 + 1 * w + 2] += 1.0  # patch token (1, 2) only
    changed = (head(x2) - out).abs().sum((0, 1)) > 0  # (H, W)
    expected = torch.zeros(h * p, w * p, dtype=torch.bool)
    expected[1 * p : 2 * p, 2 * p : 3 * p] = True
    assert torch.equal(changed, expected)


def test_segmentation_averages_dates_and_checks_the_grid() -> None:
    head = SegmentationHead(D, 3, p, (h, w), num_frames=2)
    x = _tokens(T=2)
    out = head(x)
    assert out.shape == (B, 3, h * p, w * p)
    swapped = torch.cat([x[:, :1], x[:, 1 + L :], x[:, 1 : 1 + L]], dim=1)  # dates swapped
    torch.testing.assert_close(head(swapped), out)
    with pytest.raises(ValueError, match=r"got 6 patch tokens, expected num_frames \* h \* w"):
        head(_tokens(T=1))


def test_regression_scalar_and_per_pixel() -> None:
    torch.manual_seed(0)
    x = _tokens().requires_grad_()
    scalar = RegressionHead(D)
    assert scalar(x).shape == (B,)
    assert RegressionHead(D, out_dim=2, pool="cls")(x).shape == (B, 2)
    dense = RegressionHead(D, per_pixel=True, patch_size=p, grid_size=(h, w))
    assert dense(x).shape == (B, h * p, w * p)
    assert RegressionHead(D, 4, per_pixel=True, patch_size=p, grid_size=(h, w))(x).shape == (
        B, 4, h * p, w * p,
    )  # fmt: skip
    (scalar(x).sum() + dense(x).sum()).backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="per-pixel RegressionHead needs patch_size"):
        RegressionHead(D, per_pixel=True)
