"""Evaluation: caption metrics, retrieval recall and selection agreement against hand-computed values, and the CLI.

The caption metrics run Java (the PTB tokenizer, and METEOR, which loads for seconds: it runs twice).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from panda_jax.evaluate import caption_metrics, captions, recall_at_k, selection_agreement
from panda_jax.evaluate.__main__ import main
from panda_jax.records import Selection, write_jsonl

# Two clips whose words appear in no other clip's references: CIDEr-D's idf is log(2) for every n-gram.
EXACT = {"a.0000": "A red car drives down the road.", "b.0000": "Two dogs play in the snow"}


@pytest.mark.heavy  # METEOR's Java process loads its paraphrase table for 10 to 30 s
def test_a_prediction_equal_to_its_reference_scores_full_marks():
    references = {clip: [caption.lower()] for clip, caption in EXACT.items()}
    exact_metrics = caption_metrics(EXACT, references)
    assert list(exact_metrics) == ["BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    assert exact_metrics["BLEU-4"] == pytest.approx(1.0)
    assert exact_metrics["ROUGE-L"] == pytest.approx(1.0)
    assert 0.99 < exact_metrics["METEOR"] <= 1.0  # only METEOR's fragmentation penalty, 0.5 / 7**3 at most
    assert exact_metrics["CIDEr"] == pytest.approx(10.0)  # cosine 1 for n = 1..4, no length penalty, times 10

    # Later calls share the METEOR process, and each gets its own score.
    scorer = captions._meteor()
    swapped = {"a.0000": EXACT["b.0000"], "b.0000": EXACT["a.0000"]}
    assert caption_metrics(swapped, references, ["METEOR"])["METEOR"] < 0.1
    assert caption_metrics(EXACT, references, ["METEOR"]) == {"METEOR": exact_metrics["METEOR"]}
    assert captions._meteor() is scorer
    # A dead Java process fails its call with a clear error; the next call starts another.
    scorer.meteor_p.kill()
    scorer.meteor_p.wait()
    with pytest.raises(RuntimeError, match="METEOR's Java process failed"):
        caption_metrics(EXACT, references, ["METEOR"])
    assert caption_metrics(EXACT, references, ["METEOR"]) == {"METEOR": exact_metrics["METEOR"]}
    assert captions._meteor() is not scorer


def test_bleu_and_rouge_equal_the_hand_computed_values():
    # Tokenized: "a man rides a brown horse" (6) against "a man rides a horse" (5); the second
    # reference shares no word, so it changes nothing (BLEU's closest length is 5, ROUGE takes the best).
    references = {"c.0000": ["a man rides a horse", "Someone is cooking."]}
    metrics = caption_metrics({"c.0000": "A man rides a brown horse."}, references, ["BLEU-4", "ROUGE-L"])
    precisions = [5 / 6, 3 / 5, 2 / 4, 1 / 3]  # clipped 1- to 4-gram matches; no brevity penalty (6 > 5)
    assert metrics["BLEU-4"] == pytest.approx(np.prod(precisions) ** 0.25, rel=1e-6)
    precision, recall, beta = 5 / 6, 5 / 5, 1.2  # the LCS is "a man rides a horse"
    assert metrics["ROUGE-L"] == pytest.approx((1 + beta**2) * precision * recall / (recall + beta**2 * precision))


def test_cider_is_zero_without_shared_ngrams():
    wrong = {"a.0000": EXACT["a.0000"], "b.0000": "A cat sleeps on a sofa"}
    metrics = caption_metrics(wrong, {clip: [caption] for clip, caption in EXACT.items()}, ["CIDEr"])
    assert metrics == {"CIDEr": pytest.approx((10.0 + 0.0) / 2)}  # the exact clip scores 10, the wrong one 0


def test_caption_metrics_refuse_bad_input(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="do not overlap"):
        caption_metrics({"x.0000": "a"}, {"y.0000": ["a"]})
    with pytest.raises(ValueError, match="1 of 2 predicted clips have no reference: y.0000"):
        caption_metrics({"x.0000": "a", "y.0000": "b"}, {"x.0000": ["a"]})
    with pytest.raises(ValueError, match="unknown caption metrics.*SPICE"):
        caption_metrics({"x.0000": "a"}, {"x.0000": ["a"]}, ["SPICE"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no java there
    with pytest.raises(RuntimeError, match="need a Java runtime.*default-jre-headless"):
        caption_metrics({"x.0000": "a"}, {"x.0000": ["a"]})


# 3 videos, 4 texts: video 0 has texts 0 and 1. Ties: text 2's column (v0 = v1), text 3's column
# (v1 = v2) and video 2's row (text 0 = text 3).
SIMILARITY = np.array([
    [0.9, 0.2, 0.5, 0.1],
    [0.3, 0.6, 0.5, 0.4],
    [0.4, 0.1, 0.7, 0.4],
])  # fmt: skip
TEXT_VIDEO = [0, 0, 1, 2]


def test_recall_at_k_equals_the_hand_counts():
    # t2v ranks of texts 0..3: 1; 2 (v1 above); 3 (v2 above, v0 tied); 2 (v1 tied).
    # v2t ranks of videos 0..2: 1 (text 0); 2 (text 1 above); 3 (text 2 above, text 0 tied).
    numbers = recall_at_k(SIMILARITY, TEXT_VIDEO, ks=(1, 2, 5))
    assert numbers == pytest.approx({
        "t2v_R@1": 25.0, "t2v_R@2": 75.0, "t2v_R@5": 100.0, "t2v_median_rank": 2.0,
        "v2t_R@1": 100 / 3, "v2t_R@2": 200 / 3, "v2t_R@5": 100.0, "v2t_median_rank": 2.0,
    })  # fmt: skip
    assert list(recall_at_k(SIMILARITY, TEXT_VIDEO)) == [
        "t2v_R@1", "t2v_R@5", "t2v_R@10", "t2v_median_rank", "v2t_R@1", "v2t_R@5", "v2t_R@10", "v2t_median_rank",
    ]  # fmt: skip
    # A video without texts competes in t2v only: it ties text 0's video and outranks text 2's (ranks 2, 2, 4, 2).
    distractor = recall_at_k(np.vstack([SIMILARITY, [0.9, 0.0, 0.6, 0.0]]), TEXT_VIDEO, ks=(1,))
    assert distractor == pytest.approx({"t2v_R@1": 0.0, "t2v_median_rank": 2.0, "v2t_R@1": 100 / 3,
                                        "v2t_median_rank": 2.0})  # fmt: skip
    with pytest.raises(ValueError, match="3 texts"):
        recall_at_k(SIMILARITY[:, :3], TEXT_VIDEO)
    with pytest.raises(ValueError, match="video indices"):
        recall_at_k(SIMILARITY, [0, 0, 1, 3])
    with pytest.raises(ValueError, match="NaN"):
        recall_at_k(np.where(SIMILARITY > 0.8, np.nan, SIMILARITY), TEXT_VIDEO)


def selection(clip: str, teacher: str) -> Selection:
    return Selection(clip_id=clip, caption=f"{teacher} says", teacher=teacher, matching_score=0.5)


SELECTIONS = [selection("v.0001", "alpha"), selection("v.0002", "beta"), selection("v.0003", "alpha"),
              selection("v.0004", "gamma")]  # fmt: skip
LABELS = {"v.0001": "alpha", "v.0002": "alpha", "v.0003": "alpha", "v.9999": "beta"}  # 2 of 3 agree; v.9999 unselected


def test_selection_agreement_equals_the_hand_count():
    assert selection_agreement(SELECTIONS, LABELS) == pytest.approx({"clips": 4, "labelled": 3, "agreement": 200 / 3})
    with pytest.raises(ValueError, match="none of the 4 selected clips has a label"):
        selection_agreement(SELECTIONS, {"v.9999": "beta"})


def test_cli_prints_and_writes_every_task(tmp_path, capsys):
    captions = tmp_path / "captions.jsonl"
    write_jsonl(captions, [{"clip_id": "c.0000", "teacher": "good", "caption": "A man rides a horse."},
                           {"clip_id": "c.0000", "teacher": "bad", "caption": "Someone is cooking."}])  # fmt: skip
    references = tmp_path / "references.jsonl"
    write_jsonl(references, [{"clip_id": "c.0000", "caption": "a man rides a horse"},
                             {"clip_id": "c.0000", "caption": "a person on a horse"}])  # fmt: skip
    out = tmp_path / "metrics.json"
    assert main(["--task", "captions", "--predictions", str(captions), "--teacher", "good", "--references",
                 str(references), "--metrics", "BLEU-4,ROUGE-L", "--out", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text()) == pytest.approx({"task": "captions", "clips": 1, "references": 2,
                                                         "BLEU-4": 1.0, "ROUGE-L": 1.0})  # fmt: skip
    assert "ROUGE-L     1.0000" in capsys.readouterr().out

    selections, labels = tmp_path / "selection.jsonl", tmp_path / "labels.jsonl"
    write_jsonl(selections, SELECTIONS)
    write_jsonl(labels, [{"clip_id": clip, "teacher": teacher} for clip, teacher in LABELS.items()])
    assert main(["--task", "selection", "--selection", str(selections), "--labels", str(labels)]) == 0
    assert "agreement  66.6667" in capsys.readouterr().out

    matrix, text_video = tmp_path / "similarity.npy", tmp_path / "text_video.json"
    np.save(matrix, SIMILARITY)
    text_video.write_text(json.dumps(TEXT_VIDEO))
    assert main(["--task", "retrieval", "--similarity", str(matrix), "--text_video", str(text_video),
                 "--out", str(out)]) == 0  # fmt: skip
    written = json.loads(out.read_text())
    assert (written["videos"], written["texts"], written["t2v_R@1"], written["v2t_median_rank"]) == (3, 4, 25.0, 2.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "selection", "--selection", "{tmp}/missing.jsonl", "--labels", "{tmp}/labels.jsonl"],
         "missing.jsonl: cannot be read"),
        (["--task", "captions", "--predictions", "{tmp}/captions.jsonl", "--references", "{tmp}/captions.jsonl"],
         "clip c.0000 has more than one caption (captions of several teachers? pick one teacher)"),
        (["--task", "captions", "--predictions", "{tmp}/captions.jsonl", "--teacher", "nobody", "--references",
          "{tmp}/captions.jsonl"], "no captions by teacher 'nobody' (its teachers: bad, good)"),
        (["--task", "retrieval", "--similarity", "{tmp}/captions.jsonl", "--text_video", "{tmp}/captions.jsonl"],
         "captions.jsonl: cannot be read as a .npy array"),
        (["--task", "retrieval", "--similarity", "{tmp}/x.npy"], "needs --similarity and --text_video"),
        (["--task", "nope"], "--task"),
    ],
)  # fmt: skip
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    write_jsonl(tmp_path / "captions.jsonl", [{"clip_id": "c.0000", "teacher": "good", "caption": "a"},
                                              {"clip_id": "c.0000", "teacher": "bad", "caption": "b"}])  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main([arg.format(tmp=tmp_path) for arg in argv])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("python -m panda_jax.evaluate: error: ") and message in error.splitlines()[0]
