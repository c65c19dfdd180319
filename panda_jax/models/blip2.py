"""BLIP-2 captioning (Li et al., 2023) in Flax NNX: an image → a frozen language model's prompt.

A frozen vision encoder (EVA ViT-g in the released models) gives patch features; the Q-Former's
32 learned queries read them through cross-attention; a linear projection turns the query
outputs into 32 "visual tokens" in the language model's embedding space; the frozen language
model (OPT or LLaMA, decoder-only, or Flan-T5, encoder-decoder) reads them in place of
placeholder tokens of its prompt and writes the caption. Three of Panda-70M's teachers are
BLIP-2 models (opt-2.7b, opt-6.7b, flan-t5-xl), and the student captioner is built from the
same parts.

Layout and conventions are transformers 5.24's `Blip2ForConditionalGeneration`: `input_ids`
hold `num_query_tokens` copies of `image_token_index` (the processor puts them before the
text), and the k-th placeholder of a row takes the row's k-th visual token. Checkpoints from
before those placeholders existed (no `image_token_index` in config.json) are read the way
BLIP-2 was first released: the visual tokens go in front of the prompt.

Pixel values are NCHW floats, as transformers' BLIP image processor makes them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from panda_jax.models import CheckpointError, checkpoint, generation, llama, opt, t5
from panda_jax.models.blip2_vision import VisionConfig, VisionEncoder, vision_slots
from panda_jax.models.layers import linear
from panda_jax.models.qformer import QFormer, QFormerConfig, QueryTokens, qformer_slots, query_token_slots

MODEL_TYPES = ("blip-2",)
ARCHITECTURES = ("Blip2ForConditionalGeneration",)


class LanguageModel(NamedTuple):
    """How to build and load one kind of language model."""

    config: Any  # its config class, with `from_hf(dict, tensor_names, prefix)`
    module: type[nnx.Module]
    slots: Callable[[Any, str], dict[str, checkpoint.Slot]]  # (model, prefix) → its slots
    ignore: Callable[[Any, str], tuple[str, ...]] = lambda model, prefix: ()  # (model, prefix) → its ignore rules


# text_config.model_type → its language model: any causal LM transformers' AutoModelForCausalLM
# builds, or T5, that has a Flax model here.
LANGUAGE_MODELS = {
    "opt": LanguageModel(opt.OPTConfig, opt.OPTForCausalLM, opt.opt_slots),
    "llama": LanguageModel(llama.LlamaConfig, llama.LlamaForCausalLM, llama.llama_slots, llama.llama_ignore),
    "t5": LanguageModel(t5.T5Config, t5.T5ForConditionalGeneration, t5.t5_slots, t5.t5_ignore),
}


@dataclass(frozen=True)
class Blip2Config:
    vision: VisionConfig
    qformer: QFormerConfig
    text: opt.OPTConfig | llama.LlamaConfig | t5.T5Config
    text_model_type: str  # a key of LANGUAGE_MODELS
    num_query_tokens: int = 32
    image_token_index: int | None = None  # None: visual tokens go in front of the prompt

    @classmethod
    def from_hf(cls, config: dict[str, Any], tensor_names: set[str]) -> Blip2Config:
        """From a `Blip2Config` dict; `tensor_names` tell whether the LM's head is tied."""
        text_config = config.get("text_config") or {}
        text_type = text_config.get("model_type", "opt")
        if text_type not in LANGUAGE_MODELS:
            raise CheckpointError(
                f"BLIP-2 with a {text_type!r} language model is not supported; supported: {', '.join(LANGUAGE_MODELS)}"
            )
        text = LANGUAGE_MODELS[text_type].config.from_hf(text_config, tensor_names, prefix="language_model.")
        vision = VisionConfig.from_hf(config.get("vision_config") or {})
        # As Blip2Config does: the Q-Former cross-attends to features as wide as the vision encoder's.
        qformer = dataclasses.replace(
            QFormerConfig.from_hf(config.get("qformer_config") or {}), encoder_hidden_size=vision.hidden_size
        )
        return cls(
            vision=vision,
            qformer=qformer,
            text=text,
            text_model_type=text_type,
            num_query_tokens=config.get("num_query_tokens", 32),
            image_token_index=config.get("image_token_index"),
        )


