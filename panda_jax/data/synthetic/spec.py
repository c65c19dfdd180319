"""Scene specs: the vocabulary a synthetic video is drawn from and the frozen dataclasses that
describe one, down to the geometry of its objects and backgrounds. Both the sampler and the
renderer read these, and the `videos` record (with its ground truth) is written from them, so
they sit at the bottom of the package and import nothing from it; `pick`, the one draw that
both sampling and text make from this vocabulary, lives here for the same reason.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np

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
# Every object is a disc; what tells objects apart, besides colour and size, is how it is filled. The fill is
# the world's form fact because a small ViT reads it within the budget (the learnability probe: a pattern on
# patches of 8 px is read from step 200 on, while polygon outlines of 3-15 px stayed at chance for 1,700 steps).
PATTERNS = ("smooth", "banded", "dotted", "tiled")
# A pattern's cell, as a share of the frame side (2 px at 64 px): bands and tiles alternate every cell, dots darken
# one cell in four. It is laid in pixels around the object's centre, so that it reads the same at every zoom.
PATTERN_CELL = 1 / 32
PATTERN_SHADE = 0.4  # the darkest points of a pattern: the object's colour times this
OBJECT_NOUN = "disc"
# Radius of the unscaled disc, in units of the frame side at zoom 1.
SIZES = {"small": 0.11, "medium": 0.15, "large": 0.185}
ACTIONS = (
    "moves left", "moves right", "moves up", "moves down",
    "grows", "shrinks", "stays still",
)
BACKGROUNDS = ("solid", "gradient", "stripes", "checkerboard", "noise")
TRANSITIONS = ("cut", "fade", "dissolve")
SUBTITLE_NOISE = ("none", "misaligned", "wrong_color")

MIN_DURATION = 8.0  # seconds; the shortest video (0.75x) must still hold two events
MIN_EVENT_SECONDS = 3.0
MIN_SHOT_SECONDS = 1.5  # well above the 15-frame minimum scene length of shot detectors
MAX_EVENTS = 6
MAX_SHOTS = 3


def _polygon(sides: int) -> np.ndarray:
    angles = 2 * np.pi * np.arange(sides) / sides
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


_DISC = _polygon(48)  # the unit outline every object is drawn with (image orientation: y grows downwards)


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
    """A patterned disc whose position and scale move linearly over its event."""

    pattern: str
    color: str
    size: str
    start: tuple[float, float]
    end: tuple[float, float]
    scale: tuple[float, float]

    @property
    def extent(self) -> float:
        """The largest distance of the outline from the centre, in world units."""
        return SIZES[self.size] * max(self.scale)

    def pose(self, progress: float) -> tuple[np.ndarray, float]:
        """(centre (2,), radius) in world units at `progress` in [0, 1] of the event."""
        p = progress
        centre = (1 - p) * np.asarray(self.start) + p * np.asarray(self.end)
        radius = SIZES[self.size] * ((1 - p) * self.scale[0] + p * self.scale[1])
        return centre, radius

    def outline(self, progress: float) -> np.ndarray:
        """The world-coordinate polygon (N, 2) at `progress` in [0, 1] of the event."""
        centre, radius = self.pose(progress)
        return _DISC * radius + centre


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
            "objects": [{"pattern": o.pattern, "color": o.color, "size": o.size} for o in self.objects],
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


_T = TypeVar("_T")


def pick(rng: np.random.Generator, options: Sequence[_T]) -> _T:
    """One of `options`, uniformly; the draw behind every vocabulary choice."""
    return options[int(rng.integers(len(options)))]


def steep(wave: np.ndarray, gain: float = 2.0) -> np.ndarray:
    """A wave in [-1, 1] made nearly two-level: 0 below -0.5 / gain, 1 above 0.5 / gain, a linear ramp between (the
    backgrounds' stripes and checkers, the objects' patterns: sharp, yet moving smoothly under sub-pixel shifts)."""
    return np.clip(0.5 + gain * wave, 0, 1)


def _pattern(background: Background, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """How far each world point is blended from the first colour to the last, in [0, 1]."""
    c, s = math.cos(background.angle), math.sin(background.angle)
    along, across = (x - 0.5) * c + (y - 0.5) * s, (y - 0.5) * c - (x - 0.5) * s
    wave = 2 * np.pi / background.period
    if background.kind == "solid":
        return np.zeros(np.broadcast_shapes(x.shape, y.shape))
    if background.kind == "gradient":
        return np.clip(along / background.period + 0.5, 0, 1)
    if background.kind == "stripes":
        return steep(np.sin(wave * along))
    if background.kind == "checkerboard":
        return steep(np.sin(wave * along) * np.sin(wave * across), gain=4.0)
    waves = np.random.default_rng(background.seed)  # noise: a sum of random plane waves
    noise = np.zeros(np.broadcast_shapes(x.shape, y.shape))
    for _ in range(6):
        theta, phase = waves.uniform(0, 2 * np.pi, size=2)
        k = wave * waves.uniform(0.6, 1.4)
        noise += np.cos(k * (x * math.cos(theta) + y * math.sin(theta)) + phase)
    return np.clip(0.5 + 0.8 * noise / math.sqrt(3), 0, 1)


def view_pattern(background: Background, camera: Camera, size: int) -> np.ndarray:
    """The background's blend weights seen through `camera`, at size x size pixel centres."""
    offsets = ((np.arange(size) + 0.5) / size - 0.5) / camera.zoom
    x, y = np.meshgrid(camera.cx + offsets, camera.cy + offsets, sparse=True)  # a row and a column, broadcast
    return np.broadcast_to(_pattern(background, x, y), (size, size))
