"""geogfm: a geospatial foundation model pipeline, from a STAC query to a pretrained ViT MAE."""

__version__ = "0.1.0"
