"""The foundations: `python -m panda_jax.foundations [--out DIR] [--config=foundations[:VARIANT]]`.

A vision encoder in the BLIP-2 vision shape and a small LLaMA, each pretrained once on its own
endless stream of the world (seeds apart from any demo's, as a public checkpoint is trained apart
from its users' data), saved as Hugging Face folders and cached by the fingerprint of this config
and the package version. Every teacher, the selector and the student are built from them with both
ends frozen, as Panda-70M's models are from EVA-CLIP and OPT / Vicuna.

  vision    the learnability probe's model and loss (configs/probe.py: pooled heads per fact,
            per-patch object facts, and the action from two frames of an event, positions starting
            as a 2D sine-cosine table), trained end to end, then its encoder kept;
  language  next-token prediction on the world's captions, subtitles, titles and descriptions,
            with the word tokenizer learnt from them (placeholders `<image>` and `<video>` added);
  motion    a Video-LLaMA's frame Q-Former and video Q-Former (with motion tokens) on the frozen
            vision encoder, trained to read the main object's action from 8 frames of an event
            (panda_jax.motion): the video branch a video captioner is built on.
Variants: `default`, and `tiny` (seconds, for tests).
"""

import ml_collections

from panda_jax.configs import probe


def get_config(variant: str = "default") -> ml_collections.ConfigDict:
    if variant not in ("default", "tiny"):
        raise ValueError(f"unknown foundations variant {variant!r}; choose from default, tiny")
    tiny = variant == "tiny"
    config = ml_collections.ConfigDict()
    vision = probe.get_config("tiny" if tiny else "scratch")
    vision.world.seed, vision.train.steps = 7919, vision.train.steps if tiny else 1500
    vision.train.eval_every = vision.train.steps if tiny else 250
    del vision.out
    config.vision = vision
    config.language = ml_collections.ConfigDict(dict(
        seed=104_729, eval_seed=130_363, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_tokens=48, tokenizer_videos=400,
        steps=600, batch_size=64, learning_rate=2e-3, warmup_steps=50, weight_decay=0.05, eval_texts=512,
    ))  # fmt: skip
    config.motion = ml_collections.ConfigDict(dict(
        seed=15_485_863, eval_seed=32_452_843, frames=8, num_query_tokens=8,
        qformer=ml_collections.ConfigDict(dict(
            hidden_size=96, intermediate_size=192, num_hidden_layers=1, num_attention_heads=4,
        )),
        video=ml_collections.ConfigDict(dict(num_query_tokens=8, num_hidden_layers=2, motion_tokens=True)),
        steps=400, batch_size=32, learning_rate=2e-3, warmup_steps=40, weight_decay=0.05, eval_every=100,
        eval_events=256,
    ))  # fmt: skip
    if tiny:
        config.motion.update(frames=4, num_query_tokens=2, steps=2, batch_size=2, eval_every=2, eval_events=4)
        config.motion.qformer.update(hidden_size=16, intermediate_size=32, num_attention_heads=2)
        config.motion.video.update(num_query_tokens=2, num_hidden_layers=1)
        config.language.update(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                               num_key_value_heads=1, tokenizer_videos=20, steps=4, batch_size=8, eval_texts=16)
    config.out = ""  # default: $PANDA_JAX_CACHE/foundations/FINGERPRINT
    return config
