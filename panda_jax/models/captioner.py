"""One captioning call for the teachers and the student: uint8 frames and prompts in, strings out.

`Captioner.caption(frames [B, T, H, W, 3] uint8, prompts)` hides what differs between model
families: the image preprocessing, the tokenizers, where the placeholders of the visual tokens
go, the padding side and the model's own `generate`. `load_captioner(directory)` builds the
right captioner from a checkpoint folder as transformers saves a model and its processor:
weights, tokenizer(s), the image processor's settings.

Pixels are what transformers' slow BLIP image processor (`BlipImageProcessorPil`) makes,
reproduced with PIL and numpy: bicubic resize to the square size, rescale by 1/255, normalise
with OpenAI CLIP's mean and std, NCHW ([B, T, 3, H, W] for video). Prompts are laid out as
transformers 5.24's Blip2Processor, InstructBlipProcessor and InstructBlipVideoProcessor lay
them out: the language model's tokenizer with its special tokens (OPT's and LLaMA's BOS, T5's
EOS) after one placeholder per visual token, padded between the placeholders and the text for
decoder-only models (left padding) and after the text for T5; InstructBLIP's Q-Former reads the
prompt through its own BERT tokenizer, padded on the right. InstructBlipVideoProcessor writes
placeholders for 4 frames whatever the video holds; here there are as many as the model reads
(`num_query_tokens` per frame given). Captions are decoded without special tokens and stripped.

`Captioner.frames` says how many frames of a clip a model reads: 1 for the image models (BLIP-2,
InstructBLIP), None (any number) for InstructBLIP-Video, which reads all T, and 0 for a language
model alone (OPT, LLaMA or T5, `LanguageModelCaptioner`), which reads only the prompt: its
`caption` takes `frames=None`. Its prompts are tokenized as transformers' tokenizer does (OPT's
and LLaMA's BOS, T5's EOS) and padded on the left for OPT and LLaMA, on the right for T5.
Batches are cut into chunks of at most `max_batch_size` clips, and chunks and prompts padded
to a few fixed sizes (`inference.bucket`), so a stream of calls compiles a bounded number of
times.
"""

from __future__ import annotations

import abc
import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from PIL import Image

from panda_jax.models import (
    blip2, checkpoint, instructblip, llama, load, opt, preprocess, sharding, student, t5, video_llama,
)
from panda_jax.models.clip import IMAGE_MEAN, IMAGE_STD
from panda_jax.models.generation import GenerationConfig, generate
from panda_jax.models.inference import bucket, pad_rows, pad_tokens

# Where transformers saves an image or video processor's settings: 5.x nests them under these keys of
# processor_config.json, earlier versions (and most hub checkpoints) write them on their own.
PROCESSOR_CONFIG, PROCESSOR_KEYS = "processor_config.json", ("image_processor", "video_processor")
PREPROCESSOR_CONFIGS = ("preprocessor_config.json", "video_preprocessor_config.json")
SHORTEST_PROMPT = 8  # prompts are padded to 8, 16, 32, ... tokens


@dataclass(frozen=True)
class ImageProcessor:
    """transformers' slow BLIP image processor: the same pixel values, from PIL and numpy (`preprocess.pixel_values`,
    channels first)."""

    size: tuple[int, int]  # (height, width)
    resample: int = Image.Resampling.BICUBIC
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = IMAGE_MEAN
    image_std: tuple[float, ...] = IMAGE_STD

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, image_size: int) -> ImageProcessor:
        """The folder's processor settings; without any, BLIP's defaults at the vision encoder's `image_size`."""
        config = processor_settings(directory)
        size = config.get("size") or image_size
        if isinstance(size, int):
            size = {"height": size, "width": size}
        names = {field.name for field in dataclasses.fields(cls)} - {"size"}
        options = {name: tuple(value) if isinstance(value, list) else value for name, value in config.items()
                   if name in names}  # fmt: skip
        return cls((size["height"], size["width"]), **options)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [..., H, W, 3] → float32 [..., 3, height, width], as transformers computes it (and training's
        pipeline: both are `preprocess.pixel_values`)."""
        pixels = preprocess.pixel_values(
            frames, self.size if self.do_resize else None, resample=self.resample,
            rescale_factor=self.rescale_factor if self.do_rescale else None,
            mean=self.image_mean if self.do_normalize else None, std=self.image_std,
        )  # fmt: skip
        return np.ascontiguousarray(np.moveaxis(pixels, -1, -3))


def processor_settings(directory: str | os.PathLike) -> dict[str, Any]:
    """The image or video processor settings saved in a checkpoint folder, {} when there are none."""
    directory = Path(directory)
    if (directory / PROCESSOR_CONFIG).is_file():
        nested = json.loads((directory / PROCESSOR_CONFIG).read_text())
        for key in PROCESSOR_KEYS:
            if isinstance(nested.get(key), dict):
                return nested[key]
    for name in PREPROCESSOR_CONFIGS:
        if (directory / name).is_file():
            return json.loads((directory / name).read_text())
    return {}


def padded_prompts(
    sequences: Sequence[Sequence[int]], pad_token_id: int | None, side: Literal["left", "right"], largest: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences padded to the bucket of the longest: (ids, attention mask)."""
    length = bucket(max(len(tokens) for tokens in sequences), largest, SHORTEST_PROMPT)
    return pad_tokens(sequences, length, pad_token_id or 0, side)


