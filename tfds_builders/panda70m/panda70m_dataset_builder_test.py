"""TFDS's own builder checks on `dummy_data/` (a tiny `local` manual dir with one broken video)."""

import tensorflow_datasets as tfds

from tfds_builders.panda70m import panda70m_dataset_builder


class Panda70mLocalTest(tfds.testing.DatasetBuilderTestCase):
    """Builds `local` from dummy_data: 2 good videos give 3 clips, broken.mp4 is skipped."""

    DATASET_CLASS = panda70m_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [
        panda70m_dataset_builder.Panda70mConfig(name="local_dummy", source="local", num_frames=4, image_size=64)
    ]
    SPLITS = {"train": 3}
    # The stages decode video with PyAV and write records with pathlib, not tf.io.gfile.
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False


if __name__ == "__main__":
    tfds.testing.test_main()
