"""Training: `python -m panda_jax.train --config=student|retrieval|PATH[:VARIANT] --workdir DIR`.

    python -m panda_jax.train --config=student:tiny --workdir runs/student_tiny        # a minute on a CPU
    python -m panda_jax.train --config=student --workdir runs/student --config.data.data_dir=~/tensorflow_datasets
    python -m panda_jax.train --config=retrieval --workdir runs/selector --config.train.batch_size=64

One loop for every model, read top to bottom in `train_and_evaluate`: the model comes from
panda_jax/models (the student around a frozen BLIP-2, or the caption selector), the data from
panda_jax.data.pipeline (Grain over the `panda70m` TFDS dataset, or the synthetic world's clips, endless or fixed),
the losses from panda_jax.models.student and panda_jax.losses. Only the trainable parameters
are in the optimizer (optax AdamW with warmup then cosine decay); a step is jitted over a
('data', 'model') mesh, the batch split over 'data' and the parameters placed by the
logical-axis rules. Every `checkpoint_every` steps Orbax saves the trainable parameters, the
optimizer state, the step and the Grain iterator's position, so a killed run resumes where it
stopped and ends with the parameters an uninterrupted run ends with. Metrics go to stdout,
WORKDIR/metrics.jsonl and TensorBoard (WORKDIR/tensorboard).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from flax import nnx

from panda_jax import cli
from panda_jax.tasks import TASKS, Task, data_sources
from panda_jax.models import checkpoint, sharding

log = logging.getLogger("panda_jax.train")

# --- The optimizer and the step -------------------------------------------------------------


def learning_rate_schedule(train: Any, steps: int) -> optax.Schedule:
    """Linear warmup from `warmup_init` to `learning_rate`, then cosine decay to `end_learning_rate` at `steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=train.warmup_init, peak_value=train.learning_rate, warmup_steps=train.warmup_steps,
        decay_steps=max(steps, train.warmup_steps + 1), end_value=train.end_learning_rate,
    )  # fmt: skip


def model_inputs(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of a pipeline batch the model reads: frames as NCHW pixel values, no strings."""
    arrays = {name: value for name, value in batch.items() if name != "frames" and value.dtype.kind not in "SUO"}
    return arrays | {"pixel_values": np.ascontiguousarray(np.moveaxis(batch["frames"], -1, 2))}


def make_train_step(task: Task, accumulation: int) -> Callable:
    """One optimizer step: gradients of the trainable parameters, averaged over `accumulation` slices of the batch."""
    gradients = nnx.value_and_grad(task.loss, argnums=nnx.DiffState(0, task.trainable), has_aux=True)

    @nnx.jit
    def train_step(model: nnx.Module, optimizer: nnx.Optimizer, batch: dict[str, jax.Array], rng: jax.Array):
        total, metrics = None, None
        for index in range(accumulation):
            part = jax.tree.map(lambda x: x.reshape(accumulation, -1, *x.shape[1:])[index], batch)
            (_, part_metrics), grads = gradients(model, part, jax.random.fold_in(rng, index))
            total = grads if total is None else jax.tree.map(jnp.add, total, grads)
            metrics = part_metrics if metrics is None else jax.tree.map(jnp.add, metrics, part_metrics)
        optimizer.update(model, jax.tree.map(lambda g: g / accumulation, total))
        return jax.tree.map(lambda m: m / accumulation, metrics)

    return train_step


def evaluate(task: Task, eval_step: Callable, mesh: Any, batches: Iterator[dict[str, Any]], step: int) -> dict[str, float]:
    """Mean metrics over the eval set of `eval_step` (the task's loss, jitted once for the run; no parameter
    changes; the loss's random draws fixed by the step)."""
    sums: dict[str, float] = {}
    count = 0
    for number, batch in enumerate(batches):
        inputs = sharding.shard_batch(model_inputs(batch), mesh)
        metrics = eval_step(task.model, inputs, jax.random.key(number + step))
        size = len(batch["frames"])
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + float(value) * size
        count += size
    return {name: value / count for name, value in sums.items()} if count else {}


# --- Checkpoints and metrics ----------------------------------------------------------------


class MetricWriter:
    """Metrics to the log, WORKDIR/metrics.jsonl and TensorBoard; a resumed run first forgets what it logged
    after its checkpoint, so the records read like one uninterrupted run."""

    def __init__(self, workdir: Path, resumed_step: int):
        from tensorboardX import SummaryWriter

        self.path = workdir / "metrics.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resumed_step]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"), purge_step=resumed_step + 1)

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        log.info("step %d %s: %s", step, split, ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()))
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, "split": split, **metrics}) + "\n")
        for name, value in metrics.items():
            self.tensorboard.add_scalar(f"{split}/{name}", value, step)
        self.tensorboard.flush()


def saved_state(model: nnx.Module, optimizer: nnx.Optimizer, trainable: Any) -> dict[str, Any]:
    """What a checkpoint holds of the model: the trainable parameters and the optimizer's state."""
    return {"params": nnx.to_pure_dict(nnx.state(model, trainable)), "optimizer": nnx.to_pure_dict(nnx.state(optimizer))}


def restore_state(model: nnx.Module, optimizer: nnx.Optimizer, trainable: Any, restored: dict[str, Any]) -> None:
    params, optimizer_state = nnx.state(model, trainable), nnx.state(optimizer)
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(optimizer_state, restored["optimizer"])
    nnx.update(model, params)
    nnx.update(optimizer, optimizer_state)


# --- The loop -------------------------------------------------------------------------------


def train_and_evaluate(config: Any, workdir: str | Path) -> dict[str, Any]:
    """Trains `config.model` for `config.train.steps` steps (or `epochs`) in `workdir`, resuming what is there;
    returns the summary it also writes to WORKDIR/summary.json."""
    import grain
    import orbax.checkpoint as ocp

    from panda_jax.data.pipeline import make_dataset

    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
    train = config.train
    if train.batch_size % train.grad_accumulation:
        raise ValueError(f"batch_size {train.batch_size} is not a multiple of grad_accumulation {train.grad_accumulation}")
    mesh = sharding.make_mesh(**sharding.parse_mesh(train.mesh))
    task = TASKS[config.model](config, mesh)
    train_source, eval_source = data_sources(config)
    steps = train.steps or train.epochs * len(train_source) // train.batch_size
    pipeline = dict(num_frames=train.num_frames, image_size=train.image_size, seed=train.seed, **task.data)
    batches = iter(make_dataset(train_source, train=True, batch_size=train.batch_size, crop_scale=tuple(train.crop_scale),
                                worker_count=train.workers, **pipeline))  # fmt: skip
    schedule = learning_rate_schedule(train, steps)
    optimizer = nnx.Optimizer(task.model, optax.adamw(schedule, b1=train.b1, b2=train.b2,
                                                      weight_decay=train.weight_decay), wrt=task.trainable)  # fmt: skip
    if train.fsdp:  # parameters and optimizer state split over 'data' too, gathered where a step needs them
        sharding.shard_model(task.model, mesh, fsdp=True)
    sharding.shard_model(optimizer, mesh, fsdp=train.fsdp)  # placed like the parameters: one compilation
    manager = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
        max_to_keep=train.keep_checkpoints, create=True))  # fmt: skip
    start = manager.latest_step() or 0
    if start:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, saved_state(task.model, optimizer, task.trainable))
        restored = manager.restore(start, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(batches)))  # fmt: skip
        restore_state(task.model, optimizer, task.trainable, restored["state"])
        log.info("resumed from step %d of %d in %s", start, steps, workdir)
    writer = MetricWriter(workdir, start)
    train_step = make_train_step(task, train.grad_accumulation)
    eval_step = nnx.jit(lambda model, batch, rng: task.loss(model, batch, rng)[1])
    key = jax.random.key(train.seed)

    def eval_batches() -> Iterator[dict[str, Any]]:
        return iter(make_dataset(eval_source, train=False, batch_size=train.batch_size, **pipeline))

    began, trained, metrics = time.perf_counter(), 0, {}
    for step in range(start + 1, steps + 1):
        batch = sharding.shard_batch(model_inputs(next(batches)), mesh)
        metrics = train_step(task.model, optimizer, batch, jax.random.fold_in(key, step))
        trained += 1
        if step % train.log_every == 0 or step == steps:
            elapsed = time.perf_counter() - began
            writer.write(step, "train", {name: float(value) for name, value in metrics.items()}
                         | {"learning_rate": float(schedule(step - 1)),
                            "examples_per_second": trained * train.batch_size / elapsed})  # fmt: skip
        if eval_source is not None and (step % train.eval_every == 0 or step == steps):
            writer.write(step, "eval", evaluate(task, eval_step, mesh, eval_batches(), step))
        if step % train.checkpoint_every == 0 or step == steps:
            manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(saved_state(task.model, optimizer, task.trainable)),
                data=grain.checkpoint.CheckpointSave(batches)))  # fmt: skip
    manager.wait_until_finished()
    seconds = time.perf_counter() - began
    summary = {
        "model": config.model, "steps": steps, "resumed_from": start, "trained_steps": trained,
        "seconds": round(seconds, 3), "examples_per_second": round(trained * train.batch_size / seconds, 3) if trained else None,
        "final": {name: float(value) for name, value in metrics.items()}, "checkpoints": str(workdir / "checkpoints"),
    }  # fmt: skip
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "where checkpoints, metrics and TensorBoard logs go (config field `workdir`); "
                        "a run resumes what is there", flag_values=flag_values)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    command = cli.parse(argv, program="python -m panda_jax.train", doc=__doc__, default_config="student",
                        define=_define_flags, shorthands={"workdir": "workdir"})  # fmt: skip
    config = command.config
    if not command.flags["verbose"].value:
        logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax reports every file it writes
    if not config.get("workdir"):
        command.fail("give the work folder: --workdir DIR")
    if config.get("model") not in TASKS:
        command.fail(f"config.model must be one of {', '.join(TASKS)}, not {config.get('model')!r}")
    try:
        summary = train_and_evaluate(config, config.workdir)
    except (ValueError, FileNotFoundError, checkpoint.CheckpointError) as error:
        print(f"python -m panda_jax.train: error: {error}", file=sys.stderr)
        return 2
    print(f"trained {config.model} for {summary['trained_steps']} steps (to step {summary['steps']}) in "
          f"{summary['seconds']:.1f} s, {summary['examples_per_second']} examples/s; final {summary['final']}; "
          f"checkpoints in {summary['checkpoints']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
