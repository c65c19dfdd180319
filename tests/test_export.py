"""A trained captioner written back as a Hugging Face folder (`checkpoint.save_pretrained`) is, for transformers,
the model we ran: BLIP-2 (OPT) with every parameter moved off the checkpoint's, as training moves them."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from panda_jax.models import blip2, captioner, checkpoint
from panda_jax.teachers import tiny

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import test_blip2  # noqa: E402  (tests/ is on sys.path under pytest)
from test_model_contract import call, run  # noqa: E402

PROMPTS = ["a red circle moves left", "two dogs"]


def train(model: nnx.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Adds normal(0, `scale`) noise drawn from `seed` to every parameter of `model`: a stand-in for training."""
    rng = np.random.default_rng(seed)
    params = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda p: p + rng.normal(0.0, scale, p.shape).astype(np.float32), params))


@pytest.mark.parity
def test_a_trained_blip2_saved_pretrained_gives_transformers_our_logits(tmp_path):
    source = tiny.write_tiny_checkpoint("blip2_opt", tmp_path / "teacher")
    model = blip2.load(source)
    train(model)
    config = json.loads((source / checkpoint.CONFIG_NAME).read_text())
    exported = checkpoint.save_pretrained(tmp_path / "trained", config, model, blip2.blip2_slots(model))
    for path in source.iterdir():  # the tokenizer and the image processor settings
        if not (exported / path.name).exists():
            shutil.copy(path, exported)
    assert isinstance(captioner.load_captioner(exported), captioner.Blip2Captioner)

    reference, info = transformers.Blip2ForConditionalGeneration.from_pretrained(
        exported, dtype=torch.float32, output_loading_info=True
    )
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    tokenizer = checkpoint.load_tokenizer(exported)
    tokenizer.padding_side = "left"
    text = tokenizer(PROMPTS, padding=True, return_tensors="np")
    placeholders = np.full((len(PROMPTS), config["num_query_tokens"]), config["image_token_index"])
    input_ids = np.concatenate([placeholders, text["input_ids"]], 1)
    mask = np.concatenate([np.ones_like(placeholders), text["attention_mask"]], 1)
    pixel_values = np.random.default_rng(0).normal(size=(2, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)).astype(np.float32)
    prompt = test_blip2.Reference(exported, reference, pixel_values, input_ids, mask)
    with torch.no_grad():
        expected = reference.eval()(**test_blip2.torch_inputs(prompt)).logits.numpy()
    logits = np.asarray(run(call, *nnx.split(model), *map(jnp.asarray, (pixel_values, input_ids, mask))))
    valid = mask.astype(bool)
    np.testing.assert_allclose(logits[valid], expected[valid], atol=1e-4)
