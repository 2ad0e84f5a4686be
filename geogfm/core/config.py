"""Typed, strict configuration: one model per ``params.yaml`` section.

``params.yaml`` is the one configuration file of the DAG; Snakemake and DVC both read it, and
every ``geogfm <stage>`` command loads it through :func:`load_params`. Loading is strict: an unknown
key, a wrong type or an out-of-range value stops the command before any work, with the dotted key
(``train.optimizer.lr``), the value and what was expected.

The same classes serve the Python quick start (``ModelConfig(embed_dim=768, ...)``). Values one
section derives from another (the model's band count from ``data.bands``, ...) are filled in one
visible place, :func:`_derive`, and may not be set by hand in ``params.yaml``.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from geogfm.core.config_data import (
    ChannelStatsConfig,
    DemoCatalogConfig,
    PatchManifestConfig,
    Section,
    StacQueryConfig,
    TileCacheConfig,
    known_bands,
)
from geogfm.core.errors import ConfigError
from geogfm.data.datasets.sentinel2 import DEFAULT_BANDS

__all__ = [
    "ChannelStatsConfig",
    "DataConfig",
    "DemoCatalogConfig",
    "FiguresConfig",
    "GeoGFMConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PatchManifestConfig",
    "StacQueryConfig",
    "TileCacheConfig",
    "TrainConfig",
    "config_from_dict",
    "load_params",
]

# ---------------------------------------------------------------------------- model, data, train


class ModelConfig(Section):
    """The GeoViT encoder and its MAE decoder; defaults are ViT-B/16 with MAE's decoder."""

    #: ``size``: (embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth, decoder_num_heads).
    #: Encoders are the standard ViT-Ti/S/B/L; base and large keep MAE's 512-wide, 8-block decoder,
    #: the small encoders get a decoder narrower than themselves.
    SIZES: ClassVar[dict[str, tuple[int, int, int, int, int, int]]] = {
        "tiny": (192, 12, 3, 128, 2, 4),
        "small": (384, 12, 6, 256, 4, 8),
        "base": (768, 12, 12, 512, 8, 16),
        "large": (1024, 24, 16, 512, 8, 16),
    }

    architecture: Literal["gfm_vit"] = "gfm_vit"
    size: Literal["tiny", "small", "base", "large"] | None = Field(
        None,
        description="size preset (ModelConfig.SIZES): fills the width, depth, heads and decoder_* "
        "keys that are not given; a key given explicitly wins",
    )
    embed_dim: int = Field(768, ge=8)
    depth: int = Field(12, ge=1)
    num_heads: int | None = Field(None, ge=1, description="default: embed_dim // 64 (min 1)")
    mlp_ratio: float = Field(4.0, gt=0)
    image_size: int = Field(224, ge=8)
    patch_size: int = Field(16, ge=1)
    in_chans: int = Field(len(DEFAULT_BANDS), ge=1)
    decoder_embed_dim: int = Field(512, ge=8)
    decoder_depth: int = Field(8, ge=1)
    decoder_num_heads: int = Field(16, ge=1)
    mask_ratio: float = Field(0.75, gt=0.0, lt=1.0)
    norm_pix_loss: bool = True
    drop_path: float = Field(0.0, ge=0.0, lt=1.0)
    patch_embed: Literal["conv", "linear", "spectral"] = Field(
        "conv",
        description='"conv" (p x p stride-p convolution), "linear" (Linear on patchified pixels, '
        'the same map), "spectral" (kernels generated from band wavelengths: any band set)',
    )
    wavelengths: list[float] | None = Field(
        None, description="centre wavelength of each band, micrometres (patch_embed: spectral)"
    )
    pos_embed: Literal["sincos", "learned", "fourier"] = Field(
        "sincos", description="encoder positional encoding (the MAE decoder's is always sincos)"
    )
    num_frames: int = Field(1, ge=1, description="dates per sample T; >1: (B, T, C, H, W) input")
    tubelet_size: int = Field(1, ge=1, description="dates per token; 1 = one token set per date")
    temporal_encoding: bool = Field(
        False, description="add a (year, day-of-year) encoding; forward then needs dates"
    )
    location_encoding: bool = Field(
        False, description="add a (latitude, longitude) encoding; forward then needs latlon"
    )
    norm_position: Literal["pre", "post"] = Field(
        "pre", description='"pre": x + f(norm(x)) (ViT, MAE); "post": norm(x + f(x))'
    )
    layer_scale: float | None = Field(
        None, gt=0.0, description="LayerScale init value (e.g. 1e-5); null: no LayerScale"
    )
    fused_attn: bool = Field(
        True,
        description="the fused paths: F.scaled_dot_product_attention, and only the kept patches "
        "embedded; false: the readable ones (explicit softmax, every patch embedded then dropped)",
    )
    grad_checkpointing: bool = Field(
        False, description="recompute block activations in backward: less memory, one more forward"
    )

    @model_validator(mode="before")
    @classmethod
    def _size_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("size"), str):
            keys = ("embed_dim", "depth", "num_heads")
            keys += ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")
            preset = dict(zip(keys, cls.SIZES.get(data["size"], ()), strict=False))
            data = {**preset, **data}  # explicit keys win
        return data

    @model_validator(mode="after")
    def _shapes(self) -> ModelConfig:
        if self.num_heads is None:
            self.num_heads = max(1, self.embed_dim // 64)
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"model.embed_dim={self.embed_dim} is not divisible by "
                f"model.num_heads={self.num_heads}"
            )
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"model.decoder_embed_dim={self.decoder_embed_dim} is not divisible by "
                f"model.decoder_num_heads={self.decoder_num_heads}"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"model.image_size={self.image_size} is not a multiple of the patch size "
                f"{self.patch_size} (data.patch_size)"
            )
        if self.num_frames % self.tubelet_size:
            raise ValueError(
                f"model.num_frames={self.num_frames} is not a multiple of "
                f"model.tubelet_size={self.tubelet_size}"
            )
        if self.patch_embed == "spectral" and (
            self.wavelengths is None or len(self.wavelengths) != self.in_chans
        ):
            raise ValueError(
                f"model.patch_embed=spectral needs model.wavelengths, one per band "
                f"(in_chans={self.in_chans}), got {self.wavelengths}; list the bands' centre "
                f"wavelengths in micrometres"
            )
        return self

    @property
    def grid_size(self) -> int:
        """Tokens per image side, ``image_size // patch_size``."""
        return self.image_size // self.patch_size


