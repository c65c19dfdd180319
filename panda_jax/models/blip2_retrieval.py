"""BLIP-2's image-text retrieval model (Hugging Face's `Blip2ForImageTextRetrieval`) in Flax NNX.

The vision encoder's patch features are read by the Q-Former's learned queries; captions are
read by the same Q-Former as text (its text embeddings sit beside it, as `embeddings.*`).
Two scores, as in BLIP-2's first training stage:

- ITC, image-text contrastive: the query outputs and the caption's first ([CLS]) output are
  projected into one space and L2-normalised; an image and a text score the highest cosine
  similarity over the queries. Images and texts are encoded apart (`encode_image`,
  `encode_text`, `itc_similarity`), so ranking many captions encodes each once. These are the
  raw cosines Hugging Face returns as `logits_per_image`: no temperature is applied.
- ITM, image-text matching: queries and caption go through the Q-Former together, the queries
  also attending to the image; a linear head gives every query (no match, match) logits, and
  their mean over the queries is the pair's score. One Q-Former pass per pair.

Checkpoints: model_type "blip-2" with `architectures` ["Blip2ForImageTextRetrieval"], e.g.
Salesforce/blip2-itm-vit-g, whose tokenizer is BERT's (`checkpoint.load_tokenizer`).
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
from panda_jax.models.blip2_vision import VisionConfig, VisionEncoder, vision_slots
from panda_jax.models.checkpoint import Slot
from panda_jax.models.layers import linear
from panda_jax.models.qformer import QFormer, QFormerConfig, QueryTokens, qformer_slots, query_token_slots

MODEL_TYPES = ("blip-2",)
ARCHITECTURES = ("Blip2ForImageTextRetrieval",)


@dataclass(frozen=True)
class RetrievalConfig:
    vision: VisionConfig
    qformer: QFormerConfig
    num_query_tokens: int = 32
    image_text_hidden_size: int = 256  # width of the ITC space
    image_token_index: int | None = None  # set: input_ids start with num_query_tokens image placeholders

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> RetrievalConfig:
        """From a `Blip2Config` dict; its `text_config` (a language model) is not used here."""
        vision = VisionConfig.from_hf(config.get("vision_config", {}))
        qformer = QFormerConfig.from_hf(config.get("qformer_config", {}))
        if not qformer.text_input:
            raise CheckpointError(
                "a BLIP-2 retrieval model reads text with its Q-Former: qformer_config.use_qformer_text_input is false"
            )
        # Like Blip2Config, the Q-Former cross-attends to features as wide as the vision encoder's.
        qformer = dataclasses.replace(qformer, text_embeddings=True, encoder_hidden_size=vision.hidden_size)
        return cls(
            vision=vision,
            qformer=qformer,
            num_query_tokens=config.get("num_query_tokens", 32),
            image_text_hidden_size=config.get("image_text_hidden_size", 256),
            image_token_index=config.get("image_token_index"),
        )


def l2_normalize(x: jax.Array) -> jax.Array:
    """Unit vectors along the last axis, as torch's F.normalize (eps 1e-12)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def itc_similarity(image_embeds: jax.Array, text_embeds: jax.Array) -> jax.Array:
    """ITC scores [images, texts]: the best cosine over an image's queries.

    image_embeds: [images, queries, dim] from `encode_image`; text_embeds: [texts, dim] from
    `encode_text`.
    """
    return jnp.einsum("iqd,td->iqt", image_embeds, text_embeds).max(axis=1)


