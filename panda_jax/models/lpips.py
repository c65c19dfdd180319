"""LPIPS with the AlexNet backbone (Zhang et al., 2018) in Flax NNX, for inference.

LPIPS is Panda-70M's split-quality measure (Max Running LPIPS): a perceptual distance between
two images that is near 0 for two frames of one continuous shot and large across a cut. It
computes what the `lpips` package (0.1.4) does with `net="alex", version="0.1"`:
  1. shift and scale the [-1, 1] RGB input per channel (its `ScalingLayer`);
  2. take AlexNet's five ReLU outputs (torchvision `features` indices 1, 4, 7, 9, 11);
  3. scale every spatial position's channel vector to unit length;
  4. square the difference between the two images' features, average it over space and weigh
     the channels with a learned non-negative 1×1 "lin" head per layer;
  5. sum the five layers.

A checkpoint directory (config.json with architectures ["LPIPS"], and model.safetensors)
holds the weights of the two files the `lpips` package itself uses, under their names there:
the backbone's torchvision AlexNet `features.*` (`features.0.weight`, ...) and the package's
heads `weights/v0.1/alex.pth` (`lin0.model.1.weight`, ...). `convert` writes one from those
files (`.pth` or safetensors).

Pretrained AlexNet weights cannot be had offline (torchvision downloads them), so unless a
user supplies them, the backbone is random: distances then still rank pairs sensibly (0 for
identical frames, larger across a cut than within a shot) but their absolute values are NOT
comparable with LPIPS numbers in papers, Panda-70M's 0.256 included. The heads alone ship in
the `lpips` wheel on the package registry (`pretrained_checkpoint`).

Layout: activations are channels-last, [batch, height, width, channels]. With a bfloat16
`dtype` the convolutions run in bfloat16; normalisation and the heads stay float32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from panda_jax.data import testmedia
from panda_jax.models import CheckpointError, checkpoint
from panda_jax.models.checkpoint import Slot
from panda_jax.models.sharding import logical

MODEL_TYPES = ("lpips",)
ARCHITECTURES = ("LPIPS",)

# The lpips package's ScalingLayer: ImageNet statistics expressed for [-1, 1] inputs.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
CHANNELS = (64, 192, 384, 256, 256)  # widths of AlexNet's five tapped ReLU outputs
FEATURE_INDICES = (0, 3, 6, 8, 10)  # the convolutions' indices in torchvision's `features`
MIN_SIZE = 31  # smallest side for which AlexNet's last tap is not empty
NORM_EPS = 1e-10  # added to the feature norm, as lpips.normalize_tensor does

HEADS = testmedia.PackageFile(
    "lpips==0.1.4",
    "lpips/weights/v0.1/alex.pth",
    "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
)


class AlexNetFeatures(nnx.Module):
    """AlexNet's convolutional trunk up to conv5's ReLU; returns the five ReLU outputs."""

    def __init__(self, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        # (in, out, kernel, stride, padding) of torchvision's features.0/3/6/8/10.
        specs = [(3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)]
        self.convs = nnx.List(
            nnx.Conv(
                i, o, (k, k), strides=s, padding=p, dtype=dtype, param_dtype=jnp.float32,
                kernel_init=logical(nnx.initializers.lecun_normal(), "patch", "patch", "channels", "embed"),
                bias_init=logical(nnx.initializers.zeros_init(), "embed"),
                rngs=rngs,
            )  # fmt: skip
            for i, o, k, s, p in specs
        )

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        taps = []
        for index, conv in enumerate(self.convs):
            if index in (1, 2):  # features.2 and features.5: 3×3 max pooling, stride 2, floor mode
                x = nnx.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")
            x = nnx.relu(conv(x))
            taps.append(x)
        return taps


def _unit_channels(x: jax.Array) -> jax.Array:
    return x / (jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True)) + NORM_EPS)


class LPIPS(nnx.Module):
    """Images [batch, h, w, 3] in [-1, 1], pairwise → LPIPS distances [batch].

    A fresh module has a random backbone and random non-negative heads; `load` reads real ones.
    """

    def __init__(self, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.backbone = AlexNetFeatures(dtype=dtype, rngs=rngs)
        # Non-negative and of the trained heads' scale (mean weight about 0.1), so that a random
        # model gives distances >= 0 of roughly LPIPS' size.
        head_init = logical(jax.nn.initializers.uniform(0.2), "embed", None)
        self.heads = nnx.List(nnx.Linear(c, 1, use_bias=False, kernel_init=head_init, rngs=rngs) for c in CHANNELS)

    def features(self, images: jax.Array) -> list[jax.Array]:
        """Unit-normalised AlexNet features of [batch, h, w, 3] images in [-1, 1]."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images [batch, height, width, 3], got shape {images.shape}")
        if min(images.shape[1:3]) < MIN_SIZE:
            raise ValueError(f"images must be at least {MIN_SIZE}×{MIN_SIZE} for AlexNet, got {images.shape[1:3]}")
        x = (images.astype(jnp.float32) - jnp.asarray(SHIFT)) / jnp.asarray(SCALE)
        return [_unit_channels(tap.astype(jnp.float32)) for tap in self.backbone(x)]

    def compare(self, features0: list[jax.Array], features1: list[jax.Array]) -> jax.Array:
        """LPIPS between two batches of `features`, [batch]."""
        total = 0.0
        for head, a, b in zip(self.heads, features0, features1):
            # The head is linear, so averaging over space first gives the same value for less work.
            total = total + head(jnp.mean(jnp.square(a - b), axis=(1, 2)))[:, 0]
        return total

    def __call__(self, images0: jax.Array, images1: jax.Array) -> jax.Array:
        if images0.shape != images1.shape:
            raise ValueError(f"image batches differ in shape: {images0.shape} and {images1.shape}")
        return self.compare(self.features(images0), self.features(images1))

    def consecutive(self, images: jax.Array) -> jax.Array:
        """LPIPS between images i and i + 1 of [n, h, w, 3], [n - 1]; each image runs once."""
        features = self.features(images)
        return self.compare([f[:-1] for f in features], [f[1:] for f in features])


