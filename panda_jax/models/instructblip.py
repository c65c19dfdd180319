"""InstructBLIP and InstructBLIP-Video with a LLaMA (Vicuna) language model, in Flax NNX.

InstructBLIP is BLIP-2 with an instruction-aware Q-Former: the instruction's tokens (from the
Q-Former's own BERT tokenizer, `qformer_input_ids`) sit after the learned queries in the
Q-Former's self-attention, so what the queries pull out of the image depends on the question.
The query outputs, projected to the language model's width (`language_projection`), replace
placeholder tokens in the language model's prompt.

The layout is transformers 5.24's (`InstructBlipForConditionalGeneration`,
`InstructBlipVideoForConditionalGeneration`), processor convention included: `input_ids` begin
with `num_query_tokens` copies of the placeholder `image_token_index` (InstructBLIP-Video:
`num_query_tokens · frames` copies of `video_token_index`), then the tokenized prompt (padding,
if any, comes after the placeholders: the processor pads the text, then prepends them). The
k-th placeholder of a row is replaced by the k-th projected query output of that row.

InstructBLIP-Video runs every frame through the vision encoder and the Q-Former on its own
(the instruction repeated for every frame) and puts the query outputs of all frames one after
the other: frame 0's queries, then frame 1's, ...

Pixel values are NCHW floats as transformers' processors make them: images [batch, 3, H, W],
videos [batch, frames, 3, H, W].
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from panda_jax.models import CheckpointError, checkpoint, generation
from panda_jax.models.blip2 import check_placeholders, fill_placeholders
from panda_jax.models.blip2_vision import VisionConfig, VisionEncoder, vision_slots
from panda_jax.models.layers import linear
from panda_jax.models.llama import LlamaConfig, LlamaForCausalLM, llama_ignore, llama_slots
from panda_jax.models.qformer import QFormer, QFormerConfig, QueryTokens, qformer_slots, query_token_slots

MODEL_TYPES = ("instructblip", "instructblipvideo")
ARCHITECTURES = ("InstructBlipForConditionalGeneration", "InstructBlipVideoForConditionalGeneration")
# model_type → (its Q-Former's model_type, the config key of the placeholder token id)
_LAYOUT = {
    "instructblip": ("instructblip_qformer", "image_token_index"),
    "instructblipvideo": ("instructblipvideo_qformer", "video_token_index"),
}


@dataclass(frozen=True)
class InstructBlipConfig:
    vision: VisionConfig
    qformer: QFormerConfig
    text: LlamaConfig
    num_query_tokens: int
    placeholder_token_id: int  # `image_token_index` (InstructBLIP) or `video_token_index` (-Video)
    video: bool

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> InstructBlipConfig:
        """From an InstructBlipConfig or InstructBlipVideoConfig `config.json` dict.

        Refuses a language model other than LLaMA, and a config without the placeholder token id
        (checkpoints from before transformers put the query outputs on placeholder tokens).
        """
        model_type = config.get("model_type")
        if model_type not in _LAYOUT:
            raise CheckpointError(f"{model_type!r} is not an InstructBLIP config; expected one of {MODEL_TYPES}")
        qformer_type, token_key = _LAYOUT[model_type]
        text = config.get("text_config") or {}
        if text.get("model_type", "opt") != "llama":
            raise CheckpointError(
                f"this {model_type} checkpoint's language model is {text.get('model_type', 'opt')!r}; "
                "only LLaMA (Vicuna) language models are supported"
            )
        if config.get(token_key) is None:
            raise CheckpointError(
                f"config.json has no {token_key}: the checkpoint predates the placeholder-token layout "
                "(add the id of the '<image>' token the processor inserts)"
            )
        vision = VisionConfig.from_hf(config.get("vision_config") or {})
        # transformers sets the Q-Former's cross-attention width from the vision encoder's.
        qformer_config = (config.get("qformer_config") or {}) | {
            "model_type": qformer_type,
            "encoder_hidden_size": vision.hidden_size,
        }
        return cls(
            vision=vision,
            qformer=QFormerConfig.from_hf(qformer_config),
            text=LlamaConfig.from_hf(text),
            num_query_tokens=config.get("num_query_tokens", 32),
            placeholder_token_id=int(config[token_key]),
            video=model_type == "instructblipvideo",
        )


class InstructBlip(nnx.Module):
    """InstructBLIP (images) or InstructBLIP-Video (`config.video`): pixels, instruction and prompt → LLaMA logits."""

    def __init__(self, config: InstructBlipConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.vision_model = VisionEncoder(config.vision, dtype=dtype, rngs=rngs)
        self.query_tokens = QueryTokens(config.num_query_tokens, config.qformer.hidden_size, rngs=rngs)
        self.qformer = QFormer(config.qformer, dtype=dtype, rngs=rngs)
        self.language_projection = linear(
            config.qformer.hidden_size, config.text.hidden_size, ("embed", "embed"), dtype=dtype, rngs=rngs
        )
        self.language_model = LlamaForCausalLM(config.text, dtype=dtype, rngs=rngs)

    def num_placeholders(self, pixel_values_shape: tuple[int, ...]) -> int:
        """How many placeholder tokens a prompt for pixel values of this shape holds."""
        frames = pixel_values_shape[1] if self.config.video else 1
        return self.config.num_query_tokens * frames

    def visual_tokens(
        self, pixel_values: jax.Array, qformer_input_ids: jax.Array, qformer_attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """The projected query outputs, [batch, num_placeholders, LLM hidden], in the order they fill the placeholders."""
        video = self.config.video
        expected_ndim = 5 if video else 4
        if pixel_values.ndim != expected_ndim:
            layout = "[batch, frames, 3, H, W]" if video else "[batch, 3, H, W]"
            raise ValueError(f"expected pixel values {layout}, got shape {pixel_values.shape}")
        batch = pixel_values.shape[0]
        if video:  # every frame on its own, with the instruction repeated per frame
            frames = pixel_values.shape[1]
            pixel_values = pixel_values.reshape(batch * frames, *pixel_values.shape[2:])
            qformer_input_ids = jnp.repeat(qformer_input_ids, frames, axis=0)
            if qformer_attention_mask is not None:
                qformer_attention_mask = jnp.repeat(qformer_attention_mask, frames, axis=0)
        image_embeds = self.vision_model(pixel_values)
        queries = self.query_tokens(image_embeds.shape[0])
        hidden = self.qformer(queries, image_embeds, qformer_input_ids, qformer_attention_mask)
        features = self.language_projection(hidden[:, : self.config.num_query_tokens])
        return features.reshape(batch, -1, features.shape[-1])

    def prompt_embeds(
        self,
        pixel_values: jax.Array,
        qformer_input_ids: jax.Array,
        qformer_attention_mask: jax.Array | None,
        input_ids: jax.Array,
    ) -> jax.Array:
        """The language model's input embeddings: the prompt's, with the visual tokens on its placeholders."""
        visual = self.visual_tokens(pixel_values, qformer_input_ids, qformer_attention_mask)
        embeds = self.language_model.embed(input_ids)
        return fill_placeholders(embeds, input_ids == self.config.placeholder_token_id, visual)

    def __call__(
        self,
        pixel_values: jax.Array,
        qformer_input_ids: jax.Array,
        qformer_attention_mask: jax.Array | None,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Logits [batch, t, vocab] float32 over the prompt `input_ids` (placeholders included), as transformers' forward."""
        self._check_prompt(pixel_values.shape, input_ids)
        embeds = self.prompt_embeds(pixel_values, qformer_input_ids, qformer_attention_mask, input_ids)
        return self.language_model(inputs_embeds=embeds, attention_mask=attention_mask)[0]

    def generate(
        self,
        pixel_values: jax.Array | np.ndarray,
        qformer_input_ids: jax.Array | np.ndarray,
        qformer_attention_mask: jax.Array | np.ndarray | None = None,
        input_ids: jax.Array | np.ndarray | None = None,
        attention_mask: jax.Array | np.ndarray | None = None,
        *,
        generation_config: generation.GenerationConfig | None = None,
    ) -> np.ndarray:
        """New token ids [batch, <= max_new_tokens], as transformers' `generate(do_sample=False)` picks them.

        Decoded as `generation_config` says (default: `GenerationConfig()`, 3-beam captioning).
        transformers returns `input_ids` followed by the new tokens; this returns the new tokens
        only. Without `input_ids` the prompt is the placeholders and the BOS token, as in
        transformers. EOS and pad ids default to the language model's config.
        """
        pixel_values = jnp.asarray(pixel_values)
        if input_ids is None:
            start = [self.config.placeholder_token_id] * self.num_placeholders(pixel_values.shape)
            input_ids = np.tile([*start, self.config.text.bos_token_id], (pixel_values.shape[0], 1))
        self._check_prompt(pixel_values.shape, input_ids)
        embeds = jit_prompt_embeds(
            self, pixel_values, jnp.asarray(qformer_input_ids),
            None if qformer_attention_mask is None else jnp.asarray(qformer_attention_mask), jnp.asarray(input_ids),
        )  # fmt: skip
        return generation.generate(
            self.language_model,
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            **dataclasses.asdict(generation_config or generation.GenerationConfig()),
        )

    def _check_prompt(self, pixel_values_shape: tuple[int, ...], input_ids: Any) -> None:
        check_placeholders(input_ids, self.config.placeholder_token_id, self.num_placeholders(pixel_values_shape))


