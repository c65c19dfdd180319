"""The Q-Former against transformers' Blip2QFormerModel and InstructBlip(Video)QFormerModel, small random configs.

Three uses: queries only (BLIP-2), queries with an instruction (InstructBLIP) and text only.
"""

from __future__ import annotations


import numpy as np
import pytest
from flax import nnx

from hf_reference import randomized
from panda_jax.models import qformer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Three layers with cross-attention every second one: layers 0 and 2 cross-attend, 1 does not.
CONFIG = dict(
    vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
    max_position_embeddings=24, cross_attention_frequency=2, encoder_hidden_size=40,
)  # fmt: skip
REFERENCES = {  # name → (config class, model class)
    "blip2": ("Blip2QFormerConfig", "Blip2QFormerModel"),
    "instructblip": ("InstructBlipQFormerConfig", "InstructBlipQFormerModel"),
    "instructblip_video": ("InstructBlipVideoQFormerConfig", "InstructBlipVideoQFormerModel"),
}
QUERIES, TEXT = 5, 6


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """name → (transformers model, its checkpoint directory)."""
    saved = {}
    for name, (config_class, model_class) in REFERENCES.items():
        model = randomized(getattr(transformers, model_class)(getattr(transformers, config_class)(**CONFIG)))
        directory = tmp_path_factory.mktemp(name)
        model.save_pretrained(directory)
        saved[name] = model, directory
    return saved


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    mask = np.ones((2, TEXT), np.int64)
    mask[1, 3:] = 0  # the second instruction is padded
    return {
        "queries": rng.standard_normal((2, QUERIES, 32)).astype(np.float32),
        "image": rng.standard_normal((2, 7, 40)).astype(np.float32),
        "input_ids": np.where(mask == 1, rng.integers(1, 120, (2, TEXT)), 0),
        "attention_mask": mask,
    }


run = nnx.jit(lambda model, *args: model(*args))


def tensors(inputs: dict) -> dict:
    return {name: torch.from_numpy(value) for name, value in inputs.items()}


@pytest.mark.parity
@pytest.mark.parametrize("name", REFERENCES)
def test_qformer_queries_only_matches_transformers(name, references, inputs):
    """(a) BLIP-2 captioning: the learned queries cross-attend to the image, no text."""
    reference, directory = references[name]
    t = tensors(inputs)
    no_text = {} if name == "blip2" else {"input_ids": None}  # InstructBLIP's takes it, as None
    with torch.no_grad():
        expected = reference(query_embeds=t["queries"], encoder_hidden_states=t["image"], **no_text).last_hidden_state
    actual = run(qformer.load(directory), inputs["queries"], inputs["image"])
    assert actual.shape == (2, QUERIES, 32)
    np.testing.assert_allclose(actual, expected.numpy(), atol=1e-4)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["instructblip", "instructblip_video"])
def test_qformer_instructblip_instruction_matches_transformers(name, references, inputs):
    """(b) InstructBLIP: queries and a padded instruction attend to each other, queries to the image."""
    reference, directory = references[name]
    t = tensors(inputs)
    full_mask = torch.cat([torch.ones(2, QUERIES, dtype=torch.long), t["attention_mask"]], dim=1)
    with torch.no_grad():
        expected = reference(
            input_ids=t["input_ids"], attention_mask=full_mask, query_embeds=t["queries"],
            encoder_hidden_states=t["image"],
        ).last_hidden_state  # fmt: skip
    model = qformer.load(directory)
    actual = run(model, inputs["queries"], inputs["image"], inputs["input_ids"], inputs["attention_mask"])
    assert actual.shape == (2, QUERIES + TEXT, 32)
    np.testing.assert_allclose(actual, expected.numpy(), atol=1e-4)


@pytest.mark.parity
def test_qformer_text_only_matches_transformers(references, inputs):
    """(c) a text encoder: no queries, no image, only the text feed-forward."""
    reference, directory = references["instructblip"]
    t = tensors(inputs)
    with torch.no_grad():
        expected = reference(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
    actual = run(qformer.load(directory), None, None, inputs["input_ids"], inputs["attention_mask"])
    np.testing.assert_allclose(actual, expected.numpy(), atol=1e-4)


def test_qformer_config_follows_the_layout():
    blip2 = qformer.QFormerConfig.from_hf(transformers.Blip2QFormerConfig(**CONFIG).to_dict())
    assert (blip2.layout, blip2.text_input, blip2.text_embeddings) == ("blip2", False, False)
    with_text = qformer.QFormerConfig.from_hf(
        transformers.Blip2QFormerConfig(**CONFIG, use_qformer_text_input=True).to_dict()
    )
    assert (with_text.text_input, with_text.text_embeddings) == (True, False)  # embeddings live outside
    instructblip = qformer.QFormerConfig.from_hf(transformers.InstructBlipQFormerConfig(**CONFIG).to_dict())
    assert (instructblip.layout, instructblip.text_input, instructblip.text_embeddings) == ("instructblip", True, True)


def test_qformer_refuses_inputs_it_cannot_use(references, inputs):
    blip2 = qformer.load(references["blip2"][1])
    with pytest.raises(ValueError, match="no text embeddings"):
        blip2(inputs["queries"], inputs["image"], inputs["input_ids"])
    with pytest.raises(ValueError, match="give image_embeds"):
        blip2(inputs["queries"], None)
    with pytest.raises(ValueError, match="needs query_embeds, input_ids or both"):
        blip2(None, inputs["image"])
