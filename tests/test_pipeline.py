"""The Grain input pipeline: frame sampling, transforms, tokenization, sharding, determinism, resume."""

from __future__ import annotations

import numpy as np
import pytest
import tokenizers
from conftest import assert_resumes_exactly
from tokenizers import models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from panda_jax.data import pipeline
from panda_jax.models.clip import IMAGE_MEAN, IMAGE_STD

NUM_STORED = 16
SENTENCES = [
    "a red star spins over a blue background",
    "a green square slides to the left while the camera pans",
    "a yellow circle bounces on a gray floor in a small room",
    "two shapes meet in the middle of the frame and fade out",
]


def frame_value(clip: int, t: int) -> int:
    """Stored frame `t` of clip `clip` is one flat gray level, so its index survives resize and crop."""
    return 5 + 15 * t + (clip % 3)


class FakeSource:
    """In-memory stand-in for `tfds.data_source("panda70m")`: the builder's example dicts."""

    def __init__(self, size: int, height: int = 12, width: int = 16):
        self.size, self.height, self.width = size, height, width

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.size:
            raise IndexError(index)
        levels = np.array([frame_value(index, t) for t in range(NUM_STORED)], np.uint8)
        frames = np.broadcast_to(levels[:, None, None, None], (NUM_STORED, self.height, self.width, 3)).copy()
        return {
            "clip_id": f"vid{index // 4:03d}.{index % 4:04d}".encode(),
            "video_id": f"vid{index // 4:03d}".encode(),
            "frames": frames,
            "caption": SENTENCES[index % len(SENTENCES)].encode(),
            "caption_source": b"synthetic_ground_truth",
            "start": np.float32(index),
            "end": np.float32(index + 3),
        }


def stored_indices(frames: np.ndarray, clip: int) -> list[int]:
    """Reads back which stored frames a normalised [T, S, S, 3] sample came from."""
    level = frames[:, :, :, 0].mean(axis=(1, 2)) * IMAGE_STD[0] * 255 + IMAGE_MEAN[0] * 255
    return [int(round((v - 5 - clip % 3) / 15)) for v in level]


