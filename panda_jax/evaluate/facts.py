"""The "human judge" of the synthetic corpus: which facts of an event a caption states rightly, wrongly, or not at all.

Word-overlap metrics (CIDEr and its peers) cannot tell "a red banded disc moves left" from "a red banded
disc moves right"; a person can. On the synthetic corpus every event carries its structured facts
(`Scene.facts()`), and captions are written in a small language (the vocabulary of
`synthetic.spec`, the phrase tables of `synthetic.text`), so a caption can be read back into the
facts it claims and checked fact by fact: precision over what it states, recall over what a
caption should state (sizes are optional: the corpus's own captions give them half the time).
`judge` picks the caption people would, `fact_accuracy` sums a teacher up, and `event_of` finds
the event a clip of the split stage shows.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pycocoevalcap.cider.cider import Cider

from panda_jax.data.subtitles import shown
from panda_jax.data.synthetic.spec import OBJECT_NOUN, PALETTE, PATTERNS, SIZES
from panda_jax.data.synthetic.text import _ACTION_PHRASES, _BACKGROUND_PHRASES, _CAPTIONS, _OTHER_OBJECT

# The facts a caption is checked on, in the order they are reported.
CHECKS = (
    "background_kind", "background_colors", "main_pattern", "main_color", "main_size",
    "action", "other_pattern", "other_color", "other_size",
)  # fmt: skip
OPTIONAL = frozenset({"main_size", "other_size"})  # counted in precision when stated, never required
_ARTICLES = frozenset({"a", "an", "the"})


def _tokens(text: str) -> list[str]:
    """Lower-case words: punctuation and hyphens ("cyan-to-red") separate words."""
    return re.findall(r"[a-z]+", text.lower())


def _words(text: str) -> tuple[str, ...]:
    """The tokens without articles, so that "a", "an", "the" or none read alike."""
    return tuple(w for w in _tokens(text) if w not in _ARTICLES)


# Every phrase of an action, and the action's own name ("moves left"), as words.
_ACTIONS = {_words(phrase): action for action, phrases in _ACTION_PHRASES.items() for phrase in (action, *phrases)}
_LONGEST_ACTION = max(map(len, _ACTIONS))


def _kind_words() -> dict[str, str]:
    """The words naming one background kind: in its phrase patterns, in no other kind's, in no other caption part."""

    def template_words(template: str) -> set[str]:
        return set(_words(re.sub(r"\{\w*\}", " ", template)))  # without the {placeholders}

    words = {kind: set().union(*map(template_words, patterns)) for kind, patterns in _BACKGROUND_PHRASES.items()}
    elsewhere = set().union(*map(template_words, (*_CAPTIONS, *_OTHER_OBJECT)), *_ACTIONS)
    return {
        w: kind for kind, own in words.items() for w in own - elsewhere
        if not any(w in other for k, other in words.items() if k != kind)
    }  # fmt: skip


# plain, solid: solid; gradient, fading; striped, stripes; checkered, checkerboard; mottled, blotchy: noise
_KIND_WORDS = _kind_words()


@dataclasses.dataclass(frozen=True)
class StatedObject:
    """An object phrase, `[size] [colour] [pattern] disc`: what a caption says of one object."""

    pattern: str | None = None
    color: str | None = None
    size: str | None = None


@dataclasses.dataclass(frozen=True)
class StatedFacts:
    """What a caption claims, shaped like `Scene.facts()`; None or empty where it says nothing.

    `objects[0]` is the first object phrase, the main object; `objects[1]` the other one.
    """

    background_kind: str | None
    background_colors: tuple[str, ...]
    objects: tuple[StatedObject, ...]
    action: str | None

    def facts(self) -> dict[str, Any]:
        """The claims written as `Scene.facts()` writes facts, with None where nothing is stated."""
        return {
            "background": {"kind": self.background_kind, "colors": list(self.background_colors)},
            "objects": [dataclasses.asdict(o) for o in self.objects],
            "action": self.action,
        }


