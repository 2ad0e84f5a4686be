import numpy as np

from geogfm.evaluation.probes import (
    cross_fit_linear_probe,
    cross_fit_segmentation_probe,
    fit_logistic,
    honest_train_mask,
    spatial_folds,
)

rng = np.random.default_rng(0)


def _grid(n_side=8, size=10.0):
    """Windows on a grid, each block of 2 x 2 windows one group."""
    i, j = np.meshgrid(np.arange(n_side), np.arange(n_side), indexing="ij")
    i, j = i.ravel(), j.ravel()
    bounds = np.stack([j * size, i * size, (j + 1) * size, (i + 1) * size], 1).astype(float)
    groups = np.array([f"{a // 2}:{b // 2}" for a, b in zip(i, j, strict=True)])
    return bounds, groups


def test_spatial_folds_keep_groups_whole_and_balance_sizes():
    _, groups = _grid()
    folds = spatial_folds(groups, 4, seed=3)
    for g in np.unique(groups):
        assert len(np.unique(folds[groups == g])) == 1
    assert sorted(np.bincount(folds)) == [16, 16, 16, 16]


def test_honest_train_mask_drops_windows_near_the_test_fold():
    bounds, groups = _grid()
    folds = spatial_folds(groups, 4, seed=0)
    train = honest_train_mask(folds, 0, bounds, radius=5.0)
    test = folds == 0
    assert not (train & test).any()
    # every kept training window is at least 5 units from every test window
    for a in bounds[train]:
        gx = np.maximum(0, np.maximum(bounds[test][:, 0] - a[2], a[0] - bounds[test][:, 2]))
        gy = np.maximum(0, np.maximum(bounds[test][:, 1] - a[3], a[1] - bounds[test][:, 3]))
        assert np.hypot(gx, gy).min() >= 5.0
    # touching neighbours are dropped even with radius 0
    assert honest_train_mask(folds, 0, bounds, 0.0).sum() < (folds != 0).sum()


def test_linear_probe_learns_a_linear_rule_and_picks_weak_regularisation():
    bounds, groups = _grid()
    x = rng.normal(size=(64, 5))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    model, C = fit_logistic(
        x, y, groups=groups, bounds=bounds, radius=0.0, Cs=[1e-4, 1.0], n_classes=2
    )
    assert C == 1.0  # C = 1e-4 shrinks every weight to ~0
    test = rng.normal(size=(200, 5))
    acc = (model.predict_proba(test).argmax(1) == (test[:, 0] + test[:, 1] > 0)).mean()
    assert acc > 0.85


def test_cross_fit_predicts_every_sample_out_of_fold():
    bounds, groups = _grid()
    folds = spatial_folds(groups, 4)
    x = rng.normal(size=(64, 3))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)
    res = cross_fit_linear_probe(
        x, y, folds=folds, groups=groups, bounds=bounds, radius=0.0, Cs=[0.1, 10.0], n_classes=3
    )
    np.testing.assert_allclose(res.scores.sum(1), 1.0)
    assert (res.scores.argmax(1) == y).mean() > 0.7
    assert len(res.chosen_C) == 4 and all(n < 48 for n in res.n_train)  # the buffer bites


def test_segmentation_probe_predicts_pixels_from_tokens():
    bounds, groups = _grid()
    folds = spatial_folds(groups, 4)
    # each token's class is the sign of its first feature; pixels follow their token
    tokens = rng.normal(size=(64, 2, 2, 4))
    token_y = (tokens[..., 0] > 0).astype(int)
    pixel_y = token_y.repeat(4, 1).repeat(4, 2)
    pred = cross_fit_segmentation_probe(
        tokens,
        token_y,
        image_size=(8, 8),
        folds=folds,
        groups=groups,
        bounds=bounds,
        radius=0.0,
        Cs=[1.0],
        n_classes=2,
    )
    assert pred.shape == (64, 8, 8)
    # bilinear upsampling blurs token borders: the token centres are right
    assert (pred[:, 1::4, 1::4] == pixel_y[:, 1::4, 1::4]).mean() > 0.9
