"""T5 encoder-decoder (T5ForConditionalGeneration layout) in Flax NNX, loaded from Hugging Face checkpoints.

T5 (Raffel et al., 2020) encodes its input with a stack of bidirectional self-attention + MLP
blocks and decodes with causal self-attention, attention over the encoder output and an MLP.
Every sub-block is pre-norm with T5's LayerNorm (a scale, no mean subtraction, no bias: RMS
norm) and a residual. There are no position embeddings: the first self-attention layer of each
stack learns a bias per attention head for every bucket of relative position (exact buckets
near, logarithmic far; signed in the encoder, looking back only in the decoder), and every
layer adds that same bias to its attention scores, which T5 does not scale by 1/sqrt(d).

Flan-T5 (BLIP-2's Flan-T5 XL/XXL) is T5 v1.1: a gated-GELU MLP (`feed_forward_proj="gated-gelu"`:
gelu_tanh(wi_0 x) · wi_1 x) and its own vocabulary projection `lm_head`. The original T5 has a
ReLU MLP and projects with the token embeddings, scaling the decoder output by d_model ** -0.5
first; both are supported. The head is untied exactly when the checkpoint holds
`lm_head.weight` (transformers 5 always ties the head in the model it builds and saves none,
but unties a checkpoint's own head that differs from the embeddings).

The decoder follows `generation.py`'s encoder-decoder protocol: `encode`, `init_cache` (the
decoder self-attention keys/values, and the cross-attention ones computed once from the
encoder output) and `decode(decoder_input_ids, ..., cache) -> (logits, cache)`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import Mesh

from panda_jax.models import CheckpointError, checkpoint
from panda_jax.models.checkpoint import Slot
from panda_jax.models.generation import causal_mask, write_kv
from panda_jax.models.layers import ACTIVATIONS, embedding, linear, rms_norm

MODEL_TYPES = ("t5",)
ARCHITECTURES = ("T5ForConditionalGeneration",)
@dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_decoder_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    is_gated_act: bool = False
    dense_act_fn: str = "relu"
    scale_decoder_outputs: bool = True
    tie_word_embeddings: bool = True
    pad_token_id: int | None = 0
    eos_token_id: int | tuple[int, ...] | None = 1
    decoder_start_token_id: int | None = 0

    @classmethod
    def from_hf(cls, config: dict[str, Any], tensor_names: set[str] | None = None, prefix: str = "") -> T5Config:
        """The fields of a T5Config `config.json`, with transformers' defaults for absent ones.

        The activation comes from `feed_forward_proj` ("gated-gelu" means tanh-approximated
        GELU); the decoder output is scaled by d_model ** -0.5 when `scale_decoder_outputs`
        (transformers 5) or, in older configs, unless `tie_word_embeddings` is false. With the
        checkpoint's `tensor_names`, the head is untied exactly when it holds `{prefix}lm_head.weight`.
        """
        projection = config.get("feed_forward_proj", "relu")
        parts = projection.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise CheckpointError(f"T5 feed_forward_proj={projection!r} is not 'ACT' or 'gated-ACT'")
        activation = "gelu_new" if projection == "gated-gelu" else parts[-1]
        if activation not in ACTIVATIONS:
            raise CheckpointError(
                f"T5 activation {activation!r} is not supported; this model reads {tuple(ACTIVATIONS)}"
            )
        scale = config.get("scale_decoder_outputs")
        if scale is None:
            scale = config.get("tie_word_embeddings", True) is not False
        if tensor_names is None:
            tied = config.get("tie_word_embeddings", True) is not False
        else:
            tied = f"{prefix}lm_head.weight" not in tensor_names
        layers = config.get("num_layers", 6)
        eos = config.get("eos_token_id", 1)
        return cls(
            vocab_size=config.get("vocab_size", 32128),
            d_model=config.get("d_model", 512),
            d_kv=config.get("d_kv", 64),
            d_ff=config.get("d_ff", 2048),
            num_layers=layers,
            num_decoder_layers=config.get("num_decoder_layers") or layers,
            num_heads=config.get("num_heads", 8),
            relative_attention_num_buckets=config.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=config.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-6),
            is_gated_act=len(parts) == 2,
            dense_act_fn=activation,
            scale_decoder_outputs=bool(scale),
            tie_word_embeddings=tied,
            pad_token_id=config.get("pad_token_id", 0),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            decoder_start_token_id=config.get("decoder_start_token_id", config.get("bos_token_id")),
        )

    @property
    def hidden_size(self) -> int:
        """`d_model`, by the name the other language models' configs give their width."""
        return self.d_model


