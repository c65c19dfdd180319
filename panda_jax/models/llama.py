"""LLaMA decoder (LlamaForCausalLM layout) in Flax NNX, loaded from Hugging Face checkpoints.

A stack of pre-norm transformer layers: RMSNorm → self-attention with rotary position
embeddings (RoPE) on queries and keys → residual, RMSNorm → SwiGLU MLP
(down(silu(gate(x)) · up(x))) → residual; a final RMSNorm and the vocabulary projection
(`lm_head`, or the token embeddings when `tie_word_embeddings`). Grouped-query attention: the
`num_key_value_heads` key/value heads are each shared by `num_attention_heads / num_key_value_heads`
query heads. Vicuna, the language model of InstructBLIP, is this architecture.

The model follows the language-model protocol that `generation.py` relies on: `embed`,
`init_cache` (fixed-size key/value buffers, written in place at `cache.index`) and
`__call__(input_ids | inputs_embeds, attention_mask, positions, cache) -> (logits, cache)`.

Position ids follow transformers 5.24: a plain forward (no cache) numbers the tokens 0..t-1
whatever the padding (`LlamaModel.forward`); `generate` numbers them by the running count of
real tokens, `cumsum(attention_mask) - 1` with padding at 0, and each new token one past the
previous one. `generation.generate` passes those positions; a cached call without positions
derives the running count from the cache's attention mask, which is the same whenever the last
prompt token of a row is real (left padding, or none).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from panda_jax.models import CheckpointError, checkpoint
from panda_jax.models.checkpoint import Slot
from panda_jax.models.generation import KVCache, causal_mask, init_kv_cache, write_kv
from panda_jax.models.layers import ACTIVATIONS, activation, embedding, linear, rms_norm

MODEL_TYPES = ("llama",)
ARCHITECTURES = ("LlamaForCausalLM",)
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_type: str = "default"
    # ("factor", ...) pairs of the "linear" / "llama3" RoPE scaling, hashable for a frozen config.
    rope_scaling: tuple[tuple[str, float], ...] = ()
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None

    @classmethod
    def from_hf(cls, config: dict[str, Any], tensor_names: set[str] | None = None, prefix: str = "") -> LlamaConfig:
        """The fields of a LlamaConfig `config.json`, with transformers' defaults for absent ones.

        RoPE parameters are read from `rope_parameters` (transformers 5) or from the older
        top-level `rope_theta` / `rope_scaling`; RoPE types other than default, linear and
        llama3 are refused. `tensor_names` and `prefix` give the signature every language
        model's config shares (`blip2.LANGUAGE_MODELS`); LLaMA's head is tied by the config
        alone (a tied checkpoint's `lm_head.weight` copy is ignored, see `llama_ignore`).
        """
        act = config.get("hidden_act", "silu")
        if act not in ACTIVATIONS:
            raise CheckpointError(f"LLaMA with hidden_act={act!r} is not supported; known: {', '.join(ACTIVATIONS)}")
        heads = config.get("num_attention_heads", 32)
        hidden = config.get("hidden_size", 4096)
        rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise CheckpointError(f"LLaMA RoPE type {rope_type!r} is not supported; this model reads {ROPE_TYPES}")
        if rope.pop("partial_rotary_factor", 1.0) != 1.0:
            raise CheckpointError("LLaMA with partial_rotary_factor != 1 is not supported")
        rope_theta = rope.pop("rope_theta", config.get("rope_theta", 10000.0))
        max_positions = config.get("max_position_embeddings", 2048)
        if rope_type == "llama3":
            rope.setdefault("original_max_position_embeddings", max_positions)
        eos = config.get("eos_token_id", 2)
        return cls(
            vocab_size=config.get("vocab_size", 32000),
            hidden_size=hidden,
            intermediate_size=config.get("intermediate_size", 11008),
            num_hidden_layers=config.get("num_hidden_layers", 32),
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or hidden // heads,
            hidden_act=act,
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_type=rope_type,
            rope_scaling=tuple(sorted((key, float(value)) for key, value in rope.items() if value is not None)),
            max_position_embeddings=max_positions,
            tie_word_embeddings=config.get("tie_word_embeddings", False),
            attention_bias=config.get("attention_bias", False),
            mlp_bias=config.get("mlp_bias", False),
            bos_token_id=config.get("bos_token_id", 1),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=config.get("pad_token_id"),
        )


def rope_inverse_frequencies(config: LlamaConfig) -> np.ndarray:
    """The RoPE frequency of every pair of head dimensions, [head_dim / 2] float32, as transformers computes them."""
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(config.rope_theta), exponents)).astype(np.float32)
    scaling = dict(config.rope_scaling)
    if config.rope_type == "linear":
        inv_freq = inv_freq / np.float32(scaling["factor"])
    elif config.rope_type == "llama3":
        # Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        context = scaling["original_max_position_embeddings"]
        wavelength = 2 * math.pi / inv_freq
        scaled = np.where(wavelength > context / low, inv_freq / factor, inv_freq)
        smooth = (context / wavelength - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelength >= context / high) & (wavelength <= context / low)
        inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotates [batch, t, heads, head_dim] by its positions [batch, t], in float32 (rotate-half layout)."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, t, head_dim / 2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


class LlamaAttention(nnx.Module):
    """Grouped-query self-attention with RoPE; optionally reads and writes a layer of the KV cache."""

    def __init__(self, config: LlamaConfig, *, dtype: Any, rngs: nnx.Rngs):
        hidden, head_dim = config.hidden_size, config.head_dim
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        if heads % kv_heads:
            raise CheckpointError(f"num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}")
        bias = config.attention_bias
        self.q_proj = linear(hidden, heads * head_dim, ("embed", "heads"), bias=bias, dtype=dtype, rngs=rngs)
        self.k_proj = linear(hidden, kv_heads * head_dim, ("embed", "kv_heads"), bias=bias, dtype=dtype, rngs=rngs)
        self.v_proj = linear(hidden, kv_heads * head_dim, ("embed", "kv_heads"), bias=bias, dtype=dtype, rngs=rngs)
        self.o_proj = linear(heads * head_dim, hidden, ("heads", "embed"), bias=bias, dtype=dtype, rngs=rngs)
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        inv_freq: jax.Array,
        mask: jax.Array,
        cache: tuple[jax.Array, jax.Array, jax.Array] | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """x [batch, t, hidden]; mask [batch, 1, t, keys] bool; cache (keys, values, index) or None."""
        batch, t, _ = x.shape
        q = apply_rope(self.q_proj(x).reshape(batch, t, self.heads, self.head_dim), positions, inv_freq)
        k = apply_rope(self.k_proj(x).reshape(batch, t, self.kv_heads, self.head_dim), positions, inv_freq)
        v = self.v_proj(x).reshape(batch, t, self.kv_heads, self.head_dim)
        written = None
        if cache is not None:
            cached_keys, cached_values, index = cache
            k, v = written = write_kv(cached_keys, cached_values, k, v, index)
        out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask)
        return self.o_proj(out.reshape(batch, t, self.heads * self.head_dim)), written


class LlamaMLP(nnx.Module):
    """Gated feed-forward, SwiGLU with LLaMA's silu: down(act(gate(x)) · up(x))."""

    def __init__(self, config: LlamaConfig, *, dtype: Any, rngs: nnx.Rngs):
        hidden, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = linear(hidden, inner, ("embed", "mlp"), bias=bias, dtype=dtype, rngs=rngs)
        self.up_proj = linear(hidden, inner, ("embed", "mlp"), bias=bias, dtype=dtype, rngs=rngs)
        self.down_proj = linear(inner, hidden, ("mlp", "embed"), bias=bias, dtype=dtype, rngs=rngs)
        self.act = activation(config.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.input_layernorm = rms_norm(config.hidden_size, config.rms_norm_eps, rngs=rngs)
        self.self_attn = LlamaAttention(config, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = rms_norm(config.hidden_size, config.rms_norm_eps, rngs=rngs)
        self.mlp = LlamaMLP(config, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        inv_freq: jax.Array,
        mask: jax.Array,
        cache: tuple[jax.Array, jax.Array, jax.Array] | None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        attended, written = self.self_attn(self.input_layernorm(x).astype(x.dtype), positions, inv_freq, mask, cache)
        x = x + attended
        x = x + self.mlp(self.post_attention_layernorm(x).astype(x.dtype))
        return x, written


class LlamaForCausalLM(nnx.Module):
    """Token ids or embeddings → next-token logits [batch, t, vocab] float32 (the language-model protocol)."""

    def __init__(self, config: LlamaConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.embed_tokens = embedding(config.vocab_size, config.hidden_size, ("vocab", "embed"), dtype=dtype, rngs=rngs)
        self.layers = nnx.List(LlamaDecoderLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_hidden_layers))
        self.norm = rms_norm(config.hidden_size, config.rms_norm_eps, rngs=rngs)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else linear(config.hidden_size, config.vocab_size, ("embed", "vocab"), bias=False, dtype=dtype, rngs=rngs)
        )

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """Token embeddings [batch, t, hidden] in the compute dtype (HF's `get_input_embeddings()(input_ids)`)."""
        return self.embed_tokens(input_ids)

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        config = self.config
        return init_kv_cache(
            config.num_hidden_layers, batch_size, max_length, config.num_key_value_heads, config.head_dim, self.dtype
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

        Without a cache, attention_mask is [batch, t] (None: no padding) and positions default
        to 0..t-1. With a cache, attention_mask is [batch, max_length] over every cache slot
        (1: a real token, already cached or among these t; required) and positions default to
        the running count of real tokens, as transformers' `generate` numbers them.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
        batch, t, _ = x.shape
        if cache is None:
            valid = jnp.ones((batch, t), bool) if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
            query_slots = jnp.arange(t)
            if positions is None:
                positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (batch, t))
        else:
            if attention_mask is None:
                raise ValueError("a cached call needs the attention mask over all cache slots, [batch, max_length]")
            valid = jnp.asarray(attention_mask).astype(bool)
            query_slots = cache.index + jnp.arange(t)
            if positions is None:
                count = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
                count = jax.lax.dynamic_slice_in_dim(count, cache.index, t, axis=1)
                positions = jnp.where(jax.lax.dynamic_slice_in_dim(valid, cache.index, t, axis=1), count, 0)
        mask = causal_mask(valid, query_slots)
        inv_freq = jnp.asarray(rope_inverse_frequencies(self.config))  # a constant folded into the trace
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i], cache.index)
            x, written = layer(x, positions, inv_freq, mask, layer_cache)
            if written is not None:
                keys.append(written[0])
                values.append(written[1])
        x = self.norm(x).astype(self.dtype)
        logits = self.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x)
        new_cache = None if cache is None else KVCache(tuple(keys), tuple(values), cache.index + t)
        return logits.astype(jnp.float32), new_cache


