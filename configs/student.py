"""The student captioner: `python -m panda_jax.train --config=student[:VARIANT] --workdir DIR`.

The student (panda_jax/models/student.py) is built around a BLIP-2 checkpoint under
`weights_dir` whose vision encoder, Q-Former and language model stay frozen; training changes
only its own video and text branches.

Variants:
  panda70m  the paper's recipe: BLIP-2 OPT-2.7B; 8 frames at 224 (train: 4 random frames per
            half, RandomResizedCrop 0.5-1, flip); AdamW, lr warmup 1e-6 → 1e-4 over 2,500 steps
            then cosine to 5e-5, betas (0.9, 0.99), weight decay 0.05; batch 48; 300K steps;
            captions cut to 48 tokens; side text kept field by field with probability 0.5;
            data: the `panda70m` TFDS dataset;
  tiny      a small random BLIP-2 (written at first use) on in-memory synthetic clips: the
            whole loop in well under a minute on a laptop CPU, for tests and quick checks.
"""

import os

import ml_collections


def get_config(variant: str = "panda70m") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "student"
    config.weights_dir = "weights"
    config.checkpoint = "blip2-opt-2.7b"  # the BLIP-2 the student is built around
    config.tiny = ""  # a panda_jax.teachers.tiny kind: the folder is written with random weights at first use
    config.student = ml_collections.ConfigDict(dict(
        num_frames=8, num_queries=32, video_layers=2, text_layers=2, max_prompt_tokens=200,
    ))  # fmt: skip
    config.max_caption_tokens = 48
    config.side_text_keep_probability = 0.5
    config.data = ml_collections.ConfigDict(dict(
        source="tfds", name="panda70m", data_dir="", split="train", eval_split="",
        # source="synthetic": the synthetic corpus, videos 0 … N-1 in memory (synthetic_videos N > 0) or, with 0, the
        # endless stream of fresh videos; the synthetic_eval_videos after them evaluate.
        synthetic_videos=0, synthetic_eval_videos=0, synthetic_seed=0, synthetic_size=64,
    ))  # fmt: skip
    config.train = ml_collections.ConfigDict(dict(
        num_frames=8, image_size=224, crop_scale=(0.5, 1.0), batch_size=48, steps=300_000, epochs=0,
        learning_rate=1e-4, warmup_init=1e-6, warmup_steps=2_500, end_learning_rate=5e-5, b1=0.9, b2=0.99,
        weight_decay=0.05, grad_accumulation=1, dtype="bfloat16", mesh="data=-1,model=1", fsdp=False, seed=0,
        log_every=50, eval_every=5_000, checkpoint_every=5_000, keep_checkpoints=3, workers=8,
    ))  # fmt: skip
    config.generation = ml_collections.ConfigDict(dict(num_beams=3, max_new_tokens=300, length_penalty=1.0))
    if variant == "panda70m":
        pass
    elif variant == "tiny":
        config.weights_dir = os.path.join(os.environ.get("PANDA_JAX_CACHE", "~/.cache/panda_jax"), "tiny_teachers")
        config.checkpoint, config.tiny = "blip2_opt", "blip2_opt"
        config.student.update(num_frames=4, num_queries=4, max_prompt_tokens=64)
        config.max_caption_tokens = 16
        config.data.update(source="synthetic", synthetic_videos=4, synthetic_eval_videos=1, synthetic_size=32)
        config.train.update(num_frames=4, image_size=28, batch_size=4, steps=20, learning_rate=3e-3, warmup_init=3e-4,
                            warmup_steps=5, end_learning_rate=1e-3, dtype="float32", log_every=10, eval_every=20,
                            checkpoint_every=10, workers=0)  # fmt: skip
        config.generation.update(num_beams=1, max_new_tokens=8)
    else:
        raise ValueError(f"unknown student variant {variant!r}; choose from panda70m, tiny")
    config.workdir = ""  # how a run goes, not what it makes
    return config