def clip_number(clip_id: bytes) -> int:
    video, index = clip_id.decode().split(".")
    return int(video[3:]) * 4 + int(index)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A tiny WordPiece tokenizer trained offline on the test sentences."""
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(SENTENCES, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def take(ds, n: int) -> list[dict]:
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_uniform_indices_take_segment_middles():
    np.testing.assert_array_equal(pipeline.uniform_indices(16, 8), [1, 3, 5, 7, 9, 11, 13, 15])
    np.testing.assert_array_equal(pipeline.uniform_indices(8, 8), np.arange(8))
    np.testing.assert_array_equal(pipeline.uniform_indices(4, 8), [0, 0, 1, 1, 2, 2, 3, 3])
    np.testing.assert_array_equal(pipeline.uniform_indices(10, 1), [5])


def test_train_indices_are_half_from_each_half_in_order():
    for seed in range(50):
        picked = pipeline.train_indices(16, 8, np.random.default_rng(seed))
        assert list(picked[:4]) == sorted(set(picked[:4])) and all(0 <= i < 8 for i in picked[:4])
        assert list(picked[4:]) == sorted(set(picked[4:])) and all(8 <= i < 16 for i in picked[4:])
        np.testing.assert_array_equal(picked, pipeline.train_indices(16, 8, np.random.default_rng(seed)))
    draws = {tuple(pipeline.train_indices(16, 8, np.random.default_rng(seed))) for seed in range(50)}
    assert len(draws) > 40
    # Halves shorter than the frames asked for repeat frames but stay in order.
    short = pipeline.train_indices(5, 8, np.random.default_rng(0))
    assert list(short) == sorted(short) and all(i < 2 for i in short[:4]) and all(2 <= i < 5 for i in short[4:])
    with pytest.raises(ValueError, match="even"):
        pipeline.train_indices(16, 7, np.random.default_rng(0))


def test_random_resized_crop_box_respects_scale_and_ratio():
    for seed in range(200):
        top, left, h, w = pipeline.random_resized_crop_box(120, 160, np.random.default_rng(seed))
        assert 0 <= top and top + h <= 120 and 0 <= left and left + w <= 160
        assert 0.48 <= h * w / (120 * 160) <= 1.0
        assert 3 / 4 - 0.03 <= w / h <= 4 / 3 + 0.03


def test_eval_samples_uniformly_resizes_and_normalises_in_source_order():
    ds = pipeline.make_dataset(FakeSource(10), train=False, batch_size=4, image_size=8, shard_index=0, shard_count=1)
    batches = list(ds)
    assert [len(b["clip_id"]) for b in batches] == [4, 4, 2]  # eval keeps the last partial batch
    clip_ids = [c for b in batches for c in b["clip_id"]]
    assert [clip_number(c) for c in clip_ids] == list(range(10))
    first = batches[0]
    assert first["frames"].shape == (4, 8, 8, 8, 3) and first["frames"].dtype == np.float32
    for row, clip in enumerate(range(4)):
        assert stored_indices(first["frames"][row], clip) == [1, 3, 5, 7, 9, 11, 13, 15]
    expected = (frame_value(0, 1) / 255 - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)
    np.testing.assert_allclose(first["frames"][0, 0, 3, 5], expected, rtol=1e-5)
    assert first["caption"][1] == SENTENCES[1].encode()


def test_train_sampling_differs_between_epochs_and_repeats_with_seed():
    def samples(seed: int) -> dict[tuple[int, int], list[int]]:
        ds = pipeline.make_dataset(
            FakeSource(6), train=True, batch_size=3, image_size=8, seed=seed, num_epochs=2, shard_index=0, shard_count=1
        )
        out, seen = {}, {}
        for batch in ds:
            for frames, clip_id in zip(batch["frames"], batch["clip_id"]):
                clip = clip_number(clip_id)
                epoch = seen.setdefault(clip, 0)
                seen[clip] += 1
                out[(clip, epoch)] = stored_indices(frames, clip)
        return out

    first = samples(seed=1)
    assert len(first) == 12  # 6 clips, 2 epochs, each exactly once per epoch
    for picked in first.values():
        assert picked[:4] == sorted(picked[:4]) and all(0 <= i < 8 for i in picked[:4])
        assert picked[4:] == sorted(picked[4:]) and all(8 <= i < 16 for i in picked[4:])
    assert sum(first[(c, 0)] != first[(c, 1)] for c in range(6)) >= 5
    assert samples(seed=1) == first
    assert samples(seed=2) != first


def test_crop_and_flip_are_shared_by_all_frames_of_a_clip():
    # A left-to-right ramp, identical in every frame: a flip reverses it, a crop keeps it monotone.
    ramp = np.broadcast_to(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (48, 64, 3))
    clip = {"clip_id": b"v.0000", "caption": b"a ramp", "frames": np.stack([ramp] * NUM_STORED)}
    transform = pipeline.ClipTransform(train=True, num_frames=8, image_size=16)
    flips = 0
    for seed in range(40):
        frames = transform.random_map(clip, np.random.default_rng(seed))["frames"]
        assert frames.shape == (8, 16, 16, 3)
        for other in frames[1:]:
            np.testing.assert_array_equal(other, frames[0])
        row = frames[0, 8, :, 0]
        flipped = row[0] > row[-1]
        flips += flipped
        assert np.all(np.diff(row) <= 0) if flipped else np.all(np.diff(row) >= 0)
        np.testing.assert_array_equal(frames, transform.random_map(clip, np.random.default_rng(seed))["frames"])
    assert 8 <= flips <= 32


def test_same_seed_gives_identical_batches(tokenizer):
    def batches(seed: int) -> list[dict]:
        ds = pipeline.make_dataset(
            FakeSource(9), train=True, batch_size=4, image_size=8, tokenizer=tokenizer, seed=seed, shard_count=1
        )
        return take(ds, 5)  # past the first epoch: training repeats forever

    a, b, c = batches(7), batches(7), batches(8)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert any(not np.array_equal(x["clip_id"], z["clip_id"]) for x, z in zip(a, c))


@pytest.mark.parametrize("worker_count", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_restoring_iterator_state_gives_the_same_next_batch(worker_count, tokenizer):
    ds = pipeline.make_dataset(
        FakeSource(10),
        train=True,
        batch_size=2,
        image_size=8,
        tokenizer=tokenizer,
        seed=3,
        worker_count=worker_count,
        shard_index=0,
        shard_count=1,
    )
    assert_resumes_exactly(ds, 3, 2)


def test_host_shards_are_disjoint_and_cover_the_dataset():
    source = FakeSource(11)
    shards = []
    for index in range(3):
        ds = pipeline.make_dataset(source, train=False, batch_size=3, image_size=8, shard_index=index, shard_count=3)
        batches = list(ds)
        assert all(len(b["clip_id"]) <= 1 for b in batches)  # per-host batch = global 3 / 3 hosts
        shards.append({clip_number(c) for b in batches for c in b["clip_id"]})
    assert sum(len(s) for s in shards) == 11 and set().union(*shards) == set(range(11))
    # Training: equal shards, still disjoint, every batch full.
    train_ids = []
    for index in range(3):
        ds = pipeline.make_dataset(
            source, train=True, batch_size=3, image_size=8, num_epochs=1, shard_index=index, shard_count=3
        )
        train_ids.append([clip_number(c) for b in ds for c in b["clip_id"]])
    assert [len(ids) for ids in train_ids] == [3, 3, 3]
    assert len(set().union(*map(set, train_ids))) == 9


def test_tokens_equal_the_tokenizers_own(tokenizer):
    long_caption = " ".join(SENTENCES * 3)
    clip = {"clip_id": b"v.0000", "caption": long_caption.encode(), "frames": FakeSource(1)[0]["frames"]}
    for caption in (SENTENCES[2], long_caption):
        out = pipeline.ClipTransform(train=False, image_size=8, tokenizer=tokenizer, max_text_tokens=12).random_map(
            dict(clip, caption=caption.encode()), np.random.default_rng(0)
        )
        own = tokenizer(caption, padding="max_length", truncation=True, max_length=12)
        assert out["input_ids"].dtype == np.int32 and out["attention_mask"].dtype == np.int32
        assert out["input_ids"].tolist() == own["input_ids"]
        assert out["attention_mask"].tolist() == own["attention_mask"]
        words = len(tokenizer(caption)["input_ids"])
        assert int(out["attention_mask"].sum()) == min(words, 12)
    ds = pipeline.make_dataset(
        FakeSource(4), train=False, batch_size=4, image_size=8, tokenizer=tokenizer, shard_count=1
    )
    batch = next(iter(ds))
    assert batch["input_ids"].shape == (4, 48)
    assert batch["input_ids"][3].tolist() == tokenizer(SENTENCES[3], padding="max_length", max_length=48)["input_ids"]


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_dataset(FakeSource(4), train=True, batch_size=3, shard_index=0, shard_count=2)
    with pytest.raises(ValueError, match="no examples"):
        pipeline.make_dataset(FakeSource(0), train=False, batch_size=2, shard_count=1)
    with pytest.raises(ValueError, match="shard_index"):
        pipeline.make_dataset(FakeSource(4), train=False, batch_size=2, shard_index=2, shard_count=2)


def test_iterator_saves_and_restores_through_orbax(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    import grain

    ds = pipeline.make_dataset(FakeSource(10), train=True, batch_size=2, image_size=8, seed=5, shard_count=1)
    it = iter(ds)
    next(it), next(it)
    with ocp.CheckpointManager(tmp_path, item_names=("data",)) as manager:
        manager.save(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    want = next(it)
    restored = iter(ds)
    with ocp.CheckpointManager(tmp_path, item_names=("data",)) as manager:
        manager.restore(2, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    got = next(restored)
    np.testing.assert_array_equal(got["clip_id"], want["clip_id"])
    np.testing.assert_array_equal(got["frames"], want["frames"])
