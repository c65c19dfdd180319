"""The teachers of the caption stage: `python -m panda_jax.caption ... --config=teachers[:VARIANT]`.

A teacher is a name, a model family, a checkpoint folder (under `weights_dir`), what it sees
(`frames`: 0 = side text only, 1 = one frame between 30 % and 70 % of the clip, N = N frames;
`side_text`: whether its prompt carries the clip's subtitles, the title and the description)
and how it decodes. Families: blip2, instructblip (one frame), instructblip_video, video_llama (N frames),
language_model (OPT / LLaMA / T5 on side text alone), external (captions from a JSONL made
elsewhere, `checkpoint` is its path), student (the trained student captioner).

Variants:
  panda70m  the paper's 8 teachers on released checkpoints our loaders read (README: which
            checkpoint stands for Video-LLaMA, VideoChat, VideoChat-Text and MiniGPT-4, and why);
  student   the student captioner a training run exported (`python -m panda_jax.export`), as the one
            teacher: `--config=teachers:student --config.checkpoint=DIR` (8 frames + side text);
  demo      the grounded demo's four teachers, captioners trained from scratch on the synthetic
            corpus (`configs/captioner.py`, exported under `weights_dir` by `python -m panda_jax.demo`):
            image (BLIP-2, one frame), video (Video-LLaMA, 8 frames), text (a LLaMA on the
            title, description and subtitles) and image_side_text (InstructBLIP, one frame + side text);
  tiny      four teachers with small random weights (image, image + side text, video + side
            text, side text only), written as real checkpoint folders at first use: for tests
            and quick checks, not for captions worth reading.
"""

import os

import ml_collections

from panda_jax.configs.captioner import VARIANTS as CAPTIONERS


def teacher(family, checkpoint, frames, side_text, stands_for="", tiny="", num_beams=3, max_new_tokens=30):
    return ml_collections.ConfigDict(dict(
        family=family, checkpoint=checkpoint, frames=frames, side_text=side_text, stands_for=stands_for,
        tiny=tiny,  # a kind of panda_jax.teachers.tiny: the folder is written with random weights at first use
        generation=ml_collections.ConfigDict(dict(num_beams=num_beams, max_new_tokens=max_new_tokens,
                                                  length_penalty=1.0)),
    ))  # fmt: skip


# The demo's teachers: name (= captioner variant and exported folder) → (family, frames, side text), what
# configs/captioner.py trains each to see.
DEMO_TEACHERS = {name: (shape, frames, side_text) for name, (shape, _, frames, side_text, _) in CAPTIONERS.items()}


def get_config(variant: str = "panda70m") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.teachers = ml_collections.ConfigDict()
    if variant == "panda70m":
        config.weights_dir = "weights"
        t = config.teachers
        t.video_llama_pretrain = teacher("instructblip_video", "instructblip-video-vicuna-7b", 8, False, "Video-LLaMA (pretrain)")
        t.video_llama_finetune = teacher("instructblip_video", "instructblip-video-vicuna-13b", 8, True, "Video-LLaMA (finetune)")
        t.videochat = teacher("instructblip_video", "instructblip-video-vicuna-7b", 8, True, "VideoChat")
        t.videochat_text = teacher("language_model", "vicuna-7b-v1.1", 0, True, "VideoChat-Text")
        t.blip2_opt_2_7b = teacher("blip2", "blip2-opt-2.7b", 1, False, "BLIP-2 opt2.7b")
        t.blip2_opt_6_7b = teacher("blip2", "blip2-opt-6.7b", 1, False, "BLIP-2 opt6.7b")
        t.blip2_flan_t5_xl = teacher("blip2", "blip2-flan-t5-xl", 1, False, "BLIP-2 flant5xl")
        t.minigpt4 = teacher("instructblip", "instructblip-vicuna-7b", 1, True, "MiniGPT-4")
        config.dtype = "bfloat16"
    elif variant == "tiny":
        config.weights_dir = os.path.join(os.environ.get("PANDA_JAX_CACHE", "~/.cache/panda_jax"), "tiny_teachers")
        t = config.teachers
        t.image = teacher("blip2", "blip2_opt", 1, False, tiny="blip2_opt", num_beams=1, max_new_tokens=8)
        t.image_side_text = teacher("instructblip", "instructblip", 1, True, tiny="instructblip", num_beams=1, max_new_tokens=8)
        t.video = teacher("instructblip_video", "instructblip_video", 4, True, tiny="instructblip_video", num_beams=1,
                          max_new_tokens=8)
        t.text = teacher("language_model", "opt", 0, True, tiny="opt", num_beams=1, max_new_tokens=8)
        config.dtype = "float32"
    elif variant == "demo":
        config.weights_dir = "out/demo/teachers"
        t = config.teachers
        for name, (family, frames, side_text) in DEMO_TEACHERS.items():
            t[name] = teacher(family, name, frames, side_text, num_beams=1, max_new_tokens=32)
        config.dtype = "float32"
    elif variant == "student":
        config.weights_dir = ""
        config.checkpoint = ""  # the exported student's folder
        config.teachers.student = teacher("student", config.get_ref("checkpoint"), 8, True, num_beams=3,
                                          max_new_tokens=30)  # fmt: skip
        config.dtype = "float32"
    else:
        raise ValueError(f"unknown teachers variant {variant!r}; choose from panda70m, demo, student, tiny")

    # Side text is cut to these budgets (tokens of each teacher's own tokenizer) at word boundaries.
    config.side_text = ml_collections.ConfigDict(dict(subtitles=256, title=32, description=128))
    config.teacher_names = ""  # comma-separated subset to run (`--teachers a,b`); "" runs all
    config.batch_size = 8  # clips per generate call; batches are padded to powers of two up to it
    config.decode_size = 384  # frames are decoded once, at this square size, and shared by every teacher
    config.clips_per_shard = 64  # a shard holds whole videos, about this many clips
    config.mesh = "data=-1,model=1"  # ('data', 'model') device mesh; -1 takes the devices left
    # How a run goes, not what it makes.
    config.out = ""
    config.workers = 1
    return config
