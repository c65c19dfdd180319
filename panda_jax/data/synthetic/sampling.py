"""Drawing a VideoSpec from (seed, index): the events, their scenes and camera framings, and the
transitions between them, under the constraints that keep the ground truth visible in the
pixels (object contrast, visible framing changes, objects inside the frame), whose tunables
live here. The words (captions, title, description, subtitles) come from `text`, drawn from
the same generator in between, so that (seed, index) alone fixes the whole video.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from panda_jax.data.synthetic.spec import (
    ACTIONS, BACKGROUNDS, MAX_EVENTS, MAX_SHOTS, MIN_DURATION, MIN_EVENT_SECONDS,
    MIN_SHOT_SECONDS, OBJECT_COLORS, PALETTE, PATTERNS, SIZES, TRANSITIONS, Background, Camera, Event,
    Scene, SceneObject, Transition, VideoSpec, pick, view_pattern,
)
from panda_jax.data.synthetic.text import (
    caption, sample_description, sample_subtitles, sample_title,
)

OBJECT_CONTRAST = 100.0  # min RGB distance between an object colour and anything else shown
BACKGROUND_CONTRAST = 80.0  # min RGB distance between the two colours of a background
BOX = (0.12, 0.88)  # objects stay inside this square of world coordinates, whole event long
# The far end keeps a small disc at least 5 px in radius at 64 px (a few pattern cells across); with
# MIN_ZOOM_RATIO it may reach no further than 1.19 / 1.25**2 = 0.76, or a zoom near 0.95 would leave no other.
ZOOM_RANGE = (0.75, 1.6)
# Consecutive shots of an event differ in zoom by at least this factor, so that every cut
# changes the picture. With BOX and CAMERA_MARGIN the largest allowed zoom is >= 1.19, which
# keeps a zoom at least this far from any previous one always available.
MIN_ZOOM_RATIO = 1.25
CAMERA_MARGIN = 0.04  # world units kept between the objects and the frame edge
MIN_FRAMING_CHANGE = 25.0  # mean absolute RGB change a framing cut should make
MOVE_DISTANCE = (0.22, 0.38)  # world units a moving object travels over its event
GROW_SCALES = (0.6, 1.4)


def _partition(rng: np.random.Generator, total: int, parts: int, minimum: int) -> list[int]:
    """Splits `total` into `parts` random lengths of at least `minimum` each."""
    spare = total - parts * minimum
    cuts = np.sort(rng.integers(0, spare + 1, size=parts - 1))
    return [minimum + int(d) for d in np.diff(np.concatenate([[0], cuts, [spare]]))]


@functools.cache  # a few thousand colour triples, asked for again in every scene drawn
def _distance_to_blend(color: str, a: str, b: str) -> float:
    """RGB distance from `color` to the nearest blend of `a` and `b`."""
    p, a_, b_ = (np.asarray(PALETTE[c], np.float64) for c in (color, a, b))
    ab = b_ - a_
    t = np.clip(np.dot(p - a_, ab) / max(np.dot(ab, ab), 1e-9), 0.0, 1.0)
    return float(np.linalg.norm(p - (a_ + t * ab)))


def _sample_background(rng: np.random.Generator, avoid: set[str]) -> Background:
    """A background sharing no colour with `avoid`, so that consecutive events differ."""
    kind = pick(rng, BACKGROUNDS)
    names = [c for c in PALETTE if c not in avoid]
    first = pick(rng, names)
    if kind == "solid":
        colors: tuple[str, ...] = (first,)
    else:
        second = pick(rng, [c for c in names if _distance_to_blend(c, first, first)
                             >= BACKGROUND_CONTRAST])
        colors = (first, second)
    periods = {"gradient": (0.5, 0.9), "stripes": (0.12, 0.3), "checkerboard": (0.2, 0.4)}
    period = periods.get(kind, (0.3, 0.6))
    return Background(kind, colors, float(rng.uniform(0, 2 * np.pi)),
                      float(rng.uniform(*period)), int(rng.integers(2**31)))


def _sample_main(rng: np.random.Generator, pattern: str, color: str, action: str,
                 size: str) -> SceneObject:
    """The main object, placed so that it stays inside BOX while performing `action`."""
    scale = {"grows": GROW_SCALES, "shrinks": GROW_SCALES[::-1]}.get(action, (1.0, 1.0))
    step = np.zeros(2)
    if action.startswith("moves"):
        direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
        step = np.array(direction[action.split()[1]]) * rng.uniform(*MOVE_DISTANCE)
    reach = SIZES[size] * max(scale)
    start = rng.uniform(BOX[0] + reach - np.minimum(step, 0), BOX[1] - reach - np.maximum(step, 0))
    return SceneObject(pattern, color, size, tuple(start.tolist()), tuple((start + step).tolist()), scale)


def _place_still(rng: np.random.Generator, pattern: str, color: str, size: str,
                 main: SceneObject) -> SceneObject | None:
    """A still object clear of the main object's whole path, or None if it does not fit."""
    reach = SIZES[size]
    a, b = np.asarray(main.start), np.asarray(main.end)
    for _ in range(20):
        centre = rng.uniform(BOX[0] + reach, BOX[1] - reach, size=2)
        t = np.clip(np.dot(centre - a, b - a) / max(np.dot(b - a, b - a), 1e-9), 0, 1)
        if np.linalg.norm(centre - (a + t * (b - a))) >= main.extent + reach + 0.04:
            xy = tuple(centre.tolist())
            return SceneObject(pattern, color, size, xy, xy, (1.0, 1.0))
    return None


