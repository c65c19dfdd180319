"""Pairs of frames of the world with every fact they show, as an endless, random-access stream.

What a vision encoder learns to read (the learnability probe, the foundations' pretraining): example i
of `SceneFrames(seed)` is a fresh scene (`sampling.sample_scene`) under a fresh framing, seen at two
moments of its event (the later at least `MOTION_GAP[0]` of the event after the earlier), drawn from
(seed, i) alone, so the stream is as long as wanted, shardable and checkpointable by index, and costs
about a millisecond a frame. Each example carries the frames, the maps of which object each pixel
shows, the facts as class indices (`FACTS`), so a model can be supervised on the whole frame (pooled
heads) or per patch (`patch_labels`), and the main object's action between the two frames: a frozen
encoder whose features tell where and how large the object is is one a video model reads motion from.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from panda_jax.data.synthetic.render import object_map, render_scene
from panda_jax.data.synthetic.sampling import sample_camera, sample_scene
from panda_jax.data.synthetic.spec import ACTIONS, BACKGROUNDS, OBJECT_COLORS, PALETTE, PATTERNS, SIZES, Scene

ABSENT = "none"  # the class of an object fact when the frame has no second object
# Every fact of a frame and its classes. `background_color` is the first colour of the background.
FACTS: dict[str, tuple[str, ...]] = {
    "background_kind": BACKGROUNDS,
    "background_color": tuple(PALETTE),
    "main_color": OBJECT_COLORS,
    "main_pattern": PATTERNS,
    "main_size": tuple(SIZES),
    "other_color": (*OBJECT_COLORS, ABSENT),
    "other_pattern": (*PATTERNS, ABSENT),
    "other_size": (*SIZES, ABSENT),
}
# Per object (patch labels): what the patches it covers are labelled with; 0 is the background.
OBJECT_FACTS = ("color", "pattern", "size")
LENGTH = 2**31 - 1  # indices a stream serves: more frames than any run reads
# The share of the event between an example's two frames: a moving disc has travelled at least 0.4 x 0.22 world units
# (5 px at 64 px and the farthest zoom), a growing one has changed its radius by at least a third.
MOTION_GAP = (0.4, 1.0)


def fact_labels(scene: Scene) -> dict[str, int]:
    """The class index of every fact of `FACTS` in `scene`."""
    main, other = scene.main, scene.objects[1] if len(scene.objects) > 1 else None
    values = {
        "background_kind": scene.background.kind, "background_color": scene.background.colors[0],
        "main_color": main.color, "main_pattern": main.pattern, "main_size": main.size,
        "other_color": other.color if other else ABSENT, "other_pattern": other.pattern if other else ABSENT,
        "other_size": other.size if other else ABSENT,
    }  # fmt: skip
    return {fact: FACTS[fact].index(value) for fact, value in values.items()}


def object_classes(scene: Scene) -> dict[str, np.ndarray]:
    """Per object fact, the class of the background (0) and of each object k (k + 1): 1 + its index."""
    vocabulary = {"color": OBJECT_COLORS, "pattern": PATTERNS, "size": tuple(SIZES)}
    return {fact: np.array([0, *(1 + vocabulary[fact].index(getattr(o, fact)) for o in scene.objects)], np.int32)
            for fact in OBJECT_FACTS}  # fmt: skip


def patch_labels(objects: np.ndarray, patch_size: int) -> np.ndarray:
    """The object most of each patch shows (0 the background): uint8 [H / p * W / p], row-major as a ViT's tokens."""
    grid = objects.shape[0] // patch_size
    cells = objects[: grid * patch_size, : grid * patch_size].reshape(grid, patch_size, grid, patch_size)
    cells = cells.transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    counts = np.stack([(cells == k).sum(1) for k in range(int(objects.max()) + 1)], axis=1)
    return counts.argmax(1).astype(np.uint8)


class SceneFrames:
    """Example i: a scene of `seed` at two moments, `size` pixels square (see the module docstring).

    Examples: `frames` uint8 [2, size, size, 3] (the earlier, the later), `objects` uint8 [2, size, size] (0 the
    background, k + 1 object k), `labels` {fact: class index} (both frames show the same facts), `action` the main
    object's (index into `ACTIONS`), `object_classes` {object fact: int32 [3]} (background, main, other; a missing
    other object repeats nothing: its row is simply never referenced), `one_object`.
    """

    def __init__(self, seed: int, size: int = 64, length: int = LENGTH):
        self.seed, self.size, self.length = seed, size, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"frame {index} is outside the stream's {self.length}")
        rng = np.random.default_rng([self.seed, index])
        scene = sample_scene(rng, None)
        camera = sample_camera(rng, scene.bounds(), None)
        gap = float(rng.uniform(*MOTION_GAP))
        earlier = float(rng.uniform(0, 1 - gap))
        moments = (earlier, earlier + gap)
        classes = object_classes(scene)
        return {
            "frames": np.stack([render_scene(scene, camera, progress, self.size) for progress in moments]),
            "objects": np.stack([object_map(scene, camera, progress, self.size) for progress in moments]),
            "labels": fact_labels(scene),
            "action": ACTIONS.index(scene.action),
            "object_classes": {fact: np.pad(values, (0, 3 - len(values))) for fact, values in classes.items()},
            "one_object": len(scene.objects) == 1,
        }
