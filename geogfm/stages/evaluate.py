"""``evaluate`` stage: does the pretrained encoder know more than an untrained one?

On the held-out patches (manifest splits ``evaluate.splits``; pretraining never saw them), with
labels from a land-cover collection (``evaluate.label_collection``, read onto each cell's grid with
nearest resampling: :mod:`geogfm.data.labels`):

- frozen embeddings of the pretrained encoder and of a randomly initialised encoder of the same
  shape (seed ``evaluate.seed``), pooled by ``evaluate.pool``;
- per encoder: a linear probe, kNN (``evaluate.knn_k``, cosine), retrieval (mAP, recall@k) on the
  patch's majority class, and a per-token linear segmentation probe scored per pixel;
- MAE reconstruction of the removed patches (mask seeded by ``evaluate.seed``): PSNR and SSIM
  per band over removed valid pixels, in reflectance, beside two predictors without a model:
  ``patch_mean`` (each image's per-band mean of its visible valid pixels: what the encoder sees)
  and ``token_mean`` (each removed patch filled with the mean of its valid values, the same
  number the norm-pix reconstruction takes from the truth).

Spatial honesty: probe folds are whole spatial blocks (the manifest's ``block_id``), and the
probe is trained without any window within ``evaluate.buffer`` pixels of a test window (its own
regularisation is chosen the same way inside the training folds), so every number is for
locations no probe was fitted on (see :mod:`geogfm.evaluation.probes`). Intervals are percentile
cluster bootstraps, clusters being squares of ``evaluate.cluster_size`` pixels, so windows that
share a neighbourhood (overlapping windows, the same window at other dates) are resampled together.

The checkpoint is refused if its band list differs from ``data.bands`` or from the cache's, or its
statistics differ from ``--stats`` (the message names the bands and the values).

Writes into ``out`` (default ``results/evaluate/``):

``metrics.json`` (``dvc metrics show``), all floats; ``<m>_low``/``<m>_high`` are the interval of
``<m>`` at ``ci_level``::

    {"n_patches", "n_classes", "n_folds", "ci_level",
     "majority_class": {"accuracy", "accuracy_low", "accuracy_high", "balanced_accuracy"},
     "pretrained" | "random_init": {
         "linear_probe": {"accuracy", "_low", "_high", "top3_accuracy", "balanced_accuracy"},
         "knn5", "knn20": {same keys},
         "retrieval": {"map", "map_low", "map_high", "recall@1", "recall@5", "recall@10"},
         "segmentation": {"pixel_accuracy", ..._low/_high, "miou", "miou_low", "miou_high"}},
     "pretrained_minus_random_init": {"linear_probe": {"accuracy", "_low", "_high"}},
     "reconstruction": {"mask_ratio", "n_images",
         "mae" | "patch_mean" | "token_mean": {"psnr", "psnr_low", "psnr_high", "ssim",
             "ssim_low", "ssim_high", "psnr_<band>": ..., "ssim_<band>": ...},
         "mae_minus_patch_mean": {"psnr", "psnr_low", "psnr_high", "ssim", ...}}}

The ``*_minus_*`` entries are paired: the mean over the same patches of the difference of the two
scores, its interval from bootstrap replicates that draw the same clusters for both. One
predictor beats the other at ``ci_level`` when that interval excludes 0, which the two marginal
intervals, overlapping or not, do not tell.

(PSNR in dB with each band's training min..max as its range; SSIM 7x7, mean over windows wholly
on valid pixels centred on removed ones.) ``report.json``: what the metrics were computed on
(classes and their counts, folds, buffer, clusters, the chosen probe ``C``, confusion matrices,
per-class IoU). Figures: ``probe_scores.png``, ``confusion_matrix.png``, ``embedding_map.png``,
``error_maps.png``, ``reconstruction_psnr.png``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from geogfm.core.config import GeoGFMConfig, ModelConfig
from geogfm.core.errors import DataError
from geogfm.core.io import atomic_dir, write_json
from geogfm.data.cache_reader import check_stats_match, load_cache_index
from geogfm.data.datasets.stac_dataset import StacPatchDataset
from geogfm.data.labels import majority_labels, open_label_source, read_label_map
from geogfm.data.manifest import read_manifest
from geogfm.data.transforms.normalization import DeviceNormalize, load_stats
from geogfm.data.transforms.temporal_sampling import make_sampler
from geogfm.evaluation.embeddings import encode
from geogfm.evaluation.probes import spatial_folds
from geogfm.evaluation.report import evaluation_figures
from geogfm.evaluation.suite import (
    SpatialLayout,
    classification_suite,
    majority_baseline,
    paired_difference,
    reconstruction_suite,
    segmentation_suite,
)
from geogfm.models.gfm_vit import GeoViTBackbone
from geogfm.training.checkpoint import load_checkpoint

__all__ = ["run"]

log = logging.getLogger(__name__)

_PRETRAIN = "rerun `geogfm pretrain` (or `snakemake --cores 2 pretrain`) on this data"


# ------------------------------------------------------------------------------ inputs and checks


def _check_checkpoint(cfg: GeoGFMConfig, ckpt: dict, stats: dict, cache_bands) -> list[str]:
    """The checkpoint's bands, after refusing one trained on other bands or statistics."""
    bands = list(ckpt["bands"])
    if bands != list(cfg.data.bands):
        raise DataError(
            f"the checkpoint was trained on bands {bands} but data.bands is {cfg.data.bands}; "
            f"set data.bands to the checkpoint's or {_PRETRAIN}"
        )
    missing = [b for b in bands if b not in cache_bands]
    if missing:
        raise DataError(
            f"checkpoint band(s) {missing} are not in the tile cache {list(cache_bands)}"
        )
    theirs = ckpt["stats"]
    differ = []
    for b in bands:
        for key in ("mean", "std", "min", "max"):
            a = theirs[key][theirs["bands"].index(b)] if b in theirs["bands"] else None
            z = stats[key][stats["bands"].index(b)]
            if a is None or not np.isclose(a, z, rtol=1e-9, atol=0.0):
                differ.append(f"{b}.{key}: checkpoint {a} != stats {z}")
    if differ:
        raise DataError(
            "the checkpoint was trained with other channel statistics than --stats ("
            + "; ".join(differ[:6])
            + (" ..." if len(differ) > 6 else "")
            + f"); {_PRETRAIN}"
        )
    return bands


