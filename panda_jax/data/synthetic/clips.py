"""The synthetic corpus as training examples shaped like `panda70m`'s: a fixed set in memory, or an endless stream.

Each event of a synthetic video becomes an example with `stored_frames` frames spread over it
(rendered, not encoded, so exactly what the scene holds), its caption and facts, the video's
title and description and the subtitles shown during it, as the `panda70m` builder writes them.
`panda_jax.data.pipeline.make_dataset` reads either source like `tfds.data_source`.

`SyntheticClips` holds every event of a few videos: the `tiny` configs, tests, and held-out
evaluation sets. `SyntheticStream` is what models train on: the world is procedural, so example
i is drawn from (seed, i) when it is read, one event of its own video, and no two examples of
the ~2 billion share a video; a model cannot memorise it. Its videos start at
`STREAM_FIRST_VIDEO`, above every fixed set (evaluation videos, corpora written to disk), so
training never sees a held-out video.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from panda_jax.data.subtitles import overlapping_text
from panda_jax.data.synthetic.render import render_frames
from panda_jax.data.synthetic.sampling import sample_video_spec
from panda_jax.data.synthetic.spec import VideoSpec
from panda_jax.video.sampling import uniform_indices

STREAM_FIRST_VIDEO = 1_000_000  # the stream's first video; fixed sets of a seed take the videos below it
STREAM_LENGTH = 2**31 - 1  # examples in a stream: endless for training, and what grain's index shuffle takes
# Salt of the per-example generator, so that its draws are not those that made the video ([seed, video]). Not 0:
# numpy pads entropy with zeros, so [seed, video, 0] would seed the video's own generator again.
_PICK = 1


def event_examples(spec: VideoSpec, events: Sequence[int], stored_frames: int) -> list[dict[str, Any]]:
    """The examples of the events numbered `events` of `spec`, rendering only the frames they store."""
    wanted = {number: spec.events[number].start_frame
              + uniform_indices(spec.events[number].num_frames, stored_frames) for number in events}  # fmt: skip
    needed = {int(i) for indices in wanted.values() for i in indices}
    frames, last = {}, max(needed)
    for index, frame in enumerate(render_frames(spec, needed)):
        if frame is not None:
            frames[index] = frame
        if index == last:
            break
    subtitles = [{"start": s.start, "end": s.end, "text": s.text} for s in spec.subtitles]
    examples = []
    for number in events:
        event = spec.events[number]
        examples.append({
            "clip_id": f"{spec.video_id}.{number:04d}", "video_id": spec.video_id,
            "frames": np.stack([frames[i] for i in wanted[number]]), "caption": event.caption,
            "facts": event.scene.facts(), "title": spec.title, "description": spec.description,
            "subtitles": overlapping_text(subtitles, event.start_frame / spec.fps, event.end_frame / spec.fps),
        })  # fmt: skip
    return examples


def add_candidates(example: dict[str, Any], others: Sequence[str], rng: np.random.Generator) -> None:
    """Gives `example` its caption among `others` as `teacher_captions` (teachers "t0", "t1", ...) at a random place,
    and the `label` of the right one, as the selector's fine-tuning data holds them."""
    chosen = list(others)
    right = int(rng.integers(len(chosen) + 1))
    chosen.insert(right, example["caption"])
    example["teacher_captions"] = [{"teacher": f"t{i}", "caption": c} for i, c in enumerate(chosen)]
    example["label"] = f"t{right}"


class SyntheticClips:
    """Every event of synthetic videos `first_video` … `first_video + num_videos - 1` of `seed`, in memory."""

    def __init__(self, num_videos: int, seed: int, *, size: int = 64, duration: float = 8.0, stored_frames: int = 8,
                 first_video: int = 0, candidates: int = 0):  # fmt: skip
        """`candidates` > 0 gives each example that many `teacher_captions` (`add_candidates`): the others are other
        events' captions of the set."""
        self.examples: list[dict[str, Any]] = []
        for index in range(first_video, first_video + num_videos):
            spec = sample_video_spec(seed, index, size=size, duration=duration)
            self.examples += event_examples(spec, range(len(spec.events)), stored_frames)
        if candidates:
            rng = np.random.default_rng(seed)
            captions = sorted({example["caption"] for example in self.examples})
            count = min(candidates, len(captions))  # a few clips have fewer; the pipeline masks what is missing
            for example in self.examples:
                others = [caption for caption in captions if caption != example["caption"]]
                add_candidates(example, [others[i] for i in rng.choice(len(others), count - 1, replace=False)], rng)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]


class SyntheticStream:
    """Example i: one event, picked by a generator of (seed, i), of video `first_video + i` of `seed`, made when read.

    Random access and deterministic, so grain can shuffle, shard and resume it like a stored dataset; reading an
    example costs drawing its video (some 6 ms) and rendering its `stored_frames` frames (under 1 ms each at 64 px).
    Examples have `SyntheticClips`' keys. With `candidates` > 0 the other teacher captions are captions of events of
    other videos of the stream, drawn by the same generator (a video drawn for each: some 6 ms apiece).
    """

    def __init__(self, seed: int, *, size: int = 64, duration: float = 8.0, stored_frames: int = 8,
                 first_video: int = STREAM_FIRST_VIDEO, length: int = STREAM_LENGTH, candidates: int = 0):  # fmt: skip
        if length < (2 if candidates else 1):
            raise ValueError(f"a stream of {length} examples has no {'other video' if candidates else 'example'}")
        self.seed, self.size, self.duration, self.stored_frames = seed, size, duration, stored_frames
        self.first_video, self.length, self.candidates = first_video, length, candidates

    def __len__(self) -> int:
        return self.length

    def _video(self, index: int) -> VideoSpec:
        return sample_video_spec(self.seed, index, size=self.size, duration=self.duration)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"example {index} of a stream of {self.length}")
        video = self.first_video + int(index)
        rng = np.random.default_rng([self.seed, video, _PICK])
        spec = self._video(video)
        (example,) = event_examples(spec, [int(rng.integers(len(spec.events)))], self.stored_frames)
        if self.candidates:
            others: list[str] = []
            while len(others) < self.candidates - 1:
                other = int(rng.integers(self.first_video, self.first_video + self.length))
                if other == video:
                    continue
                events = self._video(other).events
                caption = events[int(rng.integers(len(events)))].caption
                if caption not in (example["caption"], *others):
                    others.append(caption)
            add_candidates(example, others, rng)
        return example
