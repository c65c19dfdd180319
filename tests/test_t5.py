"""T5 / Flan-T5: parity with transformers' T5ForConditionalGeneration on tiny random configs,
relative position buckets, cached decoding, generation, bf16, loading, errors."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file, save_file

from hf_reference import save_reference
from panda_jax.models import checkpoint, generation, t5

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "a man is riding a bike down a hill",
    "two dogs play in the snow",
    "a woman cooks pasta in a small kitchen",
    "the camera pans over a city at night",
]
PROMPTS = ["summarize: a man cooks pasta at night", "two dogs play"]
VOCAB_SIZE = 64
MAX_NEW_TOKENS = 10


def train_t5_tokenizer() -> transformers.T5TokenizerFast:
    """A real T5 tokenizer (SentencePiece-style Unigram, ▁ for spaces, `</s>` appended) trained offline."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    unigram = Tokenizer(models.Unigram())
    unigram.normalizer = normalizers.NFKC()
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False
    )  # T5's ids: pad 0, eos 1, unk 2
    unigram.train_from_iterator(SENTENCES + PROMPTS, trainer)
    return transformers.T5TokenizerFast(
        tokenizer_object=unigram, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    )


def tiny_config(**overrides) -> transformers.T5Config:
    """Flan-T5's configuration (gated GELU, `tie_word_embeddings=False`: no output scaling) unless overridden."""
    fields = dict(
        vocab_size=VOCAB_SIZE,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        # Few buckets and a short max distance, so that short sequences reach the logarithmic buckets.
        relative_attention_num_buckets=8,
        relative_attention_max_distance=12,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
    )
    return transformers.T5Config(**(fields | overrides))


