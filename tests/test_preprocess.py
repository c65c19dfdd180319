"""One pixel recipe: what training's pipeline feeds a model is exactly what its captioner and selector feed it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from panda_jax import train
from panda_jax.data import pipeline
from panda_jax.models import captioner, preprocess, selector
from panda_jax.teachers import tiny

STORED = 8  # frames a clip stores; the pipeline samples all of them, in order, in eval and in training alike


def clip(height: int, width: int) -> dict:
    """A clip of noise, which every resize filter changes differently."""
    frames = np.random.default_rng(height * width).integers(0, 256, (STORED, height, width, 3), np.uint8)
    return {"clip_id": b"v.0000", "caption": b"noise", "frames": frames}


def pipeline_pixels(example: dict, size: int, **options) -> np.ndarray:
    """pixel_values [T, 3, size, size] of the pipeline's first batch of `example`, as the training loop gives them."""
    batch = next(iter(pipeline.make_dataset([example], batch_size=1, num_frames=STORED, image_size=size,
                                            shard_count=1, shard_index=0, **options)))  # fmt: skip
    return train.model_inputs(batch)["pixel_values"][0]


def test_eval_pixels_are_the_captioners_and_the_selectors(tmp_path):
    example = clip(40, 52)  # not square: BLIP squashes it
    model = captioner.load_captioner(tiny.write_tiny_checkpoint("blip2_opt", tmp_path / "captioner"))
    size = model.image_processor.size[0]
    ours = pipeline_pixels(example, size, train=False)
    for frame in range(STORED):  # the caption stage shows an image captioner one frame of a clip
        inputs = model.inputs(example["frames"][None, frame : frame + 1], [""])
        np.testing.assert_array_equal(inputs["pixel_values"][0], ours[frame])
    scorer = selector.load_selector(tiny.write_tiny_checkpoint(tiny.RETRIEVAL, tmp_path / "selector"))
    np.testing.assert_array_equal(scorer.image_processor(example["frames"]), ours)


def test_training_without_crop_or_flip_gives_the_eval_pixels():
    example = clip(48, 48)  # square: a crop of all the area with an aspect ratio near 1 is the whole frame
    want = pipeline_pixels(example, 28, train=False)
    for seed in range(3):
        got = pipeline_pixels(example, 28, train=True, seed=seed, crop_scale=(1.0, 1.0), flip_probability=0.0)
        np.testing.assert_array_equal(got, want)


def test_pixel_values_are_bicubic_then_rescaled_then_normalised():
    frames = clip(20, 30)["frames"][:2]
    pixels = preprocess.pixel_values(frames, (16, 12), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    assert pixels.shape == (2, 16, 12, 3) and pixels.dtype == np.float32
    levels = preprocess.pixel_values(frames, (16, 12), rescale_factor=None, mean=None)
    resized = np.asarray(Image.fromarray(frames[1]).resize((12, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(levels[1], resized)
    np.testing.assert_allclose(pixels, (levels / 255 - [0.5, 0.25, 0.0]) / [0.5, 0.25, 1.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(preprocess.pixel_values(frames, None, rescale_factor=None, mean=None), frames)
    with pytest.raises(ValueError, match="uint8"):
        preprocess.pixel_values(frames.astype(np.float32), (16, 12))
