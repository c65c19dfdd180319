"""The captioner interface against calling the models directly on what transformers' processors make."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hf_reference import randomized, save_reference
from panda_jax.models import CheckpointError, captioner, inference
from panda_jax.models.generation import GenerationConfig
from test_blip2 import NUM_QUERIES, QFORMER, TEXT, VISION  # tests/ is on sys.path under pytest
from test_instructblip import QUERIES, build_reference
from test_llama import train_llama_tokenizer, with_config
from test_opt import tiny_config as opt_config
from test_opt import train_opt_tokenizer
from test_t5 import tiny_config as t5_config
from test_t5 import train_t5_tokenizer

transformers = pytest.importorskip("transformers")
from transformers.video_processing_utils import BaseVideoProcessor  # noqa: E402

# Of different lengths, the empty one included (a caption without an instruction); every tokenizer here
# makes at most 8 tokens of each, one prompt bucket.
PROMPTS = ["", "a man cooks", "two dogs"]
FRAMES = 4  # InstructBlipVideoProcessor writes placeholders for 4 frames
SETTINGS = GenerationConfig(max_new_tokens=8)  # 3 beams


class SlowVideoProcessor(BaseVideoProcessor):
    """InstructBLIP-Video's video processor settings, applied by the slow BLIP image processor frame by
    frame: transformers' own video processor needs torchvision, which the dev environment lacks."""

    resample = 3  # bicubic
    image_mean, image_std = captioner.IMAGE_MEAN, captioner.IMAGE_STD
    size = {"height": 28, "width": 28}
    do_resize = do_rescale = do_normalize = do_convert_rgb = True

    def __call__(self, videos, return_tensors=None, **kwargs):
        images = transformers.BlipImageProcessorPil(
            size=dict(height=self.size.height, width=self.size.width), resample=self.resample,
            image_mean=self.image_mean, image_std=self.image_std,
        )  # fmt: skip
        pixel_values = np.stack([images(list(video), return_tensors="np")["pixel_values"] for video in videos])
        return transformers.BatchFeature({"pixel_values": pixel_values}, tensor_type=return_tensors)


class VideoProcessor(transformers.InstructBlipVideoProcessor):
    """transformers checks the video processor's class against one it only defines with torchvision."""

    def check_argument_for_proper_class(self, argument_name, argument):
        return type(argument)


@dataclass
class Family:
    directory: Path
    captioner: captioner.Captioner
    processor: Any  # transformers' processor for the same checkpoint
    frames: np.ndarray  # uint8 [3, T, 40, 40, 3]
    placeholders: int  # in every prompt: num_query_tokens per frame the model reads

    def processed(self, frames: np.ndarray, prompts: list[str], **padding) -> dict[str, np.ndarray]:
        """What transformers' processor makes of these clips and prompts."""
        images = list(frames) if self.captioner.frames is None else list(frames[:, 0])
        return dict(self.processor(images=images, text=prompts, return_tensors="np", **padding))

    def max_length(self, inputs: dict[str, np.ndarray]) -> int:
        """The processor's `max_length` that pads prompts as long as these: it takes num_query_tokens (not
        InstructBLIP-Video's 4 · num_query_tokens placeholders) off it for the language model's prompt."""
        return inputs["input_ids"].shape[1] - self.placeholders + self.captioner.model.config.num_query_tokens


