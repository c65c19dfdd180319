"""BLIP-2's vision encoder against transformers' Blip2VisionModel (and InstructBLIP's), small random configs."""

from __future__ import annotations


import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_reference import randomized
from panda_jax.models import blip2_vision

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

CONFIG = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=30, patch_size=10
)
REFERENCES = {  # name → (config class, model class, config overrides)
    "blip2": ("Blip2VisionConfig", "Blip2VisionModel", {}),
    "blip2_no_qkv_bias": ("Blip2VisionConfig", "Blip2VisionModel", {"qkv_bias": False}),
    "instructblip": ("InstructBlipVisionConfig", "InstructBlipVisionModel", {}),
    "instructblip_video": ("InstructBlipVideoVisionConfig", "InstructBlipVideoVisionModel", {}),
}

forward = nnx.jit(lambda model, pixels: model(pixels))


def vision_config(name: str):
    """The tiny config of reference `name`."""
    config_class, _, overrides = REFERENCES[name]
    return getattr(transformers, config_class)(**CONFIG | overrides)


def save_reference(name: str, directory, **save_options):
    model = randomized(getattr(transformers, REFERENCES[name][1])(vision_config(name)))
    model.save_pretrained(directory, **save_options)
    return model


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 3, 30, 30)).astype(np.float32)


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("blip2_vision")
    return save_reference("blip2", directory), directory


@pytest.mark.parity
@pytest.mark.parametrize("name", REFERENCES)
def test_blip2_vision_matches_transformers(name, pixels, tmp_path):
    reference = save_reference(name, tmp_path)
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    actual = forward(blip2_vision.load(tmp_path), pixels)
    assert actual.shape == (2, 10, 32) and actual.dtype == jnp.float32
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_blip2_vision_loads_a_sharded_checkpoint(blip2_dir, pixels, tmp_path):
    reference, directory = blip2_dir
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    np.testing.assert_array_equal(
        forward(blip2_vision.load(tmp_path), pixels), forward(blip2_vision.load(directory), pixels)
    )


def test_blip2_vision_refuses_other_image_sizes(blip2_dir):
    with pytest.raises(ValueError, match=r"expected pixel values \[batch, 3, 30, 30\]"):
        blip2_vision.load(blip2_dir[1])(np.zeros((1, 3, 20, 20), np.float32))
