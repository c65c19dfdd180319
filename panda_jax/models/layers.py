"""Building blocks every model file shares: activations, linear layers, norms, attention.

They fix the conventions of the zoo in one place: parameters are float32 and carry logical
axis names (see `sharding`), matrix products compute in the model's `dtype` (bf16 or
float32), norms and softmax always in float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from panda_jax.models.sharding import logical

# Hugging Face `hidden_act` names (transformers' ACT2FN) → the functions they denote.
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation a Hugging Face config calls `name`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def linear(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    dtype: Any,
    rngs: nnx.Rngs,
    bias: bool = True,
) -> nnx.Linear:
    """A Linear with float32 parameters computing in `dtype`, its axes named `axes` (in, out)."""
    return nnx.Linear(
        in_features, out_features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=logical(nnx.initializers.lecun_normal(), *axes),
        bias_init=logical(nnx.initializers.zeros_init(), axes[1]),
        rngs=rngs,
    )  # fmt: skip


def embedding(
    num_embeddings: int,
    features: int,
    axes: tuple[str, str],
    *,
    rngs: nnx.Rngs,
    dtype: Any = None,
    init: nnx.Initializer = nnx.initializers.normal(0.02),
) -> nnx.Embed:
    """An embedding table with float32 parameters and axes named `axes` (rows, features).

    `dtype` is the dtype of looked-up vectors (None: float32, for tables added to float32 sums).
    """
    return nnx.Embed(
        num_embeddings, features, dtype=dtype, param_dtype=jnp.float32,
        embedding_init=logical(init, *axes), rngs=rngs,
    )  # fmt: skip


def layer_norm(features: int, epsilon: float, *, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """torch's LayerNorm (exact variance), computed in float32 whatever the compute dtype."""
    return nnx.LayerNorm(
        features, epsilon=epsilon, use_fast_variance=False, dtype=jnp.float32, param_dtype=jnp.float32,
        scale_init=logical(nnx.initializers.ones_init(), "norm"),
        bias_init=logical(nnx.initializers.zeros_init(), "norm"),
        rngs=rngs,
    )  # fmt: skip


def rms_norm(features: int, epsilon: float, *, rngs: nnx.Rngs) -> nnx.RMSNorm:
    """RMS norm with a scale (T5's LayerNorm, LLaMA's RMSNorm), computed in float32."""
    return nnx.RMSNorm(
        features, epsilon=epsilon, dtype=jnp.float32, param_dtype=jnp.float32,
        scale_init=logical(nnx.initializers.ones_init(), "norm"),
        rngs=rngs,
    )  # fmt: skip


def attention(query: jax.Array, key: jax.Array, value: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
    """Softmax attention, [batch, length, heads, head_dim] in and out; softmax in float32.

    `key_mask` [batch, key length] (bool) marks the keys that may be attended to.
    """
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return jax.nn.dot_product_attention(query, key, value, mask=mask)


def fused_self_attention(
    x: jax.Array,
    qkv_kernel: jax.Array,
    qkv_bias: jax.Array | None,
    num_heads: int,
    *,
    dtype: Any,
    key_mask: jax.Array | None = None,
    is_causal: bool = False,
) -> jax.Array:
    """Self-attention of x [batch, length, embed] through one fused projection [embed, 3, heads · head_dim].

    Returns the heads' outputs [batch, length, heads · head_dim] (before the output projection).
    Queries, keys and values come out of the projection heads-first, [batch, heads, length,
    head_dim], the layout the score and value products want: on CPU this is ~15 % faster
    than `attention` on [batch, length, heads, head_dim]. Softmax in float32; `key_mask`
    [batch, length] marks the keys that may be attended to.
    """
    batch, length, _ = x.shape
    width = qkv_kernel.shape[-1]
    head_dim = width // num_heads
    kernel = qkv_kernel.astype(dtype).reshape(-1, 3, num_heads, head_dim)
    qkv = jnp.einsum("bld,dthk->tbhlk", x.astype(dtype), kernel)
    if qkv_bias is not None:
        qkv = qkv + qkv_bias.astype(dtype).reshape(3, 1, num_heads, 1, head_dim)
    query, key, value = qkv
    scores = jnp.einsum("bhqk,bhsk->bhqs", query, key).astype(jnp.float32) * head_dim**-0.5
    allowed = None if key_mask is None else key_mask.astype(bool)[:, None, None, :]
    if is_causal:
        causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
        allowed = causal if allowed is None else allowed & causal
    if allowed is not None:
        scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    return jnp.einsum("bhqs,bhsk->bqhk", weights, value).reshape(batch, length, width)
