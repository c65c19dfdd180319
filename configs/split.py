"""Splitting: shot detection, the long-shot rule, and semantic stitching presets.

    python -m panda_jax.split VIDEO... --out DIR --config=split[:default|panda70m] [--detector ...]

The variant picks the stitching preset: `split:panda70m` is what built the Panda-70M dataset.

Numbers from Panda-70M's paper and code (its `splitting` folder). Stitching thresholds are distances
between L2-normalised frame embeddings, so they belong to the embedder that made them:
ImageBind's are Panda-70M's; the colour histogram's are calibrated on the synthetic corpus.
"""

import ml_collections


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.detector = "transnetv2"  # or "content"

    # PySceneDetect-style content detector, as Panda-70M ran it.
    config.content = ml_collections.ConfigDict(dict(threshold=25.0, min_scene_len=15, analysis_size=256))
    # TransNetV2: a frame whose single-frame cut probability exceeds this starts a new shot.
    config.transnetv2 = ml_collections.ConfigDict(dict(threshold=0.5))

    # A shot longer than max_seconds is cut into piece_seconds pieces.
    config.long_shots = ml_collections.ConfigDict(dict(max_seconds=7.0, piece_seconds=5.0))

    # Two frames per shot, at these fractions of its length, resized without crop.
    config.stitch = ml_collections.ConfigDict()
    config.stitch.enabled = True  # False: clips are the shots (`split --no-stitch`)
    config.stitch.embedder = "color_histogram"
    config.stitch.sample_positions = (0.05, 0.95)
    config.stitch.image_size = 224
    config.stitch.batch_shots = 64  # shots embedded per batch; bounds memory on long videos

    # Per embedder: drop a shot whose own two frames differ by more than `transition`;
    # merge a contiguous shot into the running event if its first frame is within `merge` of
    # the event's last frame; drop an event whose first and last frames are within `static`;
    # with the redundancy filter on, drop an event within `redundant` of a kept event's mean.
    config.thresholds = ml_collections.ConfigDict()
    config.thresholds.imagebind = ml_collections.ConfigDict(
        dict(transition=1.0, merge=0.6, static=0.15, redundant=0.3)
    )
    config.thresholds.color_histogram = ml_collections.ConfigDict(
        dict(transition=1.0, merge=0.8, static=0.01, redundant=0.3)
    )

    # Event length limits (seconds), trimming and the redundancy filter.
    config.presets = ml_collections.ConfigDict()
    config.presets.default = ml_collections.ConfigDict(
        dict(min_seconds=2.0, max_seconds=1200.0, trim_fraction=0.0, filter_redundant=False)
    )
    # What built the Panda-70M dataset: keep the first 60 s, trim 10 % at each end.
    config.presets.panda70m = ml_collections.ConfigDict(
        dict(min_seconds=2.5, max_seconds=60.0, trim_fraction=0.1, filter_redundant=True)
    )
    if variant not in config.presets:
        raise ValueError(f"unknown split variant {variant!r}; choose from {', '.join(config.presets)}")
    config.preset = variant

    # Clip files in OUT/clips: "" (none), "copy" (stream copy from the keyframe at or before each
    # clip) or "reencode" (frame-exact H.264).
    config.cut = ""

    # How a run goes, not what it makes (stages.RUN_FIELDS): the output folder and worker processes.
    config.out = ""
    config.workers = 1
    return config