def fill_placeholders(embeds: jax.Array, is_placeholder: jax.Array, visual_tokens: jax.Array) -> jax.Array:
    """`embeds` [b, t, d] with the k-th placeholder of each row replaced by its k-th visual token.

    What transformers' `masked_scatter` does when every row holds one placeholder per visual token.
    """
    order = jnp.clip(jnp.cumsum(is_placeholder, axis=1) - 1, 0, visual_tokens.shape[1] - 1)
    scattered = jnp.take_along_axis(visual_tokens.astype(embeds.dtype), order[..., None], axis=1)
    return jnp.where(is_placeholder[..., None], scattered, embeds)


def check_placeholders(input_ids: Any, placeholder_id: int, expected: int) -> None:
    """Refuses a concrete prompt batch whose rows do not each hold `expected` placeholders."""
    if isinstance(input_ids, jax.core.Tracer):
        return
    counts = (np.asarray(input_ids) == placeholder_id).sum(axis=1)
    if (counts != expected).any():
        raise ValueError(
            f"every prompt must hold {expected} placeholder tokens (id {placeholder_id}), one per visual token; "
            f"these hold {counts.tolist()}"
        )


class Blip2(nnx.Module):
    """Images and a prompt → the language model's logits, or a generated caption."""

    def __init__(self, config: Blip2Config, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.vision_model = VisionEncoder(config.vision, dtype=dtype, rngs=rngs)
        self.query_tokens = QueryTokens(config.num_query_tokens, config.qformer.hidden_size, rngs=rngs)
        self.qformer = QFormer(config.qformer, dtype=dtype, rngs=rngs)
        self.language_projection = linear(
            config.qformer.hidden_size, config.text.hidden_size, ("embed", "embed"), dtype=dtype, rngs=rngs
        )
        self.language_model = LANGUAGE_MODELS[config.text_model_type].module(config.text, dtype=dtype, rngs=rngs)

    @property
    def is_encoder_decoder(self) -> bool:
        return self.config.text_model_type == "t5"

    @property
    def num_placeholders(self) -> int:
        """Visual tokens, one per placeholder of a prompt."""
        return self.config.num_query_tokens

    def visual_tokens(self, pixel_values: jax.Array) -> jax.Array:
        """[batch, num_query_tokens, LM width]: transformers' `get_image_features(...).pooler_output`."""
        image_embeds = self.vision_model(pixel_values)
        queries = self.query_tokens(image_embeds.shape[0])
        return self.language_projection(self.qformer(queries, image_embeds))

    def prompt_embeds(
        self, pixel_values: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """The language model's input embeddings with the visual tokens in, and their attention mask."""
        visual = self.visual_tokens(pixel_values)
        embeds = self.language_model.embed(input_ids)
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        if self.config.image_token_index is None:
            visual_mask = jnp.ones(visual.shape[:2], attention_mask.dtype)
            embeds = jnp.concatenate([visual.astype(embeds.dtype), embeds], axis=1)
            return embeds, jnp.concatenate([visual_mask, attention_mask], axis=1)
        return fill_placeholders(embeds, input_ids == self.config.image_token_index, visual), attention_mask

    def __call__(
        self,
        pixel_values: jax.Array,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        decoder_input_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [batch, t, vocab] float32, as transformers' forward.

        OPT: over the prompt (visual tokens included). T5: over `decoder_input_ids`, the
        encoder reading the prompt.
        """
        self._check_prompt(input_ids)
        embeds, mask = self.prompt_embeds(pixel_values, input_ids, attention_mask)
        if self.is_encoder_decoder:
            if decoder_input_ids is None:
                raise ValueError("BLIP-2 with T5 needs decoder_input_ids for a forward pass")
            return self.language_model(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_input_ids)
        return self.language_model(inputs_embeds=embeds, attention_mask=mask)[0]

    def default_prompt(self, batch_size: int) -> np.ndarray:
        """transformers' prompt when none is given: the placeholders, then the LM's BOS token if it has one."""
        placeholders = [] if self.config.image_token_index is None else [self.config.image_token_index] * self.num_placeholders
        bos = getattr(self.config.text, "bos_token_id", None)
        tokens = placeholders + ([] if bos is None else [bos])
        if not tokens:
            raise ValueError("this BLIP-2 has neither image placeholders nor a BOS token: give input_ids")
        return np.tile(np.asarray(tokens, np.int32), (batch_size, 1))

    def generate(
        self,
        pixel_values: jax.Array | np.ndarray,
        input_ids: jax.Array | np.ndarray | None = None,
        attention_mask: jax.Array | np.ndarray | None = None,
        *,
        generation_config: generation.GenerationConfig | None = None,
    ) -> np.ndarray:
        """New token ids [batch, <= max_new_tokens], as transformers' `generate(do_sample=False)` picks them.

        Decoded as `generation_config` says (default: `GenerationConfig()`, 3-beam captioning).
        transformers returns the prompt and the new tokens for OPT, the decoder start token and
        the new tokens for T5; this returns the new tokens only.
        """
        pixel_values = jnp.asarray(pixel_values)
        if input_ids is None:
            input_ids = self.default_prompt(pixel_values.shape[0])
        self._check_prompt(input_ids)
        embeds, mask = _prompt_embeds(
            self, pixel_values, jnp.asarray(input_ids), None if attention_mask is None else jnp.asarray(attention_mask)
        )
        return generation.generate(
            self.language_model,
            inputs_embeds=embeds,
            attention_mask=mask,
            **dataclasses.asdict(generation_config or generation.GenerationConfig()),
        )

    def _check_prompt(self, input_ids: Any) -> None:
        if self.config.image_token_index is not None:
            check_placeholders(input_ids, self.config.image_token_index, self.num_placeholders)


_prompt_embeds = nnx.jit(Blip2.prompt_embeds)


def blip2_slots(model: Blip2, prefix: str = "") -> dict[str, checkpoint.Slot]:
    """HF tensor names (Blip2ForConditionalGeneration layout, after `prefix`) → the model's parameters."""
    language_slots = LANGUAGE_MODELS[model.config.text_model_type].slots
    return (
        vision_slots(model.vision_model, f"{prefix}vision_model.")
        | query_token_slots(model.query_tokens, f"{prefix}query_tokens")
        | qformer_slots(model.qformer, f"{prefix}qformer.")
        | checkpoint.linear_slots(f"{prefix}language_projection", model.language_projection)
        | language_slots(model.language_model, f"{prefix}language_model.")
    )


def blip2_ignore(model: Blip2, prefix: str = "") -> tuple[str, ...]:
    """Tensors a BLIP-2 checkpoint may hold that the model does not read: its language model's (`LANGUAGE_MODELS`)."""
    return LANGUAGE_MODELS[model.config.text_model_type].ignore(model.language_model, f"{prefix}language_model.")


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> Blip2:
    """A Blip2ForConditionalGeneration checkpoint directory (OPT, LLaMA or Flan-T5 language model) as a Flax model.

    Retrieval checkpoints share model_type "blip-2" and are refused by their `architectures`
    before any weight is read (`blip2_retrieval.load` reads them). `dtype` is the computation
    dtype; parameters stay float32. With a `mesh`, each parameter is placed on it as it is
    read (`checkpoint.fill`).
    """
    hf_config = checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES)
    weights = checkpoint.SafetensorsCheckpoint(directory)
    config = Blip2Config.from_hf(hf_config, weights.names())
    model = checkpoint.abstract(lambda: Blip2(config, dtype=dtype, rngs=nnx.Rngs(0)))
    checkpoint.fill(weights, model, blip2_slots(model), ignore=blip2_ignore(model), what="BLIP-2", mesh=mesh)
    return model
