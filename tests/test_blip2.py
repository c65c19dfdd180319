"""BLIP-2 captioning (vision + Q-Former + OPT, LLaMA or Flan-T5) against transformers' Blip2ForConditionalGeneration."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from hf_reference import randomized
from panda_jax.models import blip2
from panda_jax.models.generation import GenerationConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

NUM_QUERIES, IMAGE_TOKEN, VOCAB = 4, 98, 99
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=7)
QFORMER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB,
               cross_attention_frequency=1)  # fmt: skip
TEXT = {
    "opt": dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=VOCAB, word_embed_proj_dim=32, max_position_embeddings=64, bos_token_id=2,
                eos_token_id=3, pad_token_id=1),
    "llama": dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
                  pad_token_id=1),
    "t5": dict(model_type="t5", d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, vocab_size=VOCAB,
               feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
               pad_token_id=0, eos_token_id=1),
}  # fmt: skip


@dataclass
class Reference:
    directory: Path
    model: transformers.Blip2ForConditionalGeneration
    pixel_values: np.ndarray
    input_ids: np.ndarray  # placeholders, then a prompt padded on the left
    attention_mask: np.ndarray


def prompts() -> tuple[np.ndarray, np.ndarray]:
    """Two prompts as the BLIP-2 processor lays them out: placeholders, then the left-padded text."""
    text = np.array([[1, 1, 5, 17, 23], [2, 40, 41, 42, 43]], np.int32)
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]], np.int32)
    placeholders = np.full((2, NUM_QUERIES), IMAGE_TOKEN, np.int32)
    return np.concatenate([placeholders, text], 1), np.concatenate([np.ones_like(placeholders), mask], 1)


def blip2_config(text: str) -> transformers.Blip2Config:
    """A tiny BLIP-2 with the language model `TEXT[text]`."""
    return transformers.Blip2Config(
        vision_config=VISION, qformer_config=QFORMER, text_config=TEXT[text],
        num_query_tokens=NUM_QUERIES, image_token_index=IMAGE_TOKEN,
    )  # fmt: skip


@pytest.fixture(scope="module", params=list(TEXT))
def reference(request, tmp_path_factory) -> Reference:
    torch.manual_seed(0)
    model = randomized(transformers.Blip2ForConditionalGeneration(blip2_config(request.param)), scale=0.3)
    directory = tmp_path_factory.mktemp(f"blip2_{request.param}")
    model.save_pretrained(directory)
    pixel_values = np.random.default_rng(0).normal(size=(2, 3, 28, 28)).astype(np.float32)
    return Reference(directory, model, pixel_values, *prompts())


@pytest.fixture(scope="module")
def ours(reference) -> blip2.Blip2:
    return blip2.load(reference.directory)


def torch_inputs(reference: Reference) -> dict:
    return {
        "pixel_values": torch.from_numpy(reference.pixel_values),
        "input_ids": torch.from_numpy(reference.input_ids).long(),
        "attention_mask": torch.from_numpy(reference.attention_mask).long(),
    }


@pytest.mark.parity
def test_blip2_visual_tokens_match_transformers(reference, ours):
    with torch.no_grad():
        expected = reference.model.get_image_features(torch.from_numpy(reference.pixel_values)).pooler_output
    np.testing.assert_allclose(ours.visual_tokens(jnp.asarray(reference.pixel_values)), expected.numpy(), atol=1e-4)


@pytest.mark.parity
def test_blip2_opt_llama_and_t5_logits_match_transformers(reference, ours):
    inputs = torch_inputs(reference)
    decoder_input_ids = np.array([[0, 7, 8], [0, 9, 10]], np.int32)
    if ours.is_encoder_decoder:
        inputs["decoder_input_ids"] = torch.from_numpy(decoder_input_ids).long()
    with torch.no_grad():
        expected = reference.model(**inputs).logits.numpy()
    logits = ours(
        jnp.asarray(reference.pixel_values), jnp.asarray(reference.input_ids), jnp.asarray(reference.attention_mask),
        decoder_input_ids=jnp.asarray(decoder_input_ids) if ours.is_encoder_decoder else None,
    )  # fmt: skip
    valid = reference.attention_mask.astype(bool) if not ours.is_encoder_decoder else np.ones(expected.shape[:2], bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], expected[valid], atol=1e-4)


@pytest.mark.parity
@pytest.mark.parametrize(
    "reference, num_beams",
    [("opt", 1), ("opt", 3), ("llama", 1), ("t5", 1), ("t5", 3)],
    ids=["opt-greedy", "opt-beam3", "llama-greedy", "t5-greedy", "t5-beam3"],
    indirect=["reference"],
)
def test_blip2_generates_the_ids_transformers_generates(reference, ours, num_beams):
    with torch.no_grad():
        expected = reference.model.generate(
            **torch_inputs(reference), max_new_tokens=6, num_beams=num_beams, do_sample=False
        ).numpy()
    new = ours.generate(
        reference.pixel_values, reference.input_ids, reference.attention_mask,
        generation_config=GenerationConfig(max_new_tokens=6, num_beams=num_beams),
    )  # fmt: skip
    np.testing.assert_array_equal(new, expected[:, expected.shape[1] - new.shape[1] :])
    assert new.shape[1] >= 1


# LLaMA decodes through the same decoder-only path as OPT: its BLIP-2 case stops at the tests above.
DECODER_KINDS = pytest.mark.parametrize("reference", ["opt", "t5"], indirect=True)


@pytest.mark.parity
@DECODER_KINDS
def test_blip2_stops_at_eos_like_transformers(reference, ours):
    """An EOS id the random model picks early (the second greedy token of the first prompt)."""
    free = ours.generate(
        reference.pixel_values, reference.input_ids, reference.attention_mask,
        generation_config=GenerationConfig(max_new_tokens=4, num_beams=1),
    )  # fmt: skip
    eos = int(free[0, 1])
    with torch.no_grad():
        expected = reference.model.generate(
            **torch_inputs(reference), max_new_tokens=8, num_beams=3, eos_token_id=eos, do_sample=False
        ).numpy()
    new = ours.generate(
        reference.pixel_values, reference.input_ids, reference.attention_mask,
        generation_config=GenerationConfig(max_new_tokens=8, num_beams=3, eos_token_id=eos),
    )  # fmt: skip
    np.testing.assert_array_equal(new, expected[:, expected.shape[1] - new.shape[1] :])


@DECODER_KINDS
def test_blip2_without_placeholders_puts_the_visual_tokens_in_front(reference, ours, tmp_path):
    """Checkpoints from before `image_token_index` read like prompts that start with the placeholders."""
    config = json.loads((reference.directory / "config.json").read_text())
    del config["image_token_index"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").symlink_to(reference.directory / "model.safetensors")
    legacy = blip2.load(tmp_path)
    text = reference.input_ids[:, NUM_QUERIES:]
    decoder = {"decoder_input_ids": jnp.asarray([[0, 7], [0, 9]])} if ours.is_encoder_decoder else {}
    pixels, mask = jnp.asarray(reference.pixel_values), jnp.asarray(reference.attention_mask)
    np.testing.assert_allclose(
        legacy(pixels, jnp.asarray(text), mask[:, NUM_QUERIES:], **decoder),
        ours(pixels, jnp.asarray(reference.input_ids), mask, **decoder),
        atol=1e-5,
    )


@DECODER_KINDS
def test_blip2_refuses_a_prompt_without_one_placeholder_per_query(reference, ours):
    with pytest.raises(ValueError, match="placeholder tokens"):
        ours.generate(reference.pixel_values, reference.input_ids[:, 1:])