def _eval_dataset(cfg, rows: pd.DataFrame, cache: Path, bands, model_cfg: ModelConfig):
    temporal = None
    if model_cfg.num_frames > 1:
        temporal = make_sampler(
            cfg.data.temporal_sampling,
            model_cfg.num_frames,
            min_valid_fraction=cfg.data.min_frame_valid_fraction,
            stride=cfg.data.frame_stride,
        )
    return StacPatchDataset(
        rows, cache, split=None, bands=bands, temporal=temporal, random_frames=False, seed=0
    )


def _read_patches(dataset, picks: np.ndarray) -> dict:
    samples = [dataset[int(i)] for i in picks]
    dates = [s["datetime"] if isinstance(s["datetime"], list) else [s["datetime"]] for s in samples]
    return {
        "image": torch.stack([s["image"] for s in samples]),  # (N, [T,] C, H, W) reflectance
        "valid": torch.stack([s["valid"] for s in samples]),  # (N, [T,] H, W)
        "patch_id": [str(s["patch_id"]) for s in samples],
        "cell": [str(s["cell"]) for s in samples],
        "bounds": np.array([s["bounds"] for s in samples], np.float64),  # (N, 4)
        "crs": [str(s["crs"]) for s in samples],
        "dates": [[d[:10] for d in ds] for ds in dates],
    }


