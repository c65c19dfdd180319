"""Logical-axis sharding, MaxText style: models name their axes, one table maps them to a mesh.

Every parameter carries `logical_axes` metadata, one name per dimension ("embed", "mlp",
"heads", ...), set where the layer is built with `logical(initializer, *names)`. `RULES` maps
those names onto the two axes of the device mesh: 'data' (batch, replicated weights) and
'model' (tensor parallelism: attention heads, MLP hidden units, vocabulary). Models never
mention devices; `shard_model` places a model's parameters, `batch_sharding` a batch's
arrays, and `jax.jit` propagates the rest (no pmap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical axis name → mesh axis (None: replicated). The one table for every model.
RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"),
    ("embed", None),
    ("mlp", "model"),
    ("heads", "model"),  # attention projections, heads × head_dim flattened
    ("kv_heads", "model"),
    ("head_dim", None),
    ("positions", None),
    ("channels", None),  # convolution input channels (patch embeddings)
    ("patch", None),  # convolution window dimensions
    ("queries", None),  # learned query tokens
    ("norm", None),
)


def logical(initializer: Callable[..., jax.Array], *names: str | None) -> Callable[..., jax.Array]:
    """`initializer`, with its parameter's logical axis names recorded as metadata."""
    return nnx.with_metadata(initializer, logical_axes=tuple(names))


def partition_spec(names: Sequence[str | None] | None, rules: Sequence[tuple[str, str | None]] = RULES) -> PartitionSpec:
    """The mesh placement of an array with logical axes `names` (None: replicated)."""
    if not names:
        return PartitionSpec()
    table = dict(rules)
    unknown = [name for name in names if name is not None and name not in table]
    if unknown:
        raise ValueError(f"logical axes {unknown} have no rule; add them to panda_jax.models.sharding.RULES")
    mesh_axes = [table.get(name) if name is not None else None for name in names]
    used = [axis for axis in mesh_axes if axis is not None]
    if len(used) != len(set(used)):
        raise ValueError(f"logical axes {tuple(names)} put one mesh axis on two dimensions: {mesh_axes}")
    return PartitionSpec(*mesh_axes)


def parse_mesh(spec: str) -> dict[str, int]:
    """A mesh written on a command line, `data=-1,model=1`, as `make_mesh`'s arguments."""
    try:
        sizes = {name.strip(): int(size) for name, size in (part.split("=") for part in spec.split(","))}
    except ValueError:
        raise ValueError(f"mesh {spec!r}: write it as data=N,model=M (N may be -1: the devices left)") from None
    if set(sizes) != {"data", "model"}:
        raise ValueError(f"mesh {spec!r}: give exactly the axes data and model")
    return sizes


def make_mesh(data: int = -1, model: int = 1, devices: Sequence[Any] | None = None) -> Mesh:
    """A ('data', 'model') mesh over `devices` (all by default); -1 takes what is left."""
    devices = list(devices if devices is not None else jax.devices())
    if data == -1:
        if len(devices) % model:
            raise ValueError(f"{len(devices)} devices do not split into model-parallel groups of {model}")
        data = len(devices) // model
    if data * model != len(devices):
        raise ValueError(f"a {data}×{model} mesh needs {data * model} devices, there are {len(devices)}")
    return Mesh(np.array(devices).reshape(data, model), ("data", "model"))


def _fits(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """`spec`, with any axis whose size the mesh axis does not divide replicated instead."""
    axes = [
        axis if axis is None or dim % mesh.shape[axis] == 0 else None
        for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)))
    ]
    return PartitionSpec(*axes)


def fully_sharded(shape: Sequence[int], spec: PartitionSpec, mesh: Mesh) -> PartitionSpec:
    """`spec` with 'data' added on the largest dimension it divides that nothing shards yet (FSDP: each
    data-parallel device keeps a slice of every large parameter and of its optimizer state, gathered when used)."""
    axes = list(tuple(spec) + (None,) * (len(shape) - len(spec)))
    size = mesh.shape["data"]
    free = [i for i, axis in enumerate(axes) if axis is None and shape[i] % size == 0]
    if size == 1 or "data" in axes or not free:
        return spec
    axes[max(free, key=lambda i: shape[i])] = "data"
    return PartitionSpec(*axes)


def variable_sharding(
    variable: nnx.Variable, mesh: Mesh, rules: Sequence[tuple[str, str | None]] = RULES, fsdp: bool = False
) -> NamedSharding:
    """Where `variable` goes on `mesh`: its logical axes placed by the rules, as far as its shape divides; with
    `fsdp`, also split over 'data' (`fully_sharded`)."""
    names = variable.get_metadata().get("logical_axes")
    spec = _fits(variable.shape, partition_spec(names, rules), mesh)
    return NamedSharding(mesh, fully_sharded(variable.shape, spec, mesh) if fsdp else spec)


def parameter_shardings(
    model: nnx.Module, mesh: Mesh, rules: Sequence[tuple[str, str | None]] = RULES, fsdp: bool = False
) -> Any:
    """A NamedSharding for every variable of `model` (its state's tree structure)."""
    return jax.tree.map(
        lambda variable: variable_sharding(variable, mesh, rules, fsdp),
        nnx.state(model),
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )


def shard_model(
    model: nnx.Module, mesh: Mesh, rules: Sequence[tuple[str, str | None]] = RULES, fsdp: bool = False
) -> nnx.Module:
    """Moves `model`'s variables onto `mesh` as the rules place them (in place; returns it)."""
    state = nnx.state(model)
    shardings = parameter_shardings(model, mesh, rules, fsdp)
    nnx.update(model, jax.device_put(state, shardings))
    return model


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Arrays of a batch: split along their first axis over 'data', the rest replicated."""
    return NamedSharding(mesh, PartitionSpec("data", *([None] * (ndim - 1))))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Places every array of a batch (a pytree) with `batch_sharding`."""
    return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x))), batch)
