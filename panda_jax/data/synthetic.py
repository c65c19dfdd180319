"""Grounded synthetic video corpus: the test bed for splitting, captioning and selection.

A video is a sequence of 2-6 *events*. An event is one scene (a background, one or two
coloured shapes, one action of the main shape) filmed in 1-3 *shots* that differ only in
camera framing, so a shot detector should find every cut while semantic stitching should
merge the shots of an event again. Events are joined by hard cuts, fades through black or
dissolves. Each video carries the metadata of a real upload (title, description and timed
subtitles, some of them wrong) and the ground truth that later stages are scored against:
shots, events with captions and structured facts, transitions and subtitle noise.

Video i depends only on (seed, i), so a corpus is the same whatever the worker count (records
exactly; video files in content, since x264 is not always byte-reproducible).

    python -m panda_jax.data.synthetic --out /tmp/synth --num-videos 100 --seed 0 --workers 2
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import tqdm

from panda_jax.records import write_jsonl
from panda_jax.video.writer import VideoWriter

log = logging.getLogger(__name__)

# Clearly distinct named colours (RGB). Objects take the bright ones; a background may take
# any, provided every colour it shows stays far from the colours of the objects in front.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (245, 220, 50),
    "green": (50, 170, 70),
    "cyan": (60, 210, 230),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "pink": (245, 130, 200),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "navy": (20, 30, 100),
    "brown": (120, 70, 30),
    "teal": (0, 120, 120),
    "beige": (225, 210, 170),
    "olive": (110, 110, 30),
}
OBJECT_COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "white")
SHAPES = ("circle", "square", "triangle", "star", "diamond", "hexagon", "cross")
# Circumradius of the unscaled shape, in units of the frame side at zoom 1.
SIZES = {"small": 0.08, "medium": 0.11, "large": 0.15}
ACTIONS = (
    "moves left", "moves right", "moves up", "moves down",
    "grows", "shrinks", "rotates", "stays still",
)
BACKGROUNDS = ("solid", "gradient", "stripes", "checkerboard", "noise")
TRANSITIONS = ("cut", "fade", "dissolve")
SUBTITLE_NOISE = ("none", "misaligned", "wrong_color")

MIN_DURATION = 8.0  # seconds; the shortest video (0.75x) must still hold two events
MIN_EVENT_SECONDS = 3.0
MIN_SHOT_SECONDS = 1.5  # well above the 15-frame minimum scene length of shot detectors
MAX_EVENTS = 6
MAX_SHOTS = 3

OBJECT_CONTRAST = 100.0  # min RGB distance between an object colour and anything else shown
BACKGROUND_CONTRAST = 80.0  # min RGB distance between the two colours of a background
BOX = (0.12, 0.88)  # objects stay inside this square of world coordinates, whole event long
ZOOM_RANGE = (0.65, 1.6)
# Consecutive shots of an event differ in zoom by at least this factor, so that every cut
# changes the picture. With BOX and CAMERA_MARGIN the largest allowed zoom is >= 1.19, which
# keeps a zoom at least this far from any previous one always available.
MIN_ZOOM_RATIO = 1.25
CAMERA_MARGIN = 0.04  # world units kept between the objects and the frame edge
MIN_FRAMING_CHANGE = 25.0  # mean absolute RGB change a framing cut should make
MOVE_DISTANCE = (0.22, 0.38)  # world units a moving object travels over its event
GROW_SCALES = (0.6, 1.4)
CRF = 17

_T = TypeVar("_T")


def _polygon(sides: int, phase: float) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(sides) / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return _polygon(2 * points, -np.pi / 2) * radii[:, None]


def _cross(width: float = 0.33) -> np.ndarray:
    w = width
    return np.array([
        (-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w),
        (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w),
    ], dtype=np.float64)


# Unit outlines in image orientation (y grows downwards); every shape is drawn as a polygon.
_OUTLINES: dict[str, np.ndarray] = {
    "circle": _polygon(48, 0.0),
    "square": _polygon(4, np.pi / 4),
    "triangle": _polygon(3, -np.pi / 2),
    "star": _star(),
    "diamond": np.array([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)], dtype=np.float64),
    "hexagon": _polygon(6, 0.0),
    "cross": _cross(),
}
_EXTENTS = {shape: float(np.linalg.norm(o, axis=1).max()) for shape, o in _OUTLINES.items()}


# ----------------------------------------------------------------------------- specs


@dataclasses.dataclass(frozen=True)
class Background:
    """A pattern in world coordinates that blends `colors[0]` into `colors[-1]`.

    `angle` orients gradients, stripes and checkerboards; `period` is the gradient length or
    the stripe, checker or blob wavelength, in world units; `seed` draws the noise waves.
    """

    kind: str
    colors: tuple[str, ...]
    angle: float
    period: float
    seed: int


@dataclasses.dataclass(frozen=True)
class SceneObject:
    """A shape whose position, scale and angle move linearly over its event."""

    shape: str
    color: str
    size: str
    start: tuple[float, float]
    end: tuple[float, float]
    scale: tuple[float, float]
    angle: tuple[float, float]

    @property
    def extent(self) -> float:
        """The largest distance of the outline from the centre, in world units."""
        return SIZES[self.size] * max(self.scale) * _EXTENTS[self.shape]

    def outline(self, progress: float) -> np.ndarray:
        """The world-coordinate polygon (N, 2) at `progress` in [0, 1] of the event."""
        p = progress
        centre = (1 - p) * np.asarray(self.start) + p * np.asarray(self.end)
        radius = SIZES[self.size] * ((1 - p) * self.scale[0] + p * self.scale[1])
        angle = (1 - p) * self.angle[0] + p * self.angle[1]
        c, s = math.cos(angle), math.sin(angle)
        return _OUTLINES[self.shape] @ np.array([[c, s], [-s, c]]) * radius + centre


@dataclasses.dataclass(frozen=True)
class Scene:
    """What an event shows; `objects[0]` is the main object and performs `action`."""

    background: Background
    objects: tuple[SceneObject, ...]
    action: str

    @property
    def main(self) -> SceneObject:
        return self.objects[0]

    @property
    def colors(self) -> set[str]:
        return set(self.background.colors) | {o.color for o in self.objects}

    def bounds(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1): the world box every object stays in during the whole event."""
        boxes = [
            (min(o.start[0], o.end[0]) - o.extent, min(o.start[1], o.end[1]) - o.extent,
             max(o.start[0], o.end[0]) + o.extent, max(o.start[1], o.end[1]) + o.extent)
            for o in self.objects
        ]
        x0, y0, x1, y1 = zip(*boxes)
        return min(x0), min(y0), max(x1), max(y1)

    def facts(self) -> dict[str, Any]:
        """Everything a caption may say, as plain JSON."""
        return {
            "background": {"kind": self.background.kind, "colors": list(self.background.colors)},
            "objects": [{"shape": o.shape, "color": o.color, "size": o.size} for o in self.objects],
            "action": self.action,
        }


