"""Reading Hugging Face checkpoint directories into Flax NNX models.

A checkpoint directory holds `config.json` and the weights as `model.safetensors`, or as
several shards listed by `model.safetensors.index.json`. Every model file builds its module
from the config, abstractly (`nnx.eval_shape`, no random init), and names, for each of its
parameters, the Hugging Face tensor that fills it and how to convert it (`Slot`); `fill` then
reads each tensor once, checks the whole mapping first and refuses a checkpoint that does not
fit, naming every missing, unexpected and misshaped tensor. Given a device mesh, `fill` puts
each tensor straight into its place on the mesh as it is read, so a model too large for one
device loads without ever being whole on one.

Only safetensors are read: they hold nothing but arrays, so an untrusted checkpoint cannot run
code. `read_config` checks the model type and architecture before any weight is opened.
Weights that come from elsewhere (TransNetV2's and LPIPS' PyTorch files) are converted once
into such a directory (`save`), so that every model loads the same way.

The way back uses the same slots: each states the inverse of its conversion (`Slot.revert`),
so `state_dict` gives a model's tensors as the checkpoint held them and `save_pretrained`
writes a directory that transformers and these loaders read, e.g. after training.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from panda_jax.files import atomic_directory
from panda_jax.models import CheckpointError
from panda_jax.models.sharding import variable_sharding

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
# Buffers older transformers versions saved beside the weights; never parameters, always accepted.
POSITION_IDS = r"(.+\.)?position_ids"


def read_config(
    directory: str | os.PathLike, model_types: Iterable[str] | None = None, architectures: Iterable[str] = ()
) -> dict[str, Any]:
    """`config.json` of a checkpoint directory, checked against what the caller reads.

    Its `model_type` must be one of `model_types` (None: any), and its `architectures`, when it
    names some, must include one of `architectures` (empty: any): model types alone do not
    tell BLIP-2's captioning and retrieval checkpoints apart. Raises CheckpointError for a
    missing directory or config, or another architecture, naming what was found and what
    this loader reads, before any weight is opened.
    """
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a Hugging Face checkpoint directory: no {CONFIG_NAME}")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {path}: {error}") from error
    found_type, found_architectures = config.get("model_type"), config.get("architectures") or []
    architectures = tuple(architectures)
    model_types = None if model_types is None else tuple(model_types)
    if (model_types is not None and found_type not in model_types) or (
        architectures and found_architectures and not set(found_architectures) & set(architectures)
    ):
        reads = " or ".join(map(repr, model_types)) if model_types else "any model type"
        raise CheckpointError(
            f"{directory} holds a {found_type!r} checkpoint ({', '.join(found_architectures) or 'no architectures'}); "
            f"this loader reads {reads} ({', '.join(architectures) or 'any architecture'})"
        )
    return config


def save(
    directory: str | os.PathLike,
    config: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Writes a checkpoint directory (`config.json`, `model.safetensors` with `metadata` in its header).

    Written beside `directory` and renamed into place (`files.atomic_directory`), so a concurrent
    reader or writer never sees half of one; if another writer got there first, theirs is kept.
    """
    with atomic_directory(directory) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2))
        arrays = {name: np.asarray(array, order="C") for name, array in tensors.items()}  # 0-d stays 0-d
        save_file(arrays, str(tmp / WEIGHTS_NAME), metadata=None if metadata is None else dict(metadata))
    return Path(directory)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch state dict (`.pth`) or a safetensors file, for converting into a checkpoint directory.

    The only place torch is needed (for `.pth`); `weights_only=True` refuses anything but tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    import torch  # a development dependency, only for converting

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise CheckpointError(f"{path} is not a state dict of tensors")
    return {name: tensor.detach().cpu().numpy() for name, tensor in state.items()}


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


def identity(array: np.ndarray) -> np.ndarray:
    """The tensor as it is: the conversion of a tensor laid out as its variable, and its own inverse."""
    return array


