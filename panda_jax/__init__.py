"""panda-jax: the Panda-70M video captioning pipeline, natively in JAX."""

__version__ = "0.1.0"