def read_caption(text: str) -> StatedFacts:
    """The facts `text` states, read with the corpus vocabulary and the phrase tables of `synthetic.text`.

    Each object noun ("disc") ends an object phrase, taking the pattern word just before it, the colour word
    before that and the size word before that, each where written. Every other colour word is a background colour, in the
    order written; the background kind is that of the first kind word ("striped", "fading", ...).
    The action is that of the first action phrase, the longest where several start at one word;
    it precedes the other object's clause in every caption form, so "... while X stays still" is not it.
    """
    words = _words(text)
    objects = []
    for i, word in enumerate(words):
        if word == OBJECT_NOUN:
            phrase, at = {}, i  # read backwards from the noun
            for attribute, vocabulary in (("pattern", PATTERNS), ("color", PALETTE), ("size", SIZES)):
                if at > 0 and words[at - 1] in vocabulary:
                    at -= 1
                    phrase[attribute] = words[at]
            objects.append(StatedObject(**phrase))
    phrases = ((i, j) for i in range(len(words)) for j in range(min(len(words), i + _LONGEST_ACTION), i, -1))
    action = next((_ACTIONS[words[i:j]] for i, j in phrases if words[i:j] in _ACTIONS), None)
    return StatedFacts(
        background_kind=next((_KIND_WORDS[w] for w in words if w in _KIND_WORDS), None),
        background_colors=tuple(w for w, after in zip(words, (*words[1:], "")) if w in PALETTE and after not in (*PATTERNS, OBJECT_NOUN)),
        objects=tuple(objects),
        action=action,
    )


@dataclasses.dataclass(frozen=True)
class FactScore:
    """How a caption fares against an event's facts.

    checks: for each of CHECKS, True (stated and right), False (stated and wrong, or stated of an
      object the scene does not have) or None (not stated).
    in_scene: the checks whose fact the scene has (other_* only with two objects).
    precision: right stated facts / stated facts; recall: right facts / required facts (those
      in_scene, less OPTIONAL); f1 their harmonic mean. All 0 for a caption stating nothing.
    """

    checks: dict[str, bool | None]
    in_scene: frozenset[str]
    precision: float
    recall: float
    f1: float


def _comparable(facts: Mapping[str, Any]) -> dict[str, Any]:
    """check name -> value of `Scene.facts()`-shaped facts, for those given (not None).

    Background colours are compared as a multiset: the gradient angle is uniform over the circle,
    so "from A to B" and "from B to A" show the same picture, and stripes, checkers and noise are symmetric.
    """
    background = facts["background"]
    values = {"background_kind": background["kind"], "background_colors": tuple(sorted(background["colors"])) or None,
              "action": facts["action"]}  # fmt: skip
    for role, obj in zip(("main", "other"), facts["objects"]):
        values |= {f"{role}_{attribute}": obj[attribute] for attribute in ("pattern", "color", "size")}
    return {name: value for name, value in values.items() if value is not None}


def score_caption(text: str, facts: Mapping[str, Any]) -> FactScore:
    """Checks what `text` states against `facts` (an event's `Scene.facts()`)."""
    claims, truths = _comparable(read_caption(text).facts()), _comparable(facts)
    checks = {name: claims[name] == truths.get(name) if name in claims else None for name in CHECKS}
    said = [check for check in checks.values() if check is not None]
    required = [name for name in truths if name not in OPTIONAL]
    precision = sum(said) / len(said) if said else 0.0
    recall = sum(checks[name] is True for name in required) / len(required)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return FactScore(checks, frozenset(truths), precision, recall, f1)


def _cider(reference: str, candidates: Mapping[str, str]) -> dict[str, float]:
    """CIDEr-D (pycocoevalcap) of each candidate with the reference, its idf taken over the candidates.

    pycocoevalcap takes document frequencies from the references; with the one reference of a clip
    on every side every idf would be 0, so the roles are swapped: each candidate is the reference
    side, the given reference the hypothesis. n-grams all candidates share then weigh nothing, and
    the candidates are told apart by what they say differently. Words are lower-cased, punctuation
    dropped (`_tokens`): no Java tokenizer to start for every clip.
    """
    texts = {name: " ".join(_tokens(text)) for name, text in candidates.items()}
    if not any(texts.values()):
        return dict.fromkeys(texts, 0.0)  # no n-gram at all: pycocoevalcap cannot count document frequencies
    hypothesis = [" ".join(_tokens(reference))]
    _, scores = Cider().compute_score({name: [text] for name, text in texts.items()}, dict.fromkeys(texts, hypothesis))
    return dict(zip(texts, map(float, scores)))


