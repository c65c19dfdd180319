"""LLaMA: parity with transformers' LlamaForCausalLM on tiny random configs, cache, bf16, loading errors."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_reference import save_reference
from panda_jax.models import CheckpointError, checkpoint, generation, llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SENTENCES = [
    "a man is riding a bike down a hill",
    "two dogs play in the snow",
    "a woman cooks pasta in a small kitchen",
    "the camera pans over a city at night",
]
PROMPTS = ["a man cooks pasta", "two dogs play in a small city at night"]


def train_llama_tokenizer() -> transformers.LlamaTokenizerFast:
    """A real LLaMA tokenizer (byte-fallback BPE, ▁ for spaces) trained offline on a few sentences."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    bpe.train_from_iterator(
        SENTENCES, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    )
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(merge) for merge in trained["merges"]]
    return transformers.LlamaTokenizerFast(vocab=trained["vocab"], merges=merges, add_bos_token=True, pad_token="<unk>")


def tiny_config(**overrides) -> transformers.LlamaConfig:
    fields = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: 2 query heads per key/value head
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return transformers.LlamaConfig(**(fields | overrides))


@pytest.fixture(scope="module")
def tokenizer():
    return train_llama_tokenizer()


@pytest.fixture(scope="module")
def gqa(tmp_path_factory, tokenizer):
    """A GQA checkpoint with its tokenizer: (directory, transformers model, our model)."""
    directory = tmp_path_factory.mktemp("llama_gqa")
    reference = save_reference(transformers.LlamaForCausalLM, directory, tiny_config())
    tokenizer.save_pretrained(directory)
    return directory, reference, llama.load(directory)


@pytest.fixture(scope="module")
def batch(tokenizer):
    """Two prompts, left padded as the LLaMA tokenizer pads."""
    encoded = tokenizer(PROMPTS, padding=True, return_tensors="np")
    assert encoded["attention_mask"][0, 0] == 0, "the batch should have left padding"
    return encoded["input_ids"], encoded["attention_mask"]


def reference_logits(reference, input_ids, attention_mask, **kwargs) -> np.ndarray:
    with torch.no_grad():
        out = reference(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask), **kwargs)
    return out.logits.numpy()


forward = nnx.jit(lambda model, ids, mask: model(ids, attention_mask=mask)[0])


@pytest.mark.parity
def test_llama_gqa_logits_match_transformers_with_left_padding(gqa, batch):
    _, reference, model = gqa
    input_ids, attention_mask = batch
    expected = reference_logits(reference, input_ids, attention_mask)
    logits = np.asarray(forward(model, input_ids, attention_mask))
    real = attention_mask.astype(bool)  # padded query positions attend to nothing: undefined in both
    np.testing.assert_allclose(logits[real], expected[real], atol=1e-4)
    assert np.isfinite(logits).all()


@pytest.mark.parity
@pytest.mark.parametrize(
    "overrides",
    [
        dict(num_key_value_heads=4, tie_word_embeddings=True, attention_bias=True, mlp_bias=True,
             rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}),
        dict(num_key_value_heads=1, head_dim=16,
             rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 16, "rope_theta": 10000.0}),
    ],
    ids=["tied_biases_linear_rope", "multi_query_llama3_rope"],
)  # fmt: skip
def test_llama_variant_logits_match_transformers(tmp_path, batch, overrides):
    reference = save_reference(transformers.LlamaForCausalLM, tmp_path, tiny_config(**overrides))
    model = llama.load(tmp_path)
    assert (model.lm_head is None) == bool(overrides.get("tie_word_embeddings"))
    input_ids, attention_mask = batch
    real = attention_mask.astype(bool)
    expected = reference_logits(reference, input_ids, attention_mask)
    np.testing.assert_allclose(np.asarray(forward(model, input_ids, attention_mask))[real], expected[real], atol=1e-4)


@pytest.mark.parity
def test_llama_cached_decoding_matches_transformers_generate_positions(gqa, batch):
    """Prefill then one token at a time through the KV cache equals one forward over the whole
    sequence, positions numbered by the running count of real tokens as `generate` does."""
    _, reference, model = gqa
    input_ids, attention_mask = batch
    batch_size, prompt_length = input_ids.shape
    new_tokens = np.random.default_rng(0).integers(3, 128, (batch_size, 4))
    full_ids = np.concatenate([input_ids, new_tokens], axis=1)
    full_mask = np.concatenate([attention_mask, np.ones_like(new_tokens)], axis=1)
    positions = np.where(full_mask == 1, np.cumsum(full_mask, axis=1) - 1, 0)
    expected = reference_logits(reference, full_ids, full_mask, position_ids=torch.tensor(positions))

    max_length = full_ids.shape[1] + 2  # slots never written stay masked
    cache_mask = np.zeros((batch_size, max_length), np.int32)
    step = nnx.jit(lambda model, ids, mask, cache: model(ids, attention_mask=mask, cache=cache))
    cache = model.init_cache(batch_size, max_length)
    assert cache.keys[0].shape == (batch_size, max_length, 2, 8)
    cache_mask[:, :prompt_length] = attention_mask
    logits, cache = step(model, input_ids, cache_mask, cache)
    got = [np.asarray(logits)]
    for i in range(new_tokens.shape[1]):
        cache_mask[:, prompt_length + i] = 1
        logits, cache = step(model, new_tokens[:, i : i + 1], cache_mask, cache)
        got.append(np.asarray(logits))
    assert int(cache.index) == full_ids.shape[1]
    got = np.concatenate(got, axis=1)
    real = full_mask.astype(bool)
    np.testing.assert_allclose(got[real], expected[real], atol=1e-4)


