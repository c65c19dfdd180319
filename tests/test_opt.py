"""OPT: parity with transformers' OPTForCausalLM on tiny random configs, cache, bf16, loading, errors."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from hf_reference import save_reference
from panda_jax.models import checkpoint, opt

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "a man is riding a bike down a hill",
    "two dogs play in the snow",
    "a woman cooks pasta in a small kitchen",
    "the camera pans over a city at night",
]
PROMPTS = ["a man cooks pasta", "two dogs play in a small city at night"]


def train_opt_tokenizer() -> transformers.GPT2TokenizerFast:
    """A real OPT tokenizer (byte-level BPE, GPT-2 style, `</s>` as BOS/EOS) trained offline on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],  # OPT's ids: pad 1, bos/eos 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(SENTENCES, trainer)
    return transformers.GPT2TokenizerFast(
        tokenizer_object=bpe, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        add_bos_token=True, padding_side="left",
    )  # fmt: skip


def tiny_config(vocab_size: int, **overrides) -> transformers.OPTConfig:
    fields = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        ffn_dim=64,
        num_attention_heads=4,
        max_position_embeddings=64,
        init_std=0.2,  # larger than OPT's 0.02, so that logits and token choices are far apart
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=2,
    )
    return transformers.OPTConfig(**(fields | overrides))


@pytest.fixture(scope="module")
def tokenizer():
    return train_opt_tokenizer()


@pytest.fixture(scope="module")
def batch(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Two prompts of different lengths, left-padded: (input_ids, attention_mask)."""
    encoded = tokenizer(PROMPTS, padding=True, return_tensors="np")
    return encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int32)


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, tokenizer) -> tuple[Path, torch.nn.Module]:
    """An OPT checkpoint (pre-LN, tied head) with its tokenizer: (directory, transformers model)."""
    directory = tmp_path_factory.mktemp("opt")
    reference = save_reference(transformers.OPTForCausalLM, directory, tiny_config(len(tokenizer)))
    tokenizer.save_pretrained(directory)
    return directory, reference


@pytest.fixture(scope="module")
def model(checkpoint_dir) -> opt.OPTForCausalLM:
    return opt.load(checkpoint_dir[0])


def reference_logits(reference: torch.nn.Module, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return reference(input_ids=torch.tensor(input_ids), attention_mask=torch.tensor(attention_mask)).logits.numpy()


@pytest.mark.parity
def test_opt_logits_match_transformers_with_left_padding(checkpoint_dir, model, batch):
    _, reference = checkpoint_dir
    input_ids, attention_mask = batch
    assert attention_mask[0, 0] == 0 and attention_mask.all(axis=0)[-1]  # the first row is left-padded
    logits, cache = model(input_ids, attention_mask=attention_mask)
    assert cache is None and logits.dtype == jnp.float32
    real = attention_mask.astype(bool)  # transformers' outputs at padding positions are not meaningful
    expected = reference_logits(reference, input_ids, attention_mask)
    np.testing.assert_allclose(np.asarray(logits)[real], expected[real], atol=1e-4)


@pytest.mark.parity
def test_opt_logits_match_transformers_with_right_padding(checkpoint_dir, model, batch):
    """OPT numbers positions from the mask, so a right-padded row gives the same logits as transformers too."""
    _, reference = checkpoint_dir
    input_ids, attention_mask = batch
    lengths = attention_mask.sum(axis=1)
    right_ids = np.stack([np.roll(row, -(len(row) - n)) for row, n in zip(input_ids, lengths)])
    right_mask = np.stack([np.roll(row, -(len(row) - n)) for row, n in zip(attention_mask, lengths)])
    logits, _ = model(right_ids, attention_mask=right_mask)
    real = right_mask.astype(bool)
    expected = reference_logits(reference, right_ids, right_mask)
    np.testing.assert_allclose(np.asarray(logits)[real], expected[real], atol=1e-4)
    left, _ = model(input_ids, attention_mask=attention_mask)
    np.testing.assert_allclose(np.asarray(logits)[real], np.asarray(left)[attention_mask.astype(bool)], atol=1e-5)


@pytest.mark.parity
def test_opt_inputs_embeds_match_transformers(checkpoint_dir, model, batch):
    """`embed` is transformers' `get_input_embeddings()`, and inputs_embeds give the logits of the ids."""
    _, reference = checkpoint_dir
    input_ids, attention_mask = batch
    with torch.no_grad():
        embeds = reference.get_input_embeddings()(torch.tensor(input_ids))
        expected = reference(inputs_embeds=embeds, attention_mask=torch.tensor(attention_mask)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model.embed(input_ids)), embeds.numpy(), atol=1e-6)
    logits, _ = model(inputs_embeds=model.embed(input_ids), attention_mask=attention_mask)
    real = attention_mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], expected[real], atol=1e-4)