def _pixel_labels(source, index, patches: dict, size: int) -> np.ndarray:
    """(N, size, size) label codes of each patch, from each cell's label map."""
    maps, out = {}, []
    for cell_id, (minx, _, _, maxy) in zip(patches["cell"], patches["bounds"], strict=True):
        cell = index.cell(cell_id)
        if cell_id not in maps:
            maps[cell_id] = read_label_map(source, cell)
        res = cell.resolution
        r = int(round((cell.bounds[3] - maxy) / res))
        c = int(round((minx - cell.bounds[0]) / res))
        out.append(maps[cell_id][r : r + size, c : c + size])
    return np.stack(out)


def _layout(cfg, patches: dict, blocks: np.ndarray, res: float, chip: int) -> SpatialLayout:
    e = cfg.evaluate
    n_blocks = len(np.unique(blocks))
    if n_blocks < 2:
        raise DataError(
            f"the held-out patches lie in {n_blocks} spatial block; the probes need at least 2 "
            "for spatially honest folds: raise patch_manifest.val_fraction (or test_fraction) "
            "or lower patch_manifest.block_size"
        )
    folds = spatial_folds(blocks, min(e.folds, n_blocks), seed=e.seed)
    bounds = patches["bounds"]
    if len(set(patches["crs"])) > 1:
        log.warning("held-out patches are in several CRSs: no buffer between probe folds")
        bounds = None
    cluster_m = (e.cluster_size or 2 * chip) * res
    b = patches["bounds"]
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    clusters = np.array(
        [
            f"{crs}:{int(np.floor(x / cluster_m))}:{int(np.floor(y / cluster_m))}"
            for crs, x, y in zip(patches["crs"], cx, cy, strict=True)
        ]
    )
    radius = (chip if e.buffer is None else e.buffer) * res
    return SpatialLayout(blocks, folds, bounds, radius, clusters)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------- run


