"""Flax NNX models, one architecture per file, each with a `load()` for its foreign checkpoint."""
