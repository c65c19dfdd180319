"""Grain input pipeline over any random-access source of `panda70m` examples.

The source is `tfds.data_source("panda70m", split=...)` in production, or anything with
`__len__` and `__getitem__` returning the example dicts of the `panda70m` builder (frames
uint8 [T, H, W, 3], caption, clip_id, ...). Per clip the pipeline samples frames, resizes
(eval) or random-resized-crops and flips (train) them in the workers, with the pixel recipe
the captioner and the selector apply at inference (`panda_jax.models.preprocess`: PIL bicubic,
BLIP's normalisation), tokenizes the caption, and batches per host:

    ds = make_dataset(tfds.data_source("panda70m", split="train"), train=True, batch_size=48,
                      tokenizer=tokenizer, worker_count=8)
    it = iter(ds)
    batch = next(it)   # frames float32 [48 / hosts, 8, 224, 224, 3], input_ids, attention_mask, ...
    state = it.get_state()   # later: it = iter(ds); it.set_state(state) resumes exactly

Every random choice comes from grain's per-element generator, seeded by the pipeline seed
and the element's index in the repeated dataset, so a run is reproducible, each epoch draws
anew, and the iterator state is just a position. With Orbax, save the iterator next to the
model with `grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grain
import jax
import numpy as np
from absl import flags
from transformers import PreTrainedTokenizerBase

from panda_jax.models.clip import IMAGE_MEAN, IMAGE_STD
from panda_jax.models.inference import pad_tokens
from panda_jax.models.preprocess import pixel_values
from panda_jax.video.sampling import uniform_indices

if TYPE_CHECKING:
    from panda_jax.teachers import prompts

log = logging.getLogger(__name__)

class ExampleSource(Protocol):
    """What the pipeline reads: a sized, indexable collection of `panda70m` example dicts."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


