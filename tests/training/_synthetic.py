"""Tiny in-memory batches and model for loop tests that need no data stages."""

import torch

from geogfm.core.config import ModelConfig
from geogfm.models.gfm_mae import MaskedAutoencoder
from geogfm.models.gfm_vit import GeoViTBackbone

MODEL = dict(
    embed_dim=16,
    depth=2,
    num_heads=2,
    mlp_ratio=2.0,
    image_size=8,
    patch_size=4,
    in_chans=3,
    decoder_embed_dim=8,
    decoder_depth=1,
    decoder_num_heads=2,
)


def tiny_model(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**MODEL, **kw})
    return MaskedAutoencoder(cfg, GeoViTBackbone(cfg))


def batches(n: int, batch_size: int = 4, seed: int = 1) -> list[dict]:
    """``n`` batches of float32 (B, 3, 8, 8) images, every pixel valid."""
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "image": torch.randn(batch_size, 3, 8, 8, generator=g),
            "valid": torch.ones(batch_size, 8, 8, dtype=torch.bool),
        }
        for _ in range(n)
    ]