class DataConfig(Section):
    """Where training patches come from and how they are loaded."""

    dataset: Literal["stac"] = "stac"
    bands: list[str] = Field(default_factory=lambda: list(DEFAULT_BANDS), min_length=1)
    patch_size: int = Field(16, ge=1, description="ViT token patch, pixels")
    num_workers: int = Field(2, ge=0)
    chip_size: int = Field(224, ge=8, description="side of a training image, pixels")
    batch_size: int = Field(64, ge=1)
    num_frames: int = Field(
        1, ge=1, description="dates per sample; 1 = single-date (B, C, H, W), else (B, T, C, H, W)"
    )
    temporal_sampling: Literal["stride", "seasonal", "random"] = Field(
        "stride", description="how num_frames > 1 dates are picked per window"
    )
    frame_stride: int = Field(1, ge=1, description='step between dates of "stride" sampling')
    min_frame_valid_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description="dates with fewer valid pixels are never picked"
    )
    chunk_cache_mb: int = Field(
        64, ge=0, description="decoded Zarr chunks kept per loader worker, MiB"
    )
    manifest: str = "data/manifests/patches.parquet"
    cache_dir: str = "data/cache"
    stats: str = "results/stats/channel_stats.json"

    @field_validator("bands")
    @classmethod
    def _bands(cls, v: list[str]) -> list[str]:
        return known_bands(v)


class OptimizerConfig(Section):
    """The optimiser; ``lr`` is the base learning rate for a batch of 256 (MAE's scaling rule)."""

    name: Literal["adamw"] = "adamw"
    lr: float = Field(1.5e-4, gt=0.0, lt=1.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.95])

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: list[float]) -> list[float]:
        if len(v) != 2 or not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"expected two numbers in [0, 1), got {v}")
        return v


