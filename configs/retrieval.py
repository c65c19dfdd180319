"""The caption selector: `python -m panda_jax.select ... --config=retrieval[:VARIANT]`, and its training recipe.

The selector (panda_jax/models/video_retrieval.py) is a video-text retrieval model made from an
image-text checkpoint folder under `weights_dir`; `--checkpoint DIR` (field `checkpoint`)
points at another, e.g. one `python -m panda_jax.train --config=retrieval` fine-tuned.

Variants:
  panda70m  the paper's recipe (12 frames; RandomResizedCrop 0.5-1 at 224; AdamW lr 2e-5,
            betas (0.9, 0.999), weight decay 0.02; batch 32; 10 epochs; VTC hard negatives: the
            clip's other captions weight 1, other clips' 0.01) on BLIP-2's retrieval model
            (Salesforce/blip2-itm-vit-g), standing in for Unmasked Teacher (UMT-L);
  clip      the same recipe on CLIP ViT-B/16 (openai/clip-vit-base-patch16) with CLIP4Clip's
            mean of frame embeddings: the cheap option;
  tiny      a small random BLIP-2 retrieval model written as a checkpoint folder at first use,
            4 frames, one temporal layer: for tests and quick checks (a training run in under a minute
            on a 2-core CPU), not for choices worth reading. With `foundations` (a panda_jax.foundations
            folder) the folder is written around its vision encoder, as the demo's selector is
            (`frozen=vision_model` keeps that encoder as pretrained; `train.image_size` its resolution).
"""

import os

import ml_collections


def get_config(variant: str = "panda70m") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.weights_dir = "weights"
    config.tiny = ""  # a panda_jax.teachers.tiny kind: the folder is written with random weights at first use
    # With `tiny`: a panda_jax.foundations folder whose vision encoder (weights, sizes, image processor) the written
    # selector starts from, as Panda-70M's starts from a pretrained video encoder.
    config.foundations = ""
    config.dtype = "bfloat16"
    if variant == "panda70m":
        config.checkpoint = "blip2-itm-vit-g"
        config.num_frames = 12
    elif variant == "clip":
        config.checkpoint = "clip-vit-base-patch16"
        config.num_frames = 12
    elif variant == "tiny":
        config.weights_dir = os.path.join(os.environ.get("PANDA_JAX_CACHE", "~/.cache/panda_jax"), "tiny_selectors")
        config.checkpoint = "blip2_retrieval"
        config.tiny = "blip2_retrieval"
        config.num_frames = 4
        config.dtype = "float32"
    else:
        raise ValueError(f"unknown retrieval variant {variant!r}; choose from panda70m, clip, tiny")

    config.temporal_layers = 2  # the temporal transformer over per-frame query outputs (BLIP-2 only)
    config.max_text_tokens = 40  # captions are cut to this many tokens of the model's tokenizer
    config.threshold = 0.43  # Panda-70M: a matching probability above it is a strong match

    # Training (python -m panda_jax.train --config=retrieval): the paper's fine-tuning recipe, a constant rate.
    config.model = "retrieval"
    config.data = ml_collections.ConfigDict(dict(
        source="tfds", name="panda70m", data_dir="", split="train", eval_split="",
        # source="synthetic": videos 0 … N-1 in memory (synthetic_videos N > 0) or, with 0, the endless stream of fresh
        # videos; the synthetic_eval_videos after them evaluate.
        synthetic_videos=0, synthetic_eval_videos=0, synthetic_seed=0, synthetic_size=64,
        # > 0: fine-tune on each clip's teacher captions (this many), the one of `labels` (clip_id → teacher,
        # a JSONL; synthetic clips carry their own) the positive; 0: clip/caption pairs.
        candidates=0, labels="",
    ))  # fmt: skip
    config.train = ml_collections.ConfigDict(dict(
        num_frames=config.num_frames, image_size=224, crop_scale=(0.5, 1.0), batch_size=32, steps=0, epochs=10,
        learning_rate=2e-5, warmup_init=2e-5, warmup_steps=0, end_learning_rate=2e-5, b1=0.9, b2=0.999,
        weight_decay=0.02, grad_accumulation=1, dtype=config.dtype, mesh="data=-1,model=1", fsdp=False, seed=0,
        log_every=50, eval_every=1_000, checkpoint_every=1_000, keep_checkpoints=3, workers=8,
    ))  # fmt: skip
    # VTC negatives: the clip's other captions, and the captions of other clips of the batch (pairs of clip and
    # caption have no other captions: their in-batch negatives weigh `pair_weight`).
    config.loss = ml_collections.ConfigDict(dict(same_clip_weight=1.0, other_clip_weight=0.01, pair_weight=1.0,
                                                 vtm_weight=1.0))  # fmt: skip
    config.frozen = ""  # "vision_model": training keeps the vision encoder as it was (a pretrained one)
    if variant == "tiny":
        config.temporal_layers = 1
        config.data.update(source="synthetic", synthetic_videos=4, synthetic_eval_videos=1, synthetic_size=32)
        config.train.update(image_size=28, batch_size=4, steps=20, epochs=0, learning_rate=1e-3, warmup_init=1e-3,
                            end_learning_rate=1e-3, log_every=10, eval_every=20, checkpoint_every=10, workers=0)

    # The select stage.
    config.batch_size = 8  # clips per scoring call; batches are padded to powers of two up to it
    config.clips_per_shard = 64  # a shard holds whole videos, about this many clips
    config.mesh = "data=-1,model=1"  # ('data', 'model') device mesh; -1 takes the devices left
    # How a run goes, not what it makes.
    config.out = ""
    config.workdir = ""  # of training
    config.workers = 1
    return config
