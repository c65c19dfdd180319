"""Greedy and beam-search decoding give transformers' `generate` token ids (decoder-only, on OPT).

T5 (encoder-decoder) decoding is checked in test_t5.py, LLaMA's in test_llama.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from panda_jax.models import generation, opt

transformers = pytest.importorskip("transformers")

MAX_NEW_TOKENS = 12
VOCAB_SIZE = 128


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[torch.nn.Module, opt.OPTForCausalLM]:
    """A tiny random OPT (pre-LN, tied head, as in BLIP-2 OPT-2.7b): (transformers model, ours)."""
    config = transformers.OPTConfig(
        vocab_size=VOCAB_SIZE, hidden_size=48, num_hidden_layers=2, ffn_dim=96, num_attention_heads=4,
        max_position_embeddings=64, init_std=0.2, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    reference = transformers.OPTForCausalLM(config).eval()
    directory = tmp_path_factory.mktemp("opt_generation")
    reference.save_pretrained(directory)
    return reference, opt.load(directory)


@pytest.fixture(scope="module")
def prompts() -> tuple[np.ndarray, np.ndarray]:
    """Two prompts of 4 and 7 tokens, left-padded: (input_ids, attention_mask)."""
    rng = np.random.default_rng(0)
    input_ids = rng.integers(3, VOCAB_SIZE, size=(2, 7)).astype(np.int32)
    attention_mask = np.ones_like(input_ids)
    input_ids[0, :3], attention_mask[0, :3] = 1, 0
    return input_ids, attention_mask


def hf_generate(reference, input_ids, attention_mask, *, embeds: bool = False, **settings) -> np.ndarray:
    """transformers' new tokens (it returns the prompt too for input_ids, not for inputs_embeds)."""
    ids, mask = torch.tensor(input_ids), torch.tensor(attention_mask)
    with torch.no_grad():
        prompt = dict(inputs_embeds=reference.get_input_embeddings()(ids)) if embeds else dict(input_ids=ids)
        tokens = reference.generate(**prompt, attention_mask=mask, do_sample=False, **settings).numpy()
    return tokens if embeds else tokens[:, ids.shape[1] :]


@pytest.fixture(scope="module")
def eos_ids(models, prompts) -> tuple[int, int]:
    """For each prompt, a token its greedy continuation reaches after a few steps and the other prompt's never does."""
    reference, _ = models
    tokens = hf_generate(reference, *prompts, max_new_tokens=MAX_NEW_TOKENS, eos_token_id=None).tolist()

    def late_first_token(row: list[int], other: list[int]) -> int:
        return next(t for i, t in enumerate(row) if i >= 2 and t not in row[:i] and t not in other)

    return late_first_token(tokens[0], tokens[1]), late_first_token(tokens[1], tokens[0])


def our_generate(model, input_ids, attention_mask, *, embeds: bool = False, **settings) -> np.ndarray:
    prompt = dict(inputs_embeds=model.embed(input_ids)) if embeds else dict(input_ids=input_ids)
    return generation.generate(model, **prompt, attention_mask=attention_mask, **settings)


@pytest.mark.parity
@pytest.mark.parametrize("embeds", [False, True], ids=["input_ids", "inputs_embeds"])
def test_opt_greedy_matches_transformers(models, prompts, eos_ids, embeds):
    """The first prompt meets EOS early and is padded after it; the second runs to max_new_tokens."""
    reference, model = models
    settings = dict(max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos_ids[0])
    expected = hf_generate(reference, *prompts, embeds=embeds, **settings)
    assert (expected[0] == eos_ids[0]).sum() == 1 and expected[0, -1] == model.config.pad_token_id
    np.testing.assert_array_equal(our_generate(model, *prompts, embeds=embeds, **settings), expected)


@pytest.mark.parity
def test_opt_greedy_stops_when_every_row_has_finished(models, prompts, eos_ids):
    """Two EOS ids, one met by each prompt: fewer than max_new_tokens columns, as transformers returns."""
    reference, model = models
    settings = dict(max_new_tokens=MAX_NEW_TOKENS, eos_token_id=list(eos_ids))
    expected = hf_generate(reference, *prompts, **settings)
    assert expected.shape[1] < MAX_NEW_TOKENS
    np.testing.assert_array_equal(our_generate(model, *prompts, **settings), expected)


@pytest.mark.parity
@pytest.mark.parametrize(
    "embeds, length_penalty, early_stopping, eos",
    [
        (False, 1.0, False, [0]),
        (True, 1.0, False, [0]),
        (False, 0.5, True, [1]),
        (False, 0.8, "never", [0, 1]),
    ],
    ids=["input_ids", "inputs_embeds", "early_stopping", "never_stop_early_two_eos"],
)
def test_opt_beam_search_matches_transformers(models, prompts, eos_ids, embeds, length_penalty, early_stopping, eos):
    """Three beams; hypotheses end at EOS and are padded as transformers pads them.

    With n EOS ids transformers keeps (n + 1) · num_beams candidates per step.
    """
    reference, model = models
    settings = dict(
        max_new_tokens=MAX_NEW_TOKENS, num_beams=3, eos_token_id=[eos_ids[i] for i in eos],
        length_penalty=length_penalty, early_stopping=early_stopping,
    )  # fmt: skip
    expected = hf_generate(reference, *prompts, embeds=embeds, **settings)
    assert np.isin(expected, settings["eos_token_id"]).any()
    np.testing.assert_array_equal(our_generate(model, *prompts, embeds=embeds, **settings), expected)


@pytest.mark.parity
def test_opt_right_padded_prompts_decode_as_transformers_does(models, prompts):
    """transformers warns about right padding but decodes on from the padding column; so do we."""
    reference, model = models
    input_ids, attention_mask = prompts
    right_ids = np.stack([np.roll(row, -3) for row in input_ids[:1]] + [input_ids[1]])
    right_mask = np.stack([np.roll(row, -3) for row in attention_mask[:1]] + [attention_mask[1]])
    assert right_mask[0, -1] == 0
    settings = dict(max_new_tokens=MAX_NEW_TOKENS)
    expected = hf_generate(reference, right_ids, right_mask, **settings)
    np.testing.assert_array_equal(our_generate(model, right_ids, right_mask, **settings), expected)


def test_generate_compiles_once_per_shape_and_settings(models, prompts, eos_ids):
    """Other prompt values of the same shapes reuse the compiled loop."""
    _, model = models
    input_ids, attention_mask = prompts
    settings = dict(max_new_tokens=MAX_NEW_TOKENS, eos_token_id=eos_ids[0])  # as test_opt_greedy_... compiles it
    generation.generate(model, input_ids=input_ids, attention_mask=attention_mask, **settings)
    compiled = generation._generate_decoder_only._cache_size()
    generation.generate(model, input_ids=(input_ids + 5) % VOCAB_SIZE, attention_mask=attention_mask, **settings)
    assert generation._generate_decoder_only._cache_size() == compiled


def test_generate_refuses_bad_arguments(models, prompts):
    _, model = models
    input_ids, attention_mask = prompts
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        generation.generate(model, input_ids=input_ids, inputs_embeds=model.embed(input_ids), max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask has shape"):
        generation.generate(model, input_ids=input_ids, attention_mask=attention_mask[:, 1:], max_new_tokens=2)
    with pytest.raises(ValueError, match="early_stopping"):
        generation.generate(model, input_ids=input_ids, max_new_tokens=2, num_beams=2, early_stopping="sometimes")
    with pytest.raises(ValueError, match="at least 1"):
        generation.generate(model, input_ids=input_ids, max_new_tokens=0)
