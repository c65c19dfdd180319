"""The teachers' prompts, exactly as Panda-70M wrote them, filled with a clip's side text.

Side text is what a video carries besides its frames: the subtitles shown during the clip (by
time range, not list position), the title and the description. A teacher that reads side text
gets the long prompt, filled with it, unless the video has none; then, like every other teacher,
it gets the short one. Each field is cut to a token budget (counted by the teacher's own
tokenizer) at a word boundary, so a long transcript cannot push the instruction out of the
language model's context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from panda_jax.data.subtitles import overlapping_text

# Panda-70M's wording, character for character.
WITH_SIDE_TEXT = (
    "You are given some information about a video and will be asked to summarize the video (or the given "
    'video frame). The subtitles of the video: "{subtitles}" Some descriptions of the video: '
    '["{title}", "{description}"] Please faithfully summarize the video (or the video frame) in one sentence.'
)
WITHOUT_SIDE_TEXT = "Please faithfully summarize the video (or image) in one sentence."
# The `prompt_version` of a caption record: which template made its prompt.
VERSION_WITH_SIDE_TEXT, VERSION_WITHOUT_SIDE_TEXT = "panda70m-side-text", "panda70m-plain"


@dataclass(frozen=True)
class SideText:
    subtitles: str = ""
    title: str = ""
    description: str = ""

    def __bool__(self) -> bool:
        return bool(self.subtitles or self.title or self.description)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def clip_side_text(title: str, description: str, subtitles: Iterable[dict[str, Any]], start: float, end: float) -> SideText:
    """The side text of the clip [start, end) of a video: the subtitle lines shown during it, title, description."""
    return SideText(_one_line(overlapping_text(subtitles, start, end)), _one_line(title), _one_line(description))


def truncate(text: str, max_tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The longest run of `text`'s first words that `count_tokens` puts at `max_tokens` or fewer."""
    words = text.split()
    if count_tokens(text) <= max_tokens:
        return text
    low, high = 0, len(words)  # words[:low] fits, words[:high + 1] does not
    while low < high:
        middle = (low + high + 1) // 2
        if count_tokens(" ".join(words[:middle])) <= max_tokens:
            low = middle
        else:
            high = middle - 1
    return " ".join(words[:low])


@dataclass(frozen=True)
class Budgets:
    """Token budgets of the side-text fields (configs/teachers.py `side_text`)."""

    subtitles: int
    title: int
    description: int


def build_prompt(
    side_text: SideText | None, budgets: Budgets, count_tokens: Callable[[str], int]
) -> tuple[str, str]:
    """(prompt, prompt_version) for a teacher: with side text when it reads side text (`side_text`
    not None) and the video has some, without otherwise."""
    if not side_text:
        return WITHOUT_SIDE_TEXT, VERSION_WITHOUT_SIDE_TEXT
    prompt = WITH_SIDE_TEXT.format(
        subtitles=truncate(side_text.subtitles, budgets.subtitles, count_tokens),
        title=truncate(side_text.title, budgets.title, count_tokens),
        description=truncate(side_text.description, budgets.description, count_tokens),
    )
    return prompt, VERSION_WITH_SIDE_TEXT


# The student captioner's prompts (Panda-70M's student), character for character.
STUDENT_WITH_SIDE_TEXT_HEAD = "Some information about a video you will get:"
STUDENT_TRANSCRIPTION = "Transcription: {subtitles}"
STUDENT_METADATA = "Metadata: ['{title}', '{description}']"
STUDENT_WITH_SIDE_TEXT_TAIL = "Please look at the video and faithfully summarize it in one sentence."
STUDENT_WITHOUT_SIDE_TEXT = "Please faithfully summarize the following video in one sentence."
VERSION_STUDENT = "panda70m-student"


def student_prompt(side_text: SideText | None, subtitles: bool = True, metadata: bool = True) -> str:
    """The student's prompt: the transcription and the metadata lines where kept and present (training keeps
    each with probability 0.5), else the plain prompt."""
    if side_text is None:
        return STUDENT_WITHOUT_SIDE_TEXT
    lines = []
    if subtitles and side_text.subtitles:
        lines.append(STUDENT_TRANSCRIPTION.format(subtitles=side_text.subtitles))
    if metadata and (side_text.title or side_text.description):
        lines.append(STUDENT_METADATA.format(title=side_text.title, description=side_text.description))
    if not lines:
        return STUDENT_WITHOUT_SIDE_TEXT
    return "\n".join([STUDENT_WITH_SIDE_TEXT_HEAD, *lines, STUDENT_WITH_SIDE_TEXT_TAIL])
