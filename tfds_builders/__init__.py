"""TFDS dataset builders; importing this package registers `panda70m`.

`tfds build panda70m --imports tfds_builders` imports it, so the CLI finds the builder by name.
"""

from tfds_builders import panda70m  # noqa: F401  (registers the builder)
