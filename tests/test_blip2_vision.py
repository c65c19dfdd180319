"""BLIP-2's vision encoder against transformers' Blip2VisionModel (and InstructBLIP's), small random configs."""

from __future__ import annotations


import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hf_reference import broken_copy, randomized
from panda_jax.models import CheckpointError, blip2_vision
from panda_jax.models.sharding import RULES

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


def save_reference(name: str, directory, **save_options):
    config_class, model_class, overrides = REFERENCES[name]
    config = getattr(transformers, config_class)(**CONFIG | overrides)
    model = randomized(getattr(transformers, model_class)(config))
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


@pytest.mark.parity
def test_blip2_vision_bf16_compute_is_close_to_float32(blip2_dir, pixels):
    _, directory = blip2_dir
    full = forward(blip2_vision.load(directory), pixels)
    model = blip2_vision.load(directory, dtype=jnp.bfloat16)
    half = forward(model, pixels)
    assert model.layers[0].mlp.fc1.kernel[...].dtype == jnp.float32  # parameters stay float32
    assert half.dtype == jnp.float32  # the final LayerNorm runs in float32
    np.testing.assert_allclose(half, full, atol=2e-2)
    assert np.abs(np.asarray(half) - np.asarray(full)).mean() < 3e-3


def test_blip2_vision_loads_a_sharded_checkpoint(blip2_dir, pixels, tmp_path):
    reference, directory = blip2_dir
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file() and not (tmp_path / "model.safetensors").exists()
    np.testing.assert_array_equal(
        forward(blip2_vision.load(tmp_path), pixels), forward(blip2_vision.load(directory), pixels)
    )


def test_blip2_vision_parameters_name_their_axes(blip2_dir):
    model = blip2_vision.load(blip2_dir[1])
    known = {name for name, _ in RULES}
    for path, parameter in nnx.iter_graph(model):
        if isinstance(parameter, nnx.Param):
            axes = parameter.get_metadata().get("logical_axes")
            assert axes is not None and len(axes) == parameter.ndim, path
            assert set(axes) - {None} <= known, path


def test_blip2_vision_refuses_other_image_sizes(blip2_dir):
    with pytest.raises(ValueError, match=r"expected pixel values \[batch, 3, 30, 30\]"):
        blip2_vision.load(blip2_dir[1])(np.zeros((1, 3, 20, 20), np.float32))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda t: t.pop("encoder.layers.1.mlp.fc2.bias"), "missing tensors: encoder.layers.1.mlp.fc2.bias"),
        (lambda t: t.update(extra=np.zeros(3, np.float32)), "unexpected tensors: extra"),
        (
            lambda t: t.update({"embeddings.position_embedding": np.zeros((1, 5, 32), np.float32)}),
            r"tensor embeddings.position_embedding has shape \(1, 5, 32\), expected \(1, 10, 32\)",
        ),
    ],
    ids=["missing", "unexpected", "misshaped"],
)
def test_blip2_vision_names_tensors_that_do_not_fit(blip2_dir, tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message):
        blip2_vision.load(broken_copy(blip2_dir[1], tmp_path, change))


def test_blip2_vision_refuses_another_architecture_before_reading_weights(tmp_path):
    transformers.Blip2QFormerConfig(hidden_size=32, num_attention_heads=4).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="'blip_2_qformer' checkpoint.*this loader reads 'blip_2_vision_model'"):
        blip2_vision.load(tmp_path)
