"""Reading Hugging Face checkpoint directories into Flax NNX models.

A checkpoint directory holds `config.json` and the weights as `model.safetensors`, or as
several shards listed by `model.safetensors.index.json`. Every model file builds its module
from the config, abstractly (`nnx.eval_shape`, no random init), and names, for each of its
parameters, the Hugging Face tensor that fills it and how to convert it (`Slot`); `fill` then
reads each tensor once, checks the whole mapping first and refuses a checkpoint that does not
fit, naming every missing, unexpected and misshaped tensor.

Only safetensors are read: they hold nothing but arrays, so an untrusted checkpoint cannot run
code. `read_config` checks the architecture before any weight is opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors import safe_open

from panda_jax.models import CheckpointError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def read_config(directory: str | os.PathLike, model_types: Iterable[str]) -> dict[str, Any]:
    """`config.json` of a checkpoint whose `model_type` is one of `model_types`.

    Raises CheckpointError for a missing directory or config, or another architecture.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a Hugging Face checkpoint directory: no {CONFIG_NAME}")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    model_types = tuple(model_types)
    found = config.get("model_type")
    if found not in model_types:
        raise CheckpointError(
            f"{directory} holds a {found!r} checkpoint ({config.get('architectures')}); "
            f"this loader reads {' or '.join(repr(t) for t in model_types)}"
        )
    return config


class StateDict:
    """Tensors already in memory (a converted PyTorch state dict), named by the file they came from."""

    def __init__(self, tensors: Mapping[str, np.ndarray], name: str | os.PathLike):
        self.tensors, self.name = tensors, str(name)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(array.shape) for name, array in self.tensors.items()}

    def read(self, names: Iterable[str]) -> Iterable[tuple[str, np.ndarray]]:
        return ((name, self.tensors[name]) for name in names)


class SafetensorsCheckpoint:
    """The tensors of a checkpoint directory, single file or sharded, read lazily by name."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.name = str(directory)
        single, index = self.directory / WEIGHTS_NAME, self.directory / WEIGHTS_INDEX_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError) as error:
                raise CheckpointError(f"cannot read the shard index {index}: {error}") from error
            self.files = {name: self.directory / shard for name, shard in weight_map.items()}
        elif single.is_file():
            with safe_open(str(single), framework="numpy") as f:
                self.files = dict.fromkeys(f.keys(), single)
        else:
            raise CheckpointError(f"{directory} has neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}")
        for shard in sorted(set(self.files.values())):
            if not shard.is_file():
                raise CheckpointError(f"shard {shard.name} listed in {index} is missing")

    def names(self) -> set[str]:
        return set(self.files)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape, from the file headers only."""
        shapes = {}
        for shard in sorted(set(self.files.values())):
            with safe_open(str(shard), framework="numpy") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        return shapes

    def read(self, names: Iterable[str]) -> Iterable[tuple[str, np.ndarray]]:
        """Yields (name, array) for `names`, opening each shard once."""
        by_shard: dict[Path, list[str]] = {}
        for name in names:
            by_shard.setdefault(self.files[name], []).append(name)
        for shard, shard_names in sorted(by_shard.items()):
            with safe_open(str(shard), framework="numpy") as f:
                for name in shard_names:
                    yield name, f.get_tensor(name)


@dataclass(frozen=True)
class Slot:
    """Where one checkpoint tensor goes: into `variable`, after `convert`.

    `shape` is the tensor's shape in the checkpoint. Tensors that share a variable (a fused
    projection, a stack of layers) give `part`: their converted values are concatenated along
    `axis` in the order of `part`.
    """

    variable: nnx.Variable
    shape: tuple[int, ...]
    convert: Callable[[np.ndarray], np.ndarray] = lambda array: array
    part: int | None = None
    axis: int = -1


def transpose(array: np.ndarray) -> np.ndarray:
    """A torch Linear weight (out, in) as a Flax kernel (in, out)."""
    return array.T


