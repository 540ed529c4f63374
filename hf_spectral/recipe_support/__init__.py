"""What the recipes in ``recipes/`` share, as public API (exported from ``hf_spectral``)."""
