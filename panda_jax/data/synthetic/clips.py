"""The synthetic corpus as training examples in memory: one per event, shaped like `panda70m`'s.

Training recipes need data that runs anywhere in seconds (the `tiny` configs, tests) and is
still grounded: each event of a synthetic video becomes an example with `stored_frames` frames
spread over it (rendered, not encoded, so exactly what the scene holds), its caption, the
video's title and description and the subtitles shown during it, as the `panda70m` builder
writes them. `panda_jax.data.pipeline.make_dataset` reads it like `tfds.data_source`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from panda_jax.data.subtitles import overlapping_text
from panda_jax.data.synthetic.render import render_frames
from panda_jax.data.synthetic.sampling import sample_video_spec
from panda_jax.video.sampling import uniform_indices


class SyntheticClips:
    """Events of synthetic videos `first_video` … `first_video + num_videos - 1` of `seed`, as examples."""

    def __init__(self, num_videos: int, seed: int, *, size: int = 64, duration: float = 8.0, stored_frames: int = 8,
                 first_video: int = 0, candidates: int = 0):  # fmt: skip
        """`candidates` > 0 gives each example that many `teacher_captions` (teachers "t0", "t1", ...): its own
        caption at a random place, the others other events' captions, and the `label` of the right one, as the
        selector's fine-tuning data holds them."""
        self.examples: list[dict[str, Any]] = []
        for index in range(first_video, first_video + num_videos):
            spec = sample_video_spec(seed, index, size=size, duration=duration)
            wanted = {}
            for number, event in enumerate(spec.events):
                picked = event.start_frame + uniform_indices(event.end_frame - event.start_frame, stored_frames)
                wanted[number] = picked.tolist()
            needed = {i for indices in wanted.values() for i in indices}
            frames = {i: frame for i, frame in enumerate(render_frames(spec, needed)) if i in needed}
            subtitles = [{"start": s.start, "end": s.end, "text": s.text} for s in spec.subtitles]
            for number, event in enumerate(spec.events):
                start, end = event.start_frame / spec.fps, event.end_frame / spec.fps
                self.examples.append({
                    "clip_id": f"{spec.video_id}.{number:04d}", "video_id": spec.video_id,
                    "frames": np.stack([frames[i] for i in wanted[number]]), "caption": event.caption,
                    "title": spec.title, "description": spec.description,
                    "subtitles": overlapping_text(subtitles, start, end),
                })  # fmt: skip
        if candidates:
            self._add_candidates(candidates, np.random.default_rng(seed))

    def _add_candidates(self, count: int, rng: np.random.Generator) -> None:
        captions = sorted({example["caption"] for example in self.examples})
        count = min(count, len(captions))  # a few clips have fewer; the pipeline masks what is missing
        for example in self.examples:
            others = [caption for caption in captions if caption != example["caption"]]
            chosen = [others[i] for i in rng.choice(len(others), count - 1, replace=False)]
            right = int(rng.integers(count))
            chosen.insert(right, example["caption"])
            example["teacher_captions"] = [{"teacher": f"t{i}", "caption": c} for i, c in enumerate(chosen)]
            example["label"] = f"t{right}"

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.examples[index]
