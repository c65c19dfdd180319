"""What `python -m panda_jax.train` trains: for each `config.model`, the model, what of it learns, its loss,
and its data.

A `Task` is all the training loop needs to know of a model: the module (from panda_jax/models),
an nnx filter of the parameters the optimizer changes, the loss of a batch (with the metrics to
report) and the extra inputs the pipeline makes for it (panda_jax.data.pipeline). Adding a
model to train is adding one function to `TASKS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from panda_jax import losses
from panda_jax.models import checkpoint


@dataclasses.dataclass
class Task:
    """What the loop needs to know of a model: how it learns and what it reads."""

    model: nnx.Module
    trainable: Any  # an nnx filter: the parameters in the optimizer
    loss: Callable[[nnx.Module, dict[str, jax.Array], jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
    data: dict[str, Any]  # make_dataset's text options
    # Writes the trained model as a checkpoint folder its loader (and, where it can, transformers) reads.
    export: Callable[[nnx.Module, Path], None] | None = None


def checkpoint_folder(config: Any) -> Path:
    """The model's starting checkpoint: `checkpoint` under `weights_dir`, written first if it is a tiny kind."""
    folder = (Path(config.weights_dir).expanduser() / Path(config.checkpoint).expanduser()).absolute()
    if config.tiny:
        from panda_jax.teachers import tiny

        tiny.ensure_tiny_checkpoint(config.tiny, folder)
    return folder


def student_task(config: Any, mesh: Any) -> Task:
    from panda_jax.data.pipeline import StudentText
    from panda_jax.models import student

    folder = checkpoint_folder(config)
    model = student.from_blip2(folder, student.StudentConfig(**config.student), getattr(jnp, config.train.dtype),
                               mesh=mesh, seed=config.train.seed)  # fmt: skip

    def loss(model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = model(batch["pixel_values"], batch["prompt_ids"], batch["prompt_mask"], batch["caption_ids"],
                       batch["caption_mask"])  # fmt: skip
        value = student.caption_loss(logits, batch["caption_ids"], batch["caption_mask"])
        right = (logits.argmax(-1) == batch["caption_ids"]) * batch["caption_mask"]
        return value, {"loss": value, "token_accuracy": right.sum() / jnp.maximum(batch["caption_mask"].sum(), 1)}

    text = StudentText(checkpoint.load_tokenizer(folder), config.student.max_prompt_tokens, config.max_caption_tokens,
                       config.side_text_keep_probability)  # fmt: skip
    return Task(model, student.TRAINABLE, loss, {"text": text})


def retrieval_task(config: Any, mesh: Any) -> Task:
    """Clip-caption pairs, every other caption of the batch a negative (weight `loss.pair_weight`): VTC and VTM."""
    from panda_jax.models import video_retrieval

    folder = checkpoint_folder(config)
    video = video_retrieval.VideoConfig(max_frames=config.train.num_frames, temporal_layers=config.temporal_layers)
    model = video_retrieval.load(folder, getattr(jnp, config.train.dtype), mesh=mesh, video=video,
                                 seed=config.train.seed)  # fmt: skip
    weights = config.loss

    def loss(model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
        video = model.encode_video(batch["pixel_values"])
        similarity = model.similarity(video.embeds, model.encode_text(batch["input_ids"], batch["attention_mask"]))
        pairs = jnp.arange(len(similarity))
        vtc = losses.vtc_loss(similarity, model.logit_scale[...], pairs, pairs, other_clip_weight=weights.pair_weight)
        negative_text, negative_video = losses.vtm_hard_negatives(similarity, model.logit_scale[...], pairs, pairs, rng)
        video_index, text_index, labels = losses.vtm_pairs(pairs, negative_text, negative_video)
        matched = jax.tree.map(lambda features: features[video_index], video)
        logits = model.match_logits(matched, batch["input_ids"][text_index], batch["attention_mask"][text_index])
        vtm = losses.vtm_loss(logits, labels)
        value = vtc + weights.vtm_weight * vtm
        return value, {"loss": value, "vtc": vtc, "vtm": vtm, "vtm_accuracy": jnp.mean(logits.argmax(-1) == labels)}

    tokenizer = checkpoint.load_tokenizer(folder)
    return Task(model, nnx.Param, loss, {"tokenizer": tokenizer, "max_text_tokens": config.max_text_tokens})


TASKS = {"student": student_task, "retrieval": retrieval_task}


def data_sources(config: Any) -> tuple[Any, Any | None]:
    """(train source, eval source or None): the `panda70m` TFDS splits, or synthetic clips of separate videos."""
    data = config.data
    if data.source == "synthetic":
        from panda_jax.data.synthetic import SyntheticClips

        options = dict(size=data.synthetic_size, stored_frames=config.train.num_frames)
        train = SyntheticClips(data.synthetic_videos, data.synthetic_seed, **options)
        evaluation = SyntheticClips(data.synthetic_eval_videos, data.synthetic_seed, first_video=data.synthetic_videos,
                                    **options) if data.synthetic_eval_videos else None  # fmt: skip
        return train, evaluation
    if data.source != "tfds":
        raise ValueError(f"data.source must be tfds or synthetic, not {data.source!r}")
    import tensorflow_datasets as tfds

    import tfds_builders.panda70m  # noqa: F401  (registers the builder)

    def split(name: str) -> Any:
        return tfds.data_source(data.name, split=name, data_dir=data.data_dir or None)

    return split(data.split), split(data.eval_split) if data.eval_split else None