def linear_slots(prefix: str, layer: nnx.Linear) -> dict[str, Slot]:
    """Slots of a torch `nn.Linear` named `prefix` (weight, and bias if the layer has one)."""
    in_features, out_features = layer.kernel.shape
    slots = {f"{prefix}.weight": Slot(layer.kernel, (out_features, in_features), transpose)}
    if layer.bias is not None:
        slots[f"{prefix}.bias"] = Slot(layer.bias, (out_features,))
    return slots


def layer_norm_slots(prefix: str, norm: nnx.LayerNorm | nnx.RMSNorm) -> dict[str, Slot]:
    """Slots of a torch LayerNorm (weight, bias) or RMSNorm (weight) named `prefix`."""
    slots = {f"{prefix}.weight": Slot(norm.scale, tuple(norm.scale.shape))}
    if getattr(norm, "bias", None) is not None:
        slots[f"{prefix}.bias"] = Slot(norm.bias, tuple(norm.bias.shape))
    return slots


def embedding_slots(prefix: str, embed: nnx.Embed) -> dict[str, Slot]:
    return {f"{prefix}.weight": Slot(embed.embedding, tuple(embed.embedding.shape))}


def fill(
    checkpoint: SafetensorsCheckpoint | StateDict,
    model: nnx.Module,
    slots: Mapping[str, Slot],
    *,
    ignore: Callable[[str], bool] = lambda name: False,
    what: str = "the model",
    dtype: Any = jnp.float32,
) -> None:
    """Reads every slot's tensor into its variable of `model`, after checking the checkpoint fits.

    `model` is the module (or part of one) the slots fill; every parameter of it must have a
    slot. Tensors for which `ignore(name)` holds (buffers such as position ids, heads not used
    here) may be present or not. Raises CheckpointError naming every missing, unexpected and
    misshaped tensor before any weight is read.
    """
    targets = {id(slot.variable) for slot in slots.values()}
    unfilled = [
        ".".join(map(str, path))
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Param) and id(node) not in targets
    ]
    if unfilled:  # a loader bug, not a bad checkpoint
        raise CheckpointError(f"{what}: no checkpoint tensor fills {', '.join(unfilled)}")
    shapes = checkpoint.shapes()
    problems = []
    missing = sorted(set(slots) - set(shapes))
    unexpected = sorted(name for name in set(shapes) - set(slots) if not ignore(name))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    for name in sorted(set(slots) & set(shapes)):
        if shapes[name] != tuple(slots[name].shape):
            problems.append(f"tensor {name} has shape {shapes[name]}, expected {tuple(slots[name].shape)}")
    if problems:
        raise CheckpointError(f"{checkpoint.name} does not fit {what}: " + "; ".join(problems))

    parts: dict[int, tuple[Slot, dict[int, np.ndarray]]] = {}
    for name, array in checkpoint.read(slots):
        slot = slots[name]
        value = slot.convert(np.asarray(array, np.float32))
        if slot.part is None:
            _set(slot.variable, value, dtype, name)
        else:
            parts.setdefault(id(slot.variable), (slot, {}))[1][slot.part] = value
    for slot, pieces in parts.values():
        _set(slot.variable, np.concatenate([pieces[i] for i in sorted(pieces)], axis=slot.axis), dtype, "parts")


def _set(variable: nnx.Variable, value: np.ndarray, dtype: Any, name: str) -> None:
    expected = tuple(variable.shape)
    if value.shape != expected:  # a loader bug, not a bad checkpoint
        raise CheckpointError(f"{name} converts to shape {value.shape}, but the variable is {expected}")
    variable.set_value(jnp.asarray(value, dtype))


def abstract(build: Callable[[], nnx.Module]) -> nnx.Module:
    """The module `build` makes, with shapes only: the loader fills every parameter."""
    return nnx.eval_shape(build)


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The tokenizer saved in the checkpoint directory (transformers' AutoTokenizer, offline)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"no usable tokenizer in {directory}: {error}") from error