class TrainConfig(Section):
    """The training loop."""

    epochs: int = Field(1, ge=1)
    batch_size: int = Field(64, ge=1, description="images per device and micro-batch")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: Literal["cosine", "constant"] = Field(
        "cosine", description="after the warmup: cosine decay to 0, or constant"
    )
    warmup_epochs: float = Field(0.0, ge=0.0)
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps")
    accum_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    grad_clip: float | None = Field(1.0, gt=0.0)
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16: autocast; fp16: autocast with a gradient scaler"
    )
    compile: bool = Field(False, description="torch.compile the model")
    ema_decay: float | None = Field(
        None, gt=0.0, lt=1.0, description="EMA of the weights (saved, validated); null = off"
    )
    device: str = Field("auto", description='"auto", "cpu", "cuda" or "cuda:N"')
    devices: int = Field(1, ge=1, description="processes (GPUs) per node; > 1 runs torchrun")
    nodes: int = Field(1, ge=1, description="nodes, each running `devices` processes")
    seed: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int | None = Field(
        None, ge=1, description="steps between checkpoints (and at each epoch end); null = epochs"
    )
    keep_checkpoints: int = Field(3, ge=1, description="the last k checkpoints are kept")
    resume: bool = Field(True, description="resume an unfinished run from its last checkpoint")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError('expected "auto", "cpu", "cuda" or "cuda:N"')

    @property
    def effective_batch(self) -> int:
        """Images per optimizer step: ``batch_size * accum_steps * devices * nodes``."""
        return self.batch_size * self.accum_steps * self.devices * self.nodes

    @property
    def effective_lr(self) -> float:
        """Absolute learning rate: ``optimizer.lr * effective_batch / 256``."""
        return self.optimizer.lr * self.effective_batch / 256


class FiguresConfig(Section):
    """Reconstruction figures (``figures`` stage)."""

    n_samples: int = Field(4, ge=1, le=32)
    rgb_bands: list[str] = Field(default_factory=lambda: ["red", "green", "blue"])
    seed: int = Field(0, ge=0)

    @field_validator("rgb_bands")
    @classmethod
    def _rgb(cls, v: list[str]) -> list[str]:
        if len(v) != 3:
            raise ValueError(f"expected three bands for an RGB composite, got {v}")
        return known_bands(v)


class EvaluateConfig(Section):
    """Probes, kNN, retrieval and reconstruction metrics on held-out patches (``evaluate``)."""

    label_collection: str = Field("landcover", description="collection of the label maps")
    label_asset: str = Field("map", description="asset key of the label raster")
    splits: list[Literal["val", "test"]] = Field(
        default_factory=lambda: ["val", "test"], min_length=1, description="held-out splits used"
    )
    max_patches: int | None = Field(
        2000, ge=10, description="evaluate at most this many patches (an even draw); null = all"
    )
    pool: Literal["mean", "cls"] = Field("mean", description="pooling of the frozen tokens")
    folds: int = Field(4, ge=2, le=20, description="spatial folds of the probes (by block)")
    buffer: int | None = Field(
        None, ge=0, description="px between probe train and test windows; null = the chip size"
    )
    probe_C: list[float] = Field(
        default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0],
        min_length=1,
        description="logistic-regression C grid, picked on a spatial validation split",
    )
    knn_k: list[int] = Field(default_factory=lambda: [5, 20], min_length=1)
    seg_max_tokens: int = Field(
        4000, ge=100, description="training tokens per fit of the segmentation probe"
    )
    n_bootstrap: int = Field(1000, ge=100, description="bootstrap replicates of each interval")
    ci_level: float = Field(0.95, gt=0.5, lt=1.0)
    cluster_size: int | None = Field(
        None, ge=1, description="px side of the bootstrap's spatial clusters; null = 2 chips"
    )
    n_figure_samples: int = Field(4, ge=1, le=16, description="patches in the error-map figure")
    batch_size: int = Field(128, ge=1)
    seed: int = Field(0, ge=0)

    @field_validator("probe_C", "knn_k")
    @classmethod
    def _positive(cls, v: list) -> list:
        if any(c <= 0 for c in v):
            raise ValueError(f"every value must be > 0, got {v}")
        return v


# ------------------------------------------------------------------------------------- the whole


