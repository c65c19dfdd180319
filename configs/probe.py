"""The learnability probe: `python -m panda_jax.probe --out DIR [--config=probe[:VARIANT]]`.

How fast a vision encoder learns to read each fact of the world's frames: heads on the encoder
(trained with it, or on its frozen features) over the endless stream of frame pairs, with held-out
accuracy per fact and of the action against steps and seconds. `batch_size` counts pairs. Variants:
  scratch   a ViT in the BLIP-2 vision shape from random weights, trained end to end (the default);
  frozen    a saved encoder (`--config.encoder.checkpoint=DIR`, e.g. a foundation), frozen: heads only;
  tiny      a few steps of a very small encoder, for tests.
"""

import ml_collections


def get_config(variant: str = "scratch") -> ml_collections.ConfigDict:
    if variant not in ("scratch", "frozen", "tiny"):
        raise ValueError(f"unknown probe variant {variant!r}; choose from scratch, frozen, tiny")
    config = ml_collections.ConfigDict()
    # The encoder: a checkpoint folder (a Blip2VisionModel, or a composite model's vision_model), or these sizes.
    config.encoder = ml_collections.ConfigDict(dict(
        checkpoint="", patch_size=8, hidden_size=96, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
        sincos_positions=True,  # positions start as MAE's 2D sine-cosine table (else random, as BLIP-2's)
    ))  # fmt: skip
    config.frozen = variant == "frozen"
    # The world's frames: training frames of `seed`, held-out frames of `eval_seed` (other scenes altogether).
    config.world = ml_collections.ConfigDict(dict(seed=0, eval_seed=999_983, size=64))
    config.image_size = 64  # what the encoder reads (frames are resized to it by the one preprocessing)
    # Per-patch supervision: each patch learns the colour, pattern and size of the object it shows (0: none).
    config.dense_weight = 1.0
    # The action from two frames of an event (0: none): the features must tell where and how large the object is.
    config.motion_weight = 1.0
    config.train = ml_collections.ConfigDict(dict(
        steps=600, batch_size=32, learning_rate=2e-3, warmup_steps=50, weight_decay=0.05, seed=0, eval_every=50,
        eval_pairs=256, workers=1,
    ))  # fmt: skip
    if variant == "tiny":
        config.encoder.update(patch_size=16, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                              num_attention_heads=2)  # fmt: skip
        config.world.size = config.image_size = 32
        config.train.update(steps=6, batch_size=4, eval_every=3, eval_pairs=8, workers=0)
    config.out = ""  # where curves.jsonl, curves.png and summary.json go
    return config