def transpose(array: np.ndarray) -> np.ndarray:
    """A torch Linear weight (out, in) as a Flax kernel (in, out), and back: its own inverse."""
    return array.T


@dataclass(frozen=True)
class Slot:
    """Where one checkpoint tensor goes: into `variable`, after `convert`; and back, by `revert`.

    `shape` is the tensor's shape in the checkpoint. Tensors that share a variable (a fused
    projection, a stack of layers) give `part`: their converted values are concatenated along
    `axis` in the order of `part`. `revert` is the inverse of `convert`: from the variable's
    layout (a part's slice of it) back to the checkpoint's. A slot that converts must state it,
    or it is refused when made: a forgotten inverse would otherwise write a wrong checkpoint
    silently. `reshaped` and `permuted` make the common pairs.
    """

    variable: nnx.Variable
    shape: tuple[int, ...]
    convert: Callable[[np.ndarray], np.ndarray] = identity
    revert: Callable[[np.ndarray], np.ndarray] = identity
    part: int | None = None
    axis: int = -1

    def __post_init__(self) -> None:
        if self.convert is not identity and self.revert is identity:
            raise TypeError(f"a Slot of shape {self.shape} converts its tensor but states no inverse (revert)")

    @classmethod
    def reshaped(cls, variable: nnx.Variable, shape: tuple[int, ...]) -> Slot:
        """A tensor that fills its variable reshaped, e.g. a [1, n, d] embedding into an [n, d] one."""
        into = tuple(variable.shape)
        return cls(variable, shape, lambda array: array.reshape(into), lambda array: array.reshape(shape))

    @classmethod
    def permuted(cls, variable: nnx.Variable, shape: tuple[int, ...], axes: tuple[int, ...]) -> Slot:
        """A tensor that fills its variable with its axes in the order `axes`, e.g. a torch convolution's kernel."""
        back = tuple(int(axis) for axis in np.argsort(axes))
        return cls(variable, shape, lambda array: array.transpose(axes), lambda array: array.transpose(back))


def linear_slots(prefix: str, layer: nnx.Linear) -> dict[str, Slot]:
    """Slots of a torch `nn.Linear` named `prefix` (weight, and bias if the layer has one)."""
    in_features, out_features = layer.kernel.shape
    slots = {f"{prefix}.weight": Slot(layer.kernel, (out_features, in_features), transpose, transpose)}
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


def own_slots(model: nnx.Module, wanted: Any, prefix: str) -> dict[str, Slot]:
    """Slots for parameters no foreign checkpoint has (layers panda-jax adds), named `prefix` + their path in
    `model`, in the variable's own layout; `wanted` is an nnx filter of the parameters."""
    matches = nnx.filterlib.to_predicate(wanted)
    return {
        prefix + ".".join(map(str, path)): Slot(node, tuple(node.shape))
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Variable) and matches(path, node)
    }


