"""benchmarks/harness_crosscheck.py: the table says where our accuracy and lm-eval's differ."""

from __future__ import annotations

import harness_crosscheck

from kasa_peft.tasks.commonsense import COMMONSENSE_SETS


def test_a_single_differing_set_marks_the_model_not_equal():
    same = {name: {"ours": 0.5, "lm_eval": 0.5} for name in COMMONSENSE_SETS}
    one_off = {**same, "piqa": {"ours": 0.52, "lm_eval": 0.5}}
    lines = harness_crosscheck.table({"base": same, "adapter": one_off}).splitlines()
    assert lines[0] == "| model | " + " | ".join(COMMONSENSE_SETS) + " | all equal |"
    assert lines[2].startswith("| base | 50 / 50 | 50 / 50 |") and lines[2].endswith("| yes |")
    assert lines[3].startswith("| adapter | 50 / 50 | 52 / 50 |") and lines[3].endswith("| **no** |")
