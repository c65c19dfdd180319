"""Random LPIPS weights in the real checkpoint layouts, for tests that need a loadable LPIPS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from panda_jax.models import lpips


def torchvision_like_alexnet(seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors named and shaped like a torchvision AlexNet's `features`, plus a classifier tensor."""
    rng = np.random.default_rng(seed)
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    state = {}
    for index, shape in shapes.items():
        state[f"features.{index}.weight"] = rng.normal(0, 0.05, shape).astype(np.float32)
        state[f"features.{index}.bias"] = rng.normal(0, 0.05, shape[:1]).astype(np.float32)
    state["classifier.6.bias"] = np.zeros(1000, np.float32)  # accepted and ignored
    return state


def random_heads(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"lin{i}.model.1.weight": rng.uniform(0, 0.1, (1, c, 1, 1)).astype(np.float32)
        for i, c in enumerate(lpips.CHANNELS)
    }


def write_random_lpips(directory: Path) -> Path:
    """An LPIPS checkpoint directory made by `lpips.convert` from random AlexNet and heads files."""
    directory.mkdir(parents=True, exist_ok=True)
    alexnet, heads = directory / "alexnet.safetensors", directory / "lpips_heads.safetensors"
    save_file(torchvision_like_alexnet(), str(alexnet))
    save_file(random_heads(), str(heads))
    return lpips.convert(heads, directory / "checkpoint", alexnet_path=alexnet)
