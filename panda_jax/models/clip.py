"""CLIP (Radford et al., 2021) in Flax NNX: image and text towers scored against each other.

Two pre-norm transformer encoders map their input to one vector each. The vision tower cuts a
square image into patches (a strided convolution without bias, computed here as one matrix
product over flattened patches), prepends a learned class token, adds learned positions, applies
a layer norm ("pre_layrnorm", sic, as Hugging Face names it), the encoder, and a final layer norm
on the class token. The text tower embeds tokens and positions, runs a causally masked encoder
(padding masked too), applies a final layer norm and takes the hidden state at the end-of-text
token. Each pooled vector goes through a bias-free projection into the shared embedding space;
`CLIPModel.__call__` scores every image against every text by cosine similarity times
exp(`logit_scale`).

The layout is Hugging Face's `CLIPModel` (model_type "clip"); `load` reads such a checkpoint
directory. Differences in arrangement, not in results:
- `pixel_values` are NCHW like Hugging Face's image processor output; patches are cut out of that
  layout directly, so no separate NHWC transpose is needed;
- each attention layer holds q, k and v as one fused [embed, 3, embed] projection (one matrix
  product instead of three); the loader stacks the three checkpoint tensors.
Position interpolation for other image sizes (`interpolate_pos_encoding`) is not supported.

Compile with `nnx.jit` (e.g. `nnx.cached_partial(nnx.jit(CLIPModel.encode_image), model)` for
repeated calls with little Python overhead) or with `jax.jit` over `nnx.split`/`nnx.merge`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from panda_jax.models import CheckpointError, checkpoint
from panda_jax.models.checkpoint import Slot
from panda_jax.models.layers import ACTIVATIONS, embedding, fused_self_attention, layer_norm
from panda_jax.models.sharding import logical

MODEL_TYPES = ("clip",)
ARCHITECTURES = ("CLIPModel",)

# The normalisation CLIPImageProcessor applies (OpenAI's training statistics), RGB.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

# Hugging Face's defaults (CLIPTextConfig, CLIPVisionConfig, CLIPConfig), for keys a config.json
# leaves out.
_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "eos_token_id": 49407,
}  # fmt: skip
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "num_channels": 3, "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}  # fmt: skip
_PROJECTION_DIM_DEFAULT = 512

_init = nnx.initializers.lecun_normal()
_zeros = nnx.initializers.zeros_init()


def _tower_fields(
    defaults: Mapping[str, Any], config: Mapping[str, Any] | None, legacy: Mapping[str, Any] | None
) -> dict[str, Any]:
    """One tower's fields as transformers resolves them.

    Old checkpoints also carry `text_config_dict` / `vision_config_dict`; transformers lets that
    dict, completed with the defaults, override `text_config` / `vision_config` wholesale.
    """
    resolved = {**defaults, **(config or {})}
    if legacy is not None:
        resolved.update({**defaults, **legacy})
    return resolved


@dataclass(frozen=True)
class CLIPEncoderConfig:
    """What a CLIP transformer encoder needs: the fields both towers share."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    hidden_act: str
    layer_norm_eps: float

    def __post_init__(self):
        if self.hidden_act not in ACTIVATIONS:
            raise CheckpointError(f"hidden_act {self.hidden_act!r} is not supported; known: {sorted(ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            heads = self.num_attention_heads
            raise CheckpointError(f"hidden_size {self.hidden_size} does not split into {heads} heads")

    @classmethod
    def _from_resolved(cls, resolved: Mapping[str, Any]) -> Any:
        return cls(**{field.name: resolved[field.name] for field in fields(cls)})


@dataclass(frozen=True)
class CLIPTextConfig(CLIPEncoderConfig):
    vocab_size: int
    max_position_embeddings: int
    # Pooling position: the first `eos_token_id` of each sequence; when it is 2 (configs older
    # than transformers PR #24773), the position of the largest token id instead.
    eos_token_id: int

    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | None, legacy: Mapping[str, Any] | None = None) -> CLIPTextConfig:
        """From a config.json's `text_config` (and the old `text_config_dict`, if any)."""
        return cls._from_resolved(_tower_fields(_TEXT_DEFAULTS, config, legacy))


