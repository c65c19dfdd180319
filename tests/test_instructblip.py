"""InstructBLIP and InstructBLIP-Video (LLaMA language model) against transformers on tiny random configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from panda_jax.models import CheckpointError, instructblip
from panda_jax.models.generation import GenerationConfig
from hf_reference import randomized
from test_llama import train_llama_tokenizer, with_config  # tests/ is on sys.path under pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VIDEO_PLACEHOLDER = 127  # the '<video>' token id, the last of the LLaMA vocabulary
QUERIES, FRAMES = 4, 4
PROMPTS = ["a man cooks pasta", "two dogs play in the snow at night"]
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14)
TEXT = dict(model_type="llama", vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
VARIANTS = {  # name → (config class, model class, placeholder key, cross-attention frequency)
    "instructblip": ("InstructBlipConfig", "InstructBlipForConditionalGeneration", "image_token_index", 1),
    "instructblip_video": ("InstructBlipVideoConfig", "InstructBlipVideoForConditionalGeneration", "video_token_index", 2),
}


def instructblip_processor() -> transformers.InstructBlipProcessor:
    """InstructBLIP's processor, built offline: a LLaMA tokenizer (the processor adds '<image>' to it), a
    BERT tokenizer for the Q-Former's instruction, and BLIP's image processor at 28 px."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for p in PROMPTS for w in p.split()})]
    return transformers.InstructBlipProcessor(
        image_processor=transformers.BlipImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=train_llama_tokenizer(),
        qformer_tokenizer=transformers.BertTokenizerFast(vocab={word: i for i, word in enumerate(words)}),
        num_query_tokens=QUERIES,
    )


def instructblip_config(name: str, placeholder: int, **text):
    """A tiny InstructBLIP (or -Video) config whose prompts hold `placeholder` tokens; `text` overrides LLaMA's."""
    config_class, _, placeholder_key, cross_attention_frequency = VARIANTS[name]
    qformer = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   cross_attention_frequency=cross_attention_frequency, max_position_embeddings=32)  # fmt: skip
    return getattr(transformers, config_class)(
        vision_config=VISION, qformer_config=qformer, text_config=TEXT | text, num_query_tokens=QUERIES,
        **{placeholder_key: placeholder},
    )  # fmt: skip


def build_reference(name: str, directory: Path, placeholder: int, **text) -> torch.nn.Module:
    """A random `name` model saved to `directory`; `text` overrides the language model's config."""
    torch.manual_seed(0)
    reference = getattr(transformers, VARIANTS[name][1])(instructblip_config(name, placeholder, **text))
    # Everything random (transformers starts the queries at zero, the vision encoder near it), except
    # LLaMA, whose own random start keeps captions varied; at scale 0.2 it repeats one token.
    language_model = {name: value.clone() for name, value in reference.language_model.state_dict().items()}
    randomized(reference).language_model.load_state_dict(language_model)
    reference.save_pretrained(directory)
    return reference


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    """(name, checkpoint directory, transformers model, our model, inputs as numpy) for each variant.

    InstructBLIP's inputs come from its processor (saved with the checkpoint). The video processor
    needs torchvision, so InstructBLIP-Video's are laid out by hand as it lays them out.
    """
    name = request.param
    directory = tmp_path_factory.mktemp(name)
    rng = np.random.default_rng(0)
    if name == "instructblip":
        processor = instructblip_processor()
        reference = build_reference(name, directory, processor.tokenizer.convert_tokens_to_ids("<image>"))
        processor.save_pretrained(directory)
        images = list(rng.integers(0, 256, (2, 40, 40, 3), dtype=np.uint8))
        inputs = dict(processor(images=images, text=PROMPTS, padding=True, return_tensors="np"))
    else:
        reference = build_reference(name, directory, VIDEO_PLACEHOLDER)
        # Placeholders, then the LLaMA-tokenized prompt left padded; the Q-Former's BERT pads on the right.
        placeholders = [VIDEO_PLACEHOLDER] * QUERIES * FRAMES
        input_ids = np.array([placeholders + [1, 20, 21, 22, 23], placeholders + [0, 0, 1, 24, 25]])
        qformer_input_ids = np.array([[2, 5, 6, 7, 3], [2, 8, 3, 0, 0]])
        inputs = dict(
            pixel_values=rng.standard_normal((2, FRAMES, 3, 28, 28)).astype(np.float32),
            qformer_input_ids=qformer_input_ids,
            qformer_attention_mask=(qformer_input_ids != 0).astype(np.int64),
            input_ids=input_ids,
            attention_mask=(input_ids != 0).astype(np.int64),
        )
    return name, directory, reference, instructblip.load(directory), inputs


def as_torch(inputs: dict) -> dict:
    return {key: torch.from_numpy(value) for key, value in inputs.items()}


forward = nnx.jit(lambda model, inputs: model(**inputs))


@pytest.mark.parity
def test_instructblip_logits_match_transformers(variant):
    name, _, reference, model, inputs = variant
    assert model.config.video == (name == "instructblip_video")
    with torch.no_grad():
        expected = reference(**as_torch(inputs)).logits.numpy()
    logits = np.asarray(forward(model, inputs))
    real = inputs["attention_mask"].astype(bool)  # padded positions attend to nothing: undefined in both
    np.testing.assert_allclose(logits[real], expected[real], atol=1e-4)