def save_blip2(directory, text_model_type: str) -> Any:
    """A random BLIP-2 with its processor (image mean and std 0.5: not the defaults) saved to `directory`."""
    tokenizer = train_opt_tokenizer() if text_model_type == "opt" else train_t5_tokenizer()
    processor = transformers.Blip2Processor(
        image_processor=transformers.BlipImageProcessorPil(
            size={"height": 28, "width": 28}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        tokenizer=tokenizer,  # the processor adds '<image>' to it
        num_query_tokens=NUM_QUERIES,
    )
    eos = {"eos_token_id": tokenizer.eos_token_id}  # OPT's `</s>`, T5's `</s>`
    config = transformers.Blip2Config(
        vision_config=VISION, qformer_config=QFORMER,
        text_config=TEXT[text_model_type] | eos | {"vocab_size": len(processor.tokenizer)},
        num_query_tokens=NUM_QUERIES, image_token_index=processor.tokenizer.convert_tokens_to_ids("<image>"),
    )  # fmt: skip
    randomized(transformers.Blip2ForConditionalGeneration(config), scale=0.3).save_pretrained(directory)
    processor.save_pretrained(directory)
    return processor


def save_instructblip_video(directory) -> Any:
    """A random InstructBLIP-Video with its tokenizers and video processor settings saved to `directory`."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted({w for p in PROMPTS for w in p.split()})]
    processor = VideoProcessor(
        video_processor=SlowVideoProcessor(),
        tokenizer=train_llama_tokenizer(),  # the processor adds '<video>' to it
        qformer_tokenizer=transformers.BertTokenizerFast(vocab={word: i for i, word in enumerate(words)}),
        num_query_tokens=QUERIES,
    )
    video_token_id = processor.tokenizer.convert_tokens_to_ids("<video>")
    build_reference("instructblip_video", directory, video_token_id, vocab_size=len(processor.tokenizer))
    processor.tokenizer.save_pretrained(directory)
    processor.qformer_tokenizer.save_pretrained(directory / "qformer_tokenizer")
    processor.video_processor.save_pretrained(directory)
    return processor


@pytest.fixture(scope="module", params=["blip2_opt", "blip2_t5", "instructblip_video"])
def family(request, tmp_path_factory) -> Family:
    directory = tmp_path_factory.mktemp(request.param)
    video = request.param == "instructblip_video"
    processor = save_instructblip_video(directory) if video else save_blip2(directory, request.param.split("_")[1])
    frames = np.random.default_rng(0).integers(0, 256, (len(PROMPTS), FRAMES if video else 1, 40, 40, 3), np.uint8)
    placeholders = QUERIES * FRAMES if video else NUM_QUERIES
    return Family(directory, captioner.load_captioner(directory), processor, frames, placeholders)


def test_captioner_chooses_the_family_from_the_checkpoint(family):
    expected = captioner.InstructBlipCaptioner if family.placeholders > NUM_QUERIES else captioner.Blip2Captioner
    assert type(family.captioner) is expected
    assert family.captioner.frames == (None if expected is captioner.InstructBlipCaptioner else 1)  # video: any T


@pytest.mark.parametrize("family", ["blip2_opt"], indirect=True)
def test_load_captioner_refuses_other_architectures_before_reading_weights(family, tmp_path):
    directory = with_config(family.directory, tmp_path, architectures=["Blip2ForImageTextRetrieval"])
    with pytest.raises(CheckpointError, match="Blip2ForImageTextRetrieval"):
        captioner.load_captioner(directory)


def test_captioner_inputs_are_transformers_processors_padded_to_a_bucket(family):
    """Pixel values from the folder's processor settings (BLIP-2's: mean and std 0.5) through PIL's bicubic
    resize, and prompts laid out as the processor lays them out when padding to the same length."""
    ours = family.captioner.inputs(family.frames, PROMPTS)
    theirs = family.processed(family.frames, PROMPTS, padding="max_length", max_length=family.max_length(ours))
    assert ours.keys() == theirs.keys()
    np.testing.assert_allclose(ours.pop("pixel_values"), theirs.pop("pixel_values"), atol=1e-6)
    if family.captioner.frames is None:  # the Q-Former's instruction is padded to `max_length` itself
        qformer_length = ours["qformer_input_ids"].shape[1]
        qformer = family.processed(family.frames, PROMPTS, padding="max_length", max_length=qformer_length)
        theirs |= {name: qformer[name] for name in ("qformer_input_ids", "qformer_attention_mask")}
    for name, value in ours.items():
        np.testing.assert_array_equal(value, theirs[name], err_msg=name)


@pytest.mark.parametrize("family", ["blip2_opt", "instructblip_video"], indirect=True)  # T5's generate: test_blip2.py
def test_captioner_batch_gives_the_strings_of_the_model_on_each_clip_alone(family):
    """The three clips in one call, padded to 4 rows, against our model's `generate` on transformers'
    processor's inputs for each clip alone, decoded by its tokenizer. (Padded to the same prompt length:
    compiling dominates these tests, and every clip alone then has the same shapes.)"""
    captions = family.captioner.caption(family.frames, PROMPTS, SETTINGS)
    max_length = family.max_length(family.captioner.inputs(family.frames, PROMPTS))
    for i, prompt in enumerate(PROMPTS):
        inputs = family.processed(family.frames[i : i + 1], [prompt], padding="max_length", max_length=max_length)
        tokens = family.captioner.model.generate(**inputs, generation_config=SETTINGS)
        texts = family.processor.batch_decode(tokens, skip_special_tokens=True)
        assert [captions[i]] == [text.strip() for text in texts], prompt
    assert len(set(captions)) > 1  # the prompts and images matter


@pytest.mark.parametrize("family", ["blip2_opt"], indirect=True)
@pytest.mark.parametrize(
    "frames, prompts, message",
    [
        (np.zeros((1, 2, 40, 40, 3), np.uint8), ["a"], "got 2 frames: pick one frame"),
        (np.zeros((1, 1, 40, 40, 3), np.float32), ["a"], "must be uint8"),
        (np.zeros((1, 40, 40, 3), np.uint8), ["a"], r"\[batch, frames, height, width, 3\]"),
        (np.zeros((2, 1, 40, 40, 3), np.uint8), ["a"], "2 clips but 1 prompts"),
        (None, ["a"], "reads frames: give uint8"),
    ],
)
def test_captioner_refuses_frames_it_cannot_caption(family, frames, prompts, message):
    with pytest.raises(ValueError, match=message):
        family.captioner.caption(frames, prompts)


class Echo(captioner.VisualCaptioner):
    """A captioner whose "model" returns each prompt's one token: what `caption` does around the model."""

    frames = 1

    def _prompt_inputs(self, pixel_values, prompts):
        return {"input_ids": np.array([[int(p)] for p in prompts])}


