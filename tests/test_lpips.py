"""LPIPS (AlexNet) in Flax against the `lpips` package, with the same random AlexNet weights.

Pretrained torchvision AlexNet weights are out of reach offline and torchvision has no CPU
build on the registry, so the reference `lpips` package is imported from its wheel with a
stand-in `torchvision` module whose `alexnet()` builds torchvision's exact AlexNet layout with
seeded random weights. Its real v0.1 heads (shipped in the wheel) are loaded on both sides.
"""

from __future__ import annotations

import re
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from panda_jax.data import testmedia
from lpips_weights import random_heads, torchvision_like_alexnet, write_random_lpips
from panda_jax.models import CheckpointError, checkpoint, lpips

torch = pytest.importorskip("torch")


class TorchAlexNet(torch.nn.Module):
    """torchvision's AlexNet module layout (same names and `features` indices)."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )  # fmt: skip


def _random_alexnet(pretrained: bool = False, weights: object = None, **_: object) -> TorchAlexNet:
    if pretrained or weights is not None:
        raise RuntimeError("pretrained AlexNet weights are not available offline")
    torch.manual_seed(1234)
    return TorchAlexNet()


@pytest.fixture(scope="module")
def lpips_wheel(tmp_path_factory) -> Path:
    """The unpacked `lpips==0.1.4` wheel."""
    try:
        wheel = testmedia.fetch_package_archive("lpips==0.1.4")
    except testmedia.MediaUnavailableError as e:
        pytest.skip(f"lpips wheel unavailable: {e}")
    root = tmp_path_factory.mktemp("lpips_wheel")
    with zipfile.ZipFile(wheel) as zipped:
        zipped.extractall(root)
    return root


@pytest.fixture(scope="module")
def reference(lpips_wheel):
    """The lpips package's LPIPS(alex, v0.1) with a seeded random backbone and its real heads."""
    shim = types.ModuleType("torchvision")
    shim.models = types.ModuleType("torchvision.models")
    shim.models.alexnet = _random_alexnet
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "torchvision", shim)
        patch.setitem(sys.modules, "torchvision.models", shim.models)
        patch.syspath_prepend(str(lpips_wheel))
        import lpips as lpips_package

        model = lpips_package.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
            del sys.modules[name]  # do not leak the wheel's package into other tests
    return model


@pytest.fixture(scope="module")
def exported_alexnet(reference, tmp_path_factory) -> Path:
    """The reference's own backbone as a torchvision AlexNet state dict in safetensors.

    lpips names the layers `slice{k}.{i}` with i the index in torchvision's `features`.
    """
    state = {
        re.sub(r"^slice\d+\.", "features.", name): tensor.numpy()
        for name, tensor in reference.net.state_dict().items()
    }
    path = tmp_path_factory.mktemp("alexnet") / "alexnet.safetensors"
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def flax_lpips(exported_alexnet, lpips_wheel) -> lpips.LPIPS:
    # The heads go in as the wheel's own .pth, so the torch reading path is tested too.
    heads = lpips_wheel / "lpips/weights/v0.1/alex.pth"
    return lpips.load(lpips.convert(heads, exported_alexnet.parent / "lpips", alexnet_path=exported_alexnet))