def judge(
    candidates: Mapping[str, str], facts: Mapping[str, Any], reference: str,
    scores: Mapping[str, FactScore] | None = None,
) -> str:  # fmt: skip
    """The name of the candidate caption people would choose: the best fact F1.

    Ties go to the best CIDEr against `reference` (the ground-truth caption), computed over this
    clip's candidates, then to the first name in sorted order. `scores`: the candidates'
    `score_caption` against `facts`, where the caller has them already. Raises ValueError without candidates.
    """
    if not candidates:
        raise ValueError("no candidate captions to judge")
    scores = scores or {name: score_caption(text, facts) for name, text in candidates.items()}
    f1 = {name: scores[name].f1 for name in candidates}
    best = sorted(name for name, value in f1.items() if value == max(f1.values()))
    if len(best) == 1:
        return best[0]
    cider = _cider(reference, candidates)
    return max(best, key=cider.__getitem__)  # the first of equal maxima: name order


def event_of(clip_start_frame: int, clip_end_frame: int, video_record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `gt_events` entry of a `videos` record sharing the most frames with the clip [start, end).

    The earlier event wins a tie; None when no event overlaps the clip.
    """
    best, most = None, 0
    for event in video_record["gt_events"]:
        overlap = min(clip_end_frame, event["end_frame"]) - max(clip_start_frame, event["start_frame"])
        if overlap > most:
            best, most = event, overlap
    return best


def clip_events(clips: Iterable[Any], videos: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """clip_id -> the ground-truth event (`event_of`) each clip (`records.Clip`) shows, of `videos` (video_id ->
    `videos` record with `gt_events`), with `conditions` added: the `CONDITIONS` the clip meets. Raises ValueError
    for a clip of a video without ground truth or of no event."""
    events = {}
    for clip in clips:
        video = videos.get(clip.video_id, {})
        if "gt_events" not in video:
            raise ValueError(f"video {clip.video_id} has no ground-truth events (gt_events): facts need the synthetic "
                             "corpus's videos.jsonl")  # fmt: skip
        start, end = clip.start_frame, clip.end_frame
        if start is None:
            start, end = round(clip.start * video["fps"]), round(clip.end * video["fps"])
        event = event_of(start, end, video)
        if event is None:
            raise ValueError(f"clip {clip.clip_id} (frames {start}-{end}) overlaps no event of {clip.video_id}")
        conditions = {"one_object": len(event["facts"]["objects"]) == 1,
                      "clean_subtitles": _subtitles_clean(start / video["fps"], end / video["fps"],
                                                          video["gt_events"].index(event), video)}  # fmt: skip
        events[clip.clip_id] = event | {"conditions": tuple(name for name in CONDITIONS if conditions[name])}
    return events


# Clips on which a teacher's inputs settle the facts: one object (one frame cannot show which of two is the one
# that acts), and subtitles that narrate the clip's own event rightly.
CONDITIONS = ("one_object", "clean_subtitles")


def _subtitles_clean(start: float, end: float, event: int, video: Mapping[str, Any]) -> bool:
    """Whether the subtitles shown during [start, end) seconds (the side text a teacher reads with the clip) are at
    least one line, each narrating this event with no noise (`gt_subtitles`)."""
    truths = [truth for line, truth in zip(video["subtitles"], video["gt_subtitles"]) if shown(line, start, end)]
    return bool(truths) and all(truth["event"] == event and truth["noise"] == "none" for truth in truths)


def fact_accuracy(scores: Sequence[FactScore]) -> dict[str, float]:
    """For each check, the share of `scores` that state it rightly among those whose scene has the fact
    (not stated counts as not right; a fact no scene has is left out), the share stating the main object's colour
    and pattern both rightly, then the mean precision, recall and f1.

    Raises ValueError for no scores.
    """
    if not scores:
        raise ValueError("no caption scores to sum up")
    accuracy = {}
    for name in CHECKS:
        cases = [score.checks[name] is True for score in scores if name in score.in_scene]
        if cases:
            accuracy[name] = sum(cases) / len(cases)
    both = [score.checks["main_color"] is True and score.checks["main_pattern"] is True for score in scores]
    accuracy["main_color_and_pattern"] = sum(both) / len(both)
    for mean in ("precision", "recall", "f1"):
        accuracy[mean] = sum(getattr(score, mean) for score in scores) / len(scores)
    return accuracy