def test_captioner_cuts_batches_into_chunks_padded_to_buckets():
    calls = []

    class Model:
        def generate(self, pixel_values, input_ids, generation_config):
            calls.append((pixel_values.shape, input_ids[:, 0].tolist()))
            return input_ids

    class Tokenizer:
        def batch_decode(self, tokens, skip_special_tokens):
            return [f" {row[0]} " for row in tokens]

    echo = Echo(Model(), Tokenizer(), captioner.ImageProcessor((8, 8)), max_batch_size=4)
    frames = np.zeros((6, 1, 10, 10, 3), np.uint8)
    assert echo.caption(frames, [str(i) for i in range(6)]) == ["0", "1", "2", "3", "4", "5"]
    assert calls == [((4, 3, 8, 8), [0, 1, 2, 3]), ((2, 3, 8, 8), [4, 5])]
    calls.clear()
    echo.caption(frames[:3], ["0", "1", "2"])
    assert calls == [((4, 3, 8, 8), [0, 1, 2, 2])]  # the last clip repeated


@pytest.fixture(scope="module", params=["opt", "t5"])
def language_model(request, tmp_path_factory) -> tuple[captioner.Captioner, Any, Any]:
    """(our captioner, transformers' model, tokenizer) for a random OPT or T5 saved by transformers."""
    directory = tmp_path_factory.mktemp(request.param)
    if request.param == "opt":
        tokenizer = train_opt_tokenizer()
        reference = save_reference(transformers.OPTForCausalLM, directory, opt_config(len(tokenizer)))
    else:
        tokenizer = train_t5_tokenizer()
        reference = randomized(save_reference(transformers.T5ForConditionalGeneration, directory, t5_config()))
        reference.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return captioner.load_captioner(directory), reference, tokenizer


def test_language_model_captioner_gives_transformers_strings(language_model):
    """OPT (prompts padded on the left) and T5 (on the right) on the prompts alone, no frame, against
    transformers' `generate` on its tokenizer's batch, decoded the same way."""
    import torch

    ours, reference, tokenizer = language_model
    assert type(ours) is captioner.LanguageModelCaptioner and ours.frames == 0
    captions = ours.caption(None, PROMPTS, SETTINGS)
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        tokens = reference.generate(
            **batch, do_sample=False, num_beams=SETTINGS.num_beams, max_new_tokens=SETTINGS.max_new_tokens
        )
    new = tokens if reference.config.is_encoder_decoder else tokens[:, batch["input_ids"].shape[1] :]
    assert captions == [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    assert len(set(captions)) > 1
    frames = np.zeros((len(PROMPTS), 2, 8, 8, 3), np.uint8)  # given frames are not read
    assert ours.caption(frames, PROMPTS, SETTINGS) == captions


def test_bucket_rounds_up_to_powers_of_two_then_multiples_of_the_largest():
    assert [inference.bucket(n, 64, 8) for n in (0, 1, 8, 9, 33, 64, 65, 130)] == [8, 8, 8, 16, 64, 64, 128, 192]
    assert [inference.bucket(n, 48) for n in (1, 3, 17, 33, 48)] == [1, 4, 32, 48, 48]


def test_pad_tokens_on_either_side():
    ids, mask = inference.pad_tokens([[5, 6], [7]], 3, 0, "left")
    np.testing.assert_array_equal(ids, [[0, 5, 6], [0, 0, 7]])
    np.testing.assert_array_equal(mask, [[0, 1, 1], [0, 0, 1]])
    ids, mask = inference.pad_tokens([[5, 6], []], 3, 1, "right")
    np.testing.assert_array_equal(ids, [[5, 6, 1], [1, 1, 1]])
    np.testing.assert_array_equal(mask, [[1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="does not fit"):
        inference.pad_tokens([[1, 2, 3, 4]], 3, 0, "left")
