"""The learnability probe: `python -m panda_jax.probe --out DIR [--config=probe[:VARIANT]]`.

Decides the world and the recipes by curves: heads on a vision encoder (trained with it or on its
frozen features) read every fact of `synthetic.frames.FACTS` from frames of the endless stream, and
the main object's action from two frames of its event; the held-out accuracy of each is printed and
plotted against steps and seconds. A fact a frame shows but the encoder does not learn within the
budget is a fact no teacher will read.

    python -m panda_jax.probe --out runs/probe                                   # a ViT from scratch
    python -m panda_jax.probe --out runs/probe_f --config=probe:frozen --config.encoder.checkpoint=DIR
    python -m panda_jax.probe --out runs/probe --config.dense_weight=0 --config.encoder.patch_size=4

The model and its loss are also the vision foundation's pretraining (panda_jax.foundations):
pooled heads per fact on [CLS, mean of the patches]; weighted by `dense_weight`, per-patch heads for
the colour, pattern and size of the object each patch shows; weighted by `motion_weight`, a head on
the pooled features of both frames for the action (without it, a frozen encoder's features told a
video head growing from shrinking but not left from right: 0.52 action after 1,500 steps).
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from panda_jax import cli
from panda_jax.data.synthetic.frames import FACTS, OBJECT_FACTS, SceneFrames, patch_labels
from panda_jax.data.synthetic.spec import ACTIONS
from panda_jax.models import blip2_vision
from panda_jax.models.captioner import ImageProcessor

log = logging.getLogger("panda_jax.probe")
OBJECT_CLASSES = {fact: 1 + len(FACTS[f"main_{fact}"]) for fact in OBJECT_FACTS}  # the background is class 0
BOTH = "main_color_and_pattern"  # the image teacher's target: both right, on frames with one object
MOTION = "action"  # the main object's, read from an example's two frames
REPORTED = (*FACTS, BOTH, MOTION)  # the curves' columns


class FrameReader(nnx.Module):
    """A vision encoder with a linear head per fact (pooled), one per object fact (per patch), and a motion head:
    an MLP on both frames' pooled features and their difference."""

    def __init__(self, encoder: blip2_vision.VisionEncoder, *, rngs: nnx.Rngs):
        width = encoder.config.hidden_size
        self.encoder = encoder
        self.heads = nnx.Dict({fact: nnx.Linear(2 * width, len(classes), rngs=rngs) for fact, classes in FACTS.items()})
        self.patch_heads = nnx.Dict({fact: nnx.Linear(width, n, rngs=rngs) for fact, n in OBJECT_CLASSES.items()})
        self.motion = nnx.Sequential(nnx.Linear(6 * width, 2 * width, rngs=rngs), nnx.gelu,
                                     nnx.Linear(2 * width, len(ACTIONS), rngs=rngs))  # fmt: skip

    def __call__(
        self, pixels: jax.Array, frozen: bool = False
    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], jax.Array]:
        """pixels [B, 2, 3, H, W] → per fact [B, 2, classes], per object fact [B, 2, patches, classes], the action
        [B, actions]."""
        pairs = pixels.shape[0]
        hidden = self.encoder(pixels.reshape(2 * pairs, *pixels.shape[2:]))
        hidden = jax.lax.stop_gradient(hidden) if frozen else hidden
        pooled = jnp.concatenate([hidden[:, 0], hidden[:, 1:].mean(1)], axis=-1).reshape(pairs, 2, -1)
        patches = hidden[:, 1:].reshape(pairs, 2, hidden.shape[1] - 1, -1)
        earlier, later = pooled[:, 0], pooled[:, 1]
        return ({fact: head(pooled) for fact, head in self.heads.items()},
                {fact: head(patches) for fact, head in self.patch_heads.items()},
                self.motion(jnp.concatenate([earlier, later, later - earlier], axis=-1)))  # fmt: skip


def reader_loss(model: FrameReader, batch: dict[str, jax.Array], weights: tuple[float, float], frozen: bool) -> jax.Array:
    """Cross-entropy of every pooled fact on both frames, plus `weights` (dense, motion) times that of every patch's
    object facts and that of the action."""
    pooled, patches, motion = model(batch["pixels"], frozen)
    dense_weight, motion_weight = weights
    loss = sum(optax.softmax_cross_entropy_with_integer_labels(pooled[f], batch[f][:, None]).mean() for f in FACTS)
    if dense_weight:
        loss += dense_weight * sum(
            optax.softmax_cross_entropy_with_integer_labels(patches[f], batch[f"patch_{f}"]).mean() for f in OBJECT_FACTS
        )
    if motion_weight:
        loss += motion_weight * optax.softmax_cross_entropy_with_integer_labels(motion, batch[MOTION]).mean()
    return loss