def relative_position_bucket(
    relative_position: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """T5's bucket of every relative position (key position - query position), as transformers computes it.

    Half the buckets (per direction, when bidirectional) are exact distances, the others
    logarithmically wider up to `max_distance`; farther positions share the last bucket.
    """
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(relative_position.dtype) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    # float32 throughout, as torch computes it (the truncation is sensitive to rounding).
    log_ratio = jnp.log(distance.astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    scaled = log_ratio * (num_buckets - max_exact)
    far = jnp.minimum(max_exact + scaled.astype(relative_position.dtype), num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, far)


@struct.dataclass
class T5Cache:
    """Decoder keys/values: self-attention buffers [batch, max_length, heads, d_kv] per layer with the
    number of positions written, and the cross-attention keys/values of the encoder output
    [batch, source_length, heads, d_kv] per layer (empty tuples when not precomputed)."""

    keys: tuple[jax.Array, ...]
    values: tuple[jax.Array, ...]
    index: jax.Array  # int32 scalar
    cross_keys: tuple[jax.Array, ...]
    cross_values: tuple[jax.Array, ...]


def _norm(layer_norm: nnx.RMSNorm, x: jax.Array) -> jax.Array:
    return layer_norm(x).astype(x.dtype)


class T5Attention(nnx.Module):
    """Multi-head attention without score scaling.

    The first self-attention of a stack also owns the relative position bias table, [buckets, heads].
    """

    def __init__(self, config: T5Config, relative_bias: bool, *, dtype: Any, rngs: nnx.Rngs):
        inner = config.num_heads * config.d_kv
        self.q = linear(config.d_model, inner, ("embed", "heads"), bias=False, dtype=dtype, rngs=rngs)
        self.k = linear(config.d_model, inner, ("embed", "heads"), bias=False, dtype=dtype, rngs=rngs)
        self.v = linear(config.d_model, inner, ("embed", "heads"), bias=False, dtype=dtype, rngs=rngs)
        self.o = linear(inner, config.d_model, ("heads", "embed"), bias=False, dtype=dtype, rngs=rngs)
        self.relative_attention_bias = (
            embedding(
                config.relative_attention_num_buckets, config.num_heads, ("positions", "heads"),
                init=nnx.initializers.normal(1.0), rngs=rngs,
            )
            if relative_bias
            else None
        )
        self.heads, self.head_dim = config.num_heads, config.d_kv

    def keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Keys and values [batch, s, heads, d_kv] of x [batch, s, d_model]."""
        shape = x.shape[:2] + (self.heads, self.head_dim)
        return self.k(x).reshape(shape), self.v(x).reshape(shape)

    def __call__(
        self, x: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array, bias: jax.Array | None
    ) -> jax.Array:
        """x [batch, t, d_model] attends to keys/values [batch, s, heads, d_kv].

        mask [batch, 1, t, s] boolean; bias [1, heads, t, s] added to the scores (None: none).
        """
        batch, t, _ = x.shape
        q = self.q(x).reshape(batch, t, self.heads, self.head_dim)
        keys, values = keys.astype(q.dtype), values.astype(q.dtype)
        out = jax.nn.dot_product_attention(q, keys, values, bias=bias, mask=mask, scale=1.0)
        return self.o(out.reshape(batch, t, -1))


class T5FeedForward(nnx.Module):
    """wo(act(wi x)), or wo(act(wi_0 x) · wi_1 x) when gated."""

    def __init__(self, config: T5Config, *, dtype: Any, rngs: nnx.Rngs):
        d_model, d_ff = config.d_model, config.d_ff
        if config.is_gated_act:
            self.wi_0 = linear(d_model, d_ff, ("embed", "mlp"), bias=False, dtype=dtype, rngs=rngs)
            self.wi_1 = linear(d_model, d_ff, ("embed", "mlp"), bias=False, dtype=dtype, rngs=rngs)
            self.wi = None
        else:
            self.wi = linear(d_model, d_ff, ("embed", "mlp"), bias=False, dtype=dtype, rngs=rngs)
            self.wi_0 = self.wi_1 = None
        self.wo = linear(d_ff, d_model, ("mlp", "embed"), bias=False, dtype=dtype, rngs=rngs)
        self.activation = ACTIVATIONS[config.dense_act_fn]

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.wi is not None:
            return self.wo(self.activation(self.wi(x)))
        return self.wo(self.activation(self.wi_0(x)) * self.wi_1(x))


class T5Block(nnx.Module):
    """Self-attention, attention over the encoder output (decoder only) and MLP, each pre-norm with a residual."""

    def __init__(self, config: T5Config, is_decoder: bool, relative_bias: bool, *, dtype: Any, rngs: nnx.Rngs):
        self.self_attention_norm = rms_norm(config.d_model, config.layer_norm_epsilon, rngs=rngs)
        self.self_attention = T5Attention(config, relative_bias, dtype=dtype, rngs=rngs)
        self.cross_attention_norm = rms_norm(config.d_model, config.layer_norm_epsilon, rngs=rngs) if is_decoder else None
        self.cross_attention = T5Attention(config, False, dtype=dtype, rngs=rngs) if is_decoder else None
        self.feed_forward_norm = rms_norm(config.d_model, config.layer_norm_epsilon, rngs=rngs)
        self.feed_forward = T5FeedForward(config, dtype=dtype, rngs=rngs)


class T5Stack(nnx.Module):
    """The encoder or the decoder: blocks and a final norm (the token embeddings are the model's `shared`)."""

    def __init__(self, config: T5Config, is_decoder: bool, *, dtype: Any, rngs: nnx.Rngs):
        layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.blocks = nnx.List(
            T5Block(config, is_decoder, relative_bias=i == 0, dtype=dtype, rngs=rngs) for i in range(layers)
        )
        self.final_layer_norm = rms_norm(config.d_model, config.layer_norm_epsilon, rngs=rngs)
        self.is_decoder = is_decoder
        self.config = config

    def position_bias(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """The learned relative position bias [1, heads, t, s] of query positions [t] and key positions [s]."""
        buckets = relative_position_bucket(
            key_positions[None, :] - query_positions[:, None],
            bidirectional=not self.is_decoder,
            num_buckets=self.config.relative_attention_num_buckets,
            max_distance=self.config.relative_attention_max_distance,
        )
        table = self.blocks[0].self_attention.relative_attention_bias.embedding[...]
        return jnp.transpose(table[buckets], (2, 0, 1))[None]


class T5ForConditionalGeneration(nnx.Module):
    """Encoder input (ids or embeddings) and decoder ids → next-token logits [batch, t, vocab] float32."""

    def __init__(self, config: T5Config, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.shared = embedding(
            config.vocab_size, config.d_model, ("vocab", "embed"), dtype=dtype, init=nnx.initializers.normal(1.0), rngs=rngs
        )
        self.encoder = T5Stack(config, is_decoder=False, dtype=dtype, rngs=rngs)
        self.decoder = T5Stack(config, is_decoder=True, dtype=dtype, rngs=rngs)
        # The vocabulary projection, computed in float32; None: the token embeddings.
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else linear(config.d_model, config.vocab_size, ("embed", "vocab"), bias=False, dtype=jnp.float32, rngs=rngs)
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [batch, t, d_model] in the compute dtype (HF's `get_input_embeddings()(input_ids)`)."""
        return self.shared(input_ids)

    def encode(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Encoder output [batch, s, d_model] of ids or embeddings; attention_mask [batch, s] (None: no padding)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        batch, length, _ = x.shape
        valid = jnp.ones((batch, length), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        mask = valid[:, None, None, :]
        positions = jnp.arange(length)
        bias = self.encoder.position_bias(positions, positions)
        for block in self.encoder.blocks:
            h = _norm(block.self_attention_norm, x)
            x = x + block.self_attention(h, *block.self_attention.keys_values(h), mask, bias)
            x = x + block.feed_forward(_norm(block.feed_forward_norm, x))
        return _norm(self.encoder.final_layer_norm, x)

    def init_cache(self, batch_size: int, max_length: int, encoder_hidden_states: jax.Array | None = None) -> T5Cache:
        """Empty decoder self-attention buffers of `max_length` slots; with the encoder output, also
        its cross-attention keys/values (then `decode` needs no `encoder_hidden_states`)."""
        config = self.config
        zeros = tuple(
            jnp.zeros((batch_size, max_length, config.num_heads, config.d_kv), self.dtype)
            for _ in range(config.num_decoder_layers)
        )
        cross = ()
        if encoder_hidden_states is not None:
            encoded = encoder_hidden_states.astype(self.dtype)
            cross = tuple(block.cross_attention.keys_values(encoded) for block in self.decoder.blocks)
        return T5Cache(
            keys=zeros,
            values=zeros,
            index=jnp.zeros((), jnp.int32),
            cross_keys=tuple(k for k, _ in cross),
            cross_values=tuple(v for _, v in cross),
        )

    def decode(
        self,
        decoder_input_ids: jax.Array,
        *,
        encoder_hidden_states: jax.Array | None = None,
        encoder_attention_mask: jax.Array | None = None,
        decoder_attention_mask: jax.Array | None = None,
        cache: T5Cache | None = None,
    ) -> tuple[jax.Array, T5Cache | None]:
        """Next-token logits [batch, t, vocab] float32 and the cache with the t new positions written (or None).

        The decoder ids attend causally to each other (and to those cached before them) and to
        the encoder output, given here or held by the cache; encoder_attention_mask [batch, s]
        marks its real tokens (None: all). decoder_attention_mask [batch, t] marks real decoder
        tokens in an uncached call (None: all; generation never pads the decoder input).
        """
        x = self.embed(decoder_input_ids)
        batch, t, _ = x.shape
        if cache is None:
            given = decoder_attention_mask
            valid = jnp.ones((batch, t), bool) if given is None else jnp.asarray(given).astype(bool)
            first_slot = 0
        else:
            valid = jnp.arange(cache.keys[0].shape[1])[None, :] < cache.index + t
            first_slot = cache.index
        query_slots = first_slot + jnp.arange(t)
        mask = causal_mask(valid, query_slots)
        bias = self.decoder.position_bias(query_slots, jnp.arange(valid.shape[1]))
        if cache is not None and cache.cross_keys:
            cross = list(zip(cache.cross_keys, cache.cross_values))
            source_length = cache.cross_keys[0].shape[1]
        else:
            if encoder_hidden_states is None:
                raise ValueError("decode needs encoder_hidden_states, or a cache made with them")
            encoded = encoder_hidden_states.astype(self.dtype)
            cross = [block.cross_attention.keys_values(encoded) for block in self.decoder.blocks]
            source_length = encoded.shape[1]
        encoder_valid = (
            jnp.ones((batch, source_length), bool)
            if encoder_attention_mask is None
            else jnp.asarray(encoder_attention_mask).astype(bool)
        )
        cross_mask = encoder_valid[:, None, None, :]
        keys, values = [], []
        for i, block in enumerate(self.decoder.blocks):
            h = _norm(block.self_attention_norm, x)
            k, v = block.self_attention.keys_values(h)
            if cache is not None:
                k, v = write_kv(cache.keys[i], cache.values[i], k, v, cache.index)
                keys.append(k)
                values.append(v)
            x = x + block.self_attention(h, k, v, mask, bias)
            x = x + block.cross_attention(_norm(block.cross_attention_norm, x), *cross[i], cross_mask, None)
            x = x + block.feed_forward(_norm(block.feed_forward_norm, x))
        x = _norm(self.decoder.final_layer_norm, x).astype(jnp.float32)
        if self.config.scale_decoder_outputs:
            x = x * self.config.d_model**-0.5
        logits = x @ self.shared.embedding[...].T if self.lm_head is None else self.lm_head(x)
        if cache is None:
            return logits, None
        return logits, cache.replace(keys=tuple(keys), values=tuple(values), index=cache.index + t)

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        decoder_input_ids: jax.Array,
        decoder_attention_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced logits [batch, t, vocab] float32 (transformers' forward with decoder_input_ids)."""
        encoded = self.encode(input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        logits, _ = self.decode(
            decoder_input_ids,
            encoder_hidden_states=encoded,
            encoder_attention_mask=attention_mask,
            decoder_attention_mask=decoder_attention_mask,
        )
        return logits


def t5_slots(model: T5ForConditionalGeneration, prefix: str = "") -> dict[str, Slot]:
    """HF tensor names (T5ForConditionalGeneration layout, each prefixed by `prefix`) → this model's parameters."""
    slots = checkpoint.embedding_slots(f"{prefix}shared", model.shared)
    for stack_name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        for i, block in enumerate(stack.blocks):
            base = f"{prefix}{stack_name}.block.{i}.layer"
            sublayers = [("SelfAttention", block.self_attention_norm, block.self_attention)]
            if block.cross_attention is not None:
                sublayers.append(("EncDecAttention", block.cross_attention_norm, block.cross_attention))
            for index, (name, norm, attention) in enumerate(sublayers):
                slots |= checkpoint.layer_norm_slots(f"{base}.{index}.layer_norm", norm)
                for projection in ("q", "k", "v", "o"):
                    layer = getattr(attention, projection)
                    slots |= checkpoint.linear_slots(f"{base}.{index}.{name}.{projection}", layer)
                if attention.relative_attention_bias is not None:
                    slots |= checkpoint.embedding_slots(
                        f"{base}.{index}.{name}.relative_attention_bias", attention.relative_attention_bias
                    )
            ff = f"{base}.{len(sublayers)}"
            slots |= checkpoint.layer_norm_slots(f"{ff}.layer_norm", block.feed_forward_norm)
            for projection in ("wi", "wi_0", "wi_1", "wo"):
                layer = getattr(block.feed_forward, projection)
                if layer is not None:
                    slots |= checkpoint.linear_slots(f"{ff}.DenseReluDense.{projection}", layer)
        slots |= checkpoint.layer_norm_slots(f"{prefix}{stack_name}.final_layer_norm", stack.final_layer_norm)
    if model.lm_head is not None:
        slots |= checkpoint.linear_slots(f"{prefix}lm_head", model.lm_head)
    return slots


def t5_ignore(model: T5ForConditionalGeneration, prefix: str = "") -> tuple[str, ...]:
    """Tensors a T5 checkpoint may hold that the model does not read: per-stack copies of the
    shared embeddings, and the unused cross-attention relative bias of old checkpoints."""
    return checkpoint.under(
        prefix,
        r"(en|de)coder\.embed_tokens\.weight",
        r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",
    )


def load(
    directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None
) -> T5ForConditionalGeneration:
    """A T5ForConditionalGeneration checkpoint directory (config.json + safetensors, single or sharded) as a Flax model.

    `dtype` is the computation dtype; parameters stay float32. With a `mesh`, each parameter
    is placed on it as it is read (`checkpoint.fill`).
    """
    hf_config = checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES)
    weights = checkpoint.SafetensorsCheckpoint(directory)
    config = T5Config.from_hf(hf_config, weights.names())
    model = checkpoint.abstract(lambda: T5ForConditionalGeneration(config, dtype=dtype, rngs=nnx.Rngs(0)))
    checkpoint.fill(weights, model, t5_slots(model), ignore=t5_ignore(model), what="T5", mesh=mesh)
    return model