@dataclass(frozen=True)
class CLIPVisionConfig(CLIPEncoderConfig):
    num_channels: int
    image_size: int
    patch_size: int

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.image_size, int) or not isinstance(self.patch_size, int):
            raise CheckpointError(f"image_size, patch_size must be integers: {self.image_size}, {self.patch_size}")

    @property
    def grid(self) -> int:
        """Patches per image side."""
        return self.image_size // self.patch_size

    @classmethod
    def from_hf(cls, config: Mapping[str, Any] | None, legacy: Mapping[str, Any] | None = None) -> CLIPVisionConfig:
        """From a config.json's `vision_config` (and the old `vision_config_dict`, if any)."""
        return cls._from_resolved(_tower_fields(_VISION_DEFAULTS, config, legacy))


@dataclass(frozen=True)
class CLIPConfig:
    text: CLIPTextConfig
    vision: CLIPVisionConfig
    projection_dim: int

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> CLIPConfig:
        """From a CLIPModel config.json dict."""
        return cls(
            text=CLIPTextConfig.from_hf(config.get("text_config"), config.get("text_config_dict")),
            vision=CLIPVisionConfig.from_hf(config.get("vision_config"), config.get("vision_config_dict")),
            projection_dim=config.get("projection_dim", _PROJECTION_DIM_DEFAULT),
        )


# --- Encoder -------------------------------------------------------------------------------


class CLIPAttention(nnx.Module):
    """Multi-head self-attention with a fused q/k/v projection [embed, 3, embed]."""

    def __init__(self, hidden_size: int, num_heads: int, *, dtype: Any, rngs: nnx.Rngs):
        self.num_heads, self.dtype = num_heads, dtype
        self.qkv = nnx.LinearGeneral(
            hidden_size, (3, hidden_size), dtype=dtype, param_dtype=jnp.float32,
            kernel_init=logical(_init, "embed", None, "heads"), bias_init=logical(_zeros, None, "heads"), rngs=rngs,
        )  # fmt: skip
        self.out_proj = nnx.Linear(
            hidden_size, hidden_size, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=logical(_init, "heads", "embed"), bias_init=logical(_zeros, "embed"), rngs=rngs,
        )  # fmt: skip

    def __call__(self, x: jax.Array, key_mask: jax.Array | None, is_causal: bool) -> jax.Array:
        heads = fused_self_attention(
            x, self.qkv.kernel[...], self.qkv.bias[...], self.num_heads, dtype=self.dtype,
            key_mask=key_mask, is_causal=is_causal,
        )  # fmt: skip
        return self.out_proj(heads)


class CLIPEncoderLayer(nnx.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: CLIPEncoderConfig, *, dtype: Any, rngs: nnx.Rngs):
        width, hidden = config.hidden_size, config.intermediate_size
        self.layer_norm1 = layer_norm(width, config.layer_norm_eps, rngs=rngs)
        self.self_attn = CLIPAttention(width, config.num_attention_heads, dtype=dtype, rngs=rngs)
        self.layer_norm2 = layer_norm(width, config.layer_norm_eps, rngs=rngs)
        self.fc1 = nnx.Linear(
            width, hidden, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=logical(_init, "embed", "mlp"), bias_init=logical(_zeros, "mlp"), rngs=rngs,
        )  # fmt: skip
        self.fc2 = nnx.Linear(
            hidden, width, dtype=dtype, param_dtype=jnp.float32,
            kernel_init=logical(_init, "mlp", "embed"), bias_init=logical(_zeros, "embed"), rngs=rngs,
        )  # fmt: skip
        self.hidden_act = config.hidden_act

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, is_causal: bool = False) -> jax.Array:
        # The residual stream stays float32; the sublayers compute in the module's dtype.
        x = x + self.self_attn(self.layer_norm1(x), mask, is_causal)
        return x + self.fc2(ACTIVATIONS[self.hidden_act](self.fc1(self.layer_norm2(x))))


class CLIPEncoder(nnx.Module):
    def __init__(self, config: CLIPEncoderConfig, *, dtype: Any, rngs: nnx.Rngs):
        layers = range(config.num_hidden_layers)
        self.layers = nnx.List(CLIPEncoderLayer(config, dtype=dtype, rngs=rngs) for _ in layers)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None, is_causal: bool = False) -> jax.Array:
        for layer in self.layers:
            x = layer(x, mask, is_causal)
        return x


# --- Towers --------------------------------------------------------------------------------


