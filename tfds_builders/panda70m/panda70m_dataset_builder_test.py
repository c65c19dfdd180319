"""TFDS's own builder checks on a tiny `local` manual dir with one broken video.

`dummy_data/` holds the manual dir's text files; `make_manual_dir` renders its two videos from
the synthetic corpus on the spot, so no video is committed.
"""

import shutil
import tempfile
from pathlib import Path

import tensorflow_datasets as tfds
from etils import epath

from panda_jax.data import synthetic
from tfds_builders.panda70m import panda70m_dataset_builder

DUMMY_DATA = Path(__file__).resolve().parent / "dummy_data"
# Videos 0 and 1 of the synthetic corpus with seed 7: shapes_a has 2 events, shapes_b 1.
DUMMY_VIDEOS = {"shapes_a": 6, "shapes_b": 10}  # seed 7: two clips and one (the split drops the rest)


def make_manual_dir(directory: Path) -> Path:
    """Fills `directory` with dummy_data's files, the two rendered videos and `broken.mp4`."""
    directory.mkdir(parents=True, exist_ok=True)
    for path in DUMMY_DATA.iterdir():
        if path.name != "README.md":
            shutil.copy(path, directory / path.name)
    for name, index in DUMMY_VIDEOS.items():
        spec = synthetic.sample_video_spec(7, index, size=64, duration=8.0)
        synthetic.write_video(spec, directory / f"{name}.mp4")
    (directory / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video, the build must skip it")
    return directory


class Panda70mLocalTest(tfds.testing.DatasetBuilderTestCase):
    """Builds `local` from the dummy manual dir: 2 good videos give 3 clips, broken.mp4 is skipped."""

    DATASET_CLASS = panda70m_dataset_builder.Builder
    BUILDER_CONFIG_NAMES_TO_TEST = [
        panda70m_dataset_builder.Panda70mConfig(name="local_dummy", source="local", num_frames=4, image_size=64)
    ]
    SPLITS = {"train": 3}
    # The stages decode video with PyAV and write records with pathlib, not tf.io.gfile.
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False

    _manual_dir: tempfile.TemporaryDirectory | None = None

    @tfds.core.utils.classproperty
    @classmethod
    def dummy_data(cls) -> epath.Path:
        # TFDS's own `dummy_data` is memoized before setUpClass runs; this one renders on first use.
        if cls._manual_dir is None:
            cls._manual_dir = tempfile.TemporaryDirectory()
            make_manual_dir(Path(cls._manual_dir.name))
        return epath.Path(cls._manual_dir.name)

    @classmethod
    def tearDownClass(cls):
        if cls._manual_dir is not None:
            cls._manual_dir.cleanup()
            cls._manual_dir = None
        super().tearDownClass()


if __name__ == "__main__":
    tfds.testing.test_main()