class FrameBatches:
    """Examples `start`, `start + 1`, … of a stream as model inputs: both frames' pixels by the captioners' own
    preprocessing, each fact's class, the action, and per frame and patch the class of each object fact."""

    def __init__(self, frames: SceneFrames, image_size: int, patch_size: int):
        self.frames, self.patch_size = frames, patch_size
        self.processor = ImageProcessor((image_size, image_size))

    def example(self, index: int) -> dict[str, np.ndarray]:
        item = self.frames[index]
        scale = self.patch_size * item["frames"].shape[1] // self.processor.size[0]
        objects = np.stack([patch_labels(frame_objects, scale) for frame_objects in item["objects"]])
        out = {"frames": item["frames"], "one_object": np.bool_(item["one_object"]), MOTION: np.int32(item["action"])}
        out |= {fact: np.int32(value) for fact, value in item["labels"].items()}
        return out | {f"patch_{fact}": classes[objects] for fact, classes in item["object_classes"].items()}

    def batches(self, start: int, batch_size: int, workers: int) -> Iterator[dict[str, np.ndarray]]:
        import grain

        from panda_jax.data.pipeline import ensure_absl_flags_parsed

        dataset = grain.MapDataset.range(start, len(self.frames)).map(self.example).to_iter_dataset().batch(batch_size)
        if workers:
            ensure_absl_flags_parsed()
            dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
        for batch in dataset:
            frames = batch.pop("frames")
            pixels = self.processor(frames.reshape(-1, *frames.shape[2:]))
            yield {"pixels": pixels.reshape(*frames.shape[:2], *pixels.shape[1:])} | batch


def make_encoder(config: Any, seed: int) -> blip2_vision.VisionEncoder:
    """The encoder the config names: loaded from `encoder.checkpoint`, or new at its sizes."""
    spec = config.encoder
    if spec.checkpoint:
        return blip2_vision.load(spec.checkpoint)
    vision = blip2_vision.VisionConfig(
        hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size, num_layers=spec.num_hidden_layers,
        num_heads=spec.num_attention_heads, image_size=config.image_size, patch_size=spec.patch_size,
    )  # fmt: skip
    encoder = blip2_vision.VisionEncoder(vision, rngs=nnx.Rngs(seed))
    if spec.sincos_positions:
        grid = config.image_size // spec.patch_size
        encoder.embeddings.position_embedding.value = jnp.asarray(sincos_positions(grid, spec.hidden_size))
    return encoder


def sincos_positions(grid: int, width: int) -> np.ndarray:
    """MAE's fixed 2D sine-cosine positions, [1 + grid², width] (the class token's zero): half the channels code
    the patch's column, half its row, at geometric frequencies."""
    quarter = width // 4
    frequencies = 1 / 10_000 ** (np.arange(quarter) / quarter)
    rows, columns = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    angles = [np.outer(axis.ravel(), frequencies) for axis in (columns, rows)]
    table = np.concatenate([f(angle) for angle in angles for f in (np.sin, np.cos)], axis=1)
    table = np.pad(table, ((0, 0), (0, width - table.shape[1])))
    return np.concatenate([np.zeros((1, width)), table]).astype(np.float32)