def copy_beside(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copies the files of checkpoint folder `source` other than its config and weights (tokenizers, processor
    settings) into `destination`, so an exported model is read as its source was."""
    source, destination = Path(source), Path(destination)
    for path in source.rglob("*"):
        relative = path.relative_to(source)
        if path.is_file() and path.name != CONFIG_NAME and not path.name.endswith((".safetensors", ".safetensors.index.json")):
            (destination / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination / relative)


def under(prefix: str, *patterns: str) -> tuple[str, ...]:
    """Ignore rules (regular expressions over tensor names) for a model whose tensors are named after `prefix`.

    Every model file states its rules as `<model>_ignore(model, prefix) -> under(prefix, ...)`,
    the shape of its `<model>_slots(model, prefix)`, so a composite model adds its parts' rules
    under their prefixes.
    """
    return tuple(re.escape(prefix) + pattern for pattern in patterns)


def fill(
    checkpoint: SafetensorsCheckpoint,
    model: nnx.Module,
    slots: Mapping[str, Slot],
    *,
    ignore: Iterable[str] = (),
    what: str = "the model",
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
) -> None:
    """Reads every slot's tensor into its variable of `model`, after checking the checkpoint fits.

    `model` is the module the slots fill; every parameter of it must have a slot. Tensors
    whose whole name matches a regular expression of `ignore` (heads not used here, copies of
    tied tensors), or `POSITION_IDS`, may be present or not. Raises CheckpointError naming
    every missing, unexpected and misshaped tensor before any weight is read.

    Without a mesh, values go to the default device. With one, each goes from host memory
    straight into its `NamedSharding` (`sharding.variable_sharding`, from the variable's
    logical axes), so no device ever holds more than its share of the model; the host holds
    one tensor at a time (the pieces of one fused variable, at most).
    """
    accepted = re.compile("|".join(f"(?:{pattern})" for pattern in (POSITION_IDS, *ignore)))
    _check_every_parameter_has_a_slot(model, slots, what)
    shapes = checkpoint.shapes()
    problems = []
    missing = sorted(set(slots) - set(shapes))
    unexpected = sorted(name for name in set(shapes) - set(slots) if not accepted.fullmatch(name))
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    for name in sorted(set(slots) & set(shapes)):
        if shapes[name] != tuple(slots[name].shape):
            problems.append(f"tensor {name} has shape {shapes[name]}, expected {tuple(slots[name].shape)}")
    if problems:
        raise CheckpointError(f"{checkpoint.name} does not fit {what}: " + "; ".join(problems))

    num_parts = Counter(id(slot.variable) for slot in slots.values() if slot.part is not None)
    parts: dict[int, dict[int, np.ndarray]] = {}  # fused variables' pieces read so far, placed once all are
    for name, array in checkpoint.read(slots):
        slot = slots[name]
        value = slot.convert(np.asarray(array, np.float32))
        if slot.part is None:
            _place(slot.variable, value, name, dtype, mesh)
            continue
        pieces = parts.setdefault(id(slot.variable), {})
        pieces[slot.part] = value
        if len(pieces) == num_parts[id(slot.variable)]:
            del parts[id(slot.variable)]
            fused = np.concatenate([pieces[i] for i in sorted(pieces)], axis=slot.axis)
            _place(slot.variable, fused, name, dtype, mesh)


def _check_every_parameter_has_a_slot(model: nnx.Module, slots: Mapping[str, Slot], what: str) -> None:
    """Raises CheckpointError naming the parameters of `model` no slot names: a model file's bug, not a bad
    checkpoint (or, writing, slots made from another instance of the model)."""
    targets = {id(slot.variable) for slot in slots.values()}
    unfilled = [
        ".".join(map(str, path))
        for path, node in nnx.iter_graph(model)
        if isinstance(node, nnx.Param) and id(node) not in targets
    ]
    if unfilled:
        raise CheckpointError(f"{what}: no checkpoint tensor fills {', '.join(unfilled)}")


def _place(variable: nnx.Variable, value: np.ndarray, name: str, dtype: Any, mesh: Mesh | None) -> None:
    expected = tuple(variable.shape)
    if value.shape != expected:  # a loader bug, not a bad checkpoint
        raise CheckpointError(f"{name} converts to shape {value.shape}, but the variable is {expected}")
    value = np.asarray(value, dtype)
    variable.set_value(jnp.asarray(value) if mesh is None else jax.device_put(value, variable_sharding(variable, mesh)))


def state_dict(model: nnx.Module, slots: Mapping[str, Slot]) -> dict[str, np.ndarray]:
    """Every slot's tensor as the checkpoint holds it: name → float32 host array of `slot.shape`, in `slots`' order.

    The inverse of `fill`: `slots` are the model file's for `model` itself (its variables, not
    another instance's: every parameter must have a slot, or CheckpointError names it), and
    each variable is brought to the host and `revert`ed. A fused variable is split along its
    `axis` into its parts, in `part` order, each as wide as `convert` makes that part's tensor
    (`_converted_shape`). Every array owns its memory, so tensors that share a variable are
    written as separate copies (safetensors refuses shared storage). Variables sharded over
    several hosts are gathered (`process_allgather`), so every process must call this then.
    """
    _check_every_parameter_has_a_slot(model, slots, "the model")
    fused: dict[int, list[tuple[str, Slot]]] = {}
    tensors = {}
    for name, slot in slots.items():
        if slot.part is None:
            tensors[name] = _reverted(name, slot, _on_host(slot.variable))
        else:
            fused.setdefault(id(slot.variable), []).append((name, slot))
    for members in fused.values():
        members.sort(key=lambda member: member[1].part)
        axis = members[0][1].axis
        value = _on_host(members[0][1].variable)
        widths = [_converted_shape(slot)[axis] for _, slot in members]
        if sum(widths) != value.shape[axis]:  # a model file's bug
            names = ", ".join(name for name, _ in members)
            raise CheckpointError(f"{names} convert to widths {widths} along axis {axis} of a {value.shape} variable")
        pieces = np.split(value, np.cumsum(widths)[:-1], axis=axis)
        for (name, slot), piece in zip(members, pieces):
            tensors[name] = _reverted(name, slot, piece)
    return {name: tensors[name] for name in slots}


def save_pretrained(
    directory: str | os.PathLike,
    config: Mapping[str, Any],
    model: nnx.Module,
    slots: Mapping[str, Slot],
    *,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Writes `model` as a checkpoint directory (`config`, its `state_dict`) that transformers and `load` read.

    The header's metadata is `{"format": "pt"}` (the tensors are named and laid out as
    PyTorch's, and transformers refuses safetensors of another format) updated by `metadata`.
    Written atomically by `save`. Refuses a `directory` that is there and not empty: `save`
    would keep what it holds, and an export must not silently leave older weights in place.
    """
    path = Path(directory)
    if path.is_dir() and any(path.iterdir()):
        raise FileExistsError(f"{path} is not empty; not writing the model over it")
    return save(path, config, state_dict(model, slots), metadata={"format": "pt"} | dict(metadata or {}))


def _on_host(variable: nnx.Variable) -> np.ndarray:
    """The variable's value, float32, on this host: gathered from every host when it is sharded over several."""
    value = variable.get_value()
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        value = multihost_utils.process_allgather(value, tiled=True)
    return np.asarray(jax.device_get(value), np.float32)


def _converted_shape(slot: Slot) -> tuple[int, ...]:
    """The shape `slot.convert` gives its tensor, computed on a broadcast zero of the tensor's shape.

    That view has zero strides and owns one element: the transposes, reshapes and indexing that
    converts are made of stay views of it, so no array of the tensor's size is made (a convert
    that computes would make one, as loading does).
    """
    return np.shape(slot.convert(np.broadcast_to(np.float32(0), slot.shape)))


def _reverted(name: str, slot: Slot, value: np.ndarray) -> np.ndarray:
    """`slot.revert(value)` as a C-ordered float32 copy of the checkpoint's shape."""
    tensor = np.array(slot.revert(value), np.float32, order="C")
    if tensor.shape != tuple(slot.shape):  # a model file's bug
        raise CheckpointError(f"{name} reverts to shape {tensor.shape}, but the checkpoint's is {tuple(slot.shape)}")
    return tensor


def abstract(build: Callable[[], nnx.Module]) -> nnx.Module:
    """The module `build` makes, with shapes only: the loader fills every parameter."""
    return nnx.eval_shape(build)


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The tokenizer saved in the checkpoint directory, offline: the transformers class its
    tokenizer_config.json names, else transformers' AutoTokenizer.

    The named class is imported alone: AutoTokenizer reads transformers' model configurations,
    which import torch wherever it is installed.
    """
    import transformers

    settings = Path(directory) / "tokenizer_config.json"
    name = json.loads(settings.read_text()).get("tokenizer_class") if settings.is_file() else None
    named = getattr(transformers, name, None) if name and name.endswith(("Tokenizer", "TokenizerFast")) else None
    try:
        return (named or transformers.AutoTokenizer).from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as error:
        raise CheckpointError(f"no usable tokenizer in {directory}: {error}") from error
