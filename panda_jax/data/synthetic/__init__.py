"""Grounded synthetic video corpus: the test bed for splitting, captioning and selection.

A video is a sequence of 2-6 *events*. An event is one scene (a background, one or two
coloured, patterned discs, one action of the main disc) filmed in 1-3 *shots* that differ only in
camera framing, so a shot detector should find every cut while semantic stitching should
merge the shots of an event again. Events are joined by hard cuts, fades through black or
dissolves. Each video carries the metadata of a real upload (title, description and timed
subtitles, some of them wrong) and the ground truth that later stages are scored against:
shots, events with captions and structured facts, transitions and subtitle noise.

Video i depends only on (seed, i), so a corpus is the same whatever the worker count (records
exactly; video files in content, since x264 is not always byte-reproducible).

    python -m panda_jax.data.synthetic --out /tmp/synth --num_videos 100 --seed 0 --workers 2

Submodules, each importing only those above it:
  spec      the vocabulary (colours, patterns, sizes, actions, backgrounds, transitions,
            subtitle noise, limits) and the dataclasses of a video, object and background geometry;
  text      captions, titles, descriptions and (noisy) subtitles;
  sampling  `sample_video_spec`: a VideoSpec from (seed, index);
  render    `render_frames` and `write_video`;
  corpus    `generate_corpus` and the command line `main`;
  frames    `SceneFrames`: pairs of frames of fresh scenes with their facts and motion, endless (what vision encoders
            learn to read: the probe, the foundations);
  clips     the events as training examples shaped like `panda70m`'s: `SyntheticClips` (a fixed set
            in memory) and `SyntheticStream` (endless, random access, drawn when read).
"""

from panda_jax.data.synthetic.clips import STREAM_FIRST_VIDEO, SyntheticClips, SyntheticStream
from panda_jax.data.synthetic.corpus import generate_corpus
from panda_jax.data.synthetic.frames import SceneFrames
from panda_jax.data.synthetic.render import render_frames, write_video
from panda_jax.data.synthetic.sampling import sample_video_spec
from panda_jax.data.synthetic.spec import (
    ACTIONS, BACKGROUNDS, MAX_EVENTS, MAX_SHOTS, MIN_DURATION, MIN_EVENT_SECONDS, MIN_SHOT_SECONDS,
    OBJECT_COLORS, OBJECT_NOUN, PALETTE, PATTERN_SHADE, PATTERNS, SIZES, SUBTITLE_NOISE, TRANSITIONS, VideoSpec,
)

__all__ = [
    "ACTIONS", "BACKGROUNDS", "MAX_EVENTS", "MAX_SHOTS", "MIN_DURATION", "MIN_EVENT_SECONDS",
    "MIN_SHOT_SECONDS", "OBJECT_COLORS", "OBJECT_NOUN", "PALETTE", "PATTERN_SHADE", "PATTERNS", "SIZES",
    "STREAM_FIRST_VIDEO", "SUBTITLE_NOISE",
    "SceneFrames", "SyntheticClips", "SyntheticStream", "TRANSITIONS", "VideoSpec", "generate_corpus", "render_frames",
    "sample_video_spec", "write_video",
]