@pytest.mark.parity
def test_instructblip_prompt_embeds_match_transformers(variant):
    """The language model's input: prompt embeddings with the projected query outputs (every frame's, in
    order, for video) on the placeholders, exactly what transformers hands its language model."""
    name, _, reference, model, inputs = variant
    visual_inputs = as_torch({key: inputs[key] for key in ("pixel_values", "qformer_input_ids", "qformer_attention_mask")})
    input_ids = torch.from_numpy(inputs["input_ids"])
    with torch.no_grad():
        features = reference.get_video_features if name == "instructblip_video" else reference.get_image_features
        visual = features(**visual_inputs).pooler_output
        placeholders = (input_ids == model.config.placeholder_token_id)[..., None]
        expected = reference.get_input_embeddings()(input_ids).masked_scatter(placeholders, visual).numpy()
    assert visual.shape == (2, model.num_placeholders(inputs["pixel_values"].shape), 32)
    embeds = instructblip.jit_prompt_embeds(
        model, *(inputs[key] for key in ("pixel_values", "qformer_input_ids", "qformer_attention_mask", "input_ids"))
    )
    np.testing.assert_allclose(np.asarray(embeds), expected, atol=1e-4)


@pytest.fixture(scope="module")
def eos_token_id(variant) -> int:
    """An EOS id that ends the first prompt's greedy caption early but not the second's."""
    _, _, reference, _, inputs = variant
    with torch.no_grad():
        tokens = reference.generate(**as_torch(inputs), do_sample=False, max_new_tokens=8).numpy()
    first, second = tokens[:, inputs["input_ids"].shape[1] :].tolist()
    return next(t for t in first[1:] if t not in second)


@pytest.mark.parity
@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
def test_instructblip_generate_matches_transformers(variant, eos_token_id, num_beams):
    """A batch of two prompts of different lengths, the shorter padded between its placeholders and its
    text (as the processor pads); EOS ends the first caption early."""
    _, _, reference, model, inputs = variant
    settings = dict(max_new_tokens=8, num_beams=num_beams, eos_token_id=eos_token_id)
    with torch.no_grad():
        expected = reference.generate(**as_torch(inputs), do_sample=False, **settings).numpy()
    expected = expected[:, inputs["input_ids"].shape[1] :]
    if num_beams == 1:
        assert (expected[0] == eos_token_id).any() and not (expected[1] == eos_token_id).any()
    np.testing.assert_array_equal(model.generate(**inputs, generation_config=GenerationConfig(**settings)), expected)


@pytest.mark.parity
@pytest.mark.parametrize("variant", ["instructblip_video"], indirect=True)
def test_instructblip_generate_without_prompt_matches_transformers(variant):
    """No input_ids: the prompt is the placeholders (16: 4 queries × 4 frames) and BOS, as transformers builds it."""
    _, _, reference, model, inputs = variant
    visual_inputs = {key: inputs[key] for key in ("pixel_values", "qformer_input_ids", "qformer_attention_mask")}
    with torch.no_grad():
        expected = reference.generate(**as_torch(visual_inputs), do_sample=False, max_new_tokens=6).numpy()
    tokens = model.generate(**visual_inputs, generation_config=GenerationConfig(max_new_tokens=6, num_beams=1))
    prompt_length = model.num_placeholders(inputs["pixel_values"].shape) + 1
    np.testing.assert_array_equal(tokens, expected[:, prompt_length:])


@pytest.mark.parametrize("variant", ["instructblip"], indirect=True)
def test_instructblip_tokenizers_load_from_checkpoint_directory(variant):
    """The tokenizers saved by the processor give the processor's ids; '<image>' is the config's placeholder."""
    _, directory, _, model, inputs = variant
    tokenizer, qformer_tokenizer = instructblip.load_tokenizers(directory)
    assert tokenizer.convert_tokens_to_ids("<image>") == model.config.placeholder_token_id
    np.testing.assert_array_equal(tokenizer(PROMPTS, padding=True, return_tensors="np")["input_ids"],
                                  inputs["input_ids"][:, QUERIES:])  # fmt: skip
    np.testing.assert_array_equal(qformer_tokenizer(PROMPTS, padding=True, return_tensors="np")["input_ids"],
                                  inputs["qformer_input_ids"])  # fmt: skip


def test_instructblip_refuses_prompt_without_one_placeholder_per_visual_token(variant):
    _, _, _, model, inputs = variant
    short = dict(inputs, input_ids=inputs["input_ids"][:, 1:], attention_mask=inputs["attention_mask"][:, 1:])
    with pytest.raises(ValueError, match="placeholder tokens"):
        model(**short)
    with pytest.raises(ValueError, match="placeholder tokens"):
        model.generate(**short)


# --- loading errors -----------------------------------------------------------------------


def test_instructblip_refuses_non_llama_language_model_before_reading_weights(variant, tmp_path):
    with pytest.raises(CheckpointError, match="language model is 't5'"):
        instructblip.load(with_config(variant[1], tmp_path, text_config={"model_type": "t5"}))


def test_instructblip_refuses_config_without_placeholder_token(variant, tmp_path):
    key = VARIANTS[variant[0]][2]
    with pytest.raises(CheckpointError, match=f"no {key}"):
        instructblip.load(with_config(variant[1], tmp_path, **{key: None}))