class Blip2Retrieval(nnx.Module):
    """Vision encoder, learned queries, Q-Former with text embeddings, ITC projections and ITM head.

    Pixel values are float [batch, 3, H, W] (NCHW) as BLIP-2's image processor makes them;
    input_ids and attention_mask [batch, length] as its (BERT) tokenizer makes them. Every
    score is float32; with `dtype=bfloat16` the encoders' matrix products run in bfloat16.
    """

    def __init__(self, config: RetrievalConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        hidden, shared = config.qformer.hidden_size, config.image_text_hidden_size
        self.vision_model = VisionEncoder(config.vision, dtype=dtype, rngs=rngs)
        self.query_tokens = QueryTokens(config.num_query_tokens, hidden, rngs=rngs)
        self.qformer = QFormer(config.qformer, dtype=dtype, rngs=rngs)
        self.vision_projection = linear(hidden, shared, ("embed", "embed"), dtype=jnp.float32, rngs=rngs)
        self.text_projection = linear(hidden, shared, ("embed", "embed"), dtype=jnp.float32, rngs=rngs)
        self.itm_head = linear(hidden, 2, ("embed", None), dtype=jnp.float32, rngs=rngs)

    def _caption(self, input_ids: jax.Array, attention_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        """The caption's tokens and mask, without the image placeholders some processors put first."""
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if self.config.image_token_index is not None:
            skip = self.config.num_query_tokens
            input_ids, attention_mask = input_ids[:, skip:], attention_mask[:, skip:]
        return input_ids, attention_mask

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """The vision encoder's output [batch, patches + 1, vision hidden], for the *_from_features methods."""
        return self.vision_model(pixel_values)

    def encode_image_from_features(self, image_features: jax.Array) -> jax.Array:
        """Normalised ITC embeddings of every query, [batch, queries, image_text_hidden_size]."""
        queries = self.qformer(self.query_tokens(image_features.shape[0]), image_features)
        return l2_normalize(self.vision_projection(queries))

    def encode_image(self, pixel_values: jax.Array) -> jax.Array:
        """Normalised ITC embeddings of every query, [batch, queries, image_text_hidden_size]."""
        return self.encode_image_from_features(self.image_features(pixel_values))

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Normalised ITC embedding of each caption ([CLS] output, projected), [batch, image_text_hidden_size]."""
        input_ids, attention_mask = self._caption(input_ids, attention_mask)
        hidden = self.qformer(None, None, input_ids, attention_mask)
        return l2_normalize(self.text_projection(hidden[:, 0]))

    def itc(
        self, pixel_values: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(logits_per_image [images, texts], logits_per_text [texts, images]): every image with every text."""
        logits_per_image = itc_similarity(self.encode_image(pixel_values), self.encode_text(input_ids, attention_mask))
        return logits_per_image, logits_per_image.T

    def itm_scores_from_features(
        self, image_features: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """ITM logits [batch, 2] (no match, match) of image i with caption i."""
        input_ids, attention_mask = self._caption(input_ids, attention_mask)
        num_queries = self.config.num_query_tokens
        queries = self.query_tokens(image_features.shape[0])
        hidden = self.qformer(queries, image_features, input_ids, attention_mask)
        return self.itm_head(hidden[:, :num_queries]).mean(axis=1)

    def itm_scores(
        self, pixel_values: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """ITM logits [batch, 2] (no match, match) of image i with caption i; softmax gives P(match)."""
        return self.itm_scores_from_features(self.image_features(pixel_values), input_ids, attention_mask)


def retrieval_slots(model: Blip2Retrieval, prefix: str = "") -> dict[str, Slot]:
    """Hugging Face tensor names (after `prefix`) for every parameter."""
    return (
        vision_slots(model.vision_model, f"{prefix}vision_model.")
        | query_token_slots(model.query_tokens, f"{prefix}query_tokens")
        | qformer_slots(model.qformer, f"{prefix}qformer.", embeddings_prefix=f"{prefix}embeddings.")
        | checkpoint.linear_slots(f"{prefix}vision_projection", model.vision_projection)
        | checkpoint.linear_slots(f"{prefix}text_projection", model.text_projection)
        | checkpoint.linear_slots(f"{prefix}itm_head", model.itm_head)
    )


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> Blip2Retrieval:
    """A `Blip2ForImageTextRetrieval` checkpoint directory as a Blip2Retrieval.

    BLIP-2 captioning checkpoints share model_type "blip-2": they are told apart by
    `architectures` and refused, like any other architecture, before any weight is read.
    Raises CheckpointError naming every missing, unexpected or misshaped tensor. With a
    `mesh`, each parameter is placed on it as it is read (`checkpoint.fill`).
    """
    config = RetrievalConfig.from_hf(checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES))
    model = checkpoint.abstract(lambda: Blip2Retrieval(config, dtype=dtype, rngs=nnx.Rngs(0)))
    weights = checkpoint.SafetensorsCheckpoint(directory)
    checkpoint.fill(weights, model, retrieval_slots(model), what="the BLIP-2 retrieval model", mesh=mesh)
    return model
