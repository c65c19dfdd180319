"""Helpers for parity tests against transformers' PyTorch models (imported by the test files)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file


def randomized(model, seed: int = 0, scale: float = 0.2):
    """`model` (torch) with every parameter random, in eval mode.

    transformers starts biases, norms, class and query tokens at constants, which would hide a
    loader that mixes them up.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def save_reference(model_class, directory: Path, config, **save_kwargs):
    """A transformers `model_class(config)` with seed-0 weights, in eval mode, saved to `directory`."""
    import torch

    torch.manual_seed(0)
    reference = model_class(config).eval()
    reference.save_pretrained(directory, **save_kwargs)
    return reference


def broken_copy(directory: Path, destination: Path, change: Callable[[dict[str, np.ndarray]], object]) -> Path:
    """A copy of the single-file checkpoint in `directory` with its tensors edited by `change`."""
    shutil.copy(directory / "config.json", destination / "config.json")
    tensors = load_file(str(directory / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(destination / "model.safetensors"), metadata={"format": "pt"})
    return destination
