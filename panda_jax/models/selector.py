"""One scoring call for caption selection: uint8 frames and candidate captions in, scores out.

`Selector.score(frames [B, T, H, W, 3] uint8, candidates)` gives every candidate caption of
every clip its VTC cosine and VTM matching probability (`video_retrieval.VideoTextModel.score`).
It hides the pixel preprocessing (`preprocess.pixel_values`, the pixels training's pipeline
makes: bicubic resize to the model's square input, OpenAI CLIP's mean and std; for a CLIP
checkpoint too, whose own processor would crop the short side's square, because the selector
is trained on whole frames), the tokenizer (captions cut to `max_text_tokens`, padded on the
right) and the padding: clips, captions and token lengths are padded to a few fixed sizes
(`inference.bucket`), so a stream of batches compiles a bounded number of programs, and batches
are split over the mesh's 'data' axis.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from panda_jax.models import checkpoint, sharding, video_retrieval
from panda_jax.models.captioner import ImageProcessor, processor_settings
from panda_jax.models.clip import IMAGE_MEAN, IMAGE_STD
from panda_jax.models.inference import bucket, compiled, pad_rows, pad_tokens
from panda_jax.models.video_retrieval import VideoTextModel

SHORTEST_TEXT = 8  # captions are padded to 8, 16, 32, ... tokens


def image_size(model: VideoTextModel) -> int:
    """The square input size of the model's vision encoder."""
    return model.image_model.config.vision.image_size


class Selector:
    """Scores candidate captions of clips with a video-text retrieval model (see the module docstring)."""

    def __init__(
        self,
        model: VideoTextModel,
        tokenizer: Any,
        image_processor: ImageProcessor,
        *,
        max_clips: int = 8,
        max_text_tokens: int = 40,
        mesh: Mesh | None = None,
    ):
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.max_clips, self.max_text_tokens, self.mesh = max_clips, max_text_tokens, mesh
        self._score = compiled(model, "score")

    def _rows(self, rows: int, largest: int) -> int:
        """`rows` padded to its bucket and to a multiple of the mesh's 'data' axis."""
        padded = bucket(rows, largest)
        data = 1 if self.mesh is None else self.mesh.shape["data"]
        return -(-padded // data) * data

    def score(self, frames: np.ndarray, candidates: Sequence[Sequence[str]]) -> list[list[tuple[float, float]]]:
        """(VTC cosine, VTM probability) of each candidate caption of each clip of `frames` (uint8
        [B, T, H, W, 3], RGB), in the order given."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 [clips, frames, height, width, 3], not {frames.dtype} {frames.shape}")
        if len(frames) != len(candidates):
            raise ValueError(f"{len(frames)} clips but candidates for {len(candidates)}")
        scores: list[list[tuple[float, float]]] = []
        for start in range(0, len(frames), self.max_clips):
            scores += self._score_chunk(frames[start : start + self.max_clips], candidates[start : start + self.max_clips])
        return scores

    def _score_chunk(self, frames: np.ndarray, candidates: Sequence[Sequence[str]]) -> list[list[tuple[float, float]]]:
        texts = [text for clip in candidates for text in clip]
        if not texts:
            return [[] for _ in candidates]
        video_index = np.asarray([i for i, clip in enumerate(candidates) for _ in clip], np.int32)
        tokens = self.tokenizer(texts, truncation=True, max_length=self.max_text_tokens)["input_ids"]
        length = bucket(max(len(t) for t in tokens), self.max_text_tokens, SHORTEST_TEXT)
        ids, mask = pad_tokens(tokens, length, self.tokenizer.pad_token_id or 0, "right")
        rows = self._rows(len(texts), self.max_clips * 8)
        pixel_values = pad_rows(self.image_processor(frames), self._rows(len(frames), self.max_clips))
        batch = (pixel_values, pad_rows(ids, rows), pad_rows(mask, rows), pad_rows(video_index, rows))
        if self.mesh is not None:
            batch = sharding.shard_batch(batch, self.mesh)
        similarity, probability = (np.asarray(x)[: len(texts)] for x in self._score(*batch))
        scores, at = [], 0
        for clip in candidates:
            scores.append([(float(similarity[i]), float(probability[i])) for i in range(at, at + len(clip))])
            at += len(clip)
        return scores


def load_selector(
    directory: str | os.PathLike,
    dtype: Any = jnp.float32,
    *,
    mesh: Mesh | None = None,
    video: video_retrieval.VideoConfig = video_retrieval.VideoConfig(),
    **options: Any,
) -> Selector:
    """The selector for a checkpoint folder (`video_retrieval.load`), with its tokenizer and the image
    processor's mean and std; `options` go to `Selector`."""
    model = video_retrieval.load(directory, dtype, mesh=mesh, video=video)
    settings = processor_settings(directory)
    size = image_size(model)
    processor = ImageProcessor(
        (size, size),
        image_mean=tuple(settings.get("image_mean", IMAGE_MEAN)),
        image_std=tuple(settings.get("image_std", IMAGE_STD)),
    )
    return Selector(model, checkpoint.load_tokenizer(directory), processor, mesh=mesh, **options)
