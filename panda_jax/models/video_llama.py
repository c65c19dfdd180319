"""Video-LLaMA's vision-language branch (Zhang et al., 2023) in Flax NNX: a clip → a language model's prompt.

Every frame goes through BLIP-2's vision encoder and Q-Former, as an image would. A learned
frame-position embedding is added to each frame's query outputs, and a video Q-Former, whose own
learned queries cross-attend to the query outputs of every frame (`qformer.VideoQFormer`), reads
them as one clip; BLIP-2's language projection turns its outputs into the language model's
visual tokens. InstructBLIP-Video instead lays each frame's query outputs one after another and
leaves it to the language model to compare them, although nothing in them says which frame they
come from but their place in the prompt; here the frames are compared, with their order, before
the language model sees them. Motion is read there.

Two options of `video_config`, both off in Video-LLaMA: `motion_tokens` (the video Q-Former also
reads each frame's departure from the clip's average, `qformer.VideoQFormer`) and
`appearance_tokens` (the frames' query outputs, averaged over the clip, go to the language model
before the video tokens: what a frame shows reaches it as it does in BLIP-2, whatever the video
Q-Former learnt to keep). The grounded world's video teacher uses both: a video Q-Former pretrained
to read the action keeps little of the colours, and the appearance tokens carry them.

Video-LLaMA released its branch as a PyTorch pickle on top of BLIP-2's weights; here the whole
model is a Hugging Face-style folder: config.json is a `Blip2Config` (model_type "video_llama",
architectures "VideoLlamaForConditionalGeneration", `video_token_index` the placeholder, and
`video_config`: `max_frames`, `num_query_tokens`, `num_hidden_layers` of the video Q-Former), the
BLIP-2 tensors named as transformers names them and the video Q-Former's under "video.". The
prompt holds `video_config.num_query_tokens` placeholders (and `num_query_tokens` more before them
with `appearance_tokens`), whatever the number of frames.

Pixel values are NCHW floats [batch, frames, 3, H, W], as InstructBLIP-Video's processor makes them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from panda_jax.models import CheckpointError, checkpoint
from panda_jax.models.blip2 import Blip2, Blip2Config, blip2_ignore, blip2_slots
from panda_jax.models.qformer import VideoQFormer, frame_queries

MODEL_TYPES = ("video_llama",)
ARCHITECTURES = ("VideoLlamaForConditionalGeneration",)


@dataclass(frozen=True)
class VideoLlamaConfig(Blip2Config):
    max_frames: int = 8  # rows of the frame-position table
    num_video_query_tokens: int = 32
    video_layers: int = 2
    motion_tokens: bool = False  # the video Q-Former also reads each frame's departure from the clip's average
    appearance_tokens: bool = False  # the frames' query outputs, averaged over the clip, before the video tokens

    @classmethod
    def from_hf(cls, config: dict[str, Any], tensor_names: set[str]) -> VideoLlamaConfig:
        """From a "video_llama" config.json dict (a `Blip2Config` with `video_token_index` and `video_config`)."""
        if config.get("video_token_index") is None:
            raise CheckpointError("a video_llama config.json needs video_token_index: the prompt's placeholder id")
        video = config.get("video_config") or {}
        image = Blip2Config.from_hf(config | {"image_token_index": config["video_token_index"]}, tensor_names)
        return cls(
            **{field.name: getattr(image, field.name) for field in dataclasses.fields(Blip2Config)},
            max_frames=video.get("max_frames", 8),
            num_video_query_tokens=video.get("num_query_tokens", 32),
            video_layers=video.get("num_hidden_layers", 2),
            motion_tokens=video.get("motion_tokens", False),
            appearance_tokens=video.get("appearance_tokens", False),
        )


class VideoLlama(Blip2):
    """Clips [batch, frames, 3, H, W] and a prompt → the language model's logits, or a caption (see the module
    docstring); BLIP-2's methods, with visual tokens made of every frame."""

    def __init__(self, config: VideoLlamaConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if config.text_model_type == "t5":
            raise CheckpointError("Video-LLaMA's language model is decoder-only (LLaMA or OPT), not T5")
        super().__init__(config, dtype=dtype, rngs=rngs)
        self.video = VideoQFormer(config.qformer, config.max_frames, config.num_video_query_tokens,
                                  config.video_layers, motion_tokens=config.motion_tokens, dtype=dtype, rngs=rngs)  # fmt: skip

    @property
    def num_placeholders(self) -> int:
        appearance = self.config.num_query_tokens if self.config.appearance_tokens else 0
        return appearance + self.config.num_video_query_tokens

    def visual_tokens(self, pixel_values: jax.Array) -> jax.Array:
        """[batch, num_video_query_tokens, LM width] of pixel values [batch, frames, 3, H, W]."""
        if pixel_values.ndim != 5:
            raise ValueError(f"expected pixel values [batch, frames, 3, H, W], got shape {pixel_values.shape}")
        _, per_frame = frame_queries(self, pixel_values, self.config.max_frames)
        tokens = self.video(per_frame)
        if self.config.appearance_tokens:
            tokens = jnp.concatenate([per_frame.mean(axis=1), tokens], axis=1)
        return self.language_projection(tokens)


def video_llama_slots(model: VideoLlama, prefix: str = "") -> dict[str, checkpoint.Slot]:
    """BLIP-2's tensor names, and the video Q-Former's by their path under "video."."""
    return blip2_slots(model, prefix) | checkpoint.own_slots(model.video, nnx.Param, f"{prefix}video.")


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> VideoLlama:
    """A "video_llama" checkpoint folder as a Flax model, each parameter placed on `mesh` as it is read."""
    hf_config = checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES)
    weights = checkpoint.SafetensorsCheckpoint(directory)
    config = VideoLlamaConfig.from_hf(hf_config, weights.names())
    model = checkpoint.abstract(lambda: VideoLlama(config, dtype=dtype, rngs=nnx.Rngs(0)))
    checkpoint.fill(weights, model, video_llama_slots(model), ignore=blip2_ignore(model), what="Video-LLaMA", mesh=mesh)
    return model
