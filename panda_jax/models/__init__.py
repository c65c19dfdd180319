"""Flax NNX models, one architecture per file, each with a `load()` for its foreign checkpoint.

`load` reads any of them: it picks the model file by the checkpoint's `architectures`.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flax import nnx
    from jax.sharding import Mesh


class CheckpointError(ValueError):
    """A checkpoint does not fit the model; the message names every offending tensor."""


# config.json `architectures` → the model file that loads it (imported on first use, so that
# importing this package stays cheap). Each file lists the same names as its ARCHITECTURES.
ARCHITECTURES = {
    "Blip2ForConditionalGeneration": "blip2",
    "Blip2ForImageTextRetrieval": "blip2_retrieval",
    "Blip2VisionModel": "blip2_vision",
    "InstructBlipVisionModel": "blip2_vision",
    "InstructBlipVideoVisionModel": "blip2_vision",
    "Blip2QFormerModel": "qformer",
    "InstructBlipQFormerModel": "qformer",
    "InstructBlipVideoQFormerModel": "qformer",
    "InstructBlipForConditionalGeneration": "instructblip",
    "InstructBlipVideoForConditionalGeneration": "instructblip",
    "VideoLlamaForConditionalGeneration": "video_llama",
    "CLIPModel": "clip",
    "LlamaForCausalLM": "llama",
    "OPTForCausalLM": "opt",
    "T5ForConditionalGeneration": "t5",
    "TransNetV2": "transnetv2",
    "LPIPS": "lpips",
}


def load(directory: str | os.PathLike, dtype: Any = None, *, mesh: Mesh | None = None) -> nnx.Module:
    """The model a checkpoint directory holds, by its config's first architecture.

    `dtype` is the computation dtype (None: float32); parameters stay float32. With a `mesh`
    each parameter goes straight from the file to its place on the mesh, so a model larger
    than one device loads. Raises CheckpointError for an architecture no model file reads.
    """
    import jax.numpy as jnp

    from panda_jax.models import checkpoint

    architectures = checkpoint.read_config(directory).get("architectures") or []
    if not architectures or architectures[0] not in ARCHITECTURES:
        raise CheckpointError(
            f"{directory} holds a {', '.join(architectures) or 'no-architecture'} checkpoint; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    module = importlib.import_module(f"{__name__}.{ARCHITECTURES[architectures[0]]}")
    return module.load(directory, jnp.float32 if dtype is None else dtype, mesh=mesh)
