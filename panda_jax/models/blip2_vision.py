"""BLIP-2's vision encoder (EVA ViT-g in the released models) in Flax NNX.

A plain pre-LayerNorm ViT: the image is cut into non-overlapping patches by a strided
convolution, a learned class token is put in front and learned positions are added, then
transformer layers (self-attention with one fused query/key/value projection, GELU MLP) and a
final LayerNorm. BLIP-2, InstructBLIP and InstructBLIP-Video share it, with the same tensor
names (Hugging Face's `Blip2VisionModel`, `InstructBlipVisionModel`,
`InstructBlipVideoVisionModel`); the Q-Former reads its last hidden states, post-LayerNorm.

Pixel values come as Hugging Face's image processors make them: float [batch, 3, height,
width] (NCHW), already resized and normalised.
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

from panda_jax.models import checkpoint
from panda_jax.models.checkpoint import Slot
from panda_jax.models.layers import activation, fused_self_attention, layer_norm, linear
from panda_jax.models.sharding import logical

MODEL_TYPES = ("blip_2_vision_model", "instructblip_vision_model", "instructblipvideo_vision_model")
ARCHITECTURES = ("Blip2VisionModel", "InstructBlipVisionModel", "InstructBlipVideoVisionModel")


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int = 1408
    intermediate_size: int = 6144
    num_layers: int = 39
    num_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> VisionConfig:
        """From a `Blip2VisionConfig` dict (or InstructBLIP's), Hugging Face defaults for absent keys."""
        default = cls()
        return cls(
            hidden_size=config.get("hidden_size", default.hidden_size),
            intermediate_size=config.get("intermediate_size", default.intermediate_size),
            num_layers=config.get("num_hidden_layers", default.num_layers),
            num_heads=config.get("num_attention_heads", default.num_heads),
            image_size=config.get("image_size", default.image_size),
            patch_size=config.get("patch_size", default.patch_size),
            hidden_act=config.get("hidden_act", default.hidden_act),
            layer_norm_eps=config.get("layer_norm_eps", default.layer_norm_eps),
            qkv_bias=config.get("qkv_bias", default.qkv_bias),
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class VisionEmbeddings(nnx.Module):
    """Patches by a strided convolution, a class token in front, learned positions added."""

    def __init__(self, config: VisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        d, p = config.hidden_size, config.patch_size
        self.image_size = config.image_size
        self.patch_embedding = nnx.Conv(
            3, d, (p, p), strides=(p, p), padding="VALID", dtype=dtype, param_dtype=jnp.float32,
            kernel_init=logical(nnx.initializers.lecun_normal(), "patch", "patch", "channels", "embed"),
            bias_init=logical(nnx.initializers.zeros_init(), "embed"),
            rngs=rngs,
        )  # fmt: skip
        self.class_embedding = nnx.Param(logical(nnx.initializers.normal(0.02), "embed")(rngs.params(), (d,)))
        self.position_embedding = nnx.Param(
            logical(nnx.initializers.normal(0.02), "positions", "embed")(rngs.params(), (config.num_patches + 1, d))
        )

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        batch, channels, height, width = pixel_values.shape
        if (channels, height, width) != (3, self.image_size, self.image_size):
            raise ValueError(
                f"expected pixel values [batch, 3, {self.image_size}, {self.image_size}], got {pixel_values.shape}"
            )
        patches = self.patch_embedding(jnp.transpose(pixel_values, (0, 2, 3, 1)))  # NHWC, row-major patch grid
        patches = patches.reshape(batch, -1, patches.shape[-1])
        class_token = jnp.broadcast_to(self.class_embedding[...], (batch, 1, patches.shape[-1]))
        return jnp.concatenate([class_token.astype(patches.dtype), patches], axis=1) + self.position_embedding[...]


class VisionAttention(nnx.Module):
    """Self-attention with the query, key and value projections fused into one [embed, 3, heads] kernel."""

    def __init__(self, config: VisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        d = config.hidden_size
        self.num_heads, self.dtype = config.num_heads, dtype
        qkv_init = logical(nnx.initializers.lecun_normal(), "embed", None, "heads")
        self.qkv_kernel = nnx.Param(qkv_init(rngs.params(), (d, 3, d)))
        self.qkv_bias = (
            nnx.Param(logical(nnx.initializers.zeros_init(), None, "heads")(rngs.params(), (3, d)))
            if config.qkv_bias
            else None
        )
        self.projection = linear(d, d, ("heads", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = None if self.qkv_bias is None else self.qkv_bias[...]
        heads = fused_self_attention(x, self.qkv_kernel[...], bias, self.num_heads, dtype=self.dtype)
        return self.projection(heads)


class VisionMLP(nnx.Module):
    def __init__(self, config: VisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.fc1 = linear(config.hidden_size, config.intermediate_size, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = linear(config.intermediate_size, config.hidden_size, ("mlp", "embed"), dtype=dtype, rngs=rngs)
        self.act = activation(config.hidden_act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


class VisionLayer(nnx.Module):
    """Pre-LayerNorm transformer layer: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: VisionConfig, *, dtype: Any, rngs: nnx.Rngs):
        self.layer_norm1 = layer_norm(config.hidden_size, config.layer_norm_eps, rngs=rngs)
        self.self_attn = VisionAttention(config, dtype=dtype, rngs=rngs)
        self.layer_norm2 = layer_norm(config.hidden_size, config.layer_norm_eps, rngs=rngs)
        self.mlp = VisionMLP(config, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nnx.Module):
    """Pixel values [batch, 3, H, W] (NCHW) → last hidden states [batch, 1 + patches, hidden], float32.

    The output is after `post_layernorm`, Hugging Face's `last_hidden_state`, which is what
    BLIP-2 and InstructBLIP feed the Q-Former's cross-attention. The residual stream stays in
    float32; matrix products run in `dtype`.
    """

    def __init__(self, config: VisionConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = VisionEmbeddings(config, dtype=dtype, rngs=rngs)
        self.layers = nnx.List(VisionLayer(config, dtype=dtype, rngs=rngs) for _ in range(config.num_layers))
        self.post_layernorm = layer_norm(config.hidden_size, config.layer_norm_eps, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        x = self.embeddings(pixel_values).astype(jnp.float32)
        for layer in self.layers:
            x = layer(x)
        return self.post_layernorm(x)


def _qkv_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.T.reshape(weight.shape[1], 3, -1)  # torch (3·d out, d in) → (d in, 3, d out)


def _qkv_weight(kernel: np.ndarray) -> np.ndarray:
    return kernel.reshape(kernel.shape[0], -1).T  # (d in, 3, d out) → torch (3·d out, d in)


def vision_slots(model: VisionEncoder, prefix: str) -> dict[str, Slot]:
    """Hugging Face tensor names (after `prefix`, e.g. "vision_model.") for every parameter."""
    d = model.config.hidden_size
    embeddings = model.embeddings
    patch, positions = embeddings.patch_embedding, embeddings.position_embedding
    p = patch.kernel.shape[0]
    slots = {
        f"{prefix}embeddings.class_embedding": Slot.reshaped(embeddings.class_embedding, (1, 1, d)),
        f"{prefix}embeddings.position_embedding": Slot.reshaped(positions, (1, *positions.shape)),
        # torch Conv2d (out, in, kh, kw) → Flax (kh, kw, in, out)
        f"{prefix}embeddings.patch_embedding.weight": Slot.permuted(patch.kernel, (d, 3, p, p), (2, 3, 1, 0)),
        f"{prefix}embeddings.patch_embedding.bias": Slot(patch.bias, (d,)),
    }
    for i, layer in enumerate(model.layers):
        name = f"{prefix}encoder.layers.{i}"
        attn = layer.self_attn
        slots[f"{name}.self_attn.qkv.weight"] = Slot(attn.qkv_kernel, (3 * d, d), _qkv_kernel, _qkv_weight)
        if attn.qkv_bias is not None:
            slots[f"{name}.self_attn.qkv.bias"] = Slot.reshaped(attn.qkv_bias, (3 * d,))
        slots |= checkpoint.linear_slots(f"{name}.self_attn.projection", attn.projection)
        slots |= checkpoint.layer_norm_slots(f"{name}.layer_norm1", layer.layer_norm1)
        slots |= checkpoint.layer_norm_slots(f"{name}.layer_norm2", layer.layer_norm2)
        slots |= checkpoint.linear_slots(f"{name}.mlp.fc1", layer.mlp.fc1)
        slots |= checkpoint.linear_slots(f"{name}.mlp.fc2", layer.mlp.fc2)
    slots |= checkpoint.layer_norm_slots(f"{prefix}post_layernorm", model.post_layernorm)
    return slots


def resized_positions(table: np.ndarray, rows: int) -> np.ndarray:
    """Position embeddings [1, 1 + g * g, d] (the class token's first) for a grid of `rows` - 1 patches: the patch
    grid's resized bilinearly, as a ViT is read at another resolution."""
    old, new = round(math.sqrt(table.shape[1] - 1)), round(math.sqrt(rows - 1))
    if old * old != table.shape[1] - 1 or new * new != rows - 1:
        raise ValueError(f"position embeddings of {table.shape[1]} rows are not a class token and a square grid")
    grid = table[0, 1:].reshape(old, old, -1)
    resized = np.asarray(jax.image.resize(grid, (new, new, grid.shape[-1]), "bilinear"), table.dtype)
    return np.concatenate([table[:, :1], resized.reshape(1, new * new, -1)], axis=1)


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> VisionEncoder:
    """A vision encoder saved on its own (`Blip2VisionModel.save_pretrained`, or InstructBLIP's).

    Composite checkpoints (BLIP-2, InstructBLIP) load theirs through `vision_slots` with the
    "vision_model." prefix. Raises CheckpointError for another architecture (before reading
    any weight) or tensors that do not fit. With a `mesh`, each parameter is placed on it as
    it is read.
    """
    config = VisionConfig.from_hf(checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES))
    model = checkpoint.abstract(lambda: VisionEncoder(config, dtype=dtype, rngs=nnx.Rngs(0)))
    weights = checkpoint.SafetensorsCheckpoint(directory)
    checkpoint.fill(weights, model, vision_slots(model, ""), what="the BLIP-2 vision encoder", mesh=mesh)
    return model