def run(
    cfg: GeoGFMConfig,
    *,
    checkpoint: Path,
    cache: Path,
    manifest: Path,
    stats: Path,
    labels: Path,
    out: Path,
) -> dict:
    """Evaluate the pretrained encoder against a random one, and its reconstructions.

    Args:
        cfg: the configuration (``evaluate``, ``data`` are used; the model is the checkpoint's).
        checkpoint: the pretrain stage's ``checkpoint.pt``.
        cache: the tile cache.
        manifest: the patch manifest.
        stats: the channel statistics the data was normalised with.
        labels: the STAC catalog (directory or ``catalog.json``) holding the label collection.
        out: the output directory (replaced whole).

    Returns:
        The headline numbers (linear-probe accuracies, PSNRs).

    Raises:
        DataError: a checkpoint of other bands or statistics, no held-out patches, fewer than
            two spatial blocks or two classes among them.
    """
    e = cfg.evaluate
    boot = {"n_boot": e.n_bootstrap, "level": e.ci_level, "seed": e.seed}
    model, ckpt = load_checkpoint(checkpoint)
    index = load_cache_index(cache)
    stats_dict = load_stats(stats, cfg.data.bands)
    check_stats_match(stats_dict, cache)
    bands = _check_checkpoint(cfg, ckpt, stats_dict, index.bands)
    source = open_label_source(labels, collection=e.label_collection, asset=e.label_asset)
    model_cfg = ModelConfig.model_validate(ckpt["config"]["model"])
    chip = model_cfg.image_size

    rows = read_manifest(manifest)
    rows = rows[rows["split"].isin(e.splits)].reset_index(drop=True)
    if rows.empty:
        raise DataError(
            f"the manifest {manifest} has no patches in evaluate.splits {e.splits}; "
            "rerun `geogfm patch_manifest` with a val_fraction (or test_fraction) > 0"
        )
    dataset = _eval_dataset(cfg, rows, cache, bands, model_cfg)
    n = len(dataset)
    picks = np.arange(n)
    if e.max_patches is not None and n > e.max_patches:
        picks = np.sort(np.random.default_rng(e.seed).choice(n, e.max_patches, replace=False))
    patches = _read_patches(dataset, picks)
    block_of = {
        (c, round(x, 3), round(y, 3)): b
        for c, x, y, b in zip(
            rows["cell_id"], rows["minx"], rows["maxy"], rows["block_id"], strict=True
        )
    }
    blocks = np.array(
        [
            block_of[(c, round(b[0], 3), round(b[3], 3))]
            for c, b in zip(patches["cell"], patches["bounds"], strict=True)
        ]
    )
    res = index.cell(patches["cell"][0]).resolution
    layout = _layout(cfg, patches, blocks, res, chip)

    # labels: the patch's majority class, each token's, each pixel's
    codes = _pixel_labels(source, index, patches, chip)  # (N, H, W)
    classes = sorted(int(c) for c in np.unique(codes) if c != source.nodata)
    lookup = np.full(max(classes + [source.nodata]) + 1, -1, np.int64)
    lookup[classes] = np.arange(len(classes))
    pixel_y = lookup[codes]  # (N, H, W), -1 = no label
    patch_code = majority_labels(codes, chip, nodata=source.nodata)[:, 0, 0]
    token_code = majority_labels(codes, model_cfg.patch_size, nodata=source.nodata)
    labelled = patch_code != source.nodata
    y = lookup[patch_code]
    if len(np.unique(y[labelled])) < 2:
        raise DataError(
            f"the held-out patches have {len(np.unique(y[labelled]))} land-cover class(es) in "
            f"{e.label_collection!r}; the probes need two: evaluate more patches "
            "(evaluate.max_patches, patch_manifest.val_fraction)"
        )
    K = len(classes)
    names = [source.classes.get(c, str(c)) for c in classes]
    log.info(
        "evaluating %d held-out patches (%d labelled) in %d blocks, %d folds; classes %s",
        len(y),
        int(labelled.sum()),
        len(np.unique(blocks)),
        len(np.unique(layout.folds)),
        dict(zip(names, np.bincount(y[labelled], minlength=K).tolist(), strict=True)),
    )

    # normalise with the checkpoint's statistics (checked equal to --stats above)
    refl, valid = patches["image"], patches["valid"]
    images = DeviceNormalize(stats_dict, bands)(refl, valid)
    idx = [stats_dict["bands"].index(b) for b in bands]
    mean = torch.tensor([stats_dict["mean"][i] for i in idx])[:, None, None]
    std = torch.tensor([stats_dict["std"][i] for i in idx])[:, None, None]
    data_range = np.array([stats_dict["max"][i] - stats_dict["min"][i] for i in idx])

    torch.manual_seed(e.seed)
    encoders = {"pretrained": model.encoder, "random_init": GeoViTBackbone(model_cfg)}
    lab_layout = layout.subset(labelled)
    pixel_valid = valid if valid.ndim == 3 else valid.any(1)
    seg_y = np.where(pixel_valid.numpy(), pixel_y, -1)[labelled]
    tok_y = lookup[token_code][labelled]
    metrics: dict = {
        "n_patches": int(len(y)),
        "n_classes": K,
        "n_folds": int(len(np.unique(layout.folds))),
        "ci_level": e.ci_level,
        "majority_class": majority_baseline(y[labelled], lab_layout, n_classes=K, boot=boot),
    }
    report: dict = {
        "classes": dict(zip([str(c) for c in classes], names, strict=True)),
        "class_counts": dict(
            zip(names, np.bincount(y[labelled], minlength=K).tolist(), strict=True)
        ),
        "splits": list(e.splits),
        "buffer_m": layout.radius,
        "cluster_m": (e.cluster_size or 2 * chip) * res,
        "n_clusters": int(len(np.unique(layout.clusters))),
        "blocks_per_fold": {
            str(f): sorted(set(blocks[layout.folds == f])) for f in np.unique(layout.folds)
        },
    }
    pooled_by, extras_by = {}, {}
    for name, enc in encoders.items():
        pooled, tokens = encode(enc, images, pool=e.pool, batch_size=e.batch_size)
        # one BLAS thread for the probes: faster on a busy machine, and the same sums in the
        # same order in every run (threaded reductions can flip a prediction at the margin)
        with threadpool_limits(1):
            cls_m, cls_x = classification_suite(
                pooled[labelled],
                y[labelled],
                lab_layout,
                n_classes=K,
                Cs=e.probe_C,
                knn_k=e.knn_k,
                seed=e.seed,
                n_boot=e.n_bootstrap,
                level=e.ci_level,
            )
            seg_m, seg_x = segmentation_suite(
                tokens[labelled],
                tok_y,
                seg_y,
                lab_layout,
                n_classes=K,
                Cs=e.probe_C,
                max_train_tokens=e.seg_max_tokens,
                seed=e.seed,
                n_boot=e.n_bootstrap,
                level=e.ci_level,
            )
        metrics[name] = {**cls_m, "segmentation": seg_m}
        report[name] = {
            "linear_probe_C": cls_x["chosen_C"],
            "linear_probe_confusion": cls_x["confusion"].tolist(),
            "segmentation_confusion": seg_x["confusion"].tolist(),
            "segmentation_iou": dict(zip(names, seg_x["iou"].tolist(), strict=True)),
        }
        pooled_by[name], extras_by[name] = pooled[labelled], cls_x
        log.info(
            "%s: linear probe %.3f [%.3f, %.3f], kNN %s, mIoU %.3f",
            name,
            cls_m["linear_probe"]["accuracy"],
            cls_m["linear_probe"]["accuracy_low"],
            cls_m["linear_probe"]["accuracy_high"],
            {k: round(v["accuracy"], 3) for k, v in cls_m.items() if k.startswith("knn")},
            seg_m["miou"],
        )

    # the two encoders' probes on the same patches, paired: per patch, right (1) or wrong (0)
    right = {n: extras_by[n]["scores"].argmax(1) == y[labelled] for n in encoders}
    paired = paired_difference(
        right["pretrained"], right["random_init"], lab_layout.clusters, name="accuracy", **boot
    )
    metrics["pretrained_minus_random_init"] = {"linear_probe": paired}
    log.info(
        "pretrained - random-init linear probe, paired: %+.3f [%+.3f, %+.3f]",
        paired["accuracy"],
        paired["accuracy_low"],
        paired["accuracy_high"],
    )

    recon, arrays, removed = reconstruction_suite(
        model,
        images,
        valid,
        refl,
        mean=mean,
        std=std,
        data_range=data_range,
        bands=bands,
        clusters=layout.clusters,
        seed=e.seed,
        batch_size=e.batch_size,
        boot=boot,
    )
    metrics["reconstruction"] = recon

    with atomic_dir(out) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "report.json", report)
        figures = evaluation_figures(
            metrics=metrics,
            extras=extras_by,
            pooled=pooled_by,
            y=y[labelled],
            names=names,
            colors=[source.colors.get(c, f"C{k % 10}") for k, c in enumerate(classes)],
            patches=patches,
            arrays=arrays,
            removed=removed,
            bands=bands,
            clusters=layout.clusters,
            boot=boot,
            knn_k=e.knn_k,
            n_samples=e.n_figure_samples,
            seed=e.seed,
        )
        for name, fig in figures.items():
            _save(fig, tmp / name)
    summary = {
        f"{name}_linear_probe": round(metrics[name]["linear_probe"]["accuracy"], 4)
        for name in encoders
    }
    summary.update({f"psnr_{k}": round(recon[k]["psnr"], 3) for k in arrays})
    return summary