def accuracies(model: FrameReader, predict: Any, batches: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Held-out accuracy of every fact (on both frames), of the main colour and pattern together on one-object
    frames, and of the action."""
    right: dict[str, list[np.ndarray]] = {fact: [] for fact in (*FACTS, MOTION)}
    one = []
    for batch in batches:
        predicted = predict(model, batch["pixels"])
        for fact in FACTS:
            right[fact].append(np.asarray(predicted[fact]) == batch[fact][:, None])
        right[MOTION].append(np.asarray(predicted[MOTION]) == batch[MOTION])
        one.append(np.repeat(batch["one_object"][:, None], 2, axis=1))
    hits = {fact: np.concatenate(values) for fact, values in right.items()}
    alone = np.concatenate(one)
    both = hits["main_color"] & hits["main_pattern"]
    return {fact: float(values.mean()) for fact, values in hits.items()} | {BOTH: float(both[alone].mean())}


def train_reader(config: Any, on_eval: Any = None) -> tuple[FrameReader, list[dict[str, float]]]:
    """Trains a FrameReader as `config` says; returns it and the curve (one row per evaluation)."""
    train = config.train
    encoder = make_encoder(config, train.seed)
    model = FrameReader(encoder, rngs=nnx.Rngs(train.seed + 1))
    schedule = optax.warmup_cosine_decay_schedule(train.learning_rate / 20, train.learning_rate, train.warmup_steps,
                                                  max(train.steps, train.warmup_steps + 1), train.learning_rate / 20)
    trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("encoder"))) if config.frozen else nnx.Param
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=train.weight_decay), wrt=trainable)
    weights, frozen = (config.dense_weight, config.motion_weight), config.frozen
    patch = encoder.config.patch_size

    @nnx.jit
    def step(model: FrameReader, optimizer: nnx.Optimizer, batch: dict[str, jax.Array]) -> jax.Array:
        grad = nnx.value_and_grad(reader_loss, argnums=nnx.DiffState(0, trainable))
        loss, grads = grad(model, batch, weights, frozen)
        optimizer.update(model, grads)
        return loss

    @nnx.jit
    def predict(model: FrameReader, pixels: jax.Array) -> dict[str, jax.Array]:
        pooled, _, motion = model(pixels)
        return {fact: logits.argmax(-1) for fact, logits in pooled.items()} | {MOTION: motion.argmax(-1)}

    held_out = FrameBatches(SceneFrames(config.world.eval_seed, config.world.size), config.image_size, patch)
    eval_batches = list(itertools.islice(held_out.batches(0, train.batch_size, 0), -(-train.eval_pairs // train.batch_size)))
    stream = FrameBatches(SceneFrames(config.world.seed, config.world.size), config.image_size, patch)
    batches = stream.batches(0, train.batch_size, train.workers)
    curve, began, loss = [], time.perf_counter(), float("nan")
    for number in range(1, train.steps + 1):
        batch = next(batches)
        loss = step(model, optimizer, {name: value for name, value in batch.items() if name != "one_object"})
        if number % train.eval_every == 0 or number == train.steps:
            row = {"step": number, "seconds": round(time.perf_counter() - began, 1), "loss": float(loss)}
            row |= accuracies(model, predict, eval_batches)
            curve.append(row)
            log.info("step %d (%.0f s): loss %.3f; %s", number, row["seconds"], row["loss"],
                     ", ".join(f"{fact} {row[fact]:.2f}" for fact in REPORTED))  # fmt: skip
            if on_eval is not None:
                on_eval(row)
    return model, curve


def plot_curves(curve: Sequence[dict[str, float]], path: Path, title: str) -> None:
    """Held-out accuracy of each fact against steps (left) and seconds (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for fact in REPORTED:
        for axis, x in zip(axes, ("step", "seconds")):
            axis.plot([row[x] for row in curve], [row[fact] for row in curve], label=fact,
                      linewidth=2.5 if fact in (BOTH, MOTION) else 1.2)  # fmt: skip
    axes[0].set(xlabel="step", ylabel="held-out accuracy", ylim=(0, 1), title=title)
    axes[1].set(xlabel="seconds")
    axes[1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    from absl import flags

    def define(flag_values: flags.FlagValues) -> None:
        flags.DEFINE_string("out", None, "output folder (config field `out`)", flag_values=flag_values)

    command = cli.parse(argv, program="python -m panda_jax.probe", doc=__doc__, default_config="probe", define=define,
                        shorthands={"out": "out"})  # fmt: skip
    config = command.config
    if not config.out:
        command.fail("give the output folder: --out DIR")
    if config.frozen and not config.encoder.checkpoint:
        command.fail("a frozen encoder must be a trained one: give --config.encoder.checkpoint=DIR")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json(indent=2) + "\n")
    with (out / "curves.jsonl").open("w") as rows:

        def write(row: dict[str, float]) -> None:  # as it comes: a long probe shows its curve while it runs
            rows.write(json.dumps(row) + "\n")
            rows.flush()

        _, curve = train_reader(config, write)
    plot_curves(curve, out / "curves.png", "frozen encoder" if config.frozen else "encoder trained with its heads")
    last = curve[-1]
    print(f"after {last['step']} steps ({last['seconds']:.0f} s), held-out accuracy per fact:")
    chance = {fact: 1 / len(classes) for fact, classes in FACTS.items()} | {MOTION: 1 / len(ACTIONS)}
    for fact in REPORTED:
        print(f"  {fact:22s} {last[fact]:.3f}   (chance {chance[fact]:.3f})" if fact in chance
              else f"  {fact:22s} {last[fact]:.3f}   (one-object frames)")  # fmt: skip
    print(f"curves: {out / 'curves.jsonl'}, {out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
