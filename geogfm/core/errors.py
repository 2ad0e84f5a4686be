"""Errors geogfm raises for bad user input; their text names the value and the fix."""

from __future__ import annotations

__all__ = ["ConfigError", "DataError"]


class ConfigError(ValueError):
    """A ``params.yaml`` key is unknown, of the wrong type or out of range."""


class DataError(ValueError):
    """An input (catalog, asset, cache, manifest, stats) is missing, empty or inconsistent."""