class CLIPVisionTower(nnx.Module):
    """NCHW pixels → per-token hidden states, and the pooled (class token) vector."""

    def __init__(self, config: CLIPVisionConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config, self.dtype = config, dtype
        p, width = config.patch_size, config.hidden_size
        # The patch convolution's kernel, [channels, p, p, embed]: rows in the order NCHW patches flatten.
        patch_init = logical(_init, "channels", "patch", "patch", "embed")
        self.patch_kernel = nnx.Param(patch_init(rngs.params(), (config.num_channels, p, p, width), jnp.float32))
        self.class_embedding = nnx.Param(logical(_zeros, "embed")(rngs.params(), (width,), jnp.float32))
        self.position_embedding = embedding(config.grid**2 + 1, width, ("positions", "embed"), init=_init, rngs=rngs)
        self.pre_layrnorm = layer_norm(width, config.layer_norm_eps, rngs=rngs)
        self.encoder = CLIPEncoder(config, dtype=dtype, rngs=rngs)
        self.post_layernorm = layer_norm(width, config.layer_norm_eps, rngs=rngs)

    def embed(self, pixel_values: jax.Array) -> jax.Array:
        """[batch, channels, size, size] → [batch, 1 + patches, embed] float32."""
        config = self.config
        batch, channels, height, width = pixel_values.shape
        if (channels, height, width) != (config.num_channels, config.image_size, config.image_size):
            raise ValueError(
                f"expected pixel_values [batch, {config.num_channels}, {config.image_size}, {config.image_size}] "
                f"(NCHW), got {pixel_values.shape}"
            )
        grid, p = config.grid, config.patch_size
        crop = pixel_values[:, :, : grid * p, : grid * p]  # the convolution ignores a partial last patch
        patches = crop.reshape(batch, channels, grid, p, grid, p).transpose(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, grid * grid, channels * p * p).astype(self.dtype)
        kernel = self.patch_kernel[...].reshape(channels * p * p, -1).astype(self.dtype)
        class_token = jnp.broadcast_to(self.class_embedding[...], (batch, 1, config.hidden_size))
        tokens = jnp.concatenate([class_token, (patches @ kernel).astype(jnp.float32)], axis=1)
        return tokens + self.position_embedding.embedding[...]

    def hidden_states(self, pixel_values: jax.Array) -> jax.Array:
        """The encoder's last hidden states [batch, 1 + patches, embed] (HF `last_hidden_state`)."""
        return self.encoder(self.pre_layrnorm(self.embed(pixel_values)))

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """The pooled output [batch, embed]: the class token's state, layer-normed."""
        return self.post_layernorm(self.hidden_states(pixel_values)[:, 0])


class CLIPTextTower(nnx.Module):
    """Token ids → per-token hidden states, and the pooled (end-of-text token) vector."""

    def __init__(self, config: CLIPTextConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        width = config.hidden_size
        self.token_embedding = embedding(config.vocab_size, width, ("vocab", "embed"), init=_init, rngs=rngs)
        self.position_embedding = embedding(
            config.max_position_embeddings, width, ("positions", "embed"), init=_init, rngs=rngs
        )
        self.encoder = CLIPEncoder(config, dtype=dtype, rngs=rngs)
        self.final_layer_norm = layer_norm(width, config.layer_norm_eps, rngs=rngs)

    def hidden_states(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """The final-layer-normed hidden states [batch, length, embed] (HF `last_hidden_state`).

        Positions count from the first token whatever the padding, as in Hugging Face.
        """
        length = input_ids.shape[-1]
        if length > self.config.max_position_embeddings:
            raise ValueError(f"{length} tokens, but the model has {self.config.max_position_embeddings} positions")
        x = self.token_embedding(input_ids) + self.position_embedding.embedding[:length]
        mask = None if attention_mask is None else attention_mask.astype(bool)
        return self.final_layer_norm(self.encoder(x, mask, is_causal=True))

    def pooling_positions(self, input_ids: jax.Array) -> jax.Array:
        """Where each sequence is pooled, as transformers' CLIPTextModel decides."""
        if self.config.eos_token_id == 2:  # legacy configs: the end-of-text token has the largest id
            return jnp.argmax(input_ids, axis=-1)
        return jnp.argmax(input_ids == self.config.eos_token_id, axis=-1)  # the first one; 0 if none

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """The pooled output [batch, embed]."""
        states = self.hidden_states(input_ids, attention_mask)
        positions = self.pooling_positions(input_ids)
        return jnp.take_along_axis(states, positions[:, None, None], axis=1)[:, 0]


def _unit(x: jax.Array) -> jax.Array:
    return x / jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))


class CLIPModel(nnx.Module):
    """Both towers, their projections into the shared space, and the learned temperature."""

    def __init__(self, config: CLIPConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.text_model = CLIPTextTower(config.text, dtype=dtype, rngs=rngs)
        self.vision_model = CLIPVisionTower(config.vision, dtype=dtype, rngs=rngs)

        # Small; kept in float32 so that the embeddings are.
        def projection(width: int) -> nnx.Linear:
            return nnx.Linear(width, config.projection_dim, use_bias=False, param_dtype=jnp.float32,
                              kernel_init=logical(_init, "embed", "embed"), rngs=rngs)  # fmt: skip

        self.visual_projection = projection(config.vision.hidden_size)
        self.text_projection = projection(config.text.hidden_size)
        self.logit_scale = nnx.Param(logical(_zeros)(rngs.params(), (), jnp.float32))

    def vision_hidden_states(self, pixel_values: jax.Array) -> jax.Array:
        """The vision tower's last hidden states [batch, 1 + patches, vision embed], float32."""
        return self.vision_model.hidden_states(pixel_values)

    def encode_image(self, pixel_values: jax.Array) -> jax.Array:
        """[batch, 3, size, size] normalised pixels (NCHW) → [batch, projection_dim], not unit length."""
        return self.visual_projection(self.vision_model(pixel_values))

    def encode_text(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """[batch, length] token ids (1/0 mask, padding anywhere) → [batch, projection_dim], not unit length."""
        return self.text_projection(self.text_model(input_ids, attention_mask))

    def __call__(
        self, pixel_values: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """(logits_per_image [images, texts], logits_per_text [texts, images]): scaled cosine similarities."""
        image = _unit(self.encode_image(pixel_values))
        text = _unit(self.encode_text(input_ids, attention_mask))
        logits_per_text = text @ image.T * jnp.exp(self.logit_scale[...])
        return logits_per_text.T, logits_per_text


# --- Preprocessing -------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="size")
def preprocess(images: jax.Array, size: int = 224) -> jax.Array:
    """uint8 RGB images [n, h, w, 3] → normalised pixel_values [n, 3, size, size] float32.

    CLIPImageProcessor's steps: bicubic resize (Keys a = -0.5, antialiased, as PIL) of the short
    side to `size`, center crop to `size`², scale to [0, 1], normalise by OpenAI's mean and std.
    Matches the processor's PIL backend to a grey level or so (PIL's fixed-point arithmetic).
    """
    n, height, width, channels = images.shape
    short, long = sorted((height, width))
    resized_long = int(size * long / short)
    new_height, new_width = (size, resized_long) if height <= width else (resized_long, size)
    # Like PIL: the horizontal pass first, rounded and clipped to uint8, then the vertical one.
    resized = images.astype(jnp.float32)
    for shape in [(n, height, new_width, channels), (n, new_height, new_width, channels)]:
        resized = jnp.clip(jnp.round(jax.image.resize(resized, shape, "bicubic")), 0, 255)
    top, left = (new_height - size) // 2, (new_width - size) // 2
    crop = resized[:, top : top + size, left : left + size]
    normalised = (crop / 255.0 - jnp.array(IMAGE_MEAN)) / jnp.array(IMAGE_STD)
    return normalised.transpose(0, 3, 1, 2)


# --- Loading a Hugging Face checkpoint ------------------------------------------------------


def _qkv_kernel(weight: np.ndarray) -> np.ndarray:
    return weight.T[:, None, :]  # torch (out, in) → (in, 1, out), one of the fused three


def _qkv_weight(kernel: np.ndarray) -> np.ndarray:
    return kernel[:, 0, :].T  # (in, 1, out), one of the fused three → torch (out, in)


def _qkv_bias(bias: np.ndarray) -> np.ndarray:
    return bias[None, :]


def _unfused_bias(bias: np.ndarray) -> np.ndarray:
    return bias[0]  # (1, out), one of the fused three → torch (out,)


def encoder_slots(encoder: CLIPEncoder, prefix: str) -> dict[str, Slot]:
    """Slots of a Hugging Face CLIPEncoder named `prefix` (e.g. "vision_model.encoder.")."""
    slots: dict[str, Slot] = {}
    for i, layer in enumerate(encoder.layers):
        name = f"{prefix}layers.{i}."
        qkv, width = layer.self_attn.qkv, layer.self_attn.out_proj.kernel.shape[0]
        for part, projection in enumerate(("q_proj", "k_proj", "v_proj")):
            weight, bias = f"{name}self_attn.{projection}.weight", f"{name}self_attn.{projection}.bias"
            slots[weight] = Slot(qkv.kernel, (width, width), _qkv_kernel, _qkv_weight, part, axis=1)
            slots[bias] = Slot(qkv.bias, (width,), _qkv_bias, _unfused_bias, part, axis=0)
        slots |= checkpoint.linear_slots(f"{name}self_attn.out_proj", layer.self_attn.out_proj)
        slots |= checkpoint.layer_norm_slots(f"{name}layer_norm1", layer.layer_norm1)
        slots |= checkpoint.layer_norm_slots(f"{name}layer_norm2", layer.layer_norm2)
        slots |= checkpoint.linear_slots(f"{name}mlp.fc1", layer.fc1)
        slots |= checkpoint.linear_slots(f"{name}mlp.fc2", layer.fc2)
    return slots


def clip_vision_slots(tower: CLIPVisionTower, prefix: str) -> dict[str, Slot]:
    """Slots of a Hugging Face CLIPVisionTransformer named `prefix` (e.g. "vision_model.")."""
    channels, p, _, width = tower.patch_kernel.shape
    embeddings = f"{prefix}embeddings."
    return {
        # torch conv (embed, channels, p, p) → (channels, p, p, embed)
        f"{embeddings}patch_embedding.weight": Slot.permuted(tower.patch_kernel, (width, channels, p, p), (1, 2, 3, 0)),
        f"{embeddings}class_embedding": Slot(tower.class_embedding, (width,)),
        **checkpoint.embedding_slots(f"{embeddings}position_embedding", tower.position_embedding),
        **checkpoint.layer_norm_slots(f"{prefix}pre_layrnorm", tower.pre_layrnorm),
        **encoder_slots(tower.encoder, f"{prefix}encoder."),
        **checkpoint.layer_norm_slots(f"{prefix}post_layernorm", tower.post_layernorm),
    }


def clip_text_slots(tower: CLIPTextTower, prefix: str) -> dict[str, Slot]:
    """Slots of a Hugging Face CLIPTextTransformer named `prefix` (e.g. "text_model.")."""
    return {
        **checkpoint.embedding_slots(f"{prefix}embeddings.token_embedding", tower.token_embedding),
        **checkpoint.embedding_slots(f"{prefix}embeddings.position_embedding", tower.position_embedding),
        **encoder_slots(tower.encoder, f"{prefix}encoder."),
        **checkpoint.layer_norm_slots(f"{prefix}final_layer_norm", tower.final_layer_norm),
    }


def clip_slots(model: CLIPModel, prefix: str = "") -> dict[str, Slot]:
    """The Hugging Face CLIPModel tensor name (under `prefix`) of every parameter of `model`."""
    return {
        **clip_text_slots(model.text_model, f"{prefix}text_model."),
        **clip_vision_slots(model.vision_model, f"{prefix}vision_model."),
        **checkpoint.linear_slots(f"{prefix}visual_projection", model.visual_projection),
        **checkpoint.linear_slots(f"{prefix}text_projection", model.text_projection),
        f"{prefix}logit_scale": Slot(model.logit_scale, ()),
    }


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> CLIPModel:
    """A CLIPModel from a Hugging Face checkpoint directory; computes in `dtype`, params float32.

    Raises CheckpointError for another architecture (before reading any weight) and for
    missing, unexpected or misshaped tensors (naming them). With a `mesh`, each parameter is
    placed on it as it is read (`checkpoint.fill`).
    """
    config = CLIPConfig.from_hf(checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES))
    weights = checkpoint.SafetensorsCheckpoint(directory)
    model = checkpoint.abstract(lambda: CLIPModel(config, dtype=dtype, rngs=nnx.Rngs(0)))
    checkpoint.fill(weights, model, clip_slots(model), what="CLIPModel", mesh=mesh)
    return model
