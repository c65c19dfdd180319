"""Sharded models give the single-device outputs, on a ('data', 'model') mesh of 8 fake CPU devices.

XLA's device count is fixed when jax starts, so each check runs this file as a script in a
fresh process with `--xla_force_host_platform_device_count=8`; the script builds a small random
transformers model, loads it into ours, runs it on one device, then with its parameters placed
by `sharding.RULES` on a 4×2 mesh and the batch split over 'data', and compares the outputs
(for BLIP-2-OPT the logits and the beam-search captions). Another loads LLaMA straight onto a
1×8 mesh and watches every device's memory while it does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from panda_jax.models import sharding

MESH = {"data": 4, "model": 2}


def test_partition_spec_follows_the_rules():
    assert tuple(sharding.partition_spec(("embed", "mlp"))) == (None, "model")
    assert tuple(sharding.partition_spec(("vocab", "embed"))) == ("model", None)
    assert tuple(sharding.partition_spec(None)) == ()
    with pytest.raises(ValueError, match="no rule"):
        sharding.partition_spec(("nonsense",))
    with pytest.raises(ValueError, match="two dimensions"):
        sharding.partition_spec(("mlp", "heads"))


def test_make_mesh_checks_the_device_count():
    import jax

    devices = jax.devices()[:1]
    assert sharding.make_mesh(devices=devices).shape == {"data": 1, "model": 1}
    with pytest.raises(ValueError, match="needs 2 devices"):
        sharding.make_mesh(data=2, model=1, devices=devices)


def _run_check(*names: str) -> str:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, __file__, *names], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.parity
@pytest.mark.slow
def test_sharded_outputs_equal_single_device_outputs():
    output = _run_check("clip", "blip2_opt")  # one process: torch and transformers are imported once
    for name in ("clip", "blip2_opt"):
        assert f"{name}: sharded == single device" in output, output


@pytest.mark.slow
def test_loading_onto_a_mesh_never_puts_more_than_its_share_on_a_device():
    output = _run_check("load_onto_mesh")
    assert "load_onto_mesh: within shares" in output, output


# --- the checks, run in a process with 8 CPU devices ---------------------------------------


def _compare(name: str, single, sharded, placed) -> None:
    import jax

    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
    model_parallel = [p for p in placed if "model" in tuple(p.spec)]
    assert model_parallel, "no parameter was split over the 'model' axis"
    print(f"{name}: sharded == single device ({len(model_parallel)} parameters split over 'model')")


def _placements(model) -> list:
    import jax
    from flax import nnx

    return [leaf.sharding for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]


def check_clip(directory: Path) -> None:
    import torch
    import transformers
    from flax import nnx

    from panda_jax.models import clip

    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    config = transformers.CLIPConfig(
        text_config=dict(tower, vocab_size=99, max_position_embeddings=16),
        vision_config=dict(tower, image_size=28, patch_size=7),
        projection_dim=16,
    )
    transformers.CLIPModel(config).save_pretrained(directory)
    model = clip.load(directory)
    rng = np.random.default_rng(0)
    pixel_values = rng.normal(size=(8, 3, 28, 28)).astype(np.float32)
    input_ids = rng.integers(0, 99, size=(8, 16)).astype(np.int32)

    forward = nnx.jit(lambda m, p, i: m(p, i))
    single = forward(model, pixel_values, input_ids)
    mesh = sharding.make_mesh(**MESH)
    sharding.shard_model(model, mesh)
    sharded = forward(model, *sharding.shard_batch((pixel_values, input_ids), mesh))
    _compare("clip", single, sharded, _placements(model))


def check_blip2_opt(directory: Path) -> None:
    import torch
    import transformers
    from flax import nnx

    from panda_jax.models import blip2
    from panda_jax.models.generation import GenerationConfig

    torch.manual_seed(0)
    config = transformers.Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=28, patch_size=7),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            encoder_hidden_size=32, vocab_size=99),
        text_config=dict(model_type="opt", hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                         vocab_size=99, word_embed_proj_dim=32, max_position_embeddings=64),
        num_query_tokens=4, image_token_index=98,
    )  # fmt: skip
    transformers.Blip2ForConditionalGeneration(config).save_pretrained(directory)
    model = blip2.load(directory)
    rng = np.random.default_rng(0)
    pixel_values = rng.normal(size=(8, 3, 28, 28)).astype(np.float32)
    input_ids = rng.integers(3, 98, size=(8, 6)).astype(np.int32)

    prompt = np.concatenate([np.full((8, 4), 98, np.int32), input_ids], axis=1)  # 4 image placeholders first
    mask = np.ones_like(prompt)

    def outputs(*batch):
        logits = nnx.jit(lambda m, p, i, a: m(p, i, a))(model, *batch)
        return logits, model.generate(*batch, generation_config=GenerationConfig(max_new_tokens=3, num_beams=2))

    single = outputs(pixel_values, prompt, mask)
    mesh = sharding.make_mesh(**MESH)
    sharding.shard_model(model, mesh)
    sharded = outputs(*sharding.shard_batch((pixel_values, prompt, mask), mesh))
    _compare("blip2_opt", single, sharded, _placements(model))


def _bytes_per_device(arrays) -> np.ndarray:
    """How many bytes of `arrays` each of the 8 devices holds; a buffer seen twice (an array and its
    shard's own array) counts once."""
    buffers = {}
    for array in arrays:
        for shard in array.addressable_shards:
            buffers[shard.device.id, shard.data.unsafe_buffer_pointer()] = shard.data.nbytes
    held = np.zeros(8, np.int64)
    for (device, _), nbytes in buffers.items():
        held[device] += nbytes
    return held


def check_load_onto_mesh(directory: Path) -> None:
    """`load(..., mesh=)` places each tensor as it reads it: after every placement, no device holds
    more than its share of the whole model; the model is the one a plain load gives."""
    import jax
    import torch
    import transformers
    from flax import nnx

    from panda_jax import models
    from test_llama import tiny_config  # every sharded dimension divides by 8

    torch.manual_seed(0)
    transformers.LlamaForCausalLM(tiny_config()).save_pretrained(directory)
    mesh = sharding.make_mesh(data=1, model=8)
    place, before = jax.device_put, _bytes_per_device(jax.live_arrays())
    peak = before

    def watched_place(*args, **kwargs):
        nonlocal peak
        placed = place(*args, **kwargs)
        peak = np.maximum(peak, _bytes_per_device(jax.live_arrays()))
        return placed

    jax.device_put = watched_place
    try:
        model = models.load(directory, mesh=mesh)
    finally:
        jax.device_put = place
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    share = _bytes_per_device(params)
    assert (peak - before <= share).all(), (peak - before, share)
    assert (share < sum(p.nbytes for p in params)).all(), "nothing was split over the devices"

    plain = models.load(directory)
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(plain))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    input_ids = np.random.default_rng(0).integers(0, 128, (2, 6))
    forward = nnx.jit(lambda m, ids: m(ids)[0])
    np.testing.assert_allclose(np.asarray(forward(model, input_ids)), np.asarray(forward(plain, input_ids)), atol=1e-5)
    print(f"load_onto_mesh: within shares (at most {share.max()} of {sum(p.nbytes for p in params)} bytes per device)")


if __name__ == "__main__":
    import jax

    assert len(jax.devices()) == 8, jax.devices()
    checks = {"clip": check_clip, "blip2_opt": check_blip2_opt, "load_onto_mesh": check_load_onto_mesh}
    for name in sys.argv[1:]:
        with tempfile.TemporaryDirectory() as tmp:
            checks[name](Path(tmp))
