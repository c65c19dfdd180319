"""The Panda-70M student captioner: one model that learns what the teachers plus selection produce.

Built around a BLIP-2 checkpoint (OPT or LLaMA), whose vision encoder, Q-Former, query tokens
and language model stay frozen; the student adds, all trainable:

  video branch  each of the clip's frames → BLIP-2's vision encoder and Q-Former (32 queries
                per frame) + a learned frame-position embedding → a 2-layer video Q-Former
                whose 32 learned queries read every frame's query outputs → a linear layer into
                the language model's width: 32 video tokens;
  text branch   the prompt (the clip's subtitles and metadata, or a plain instruction) embedded
                by the language model's own token embeddings + learned positions (up to 200
                tokens) → a 2-layer text Q-Former whose queries are the video Q-Former's
                outputs, detached (the text branch cannot steer what the video branch sees),
                reading the prompt as keys and values → a linear layer: 32 text tokens.

The language model reads BOS, the 32 text tokens, the 32 video tokens, then the caption; the
loss is on the caption tokens only. Captions are generated with `generation.generate` from the
same 65-token prefix (3 beams by default).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from panda_jax.models import blip2, checkpoint, generation
from panda_jax.models.blip2 import Blip2
from panda_jax.models.layers import embedding, linear
from panda_jax.models.qformer import QFormer, VideoQFormer, frame_queries


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """The student's own layers; the frozen parts come with the BLIP-2 checkpoint."""

    num_frames: int = 8  # rows of the frame-position table: the most frames a clip may give
    num_queries: int = 32  # video tokens, and text tokens
    video_layers: int = 2
    text_layers: int = 2
    max_prompt_tokens: int = 200


class Student(nnx.Module):
    """The frozen BLIP-2 (`image_model`) and the student's trainable layers (see the module docstring)."""

    def __init__(self, image_model: Blip2, config: StudentConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if image_model.is_encoder_decoder:
            raise ValueError("the student reads its prompt and video tokens with a decoder-only language model "
                             "(OPT or LLaMA); this BLIP-2 has T5")  # fmt: skip
        self.image_model, self.config = image_model, config
        frame_qformer = image_model.config.qformer
        width, language_width = frame_qformer.hidden_size, image_model.config.text.hidden_size
        self.video = VideoQFormer(frame_qformer, config.num_frames, config.num_queries, config.video_layers,
                                  dtype=dtype, rngs=rngs)  # fmt: skip
        self.video_projection = linear(width, language_width, ("embed", "embed"), dtype=dtype, rngs=rngs)
        self.prompt_positions = embedding(config.max_prompt_tokens, language_width, ("positions", "embed"), rngs=rngs)
        self.text_qformer = QFormer(dataclasses.replace(
            frame_qformer, num_layers=config.text_layers, cross_attention_frequency=1, encoder_hidden_size=language_width,
            text_input=False, text_embeddings=False,
        ), dtype=dtype, rngs=rngs)  # fmt: skip
        self.text_projection = linear(width, language_width, ("embed", "embed"), dtype=dtype, rngs=rngs)

    @property
    def language_model(self) -> nnx.Module:
        return self.image_model.language_model

    def video_tokens(self, pixel_values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(video Q-Former outputs [B, queries, Q-Former width], video tokens [B, queries, LM width]) of
        pixel values [B, T, 3, H, W]."""
        _, per_frame = frame_queries(self.image_model, pixel_values, self.config.num_frames)
        video = self.video(per_frame)
        return video, self.video_projection(video)

    def prefix(self, pixel_values: jax.Array, prompt_ids: jax.Array, prompt_mask: jax.Array) -> jax.Array:
        """The language model's input before the caption, [B, 1 + 2 · queries, LM width]: BOS, text tokens,
        video tokens."""
        video, video_tokens = self.video_tokens(pixel_values)
        length = prompt_ids.shape[1]
        if length > self.config.max_prompt_tokens:
            raise ValueError(f"{length} prompt tokens, but the student has positions for {self.config.max_prompt_tokens}")
        prompt = self.language_model.embed(prompt_ids).astype(jnp.float32) + self.prompt_positions.embedding[:length]
        text = self.text_qformer(jax.lax.stop_gradient(video), prompt, image_mask=prompt_mask)
        bos = self.image_model.config.text.bos_token_id
        bos_embeds = self.language_model.embed(jnp.full((len(prompt_ids), 1), bos, jnp.int32)).astype(jnp.float32)
        return jnp.concatenate([bos_embeds, self.text_projection(text), video_tokens], axis=1)

    def __call__(
        self, pixel_values: jax.Array, prompt_ids: jax.Array, prompt_mask: jax.Array, caption_ids: jax.Array,
        caption_mask: jax.Array,
    ) -> jax.Array:  # fmt: skip
        """Logits [B, caption length, vocab] predicting each caption token from the prefix and the tokens before."""
        prefix = self.prefix(pixel_values, prompt_ids, prompt_mask)
        embeds = jnp.concatenate([prefix, self.language_model.embed(caption_ids).astype(jnp.float32)], axis=1)
        mask = jnp.concatenate([jnp.ones(prefix.shape[:2], caption_mask.dtype), caption_mask], axis=1)
        logits, _ = self.language_model(inputs_embeds=embeds, attention_mask=mask)
        return logits[:, prefix.shape[1] - 1 : -1]

    def generate(
        self, pixel_values: Any, prompt_ids: Any, prompt_mask: Any, generation_config: generation.GenerationConfig | None
    ) -> np.ndarray:
        """New token ids [B, <= max_new_tokens] (default: `GenerationConfig()`, 3 beams)."""
        prefix = _prefix(self, jnp.asarray(pixel_values), jnp.asarray(prompt_ids), jnp.asarray(prompt_mask))
        return generation.generate(
            self.language_model, inputs_embeds=prefix, attention_mask=jnp.ones(prefix.shape[:2], jnp.int32),
            **dataclasses.asdict(generation_config or generation.GenerationConfig()),
        )  # fmt: skip


_prefix = nnx.jit(Student.prefix)


def caption_loss(logits: jax.Array, caption_ids: jax.Array, caption_mask: jax.Array) -> jax.Array:
    """Mean cross-entropy of the caption tokens (`caption_mask` 1), float32."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), caption_ids)
    mask = caption_mask.astype(jnp.float32)
    return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# The parameters training may change: the student's own layers, never the BLIP-2 it is built around.
TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("image_model")))
ARCHITECTURE = "PandaStudent"  # config.json's `architectures` of a saved student


