"""The student captioner saved and read back: the same parameters, captions through the captioner interface equal
to the model's own generation, and the caption stage's `student` teacher variant pointing at it."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from panda_jax import cli
from panda_jax.models import captioner, checkpoint, student
from panda_jax.models.generation import GenerationConfig
from panda_jax.teachers import from_config, prompts, tiny

SETTINGS = GenerationConfig(num_beams=1, max_new_tokens=5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A student around the tiny BLIP-2, its own layers moved as training would, saved."""
    folder = tmp_path_factory.mktemp("student")
    blip2_folder = tiny.write_tiny_checkpoint("blip2_opt", folder / "blip2")
    model = student.from_blip2(blip2_folder, student.StudentConfig(num_frames=4, num_queries=4, max_prompt_tokens=32))
    rng = np.random.default_rng(0)
    for _, variable in nnx.to_flat_state(nnx.state(model, student.TRAINABLE)):
        variable[...] = variable[...] + rng.normal(0, 0.1, variable.shape).astype(np.float32)
    return model, student.save(model, folder / "saved", blip2_folder)


def test_a_saved_student_loads_with_the_same_parameters(saved):
    model, folder = saved
    again = student.load(folder)
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(again, nnx.Param)),
                 nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # fmt: skip
    with pytest.raises(FileExistsError):
        student.save(model, folder, folder.parent / "blip2")


def test_the_captioner_interface_captions_as_the_student_generates(saved):
    model, folder = saved
    reader = captioner.load_captioner(folder)
    assert isinstance(reader, captioner.StudentCaptioner) and reader.frames is None
    frames = np.random.default_rng(1).integers(0, 256, (2, 4, 40, 40, 3), np.uint8)
    texts = [prompts.student_prompt(prompts.SideText(subtitles="a red circle", title="shapes")),
             prompts.student_prompt(None)]  # fmt: skip
    captions = reader.caption(frames, texts, SETTINGS)
    inputs = reader.inputs(frames, texts)
    tokens = model.generate(inputs["pixel_values"], inputs["prompt_ids"], inputs["prompt_mask"], SETTINGS)
    tokenizer = checkpoint.load_tokenizer(folder)
    assert captions == [text.strip() for text in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    assert all(captions)


def test_the_student_teacher_variant_points_at_the_exported_folder(saved):
    _, folder = saved
    config = cli.load_config("teachers:student")
    with pytest.raises(ValueError, match="--config.checkpoint"):
        from_config(config)
    config.checkpoint = str(folder)
    (teacher,) = from_config(config)
    assert (teacher.family, teacher.checkpoint, teacher.frames, teacher.side_text) == ("student", folder, 8, True)


def test_the_caption_stage_captions_clips_with_the_exported_student(saved, clip_corpus, tmp_path):
    """`python -m panda_jax.caption --config=teachers:student --config.checkpoint=DIR`: the student as the one
    teacher, its captions those its model generates from the clip's frames and side text."""
    from panda_jax import caption
    from panda_jax.records import Caption, read_records

    _, folder = saved
    corpus, _, clips = clip_corpus
    out = tmp_path / "captions"
    status = caption.main(["--clips", str(corpus / "clips.jsonl"), "--videos", str(corpus / "videos.jsonl"),
                           "--out", str(out), "--config=teachers:student", f"--config.checkpoint={folder}",
                           "--config.teachers.student.frames=4", "--config.teachers.student.generation.num_beams=1",
                           "--config.teachers.student.generation.max_new_tokens=5", "--batch_size", "4"])  # fmt: skip
    assert status == 1  # the corpus's corrupt and missing videos
    found = list(read_records(out / "captions.jsonl", Caption))
    wanted = sorted(clip.clip_id for clip in clips if clip.video_id not in ("broken", "gone"))
    assert sorted(record.clip_id for record in found) == wanted
    assert {(record.teacher, record.prompt_version) for record in found} == {("student", prompts.VERSION_STUDENT)}
    assert all(record.caption for record in found)
