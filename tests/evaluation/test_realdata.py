"""The evaluation suite on real labelled Sentinel-2: eo-learn Slovenia (LULC) and BigEarthNet.

Features are simple and fixed (per-band mean and std of each window, or per-pixel spectra for
the segmentation probe; a frozen random ViT where noted), so these tests check that the probe,
kNN, retrieval and interval code give sane answers on real labels and real spectra, fast.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from geogfm.core.config import ModelConfig
from geogfm.data.labels import majority_labels
from geogfm.evaluation.embeddings import encode
from geogfm.evaluation.metrics import mean_average_precision
from geogfm.evaluation.nearest_neighbors import cosine_similarity, retrieval_scores
from geogfm.evaluation.probes import spatial_folds
from geogfm.evaluation.suite import (
    SpatialLayout,
    classification_suite,
    majority_baseline,
    segmentation_suite,
)
from geogfm.models.gfm_vit import GeoViTBackbone

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata"
SLOVENIA = REAL / "eolearn_s2l1c_slovenia" / "geotiff"
BEN = REAL / "bigearthnet_s2l2a_patches"
pytestmark = pytest.mark.skipif(not SLOVENIA.is_dir(), reason="../shared/realdata not present")
BOOT = {"n_boot": 200, "level": 0.95, "seed": 0}


@pytest.fixture(scope="module")
def slovenia():
    """5 x 5 px windows of the clear 2015-08-30 scene, their LULC, blocks of 25 px."""
    with rasterio.open(SLOVENIA / "S2_L1C_2015-08-30_13band.tif") as src:
        image = src.read()[:, :100, :100]  # (13, 100, 100) TOA reflectance
    with rasterio.open(SLOVENIA / "LULC.tif") as src:
        lulc = src.read(1)[:100, :100].astype(np.int64)
    s = 5
    win = image.reshape(13, 20, s, 20, s).transpose(1, 3, 0, 2, 4).reshape(400, 13, s, s)
    lab = lulc.reshape(20, s, 20, s).transpose(0, 2, 1, 3).reshape(400, s, s)
    i, j = np.divmod(np.arange(400), 20)
    bounds = np.stack([j * s, -(i + 1) * s, (j + 1) * s, -i * s], 1).astype(float)
    groups = np.array([f"{a // 5}:{b // 5}" for a, b in zip(i, j, strict=True)])
    layout = SpatialLayout(groups, spatial_folds(groups, 4), bounds, 0.0, groups)
    return win, lab, layout


def _classes(codes: np.ndarray) -> tuple[np.ndarray, int]:
    present = np.unique(codes[codes > 0])
    lookup = np.full(codes.max() + 1, -1)
    lookup[present] = np.arange(len(present))
    return lookup, len(present)


def test_linear_probe_and_knn_on_slovenia_land_cover_beat_the_majority_class(slovenia):
    win, lab, layout = slovenia
    patch = majority_labels(lab, 5)[:, 0, 0]  # LULC 0 is "no data"
    keep = patch > 0
    lookup, K = _classes(patch[keep])
    y, lay = lookup[patch[keep]], layout.subset(keep)
    x = np.concatenate([win.mean((2, 3)), win.std((2, 3))], 1)[keep]  # (N, 26)
    metrics, extras = classification_suite(
        x, y, lay, n_classes=K, Cs=[0.01, 0.1, 1.0, 10.0], knn_k=(5, 20), **BOOT
    )
    base = majority_baseline(y, lay, n_classes=K, boot=BOOT)
    probe = metrics["linear_probe"]
    assert probe["accuracy_low"] <= probe["accuracy"] <= probe["accuracy_high"]
    assert probe["balanced_accuracy"] > base["balanced_accuracy"] + 0.15
    assert metrics["knn5"]["balanced_accuracy"] > base["balanced_accuracy"] + 0.1
    assert metrics["retrieval"]["map"] > 0.5
    assert extras["confusion"].sum() == len(y)


def test_segmentation_probe_on_slovenia_pixels(slovenia):
    win, lab, layout = slovenia
    lookup, K = _classes(lab)
    pixel_y = np.where(lab > 0, lookup[lab], -1)
    tokens = win.transpose(0, 2, 3, 1)  # one token per pixel: its 13-band spectrum
    metrics, extras = segmentation_suite(
        tokens, pixel_y, pixel_y, layout, n_classes=K, Cs=[0.1, 1.0, 10.0], **BOOT
    )
    # predicting the majority class everywhere scores its IoU / K
    majority_share = np.bincount(pixel_y[pixel_y >= 0]).max() / (pixel_y >= 0).sum()
    assert metrics["miou"] > majority_share / K + 0.1
    assert metrics["pixel_accuracy"] >= majority_share - 0.02


def test_frozen_random_vit_embeds_real_13_band_windows(slovenia):
    win, lab, layout = slovenia
    # 10 px windows of 2 x 2 tokens of 5 px: each 10 px window is 2 x 2 of the 5 px ones
    big = (
        win.reshape(10, 2, 10, 2, 13, 5, 5).transpose(0, 2, 4, 1, 5, 3, 6).reshape(100, 13, 10, 10)
    )
    big_lab = lab.reshape(10, 2, 10, 2, 5, 5).transpose(0, 2, 1, 4, 3, 5).reshape(100, 10, 10)
    cfg = ModelConfig(embed_dim=32, depth=1, num_heads=2, image_size=10, patch_size=5, in_chans=13)
    mean, std = big.mean((0, 2, 3), keepdims=True), big.std((0, 2, 3), keepdims=True)
    torch.manual_seed(0)
    pooled, tokens = encode(GeoViTBackbone(cfg), torch.from_numpy((big - mean) / std).float())
    assert pooled.shape == (100, 32) and tokens.shape == (100, 2, 2, 32)
    patch = majority_labels(big_lab, 10)[:, 0, 0]
    keep = patch > 0
    lookup, K = _classes(patch[keep])
    groups = np.array([f"{k // 10 // 3}:{k % 10 // 3}" for k in range(100)])
    lay = SpatialLayout(groups, spatial_folds(groups, 4), None, 0.0, groups).subset(keep)
    y = lookup[patch[keep]]
    metrics, _ = classification_suite(pooled[keep], y, lay, n_classes=K, Cs=[1.0], **BOOT)
    base = majority_baseline(y, lay, n_classes=K, boot=BOOT)
    assert metrics["linear_probe"]["balanced_accuracy"] > base["balanced_accuracy"]


def test_retrieval_of_bigearthnet_sub_patches_by_shared_corine_labels():
    index = json.loads((BEN / "index.json").read_text())
    feats, labels, source = [], [], []
    for k, entry in enumerate(index):
        with rasterio.open(BEN / "stacked_10m" / f"{entry['patch']}_12band_10m.tif") as src:
            image = src.read().astype(np.float64) * 1e-4  # (12, 120, 120) BOA reflectance
        for r in range(0, 120, 40):
            for c in range(0, 120, 40):
                w = image[:, r : r + 40, c : c + 40]
                feats.append(np.concatenate([w.mean((1, 2)), w.std((1, 2))]))
                labels.append(set(entry["labels"]))
                source.append(k)
    x, source = np.array(feats), np.array(source)
    x = (x - x.mean(0)) / x.std(0)  # standardised features, as the probes use
    # the sub-patches of one scene find each other first: real spectra identify a scene
    same_scene = source[:, None] == source[None, :]
    sim = cosine_similarity(x, x)
    np.fill_diagonal(sim, -np.inf)  # a query is not its own answer
    assert mean_average_precision(sim, same_scene & ~np.eye(len(x), dtype=bool)) > 0.6
    # across scenes, by shared CORINE label: six scenes of other places, dates and snow cover
    # are too few for band statistics to beat chance reliably: in range, no more is claimed
    relevant = np.array([[bool(a & b) for b in labels] for a in labels])
    cross = retrieval_scores(x, x, relevant & ~same_scene, ks=(5,))
    assert 0.0 < cross["map"] <= 1.0
