"""Each metric against an independent reference: scikit-image, scikit-learn or a hand case."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn import metrics as skm

from geogfm.evaluation.metrics import (
    bootstrap_ci,
    confusion_matrix,
    iou,
    mean_average_precision,
    miou,
    psnr,
    r2,
    recall_at_k,
    rmse,
    ssim,
    topk_accuracy,
)

rng = np.random.default_rng(0)


def _images(N=2, C=3, H=20, W=18):
    target = rng.uniform(0.0, 0.4, (N, C, H, W))
    pred = target + rng.normal(0.0, 0.03, target.shape)
    valid = np.ones((N, H, W), bool)
    valid[0, :5, :7] = False  # a nodata corner
    valid[1, 12:, 3:] = False
    return pred, target, valid


def test_psnr_per_band_over_valid_pixels_matches_scikit_image():
    pred, target, valid = _images()
    data_range = np.array([0.4, 0.5, 0.6])
    got = psnr(pred, target, valid, data_range=data_range)
    assert got.shape == (2, 3)
    for i in range(2):
        for c in range(3):
            want = peak_signal_noise_ratio(
                target[i, c][valid[i]], pred[i, c][valid[i]], data_range=data_range[c]
            )
            assert got[i, c] == pytest.approx(want, rel=1e-10)


def test_psnr_ignores_invalid_pixels_entirely():
    pred, target, valid = _images()
    wild = pred.copy()
    wild[:, :, ~valid.any(0)] = 1e6  # garbage where nothing is valid in any image
    wild[0][:, ~valid[0]] = -1e6
    wild[1][:, ~valid[1]] = 1e6
    np.testing.assert_allclose(
        psnr(wild, target, valid, data_range=1.0), psnr(pred, target, valid, data_range=1.0)
    )


def test_ssim_matches_scikit_image_map_over_fully_valid_windows():
    pred, target, valid = _images()
    got = ssim(pred, target, valid, data_range=0.4)
    r = 3  # 7 x 7 window
    for i in range(2):
        # a centre counts when its whole window is valid
        v = valid[i].astype(float)
        full = np.zeros_like(valid[i])
        for y in range(r, v.shape[0] - r):
            for x in range(r, v.shape[1] - r):
                full[y, x] = v[y - r : y + r + 1, x - r : x + r + 1].all()
        for c in range(3):
            _, smap = structural_similarity(
                target[i, c], pred[i, c], data_range=0.4, full=True, win_size=7
            )
            assert got[i, c] == pytest.approx(smap[full].mean(), rel=1e-9)


def test_ssim_of_identical_images_is_one_and_where_restricts_centres():
    _, target, valid = _images()
    np.testing.assert_allclose(ssim(target, target, valid, data_range=0.4), 1.0)
    where = np.zeros(valid.shape, bool)
    assert np.isnan(ssim(target, target, valid, data_range=0.4, where=where)).all()


def test_topk_accuracy_matches_scikit_learn():
    scores = rng.normal(size=(50, 6))
    labels = rng.integers(0, 6, 50)
    for k in (1, 2, 3):
        want = skm.top_k_accuracy_score(labels, scores, k=k, labels=range(6))
        assert topk_accuracy(scores, labels, k) == pytest.approx(want)


def test_confusion_and_iou_match_scikit_learn():
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.uniform(size=200) < 0.7, y_true, rng.integers(0, 4, 200))
    conf = confusion_matrix(y_true, y_pred, 4)
    np.testing.assert_array_equal(conf, skm.confusion_matrix(y_true, y_pred, labels=range(4)))
    want = skm.jaccard_score(y_true, y_pred, labels=range(4), average=None)
    np.testing.assert_allclose(iou(conf), want)
    assert miou(conf) == pytest.approx(want.mean())


def test_miou_skips_classes_absent_from_truth_and_prediction_and_ignores_negative_labels():
    # class 2 never occurs; -1 marks pixels without a label
    y_true = np.array([0, 0, 1, 1, -1])
    y_pred = np.array([0, 1, 1, 1, 0])
    conf = confusion_matrix(y_true, y_pred, 3)
    assert conf.sum() == 4
    # IoU(0) = 1 / 2, IoU(1) = 2 / 3 by hand
    assert miou(conf) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_rmse_and_r2_match_scikit_learn():
    target = rng.normal(size=100)
    pred = target + rng.normal(0, 0.3, 100)
    assert rmse(pred, target) == pytest.approx(np.sqrt(skm.mean_squared_error(target, pred)))
    assert r2(pred, target) == pytest.approx(skm.r2_score(target, pred))
    with pytest.raises(ValueError, match="constant target"):
        r2(pred, np.ones(100))


def test_recall_at_k_by_hand():
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.4], [0.5, 0.4, 0.3, 0.2]])
    relevant = np.array(
        [[True, False, True, False], [True, False, False, False], [False] * 4], bool
    )
    # query 0: relevant at ranks 1 and 3; query 1: its one relevant item at rank 4; query 2: none
    assert recall_at_k(scores, relevant, 1) == pytest.approx((1 / 2 + 0) / 2)
    assert recall_at_k(scores, relevant, 3) == pytest.approx((2 / 2 + 0) / 2)
    assert recall_at_k(scores, relevant, 4) == pytest.approx(1.0)
    per = recall_at_k(scores, relevant, 3, per_query=True)
    assert per[0] == 1.0 and per[1] == 0.0 and np.isnan(per[2])


def test_mean_average_precision_matches_scikit_learn():
    scores = rng.normal(size=(8, 30))
    relevant = rng.uniform(size=(8, 30)) < 0.3
    relevant[:, 0] = True
    want = np.mean(
        [skm.average_precision_score(r, s) for r, s in zip(relevant, scores, strict=True)]
    )
    assert mean_average_precision(scores, relevant) == pytest.approx(want)


def test_bootstrap_interval_covers_the_mean_and_clusters_resample_together():
    values = rng.normal(1.0, 1.0, 40)
    lo, hi = bootstrap_ci(lambda i: values[i].mean(), 40, n_boot=500, seed=1)
    assert lo < values.mean() < hi
    # ten identical copies per cluster: the cluster bootstrap is the bootstrap of the clusters
    copies = np.repeat(values, 10)
    clusters = np.repeat(np.arange(40), 10)
    got = bootstrap_ci(lambda i: copies[i].mean(), 400, clusters=clusters, n_boot=500, seed=1)
    assert got == pytest.approx((lo, hi))
    # treating the copies as independent would claim a far narrower interval
    naive = bootstrap_ci(lambda i: copies[i].mean(), 400, n_boot=500, seed=1)
    assert naive[1] - naive[0] < 0.5 * (hi - lo)


def test_a_paired_difference_is_significant_where_the_marginal_intervals_overlap():
    from geogfm.evaluation.suite import paired_difference, with_interval

    rng = np.random.default_rng(0)
    n, clusters = 600, np.repeat(np.arange(60), 10)  # 60 clusters of 10 samples
    hard = np.repeat(rng.random(60) < 0.2, 10)  # whole neighbourhoods both get wrong
    b = ~hard & (rng.random(n) < 0.95)
    a = b | (~hard & (rng.random(n) < 0.5))  # right wherever b is, and on half of b's misses
    boot = {"n_boot": 1000, "level": 0.95, "seed": 3}
    ia = with_interval("acc", lambda i: a[i].mean(), n, clusters, **boot)
    ib = with_interval("acc", lambda i: b[i].mean(), n, clusters, **boot)
    assert ia["acc_low"] < ib["acc_high"]  # the marginal intervals overlap
    d = paired_difference(a, b, clusters, name="acc", **boot)
    assert d["acc"] == pytest.approx(a.mean() - b.mean())
    assert 0 < d["acc_low"] <= d["acc"] <= d["acc_high"]  # yet a beats b, paired
    # NaN (a sample neither predictor could score) is left out of the mean
    x, y = np.arange(20.0), np.ones(20)
    x[3] = y[7] = np.nan
    expected = np.delete(np.arange(20.0) - 1, [3, 7]).mean()
    assert paired_difference(x, y, np.arange(20), name="d", **boot)["d"] == pytest.approx(expected)