@pytest.fixture(scope="module")
def tokenizer():
    return train_t5_tokenizer()


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encoder inputs of 14 and 9 tokens, right-padded (as T5's tokenizer pads), and decoder inputs:
    (input_ids, attention_mask, decoder_input_ids). Fixed ids: the Unigram trainer is not deterministic."""
    rng = np.random.default_rng(0)
    input_ids = rng.integers(3, VOCAB_SIZE, size=(2, 14)).astype(np.int32)
    input_ids[:, -1] = 1  # </s>
    attention_mask = np.ones_like(input_ids)
    input_ids[1, 8] = 1
    input_ids[1, 9:], attention_mask[1, 9:] = 0, 0
    decoder_input_ids = rng.integers(3, VOCAB_SIZE, size=(2, 6)).astype(np.int32)
    decoder_input_ids[:, 0] = 0  # the decoder start token
    return input_ids, attention_mask, decoder_input_ids


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, tokenizer) -> tuple[Path, torch.nn.Module]:
    """A Flan-T5 checkpoint with its tokenizer: (directory, transformers model read from it).

    transformers 5 builds T5 with the head tied to the embeddings and saves no `lm_head.weight`;
    Flan-T5 checkpoints hold their own, which transformers then unties. So one is added. (A
    random head also keeps the tiny model from just repeating its input token.)
    """
    directory = tmp_path_factory.mktemp("t5")
    save_reference(transformers.T5ForConditionalGeneration, directory, tiny_config())
    tensors = load_file(directory / checkpoint.WEIGHTS_NAME)
    assert "lm_head.weight" not in tensors
    tensors["lm_head.weight"] = np.random.default_rng(0).normal(size=tensors["shared.weight"].shape).astype(np.float32)
    save_file(tensors, directory / checkpoint.WEIGHTS_NAME, metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)
    reference = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
    assert reference.lm_head.weight.data_ptr() != reference.shared.weight.data_ptr()
    return directory, reference


@pytest.fixture(scope="module")
def model(checkpoint_dir) -> t5.T5ForConditionalGeneration:
    return t5.load(checkpoint_dir[0])


def reference_logits(reference: torch.nn.Module, input_ids, attention_mask, decoder_input_ids) -> np.ndarray:
    with torch.no_grad():
        return reference(
            input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask),
            decoder_input_ids=torch.tensor(decoder_input_ids),
        ).logits.numpy()  # fmt: skip


@pytest.mark.parity
def test_t5_logits_match_transformers_with_padding(checkpoint_dir, model, batch):
    _, reference = checkpoint_dir
    input_ids, attention_mask, decoder_input_ids = batch
    assert not attention_mask.all() and input_ids.shape[1] > 12  # padding, and distances past max_distance
    logits = model(input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), reference_logits(reference, *batch), atol=1e-4)


@pytest.mark.parity
def test_t5_encoder_inputs_embeds_match_transformers(checkpoint_dir, model, batch):
    """BLIP-2 feeds the encoder embeddings ([query tokens; prompt]): `embed` is transformers' input embedding."""
    _, reference = checkpoint_dir
    input_ids, attention_mask, decoder_input_ids = batch
    with torch.no_grad():
        embeds = reference.get_input_embeddings()(torch.tensor(input_ids))
        mask, decoder_ids = torch.tensor(attention_mask), torch.tensor(decoder_input_ids)
        expected = reference(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=decoder_ids).logits.numpy()
        encoded = reference.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
    np.testing.assert_allclose(np.asarray(model.embed(input_ids)), embeds.numpy(), atol=1e-6)
    ours = model.encode(inputs_embeds=model.embed(input_ids), attention_mask=attention_mask)
    np.testing.assert_allclose(np.asarray(ours), encoded.last_hidden_state.numpy(), atol=1e-4)
    embeds = model.embed(input_ids)
    logits = model(inputs_embeds=embeds, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4)


@pytest.mark.parity
@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(feed_forward_proj="relu", tie_word_embeddings=True, num_decoder_layers=3)],
    ids=["transformers5_tied", "original_t5"],
)
def test_t5_tied_head_layouts_match_transformers(tmp_path, batch, overrides):
    """Checkpoints without `lm_head.weight` project with the embeddings: as transformers 5 saves Flan-T5
    (no output scaling), and the original T5 (ReLU MLP, decoder output scaled by d_model ** -0.5)."""
    config = tiny_config(**overrides)
    reference = save_reference(transformers.T5ForConditionalGeneration, tmp_path, config)
    model = t5.load(tmp_path)
    assert model.lm_head is None and model.config.scale_decoder_outputs == config.scale_decoder_outputs
    logits = model(batch[0], attention_mask=batch[1], decoder_input_ids=batch[2])
    np.testing.assert_allclose(np.asarray(logits), reference_logits(reference, *batch), atol=1e-4)


