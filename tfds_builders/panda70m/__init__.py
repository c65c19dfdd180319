"""The `panda70m` TFDS builder; importing this package registers it with TFDS."""

from tfds_builders.panda70m.panda70m_dataset_builder import Builder, Panda70mConfig

__all__ = ["Builder", "Panda70mConfig"]
