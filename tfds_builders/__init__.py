"""TFDS dataset builders; `panda70m` lands here (`tfds build panda70m --imports tfds_builders`)."""