def llama_slots(model: LlamaForCausalLM, prefix: str = "") -> dict[str, Slot]:
    """HF tensor names (LlamaForCausalLM layout, each prefixed by `prefix`) → this model's parameters."""
    slots = checkpoint.embedding_slots(f"{prefix}model.embed_tokens", model.embed_tokens)
    for i, layer in enumerate(model.layers):
        base = f"{prefix}model.layers.{i}"
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            slots |= checkpoint.linear_slots(f"{base}.self_attn.{name}", getattr(layer.self_attn, name))
        for name in ("gate_proj", "up_proj", "down_proj"):
            slots |= checkpoint.linear_slots(f"{base}.mlp.{name}", getattr(layer.mlp, name))
        slots |= checkpoint.layer_norm_slots(f"{base}.input_layernorm", layer.input_layernorm)
        slots |= checkpoint.layer_norm_slots(f"{base}.post_attention_layernorm", layer.post_attention_layernorm)
    slots |= checkpoint.layer_norm_slots(f"{prefix}model.norm", model.norm)
    if model.lm_head is not None:
        slots |= checkpoint.linear_slots(f"{prefix}lm_head", model.lm_head)
    return slots


def llama_ignore(model: LlamaForCausalLM, prefix: str = "") -> tuple[str, ...]:
    """Tensors a LLaMA checkpoint may hold that the model does not read: RoPE buffers, a tied `lm_head` copy."""
    tied_head = (r"lm_head\.weight",) if model.lm_head is None else ()
    return checkpoint.under(prefix, r"model\..*rotary_emb\.inv_freq", *tied_head)


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> LlamaForCausalLM:
    """A LlamaForCausalLM checkpoint directory (config.json + safetensors, single or sharded) as a Flax model.

    `dtype` is the computation dtype; parameters stay float32. With a `mesh`, each parameter
    is placed on it as it is read (`checkpoint.fill`).
    """
    config = LlamaConfig.from_hf(checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES))
    model = checkpoint.abstract(lambda: LlamaForCausalLM(config, dtype=dtype, rngs=nnx.Rngs(0)))
    weights = checkpoint.SafetensorsCheckpoint(directory)
    checkpoint.fill(weights, model, llama_slots(model), ignore=llama_ignore(model), what="LLaMA", mesh=mesh)
    return model