# `InstructBlip.prompt_embeds` compiled (once per model structure and input shapes): `generate` runs it before decoding.
jit_prompt_embeds = nnx.jit(InstructBlip.prompt_embeds)


def instructblip_slots(model: InstructBlip, prefix: str = "") -> dict[str, checkpoint.Slot]:
    """HF tensor names (InstructBlip(Video)ForConditionalGeneration layout, after `prefix`) → the model's parameters."""
    return (
        vision_slots(model.vision_model, f"{prefix}vision_model.")
        | query_token_slots(model.query_tokens, f"{prefix}query_tokens")
        | qformer_slots(model.qformer, f"{prefix}qformer.")
        | checkpoint.linear_slots(f"{prefix}language_projection", model.language_projection)
        | llama_slots(model.language_model, f"{prefix}language_model.")
    )


def instructblip_ignore(model: InstructBlip, prefix: str = "") -> tuple[str, ...]:
    """Tensors an InstructBLIP checkpoint may hold that the model does not read: its LLaMA's (`llama_ignore`)."""
    return llama_ignore(model.language_model, f"{prefix}language_model.")


def load_tokenizers(directory: str | os.PathLike) -> tuple[Any, Any]:
    """(LLaMA tokenizer, Q-Former BERT tokenizer) as InstructBLIP's processor saves them: the first in
    the checkpoint directory (with the '<image>' / '<video>' placeholder token added), the second in
    its `qformer_tokenizer/` folder."""
    return checkpoint.load_tokenizer(directory), checkpoint.load_tokenizer(Path(directory) / "qformer_tokenizer")


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> InstructBlip:
    """An InstructBLIP or InstructBLIP-Video checkpoint directory with a LLaMA language model, as a Flax model.

    `dtype` is the computation dtype; parameters stay float32. With a `mesh`, each parameter
    is placed on it as it is read (`checkpoint.fill`).
    """
    config = InstructBlipConfig.from_hf(checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES))
    model = checkpoint.abstract(lambda: InstructBlip(config, dtype=dtype, rngs=nnx.Rngs(0)))
    checkpoint.fill(
        checkpoint.SafetensorsCheckpoint(directory),
        model,
        instructblip_slots(model),
        ignore=instructblip_ignore(model),
        what="InstructBLIP-Video" if config.video else "InstructBLIP",
        mesh=mesh,
    )
    return model