@dataclasses.dataclass(frozen=True)
class Camera:
    """Maps world to image: the view is centred on (cx, cy) and spans 1 / zoom world units."""

    cx: float
    cy: float
    zoom: float


@dataclasses.dataclass(frozen=True)
class Event:
    """Frames [start_frame, end_frame) of one scene; `shots` are absolute frame ranges."""

    start_frame: int
    end_frame: int
    scene: Scene
    shots: tuple[tuple[int, int], ...]
    cameras: tuple[Camera, ...]
    caption: str

    @property
    def num_frames(self) -> int:
        return self.end_frame - self.start_frame


@dataclasses.dataclass(frozen=True)
class Transition:
    """Frames [start_frame, end_frame) blend two shots, which meet at `boundary`.

    A fade darkens to black at the boundary frame and brightens again; a dissolve cross-fades.
    A cut blends nothing: start_frame == end_frame == boundary.
    """

    kind: str
    start_frame: int
    end_frame: int

    @property
    def boundary(self) -> int:
        return self.start_frame + (self.end_frame - self.start_frame) // 2

    def covers(self, frame: int) -> bool:
        return self.start_frame <= frame < self.end_frame


@dataclasses.dataclass(frozen=True)
class Subtitle:
    """A timed line narrating `event`, possibly with noise (see SUBTITLE_NOISE)."""

    start: float
    end: float
    text: str
    event: int
    noise: str


