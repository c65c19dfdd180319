"""The learnability probe and the frame stream it reads: labels that match the pixels, and curves that are
written and that move."""

import json

import cv2
import numpy as np

from panda_jax import probe
from panda_jax.data.synthetic import ACTIONS, PALETTE, PATTERN_SHADE, SceneFrames
from panda_jax.data.synthetic.frames import FACTS, patch_labels


def test_frames_are_a_deterministic_random_access_stream():
    frames = SceneFrames(seed=3, size=32)
    first, again, other = frames[5], frames[5], SceneFrames(seed=4, size=32)[5]
    assert np.array_equal(first["frames"], again["frames"]) and first["labels"] == again["labels"]
    assert not np.array_equal(first["frames"], other["frames"])
    assert len(frames) == 2**31 - 1 and frames[len(frames) - 1]["frames"].shape == (2, 32, 32, 3)


def test_the_two_frames_show_the_action():
    """Between the earlier and the later frame the main object moves, grows, shrinks or stays as its action says."""
    frames, seen = SceneFrames(seed=1, size=64), set()
    for index in range(60):
        item = frames[index]
        action = ACTIONS[item["action"]]
        (y0, x0), (y1, x1) = (np.argwhere(objects == 1).mean(0) for objects in item["objects"])
        area0, area1 = ((objects == 1).sum() for objects in item["objects"])
        dx, dy, growth = x1 - x0, y1 - y0, area1 / area0
        if action.startswith("moves"):
            expected = {"left": -dx, "right": dx, "up": -dy, "down": dy}[action.split()[1]]
            assert expected >= 4 and abs(growth - 1) < 0.15, (index, action, dx, dy)
        elif action == "stays still":
            assert abs(dx) < 0.5 and abs(dy) < 0.5 and growth == 1, (index, dx, dy)
        else:
            assert (growth > 1.3) if action == "grows" else (growth < 1 / 1.3), (index, action, growth)
        seen.add(action)
    assert seen == set(ACTIONS)


def test_frame_labels_match_the_pixels():
    """The main object's pixels are shades of its colour, the background's its first colour on solid backdrops, and the
    object map's patches are labelled with the objects they show."""
    frames = SceneFrames(seed=0, size=64)
    checked = 0
    for index in range(40):
        item = frames[index]
        labels, objects, frame = item["labels"], item["objects"][1], item["frames"][1]
        main = np.asarray(PALETTE[FACTS["main_color"][labels["main_color"]]], np.float64)
        inside = cv2.erode((objects == 1).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0  # clear of the AA edge
        if inside.sum() > 30:
            # Every pixel is a shade of the colour (its pattern), the brightest the colour itself.
            pixels = frame[inside].astype(np.float64)
            shade = np.clip(pixels @ main / (main @ main), PATTERN_SHADE, 1)
            assert np.abs(pixels - shade[:, None] * main).max() <= 3
            assert np.abs(pixels.max(axis=0) - main).max() <= 2
            checked += 1
        if FACTS["background_kind"][labels["background_kind"]] == "solid":
            colour = PALETTE[FACTS["background_color"][labels["background_color"]]]
            assert np.abs(np.median(frame[objects == 0], axis=0) - colour).max() <= 2
        assert item["one_object"] == (FACTS["other_color"][labels["other_color"]] == "none")
    assert checked > 20
    objects = np.zeros((16, 16), np.uint8)
    objects[:8, 8:] = 1  # the top-right quarter: patch 1 of a 2 x 2 grid
    objects[8:, :3] = 2  # less than half of the bottom-left patch
    assert patch_labels(objects, 8).tolist() == [0, 1, 0, 0]


def test_probe_writes_curves_for_every_fact(tmp_path):
    assert probe.main(["--config=probe:tiny", "--out", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "curves.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [3, 6]
    for row in rows:
        assert set(FACTS) | {probe.BOTH, probe.MOTION} <= set(row) and all(0 <= row[f] <= 1 for f in (*FACTS, probe.MOTION))
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_frozen_probe_trains_only_its_heads(tmp_path):
    """On a frozen encoder the heads learn and the encoder's weights stay as they were."""
    from flax import nnx

    from panda_jax import cli

    config = cli.load_config("probe:tiny")
    config.frozen, config.train.steps = True, 4
    encoder = probe.make_encoder(config, seed=0)
    before = nnx.to_pure_dict(nnx.state(encoder, nnx.Param))
    config.encoder.checkpoint = ""  # the probe builds its own: compare against one built with the same seed
    model, curve = probe.train_reader(config)
    after = nnx.to_pure_dict(nnx.state(model.encoder, nnx.Param))
    flat = lambda tree: np.concatenate([np.ravel(x) for x in __import__("jax").tree.leaves(tree)])  # noqa: E731
    assert np.array_equal(flat(before), flat(after))
    assert len(curve) == 2


def test_sincos_positions_code_the_column_and_the_row():
    """Half the channels depend on the patch's column alone, half on its row alone; every patch differs; the class
    token's row is zero."""
    table = probe.sincos_positions(4, 16)
    assert table.shape == (17, 16) and not table[0].any()
    grid = table[1:].reshape(4, 4, 16)
    assert np.allclose(grid[:, :, :8], grid[:1, :, :8]) and np.allclose(grid[:, :, 8:], grid[:, :1, 8:])
    assert len({row.tobytes() for row in table[1:]}) == 16
    assert np.allclose(grid[0, 1, [0, 4]], [np.sin(1), np.cos(1)])