def _image_pairs(batch: int, height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random images in [-1, 1]; the second half of the batch noisy copies, the rest unrelated."""
    rng = np.random.default_rng(seed)

    def smooth(n: int) -> np.ndarray:
        coarse = rng.uniform(-1, 1, (n, height // 8 + 1, width // 8 + 1, 3))
        return np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)[:, :height, :width]

    x0 = smooth(batch)
    x1 = smooth(batch)
    noisy = batch // 2
    x1[:noisy] = np.clip(x0[:noisy] + rng.normal(0, 0.2, x0[:noisy].shape), -1, 1)
    return x0.astype(np.float32), x1.astype(np.float32)


@pytest.mark.media
@pytest.mark.parametrize("batch, height, width", [(4, 64, 64), (2, 224, 224), (3, 97, 150)])
def test_matches_lpips_package(reference, flax_lpips, batch, height, width):
    x0, x1 = _image_pairs(batch, height, width, seed=height)
    with torch.no_grad():
        expected = reference(
            torch.from_numpy(x0).permute(0, 3, 1, 2), torch.from_numpy(x1).permute(0, 3, 1, 2)
        ).reshape(-1).numpy()
    actual = np.asarray(lpips.distance(flax_lpips, x0, x1))
    assert actual.shape == (batch,)
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=1e-4)
    assert np.all(expected > 0)


@pytest.mark.media
def test_consecutive_matches_pairwise(flax_lpips):
    x0, _ = _image_pairs(5, 64, 64, seed=7)
    pairwise = lpips.distance(flax_lpips, x0[:-1], x0[1:])
    np.testing.assert_allclose(lpips.consecutive_distances(flax_lpips, x0), pairwise, atol=1e-6)


def test_identical_images_are_zero_and_distance_grows_with_noise():
    model = lpips.LPIPS(rngs=nnx.Rngs(0))
    x0, _ = _image_pairs(2, 64, 64, seed=1)
    rng = np.random.default_rng(0)
    noise = rng.normal(size=x0.shape).astype(np.float32)
    np.testing.assert_array_equal(lpips.distance(model, x0, x0), 0.0)
    distances = [np.asarray(lpips.distance(model, x0, np.clip(x0 + s * noise, -1, 1))) for s in (0.02, 0.1, 0.3, 0.8)]
    for smaller, larger in zip(distances, distances[1:]):
        assert np.all(smaller < larger)


def test_from_uint8_maps_to_unit_range():
    frames = np.array([[[[0, 128, 255]]]], np.uint8)
    np.testing.assert_allclose(lpips.from_uint8(frames)[0, 0, 0], [-1.0, 128 / 127.5 - 1, 1.0], atol=1e-6)


def test_rejects_bad_inputs():
    model = lpips.LPIPS(rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="at least 31"):
        model(np.zeros((1, 30, 64, 3)), np.zeros((1, 30, 64, 3)))
    with pytest.raises(ValueError, match="differ in shape"):
        model(np.zeros((1, 64, 64, 3)), np.zeros((2, 64, 64, 3)))


def test_loader_maps_torch_layout(tmp_path):
    """`convert` keeps AlexNet's `features.*` (not its classifier) and the heads; `load` maps them."""
    directory = write_random_lpips(tmp_path)
    alexnet, heads = torchvision_like_alexnet(), random_heads()
    kept = sorted(name for name in alexnet | heads if not name.startswith("classifier."))
    assert sorted(load_file(directory / checkpoint.WEIGHTS_NAME)) == kept
    model = lpips.load(directory)
    conv = model.backbone.convs[1]  # features.3
    np.testing.assert_array_equal(conv.kernel[...], alexnet["features.3.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.backbone.convs[4].bias[...], alexnet["features.10.bias"])
    np.testing.assert_array_equal(model.heads[2].kernel[...][:, 0], heads["lin2.model.1.weight"].reshape(-1))


def test_loader_refuses_negative_heads(tmp_path):
    directory = write_random_lpips(tmp_path)
    tensors = load_file(directory / checkpoint.WEIGHTS_NAME)
    tensors["lin1.model.1.weight"][0, 5] = -0.1
    save_file(tensors, directory / checkpoint.WEIGHTS_NAME)
    with pytest.raises(CheckpointError, match="non-negative.*lin1.model.1.weight"):
        lpips.load(directory)


@pytest.mark.media
def test_pretrained_checkpoint_from_the_registry(lpips_wheel):
    """The wheel's heads, and the backbone a fresh `LPIPS(rngs=nnx.Rngs(0))` starts with."""
    model = lpips.load(lpips.pretrained_checkpoint())
    wheel_heads = torch.load(lpips_wheel / "lpips/weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    for i, head in enumerate(model.heads):
        np.testing.assert_array_equal(head.kernel[...][:, 0], wheel_heads[f"lin{i}.model.1.weight"].numpy().reshape(-1))
    fresh = lpips.LPIPS(rngs=nnx.Rngs(0))
    for conv, fresh_conv in zip(model.backbone.convs, fresh.backbone.convs):
        np.testing.assert_array_equal(conv.kernel[...], fresh_conv.kernel[...])
        np.testing.assert_array_equal(conv.bias[...], fresh_conv.bias[...])
