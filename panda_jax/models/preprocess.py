"""The one pixel recipe: uint8 frames → the normalised pixels every vision model here reads.

Training (panda_jax.data.pipeline), captioning (`captioner.ImageProcessor`) and selection
(`selector.load_selector`) all go through `pixel_values`, so a model is evaluated on the very
pixels it was trained on. The recipe is transformers' slow BLIP image processor
(`BlipImageProcessorPil`), which BLIP-2, InstructBLIP and its video processor share: a PIL
resize (bicubic) straight to the square input size, a rescale by 1/255 computed in float64 and
stored as float32, then (x - mean) / std in float32 with OpenAI CLIP's statistics. Whatever
differs (training's random crop and flip) happens to the uint8 frames before, or to the pixels
after, never inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from panda_jax.models.clip import IMAGE_MEAN, IMAGE_STD

BICUBIC = Image.Resampling.BICUBIC


def pixel_values(
    frames: np.ndarray,
    size: tuple[int, int] | None,
    *,
    resample: int = BICUBIC,
    rescale_factor: float | None = 1 / 255,
    mean: Sequence[float] | None = IMAGE_MEAN,
    std: Sequence[float] = IMAGE_STD,
) -> np.ndarray:
    """uint8 [..., H, W, 3] → float32 [..., height, width, 3] (channels last), as BLIP's image processor computes it.

    `size` is (height, width), None to keep the frames' own; `rescale_factor` None leaves the 0-255 scale and
    `mean` None skips the normalisation (the processor's `do_rescale` / `do_normalize` off).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [..., height, width, channels], not {frames.dtype} {frames.shape}")
    images = np.ascontiguousarray(frames.reshape(-1, *frames.shape[-3:]))  # PIL reads each image's buffer as is
    if size is not None:
        height, width = size
        images = np.stack([np.asarray(Image.fromarray(image).resize((width, height), resample)) for image in images])
    # The processor's arithmetic, done once for each of the 256 levels a channel can hold, then looked up: the same
    # numbers, three times faster than over every pixel.
    levels = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, images.shape[-1]))
    table = (levels.astype(np.float64) * rescale_factor if rescale_factor is not None else levels).astype(np.float32)
    if mean is not None:
        table = (table - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    pixels = table[images, np.arange(images.shape[-1])]  # table[level, channel] for every pixel
    return pixels.reshape(*frames.shape[:-3], *pixels.shape[1:])
