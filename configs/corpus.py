"""The grounded synthetic corpus: `python -m panda_jax.data.synthetic --out DIR [--config=corpus[:VARIANT]]`.

Video i depends only on (seed, i), so the corpus is the same for any number of workers.
Variants: `default` (100 videos of about 20 s) and `small` (8, what `make demo` makes).
"""

import ml_collections

VARIANTS = {"default": 100, "small": 8}  # variant → number of videos


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"unknown corpus variant {variant!r}; choose from {', '.join(VARIANTS)}")
    config = ml_collections.ConfigDict()
    config.num_videos = VARIANTS[variant]
    config.seed = 0
    config.first_video = 0  # videos first_video … first_video + num_videos - 1 of the seed
    config.size = 128  # frame width and height in pixels, even
    config.fps = 24
    config.duration = 20.0  # mean video length in seconds; each lasts 0.75-1.25x this
    # How a run goes, not what it makes.
    config.out = ""
    config.workers = 1 if variant == "default" else 2
    return config