def from_uint8(frames: jax.Array | np.ndarray) -> jax.Array:
    """uint8 RGB frames [..., h, w, 3] → float32 in [-1, 1], the range LPIPS expects."""
    return jnp.asarray(frames, jnp.float32) / 127.5 - 1.0


@nnx.jit
def distance(model: LPIPS, images0: jax.Array, images1: jax.Array) -> jax.Array:
    """Compiled `model(images0, images1)`: one LPIPS per pair, [batch]."""
    return model(images0, images1)


@nnx.jit
def consecutive_distances(model: LPIPS, images: jax.Array) -> jax.Array:
    """Compiled `model.consecutive(images)`: LPIPS between neighbours of [n, h, w, 3], [n - 1]."""
    return model.consecutive(images)


# --- Loading PyTorch weights --------------------------------------------------------------


def _alexnet_slots(model: LPIPS) -> dict[str, Slot]:
    slots = {}
    for index, conv in zip(FEATURE_INDICES, model.backbone.convs):
        kh, kw, c_in, c_out = conv.kernel.shape
        # (out, in, kh, kw) → (kh, kw, in, out)
        slots[f"features.{index}.weight"] = Slot.permuted(conv.kernel, (c_out, c_in, kh, kw), (2, 3, 1, 0))
        slots[f"features.{index}.bias"] = Slot(conv.bias, (c_out,))
    return slots


def _head_slots(model: LPIPS) -> dict[str, Slot]:
    # In lpips, model.0 is a Dropout (absent at inference) and model.1 the 1×1 convolution.
    return {
        f"lin{i}.model.1.weight": Slot.reshaped(head.kernel, (1, head.kernel.shape[0], 1, 1))
        for i, head in enumerate(model.heads)
    }


def lpips_slots(model: LPIPS) -> dict[str, Slot]:
    """The checkpoint tensor name of every parameter of `model`: torchvision's AlexNet `features.*`, lpips' heads."""
    return _alexnet_slots(model) | _head_slots(model)


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> LPIPS:
    """An LPIPS checkpoint directory (`convert`, `pretrained_checkpoint`) as a Flax model.

    With pretrained ImageNet AlexNet weights this is the `lpips` package's
    `LPIPS(net="alex", version="0.1")`. Negative head weights are refused: trained heads are
    clamped at 0, and a negative one could make a distance negative. Raises CheckpointError
    naming every missing, unexpected or misshaped tensor. With a `mesh`, each parameter is
    placed on it as it is read.
    """
    checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES)
    model = checkpoint.abstract(lambda: LPIPS(dtype=dtype, rngs=nnx.Rngs(0)))
    weights = checkpoint.SafetensorsCheckpoint(directory)
    heads = _head_slots(model)
    negative = [name for name, array in weights.read(sorted(heads.keys() & weights.names())) if np.min(array) < 0]
    if negative:
        raise CheckpointError(f"{directory}: LPIPS heads must be non-negative; these are not: {', '.join(negative)}")
    checkpoint.fill(weights, model, lpips_slots(model), what="LPIPS", mesh=mesh)
    return model


def _random_alexnet() -> dict[str, np.ndarray]:
    """The `features.*` tensors (torchvision's layout) of the backbone `LPIPS(rngs=nnx.Rngs(0))` starts with."""
    backbone = AlexNetFeatures(rngs=nnx.Rngs(0))
    tensors = {}
    for index, conv in zip(FEATURE_INDICES, backbone.convs):
        tensors[f"features.{index}.weight"] = np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1)
        tensors[f"features.{index}.bias"] = np.asarray(conv.bias[...])
    return tensors


def convert(
    heads_path: str | os.PathLike, directory: str | os.PathLike, *, alexnet_path: str | os.PathLike | None = None
) -> Path:
    """Writes an LPIPS checkpoint directory from the lpips heads and a torchvision AlexNet state dict.

    Both files are `.pth` (read with torch) or safetensors; of the AlexNet only `features.*`
    is kept. Without one the backbone is random (seed 0, see the module docstring).
    """
    if alexnet_path is None:
        backbone = _random_alexnet()
    else:
        backbone = {n: a for n, a in checkpoint.read_state_dict(alexnet_path).items() if n.startswith("features.")}
    config = {"architectures": list(ARCHITECTURES), "model_type": MODEL_TYPES[0]}
    return checkpoint.save(directory, config, backbone | checkpoint.read_state_dict(heads_path))


def pretrained_checkpoint(directory: Path | None = None) -> Path:
    """A checkpoint directory with the lpips v0.1 AlexNet heads from the `lpips` wheel on the registry,
    and a random backbone (pretrained AlexNet weights cannot be had offline).

    The `.pth` is fetched once into the testmedia cache (checked by sha256) and converted
    next to it; the conversion needs torch, later calls do not.
    """
    pth = testmedia.fetch_package_file(HEADS, "lpips-v0.1-alex.pth", directory)
    out = pth.with_name("lpips-v0.1-alex-random-backbone")
    if not (out / checkpoint.WEIGHTS_NAME).is_file():
        convert(pth, out)
    return out
