"""Does a frozen vision encoder let a video model read motion? `python benchmarks/motion_probe.py --vision DIR`.

A head shaped like the video teacher's reader (learned queries cross-attending to each frame's patch tokens, a
frame-position embedding, one self-attention layer across the frames' queries, mean, linear) learns the main
object's action from the frozen features of 8 frames of fresh events of the synthetic stream, and prints held-out
accuracy against steps and seconds, over all events and apart for events that hold a cut (the camera's framing
changes inside them). DIR is a `Blip2VisionModel` folder, e.g. a foundations folder's `vision`.

    python benchmarks/motion_probe.py --vision ~/.cache/panda_jax/foundations/FINGERPRINT/vision --steps 400
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from panda_jax.data.synthetic.spec import ACTIONS
from panda_jax.models import blip2_vision
from panda_jax.models.captioner import ImageProcessor
from panda_jax.motion import events

FRAMES, QUERIES, WIDTH = 8, 4, 96


class VideoHead(nnx.Module):
    """Per frame, QUERIES queries attend to the patch tokens; across frames, one self-attention layer; mean; linear."""

    def __init__(self, vision_width: int, *, rngs: nnx.Rngs):
        self.queries = nnx.Param(0.02 * jax.random.normal(rngs.params(), (QUERIES, WIDTH)))
        self.keys = nnx.Linear(vision_width, WIDTH, rngs=rngs)
        self.cross = nnx.MultiHeadAttention(4, WIDTH, qkv_features=WIDTH, decode=False, rngs=rngs)
        self.frame_position = nnx.Param(0.02 * jax.random.normal(rngs.params(), (FRAMES, 1, WIDTH)))
        self.norm, self.mlp_norm = nnx.LayerNorm(WIDTH, rngs=rngs), nnx.LayerNorm(WIDTH, rngs=rngs)
        self.temporal = nnx.MultiHeadAttention(4, WIDTH, qkv_features=WIDTH, decode=False, rngs=rngs)
        self.mlp = nnx.Sequential(nnx.Linear(WIDTH, 4 * WIDTH, rngs=rngs), nnx.gelu, nnx.Linear(4 * WIDTH, WIDTH, rngs=rngs))
        self.out = nnx.Linear(WIDTH, len(ACTIONS), rngs=rngs)

    def __call__(self, hidden: jax.Array) -> jax.Array:  # [clips, frames, 1 + patches, width] → [clips, actions]
        clips, frames, tokens, _ = hidden.shape
        keys = self.keys(hidden[:, :, 1:]).reshape(clips * frames, tokens - 1, WIDTH)
        queries = jnp.broadcast_to(self.queries[...], (clips * frames, QUERIES, WIDTH))
        x = self.cross(queries, keys, keys).reshape(clips, frames, QUERIES, WIDTH) + self.frame_position[...]
        x = x.reshape(clips, frames * QUERIES, WIDTH)
        x = x + self.temporal(self.norm(x))
        x = x + self.mlp(self.mlp_norm(x))
        return self.out(x.mean(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vision", required=True, help="a Blip2VisionModel folder (a foundations folder's vision)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--held-out", type=int, default=384, help="held-out events (of another seed)")
    args = parser.parse_args()
    encoder = blip2_vision.load(args.vision)
    size = encoder.config.image_size
    processor = ImageProcessor((size, size))
    head = VideoHead(encoder.config.hidden_size, rngs=nnx.Rngs(0))
    schedule = optax.warmup_cosine_decay_schedule(1e-4, 2e-3, 50, max(args.steps, 51), 1e-4)
    optimizer = nnx.Optimizer(head, optax.adamw(schedule), wrt=nnx.Param)

    @nnx.jit
    def features(encoder: blip2_vision.VisionEncoder, pixels: jax.Array) -> jax.Array:
        hidden = encoder(pixels.reshape(-1, *pixels.shape[2:]))
        return hidden.reshape(*pixels.shape[:2], *hidden.shape[1:])

    @nnx.jit
    def step(head: VideoHead, optimizer: nnx.Optimizer, hidden: jax.Array, actions: jax.Array) -> jax.Array:
        def loss(head: VideoHead) -> jax.Array:
            return optax.softmax_cross_entropy_with_integer_labels(head(hidden), actions).mean()

        value, grads = nnx.value_and_grad(loss)(head)
        optimizer.update(head, grads)
        return value

    predict = nnx.jit(lambda head, hidden: head(hidden).argmax(-1))
    held_out = [events(999_983, start, 64, FRAMES, processor) for start in range(0, args.held_out, 64)]
    held_out = [(features(encoder, jnp.asarray(pixels)), actions, cuts) for pixels, actions, cuts in held_out]
    actions = np.concatenate([a for _, a, _ in held_out])
    cuts = np.concatenate([c for _, _, c in held_out])
    began = time.perf_counter()
    for number in range(1, args.steps + 1):
        pixels, labels, _ = events(0, number * args.batch_size, args.batch_size, FRAMES, processor)
        loss = step(head, optimizer, features(encoder, jnp.asarray(pixels)), jnp.asarray(labels))
        if number % args.eval_every == 0 or number == args.steps:
            predicted = np.concatenate([np.asarray(predict(head, hidden)) for hidden, _, _ in held_out])
            right = predicted == actions
            print(json.dumps({"step": number, "seconds": round(time.perf_counter() - began, 1), "loss": float(loss),
                              "action": float(right.mean()), "one_shot": float(right[~cuts].mean()),
                              "with_a_cut": float(right[cuts].mean())}), flush=True)  # fmt: skip
    confusion = np.zeros((len(ACTIONS), len(ACTIONS)), int)
    np.add.at(confusion, (actions, predicted), 1)
    print("confusion (rows: the true action; columns: predicted):", ", ".join(ACTIONS))
    print(confusion)


if __name__ == "__main__":
    main()