@pytest.mark.parity
def test_llama_inputs_embeds_equal_input_ids(gqa, batch):
    _, reference, model = gqa
    input_ids, attention_mask = batch
    with torch.no_grad():
        reference_embeds = reference.get_input_embeddings()(torch.tensor(input_ids)).numpy()
    np.testing.assert_allclose(np.asarray(model.embed(input_ids)), reference_embeds, atol=1e-6)
    from_embeds, _ = model(inputs_embeds=model.embed(input_ids), attention_mask=attention_mask)
    np.testing.assert_allclose(np.asarray(from_embeds), np.asarray(forward(model, input_ids, attention_mask)), atol=1e-5)
    with pytest.raises(ValueError, match="exactly one"):
        model(input_ids, inputs_embeds=model.embed(input_ids))


def test_llama_bf16_compute_keeps_a_bf16_cache(gqa):
    assert llama.load(gqa[0], dtype=jnp.bfloat16).init_cache(2, 8).keys[0].dtype == jnp.bfloat16


@pytest.mark.parity
def test_llama_sharded_checkpoint_loads_like_single_file(tmp_path, gqa, batch):
    _, reference, model = gqa
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / checkpoint.WEIGHTS_INDEX_NAME).is_file()
    sharded = llama.load(tmp_path)
    input_ids, attention_mask = batch
    np.testing.assert_array_equal(
        np.asarray(forward(sharded, input_ids, attention_mask)), np.asarray(forward(model, input_ids, attention_mask))
    )


def test_llama_tokenizer_loads_from_checkpoint_directory(gqa, tokenizer):
    loaded = checkpoint.load_tokenizer(gqa[0])
    assert loaded("a woman cooks pasta").input_ids == tokenizer("a woman cooks pasta").input_ids
    assert loaded("a woman cooks pasta").input_ids[0] == tokenizer.bos_token_id == 1
    assert loaded.padding_side == "left"


# --- generation ---------------------------------------------------------------------------

MAX_NEW_TOKENS = 10


@pytest.fixture(scope="module")
def eos_token_id(gqa, batch) -> int:
    """An EOS id the first prompt reaches after a few greedy steps, so that rows finish at different times."""
    _, reference, _ = gqa
    input_ids, attention_mask = batch
    with torch.no_grad():
        tokens = reference.generate(
            input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask),
            max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=None,
        )[0, input_ids.shape[1]:].tolist()  # fmt: skip
    return next(t for i, t in enumerate(tokens) if i >= 3 and t not in tokens[:i])


@pytest.mark.parity
@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
@pytest.mark.parametrize("prompt", ["input_ids", "inputs_embeds"])
def test_llama_generate_matches_transformers(gqa, batch, eos_token_id, num_beams, prompt):
    """Left-padded batch of two prompts; one row meets EOS early, the other runs to max_new_tokens."""
    _, reference, model = gqa
    input_ids, attention_mask = batch
    settings = dict(max_new_tokens=MAX_NEW_TOKENS, num_beams=num_beams, eos_token_id=eos_token_id)
    with torch.no_grad():
        if prompt == "input_ids":
            expected = reference.generate(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask),
                                          do_sample=False, **settings)[:, input_ids.shape[1]:]  # fmt: skip
        else:
            embeds = reference.get_input_embeddings()(torch.tensor(input_ids))
            expected = reference.generate(inputs_embeds=embeds, attention_mask=torch.tensor(attention_mask),
                                          do_sample=False, **settings)  # fmt: skip
    if prompt == "input_ids":
        tokens = generation.generate(model, input_ids=input_ids, attention_mask=attention_mask, **settings)
    else:
        tokens = generation.generate(model, inputs_embeds=model.embed(input_ids), attention_mask=attention_mask, **settings)
    expected = expected.numpy()
    if num_beams == 1:
        assert (expected[0] == eos_token_id).any() and not (expected[1] == eos_token_id).any()
    np.testing.assert_array_equal(tokens, expected)


# --- loading errors -----------------------------------------------------------------------


def with_config(directory: Path, destination: Path, **fields) -> Path:
    """A copy of the checkpoint's config.json updated with `fields`, beside weights no loader can read:
    the error must come before any weight is opened."""
    config = json.loads((directory / "config.json").read_text())
    (destination / "config.json").write_text(json.dumps(config | fields))
    (destination / checkpoint.WEIGHTS_NAME).write_bytes(b"not a safetensors file")
    return destination


def test_llama_refuses_unsupported_rope_type(gqa, tmp_path):
    rope = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    with pytest.raises(CheckpointError, match="RoPE type 'yarn'"):
        llama.load(with_config(gqa[0], tmp_path, rope_parameters=rope))
