"""Split quality on the grounded synthetic corpus: each detector, with and without stitching.

Shot F1 scores the detector against the corpus' `gt_shots` (2-frame tolerance); event F1
scores the clips against `gt_events` (12 frames, half a second); mean clip length and Max
Running LPIPS (Panda-70M's split-quality measure) complete the picture. LPIPS here runs on
a randomly initialised AlexNet with the lpips package's real linear heads, since pretrained
AlexNet weights cannot be had offline: compare its values between rows, not with the paper.

    python benchmarks/split_quality.py [--num-videos 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from panda_jax import cli, split
from panda_jax.data import synthetic
from panda_jax.records import read_jsonl
from panda_jax.models import lpips
from panda_jax.video.metrics import split_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-videos", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    model = lpips.load(lpips.pretrained_checkpoint())
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        synthetic.generate_corpus(corpus, args.num_videos, args.seed, workers=args.workers)
        videos = list(read_jsonl(corpus / "videos.jsonl"))
        inputs = split.read_video_list(corpus / "videos.jsonl", [])
        print(f"{args.num_videos} synthetic videos (seed {args.seed}), {sum(len(v['gt_shots']) for v in videos)} shots, "
              f"{sum(len(v['gt_events']) for v in videos)} events, mean event "
              f"{sum(e['end_frame'] - e['start_frame'] for v in videos for e in v['gt_events']) / 24 / sum(len(v['gt_events']) for v in videos):.1f} s\n")
        print(f"{'detector':11s} {'stitching':9s} {'shot P/R/F1':>20s} {'event P/R/F1':>20s} {'clips':>5s} {'mean clip':>9s} {'MaxRunLPIPS':>11s}")
        for detector in split.DETECTORS:
            for stitched in (False, True):
                out = Path(tmp) / f"{detector}-{stitched}"
                config = cli.load_config("split")
                config.detector, config.stitch.enabled = detector, stitched
                split.run(inputs, out, config, workers=args.workers)
                report = split_report(
                    videos, list(read_jsonl(out / "shots.jsonl")), list(read_jsonl(out / "clips.jsonl")),
                    lpips_model=model, root=corpus,
                )
                s, e = report.shots, report.events
                print(
                    f"{detector:11s} {'yes' if stitched else 'no':9s} {s.precision:6.3f}/{s.recall:.3f}/{s.f1:.3f} "
                    f"{e.precision:6.3f}/{e.recall:.3f}/{e.f1:.3f} {report.num_clips:5d} {report.mean_clip_seconds:8.1f}s "
                    f"{report.max_running_lpips:11.3f}"
                )


if __name__ == "__main__":
    main()
