"""What the stages over clips (caption, select) share: their inputs, their shards, their frames.

Both read split's `clips` with the `videos` they come from, cut them into shards of whole
videos for the shard runner, and decode each clip's frames once, in background threads while
the models run, handing the models fixed-size batches. A video that is missing or cannot be
decoded fails its clips (one `failures` record each) and the others go on.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import flags

from panda_jax import cli, stages
from panda_jax.files import atomic_output
from panda_jax.records import Clip, Failure, Problem, Video, read_records
from panda_jax.video import io

if TYPE_CHECKING:
    from jax.sharding import Mesh

DECODE_THREADS = 4
DECODE_ERRORS = (io.VideoError, OSError, IndexError, ValueError)

# A clip with the frames it needs, by what needs them (e.g. 1 for an image teacher, 8 for 8 frames).
ClipFrames = tuple[dict[str, Any], dict[Any, np.ndarray]]
# (clip, start frame, end frame) → {need: frame indices}
FrameNeeds = Callable[[dict[str, Any], int, int], Mapping[Any, Sequence[int]]]


@dataclasses.dataclass
class Counters:
    """What this process computed, for the summary."""

    clips: int = 0
    captions: int = 0
    tokens: int = 0
    compiles: int = 0
    seconds: float = 0.0  # spent processing shards

    def count_compiles(self) -> None:
        """Counts XLA compilations from now on, from JAX's backend-compile events."""
        import jax

        def listener(event: str, duration: float, **kwargs: Any) -> None:
            if event == "/jax/core/compile/backend_compile_duration":
                self.compiles += 1

        jax.monitoring.register_event_duration_secs_listener(listener)

    def per_second(self, amount: int) -> float | None:
        return round(amount / self.seconds, 3) if self.seconds else None

    def report(self, summary: stages.Summary, seconds: float, done: str) -> dict[str, Any]:
        """What every clip stage's summary.json holds (`clips_<done>`: the clips this process did); a stage adds
        its own numbers."""
        return {
            "shards": summary.shards, "reused": summary.reused, "failed_shards": summary.failed,
            f"clips_{done}": self.clips, "compiles": self.compiles, "seconds": round(seconds, 3),
            "clips_per_second": self.per_second(self.clips), "merged": summary.merged,
        }  # fmt: skip


def run(stage: Any, shards: Sequence[stages.Shard], out: Path, problems: list[Problem],
        program: str) -> tuple[stages.Summary, float] | None:  # fmt: skip
    """Runs a clip stage's shards in this process: (summary, seconds), or None after saying why the stage could not
    be set up (a checkpoint that cannot be loaded)."""
    began = time.perf_counter()
    try:
        summary = stages.run(stage, shards, out, 1, problems)
    except stages.StageSetupError as error:
        print(f"{program}: error: {error}", file=sys.stderr)
        return None
    return summary, time.perf_counter() - began


def exit_status(summary: stages.Summary, problems: Sequence[Problem], out: Path) -> int:
    """1 when a clip failed (pointing at failures.jsonl), else 0."""
    if summary.failed or problems:
        print(f"some clips failed: see {out / 'failures.jsonl'}")
        return 1
    return 0


def local_mesh(spec: str) -> Mesh:
    """The ('data', 'model') mesh `spec` names (`data=-1,model=1`) over this process's devices: on many
    hosts each process works on its own shards."""
    import jax

    from panda_jax.models import sharding

    return sharding.make_mesh(**sharding.parse_mesh(spec), devices=jax.local_devices())


def write_summary(out: Path, report: Mapping[str, Any]) -> None:
    """OUT/summary.json, atomically."""
    with atomic_output(out / "summary.json") as temporary:
        temporary.write_text(json.dumps(report, indent=2) + "\n")


def define_flags(flag_values: flags.FlagValues, clips_help: str, batch_help: str) -> None:
    """The flags every stage over clips has: its inputs, output, batch, mesh and the distributed ones."""
    flags.DEFINE_string("clips", None, clips_help, flag_values=flag_values)
    flags.DEFINE_string("videos", None, "the `videos` records the clips come from (paths, title, description, "
                        "subtitles)", flag_values=flag_values)  # fmt: skip
    flags.DEFINE_string("out", None, "output folder (config field `out`)", flag_values=flag_values)
    flags.DEFINE_integer("batch_size", None, f"{batch_help} (config field `batch_size`)", lower_bound=1,
                         flag_values=flag_values)  # fmt: skip
    flags.DEFINE_string("mesh", None, "device mesh, e.g. data=-1,model=2 (config field `mesh`)", flag_values=flag_values)
    cli.define_distributed(flag_values)


