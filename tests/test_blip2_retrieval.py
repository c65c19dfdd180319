"""BLIP-2's ITM and ITC scores against transformers' Blip2ForImageTextRetrieval, small random config.

The checkpoint directory also holds a BERT WordPiece tokenizer trained here, offline, on a few
captions: the captions are tokenised by the tokenizer loaded back from the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_reference import randomized
from panda_jax.models import CheckpointError, blip2_retrieval, checkpoint

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

QUERIES = 4
VISION = dict(
    hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=30, patch_size=10
)
QFORMER = dict(
    vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
    max_position_embeddings=24, cross_attention_frequency=1, use_qformer_text_input=True,
)  # fmt: skip
CAPTIONS = [
    "a cat sleeps on a pink blanket",
    "two dogs run across the beach",
    "a man rides a red bicycle down the street",
    "a bowl of fruit on a wooden table",
]


def bert_tokenizer():
    """A BERT WordPiece tokenizer trained on CAPTIONS: a real tokenizer, made without the network."""
    wordpiece = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = tokenizers.trainers.WordPieceTrainer(vocab_size=120, special_tokens=special)
    wordpiece.train_from_iterator(CAPTIONS, trainer)
    return transformers.BertTokenizerFast(vocab=wordpiece.get_vocab())


def blip2_config(**overrides):
    return transformers.Blip2Config(
        vision_config=VISION, qformer_config=QFORMER, num_query_tokens=QUERIES, image_text_hidden_size=16, **overrides
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(transformers model, checkpoint directory, the tokenizer saved in it)."""
    directory = tmp_path_factory.mktemp("blip2_itm")
    reference = randomized(transformers.Blip2ForImageTextRetrieval(blip2_config()))
    reference.save_pretrained(directory)
    tokenizer = bert_tokenizer()
    tokenizer.save_pretrained(directory)
    return reference, directory, tokenizer


@pytest.fixture(scope="module")
def model(saved):
    return blip2_retrieval.load(saved[1])


@pytest.fixture(scope="module")
def inputs(saved):
    """Two images; the first two captions, paired with them for ITM; all four captions for ITC."""
    tokenizer = checkpoint.load_tokenizer(saved[1])
    pixels = np.random.default_rng(0).standard_normal((2, 3, 30, 30)).astype(np.float32)
    pairs = tokenizer(CAPTIONS[:2], padding=True, return_tensors="np")
    captions = tokenizer(CAPTIONS, padding=True, return_tensors="np")
    return {
        "pixels": pixels,
        "pair_ids": pairs["input_ids"], "pair_mask": pairs["attention_mask"],
        "caption_ids": captions["input_ids"], "caption_mask": captions["attention_mask"],
    }  # fmt: skip


@nnx.jit
def scores(model, pixels, pair_ids, pair_mask, caption_ids, caption_mask) -> dict:
    """Everything the model computes, in one compiled call (compiling dominates these tests)."""
    return {
        "itm": model.itm_scores(pixels, pair_ids, pair_mask),
        "itc": model.itc(pixels, caption_ids, caption_mask),
        "image_embeds": model.encode_image(pixels),
        "text_embeds": model.encode_text(caption_ids, caption_mask),
    }


def run(model, inputs: dict) -> dict:
    names = "pixels", "pair_ids", "pair_mask", "caption_ids", "caption_mask"
    return scores(model, *(inputs[name] for name in names))


@pytest.fixture(scope="module")
def outputs(model, inputs) -> dict:
    return run(model, inputs)


def reference_scores(reference, pixels, input_ids, attention_mask, matching: bool):
    with torch.no_grad():
        return reference(
            pixel_values=torch.from_numpy(pixels), input_ids=torch.from_numpy(input_ids),
            attention_mask=torch.from_numpy(attention_mask), use_image_text_matching_head=matching,
        )  # fmt: skip


def test_blip2_retrieval_tokenizer_loads_from_the_checkpoint(saved, inputs):
    tokenizer = checkpoint.load_tokenizer(saved[1])
    assert isinstance(tokenizer, transformers.BertTokenizerFast)
    assert tokenizer(CAPTIONS).input_ids == saved[2](CAPTIONS).input_ids
    assert tokenizer.convert_ids_to_tokens(tokenizer("a cat").input_ids) == ["[CLS]", "a", "cat", "[SEP]"]
    assert (inputs["caption_mask"] == 0).any()  # the captions differ in length: padding is exercised


@pytest.mark.parity
def test_itm_blip2_matches_transformers(saved, inputs, outputs):
    expected = reference_scores(saved[0], inputs["pixels"], inputs["pair_ids"], inputs["pair_mask"], True)
    assert outputs["itm"].shape == (2, 2) and outputs["itm"].dtype == jnp.float32
    np.testing.assert_allclose(outputs["itm"], expected.logits_per_image.numpy(), atol=1e-4)