class GeoGFMConfig(Section):
    """All of ``params.yaml``."""

    demo_catalog: DemoCatalogConfig = Field(default_factory=DemoCatalogConfig)
    stac_query: StacQueryConfig = Field(default_factory=StacQueryConfig)
    tile_cache: TileCacheConfig = Field(default_factory=TileCacheConfig)
    patch_manifest: PatchManifestConfig = Field(default_factory=PatchManifestConfig)
    channel_stats: ChannelStatsConfig = Field(default_factory=ChannelStatsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    figures: FiguresConfig = Field(default_factory=FiguresConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)

    #: Keys another section decides; setting them in params.yaml is an error naming the source.
    DERIVED: ClassVar[dict[str, str]] = {
        "model.in_chans": "len(data.bands)",
        "model.patch_size": "data.patch_size",
        "model.num_frames": "data.num_frames",
        "data.chip_size": "model.image_size",
        "data.batch_size": "train.batch_size",
        "data.manifest": "the stage's --manifest argument",
        "data.cache_dir": "the stage's --cache argument",
        "data.stats": "the stage's --stats argument",
    }

    @model_validator(mode="after")
    def _across_sections(self) -> GeoGFMConfig:
        missing = [b for b in self.data.bands if b not in self.tile_cache.bands]
        if missing:
            raise ValueError(
                f"data.bands {missing} are not cached; add them to tile_cache.bands "
                f"{self.tile_cache.bands}"
            )
        missing_rgb = [b for b in self.figures.rgb_bands if b not in self.data.bands]
        if missing_rgb:
            raise ValueError(f"figures.rgb_bands {missing_rgb} are not in data.bands")
        return self


def _derive(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill the derived keys from their sources (``GeoGFMConfig.DERIVED``) before validation."""
    raw = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    sections = {name: raw.setdefault(name, {}) for name in ("model", "data", "train")}
    if not all(isinstance(v, dict) for v in sections.values()):
        return raw  # validation reports the section that is not a mapping
    model, data, train = sections["model"], sections["data"], sections["train"]
    if isinstance(data.get("bands"), list):
        model["in_chans"] = len(data["bands"])
    for (dst, dst_key), (src, src_key) in (
        ((model, "patch_size"), (data, "patch_size")),
        ((model, "num_frames"), (data, "num_frames")),
        ((data, "chip_size"), (model, "image_size")),
        ((data, "batch_size"), (train, "batch_size")),
    ):
        if type(src.get(src_key)) is int:  # a bad value is reported once, at its source
            dst[dst_key] = src[src_key]
    return raw


def _format_errors(err: ValidationError, raw: dict[str, Any], source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid value(s):"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not key:  # a check across sections: the message names its keys
            lines.append(f"  {msg}")
            continue
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            section = _resolve(GeoGFMConfig, parent)
            known = sorted(section.model_fields) if section else []
            lines.append(f"  {key}: unknown key; known keys here are {known}")
            continue
        value = e.get("input")
        if isinstance(value, dict | BaseModel):  # a check across keys: the message names them
            lines.append(f"  {key}: {msg}")
            continue
        hint = ""
        if isinstance(value, datetime.date):
            hint = f' (YAML reads {value} as a date: quote it, "{value}")'
        if isinstance(value, str) and _looks_like_float(value):
            hint = (
                f" (YAML reads {value} as text: write it with a dot, e.g. {float(value)!r})"
                if e["type"] == "float_type" and "e" in value.lower()
                else " (a quoted string: write the number without quotes)"
            )
        lines.append(f"  {key} = {value!r}: {msg}{hint}")
    return "\n".join(lines)


def _resolve(model: type[BaseModel], path: tuple) -> type[BaseModel] | None:
    for p in path:
        field = model.model_fields.get(str(p))
        ann = field.annotation if field else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def _looks_like_float(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def load_params(path: str | Path = "params.yaml") -> GeoGFMConfig:
    """Load and validate ``params.yaml``.

    Args:
        path: the params file.

    Returns:
        The validated configuration, derived values filled in.

    Raises:
        ConfigError: naming every bad key (dotted), its value and what was expected.
        FileNotFoundError: if ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"params file {str(path)!r} not found; run from the project root or pass --params PATH"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict[str, Any], *, source: str = "params") -> GeoGFMConfig:
    """Validate a params mapping (the parsed ``params.yaml``); see :func:`load_params`."""
    derived = []
    for key, origin in GeoGFMConfig.DERIVED.items():
        section, name = key.split(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            derived.append(f"  {key}: set from {origin}; remove it from {source}")
    if derived:
        raise ConfigError(f"{source}: derived key(s) set by hand:\n" + "\n".join(derived))
    try:
        return GeoGFMConfig.model_validate(_derive(raw))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, raw, source)) from None
