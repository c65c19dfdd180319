"""The synthetic corpus as training data: the endless stream (deterministic per index, one event of its own video,
apart from the eval videos), through grain (shuffled lazily, resumable), and a training run on it."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from conftest import assert_resumes_exactly

from panda_jax import cli, tasks, train
from panda_jax.data import pipeline
from panda_jax.data.synthetic import STREAM_FIRST_VIDEO, SyntheticClips, SyntheticStream, sample_video_spec

SEED, SIZE, STORED = 3, 32, 4


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if key == "frames":
            np.testing.assert_array_equal(a[key], b[key])
        else:
            assert a[key] == b[key], key


def stream(seed: int = SEED, **options) -> SyntheticStream:
    return SyntheticStream(seed, **{"size": SIZE, "stored_frames": STORED} | options)


def test_a_stream_example_is_an_event_of_its_own_video_as_the_fixed_set_holds_it():
    example = stream()[5]
    assert_same(example, stream()[5])  # another stream of the same seed: the same example
    video = STREAM_FIRST_VIDEO + 5
    (same,) = [e for e in SyntheticClips(1, SEED, size=SIZE, stored_frames=STORED, first_video=video)
               if e["clip_id"] == example["clip_id"]]  # fmt: skip
    assert_same(example, same)
    assert example["frames"].shape == (STORED, SIZE, SIZE, 3) and example["frames"].dtype == np.uint8
    spec = sample_video_spec(SEED, video, size=SIZE, duration=8.0)
    event = spec.events[int(example["clip_id"].split(".")[1])]
    assert example["video_id"] == spec.video_id and example["facts"] == event.scene.facts()
    assert example["caption"] == event.caption
    # Any event of the video, not always the first; another seed, another world.
    assert len({stream()[index]["clip_id"].split(".")[1] for index in range(12)}) > 1
    assert stream(seed=SEED + 1)[5]["caption"] != example["caption"]
    assert not np.array_equal(stream(seed=SEED + 1)[5]["frames"], example["frames"])
    with pytest.raises(IndexError):
        stream(length=10)[10]


def test_stream_candidates_are_other_videos_captions_drawn_per_index():
    example = stream(candidates=4)[7]
    assert_same(example, stream(candidates=4)[7])
    captions = [c["caption"] for c in example["teacher_captions"]]
    assert len(set(captions)) == 4 and [c["teacher"] for c in example["teacher_captions"]] == ["t0", "t1", "t2", "t3"]
    assert captions[int(example["label"][1:])] == example["caption"]
    without = stream()[7]
    assert_same({k: v for k, v in example.items() if k not in ("teacher_captions", "label")}, without)


def test_synthetic_videos_zero_trains_on_the_stream_and_evaluates_on_other_videos():
    config = cli.load_config("captioner")
    assert config.data.synthetic_videos == 0  # the default: the stream
    config.data.synthetic_eval_videos = 3
    source, evaluation = tasks.data_sources(config)
    assert isinstance(source, SyntheticStream) and len(source) > 2**30 and source.seed == config.data.synthetic_seed
    eval_videos = {example["video_id"] for example in evaluation}
    assert eval_videos == {f"synth_{index:05d}" for index in range(3)}
    assert source.first_video >= 3
    assert not {source[index]["video_id"] for index in range(4)} & eval_videos
    config.data.synthetic_videos = 2
    source, evaluation = tasks.data_sources(config)
    assert isinstance(source, SyntheticClips) and {e["video_id"] for e in evaluation} == {"synth_00002", "synth_00003",
                                                                                         "synth_00004"}  # fmt: skip


class Endless:
    """2**31 - 1 examples of one flat frame each: what a materialised shuffle of them would cost shows."""

    def __len__(self) -> int:
        return 2**31 - 1

    def __getitem__(self, index: int) -> dict:
        return {"clip_id": f"v.{index}", "caption": "flat", "frames": np.full((2, 8, 8, 3), index % 256, np.uint8)}


def test_grain_shuffles_an_endless_source_lazily():
    tracemalloc.start()
    try:
        ds = pipeline.make_dataset(Endless(), train=True, batch_size=4, num_frames=2, image_size=8, shard_count=1)
        batch = next(iter(ds))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert batch["frames"].shape == (4, 2, 8, 8, 3)
    assert peak < 64 * 2**20  # an index permutation of 2**31 examples would be gigabytes
    ids = [int(clip_id.split(b".")[1]) for clip_id in batch["clip_id"]]
    assert max(ids) > 2**20  # drawn from the whole range, not its start


def test_a_stream_pipeline_resumes_exactly():
    ds = pipeline.make_dataset(stream(stored_frames=2), train=True, batch_size=2, num_frames=2, image_size=16, seed=1,
                               shard_count=1)  # fmt: skip
    assert_resumes_exactly(ds, 2, 2)


@pytest.mark.slow
def test_a_tiny_captioner_trains_on_the_stream(tmp_path):
    """The whole loop, its word tokenizer learnt from the stream's first clips (no eval: one compilation less)."""
    workdir = tmp_path / "run"
    status = train.main(["--config=captioner:tiny", "--workdir", str(workdir), "--config.data.synthetic_videos=0",
                         "--config.data.synthetic_eval_videos=0", "--config.data.tokenizer_examples=16",
                         "--config.train.steps=2", "--config.train.log_every=1", "--config.train.checkpoint_every=2"])
    assert status == 0
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["trained_steps"] == 2 and np.isfinite(summary["final"]["loss"])