@pytest.mark.parity
def test_itc_blip2_matches_transformers(saved, inputs, outputs):
    expected = reference_scores(saved[0], inputs["pixels"], inputs["caption_ids"], inputs["caption_mask"], False)
    per_image, per_text = outputs["itc"]
    assert per_image.shape == (2, 4) and per_text.shape == (4, 2)
    np.testing.assert_allclose(per_image, expected.logits_per_image.numpy(), atol=1e-4)
    np.testing.assert_allclose(per_text, expected.logits_per_text.numpy(), atol=1e-4)
    # The embeddings for retrieval over many texts are transformers' too.
    np.testing.assert_allclose(outputs["image_embeds"], expected.image_embeds.numpy(), atol=1e-4)
    np.testing.assert_allclose(outputs["text_embeds"], expected.text_embeds.numpy(), atol=1e-4)
    similarity = blip2_retrieval.itc_similarity(outputs["image_embeds"], outputs["text_embeds"])
    np.testing.assert_allclose(similarity, per_image, atol=1e-6)


@pytest.mark.parity
def test_itm_itc_blip2_with_image_placeholders_in_the_prompt(saved, inputs, tmp_path):
    """Checkpoints with `image_token_index` get num_query_tokens image tokens before the caption."""
    directory = saved[1]
    for name in ("model.safetensors", "config.json"):
        shutil.copy(directory / name, tmp_path / name)
    config = json.loads((tmp_path / "config.json").read_text())
    config["image_token_index"] = 119
    (tmp_path / "config.json").write_text(json.dumps(config))
    reference = transformers.Blip2ForImageTextRetrieval.from_pretrained(tmp_path, local_files_only=True).eval()

    def with_placeholders(name: str) -> np.ndarray:
        value = 119 if name.endswith("ids") else 1
        return np.pad(inputs[name], ((0, 0), (QUERIES, 0)), constant_values=value)

    pair, captions = ("pair_ids", "pair_mask"), ("caption_ids", "caption_mask")
    prompted = inputs | {name: with_placeholders(name) for name in pair + captions}
    actual = run(blip2_retrieval.load(tmp_path), prompted)
    expected = reference_scores(reference, inputs["pixels"], *(prompted[n] for n in pair), True)
    np.testing.assert_allclose(actual["itm"], expected.logits_per_image.numpy(), atol=1e-4)
    expected = reference_scores(reference, inputs["pixels"], *(prompted[n] for n in captions), False)
    np.testing.assert_allclose(actual["itc"][0], expected.logits_per_image.numpy(), atol=1e-4)


def test_blip2_retrieval_loads_a_sharded_checkpoint(saved, inputs, outputs, tmp_path):
    saved[0].save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    sharded = run(blip2_retrieval.load(tmp_path), inputs)
    np.testing.assert_array_equal(sharded["itm"], outputs["itm"])
    np.testing.assert_array_equal(sharded["itc"][0], outputs["itc"][0])


SHARDED_RUN = """
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P
from panda_jax.models import blip2_retrieval, sharding

model = blip2_retrieval.load({directory!r})
inputs = dict(np.load({inputs!r}))
args = inputs["pixels"], inputs["pair_ids"], inputs["pair_mask"]
itm = nnx.jit(lambda model, *args: model.itm_scores(*args))
expected = np.asarray(itm(model, *args))
mesh = sharding.make_mesh(data=2, model=2)
sharding.shard_model(model, mesh)
assert model.qformer.layers[0].attention.query.kernel[...].sharding.spec == P(None, "model")  # heads split
actual = itm(model, *sharding.shard_batch(args, mesh))
np.testing.assert_allclose(actual, expected, atol=1e-5)
print("sharded ok")
"""


def test_blip2_retrieval_runs_sharded_over_a_data_and_model_mesh(saved, inputs, tmp_path):
    """Four fake CPU devices in a fresh process: 2-way data parallel × 2-way tensor parallel."""
    np.savez(tmp_path / "inputs.npz", **inputs)
    script = SHARDED_RUN.format(directory=str(saved[1]), inputs=str(tmp_path / "inputs.npz"))
    env = os.environ | {"XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "sharded ok" in result.stdout, result.stderr[-3000:]


def test_blip2_retrieval_needs_the_qformer_text_input():
    config = blip2_config().to_dict()
    config["qformer_config"]["use_qformer_text_input"] = False
    with pytest.raises(CheckpointError, match="use_qformer_text_input is false"):
        blip2_retrieval.RetrievalConfig.from_hf(config)
