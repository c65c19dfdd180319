"""Captions and side text: the paraphrased caption of each event, and the title, description
and timed subtitles a real upload would carry, some subtitles deliberately noisy (shifted in
time or naming a wrong colour). Kept apart from the scene sampling so that the wording can
grow without touching the geometry; every function draws from the caller's generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from panda_jax.data.synthetic.spec import (
    OBJECT_COLORS, OBJECT_NOUN, SUBTITLE_NOISE, Event, Scene, SceneObject, Subtitle, VideoSpec, pick,
)

_ACTION_PHRASES = {
    "moves left": ("moves to the left", "slides left", "drifts leftward",
                   "travels from right to left"),
    "moves right": ("moves to the right", "slides right", "drifts rightward",
                    "travels from left to right"),
    "moves up": ("moves up", "rises", "floats upward", "travels from bottom to top"),
    "moves down": ("moves down", "sinks", "drops downward", "travels from top to bottom"),
    "grows": ("grows", "gets bigger", "expands", "swells in size"),
    "shrinks": ("shrinks", "gets smaller", "contracts", "shrinks in size"),
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
    "look, the {color} {pattern} {noun} {action}!",
    "and now here comes {obj}",
    "this {color} {pattern} {noun} {action}",
    "can you see the {color} {pattern} {noun}? it {action}",
    "here we have {obj}, and it {action}",
)
_TITLES = (
    "{Color} {pattern} {noun} and friends | shapes compilation #{n}",
    "Learn colors with shapes! Part {n}",
    "{Pattern} {noun}s for kids ({n})",
    "VID_{date}_{clock}",
    "relaxing shapes animation {n}",
    "the {color} {pattern} one",
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
    """'a red banded disc' or, half of the time, 'a large red banded disc'."""
    words = [color or obj.color, obj.pattern, OBJECT_NOUN]
    if rng.random() < 0.5:
        words.insert(0, obj.size)
    return _with_article(" ".join(words))


def caption(rng: np.random.Generator, scene: Scene) -> str:
    """One of several paraphrases of the scene's facts."""
    background = scene.background
    other = ""
    if len(scene.objects) > 1:
        other = pick(rng, _OTHER_OBJECT).format(obj=_object_phrase(rng, scene.objects[1]))
    text = pick(rng, _CAPTIONS).format(
        obj=_object_phrase(rng, scene.main),
        action=pick(rng, _ACTION_PHRASES[scene.action]),
        background=pick(rng, _BACKGROUND_PHRASES[background.kind]).format(
            *background.colors, noun=pick(rng, ("background", "backdrop"))),
        other=other,
    )
    return text[0].upper() + text[1:]


def sample_title(rng: np.random.Generator, events: Sequence[Event]) -> str:
    main = pick(rng, events).scene.main
    return pick(rng, _TITLES).format(
        color=main.color, Color=main.color.capitalize(), pattern=main.pattern, Pattern=main.pattern.capitalize(),
        noun=OBJECT_NOUN, n=int(rng.integers(1, 200)),
        date=f"20{rng.integers(15, 25)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
        clock=f"{rng.integers(24):02d}{rng.integers(60):02d}{rng.integers(60):02d}",
    )


def sample_description(rng: np.random.Generator, events: Sequence[Event]) -> str:
    """Generic channel text, a summary of some events, or both."""
    generic = pick(rng, _GENERIC_DESCRIPTIONS)
    mode = pick(rng, ("generic", "summary", "both"))
    if mode == "generic":
        return generic
    chosen = sorted(rng.choice(len(events), size=min(len(events), int(rng.integers(1, 4))),
                               replace=False))
    if rng.random() < 0.5:
        summary = "In this video: " + "; then ".join(
            caption(rng, events[i].scene).rstrip(".").lower() for i in chosen) + "."
    else:
        summary = "Featuring " + " and ".join(
            _object_phrase(rng, events[i].scene.main) for i in chosen) + "."
    return summary if mode == "summary" or not generic else f"{summary} {generic}"


def sample_subtitles(rng: np.random.Generator, events: Sequence[Event],
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
            color = pick(rng, [c for c in OBJECT_COLORS if c not in scene.colors])
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
        text = pick(rng, _NARRATIONS).format(
            color=color, pattern=scene.main.pattern, noun=OBJECT_NOUN, obj=_object_phrase(rng, scene.main, color),
            action=pick(rng, _ACTION_PHRASES[scene.action]))
        lines.append(Subtitle(round(start, 3), round(end, 3), text, index, noise))
    return tuple(sorted(lines, key=lambda line: line.start))


def video_texts(spec: VideoSpec) -> list[str]:
    """Every text a video carries: its events' captions, its subtitle lines, title and description (the language
    foundation's reading)."""
    texts = [event.caption for event in spec.events] + [line.text for line in spec.subtitles]
    return [text for text in (*texts, spec.title, spec.description) if text]
