"""CLIP in Flax NNX against transformers' CLIPModel (PyTorch, CPU) on small random configs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from panda_jax.models import checkpoint, clip, sharding

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CAPTIONS = [
    "a photo of a cat",
    "a dog running on the beach",
    "two people riding bikes down a hill at sunset",
    "A man is cooking pasta in a small kitchen.",
    "close-up of a red flower in the rain",
]
IMAGE_SIZE, PATCH_SIZE = 30, 6


def train_tokenizer():
    """A real CLIP tokenizer (byte-level BPE, CLIP's pre-tokenizer), trained offline on the captions."""
    return transformers.CLIPTokenizer().train_new_from_iterator(CAPTIONS * 8, vocab_size=300)


def hf_config(tokenizer, hidden_act: str, eos_token_id: int) -> transformers.CLIPConfig:
    tower = dict(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, hidden_act=hidden_act
    )
    text = dict(tower, vocab_size=len(tokenizer), max_position_embeddings=32, eos_token_id=eos_token_id,
                bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    vision = dict(tower, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


@dataclass
class Reference:
    directory: Path
    model: transformers.CLIPModel  # the PyTorch reference, saved in `directory`
    tokenizer: transformers.CLIPTokenizer
    pixel_values: np.ndarray  # [3, 3, 30, 30] NCHW
    input_ids: np.ndarray  # [4, length], right-padded with the end-of-text token
    attention_mask: np.ndarray

    def outputs(self):
        with torch.no_grad():
            return self.model(
                pixel_values=torch.from_numpy(self.pixel_values),
                input_ids=torch.from_numpy(self.input_ids),
                attention_mask=torch.from_numpy(self.attention_mask),
            )


# quick_gelu pools at the first end-of-text token (the tokenizer's); gelu with eos_token_id 2
# is a legacy config, pooled at the largest token id.
@pytest.fixture(scope="module", params=[("quick_gelu", None), ("gelu", 2)], ids=["quick_gelu", "gelu_legacy_eos"])
def reference(request, tmp_path_factory) -> Reference:
    hidden_act, eos_token_id = request.param
    tokenizer = train_tokenizer()
    torch.manual_seed(0)
    config = hf_config(tokenizer, hidden_act, tokenizer.eos_token_id if eos_token_id is None else eos_token_id)
    model = transformers.CLIPModel(config).eval()
    directory = tmp_path_factory.mktemp(f"clip_{hidden_act}")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    tokens = tokenizer(CAPTIONS[:4], padding=True, return_tensors="np")
    pixel_values = np.random.default_rng(0).normal(size=(3, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    return Reference(directory, model, tokenizer, pixel_values, tokens["input_ids"], tokens["attention_mask"])


@pytest.fixture(scope="module")
def ours(reference) -> clip.CLIPModel:
    return clip.load(reference.directory)


@pytest.mark.parity
def test_clip_image_embeddings_match_transformers(reference, ours):
    pixels = torch.from_numpy(reference.pixel_values)
    with torch.no_grad():
        features = reference.model.get_image_features(pixel_values=pixels)
    np.testing.assert_allclose(ours.encode_image(reference.pixel_values), features.pooler_output.numpy(), atol=1e-4)
    np.testing.assert_allclose(
        ours.vision_hidden_states(reference.pixel_values), features.last_hidden_state.numpy(), atol=1e-4
    )


@pytest.mark.parity
def test_clip_text_embeddings_of_a_padded_batch_match_transformers(reference, ours):
    assert not reference.attention_mask.all(), "the batch should hold padding"
    with torch.no_grad():
        features = reference.model.get_text_features(
            input_ids=torch.from_numpy(reference.input_ids), attention_mask=torch.from_numpy(reference.attention_mask)
        )
    embeddings = ours.encode_text(reference.input_ids, reference.attention_mask)
    np.testing.assert_allclose(embeddings, features.pooler_output.numpy(), atol=1e-4)


def test_clip_pools_text_where_transformers_does(reference, ours):
    """First end-of-text token (padding is that token too), or the largest id for legacy configs."""
    positions = np.asarray(ours.text_model.pooling_positions(reference.input_ids))
    if ours.config.text.eos_token_id == 2:
        expected = reference.input_ids.argmax(-1)
    else:
        expected = reference.attention_mask.sum(-1) - 1  # the real end-of-text, not the padding after it
    np.testing.assert_array_equal(positions, expected)


@pytest.mark.parity
def test_clip_logits_match_transformers(reference, ours):
    expected = reference.outputs()
    logits_per_image, logits_per_text = ours(reference.pixel_values, reference.input_ids, reference.attention_mask)
    assert logits_per_image.shape == (3, 4) and logits_per_text.shape == (4, 3)
    np.testing.assert_allclose(logits_per_image, expected.logits_per_image.numpy(), atol=1e-4)
    np.testing.assert_allclose(logits_per_text, expected.logits_per_text.numpy(), atol=1e-4)


@pytest.mark.parity
def test_clip_sharded_checkpoint_loads(reference, tmp_path):
    reference.model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / checkpoint.WEIGHTS_INDEX_NAME).is_file() and len(list(tmp_path.glob("*.safetensors"))) > 1
    logits_per_image, _ = clip.load(tmp_path)(reference.pixel_values, reference.input_ids, reference.attention_mask)
    np.testing.assert_allclose(logits_per_image, reference.outputs().logits_per_image.numpy(), atol=1e-4)


def test_clip_compiles_with_nnx_jit_and_with_split_merge(reference, ours):
    eager = np.asarray(ours.encode_image(reference.pixel_values))
    encode = nnx.cached_partial(nnx.jit(clip.CLIPModel.encode_image), ours)
    np.testing.assert_allclose(encode(reference.pixel_values), eager, atol=1e-5)

    graphdef, state = nnx.split(ours)

    @jax.jit
    def encode_text(state, input_ids, attention_mask):
        return nnx.merge(graphdef, state).encode_text(input_ids, attention_mask)

    np.testing.assert_allclose(
        encode_text(state, reference.input_ids, reference.attention_mask),
        ours.encode_text(reference.input_ids, reference.attention_mask),
        atol=1e-5,
    )


def test_clip_tokenizer_loads_from_the_checkpoint_directory(reference):
    loaded = checkpoint.load_tokenizer(reference.directory)
    assert isinstance(loaded, transformers.CLIPTokenizer)
    tokens = loaded(CAPTIONS[:4], padding=True, return_tensors="np")
    np.testing.assert_array_equal(tokens["input_ids"], reference.input_ids)
    np.testing.assert_array_equal(tokens["attention_mask"], reference.attention_mask)
    assert loaded.eos_token_id == reference.tokenizer.eos_token_id


def test_clip_fused_attention_projection_is_split_by_heads(ours):
    shardings = sharding.parameter_shardings(ours, sharding.make_mesh())
    qkv = shardings["text_model"]["encoder"]["layers"][0]["self_attn"]["qkv"]["kernel"]
    assert qkv.spec == jax.sharding.PartitionSpec(None, None, "model")


def test_clip_config_resolves_legacy_config_dicts_as_transformers_does():
    """Old checkpoints carry text_config_dict / vision_config_dict, which override the rest."""
    raw = {
        "model_type": "clip",
        "projection_dim": 64,
        "text_config": {"hidden_size": 48, "num_attention_heads": 4, "eos_token_id": 2, "vocab_size": 100},
        "text_config_dict": {"hidden_size": 64, "num_attention_heads": 8, "hidden_act": "gelu"},
        "vision_config": {"hidden_size": 48, "patch_size": 16},
        "vision_config_dict": None,
    }
    ours = clip.CLIPConfig.from_hf(raw)
    theirs = transformers.CLIPConfig.from_dict(raw)
    for tower, their_tower in [(ours.text, theirs.text_config), (ours.vision, theirs.vision_config)]:
        for name, value in vars(tower).items():
            assert value == getattr(their_tower, name), name
    assert ours.projection_dim == theirs.projection_dim == 64


@pytest.mark.parametrize("shape, size", [((2, 61, 83, 3), 224), ((2, 300, 200, 3), 30)], ids=["up", "down"])
def test_clip_preprocess_matches_clip_image_processor_to_a_grey_level(shape, size):
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)  # noise: the hardest case
    processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )  # CLIPImageProcessor itself needs torchvision
    expected = processor(list(images), return_tensors="np")["pixel_values"]
    pixel_values = np.asarray(clip.preprocess(images, size))
    assert pixel_values.shape == expected.shape == (2, 3, size, size)
    grey_levels = np.abs(pixel_values - expected) * 255 * np.array(clip.IMAGE_STD)[:, None, None]
    assert grey_levels.max() < 1.001 and grey_levels.mean() < 0.01  # PIL's fixed-point rounding
