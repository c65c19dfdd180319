"""The demo's stage runner: each stage runs once, and again only when what makes it changed."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

import panda_jax
from panda_jax import cli
from panda_jax.files import atomic_output


@dataclasses.dataclass(frozen=True)
class Config:
    """A command's config as its command line gives it: `--config=SPEC --config.OVERRIDE ...`."""

    spec: str
    overrides: tuple[str, ...] = ()

    def flags(self) -> list[str]:
        return [f"--config={self.spec}", *(f"--config.{override}" for override in self.overrides)]

    def resolve(self) -> ml_collections.ConfigDict:
        """The config the command runs with: the config file's `get_config` with the overrides applied, as
        `cli.parse` applies them."""
        return cli.parse(self.flags(), program="python -m panda_jax.demo", doc="", default_config=self.spec).config


@dataclasses.dataclass(frozen=True)
class Step:
    """What a stage does: `function` runs the commands of `configs` and makes `outputs` (removed before it runs);
    `settings` are its other inputs (demo fields no config holds)."""

    function: Callable[[], Any]
    outputs: Sequence[Path] = ()
    configs: Sequence[Config] = ()
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class Stages:
    """Runs each stage once: a stage whose record (OUT/stages/NAME.json) holds the same inputs (`key`) is reused, one
    whose inputs changed is run again from scratch (its outputs removed first)."""

    def __init__(self, out: Path):
        self.out, self.seconds, self.runs = out, {}, {}  # runs: stage name → the id of the run its outputs are from

    def key(self, step: Step, after: Sequence[str] = ()) -> dict[str, Any]:
        """A stage's inputs: the package version, the run of each stage whose outputs it reads (`after`: a stage that
        ran again makes it run again), the resolved config of each command it runs and its settings, as JSON."""
        inputs = {"version": panda_jax.__version__, "after": {name: self.runs[name] for name in after},
                  "configs": {config.spec: config.resolve().to_dict() for config in step.configs}, **step.settings}
        return json.loads(json.dumps(inputs, default=str))

    def run(self, name: str, step: Step, after: Sequence[str] = ()) -> Any:
        """The stage's result: the recorded one when its inputs are unchanged, else `step.function()`'s."""
        record, inputs = self.out / "stages" / f"{name}.json", self.key(step, after)
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved["inputs"] == inputs:
                self.seconds[name], self.runs[name] = saved["seconds"], saved["run"]
                print(f"== {name}: reused ({saved['seconds']:.0f} s when it ran)", flush=True)
                return saved["result"]
        for path in step.outputs:
            shutil.rmtree(path, ignore_errors=True)
        print(f"== {name}", flush=True)
        began = time.perf_counter()
        result = step.function()
        self.seconds[name], self.runs[name] = time.perf_counter() - began, uuid.uuid4().hex
        record.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(record) as temporary:  # a kill leaves the old record or none, never half of one
            temporary.write_text(json.dumps({"inputs": inputs, "run": self.runs[name], "seconds": self.seconds[name],
                                             "result": result}, indent=1))  # fmt: skip
        print(f"   {name}: {self.seconds[name]:.1f} s", flush=True)
        return result


def command(main: Callable[[list[str]], int], argv: list[str], allowed: tuple[int, ...] = (0,)) -> int:
    """Runs a stage's command line in this process; a status outside `allowed` stops the demo."""
    status = main(argv)
    if status not in allowed:
        raise RuntimeError(f"a demo stage failed (status {status}): {' '.join(argv)}")
    return status
