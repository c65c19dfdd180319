"""The teacher registry, Panda-70M's prompts and the frames each teacher sees."""

from __future__ import annotations

import pytest

from panda_jax import cli, teachers
from panda_jax.teachers import frames, prompts

BUDGETS = prompts.Budgets(subtitles=6, title=3, description=4)


def words(text: str) -> int:
    return len(text.split())


def test_prompts_are_panda70m_character_for_character():
    side = prompts.SideText(subtitles="hello there", title="My trip", description="We went to the sea.")
    prompt, version = prompts.build_prompt(side, prompts.Budgets(100, 100, 100), words)
    assert prompt == (
        'You are given some information about a video and will be asked to summarize the video (or the given video '
        'frame). The subtitles of the video: "hello there" Some descriptions of the video: ["My trip", "We went to '
        'the sea."] Please faithfully summarize the video (or the video frame) in one sentence.'
    )
    assert version == prompts.VERSION_WITH_SIDE_TEXT
    plain = "Please faithfully summarize the video (or image) in one sentence."
    assert prompts.build_prompt(None, BUDGETS, words) == (plain, prompts.VERSION_WITHOUT_SIDE_TEXT)
    assert prompts.build_prompt(prompts.SideText(), BUDGETS, words) == (plain, prompts.VERSION_WITHOUT_SIDE_TEXT)


def test_side_text_is_the_subtitles_shown_during_the_clip_cut_to_budgets_at_word_boundaries():
    subtitles = [
        {"start": 0.0, "end": 2.0, "text": "before"},
        {"start": 1.5, "end": 3.0, "text": "first\nline"},
        {"start": 4.0, "end": 6.0, "text": "second"},
        {"start": 6.0, "end": 8.0, "text": "after"},
    ]
    side = prompts.clip_side_text("  A   title ", "desc", subtitles, 2.0, 6.0)
    assert side == prompts.SideText(subtitles="first line second", title="A title", description="desc")
    assert prompts.truncate("one two three four", 2, words) == "one two"
    assert prompts.truncate("one two", 5, words) == "one two"
    assert prompts.truncate("abcdef gh", 4, len) == ""  # the first word alone is over budget
    assert prompts.truncate("ab cd efgh", 6, len) == "ab cd"
    long = prompts.SideText(subtitles=" ".join(f"w{i}" for i in range(20)), title="a b c d e", description="x")
    prompt, _ = prompts.build_prompt(long, BUDGETS, words)
    assert '"w0 w1 w2 w3 w4 w5"' in prompt and '["a b c", "x"]' in prompt


def test_an_image_teacher_sees_one_frame_between_30_and_70_percent_the_same_every_time():
    drawn = [frames.image_frame(f"video.{i:04d}", 100, 200) for i in range(400)]
    assert all(130 <= f < 170 for f in drawn)
    assert len(set(drawn)) > 30  # spread over the range, not one fixed fraction
    assert drawn == [frames.image_frame(f"video.{i:04d}", 100, 200) for i in range(400)]
    assert frames.image_frame("v.0000", 7, 8) == 7
    assert frames.video_frames(10, 18, 4) == [11, 13, 15, 17]
    with pytest.raises(ValueError, match="empty frame range"):
        frames.image_frame("v.0000", 5, 5)


def test_the_panda70m_teachers_stand_for_the_papers_eight():
    config = cli.load_config("teachers:panda70m")
    found = teachers.from_config(config)
    assert sorted(t.stands_for for t in found) == sorted([
        "Video-LLaMA (pretrain)", "Video-LLaMA (finetune)", "VideoChat", "VideoChat-Text", "BLIP-2 opt2.7b",
        "BLIP-2 opt6.7b", "BLIP-2 flant5xl", "MiniGPT-4",
    ])  # fmt: skip
    assert all(t.checkpoint.parent.name == "weights" for t in found)
    assert {t.family for t in found} == {"blip2", "instructblip", "instructblip_video", "language_model"}
    assert [t.name for t in teachers.from_config(config, "videochat_text, minigpt4")] == ["minigpt4", "videochat_text"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: setattr(c.teachers.image, "family", "gpt"), "unknown family 'gpt'"),
        (lambda c: setattr(c.teachers.image, "frames", 4), "a blip2 teacher sees 1 frames, the config says 4"),
        (lambda c: setattr(c.teachers.video, "frames", 0), "sees 1 or more frames"),
        (lambda c: setattr(c.teachers.text, "side_text", False), "reads only side text"),
    ],
)
def test_a_bad_teacher_config_says_what_is_wrong(change, message):
    config = cli.load_config("teachers:tiny")
    change(config)
    with pytest.raises(ValueError, match=message):
        teachers.from_config(config)


def test_unknown_teacher_names_are_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="no teacher named nope; this config has image, image_side_text, text, video"):
        teachers.from_config(cli.load_config("teachers:tiny"), "image,nope")
