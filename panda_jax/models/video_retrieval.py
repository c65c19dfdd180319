"""The caption selector: a video-text retrieval model built from image-text models the zoo loads.

Panda-70M picks each clip's caption with Unmasked Teacher (UMT-L: a ViT-L/16 video encoder and
BERT-large), fine-tuned with video-text contrast (VTC) and matching (VTM). There is no UMT in
transformers to prove an implementation against and no UMT weights offline, so the selector is
assembled from parts whose loaders are at parity with transformers, and keeps UMT's two heads:

  `Blip2VideoRetrieval` (a `Blip2ForImageTextRetrieval` folder, e.g. Salesforce/blip2-itm-vit-g):
    every frame goes through BLIP-2's vision encoder and Q-Former; the per-frame query outputs
    get a learned frame-position embedding and a small temporal transformer that attends across
    frames (query slot by query slot), and their mean over frames is the video's VTC embedding,
    scored against the Q-Former's text branch as BLIP-2's ITC scores an image (the best cosine
    over the queries). VTM reads the video tokens: every frame's patch features, each with its
    frame's learned position, all cross-attended by the Q-Former's queries beside the caption,
    as BLIP-2's ITM reads one image's (UMT's VTM also attends to all video tokens).
  `ClipVideoRetrieval` (a `CLIPModel` folder), the cheap option: CLIP4Clip's mean of the frame
    embeddings; its VTM is a learned calibration of the cosine, sigmoid(scale · cos + bias).

The new layers start as the identity: positions at 0 and the temporal layers' output
projections at 0, so before any training a one-frame video scores exactly as the image model
scores the frame, and fine-tuning (panda_jax.train) starts from the image model's judgement.
Both models score with one `score` call: (VTC cosine, VTM probability) per candidate caption.

A UMT checkpoint would plug in as one more model file (a `umt.py` with `load()` mapping its
state dict, like the others) whose model has the four methods below (`encode_video`,
`encode_text`, `similarity`, `match_logits`), and a branch of `load` choosing it by its
config's architecture; the select stage and the losses need nothing else.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from panda_jax.models import blip2_retrieval, checkpoint, clip, sharding
from panda_jax.models.blip2_retrieval import Blip2Retrieval, itc_similarity, l2_normalize
from panda_jax.models.blip2_vision import VisionConfig, VisionLayer
from panda_jax.models.qformer import frame_queries
from panda_jax.models.clip import CLIPModel
from panda_jax.models.sharding import logical

ARCHITECTURES = blip2_retrieval.ARCHITECTURES + clip.ARCHITECTURES
INITIAL_TEMPERATURE = 0.07  # BLIP's and CLIP's VTC temperature before training


@dataclasses.dataclass(frozen=True)
class VideoConfig:
    """The layers a video adds to the image model."""

    max_frames: int = 12  # rows of the frame-position tables: the most frames a clip may give
    temporal_layers: int = 2


@flax.struct.dataclass
class VideoFeatures:
    """What `encode_video` gives: `embeds` for VTC, `tokens` for VTM (None where VTM reads `embeds`)."""

    embeds: jax.Array
    tokens: jax.Array | None = None


class VideoTextModel(nnx.Module):
    """What both selectors share: scoring each candidate caption of a batch of clips."""

    def encode_video(self, pixel_values: jax.Array) -> VideoFeatures:
        raise NotImplementedError

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        raise NotImplementedError

    def similarity(self, video_embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
        raise NotImplementedError

    def match_logits(self, video: VideoFeatures, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        raise NotImplementedError

    def score(
        self, pixel_values: jax.Array, input_ids: jax.Array, attention_mask: jax.Array, video_index: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(VTC cosine [N], VTM probability [N]) of each caption with its clip.

        pixel_values: [clips, frames, 3, H, W]; input_ids, attention_mask: [N, length];
        video_index [N]: the clip of each caption.
        """
        video = self.encode_video(pixel_values)
        similarity = self.similarity(video.embeds, self.encode_text(input_ids, attention_mask))
        pair_similarity = similarity[video_index, jnp.arange(len(video_index))]
        pairs = jax.tree.map(lambda features: features[video_index], video)
        return pair_similarity, jax.nn.softmax(self.match_logits(pairs, input_ids, attention_mask))[:, 1]