def sample_scene(rng: np.random.Generator, previous: Scene | None) -> Scene:
    """A scene that differs visibly from `previous`: new background colours, new main object."""
    avoid = set(previous.background.colors) if previous else set()
    while True:
        background = _sample_background(rng, avoid)
        first, last = background.colors[0], background.colors[-1]
        colors = [c for c in OBJECT_COLORS
                  if _distance_to_blend(c, first, last) >= OBJECT_CONTRAST]
        if not colors:
            continue
        action = pick(rng, ACTIONS)
        color, pattern = pick(rng, colors), pick(rng, PATTERNS)
        if previous and (pattern, color) == (previous.main.pattern, previous.main.color):
            continue
        main = _sample_main(rng, pattern, color, action, pick(rng, list(SIZES)))
        objects = [main]
        if rng.random() < 0.5:
            others = [c for c in colors
                      if _distance_to_blend(c, color, color) >= OBJECT_CONTRAST]
            if not others:
                continue
            second = _place_still(rng, pick(rng, PATTERNS), pick(rng, others),
                                  pick(rng, list(SIZES)), main)
            if second is None:
                continue
            objects.append(second)
        return Scene(background, tuple(objects), action)


def sample_camera(rng: np.random.Generator, bounds: tuple[float, float, float, float],
                   previous: Camera | None) -> Camera:
    """A framing that keeps `bounds` in view and whose zoom differs clearly from `previous`."""
    x0, y0, x1, y1 = bounds
    widest = max(x1 - x0, y1 - y0) + 2 * CAMERA_MARGIN
    low, high = ZOOM_RANGE[0], min(ZOOM_RANGE[1], 1 / widest)
    ranges = [(low, high)]
    if previous is not None:
        ranges = [(low, previous.zoom / MIN_ZOOM_RATIO), (previous.zoom * MIN_ZOOM_RATIO, high)]
    ranges = [(a, b) for a, b in ranges if b > a]
    lengths = np.array([math.log(b / a) for a, b in ranges])
    a, b = ranges[int(rng.choice(len(ranges), p=lengths / lengths.sum()))]
    zoom = float(math.exp(rng.uniform(math.log(a), math.log(b))))
    half = 0.5 / zoom
    cx = rng.uniform(x1 + CAMERA_MARGIN - half, x0 - CAMERA_MARGIN + half)
    cy = rng.uniform(y1 + CAMERA_MARGIN - half, y0 - CAMERA_MARGIN + half)
    return Camera(float(cx), float(cy), zoom)


