"""Rendering a VideoSpec: backgrounds through each shot's camera, anti-aliased patterned discs on top,
cuts, fades and dissolves between events, and the H.264 file. It only reads specs, so a spec
can be rendered again (as the tests do) without re-encoding or re-sampling it.
"""

from __future__ import annotations

import os
from collections.abc import Container, Iterator

import cv2
import numpy as np

from panda_jax.data.synthetic.spec import (
    PALETTE, PATTERN_CELL, PATTERN_SHADE, Background, Camera, Scene, SceneObject, VideoSpec, steep, view_pattern,
)
from panda_jax.video.writer import VideoWriter

CRF = 17


def _render_background(background: Background, camera: Camera, size: int) -> np.ndarray:
    t = view_pattern(background, camera, size)[..., None]
    first, last = (np.asarray(PALETTE[c], np.float64) for c in
                   (background.colors[0], background.colors[-1]))
    return np.rint((1 - t) * first + t * last).astype(np.uint8)


def _outline_points(obj: SceneObject, progress: float, camera: Camera, size: int) -> np.ndarray:
    """The outline in cv2's fixed-point pixel coordinates (4 fractional bits; cv2 puts pixel centres at integers)."""
    pixels = ((obj.outline(progress) - (camera.cx, camera.cy)) * camera.zoom + 0.5) * size
    return np.rint((pixels - 0.5) * 16).astype(np.int32)


def _shade(obj: SceneObject, progress: float, camera: Camera, size: int) -> np.ndarray:
    """How dark the object's pattern is at each pixel, in [0, 1]: float (size, size), laid in cells of
    PATTERN_CELL of the frame around the object's centre: cosine half-waves made `steep`, dark where a wave is
    below zero."""
    centre, _ = obj.pose(progress)
    cx, cy = ((centre - (camera.cx, camera.cy)) * camera.zoom + 0.5) * size
    pixels = np.arange(size) + 0.5
    dx, dy = pixels[None, :] - cx, pixels[:, None] - cy
    cell = PATTERN_CELL * size
    across, along = -np.cos(np.pi * dx / cell), -np.cos(np.pi * dy / cell)  # above zero: a dark cell
    if obj.pattern == "banded":
        return np.broadcast_to(steep(along), (size, size))
    if obj.pattern == "tiled":
        return steep(-across * along)
    if obj.pattern == "dotted":
        return steep(across) * steep(along)
    return np.zeros((size, size))  # smooth


def _draw(image: np.ndarray, obj: SceneObject, progress: float, camera: Camera) -> None:
    """Draws `obj` in its pattern, its edge anti-aliased with sub-pixel precision."""
    size = image.shape[0]
    coverage = np.zeros((size, size), np.uint8)
    cv2.fillPoly(coverage, [_outline_points(obj, progress, camera, size)], 255, lineType=cv2.LINE_AA, shift=4)
    color = np.asarray(PALETTE[obj.color], np.float64)
    fill = color * (1 - (1 - PATTERN_SHADE) * _shade(obj, progress, camera, size)[..., None])
    alpha = coverage[..., None] / 255.0
    image[:] = np.rint((1 - alpha) * image + alpha * fill).astype(np.uint8)


def render_scene(scene: Scene, camera: Camera, progress: float, size: int) -> np.ndarray:
    """One frame of `scene` through `camera` at `progress` in [0, 1] of its event: uint8 RGB (size, size, 3)."""
    image = _render_background(scene.background, camera, size)
    for obj in scene.objects:
        _draw(image, obj, progress, camera)
    return image


def object_map(scene: Scene, camera: Camera, progress: float, size: int) -> np.ndarray:
    """Which object each pixel of `render_scene`'s frame shows: uint8 (size, size), 0 the background, k + 1
    object k (drawn in the same order, so an object in front wins)."""
    labels = np.zeros((size, size), np.uint8)
    for number, obj in enumerate(scene.objects, start=1):
        cv2.fillPoly(labels, [_outline_points(obj, progress, camera, size)], number, shift=4)
    return labels


def render_frames(spec: VideoSpec, wanted: Container[int] | None = None) -> Iterator[np.ndarray | None]:
    """Yields the video's frames in order, uint8 RGB arrays of shape (size, size, 3); with `wanted`, None in place
    of every frame not in it, unrendered (training clips need 8 frames of an event, not all of them)."""
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
                if wanted is not None and frame not in wanted:
                    yield None
                    continue
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