def _zeros(*axes: str | None) -> Any:
    return logical(nnx.initializers.zeros_init(), *axes)


class Blip2VideoRetrieval(VideoTextModel):
    """BLIP-2's retrieval model over the frames of a clip (see the module docstring)."""

    def __init__(self, image_model: Blip2Retrieval, video: VideoConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.image_model, self.video = image_model, video
        width, vision_width = image_model.config.qformer.hidden_size, image_model.config.vision.hidden_size
        self.frame_position = nnx.Param(_zeros("positions", "embed")(rngs.params(), (video.max_frames, width)))
        self.token_frame_position = nnx.Param(
            _zeros("positions", "embed")(rngs.params(), (video.max_frames, vision_width))
        )
        qformer = image_model.config.qformer
        temporal = VisionConfig(
            hidden_size=width, intermediate_size=qformer.intermediate_size, num_layers=video.temporal_layers,
            num_heads=qformer.num_heads, hidden_act=qformer.hidden_act, layer_norm_eps=qformer.layer_norm_eps,
        )  # fmt: skip
        self.temporal_layers = nnx.List(VisionLayer(temporal, dtype=dtype, rngs=rngs) for _ in range(video.temporal_layers))
        for layer in self.temporal_layers:  # residual branches that add nothing until trained
            for output in (layer.self_attn.projection, layer.mlp.fc2):
                output.kernel[...] = jnp.zeros_like(output.kernel[...])
        self.logit_scale = nnx.Param(logical(nnx.initializers.constant(-math.log(INITIAL_TEMPERATURE)))(rngs.params(), ()))

    def encode_video(self, pixel_values: jax.Array) -> VideoFeatures:
        clips, frames = pixel_values.shape[:2]
        model = self.image_model
        features, queries = frame_queries(model, pixel_values, self.video.max_frames)
        num_queries, width = queries.shape[2:]
        x = queries + self.frame_position[:frames][None, :, None]
        x = x.transpose(0, 2, 1, 3).reshape(clips * num_queries, frames, width)  # attend across frames, per query
        for layer in self.temporal_layers:
            x = layer(x)
        pooled = x.reshape(clips, num_queries, frames, width).mean(axis=2)
        embeds = l2_normalize(model.vision_projection(pooled))
        patches, vision_width = features.shape[1:]
        tokens = features.reshape(clips, frames, patches, vision_width) + self.token_frame_position[:frames][None, :, None]
        return VideoFeatures(embeds, tokens.reshape(clips, frames * patches, vision_width))

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        return self.image_model.encode_text(input_ids, attention_mask)

    def similarity(self, video_embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
        """Cosines [videos, texts]: the best over the video's queries."""
        return itc_similarity(video_embeds, text_embeds)

    def match_logits(self, video: VideoFeatures, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        """VTM logits [N, 2] (no match, match) of video i with caption i."""
        return self.image_model.itm_scores_from_features(video.tokens, input_ids, attention_mask)


class ClipVideoRetrieval(VideoTextModel):
    """CLIP4Clip (mean of frame embeddings) with a calibrated cosine as its matching head."""

    def __init__(self, image_model: CLIPModel, *, rngs: nnx.Rngs):
        self.image_model = image_model
        # sigmoid(10 · cos - 2): 0.5 at cosine 0.2, between CLIP's typical matched and unmatched pairs.
        self.match_scale = nnx.Param(logical(nnx.initializers.constant(10.0))(rngs.params(), ()))
        self.match_bias = nnx.Param(logical(nnx.initializers.constant(-2.0))(rngs.params(), ()))

    @property
    def logit_scale(self) -> nnx.Param:
        return self.image_model.logit_scale

    def encode_video(self, pixel_values: jax.Array) -> VideoFeatures:
        clips, frames = pixel_values.shape[:2]
        frame_embeds = l2_normalize(self.image_model.encode_image(pixel_values.reshape(clips * frames, *pixel_values.shape[2:])))
        return VideoFeatures(l2_normalize(frame_embeds.reshape(clips, frames, -1).mean(axis=1)))

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        return l2_normalize(self.image_model.encode_text(input_ids, attention_mask))

    def similarity(self, video_embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
        return video_embeds @ text_embeds.T

    def match_logits(self, video: VideoFeatures, input_ids: jax.Array, attention_mask: jax.Array) -> jax.Array:
        cosine = jnp.sum(video.embeds * self.encode_text(input_ids, attention_mask), axis=-1)
        match = self.match_scale[...] * cosine + self.match_bias[...]
        return jnp.stack([jnp.zeros_like(match), match], axis=-1)


# The parameters a video adds to the image model; config.json's key of its `VideoConfig` in a saved selector.
VIDEO_LAYERS = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("image_model")))
VIDEO_CONFIG = "panda_video"


def video_slots(model: Blip2VideoRetrieval) -> dict[str, checkpoint.Slot]:
    """Tensor names of a saved selector: BLIP-2's retrieval model as transformers names it, and the video layers
    by their path under "video."."""
    return blip2_retrieval.retrieval_slots(model.image_model) | checkpoint.own_slots(model, VIDEO_LAYERS, "video.")


def save(model: VideoTextModel, directory: str | os.PathLike, image_directory: str | os.PathLike) -> Path:
    """Writes a (fine-tuned) selector as a checkpoint folder: still a `Blip2ForImageTextRetrieval` folder, which
    transformers reads (the video layers aside), with the video layers and their `panda_video` config, and the
    tokenizer and processor of the folder it started from."""
    if not isinstance(model, Blip2VideoRetrieval):
        raise ValueError("only the BLIP-2 selector is saved so far; the CLIP one is not")
    config = checkpoint.read_config(image_directory) | {VIDEO_CONFIG: dataclasses.asdict(model.video)}
    path = checkpoint.save_pretrained(directory, config, model, video_slots(model))
    checkpoint.copy_beside(image_directory, path)
    return path


def load(
    directory: str | os.PathLike,
    dtype: Any = jnp.float32,
    *,
    mesh: Mesh | None = None,
    video: VideoConfig = VideoConfig(),
    seed: int = 0,
) -> VideoTextModel:
    """The selector of a `Blip2ForImageTextRetrieval` or `CLIPModel` folder.

    A folder `save` wrote brings its video layers (and their `VideoConfig`, which wins over
    `video`); any other gets new ones, drawn from `seed`, placed after the image model. The
    image model's parameters go from the file to their place on `mesh` as they are read.
    Raises CheckpointError for any other architecture before reading a weight.
    """
    config = checkpoint.read_config(directory, architectures=ARCHITECTURES)
    if set(config.get("architectures") or []) & set(clip.ARCHITECTURES):
        model: VideoTextModel = ClipVideoRetrieval(clip.load(directory, dtype, mesh=mesh), rngs=nnx.Rngs(seed))
    elif VIDEO_CONFIG in config:
        image_config = blip2_retrieval.RetrievalConfig.from_hf(config)
        saved = VideoConfig(**config[VIDEO_CONFIG])
        model = checkpoint.abstract(lambda: Blip2VideoRetrieval(
            blip2_retrieval.Blip2Retrieval(image_config, dtype=dtype, rngs=nnx.Rngs(0)), saved, dtype=dtype,
            rngs=nnx.Rngs(0)))  # fmt: skip
        checkpoint.fill(checkpoint.SafetensorsCheckpoint(directory), model, video_slots(model), what="the selector",
                        mesh=mesh)  # fmt: skip
        return model
    else:
        image_model = blip2_retrieval.load(directory, dtype, mesh=mesh)
        model = Blip2VideoRetrieval(image_model, video, dtype=dtype, rngs=nnx.Rngs(seed))
    return model if mesh is None else sharding.shard_model(model, mesh)