def _framing_change(background: Background, a: Camera, b: Camera) -> float:
    """Mean absolute RGB difference that cutting from framing `a` to `b` makes to the background."""
    first, last = (np.asarray(PALETTE[c], np.float64) for c in
                   (background.colors[0], background.colors[-1]))
    blend = np.abs(view_pattern(background, a, 32) - view_pattern(background, b, 32))
    return float(blend.mean() * np.abs(last - first).mean())


def _next_camera(rng: np.random.Generator, scene: Scene, previous: Camera) -> Camera | None:
    """A framing of `scene` that a cut from `previous` visibly changes, or None if 20 draws
    find none (a plain or low-contrast backdrop: such a scene keeps a single shot)."""
    for _ in range(20):
        camera = sample_camera(rng, scene.bounds(), previous)
        if _framing_change(scene.background, previous, camera) >= MIN_FRAMING_CHANGE:
            return camera
    return None


def _sample_transition(rng: np.random.Generator, boundary: int, fps: int) -> Transition:
    """A cut, or a fade/dissolve of 0.3-0.6 s centred on the event boundary."""
    kind = TRANSITIONS[int(rng.choice(len(TRANSITIONS), p=[0.5, 0.25, 0.25]))]
    if kind == "cut":
        return Transition(kind, boundary, boundary)
    length = max(2, round(rng.uniform(0.3, 0.6) * fps))
    start = boundary - length // 2
    return Transition(kind, start, start + length)


def check_args(size: int, fps: int, duration: float) -> None:
    """Raises ValueError for a frame size, frame rate or mean duration no video can have."""
    if size < 32 or size % 2:
        raise ValueError(f"size must be an even number >= 32, got {size}")
    if fps < 1:
        raise ValueError(f"fps must be positive, got {fps}")
    if duration < MIN_DURATION:
        raise ValueError(f"duration must be >= {MIN_DURATION} s to hold two events, "
                         f"got {duration}")


def sample_video_spec(seed: int, index: int, *, size: int = 128, fps: int = 24,
                      duration: float = 20.0) -> VideoSpec:
    """Draws video `index` of the corpus `seed`; lasts 0.75-1.25 x `duration` seconds."""
    check_args(size, fps, duration)
    rng = np.random.default_rng([seed, index])
    num_frames = round(duration * rng.uniform(0.75, 1.25) * fps)
    min_event = math.ceil(MIN_EVENT_SECONDS * fps)
    min_shot = math.ceil(MIN_SHOT_SECONDS * fps)
    num_events = int(rng.integers(2, min(MAX_EVENTS, num_frames // min_event) + 1))
    events: list[Event] = []
    start = 0
    for length in _partition(rng, num_frames, num_events, min_event):
        scene = sample_scene(rng, events[-1].scene if events else None)
        wanted_shots = int(rng.integers(1, min(MAX_SHOTS, length // min_shot) + 1))
        cameras = [sample_camera(rng, scene.bounds(), None)]
        while len(cameras) < wanted_shots and (camera := _next_camera(rng, scene, cameras[-1])):
            cameras.append(camera)
        ends = start + np.cumsum(_partition(rng, length, len(cameras), min_shot))
        shots = tuple(zip([start, *ends[:-1].tolist()], ends.tolist()))
        events.append(Event(start, start + length, scene, shots, tuple(cameras),
                            caption(rng, scene)))
        start += length
    transitions = tuple(_sample_transition(rng, e.start_frame, fps) for e in events[1:])
    return VideoSpec(
        video_id=f"synth_{index:05d}",
        size=size,
        fps=fps,
        num_frames=num_frames,
        events=tuple(events),
        transitions=transitions,
        title=sample_title(rng, events),
        description=sample_description(rng, events),
        subtitles=sample_subtitles(rng, events, fps),
    )
