"""Top-1 agreement of caption selection with people: the paper's check that the selector chooses as they would.

The numbers are the select stage report's (`selection_report.report_numbers`), so this command,
the training loop and `report.md` never disagree; here they are metrics, in percent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from panda_jax.records import Selection
from panda_jax.selection_report import report_numbers


def selection_agreement(selections: Sequence[Selection], labels: Mapping[str, str]) -> dict[str, float]:
    """The selected "clips", how many are "labelled" (`labels`: clip_id -> teacher), the top-1 "agreement" in %.

    Labels of clips that were not selected are ignored; no labelled clip at all raises ValueError.
    """
    numbers = report_numbers(selections, (), labels)
    if numbers.agreement is None:
        raise ValueError(f"none of the {numbers.clips} selected clips has a label")
    return {"clips": numbers.clips, "labelled": numbers.labelled, "agreement": 100.0 * numbers.agreement}
