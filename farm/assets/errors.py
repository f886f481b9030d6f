"""The asset error every asset module raises (re-exported by ``farm.assets.library``)."""

from __future__ import annotations


class AssetError(RuntimeError):
    """A model, texture or asset root is missing or unreadable."""