@dataclasses.dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video and to write its `videos` record."""

    video_id: str
    size: int
    fps: int
    num_frames: int
    events: tuple[Event, ...]
    transitions: tuple[Transition, ...]  # transitions[k] joins events k and k + 1
    title: str
    description: str
    subtitles: tuple[Subtitle, ...]

    @property
    def path(self) -> str:
        """The mp4 path relative to the corpus folder."""
        return f"videos/{self.video_id}.mp4"

    def record(self) -> dict[str, Any]:
        """The `videos` stage record plus the ground truth, all frame ranges [start, end):

        gt_shots: [[start_frame, end_frame], ...], partitioning [0, num_frames).
        gt_events: [{start_frame, end_frame, caption, facts}], each a run of whole shots.
        gt_transitions: [{type, start_frame, end_frame}] for every shot boundary, which lies
          at start_frame + (end_frame - start_frame) // 2; inside an event always a "cut".
        gt_subtitles: [{event, noise}], one per line of `subtitles`, in the same order.
        """
        framing_cuts = [
            {"type": "cut", "start_frame": start, "end_frame": start}
            for event in self.events for start, _ in event.shots[1:]
        ]
        event_changes = [
            {"type": t.kind, "start_frame": t.start_frame, "end_frame": t.end_frame}
            for t in self.transitions
        ]
        return {
            "video_id": self.video_id,
            "path": self.path,
            "title": self.title,
            "description": self.description,
            "subtitles": [{"start": s.start, "end": s.end, "text": s.text} for s in self.subtitles],
            "duration": self.num_frames / self.fps,
            "fps": self.fps,
            "num_frames": self.num_frames,
            "width": self.size,
            "height": self.size,
            "gt_shots": [[start, end] for event in self.events for start, end in event.shots],
            "gt_events": [
                {"start_frame": e.start_frame, "end_frame": e.end_frame,
                 "caption": e.caption, "facts": e.scene.facts()}
                for e in self.events
            ],
            "gt_transitions": sorted(
                framing_cuts + event_changes, key=lambda t: t["start_frame"]),
            "gt_subtitles": [{"event": s.event, "noise": s.noise} for s in self.subtitles],
        }


# ----------------------------------------------------------------------------- sampling


def _pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    return options[int(rng.integers(len(options)))]


def _partition(rng: np.random.Generator, total: int, parts: int, minimum: int) -> list[int]:
    """Splits `total` into `parts` random lengths of at least `minimum` each."""
    spare = total - parts * minimum
    cuts = np.sort(rng.integers(0, spare + 1, size=parts - 1))
    return [minimum + int(d) for d in np.diff(np.concatenate([[0], cuts, [spare]]))]


def _distance_to_blend(color: str, a: str, b: str) -> float:
    """RGB distance from `color` to the nearest blend of `a` and `b`."""
    p, a_, b_ = (np.asarray(PALETTE[c], np.float64) for c in (color, a, b))
    ab = b_ - a_
    t = np.clip(np.dot(p - a_, ab) / max(np.dot(ab, ab), 1e-9), 0.0, 1.0)
    return float(np.linalg.norm(p - (a_ + t * ab)))


def _sample_background(rng: np.random.Generator, avoid: set[str]) -> Background:
    """A background sharing no colour with `avoid`, so that consecutive events differ."""
    kind = _pick(rng, BACKGROUNDS)
    names = [c for c in PALETTE if c not in avoid]
    first = _pick(rng, names)
    if kind == "solid":
        colors: tuple[str, ...] = (first,)
    else:
        second = _pick(rng, [c for c in names if _distance_to_blend(c, first, first)
                             >= BACKGROUND_CONTRAST])
        colors = (first, second)
    periods = {"gradient": (0.5, 0.9), "stripes": (0.12, 0.3), "checkerboard": (0.2, 0.4)}
    period = periods.get(kind, (0.3, 0.6))
    return Background(kind, colors, float(rng.uniform(0, 2 * np.pi)),
                      float(rng.uniform(*period)), int(rng.integers(2**31)))


def _sample_main(rng: np.random.Generator, shape: str, color: str, action: str,
                 size: str) -> SceneObject:
    """The main object, placed so that it stays inside BOX while performing `action`."""
    scale, angle = (1.0, 1.0), (0.0, 0.0)
    if action == "grows":
        scale = GROW_SCALES
    elif action == "shrinks":
        scale = GROW_SCALES[::-1]
    elif action == "rotates":
        angle = (0.0, float(rng.choice([-1, 1]) * rng.uniform(0.75 * np.pi, 1.5 * np.pi)))
    step = np.zeros(2)
    if action.startswith("moves"):
        direction = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
        step = np.array(direction[action.split()[1]]) * rng.uniform(*MOVE_DISTANCE)
    reach = SIZES[size] * max(scale) * _EXTENTS[shape]
    start = rng.uniform(BOX[0] + reach - np.minimum(step, 0), BOX[1] - reach - np.maximum(step, 0))
    return SceneObject(shape, color, size, tuple(start.tolist()), tuple((start + step).tolist()),
                       scale, angle)


def _place_still(rng: np.random.Generator, shape: str, color: str, size: str,
                 main: SceneObject) -> SceneObject | None:
    """A still object clear of the main object's whole path, or None if it does not fit."""
    reach = SIZES[size] * _EXTENTS[shape]
    a, b = np.asarray(main.start), np.asarray(main.end)
    for _ in range(20):
        centre = rng.uniform(BOX[0] + reach, BOX[1] - reach, size=2)
        t = np.clip(np.dot(centre - a, b - a) / max(np.dot(b - a, b - a), 1e-9), 0, 1)
        if np.linalg.norm(centre - (a + t * (b - a))) >= main.extent + reach + 0.04:
            xy = tuple(centre.tolist())
            return SceneObject(shape, color, size, xy, xy, (1.0, 1.0), (0.0, 0.0))
    return None


