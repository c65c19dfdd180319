"""OPT decoder (OPTForCausalLM layout) in Flax NNX, loaded from Hugging Face checkpoints.

OPT (Zhang et al., 2022) is a GPT-style decoder: token embeddings (optionally projected from a
smaller `word_embed_proj_dim`, `project_in`) plus learned absolute position embeddings, then
transformer layers of multi-head self-attention and a ReLU MLP, each with a residual and a
LayerNorm, before it (`do_layer_norm_before`, every released size but 350m) or after it; a
final LayerNorm, an optional `project_out`, and the vocabulary projection, tied to the token
embeddings unless the checkpoint holds its own `lm_head.weight`. BLIP-2 OPT-2.7b/6.7b use it.

OPT numbers positions from the attention mask, `cumsum(mask) - 1` (padding -1), and reads
position embedding `position + 2` (fairseq's offset). The model follows the language-model
protocol of `generation.py`: `embed`, `init_cache`, and
`__call__(input_ids | inputs_embeds, attention_mask, positions, cache) -> (logits, cache)`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from panda_jax.models import CheckpointError, checkpoint
from panda_jax.models.checkpoint import Slot
from panda_jax.models.generation import KVCache, causal_mask, init_kv_cache, write_kv
from panda_jax.models.layers import ACTIVATIONS, embedding, layer_norm, linear

MODEL_TYPES = ("opt",)
ARCHITECTURES = ("OPTForCausalLM",)
POSITION_OFFSET = 2  # OPT's position embedding table starts 2 rows in (fairseq's padding rows)
@dataclass(frozen=True)
class OPTConfig:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    ffn_dim: int
    num_attention_heads: int
    max_position_embeddings: int
    word_embed_proj_dim: int
    do_layer_norm_before: bool = True
    final_layer_norm: bool = True
    activation_function: str = "relu"
    enable_bias: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 2
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = 1

    @classmethod
    def from_hf(cls, config: dict[str, Any], tensor_names: set[str] | None = None, prefix: str = "") -> OPTConfig:
        """The fields of an OPTConfig `config.json`, with transformers' defaults for absent ones.

        With the checkpoint's `tensor_names`, the vocabulary projection is untied exactly when the
        checkpoint holds `{prefix}lm_head.weight` (transformers unties a head that differs from
        the embeddings whatever `tie_word_embeddings` says).
        """
        activation = config.get("activation_function", "relu")
        if activation not in ACTIVATIONS:
            raise CheckpointError(
                f"OPT with activation_function={activation!r} is not supported; this model reads {tuple(ACTIVATIONS)}"
            )
        if not config.get("layer_norm_elementwise_affine", True):
            raise CheckpointError("OPT with layer_norm_elementwise_affine=False is not supported")
        hidden = config.get("hidden_size", 768)
        do_layer_norm_before = config.get("do_layer_norm_before", True)
        tied = config.get("tie_word_embeddings", True)
        if tensor_names is not None:
            tied = f"{prefix}lm_head.weight" not in tensor_names
        eos = config.get("eos_token_id", 2)
        return cls(
            vocab_size=config.get("vocab_size", 50272),
            hidden_size=hidden,
            num_hidden_layers=config.get("num_hidden_layers", 12),
            ffn_dim=config.get("ffn_dim", 3072),
            num_attention_heads=config.get("num_attention_heads", 12),
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            word_embed_proj_dim=config.get("word_embed_proj_dim") or hidden,
            do_layer_norm_before=do_layer_norm_before,
            final_layer_norm=do_layer_norm_before and not config.get("_remove_final_layer_norm", False),
            activation_function=activation,
            enable_bias=config.get("enable_bias", True),
            tie_word_embeddings=tied,
            bos_token_id=config.get("bos_token_id", 2),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=config.get("pad_token_id", 1),
        )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class OPTAttention(nnx.Module):
    """Multi-head self-attention; optionally reads and writes a layer of the KV cache."""

    def __init__(self, config: OPTConfig, *, dtype: Any, rngs: nnx.Rngs):
        hidden, bias = config.hidden_size, config.enable_bias
        self.q_proj = linear(hidden, hidden, ("embed", "heads"), bias=bias, dtype=dtype, rngs=rngs)
        self.k_proj = linear(hidden, hidden, ("embed", "heads"), bias=bias, dtype=dtype, rngs=rngs)
        self.v_proj = linear(hidden, hidden, ("embed", "heads"), bias=bias, dtype=dtype, rngs=rngs)
        self.out_proj = linear(hidden, hidden, ("heads", "embed"), bias=bias, dtype=dtype, rngs=rngs)
        self.heads, self.head_dim = config.num_attention_heads, config.head_dim

    def __call__(
        self, x: jax.Array, mask: jax.Array, cache: tuple[jax.Array, jax.Array, jax.Array] | None
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x [batch, t, hidden]; mask [batch, 1, t, keys] bool; cache (keys, values, index) or None."""
        batch, t, _ = x.shape
        shape = (batch, t, self.heads, self.head_dim)
        q, k, v = (proj(x).reshape(shape) for proj in (self.q_proj, self.k_proj, self.v_proj))
        written = None
        if cache is not None:
            cached_keys, cached_values, index = cache
            k, v = written = write_kv(cached_keys, cached_values, k, v, index)
        out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask)
        return self.out_proj(out.reshape(batch, t, -1)), written