def read_inputs(clips_path: str | Path, videos_path: str | Path, problems: list[Problem]) -> tuple[list[Clip], list[Video]]:
    """The clip records and their videos, video paths made relative to `videos.jsonl`'s folder; bad lines
    become `problems`. Raises OSError when a file cannot be read."""
    clips = list(read_records(Path(clips_path), Clip, problems))
    videos_path = Path(videos_path)
    videos = [dataclasses.replace(v, path=str(videos_path.parent / v.path))
              for v in read_records(videos_path, Video, problems)]  # fmt: skip
    return clips, videos


def clip_shards(
    clips: Sequence[Clip],
    videos: Sequence[Video],
    clips_per_shard: int,
    clip_fields: Callable[[Video, Clip], dict[str, Any]],
    extra_sources: Sequence[str] = (),
) -> tuple[list[stages.Shard], list[Problem]]:
    """Shards of whole videos, about `clips_per_shard` clips each, in video-id order; clips of a video the
    video list lacks become problems. `clip_fields` adds what a stage's clip carries (side text, captions):
    part of the payload, so a change to it recomputes the shard."""
    by_video: dict[str, list[Clip]] = collections.defaultdict(list)
    for clip in clips:
        by_video[clip.video_id].append(clip)
    known = {video.video_id: video for video in videos}
    problems = [
        Problem(source="clips", item_id=clip.clip_id, error=f"its video {clip.video_id} is not in the video list")
        for video_id in sorted(set(by_video) - set(known)) for clip in by_video[video_id]
    ]  # fmt: skip
    shards, group, grouped_clips = [], [], 0

    def close() -> None:
        paths = tuple(entry["path"] for entry in group)
        shards.append(stages.Shard(key=group[0]["video_id"], payload={"videos": list(group)},
                                   sources=paths + tuple(extra_sources)))  # fmt: skip
        group.clear()

    for video_id in sorted(set(by_video) & set(known)):
        video = known[video_id]
        entry = {
            "video_id": video_id,
            "path": str(Path(video.path).absolute()),
            "clips": [
                {"clip_id": c.clip_id, "start": c.start, "end": c.end, "start_frame": c.start_frame,
                 "end_frame": c.end_frame, **clip_fields(video, c)}
                for c in sorted(by_video[video_id], key=lambda c: c.clip_id)
            ],
        }  # fmt: skip
        group.append(entry)
        grouped_clips += len(entry["clips"])
        if grouped_clips >= clips_per_shard:
            close()
            grouped_clips = 0
    if group:
        close()
    return shards, problems


def decode_clips(video: Mapping[str, Any], needs: FrameNeeds, size: int) -> list[ClipFrames]:
    """Every clip of a shard's video with the frames `needs` names, from one decoding pass at `size`×`size`."""
    wanted: list[tuple[int, Any, Sequence[int]]] = []  # (clip number, need, frame indices)
    fps = None
    for number, clip in enumerate(video["clips"]):
        start, end = clip["start_frame"], clip["end_frame"]
        if start is None:  # a clip list made elsewhere, in seconds only
            fps = fps or io.probe(video["path"]).fps
            start, end = round(clip["start"] * fps), max(round(clip["end"] * fps), round(clip["start"] * fps) + 1)
        wanted += [(number, need, indices) for need, indices in needs(clip, start, end).items()]
    if not wanted:  # nothing to look at: still, a clip needs a readable video
        io.probe(video["path"])
        return [(clip, {}) for clip in video["clips"]]
    indices = sorted({i for _, _, clip_indices in wanted for i in clip_indices})
    decoded = dict(zip(indices, io.read_frames(video["path"], indices, size=(size, size))))
    clip_frames: list[dict[Any, np.ndarray]] = [{} for _ in video["clips"]]
    for number, need, clip_indices in wanted:
        clip_frames[number][need] = np.stack([decoded[i] for i in clip_indices])
    return list(zip(video["clips"], clip_frames))


def decoded_batches(
    shard: stages.Shard, needs: FrameNeeds, size: int, batch_size: int, failures: list[Failure], stage: str
) -> Iterator[list[ClipFrames]]:
    """A shard's clips with their frames, in batches of `batch_size` (the last may be smaller), its videos
    decoded ahead in threads; the clips of a video that cannot be decoded go to `failures`."""
    videos = shard.payload["videos"]
    pending: list[ClipFrames] = []
    with concurrent.futures.ThreadPoolExecutor(min(DECODE_THREADS, len(videos))) as pool:
        decoding = [pool.submit(decode_clips, video, needs, size) for video in videos]
        for video, future in zip(videos, decoding):
            try:
                pending += future.result()
            except DECODE_ERRORS as error:
                failures += [
                    Failure(stage=stage, item_id=clip["clip_id"], source=video["path"],
                            error=f"{type(error).__name__}: {error}")
                    for clip in video["clips"]
                ]  # fmt: skip
                continue
            while len(pending) >= batch_size:
                yield pending[:batch_size]
                pending = pending[batch_size:]
        if pending:
            yield pending