def _sample_scene(rng: np.random.Generator, previous: Scene | None) -> Scene:
    """A scene that differs visibly from `previous`: new background colours, new main object."""
    avoid = set(previous.background.colors) if previous else set()
    while True:
        background = _sample_background(rng, avoid)
        first, last = background.colors[0], background.colors[-1]
        colors = [c for c in OBJECT_COLORS
                  if _distance_to_blend(c, first, last) >= OBJECT_CONTRAST]
        if not colors:
            continue
        action = _pick(rng, ACTIONS)
        shapes = [s for s in SHAPES if not (action == "rotates" and s == "circle")]
        color, shape = _pick(rng, colors), _pick(rng, shapes)
        if previous and (shape, color) == (previous.main.shape, previous.main.color):
            continue
        main = _sample_main(rng, shape, color, action, _pick(rng, list(SIZES)))
        objects = [main]
        if rng.random() < 0.5:
            others = [c for c in colors
                      if _distance_to_blend(c, color, color) >= OBJECT_CONTRAST]
            if not others:
                continue
            second = _place_still(rng, _pick(rng, SHAPES), _pick(rng, others),
                                  _pick(rng, list(SIZES)), main)
            if second is None:
                continue
            objects.append(second)
        return Scene(background, tuple(objects), action)


def _sample_camera(rng: np.random.Generator, bounds: tuple[float, float, float, float],
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
    blend = np.abs(_view_pattern(background, a, 32) - _view_pattern(background, b, 32))
    return float(blend.mean() * np.abs(last - first).mean())


def _next_camera(rng: np.random.Generator, scene: Scene, previous: Camera) -> Camera | None:
    """A framing of `scene` that a cut from `previous` visibly changes, or None if 20 draws
    find none (a plain or low-contrast backdrop: such a scene keeps a single shot)."""
    for _ in range(20):
        camera = _sample_camera(rng, scene.bounds(), previous)
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


# ----------------------------------------------------------------------------- text


_ACTION_PHRASES = {
    "moves left": ("moves to the left", "slides left", "drifts leftward",
                   "travels from right to left"),
    "moves right": ("moves to the right", "slides right", "drifts rightward",
                    "travels from left to right"),
    "moves up": ("moves up", "rises", "floats upward", "travels from bottom to top"),
    "moves down": ("moves down", "sinks", "drops downward", "travels from top to bottom"),
    "grows": ("grows", "gets bigger", "expands", "swells in size"),
    "shrinks": ("shrinks", "gets smaller", "contracts", "shrinks in size"),
    "rotates": ("rotates", "spins", "turns around", "spins in place"),
    "stays still": ("stays still", "sits motionless", "remains in place", "does not move"),
}
_BACKGROUND_PHRASES = {
    "solid": ("a plain {0} {noun}", "a solid {0} {noun}"),
    "gradient": ("a {0}-to-{1} gradient {noun}", "a {noun} fading from {0} to {1}"),
    "stripes": ("a {0} and {1} striped {noun}", "a {noun} of {0} and {1} stripes"),
    "checkerboard": ("a {0} and {1} checkered {noun}", "a {0} and {1} checkerboard {noun}"),
    "noise": ("a mottled {0} and {1} {noun}", "a blotchy {0} and {1} {noun}"),
}
_CAPTIONS = (
    "{obj} {action} on {background}{other}.",
    "On {background}, {obj} {action}{other}.",
    "{obj} {action} in front of {background}{other}.",
    "A video of {obj} that {action} against {background}{other}.",
    "Against {background}, {obj} {action}{other}.",
)
_OTHER_OBJECT = (", next to {obj}", " while {obj} stays put", ", with {obj} nearby",
                 " beside {obj}")
_NARRATIONS = (
    "look, the {color} {shape} {action}!",
    "and now here comes {obj}",
    "this {color} {shape} {action}",
    "can you see the {color} {shape}? it {action}",
    "here we have {obj}, and it {action}",
)
_TITLES = (
    "{Color} {shape} and friends | shapes compilation #{n}",
    "Learn colors with shapes! Part {n}",
    "{Shapes} for kids ({n})",
    "VID_{date}_{clock}",
    "relaxing shapes animation {n}",
    "the {color} {shape} one",
)
_GENERIC_DESCRIPTIONS = (
    "Simple shapes and colors for toddlers.",
    "Relaxing geometric animation, no talking. Subscribe for more!",
    "Made with my own little animation engine :)",
    "",
)


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _object_phrase(rng: np.random.Generator, obj: SceneObject, color: str | None = None) -> str:
    """'a red circle' or, half of the time, 'a large red circle'."""
    words = [color or obj.color, obj.shape]
    if rng.random() < 0.5:
        words.insert(0, obj.size)
    return _with_article(" ".join(words))


def _caption(rng: np.random.Generator, scene: Scene) -> str:
    """One of several paraphrases of the scene's facts."""
    background = scene.background
    other = ""
    if len(scene.objects) > 1:
        other = _pick(rng, _OTHER_OBJECT).format(obj=_object_phrase(rng, scene.objects[1]))
    text = _pick(rng, _CAPTIONS).format(
        obj=_object_phrase(rng, scene.main),
        action=_pick(rng, _ACTION_PHRASES[scene.action]),
        background=_pick(rng, _BACKGROUND_PHRASES[background.kind]).format(
            *background.colors, noun=_pick(rng, ("background", "backdrop"))),
        other=other,
    )
    return text[0].upper() + text[1:]


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _sample_title(rng: np.random.Generator, events: Sequence[Event]) -> str:
    main = _pick(rng, events).scene.main
    return _pick(rng, _TITLES).format(
        color=main.color, Color=main.color.capitalize(), shape=main.shape,
        Shapes=_plural(main.shape).capitalize(), n=int(rng.integers(1, 200)),
        date=f"20{rng.integers(15, 25)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
        clock=f"{rng.integers(24):02d}{rng.integers(60):02d}{rng.integers(60):02d}",
    )


def _sample_description(rng: np.random.Generator, events: Sequence[Event]) -> str:
    """Generic channel text, a summary of some events, or both."""
    generic = _pick(rng, _GENERIC_DESCRIPTIONS)
    mode = _pick(rng, ("generic", "summary", "both"))
    if mode == "generic":
        return generic
    chosen = sorted(rng.choice(len(events), size=min(len(events), int(rng.integers(1, 4))),
                               replace=False))
    if rng.random() < 0.5:
        summary = "In this video: " + "; then ".join(
            _caption(rng, events[i].scene).rstrip(".").lower() for i in chosen) + "."
    else:
        summary = "Featuring " + " and ".join(
            _object_phrase(rng, events[i].scene.main) for i in chosen) + "."
    return summary if mode == "summary" or not generic else f"{summary} {generic}"


def _sample_subtitles(rng: np.random.Generator, events: Sequence[Event],
                      fps: int) -> tuple[Subtitle, ...]:
    """Narrates most events; some lines are shifted in time, some name a wrong colour."""
    duration = events[-1].end_frame / fps
    lines = []
    for index, event in enumerate(events):
        if rng.random() < 0.3:
            continue  # not narrated
        scene = event.scene
        noise = SUBTITLE_NOISE[int(rng.choice(len(SUBTITLE_NOISE), p=[0.6, 0.2, 0.2]))]
        color = scene.main.color
        if noise == "wrong_color":
            color = _pick(rng, [c for c in OBJECT_COLORS if c not in scene.colors])
        start = event.start_frame / fps + rng.uniform(0.1, 0.6)
        end = min(start + rng.uniform(1.5, 3.0), event.end_frame / fps - 0.1)
        if noise == "misaligned":
            # Videos last >= 6 s and lines <= 3 s, so one direction has >= 1.5 s of room.
            rooms = {-1: start, 1: duration - end}
            sign = int(rng.choice([-1, 1]))
            if rooms[sign] < 1.5:
                sign = -sign
            shift = sign * rng.uniform(1.5, min(4.0, rooms[sign]))
            start, end = start + shift, end + shift
        text = _pick(rng, _NARRATIONS).format(
            color=color, shape=scene.main.shape, obj=_object_phrase(rng, scene.main, color),
            action=_pick(rng, _ACTION_PHRASES[scene.action]))
        lines.append(Subtitle(round(start, 3), round(end, 3), text, index, noise))
    return tuple(sorted(lines, key=lambda line: line.start))


def _check_args(size: int, fps: int, duration: float) -> None:
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
    _check_args(size, fps, duration)
    rng = np.random.default_rng([seed, index])
    num_frames = round(duration * rng.uniform(0.75, 1.25) * fps)
    min_event = math.ceil(MIN_EVENT_SECONDS * fps)
    min_shot = math.ceil(MIN_SHOT_SECONDS * fps)
    num_events = int(rng.integers(2, min(MAX_EVENTS, num_frames // min_event) + 1))
    events: list[Event] = []
    start = 0
    for length in _partition(rng, num_frames, num_events, min_event):
        scene = _sample_scene(rng, events[-1].scene if events else None)
        wanted_shots = int(rng.integers(1, min(MAX_SHOTS, length // min_shot) + 1))
        cameras = [_sample_camera(rng, scene.bounds(), None)]
        while len(cameras) < wanted_shots and (camera := _next_camera(rng, scene, cameras[-1])):
            cameras.append(camera)
        ends = start + np.cumsum(_partition(rng, length, len(cameras), min_shot))
        shots = tuple(zip([start, *ends[:-1].tolist()], ends.tolist()))
        events.append(Event(start, start + length, scene, shots, tuple(cameras),
                            _caption(rng, scene)))
        start += length
    transitions = tuple(_sample_transition(rng, e.start_frame, fps) for e in events[1:])
    return VideoSpec(
        video_id=f"synth_{index:05d}",
        size=size,
        fps=fps,
        num_frames=num_frames,
        events=tuple(events),
        transitions=transitions,
        title=_sample_title(rng, events),
        description=_sample_description(rng, events),
        subtitles=_sample_subtitles(rng, events, fps),
    )


# ----------------------------------------------------------------------------- rendering


def _pattern(background: Background, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far each world point is blended from the first colour to the last, in [0, 1]."""
    c, s = math.cos(background.angle), math.sin(background.angle)
    along, across = (x - 0.5) * c + (y - 0.5) * s, (y - 0.5) * c - (x - 0.5) * s
    wave = 2 * np.pi / background.period
    if background.kind == "solid":
        return np.zeros_like(x)
    if background.kind == "gradient":
        return np.clip(along / background.period + 0.5, 0, 1)
    if background.kind == "stripes":
        return np.clip(0.5 + 2 * np.sin(wave * along), 0, 1)
    if background.kind == "checkerboard":
        return np.clip(0.5 + 4 * np.sin(wave * along) * np.sin(wave * across), 0, 1)
    waves = np.random.default_rng(background.seed)  # noise: a sum of random plane waves
    noise = np.zeros_like(x)
    for _ in range(6):
        theta, phase = waves.uniform(0, 2 * np.pi, size=2)
        k = wave * waves.uniform(0.6, 1.4)
        noise += np.cos(k * (x * math.cos(theta) + y * math.sin(theta)) + phase)
    return np.clip(0.5 + 0.8 * noise / math.sqrt(3), 0, 1)


def _view_pattern(background: Background, camera: Camera, size: int) -> np.ndarray:
    """The background's blend weights seen through `camera`, at size x size pixel centres."""
    offsets = ((np.arange(size) + 0.5) / size - 0.5) / camera.zoom
    x, y = np.meshgrid(camera.cx + offsets, camera.cy + offsets)
    return _pattern(background, x, y)


def _render_background(background: Background, camera: Camera, size: int) -> np.ndarray:
    t = _view_pattern(background, camera, size)[..., None]
    first, last = (np.asarray(PALETTE[c], np.float64) for c in
                   (background.colors[0], background.colors[-1]))
    return np.rint((1 - t) * first + t * last).astype(np.uint8)


def _draw(image: np.ndarray, obj: SceneObject, progress: float, camera: Camera) -> None:
    """Draws `obj` anti-aliased with sub-pixel precision (4 fractional bits)."""
    size = image.shape[0]
    pixels = ((obj.outline(progress) - (camera.cx, camera.cy)) * camera.zoom + 0.5) * size
    points = np.rint((pixels - 0.5) * 16).astype(np.int32)  # cv2 puts pixel centres at integers
    cv2.fillPoly(image, [points], PALETTE[obj.color], lineType=cv2.LINE_AA, shift=4)


def render_frames(spec: VideoSpec) -> Iterator[np.ndarray]:
    """Yields the video's frames in order, uint8 RGB arrays of shape (size, size, 3)."""
    backgrounds: dict[tuple[int, int], np.ndarray] = {}

    def view(event_index: int, shot_index: int, frame: int) -> np.ndarray:
        event = spec.events[event_index]
        camera = event.cameras[shot_index]
        key = (event_index, shot_index)
        if key not in backgrounds:
            backgrounds[key] = _render_background(event.scene.background, camera, spec.size)
        image = backgrounds[key].copy()
        # Time runs on across the shots of an event; a dissolve holds the neighbour still.
        progress = min(max((frame - event.start_frame) / (event.num_frames - 1), 0.0), 1.0)
        for obj in event.scene.objects:
            _draw(image, obj, progress, camera)
        return image

    for e, event in enumerate(spec.events):
        for s, (shot_start, shot_end) in enumerate(event.shots):
            for frame in range(shot_start, shot_end):
                k = next((k for k in (e - 1, e) if 0 <= k < len(spec.transitions)
                          and spec.transitions[k].covers(frame)), None)
                if k is None or spec.transitions[k].kind == "cut":
                    yield view(e, s, frame)
                    continue
                transition = spec.transitions[k]
                boundary = transition.boundary
                if transition.kind == "dissolve":
                    alpha = (frame - transition.start_frame + 1) / (
                        transition.end_frame - transition.start_frame + 1)
                    before = view(k, len(spec.events[k].shots) - 1, frame)
                    after = view(k + 1, 0, frame)
                    image = (1 - alpha) * before + alpha * after
                elif frame < boundary:  # fade out to black, reached at the boundary
                    image = view(e, s, frame) * (
                        (boundary - frame) / (boundary - transition.start_frame + 1))
                else:  # fade in from black
                    image = view(e, s, frame) * (
                        (frame - boundary) / (transition.end_frame - boundary))
                yield np.rint(image).astype(np.uint8)


def write_video(spec: VideoSpec, path: str | os.PathLike) -> None:
    """Encodes the frames as H.264 mp4 (yuv420p, constant rate, frame i at pts i), atomically."""
    with VideoWriter(path, spec.fps, options={"crf": str(CRF), "preset": "medium"}) as writer:
        for image in render_frames(spec):
            writer.write(image)


# ----------------------------------------------------------------------------- corpus


def _generate_video(out_dir: Path, seed: int, index: int, *, size: int, fps: int,
                    duration: float) -> dict[str, Any]:
    spec = sample_video_spec(seed, index, size=size, fps=fps, duration=duration)
    write_video(spec, out_dir / spec.path)
    return spec.record()


def generate_corpus(out_dir: str | os.PathLike, num_videos: int, seed: int, size: int = 128,
                    fps: int = 24, duration: float = 20.0, workers: int = 1
                    ) -> list[dict[str, Any]]:
    """Writes `out_dir/videos/*.mp4` and `out_dir/videos.jsonl`; returns the records.

    Videos are made in `workers` processes; the output is the same for any worker count.
    """
    _check_args(size, fps, duration)  # fail before starting any worker
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    make = functools.partial(_generate_video, out_dir, seed, size=size, fps=fps,
                             duration=duration)
    with contextlib.ExitStack() as stack:
        results: Iterator[dict[str, Any]] = map(make, range(num_videos))
        if workers > 1:
            # spawn, not fork: the caller may hold threads (JAX, x264) that fork would copy.
            pool = stack.enter_context(concurrent.futures.ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn")))
            results = pool.map(make, range(num_videos))
        corpus = list(tqdm.tqdm(results, total=num_videos, desc="synthetic videos",
                                unit="video"))
    write_jsonl(out_dir / "videos.jsonl", corpus)
    return corpus


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m panda_jax.data.synthetic",
        description="Generate a grounded synthetic video corpus: H.264 videos of coloured "
                    "shapes with titles, descriptions, noisy subtitles and ground-truth "
                    "shots, events, captions and transitions (DIR/videos.jsonl).")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="output folder; gets videos/ and videos.jsonl")
    parser.add_argument("--num-videos", type=int, default=100, metavar="N",
                        help="how many videos (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="corpus seed; video i depends only on (S, i) (default %(default)s)")
    parser.add_argument("--size", type=int, default=128, metavar="PX",
                        help="frame width and height, even (default %(default)s)")
    parser.add_argument("--fps", type=int, default=24,
                        help="frames per second (default %(default)s)")
    parser.add_argument("--duration", type=float, default=20.0, metavar="SECONDS",
                        help="mean video length; each lasts 0.75-1.25x this (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, metavar="W",
                        help="worker processes; the output is the same for any number "
                             "(default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    began = time.perf_counter()
    corpus = generate_corpus(args.out, args.num_videos, args.seed, size=args.size,
                             fps=args.fps, duration=args.duration, workers=args.workers)
    log.info("wrote %d videos (%d events, %d shots, %.1f min) to %s in %.1f s",
             len(corpus), sum(len(r["gt_events"]) for r in corpus),
             sum(len(r["gt_shots"]) for r in corpus),
             sum(r["duration"] for r in corpus) / 60, args.out / "videos.jsonl",
             time.perf_counter() - began)


if __name__ == "__main__":
    main()