class Captioner(abc.ABC):
    """Clips and prompts → captions, for one model family (see the module docstring)."""

    def __init__(
        self, model: Any, tokenizer: Any, *, max_batch_size: int = 8, max_prompt_length: int = 64, mesh: Mesh | None = None
    ):
        """`max_batch_size`: clips per `generate` call; `max_prompt_length`: the largest prompt bucket (tokens);
        `mesh`: batches are split over its 'data' axis (padded to a multiple of its size)."""
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_prompt_length, self.mesh = max_batch_size, max_prompt_length, mesh

    @property
    @abc.abstractmethod
    def frames(self) -> int | None:
        """How many frames of a clip the model reads: 0 (the prompt alone), 1 (one image), None (any number)."""

    @abc.abstractmethod
    def inputs(self, frames: np.ndarray | None, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """The model's `generate` arguments for these clips (uint8 [B, T, H, W, 3], RGB) and prompts."""

    def _generate(self, inputs: dict[str, np.ndarray], generation: GenerationConfig | None) -> np.ndarray:
        """New token ids [B, n] for `inputs` (padded to a bucket of rows)."""
        return self.model.generate(**inputs, generation_config=generation)

    def caption(
        self, frames: np.ndarray | None, prompts: Sequence[str], generation: GenerationConfig | None = None
    ) -> list[str]:
        """One caption per clip of `frames` (uint8 [B, T, H, W, 3], RGB) and its prompt.

        T as `self.frames` says; None only for a captioner that reads no frame. Decoded as
        `generation` says (default: `GenerationConfig()`).
        """
        prompts = list(prompts)
        if frames is None and self.frames != 0:
            raise ValueError(f"{type(self.model).__name__} reads frames: give uint8 [batch, frames, height, width, 3]")
        if frames is not None and len(frames) != len(prompts):
            raise ValueError(f"{len(frames)} clips but {len(prompts)} prompts")
        captions = []
        for start in range(0, len(prompts), self.max_batch_size):
            chunk = slice(start, start + self.max_batch_size)
            inputs = self.inputs(None if frames is None else frames[chunk], prompts[chunk])
            rows = len(prompts[chunk])
            padded_rows = bucket(rows, self.max_batch_size)
            if self.mesh is not None:
                data = self.mesh.shape["data"]
                padded_rows = -(-padded_rows // data) * data
            padded = {name: pad_rows(value, padded_rows) for name, value in inputs.items()}
            if self.mesh is not None:
                padded = sharding.shard_batch(padded, self.mesh)
            texts = self.tokenizer.batch_decode(self._generate(padded, generation)[:rows], skip_special_tokens=True)
            captions += [text.strip() for text in texts]
        return captions

    def _language_prompt(
        self, prompts: list[str], placeholders: list[int], side: Literal["left", "right"]
    ) -> dict[str, np.ndarray]:
        """`input_ids` and `attention_mask`: the placeholders, then the tokenized prompts padded on `side`."""
        text = self.tokenizer(prompts)["input_ids"]
        ids, mask = padded_prompts(text, self.tokenizer.pad_token_id, side, self.max_prompt_length)
        prefix = np.tile(np.asarray(placeholders, np.int32), (len(prompts), 1))
        return {
            "input_ids": np.concatenate([prefix, ids], axis=1),
            "attention_mask": np.concatenate([np.ones_like(prefix), mask], axis=1),
        }


class VisualCaptioner(Captioner):
    """A captioner that reads frames: pixels through the checkpoint's image processor, placeholders in the prompt."""

    def __init__(self, model: Any, tokenizer: Any, image_processor: ImageProcessor, **options: Any):
        super().__init__(model, tokenizer, **options)
        self.image_processor = image_processor

    @abc.abstractmethod
    def _prompt_inputs(self, pixel_values: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        """The model's `generate` arguments other than the pixel values, for these prompts."""

    def inputs(self, frames: np.ndarray | None, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """What transformers' processor makes with `padding="max_length"` to the prompts' bucket (and,
        for InstructBLIP-Video, placeholders for the frames given rather than for 4)."""
        frames, prompts = np.asarray(frames), list(prompts)
        if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
            shape = f"{frames.dtype} {frames.shape}"
            raise ValueError(f"frames must be uint8 [batch, frames, height, width, 3], not {shape}")
        if len(prompts) != len(frames):
            raise ValueError(f"{len(frames)} clips but {len(prompts)} prompts")
        if self.frames == 1 and frames.shape[1] != 1:
            raise ValueError(
                f"{type(self.model).__name__} captions one image per clip, got {frames.shape[1]} frames: "
                "pick one frame of each clip (frames[:, i : i + 1])"
            )
        pixel_values = self.image_processor(frames[:, 0] if self.frames == 1 else frames)
        return {"pixel_values": pixel_values, **self._prompt_inputs(pixel_values, prompts)}


class Blip2Captioner(VisualCaptioner):
    """BLIP-2 with OPT or LLaMA (prompts padded on the left) or Flan-T5 (on the right): one frame per clip;
    Video-LLaMA, BLIP-2 with a video Q-Former: every frame."""

    @property
    def frames(self) -> int | None:
        return None if isinstance(self.model, video_llama.VideoLlama) else 1

    def _prompt_inputs(self, pixel_values: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        config = self.model.config
        placeholders = [] if config.image_token_index is None else [config.image_token_index] * self.model.num_placeholders
        return self._language_prompt(prompts, placeholders, "right" if self.model.is_encoder_decoder else "left")


class InstructBlipCaptioner(VisualCaptioner):
    """InstructBLIP (one frame per clip) or InstructBLIP-Video (every frame); the prompt is also the Q-Former's."""

    def __init__(
        self, model: Any, tokenizer: Any, qformer_tokenizer: Any, image_processor: ImageProcessor, **options: Any
    ):
        super().__init__(model, tokenizer, image_processor, **options)
        self.qformer_tokenizer = qformer_tokenizer

    @property
    def frames(self) -> int | None:
        return None if self.model.config.video else 1

    def _prompt_inputs(self, pixel_values: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        config = self.model.config
        # The Q-Former's text positions end at its position embeddings.
        largest = min(self.max_prompt_length, config.qformer.max_position_embeddings)
        qformer_tokenizer = self.qformer_tokenizer
        qformer_ids, qformer_mask = padded_prompts(
            qformer_tokenizer(prompts)["input_ids"], qformer_tokenizer.pad_token_id, "right", largest
        )
        placeholders = [config.placeholder_token_id] * self.model.num_placeholders(pixel_values.shape)
        return {
            "qformer_input_ids": qformer_ids,
            "qformer_attention_mask": qformer_mask,
            **self._language_prompt(prompts, placeholders, "left"),
        }


class StudentCaptioner(VisualCaptioner):
    """The student captioner: every frame given (up to its frame positions), the prompt through its text branch
    (the language model's tokenizer, no special tokens, padded on the right)."""

    frames = None

    def _prompt_inputs(self, pixel_values: np.ndarray, prompts: list[str]) -> dict[str, np.ndarray]:
        sequences = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        largest = min(self.max_prompt_length, self.model.config.max_prompt_tokens)
        ids, mask = padded_prompts([tokens[:largest] for tokens in sequences], self.tokenizer.pad_token_id, "right",
                                   largest)  # fmt: skip
        return {"prompt_ids": ids, "prompt_mask": mask}


class LanguageModelCaptioner(Captioner):
    """OPT or LLaMA (prompts padded on the left) or T5 (on the right) on the prompt alone: no frame."""

    frames = 0

    def inputs(self, frames: np.ndarray | None, prompts: Sequence[str]) -> dict[str, np.ndarray]:
        """The tokenized prompts, as `generate` takes them; `frames` are not read."""
        encoder_decoder = hasattr(self.model, "encode")  # `generation`'s test for an encoder-decoder
        return self._language_prompt(list(prompts), [], "right" if encoder_decoder else "left")

    def _generate(self, inputs: dict[str, np.ndarray], generation: GenerationConfig | None) -> np.ndarray:
        return generate(self.model, **inputs, **dataclasses.asdict(generation or GenerationConfig()))


LANGUAGE_MODELS = opt.ARCHITECTURES + llama.ARCHITECTURES + t5.ARCHITECTURES
CAPTIONING = (blip2.ARCHITECTURES + video_llama.ARCHITECTURES + instructblip.ARCHITECTURES + LANGUAGE_MODELS
              + (student.ARCHITECTURE,))  # fmt: skip


def load_captioner(
    directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None, **options: Any
) -> Captioner:
    """The captioner for a checkpoint folder: its model (`panda_jax.models.load`, by config.json's
    architectures; `dtype`, `mesh` as there), tokenizer(s) and image processor settings.

    `options` go to `Captioner`. Refuses other architectures before reading any weight.
    """
    config = checkpoint.read_config(directory, architectures=CAPTIONING)
    options = {**options, "mesh": mesh}
    if student.ARCHITECTURE in (config.get("architectures") or []):
        model = student.load(directory, dtype, mesh=mesh)
        image_processor = ImageProcessor.from_pretrained(directory, model.image_model.config.vision.image_size)
        return StudentCaptioner(model, checkpoint.load_tokenizer(directory), image_processor, **options)
    model = load(directory, dtype, mesh=mesh)
    if not isinstance(model, (blip2.Blip2, instructblip.InstructBlip)):
        return LanguageModelCaptioner(model, checkpoint.load_tokenizer(directory), **options)
    image_processor = ImageProcessor.from_pretrained(directory, model.config.vision.image_size)
    if isinstance(model, instructblip.InstructBlip):
        return InstructBlipCaptioner(model, *instructblip.load_tokenizers(directory), image_processor, **options)
    return Blip2Captioner(model, checkpoint.load_tokenizer(directory), image_processor, **options)
