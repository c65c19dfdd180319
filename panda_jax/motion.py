"""The video foundation: Video-LLaMA's frame and video Q-Formers pretrained to read the main object's action.

A video captioner learns its static facts (colours, patterns, the background) from captions within a
few hundred steps, but not the action: after 1,200 steps of captions a Video-LLaMA from scratch still
said "moves to the right" of every clip (action 0.17, seed 0), as InstructBLIP-Video did. Its video
Q-Former does learn the action when told it directly (0.77 after 300 steps with motion tokens), and
once it has, a captioner built on it says it (0.84 after 400 steps of captions). So, as Video-LLaMA's
video branch is pretrained before any of its users fine-tune it, the foundations hold one: on the
frozen vision foundation, the frame Q-Former (`query_tokens`, `qformer`) and the video Q-Former with
motion tokens (`video`), trained on fresh events of their own stream with an action head on the
video queries' mean; saved as FOLDER/video (config.json: the Q-Former's config, `num_query_tokens`,
`video_config`; model.safetensors under the names `models.video_llama` gives them; `curves.jsonl`).
Frames are pixels the captioners' own `ImageProcessor` makes.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from panda_jax.data.synthetic.clips import STREAM_FIRST_VIDEO, event_examples
from panda_jax.data.synthetic.sampling import sample_video_spec
from panda_jax.data.synthetic.spec import ACTIONS
from panda_jax.models import blip2_vision, checkpoint
from panda_jax.models.captioner import ImageProcessor
from panda_jax.models.qformer import QFormer, QFormerConfig, QueryTokens, VideoQFormer, frame_queries, qformer_slots
from panda_jax.models.qformer import query_token_slots
from panda_jax.teachers import tiny

log = logging.getLogger("panda_jax.motion")


def events(
    seed: int, start: int, count: int, frames: int, processor: ImageProcessor
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels [count, frames, 3, H, W] of one event (drawn from (seed, index)) of each stream video start … start +
    count - 1 of `seed`, its action's index in ACTIONS, and whether it holds a cut (the framing changes inside)."""
    pixels, actions, cuts = [], [], []
    for index in range(start, start + count):
        spec = sample_video_spec(seed, STREAM_FIRST_VIDEO + index, size=64, duration=8.0)
        number = int(np.random.default_rng([seed, index]).integers(len(spec.events)))
        (example,) = event_examples(spec, [number], frames)
        pixels.append(processor(example["frames"]))
        actions.append(ACTIONS.index(example["facts"]["action"]))
        cuts.append(len(spec.events[number].shots) > 1)
    return np.stack(pixels), np.array(actions), np.array(cuts)


class MotionReader(nnx.Module):
    """The frozen vision encoder, the frame and video Q-Formers (named as in `video_llama.VideoLlama`), and the action
    head on the mean of the video queries' outputs."""

    def __init__(self, vision_model: blip2_vision.VisionEncoder, config: Any, *, rngs: nnx.Rngs):
        qformer = QFormerConfig.from_hf(qformer_config(config) | {"encoder_hidden_size": vision_model.config.hidden_size})
        self.vision_model = vision_model
        self.query_tokens = QueryTokens(config.num_query_tokens, qformer.hidden_size, rngs=rngs)
        self.qformer = QFormer(qformer, rngs=rngs)
        video = config.video
        self.video = VideoQFormer(qformer, config.frames, video.num_query_tokens, video.num_hidden_layers,
                                  motion_tokens=video.motion_tokens, rngs=rngs)  # fmt: skip
        self.head = nnx.Linear(qformer.hidden_size, len(ACTIONS), rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """Action logits of clips [batch, frames, 3, H, W]."""
        _, per_frame = frame_queries(self, pixel_values, self.video.max_frames)
        return self.head(self.video(per_frame).mean(axis=1))


def qformer_config(config: Any) -> dict[str, Any]:
    """The frame Q-Former's config.json fields (BLIP-2's, at the config's sizes)."""
    return tiny.QFORMER | {"model_type": "blip_2_qformer"} | config.qformer.to_dict()


class QFormers(nnx.Module):
    """A reader's Q-Formers alone (the same variables), what the motion foundation saves."""

    def __init__(self, reader: MotionReader):
        self.query_tokens, self.qformer, self.video = reader.query_tokens, reader.qformer, reader.video


def qformer_slots_of(model: QFormers) -> dict[str, checkpoint.Slot]:
    """The Q-Formers' tensors, by the names a "video_llama" checkpoint gives them."""
    return (query_token_slots(model.query_tokens) | qformer_slots(model.qformer, "qformer.")
            | checkpoint.own_slots(model.video, nnx.Param, "video."))  # fmt: skip


def pretrain_motion(config: Any, vision: Path, out: Path) -> dict[str, Any]:
    """The Q-Formers trained to read the action on the frozen encoder in folder `vision`; saved to `out`."""
    began = time.perf_counter()
    encoder = blip2_vision.load(vision)
    processor = ImageProcessor.from_pretrained(vision, encoder.config.image_size)
    model = MotionReader(encoder, config, rngs=nnx.Rngs(config.seed))
    learns = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("vision_model")))
    schedule = optax.warmup_cosine_decay_schedule(config.learning_rate / 20, config.learning_rate, config.warmup_steps,
                                                  max(config.steps, config.warmup_steps + 1), config.learning_rate / 20)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=config.weight_decay), wrt=learns)

    @nnx.jit
    def step(model: MotionReader, optimizer: nnx.Optimizer, pixels: jax.Array, actions: jax.Array) -> jax.Array:
        def loss(model: MotionReader) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(model(pixels), actions).mean()

        value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, learns))(model)
        optimizer.update(model, grads)
        return value

    predict = nnx.jit(lambda model, pixels: model(pixels).argmax(-1))
    held_out = [events(config.eval_seed, start, min(64, config.eval_events - start), config.frames, processor)[:2]
                for start in range(0, config.eval_events, 64)]  # fmt: skip
    curve, loss = [], float("nan")
    for number in range(1, config.steps + 1):
        pixels, actions, _ = events(config.seed, number * config.batch_size, config.batch_size, config.frames, processor)
        loss = step(model, optimizer, jnp.asarray(pixels), jnp.asarray(actions))
        if number % config.eval_every == 0 or number == config.steps:
            right = np.concatenate([np.asarray(predict(model, jnp.asarray(p))) == a for p, a in held_out])
            curve.append({"step": number, "seconds": round(time.perf_counter() - began, 1), "loss": float(loss),
                          "action": float(right.mean())})  # fmt: skip
            log.info("motion step %d (%.0f s): loss %.3f, action %.2f", number, *list(curve[-1].values())[1:])
    hf_config = {"model_type": "video_llama_motion", "dtype": "float32", "qformer_config": qformer_config(config),
                 "num_query_tokens": config.num_query_tokens,
                 "video_config": config.video.to_dict() | {"max_frames": config.frames}}  # fmt: skip
    qformers = QFormers(model)
    checkpoint.save_pretrained(out, hf_config, qformers, qformer_slots_of(qformers))
    (out / "curves.jsonl").write_text("".join(json.dumps(row) + "\n" for row in curve))
    return {"held_out": curve[-1], "seconds": round(time.perf_counter() - began, 1)}
