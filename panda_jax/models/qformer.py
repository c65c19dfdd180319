"""The Q-Former of BLIP-2 and InstructBLIP (Querying Transformer) in Flax NNX.

A BERT-style, post-LayerNorm encoder that distils the vision encoder's patch features into a
few learned query vectors. The sequence is [queries; text tokens], LayerNorm-ed once at the
input. Each layer runs self-attention over the whole sequence; then the query positions alone
cross-attend to the image features (in every `cross_attention_frequency`-th layer, the first
included) and go through a feed-forward of their own (`intermediate_query`/`output_query`),
while text positions go through the BERT feed-forward (`intermediate`/`output`).

One module serves the three ways BLIP-2 models use it:
(a) queries only: BLIP-2's captioning reads the query outputs;
(b) queries and instruction tokens: InstructBLIP conditions the queries on the instruction;
(c) text only, no image: BLIP-2's retrieval model encodes captions for contrastive matching.

Hugging Face names the same tensors two ways. `Blip2QFormerModel` has `layernorm` and no text
embeddings (`Blip2ForImageTextRetrieval` keeps them beside it, as `embeddings.*`);
`InstructBlipQFormerModel` (and InstructBLIP-Video's) keeps word and position embeddings and
that LayerNorm under `embeddings.`. The learned queries belong to the enclosing model
(`query_tokens`), see `QueryTokens`.
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
from panda_jax.models.checkpoint import Slot
from panda_jax.models.layers import activation, attention, embedding, layer_norm, linear
from panda_jax.models.sharding import logical

LAYOUTS = {  # Hugging Face model_type → tensor naming
    "blip_2_qformer": "blip2",
    "instructblip_qformer": "instructblip",
    "instructblipvideo_qformer": "instructblip",
}
ARCHITECTURES = ("Blip2QFormerModel", "InstructBlipQFormerModel", "InstructBlipVideoQFormerModel")


@dataclass(frozen=True)
class QFormerConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    layer_norm_eps: float = 1e-12
    cross_attention_frequency: int = 2
    encoder_hidden_size: int = 1408  # width of the image features cross-attended to
    layout: str = "blip2"  # "blip2" or "instructblip" tensor names
    text_input: bool = False  # layers have the text feed-forward
    text_embeddings: bool = False  # word and position embeddings are part of this module

    def __post_init__(self):
        if self.layout not in set(LAYOUTS.values()):
            raise ValueError(f"unknown Q-Former layout {self.layout!r}")
        if self.text_embeddings and not self.text_input:
            raise ValueError("a Q-Former with text embeddings needs the text feed-forward (text_input)")

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> QFormerConfig:
        """From a Q-Former config dict (`qformer_config` of a BLIP-2 or InstructBLIP config.json).

        BLIP-2's has the text feed-forward only with `use_qformer_text_input` and never the
        text embeddings; InstructBLIP's always has both.
        """
        model_type = config.get("model_type", "blip_2_qformer")
        if model_type not in LAYOUTS:
            raise CheckpointError(f"{model_type!r} is not a Q-Former config; expected one of {', '.join(LAYOUTS)}")
        layout = LAYOUTS[model_type]
        text_input = layout == "instructblip" or bool(config.get("use_qformer_text_input", False))
        default = cls()
        return cls(
            vocab_size=config.get("vocab_size", default.vocab_size),
            hidden_size=config.get("hidden_size", default.hidden_size),
            num_layers=config.get("num_hidden_layers", default.num_layers),
            num_heads=config.get("num_attention_heads", default.num_heads),
            intermediate_size=config.get("intermediate_size", default.intermediate_size),
            hidden_act=config.get("hidden_act", default.hidden_act),
            max_position_embeddings=config.get("max_position_embeddings", default.max_position_embeddings),
            layer_norm_eps=config.get("layer_norm_eps", default.layer_norm_eps),
            cross_attention_frequency=config.get("cross_attention_frequency", default.cross_attention_frequency),
            encoder_hidden_size=config.get("encoder_hidden_size", default.encoder_hidden_size),
            layout=layout,
            text_input=text_input,
            text_embeddings=layout == "instructblip",
        )


class QFormerAttention(nnx.Module):
    """Multi-head attention (self or cross), then LayerNorm(dense(attended) + input): BERT's post-LN."""

    def __init__(self, config: QFormerConfig, context_features: int, *, dtype: Any, rngs: nnx.Rngs):
        h = config.hidden_size
        self.num_heads = config.num_heads
        self.query = linear(h, h, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.key = linear(context_features, h, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.value = linear(context_features, h, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.dense = linear(h, h, ("heads", "embed"), dtype=dtype, rngs=rngs)
        self.norm = layer_norm(h, config.layer_norm_eps, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        def heads(t: jax.Array) -> jax.Array:
            return t.reshape(*t.shape[:2], self.num_heads, -1)

        attended = attention(heads(self.query(x)), heads(self.key(context)), heads(self.value(context)), key_mask)
        return self.norm(self.dense(attended.reshape(x.shape[:2] + (-1,))) + x)


class FeedForward(nnx.Module):
    """LayerNorm(output(act(intermediate(x))) + x)."""

    def __init__(self, config: QFormerConfig, *, dtype: Any, rngs: nnx.Rngs):
        h, i = config.hidden_size, config.intermediate_size
        self.intermediate = linear(h, i, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.output = linear(i, h, ("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.norm = layer_norm(h, config.layer_norm_eps, rngs=rngs)
        self.act = activation(config.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.output(self.act(self.intermediate(x))) + x)


class QFormerLayer(nnx.Module):
    def __init__(self, config: QFormerConfig, index: int, *, dtype: Any, rngs: nnx.Rngs):
        self.attention = QFormerAttention(config, config.hidden_size, dtype=dtype, rngs=rngs)
        self.crossattention = (
            QFormerAttention(config, config.encoder_hidden_size, dtype=dtype, rngs=rngs)
            if index % config.cross_attention_frequency == 0
            else None
        )
        self.query_feed_forward = FeedForward(config, dtype=dtype, rngs=rngs)
        self.text_feed_forward = FeedForward(config, dtype=dtype, rngs=rngs) if config.text_input else None

    def __call__(
        self,
        x: jax.Array,
        key_mask: jax.Array | None,
        image_embeds: jax.Array | None,
        num_queries: int,
        image_mask: jax.Array | None = None,
    ) -> jax.Array:
        x = self.attention(x, x, key_mask)
        queries, text = x[:, :num_queries], x[:, num_queries:]
        outputs = []
        if num_queries:
            if self.crossattention is not None:
                queries = self.crossattention(queries, image_embeds, image_mask)
            outputs.append(self.query_feed_forward(queries))
        if text.shape[1]:
            outputs.append(self.text_feed_forward(text))
        return jnp.concatenate(outputs, axis=1)


class QueryTokens(nnx.Module):
    """The learned queries that BLIP-2 models keep beside their Q-Former (`query_tokens`)."""

    def __init__(self, num_queries: int, hidden_size: int, *, rngs: nnx.Rngs):
        init = logical(nnx.initializers.normal(0.02), "queries", "embed")
        self.embedding = nnx.Param(init(rngs.params(), (num_queries, hidden_size)))

    def __call__(self, batch_size: int) -> jax.Array:
        """[batch_size, queries, hidden], float32."""
        return jnp.broadcast_to(self.embedding[...], (batch_size, *self.embedding.shape))


def query_token_slots(tokens: QueryTokens, name: str = "query_tokens") -> dict[str, Slot]:
    """The slot of Hugging Face's `query_tokens` [1, queries, hidden]."""
    return {name: Slot.reshaped(tokens.embedding, (1, *tokens.embedding.shape))}


def frame_queries(model: Any, pixel_values: jax.Array, max_frames: int) -> tuple[jax.Array, jax.Array]:
    """Every frame of clips [B, T, 3, H, W] through a BLIP-2-style model's vision encoder and Q-Former (its
    `vision_model`, `query_tokens`, `qformer`): (patch features [B·T, patches, width], query outputs [B, T, queries,
    hidden]). The models that read clips frame by frame (the selector, the student) have `max_frames` positions."""
    clips, frames = pixel_values.shape[:2]
    if frames > max_frames:
        raise ValueError(f"{frames} frames per clip, but the model has frame positions for {max_frames}")
    features = model.vision_model(pixel_values.reshape(clips * frames, *pixel_values.shape[2:]))
    queries = model.qformer(model.query_tokens(clips * frames), features)
    return features, queries.reshape(clips, frames, *queries.shape[1:])


class QFormer(nnx.Module):
    """Queries and/or text tokens, and the image features → hidden states [batch, queries + text, hidden].

    Returns Hugging Face's `last_hidden_state` (float32): query outputs first, then text.
    """

    def __init__(self, config: QFormerConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        h = config.hidden_size
        if config.text_embeddings:
            self.word_embeddings = embedding(config.vocab_size, h, ("vocab", "embed"), rngs=rngs)
            self.position_embeddings = embedding(config.max_position_embeddings, h, ("positions", "embed"), rngs=rngs)
        else:
            self.word_embeddings = self.position_embeddings = None
        self.layernorm = layer_norm(h, config.layer_norm_eps, rngs=rngs)
        self.layers = nnx.List(QFormerLayer(config, i, dtype=dtype, rngs=rngs) for i in range(config.num_layers))

    def __call__(
        self,
        query_embeds: jax.Array | None,
        image_embeds: jax.Array | None,
        input_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        image_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Runs the Q-Former.

        query_embeds: [batch, queries, hidden] (usually `QueryTokens`), or None for text only.
        image_embeds: [batch, patches, encoder_hidden_size], the vision encoder's output; needed
            with queries, unused without.
        input_ids: [batch, text] token ids (positions count from 0 after the queries), or None.
        attention_mask: [batch, text], 1 (or True) for real tokens and 0 for padding; the
            queries are always attended to. None: every token is real.
        image_mask: [batch, patches], which of `image_embeds` the queries may attend to (the
            student's text Q-Former reads a padded prompt there). None: all.
        """
        if query_embeds is None and input_ids is None:
            raise ValueError("the Q-Former needs query_embeds, input_ids or both")
        num_queries = 0 if query_embeds is None else query_embeds.shape[1]
        if num_queries and image_embeds is None:
            raise ValueError("queries cross-attend to the image: give image_embeds")
        parts = [] if query_embeds is None else [query_embeds.astype(jnp.float32)]
        key_mask = None
        if input_ids is not None:
            if self.word_embeddings is None:
                raise ValueError("this Q-Former has no text embeddings, so it cannot read input_ids")
            positions = jnp.arange(input_ids.shape[1])
            parts.append(self.word_embeddings(input_ids) + self.position_embeddings(positions)[None])
            if attention_mask is not None:
                query_mask = jnp.ones((input_ids.shape[0], num_queries), bool)
                key_mask = jnp.concatenate([query_mask, attention_mask.astype(bool)], axis=1)
        x = self.layernorm(jnp.concatenate(parts, axis=1))
        for layer in self.layers:
            x = layer(x, key_mask, image_embeds, num_queries, None if image_mask is None else image_mask.astype(bool))
        return x


class VideoQFormer(nnx.Module):
    """A clip's frames read as one: a learned frame-position embedding added to each frame's query outputs, then
    a Q-Former (no text) whose own learned queries cross-attend to the query outputs of every frame. Video-LLaMA's
    video Q-Former, and the Panda-70M student's video branch: where frames are compared, before a language model
    sees them.

    With `motion_tokens`, the queries also read each frame's departure from the clip's average (its query outputs
    less their mean over the frames, with the frame's position): what changes across the clip, apart from what
    stays. Every frame's query outputs share a large part that does not change (the object, the background), and
    attention over them alone did not learn to tell one direction of motion from another (action 0.16 after 300
    steps of direct supervision; 0.70 after 100 steps from the difference of the frames' means).
    """

    def __init__(self, frame_qformer: QFormerConfig, max_frames: int, num_queries: int, num_layers: int, *,
                 motion_tokens: bool = False, dtype: Any = jnp.float32, rngs: nnx.Rngs):  # fmt: skip
        width = frame_qformer.hidden_size
        self.max_frames, self.motion_tokens = max_frames, motion_tokens
        positions = logical(nnx.initializers.normal(0.02), "positions", "embed")
        self.frame_position = nnx.Param(positions(rngs.params(), (max_frames, width)))
        self.queries = QueryTokens(num_queries, width, rngs=rngs)
        self.qformer = QFormer(dataclasses.replace(
            frame_qformer, num_layers=num_layers, cross_attention_frequency=1, encoder_hidden_size=width,
            text_input=False, text_embeddings=False,
        ), dtype=dtype, rngs=rngs)  # fmt: skip

    def __call__(self, per_frame: jax.Array) -> jax.Array:
        """Query outputs [clips, frames, queries, width] of each frame → [clips, num_queries, width]."""
        clips, frames = per_frame.shape[:2]
        if frames > self.max_frames:
            raise ValueError(f"{frames} frames per clip, but the model has frame positions for {self.max_frames}")
        position = self.frame_position[:frames][:, None]
        tokens = [per_frame + position]
        if self.motion_tokens:
            tokens.append(per_frame - per_frame.mean(axis=1, keepdims=True) + position)
        context = jnp.concatenate([t.reshape(clips, -1, t.shape[-1]) for t in tokens], axis=1)
        return self.qformer(self.queries(clips), context)


def _attention_slots(name: str, layer: QFormerAttention) -> dict[str, Slot]:
    slots = {}
    for projection in ("query", "key", "value"):
        slots |= checkpoint.linear_slots(f"{name}.attention.{projection}", getattr(layer, projection))
    slots |= checkpoint.linear_slots(f"{name}.output.dense", layer.dense)
    return slots | checkpoint.layer_norm_slots(f"{name}.output.LayerNorm", layer.norm)


def _feed_forward_slots(name: str, suffix: str, layer: FeedForward) -> dict[str, Slot]:
    return (
        checkpoint.linear_slots(f"{name}.intermediate{suffix}.dense", layer.intermediate)
        | checkpoint.linear_slots(f"{name}.output{suffix}.dense", layer.output)
        | checkpoint.layer_norm_slots(f"{name}.output{suffix}.LayerNorm", layer.norm)
    )


def qformer_slots(model: QFormer, prefix: str, embeddings_prefix: str | None = None) -> dict[str, Slot]:
    """Hugging Face tensor names (after `prefix`, e.g. "qformer.") for every parameter.

    The model's layout picks BLIP-2's (`layernorm`) or InstructBLIP's (`embeddings.layernorm`)
    names. Text embeddings are looked for under `embeddings_prefix`, by default
    `{prefix}embeddings.` (InstructBLIP); `Blip2ForImageTextRetrieval` keeps them beside its
    Q-Former, under "embeddings.".
    """
    norm = f"{prefix}embeddings.layernorm" if model.config.layout == "instructblip" else f"{prefix}layernorm"
    slots = checkpoint.layer_norm_slots(norm, model.layernorm)
    if model.word_embeddings is not None:
        embeddings_prefix = f"{prefix}embeddings." if embeddings_prefix is None else embeddings_prefix
        slots |= checkpoint.embedding_slots(f"{embeddings_prefix}word_embeddings", model.word_embeddings)
        slots |= checkpoint.embedding_slots(f"{embeddings_prefix}position_embeddings", model.position_embeddings)
    for i, layer in enumerate(model.layers):
        name = f"{prefix}encoder.layer.{i}"
        slots |= _attention_slots(f"{name}.attention", layer.attention)
        if layer.crossattention is not None:
            slots |= _attention_slots(f"{name}.crossattention", layer.crossattention)
        slots |= _feed_forward_slots(name, "_query", layer.query_feed_forward)
        if layer.text_feed_forward is not None:
            slots |= _feed_forward_slots(name, "", layer.text_feed_forward)
    return slots


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> QFormer:
    """A Q-Former saved on its own (`Blip2QFormerModel` or `InstructBlipQFormerModel.save_pretrained`).

    Composite checkpoints load theirs through `qformer_slots` with the "qformer." prefix.
    Raises CheckpointError for another architecture (before reading any weight) or tensors
    that do not fit. With a `mesh`, each parameter is placed on it as it is read.
    """
    config = QFormerConfig.from_hf(checkpoint.read_config(directory, LAYOUTS, ARCHITECTURES))
    model = checkpoint.abstract(lambda: QFormer(config, dtype=dtype, rngs=nnx.Rngs(0)))
    weights = checkpoint.SafetensorsCheckpoint(directory)
    checkpoint.fill(weights, model, qformer_slots(model, ""), what="the Q-Former", mesh=mesh)
    return model
