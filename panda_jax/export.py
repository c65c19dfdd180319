"""A trained model as a checkpoint folder: `python -m panda_jax.export --checkpoint WORKDIR --out DIR`.

    python -m panda_jax.export --checkpoint runs/selector --out weights/selector_finetuned
    python -m panda_jax.select ... --checkpoint weights/selector_finetuned
    python -m panda_jax.export --checkpoint runs/student --out weights/student --step 20000
    python -m panda_jax.caption ... --config=teachers:student --config.checkpoint=weights/student

`--checkpoint` is a `python -m panda_jax.train` work folder (or one of its checkpoints/<step>):
the model is built again from the run's config.json, its trained parameters restored from the
Orbax checkpoint (the latest, or `--step`), and written the way its loader reads it:

  retrieval  a `Blip2ForImageTextRetrieval` folder (transformers reads it) with the video layers
             beside: `select --checkpoint` takes it;
  student    config.json (its BLIP-2's and its own), the BLIP-2's tensors under their transformers
             names and the student's layers: the caption stage's `student` teacher takes it;
  captioner  the folder transformers and the caption stage read like a released checkpoint.

Tokenizers and image processor settings come along. An existing, non-empty `--out` is refused.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from absl import flags

from panda_jax import cli


def trained_model(workdir: str | Path, step: int | None = None) -> tuple[ml_collections.ConfigDict, object]:
    """(the run's config, its task with the model holding the trained parameters of `step`, default the latest)."""
    import orbax.checkpoint as ocp
    from flax import nnx

    from panda_jax.tasks import TASKS

    workdir = Path(workdir)
    if workdir.parent.name == "checkpoints" and workdir.name.isdigit():  # a checkpoint of the run
        workdir, step = workdir.parent.parent, int(workdir.name) if step is None else step
    if not (workdir / "config.json").is_file() or not (workdir / "checkpoints").is_dir():
        raise FileNotFoundError(f"{workdir} is not a training work folder (config.json and checkpoints/); "
                                "`python -m panda_jax.train --workdir DIR` makes one")  # fmt: skip
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    manager = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(read_only=True))
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
        raise FileNotFoundError(f"{workdir / 'checkpoints'} has no checkpoint {step}; it has {manager.all_steps()}")
    task = TASKS[config.model](config, None)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    parameters = nnx.state(task.model, task.trainable)
    nnx.replace_by_pure_dict(parameters, restored["state"]["params"])
    nnx.update(task.model, parameters)
    return config, task


def _define_flags(flag_values: flags.FlagValues) -> None:
    flags.DEFINE_string("checkpoint", None, "a training work folder, or one of its checkpoints/<step>",
                        flag_values=flag_values)  # fmt: skip
    flags.DEFINE_string("out", None, "the checkpoint folder to write (must not exist, or be empty)",
                        flag_values=flag_values)  # fmt: skip
    flags.DEFINE_integer("step", None, "which checkpoint (default: the latest)", flag_values=flag_values)


def main(argv: Sequence[str] | None = None) -> int:
    command = cli.parse(argv, program="python -m panda_jax.export", doc=__doc__, default_config=None,
                        define=_define_flags)  # fmt: skip
    values = command.flags
    if not values["checkpoint"].value or not values["out"].value:
        command.fail("give the training work folder and where to write: --checkpoint WORKDIR --out DIR")
    out = Path(values["out"].value)
    if out.is_dir() and any(out.iterdir()):
        command.fail(f"{out} is not empty; give a new folder")
    try:
        config, task = trained_model(values["checkpoint"].value, values["step"].value)
    except (FileNotFoundError, ValueError) as error:
        command.fail(str(error))
    if task.export is None:
        command.fail(f"a {config.model} model has no export yet")
    task.export(task.model, out)
    print(f"wrote the trained {config.model} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