class OPTDecoderLayer(nnx.Module):
    def __init__(self, config: OPTConfig, *, dtype: Any, rngs: nnx.Rngs):
        hidden, bias = config.hidden_size, config.enable_bias
        self.self_attn_layer_norm = layer_norm(hidden, 1e-5, rngs=rngs)
        self.self_attn = OPTAttention(config, dtype=dtype, rngs=rngs)
        self.final_layer_norm = layer_norm(hidden, 1e-5, rngs=rngs)
        self.fc1 = linear(hidden, config.ffn_dim, ("embed", "mlp"), bias=bias, dtype=dtype, rngs=rngs)
        self.fc2 = linear(config.ffn_dim, hidden, ("mlp", "embed"), bias=bias, dtype=dtype, rngs=rngs)
        self.activation = ACTIVATIONS[config.activation_function]
        self.norm_before = config.do_layer_norm_before

    def __call__(
        self, x: jax.Array, mask: jax.Array, cache: tuple[jax.Array, jax.Array, jax.Array] | None
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        def norm(layer_norm: nnx.LayerNorm, y: jax.Array) -> jax.Array:
            return layer_norm(y).astype(y.dtype)

        h = norm(self.self_attn_layer_norm, x) if self.norm_before else x
        attended, written = self.self_attn(h, mask, cache)
        x = x + attended
        if not self.norm_before:
            x = norm(self.self_attn_layer_norm, x)
        h = norm(self.final_layer_norm, x) if self.norm_before else x
        x = x + self.fc2(self.activation(self.fc1(h)))
        if not self.norm_before:
            x = norm(self.final_layer_norm, x)
        return x, written


class OPTForCausalLM(nnx.Module):
    """Token ids or embeddings → next-token logits [batch, t, vocab] float32 (the language-model protocol)."""

    def __init__(self, config: OPTConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        hidden, word_dim = config.hidden_size, config.word_embed_proj_dim
        self.embed_tokens = embedding(config.vocab_size, word_dim, ("vocab", "embed"), dtype=dtype, rngs=rngs)
        self.embed_positions = embedding(
            config.max_position_embeddings + POSITION_OFFSET, hidden, ("positions", "embed"), dtype=dtype, rngs=rngs
        )
        projected = word_dim != hidden
        self.project_in = linear(word_dim, hidden, ("embed", "embed"), bias=False, dtype=dtype, rngs=rngs) if projected else None
        self.project_out = linear(hidden, word_dim, ("embed", "embed"), bias=False, dtype=dtype, rngs=rngs) if projected else None
        self.layers = nnx.List(OPTDecoderLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_hidden_layers))
        self.final_layer_norm = layer_norm(hidden, 1e-5, rngs=rngs) if config.final_layer_norm else None
        # The vocabulary projection, computed in float32; None: the token embeddings.
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else linear(word_dim, config.vocab_size, ("embed", "vocab"), bias=False, dtype=jnp.float32, rngs=rngs)
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [batch, t, word_embed_proj_dim] in the compute dtype.

        Exactly transformers' `get_input_embeddings()(input_ids)`: `inputs_embeds` live in this space.
        """
        return self.embed_tokens(input_ids)

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        config = self.config
        return init_kv_cache(
            config.num_hidden_layers, batch_size, max_length, config.num_attention_heads, config.head_dim, self.dtype
        )

    def __call__(
        self,
        input_ids: jax.Array | None = None,
        *,
        inputs_embeds: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits [batch, t, vocab] float32 and the cache with the t new positions written (or None).

        Without a cache, attention_mask is [batch, t] (None: no padding). With a cache, it is
        [batch, max_length] over every cache slot (1: a real token, already cached or among
        these t; required). Positions default to OPT's, `cumsum(mask) - 1` over all slots.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        batch, t, _ = x.shape
        if cache is None:
            valid = jnp.ones((batch, t), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
            first_slot = 0
        else:
            if attention_mask is None:
                raise ValueError("a cached call needs the attention mask over all cache slots, [batch, max_length]")
            valid = jnp.asarray(attention_mask).astype(bool)
            first_slot = cache.index
        if positions is None:
            count = jnp.cumsum(valid.astype(jnp.int32), axis=1) * valid - 1
            positions = jax.lax.dynamic_slice_in_dim(count, first_slot, t, axis=1)
        mask = causal_mask(valid, first_slot + jnp.arange(t))
        if self.project_in is not None:
            x = self.project_in(x)
        x = x + self.embed_positions(positions + POSITION_OFFSET)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i], cache.index)
            x, written = layer(x, mask, layer_cache)
            if written is not None:
                keys.append(written[0])
                values.append(written[1])
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x).astype(self.dtype)
        if self.project_out is not None:
            x = self.project_out(x)
        x = x.astype(jnp.float32)
        logits = x @ self.embed_tokens.embedding[...].T if self.lm_head is None else self.lm_head(x)
        new_cache = None if cache is None else KVCache(tuple(keys), tuple(values), cache.index + t)
        return logits, new_cache


def opt_slots(model: OPTForCausalLM, prefix: str = "") -> dict[str, Slot]:
    """HF tensor names (OPTForCausalLM layout, each prefixed by `prefix`) → this model's parameters."""
    decoder = f"{prefix}model.decoder"
    slots = checkpoint.embedding_slots(f"{decoder}.embed_tokens", model.embed_tokens)
    slots |= checkpoint.embedding_slots(f"{decoder}.embed_positions", model.embed_positions)
    for name in ("project_in", "project_out"):
        if getattr(model, name) is not None:
            slots |= checkpoint.linear_slots(f"{decoder}.{name}", getattr(model, name))
    for i, layer in enumerate(model.layers):
        base = f"{decoder}.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            slots |= checkpoint.linear_slots(f"{base}.self_attn.{name}", getattr(layer.self_attn, name))
        slots |= checkpoint.linear_slots(f"{base}.fc1", layer.fc1)
        slots |= checkpoint.linear_slots(f"{base}.fc2", layer.fc2)
        slots |= checkpoint.layer_norm_slots(f"{base}.self_attn_layer_norm", layer.self_attn_layer_norm)
        slots |= checkpoint.layer_norm_slots(f"{base}.final_layer_norm", layer.final_layer_norm)
    if model.final_layer_norm is not None:
        slots |= checkpoint.layer_norm_slots(f"{decoder}.final_layer_norm", model.final_layer_norm)
    if model.lm_head is not None:
        slots |= checkpoint.linear_slots(f"{prefix}lm_head", model.lm_head)
    return slots


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> OPTForCausalLM:
    """An OPTForCausalLM checkpoint directory (config.json + safetensors, single or sharded) as a Flax model.

    `dtype` is the computation dtype; parameters stay float32. With a `mesh`, each parameter
    is placed on it as it is read (`checkpoint.fill`).
    """
    hf_config = checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES)
    weights = checkpoint.SafetensorsCheckpoint(directory)
    config = OPTConfig.from_hf(hf_config, weights.names())
    model = checkpoint.abstract(lambda: OPTForCausalLM(config, dtype=dtype, rngs=nnx.Rngs(0)))
    checkpoint.fill(weights, model, opt_slots(model), what="OPT", mesh=mesh)
    return model
