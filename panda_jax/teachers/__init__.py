"""The teacher registry: who captions clips in the caption stage, from what, and how.

A teacher (configs/teachers.py) is a name, a model family, a checkpoint folder, what it sees
(frames and side text), and its generation settings. The families and what they read:

  blip2               BLIP-2 (OPT, LLaMA or Flan-T5): one frame
  instructblip        InstructBLIP (Vicuna): one frame
  instructblip_video  InstructBLIP-Video (Vicuna): N frames
  video_llama         Video-LLaMA (BLIP-2 and a video Q-Former; LLaMA or OPT): N frames
  language_model      OPT, LLaMA or T5: the side text alone, no frame
  external            captions made elsewhere (a vLLM or API captioner), read from a JSONL
  student             the student captioner `python -m panda_jax.train --config=student` made: N frames

Every model family captions through `panda_jax.models.captioner`; this package only says who
sees what (`frames`, `prompts`) and where the weights are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from panda_jax.models import blip2, llama, opt, student, t5, video_llama
from panda_jax.models.generation import GenerationConfig
from panda_jax.records import check_id

# family → (checkpoint architectures it accepts, frames it sees: an int, or None for "1 or more")
FAMILIES: dict[str, tuple[tuple[str, ...], int | None]] = {
    "blip2": (blip2.ARCHITECTURES, 1),
    "instructblip": (("InstructBlipForConditionalGeneration",), 1),
    "instructblip_video": (("InstructBlipVideoForConditionalGeneration",), None),
    "video_llama": (video_llama.ARCHITECTURES, None),
    "language_model": (opt.ARCHITECTURES + llama.ARCHITECTURES + t5.ARCHITECTURES, 0),
    "external": ((), 0),
    "student": ((student.ARCHITECTURE,), None),
}


@dataclasses.dataclass(frozen=True)
class Teacher:
    name: str
    family: str
    checkpoint: Path  # the checkpoint folder; for `external`, the JSONL of captions
    frames: int  # 0: side text only; 1: one frame; N: N frames
    side_text: bool  # whether its prompt carries the clip's subtitles, title and description
    generation: GenerationConfig
    stands_for: str = ""  # the paper's teacher this one stands in for
    tiny: str = ""  # a panda_jax.teachers.tiny kind: random weights written at first use


def _teacher(name: str, fields: Any, weights_dir: Path) -> Teacher:
    check_id(name, "teacher name")
    if fields.family not in FAMILIES:
        raise ValueError(f"teacher {name}: unknown family {fields.family!r}; choose from {', '.join(FAMILIES)}")
    _, frames = FAMILIES[fields.family]
    if (frames is None and fields.frames < 1) or (frames is not None and fields.frames != frames):
        wanted = "1 or more" if frames is None else frames
        raise ValueError(f"teacher {name}: a {fields.family} teacher sees {wanted} frames, the config says {fields.frames}")
    if not fields.checkpoint:
        hint = " (for the student: --config.checkpoint=DIR)" if fields.family == "student" else ""
        raise ValueError(f"teacher {name}: no checkpoint folder is set{hint}")
    if fields.family == "language_model" and not fields.side_text:
        raise ValueError(f"teacher {name}: a language_model teacher reads only side text; set side_text=True")
    return Teacher(
        name=name,
        family=fields.family,
        checkpoint=(weights_dir / fields.checkpoint).expanduser(),
        frames=fields.frames,
        side_text=fields.side_text,
        generation=GenerationConfig(**fields.generation),
        stands_for=fields.stands_for,
        tiny=fields.tiny,
    )


def from_config(config: Any, names: str | Sequence[str] = "") -> list[Teacher]:
    """The teachers of a teachers config, all or those `names` lists (comma-separated), checked, in the config's order."""
    weights_dir = Path(config.weights_dir).expanduser()
    every = {name: _teacher(name, fields, weights_dir) for name, fields in config.teachers.items()}
    wanted = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    wanted = [n for n in wanted if n]
    unknown = [n for n in wanted if n not in every]
    if unknown:
        raise ValueError(f"no teacher named {', '.join(unknown)}; this config has {', '.join(every)}")
    return [teacher for name, teacher in every.items() if not wanted or name in wanted]  # the config's order
