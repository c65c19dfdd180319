"""Flax NNX models, one architecture per file, each with a `load()` for its foreign checkpoint."""


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message names every offending tensor."""