@pytest.mark.parity
def test_opt_350m_layout_matches_transformers(tmp_path, tokenizer, batch):
    """opt-350m's layout: LayerNorm after each sub-block, no final norm, embeddings projected in and out
    (project_in/out); and an untied head."""
    config = tiny_config(len(tokenizer), do_layer_norm_before=False, word_embed_proj_dim=16, tie_word_embeddings=False)
    reference = save_reference(transformers.OPTForCausalLM, tmp_path, config)
    model = opt.load(tmp_path)
    assert model.project_in is not None and model.final_layer_norm is None and model.lm_head is not None
    input_ids, attention_mask = batch
    logits, _ = model(input_ids, attention_mask=attention_mask)
    real = attention_mask.astype(bool)
    expected = reference_logits(reference, input_ids, attention_mask)
    np.testing.assert_allclose(np.asarray(logits)[real], expected[real], atol=1e-4)


@pytest.mark.parity
def test_opt_cached_decoding_matches_uncached_forward(model, batch):
    """Prompt through the cache, then one token at a time: the logits of a plain forward over everything."""
    input_ids, attention_mask = batch
    rng = np.random.default_rng(0)
    continuation = rng.integers(3, model.config.vocab_size, size=(2, 4)).astype(np.int32)
    full_ids = np.concatenate([input_ids, continuation], axis=1)
    full_mask = np.concatenate([attention_mask, np.ones_like(continuation)], axis=1)
    expected, _ = model(full_ids, attention_mask=full_mask)

    prompt_length, total = input_ids.shape[1], full_ids.shape[1]
    cache = model.init_cache(2, total + 3)  # spare slots stay invalid
    valid = np.zeros((2, total + 3), np.int32)
    valid[:, :prompt_length] = attention_mask
    step = nnx.jit(lambda model, ids, valid, cache: model(ids, attention_mask=valid, cache=cache))
    logits, cache = step(model, input_ids, valid, cache)
    pieces = [logits]
    for i in range(continuation.shape[1]):
        valid[:, prompt_length + i] = 1
        logits, cache = step(model, continuation[:, i : i + 1], valid, cache)
        pieces.append(logits)
    assert int(cache.index) == total
    real = full_mask.astype(bool)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1)[real], np.asarray(expected)[real], atol=1e-5)


def test_opt_sharded_checkpoint_loads_like_single_file(tmp_path, checkpoint_dir, model, batch):
    _, reference = checkpoint_dir
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / checkpoint.WEIGHTS_INDEX_NAME).is_file()
    sharded = opt.load(tmp_path)
    input_ids, attention_mask = batch
    np.testing.assert_array_equal(
        np.asarray(sharded(input_ids, attention_mask=attention_mask)[0]),
        np.asarray(model(input_ids, attention_mask=attention_mask)[0]),
    )


def test_opt_tokenizer_loads_from_checkpoint_directory(checkpoint_dir, tokenizer):
    directory, _ = checkpoint_dir
    loaded = checkpoint.load_tokenizer(directory)
    assert loaded(PROMPTS)["input_ids"] == tokenizer(PROMPTS)["input_ids"]
    assert loaded.padding_side == "left" and loaded.pad_token_id == 1 and loaded.eos_token_id == 2
    assert loaded.decode(loaded(PROMPTS[0])["input_ids"], skip_special_tokens=True) == PROMPTS[0]


# --- checkpoint variants ------------------------------------------------------------------


def test_opt_checkpoint_with_its_own_head_loads_it(broken, model, batch):
    """A head that differs from the embeddings (as transformers unties it) is read, not tied."""
    tensors, write = broken
    tensors["lm_head.weight"] = -tensors["model.decoder.embed_tokens.weight"]
    untied = opt.load(write(tensors))
    assert untied.lm_head is not None
    input_ids, attention_mask = batch
    np.testing.assert_allclose(
        np.asarray(untied(input_ids, attention_mask=attention_mask)[0]),
        -np.asarray(model(input_ids, attention_mask=attention_mask)[0]),
        atol=1e-5,
    )