def student_slots(model: Student) -> dict[str, checkpoint.Slot]:
    """Tensor names of a saved student: the BLIP-2's as transformers names them, under "blip2.", and the
    student's own layers by their path, under "student."."""
    return blip2.blip2_slots(model.image_model, "blip2.") | checkpoint.own_slots(model, TRAINABLE, "student.")


def save(model: Student, directory: str | os.PathLike, blip2_directory: str | os.PathLike) -> Path:
    """Writes the student as a checkpoint folder `load` and `captioner.load_captioner` read: config.json (its
    BLIP-2's config and the student's), model.safetensors, and the BLIP-2 folder's tokenizer and processor."""
    config = {
        "architectures": [ARCHITECTURE], "model_type": "panda_student",
        "blip2": checkpoint.read_config(blip2_directory), "student": dataclasses.asdict(model.config),
    }  # fmt: skip
    path = checkpoint.save_pretrained(directory, config, model, student_slots(model))
    checkpoint.copy_beside(blip2_directory, path)
    return path


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> Student:
    """A student saved by `save` (placed on `mesh` as it is read)."""
    config = checkpoint.read_config(directory, ("panda_student",), (ARCHITECTURE,))
    weights = checkpoint.SafetensorsCheckpoint(directory)
    names = {name.removeprefix("blip2.") for name in weights.names()}
    blip2_config = blip2.Blip2Config.from_hf(config["blip2"], names)
    student_config = StudentConfig(**config["student"])

    def build() -> Student:
        return Student(blip2.Blip2(blip2_config, dtype=dtype, rngs=nnx.Rngs(0)), student_config, dtype=dtype,
                       rngs=nnx.Rngs(0))  # fmt: skip

    model = checkpoint.abstract(build)
    checkpoint.fill(weights, model, student_slots(model), ignore=blip2.blip2_ignore(model.image_model, "blip2."),
                    what="the student", mesh=mesh)  # fmt: skip
    return model


def from_blip2(
    directory: str | os.PathLike,
    config: StudentConfig = StudentConfig(),
    dtype: Any = jnp.float32,
    *,
    mesh: Mesh | None = None,
    seed: int = 0,
) -> Student:
    """A new student around the BLIP-2 checkpoint in `directory` (placed on `mesh` as it is read), its own
    layers drawn from `seed`."""
    from panda_jax.models import sharding

    student = Student(blip2.load(directory, dtype, mesh=mesh), config, dtype=dtype, rngs=nnx.Rngs(seed))
    return student if mesh is None else sharding.shard_model(student, mesh)