@pytest.mark.parity
@pytest.mark.parametrize("bidirectional", [True, False], ids=["encoder", "decoder"])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 12), (10, 30)])
def test_t5_relative_position_buckets_match_transformers(bidirectional, num_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = np.arange(-400, 401)
    expected = T5Attention._relative_position_bucket(torch.tensor(relative), bidirectional, num_buckets, max_distance)
    ours = t5.relative_position_bucket(jnp.asarray(relative, jnp.int32), bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(np.asarray(ours), expected.numpy())


@pytest.mark.parity
def test_t5_cached_decoding_matches_teacher_forcing(model, batch):
    """Decoding from a cache (cross-attention keys/values computed once) gives the teacher-forced logits."""
    input_ids, attention_mask, decoder_input_ids = batch
    expected = model(input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    encoded = model.encode(input_ids, attention_mask=attention_mask)
    cache = model.init_cache(2, decoder_input_ids.shape[1] + 2, encoder_hidden_states=encoded)
    step = nnx.jit(lambda model, ids, mask, cache: model.decode(ids, encoder_attention_mask=mask, cache=cache))
    logits, cache = step(model, decoder_input_ids[:, :2], attention_mask, cache)  # two at once, then one by one
    pieces = [logits]
    for i in range(2, decoder_input_ids.shape[1]):
        logits, cache = step(model, decoder_input_ids[:, i : i + 1], attention_mask, cache)
        pieces.append(logits)
    assert int(cache.index) == decoder_input_ids.shape[1]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), np.asarray(expected), atol=1e-5)


def reference_generate(reference, input_ids, attention_mask, embeds: bool, **settings) -> np.ndarray:
    """transformers' new tokens (it returns the decoder start token first)."""
    ids, mask = torch.tensor(input_ids), torch.tensor(attention_mask)
    inputs = dict(inputs_embeds=reference.get_input_embeddings()(ids)) if embeds else dict(input_ids=ids)
    with torch.no_grad():
        return reference.generate(**inputs, attention_mask=mask, do_sample=False, **settings)[:, 1:].numpy()


@pytest.mark.parity
@pytest.mark.parametrize(
    "num_beams, embeds", [(1, False), (3, False), (3, True)], ids=["greedy", "beam3", "beam3_inputs_embeds"]
)
def test_t5_generate_matches_transformers(checkpoint_dir, model, batch, num_beams, embeds):
    """A right-padded batch of two inputs. EOS is the first token of the first input's output
    without EOS that, made EOS, ends that output early, so that rows finish at different times."""
    _, reference = checkpoint_dir
    input_ids, attention_mask, _ = batch
    settings = dict(max_new_tokens=MAX_NEW_TOKENS, num_beams=num_beams)
    first = reference_generate(reference, input_ids, attention_mask, embeds, eos_token_id=None, **settings)[0].tolist()
    for eos_token_id in dict.fromkeys(first[1:]):
        expected = reference_generate(
            reference, input_ids, attention_mask, embeds, eos_token_id=eos_token_id, **settings
        )
        if (expected[0] == eos_token_id).any():
            break
    assert (expected[0] == eos_token_id).any()
    prompt = dict(inputs_embeds=model.embed(input_ids)) if embeds else dict(input_ids=input_ids)
    tokens = generation.generate(model, **prompt, attention_mask=attention_mask, eos_token_id=eos_token_id, **settings)
    np.testing.assert_array_equal(tokens, expected)


def test_t5_sharded_checkpoint_loads_like_single_file(tmp_path, checkpoint_dir, model, batch):
    _, reference = checkpoint_dir
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / checkpoint.WEIGHTS_INDEX_NAME).is_file()
    sharded = t5.load(tmp_path)
    input_ids, attention_mask, decoder_input_ids = batch
    np.testing.assert_array_equal(
        np.asarray(sharded(input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)),
        np.asarray(model(input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)),
    )


def test_t5_tokenizer_loads_from_checkpoint_directory(checkpoint_dir, tokenizer):
    directory, _ = checkpoint_dir
    loaded = checkpoint.load_tokenizer(directory)
    assert loaded(PROMPTS)["input_ids"] == tokenizer(PROMPTS)["input_ids"]
    assert loaded(PROMPTS[1])["input_ids"][-1] == loaded.eos_token_id == 1 and loaded.pad_token_id == 0
    assert loaded.decode(loaded(PROMPTS[1])["input_ids"], skip_special_tokens=True) == PROMPTS[1]


# --- checkpoint variants ------------------------------------------------------------------


def test_t5_accepts_the_copies_old_checkpoints_hold(broken, model, batch):
    """Per-stack copies of the shared embeddings and the unused cross-attention bias are read past."""
    tensors, write = broken
    tensors["encoder.embed_tokens.weight"] = tensors["decoder.embed_tokens.weight"] = tensors["shared.weight"]
    tensors["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = np.zeros((8, 4), np.float32)
    loaded = t5.load(write(tensors))
    input_ids, attention_mask, decoder_input_ids = batch
    np.testing.assert_array_equal(
        np.asarray(loaded(input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)),
        np.asarray(model(input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)),
    )