def train_indices(num_stored: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """`num_frames // 2` random frames from each half of the clip, in time order.

    This is the Panda-70M student's training sampling (4 random frames per half for 8 frames):
    every sample sees both the start and the end of the clip but not always the same frames.
    """
    if num_frames < 2 or num_frames % 2:
        raise ValueError(
            f"training samples the same number of frames per half: num_frames must be even, got {num_frames}"
        )
    if num_stored < 2:
        raise ValueError(f"a clip needs at least 2 stored frames to have two halves, got {num_stored}")
    per_half = num_frames // 2
    middle = num_stored // 2
    picked = []
    for low, high in ((0, middle), (middle, num_stored)):
        size = high - low
        chosen = rng.choice(size, per_half, replace=size < per_half)
        picked.append(low + np.sort(chosen))
    return np.concatenate(picked).astype(np.int64)


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of a random crop covering `scale` of the area.

    Same rule as torchvision's RandomResizedCrop: up to 10 tries of a random area and a
    log-uniform aspect ratio, then a centred crop with the ratio clamped to `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        crop_h, crop_w = height, round(height * ratio[1])
    else:
        crop_h, crop_w = height, width
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _text(value: Any) -> str:
    """Strings come back as bytes from tfds and as str from in-memory sources."""
    if isinstance(value, np.ndarray):
        value = value.item()
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _padded(ids: Sequence[int], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    tokens, mask = np.full(length, pad_id, np.int32), np.zeros(length, np.int32)
    tokens[: len(ids)], mask[: len(ids)] = ids, 1
    return tokens, mask


def side_text(element: dict[str, Any]) -> prompts.SideText:
    """The example's subtitles, title and description, each on one line."""
    from panda_jax.teachers import prompts

    return prompts.SideText(*(" ".join(_text(element.get(field, "")).split())
                              for field in ("subtitles", "title", "description")))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class StudentText:
    """The student captioner's text inputs, by its language model's tokenizer: the prompt (padded on the right
    to `max_prompt_tokens`) and the caption (no BOS, then EOS, at most `max_caption_tokens`).

    In training the subtitles and the metadata each stay in the prompt with probability
    `keep_probability` (Panda-70M: 0.5), so the student learns to caption with and without them.
    """

    tokenizer: PreTrainedTokenizerBase
    max_prompt_tokens: int = 200
    max_caption_tokens: int = 48
    keep_probability: float = 0.5

    def __call__(self, element: dict[str, Any], train: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
        from panda_jax.teachers import prompts

        keep = [not train or rng.random() < self.keep_probability for _ in range(2)]
        prompt = prompts.student_prompt(side_text(element), subtitles=keep[0], metadata=keep[1])
        pad = self.tokenizer.pad_token_id or 0
        caption = _tokens(self.tokenizer, _text(element["caption"]))[: self.max_caption_tokens - 1]
        prompt_ids, prompt_mask = _padded(_tokens(self.tokenizer, prompt)[: self.max_prompt_tokens],
                                          self.max_prompt_tokens, pad)  # fmt: skip
        caption_ids, caption_mask = _padded([*caption, self.tokenizer.eos_token_id], self.max_caption_tokens, pad)
        return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "caption_ids": caption_ids,
                "caption_mask": caption_mask}  # fmt: skip


def captioner_corpus(element: dict[str, Any], with_side_text: bool) -> tuple[str, str]:
    """What a captioner's word tokenizer learns its words from in one example: the caption, and the prompt
    `CaptionerText` builds, with the side text whole (cutting it to the budgets only drops words)."""
    from panda_jax.teachers import prompts

    whole = prompts.Budgets(0, 0, 0)  # no token counted: nothing cut
    prompt, _ = prompts.build_prompt(side_text(element) if with_side_text else None, whole, lambda text: 0)
    return _text(element["caption"]), prompt


@dataclasses.dataclass(frozen=True)
class CaptionerText:
    """A captioner's text inputs, laid out as `captioner.Captioner.caption` lays out its prompts at inference, with
    the caption after them, so that training teaches what generation reads.

    The prompt is the one Panda-70M's teachers get (`prompts.build_prompt`: with the clip's side text, each field
    cut to `budgets`, when `side_text` and the clip has some; the short one otherwise), tokenized with BOS and padded
    on the left to `max_prompt_tokens` (`prompt_ids`, `prompt_mask`): it ends where the caption starts, as a
    decoder-only language model's prompt ends where generation starts. The caption follows without BOS, then EOS,
    padded on the right (`caption_ids`, `caption_mask`, at most `max_caption_tokens`). With `qformer`, the prompt
    again, padded on the right as InstructBLIP's Q-Former reads it (`qformer_ids`, `qformer_mask`), from the same
    tokenizer. The captioner's placeholders and the positions (the running count of real tokens, as generation
    numbers them) are the model's business (`panda_jax.tasks.captioner_task`).
    """

    tokenizer: PreTrainedTokenizerBase
    side_text: bool
    budgets: prompts.Budgets
    max_prompt_tokens: int
    max_caption_tokens: int
    qformer: bool = False

    def prompt(self, element: dict[str, Any]) -> str:
        """The clip's prompt, built as the caption stage builds it (panda_jax.caption) with this tokenizer."""
        from panda_jax.teachers import prompts

        count = lambda text: len(_tokens(self.tokenizer, text))  # noqa: E731
        return prompts.build_prompt(side_text(element) if self.side_text else None, self.budgets, count)[0]

    def __call__(self, element: dict[str, Any], train: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
        prompt = self.tokenizer(self.prompt(element))["input_ids"]
        if len(prompt) > self.max_prompt_tokens:
            raise ValueError(f"clip {_text(element.get('clip_id', '?'))!r}: its prompt takes {len(prompt)} tokens, "
                             f"more than max_prompt_tokens ({self.max_prompt_tokens})")  # fmt: skip
        pad = self.tokenizer.pad_token_id
        caption = _tokens(self.tokenizer, _text(element["caption"]))[: self.max_caption_tokens - 1]
        prompt_ids, prompt_mask = pad_tokens([prompt], self.max_prompt_tokens, pad, "left")
        caption_ids, caption_mask = _padded([*caption, self.tokenizer.eos_token_id], self.max_caption_tokens, pad)
        out = {"prompt_ids": prompt_ids[0], "prompt_mask": prompt_mask[0], "caption_ids": caption_ids,
               "caption_mask": caption_mask}  # fmt: skip
        if self.qformer:
            out["qformer_ids"], out["qformer_mask"] = _padded(prompt, self.max_prompt_tokens, pad)
        return out


def teacher_captions(element: dict[str, Any]) -> list[tuple[str, str]]:
    """(teacher, caption) pairs of an example: a list of dicts in memory, a dict of arrays from tfds."""
    captions = element.get("teacher_captions", [])
    if isinstance(captions, dict):
        return [(_text(t), _text(c)) for t, c in zip(captions["teacher"], captions["caption"])]
    return [(_text(c["teacher"]), _text(c["caption"])) for c in captions]


class LabelledSource:
    """The examples of `source` that `labels` (clip_id → the teacher people chose) names, each with its `label`.

    Finding them reads every example once (with `tfds.data_source`, frames included): meant for
    the labelled subset selection is fine-tuned on, thousands of clips, not millions.
    """

    def __init__(self, source: ExampleSource, labels: dict[str, str]):
        self.source, self.labels = source, labels
        self.indices = [i for i in range(len(source)) if _text(source[i]["clip_id"]) in labels]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        element = dict(self.source[self.indices[index]])
        return element | {"label": self.labels[_text(element["clip_id"])]}


@dataclasses.dataclass(frozen=True)
class CandidateText:
    """The selector's fine-tuning inputs: every teacher caption of the clip (`num_candidates` rows, missing ones
    masked) by the selector's tokenizer, and which of them is the `label` (the teacher people chose)."""

    tokenizer: PreTrainedTokenizerBase
    num_candidates: int
    max_text_tokens: int = 40

    def __call__(self, element: dict[str, Any], train: bool, rng: np.random.Generator) -> dict[str, np.ndarray]:
        candidates = teacher_captions(element)[: self.num_candidates]
        label = _text(element["label"])
        teachers = [teacher for teacher, _ in candidates]
        if label not in teachers:
            raise ValueError(f"clip {_text(element.get('clip_id', '?'))!r}: its label {label!r} is none of its "
                             f"candidates' teachers {teachers}")  # fmt: skip
        texts = [caption for _, caption in candidates] + [""] * (self.num_candidates - len(candidates))
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_text_tokens,
                                return_tensors="np")  # fmt: skip
        return {
            "candidate_ids": tokens["input_ids"].astype(np.int32),
            "candidate_mask": tokens["attention_mask"].astype(np.int32),
            "candidate_valid": (np.arange(self.num_candidates) < len(candidates)).astype(np.int32),
            "positive": np.int32(teachers.index(label)),
        }


@dataclasses.dataclass(frozen=True)
class ClipTransform(grain.transforms.RandomMap):
    """Turns one example dict into model inputs; picklable so grain workers can run it.

    Frames become pixels by `preprocess.pixel_values` at `image_size`, as `captioner.ImageProcessor` makes them at
    inference: evaluation resizes the whole frames, so its pixels are exactly the captioner's; training first crops
    the uint8 frames (random-resized crop) and then mirrors the pixels.
    """

    train: bool
    num_frames: int = 8
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = IMAGE_STD
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_probability: float = 0.5
    tokenizer: PreTrainedTokenizerBase | None = None
    max_text_tokens: int = 48
    text: Callable[[dict[str, Any], bool, np.random.Generator], dict[str, np.ndarray]] | None = None

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        frames = np.asarray(element["frames"])
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(
                f"clip {_text(element.get('clip_id', '?'))!r}: frames must be uint8 [T, H, W, 3], "
                f"got shape {frames.shape}"
            )
        size = (self.image_size, self.image_size)
        if self.train:
            frames = frames[train_indices(len(frames), self.num_frames, rng)]
            top, left, crop_h, crop_w = random_resized_crop_box(
                frames.shape[1], frames.shape[2], rng, self.crop_scale, self.crop_ratio
            )
            pixels = pixel_values(frames[:, top : top + crop_h, left : left + crop_w], size, mean=self.mean,
                                  std=self.std)  # fmt: skip
            if rng.random() < self.flip_probability:
                pixels = pixels[:, :, ::-1]
        else:
            pixels = pixel_values(frames[uniform_indices(len(frames), self.num_frames)], size, mean=self.mean,
                                  std=self.std)  # fmt: skip
        caption = _text(element["caption"])
        out = {
            "frames": pixels,
            "clip_id": _text(element["clip_id"]).encode("utf-8"),
            "caption": caption.encode("utf-8"),
        }
        if self.tokenizer is not None:
            tokens = self.tokenizer(
                caption, padding="max_length", truncation=True, max_length=self.max_text_tokens, return_tensors="np"
            )
            out["input_ids"] = tokens["input_ids"][0].astype(np.int32)
            out["attention_mask"] = tokens["attention_mask"][0].astype(np.int32)
        if self.text is not None:
            out |= self.text(element, self.train, rng)
        return out


def ensure_absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside `app.run` nobody parsed them."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_dataset(
    source: ExampleSource,
    *,
    train: bool,
    batch_size: int,
    num_frames: int = 8,
    image_size: int = 224,
    tokenizer: PreTrainedTokenizerBase | None = None,
    max_text_tokens: int = 48,
    seed: int = 0,
    worker_count: int = 0,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    mean: Sequence[float] = IMAGE_MEAN,
    std: Sequence[float] = IMAGE_STD,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    flip_probability: float = 0.5,
    text: Callable[[dict[str, Any], bool, np.random.Generator], dict[str, np.ndarray]] | None = None,
) -> grain.IterDataset:
    """Builds the input pipeline; `iter()` of the result is a checkpointable iterator.

    Args:
      source: random-access examples, e.g. `tfds.data_source("panda70m", split="train")`, or an endless one
        (`synthetic.SyntheticStream`): grain shuffles indices on the fly (`index_shuffle`), never a list of them.
      train: shuffle, sample 4 random frames per half, random-resized-crop and flip, and drop
        the last partial batch; otherwise keep the order, sample uniformly and only resize.
      batch_size: the global batch size; each host gets `batch_size // shard_count`.
      tokenizer: when given, batches carry `input_ids` / `attention_mask` int32
        [B, max_text_tokens]; the raw caption is always in `caption` (bytes).
      worker_count: grain worker processes (0 reads in this process).
      crop_scale: the area range of training's random-resized crop.
      flip_probability: how often training mirrors a clip (0 where captions say left and right).
      text: more text inputs from each example, e.g. `StudentText` (picklable, for the workers).
      num_epochs: passes over the data; None means forever when training and once for eval.
      shard_index, shard_count: this host's shard; default `jax.process_index()` / `jax.process_count()`.
        Training shards are cut to equal sizes; eval shards keep every example, so they may differ by one.

    Yields dicts with `frames` float32 [B, num_frames, image_size, image_size, 3], `clip_id`
    and `caption` (bytes arrays [B]), and the token arrays when a tokenizer is given.
    """
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    if batch_size % shard_count:
        raise ValueError(f"global batch_size {batch_size} must be divisible by the {shard_count} hosts reading it")
    if len(source) == 0:
        raise ValueError("the source has no examples: was the dataset built, and is the split right?")
    if worker_count > 0:
        ensure_absl_flags_parsed()
    if num_epochs is None and not train:
        num_epochs = 1

    ds = grain.MapDataset.source(source)
    if train:
        # Equal shards, so that no host runs out of batches before the others.
        ds = ds[: len(ds) // shard_count * shard_count]
    ds = ds[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"shard {shard_index} of {shard_count} is empty: the source has only {len(source)} examples")
    shard_size = len(ds)
    if train:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    transform = ClipTransform(
        train=train,
        num_frames=num_frames,
        image_size=image_size,
        mean=tuple(mean),
        std=tuple(std),
        tokenizer=tokenizer,
        max_text_tokens=max_text_tokens,
        crop_scale=tuple(crop_scale),
        flip_probability=flip_probability,
        text=text,
    )
    ds = ds.random_map(transform, seed=seed)
    # One reading thread per process (parallelism comes from `worker_count` processes): with grain's default 16
    # threads running the transform (PIL resizes, numpy look-ups) at once, test processes crashed with segmentation
    # faults three times on 2026-12-07; the transform holds the GIL most of the time anyway.
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=2 * max(batch_size // shard_count, 1))
    iter_ds = ds.to_iter_dataset(read).batch(batch_size // shard_count, drop_remainder=train)
    if worker_count > 0:
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    log.info(
        "pipeline: %d of %d examples on shard %d/%d, %s, per-host batch %d, %d workers",
        shard_size,
        len(source),
        shard_index,
        shard_count,
        "train" if train else "eval",
        batch_size // shard_count,
        worker_count,
    )
    return iter_ds
