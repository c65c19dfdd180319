"""How good the pipeline's outputs are, in the numbers the Panda-70M paper and its peers report.

    captions   caption_metrics       BLEU-4, METEOR, ROUGE-L, CIDEr of predicted captions (pycocoevalcap, Java)
    retrieval  recall_at_k           R@1/5/10 text-to-video and video-to-text, median ranks, from a similarity matrix
    selection  selection_agreement   top-1 agreement of the selected teachers with people's labels
    facts      score_caption         which facts of a synthetic event a caption states rightly, wrongly or not at all;
               read_caption, judge, event_of, clip_events, fact_accuracy: what it claims, the caption people would
               choose, a clip's event, a teacher's share of right facts

`python -m panda_jax.evaluate --task captions|selection|retrieval|facts` computes each from files.
"""

from __future__ import annotations

from panda_jax.evaluate.captions import caption_metrics
from panda_jax.evaluate.facts import (
    CHECKS, FactScore, StatedFacts, StatedObject, clip_events, event_of, fact_accuracy, judge, read_caption, score_caption,
)
from panda_jax.evaluate.retrieval import recall_at_k
from panda_jax.evaluate.selection import selection_agreement

__all__ = [
    "CHECKS", "FactScore", "StatedFacts", "StatedObject", "caption_metrics", "clip_events", "event_of", "fact_accuracy", "judge",
    "read_caption", "recall_at_k", "score_caption", "selection_agreement",
]
