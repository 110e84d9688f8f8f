"""Table 3: commonsense reasoning with SmolLM2-135M, kasa (paper and automatic truncation, ``kasa-auto``) against
lora, pissa, milora and PEFT's KaSA, 8 test sets, and per seed the average's paired difference against lora.

    python benchmarks/quality/commonsense.py [--jobs 1 --threads 2]

Sized for one CPU core (a SmolLM2 step of batch 8 at these lengths takes about 10 s): every method trains
on the same fixed ``TRAIN_SAMPLES`` examples of the available commonsense training files
(``commonsense:all``: boolq, ARC-Easy, ARC-Challenge, openbookqa here) for one epoch (batch 8, lr 3e-4,
cutoff 256, r = 8 on the commonsense task's default targets: q_proj, k_proj, v_proj, up_proj and down_proj) and
is scored on the same fixed ``TEST_SAMPLES`` examples of each of the 8 test sets, two ways: option
log-likelihood (the main metric, reliable for a small model) and greedy generation of at most 16 tokens with
answer extraction (LLM-Adapters' protocol; the answer sentence, "the correct answer is ...", takes under 10).
The learning rate is LLM-Adapters' 3e-4, set before any run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

import numpy as np  # noqa: E402

from quality.harness import Record, Run, main, with_method, own_rates  # noqa: E402
from quality.intervals import Interval, seed_item_interval  # noqa: E402
from quality.summary import (  # noqa: E402
    cells, machine_line, markdown_table, metric, paired_differences, paired_table, seeds_of, stat_table,
)

TABLE = "commonsense"
# The last four are the paper's other commonsense baselines (its table: DoRA, Prefix, Series, Parallel), on the
# same schedule (issue 25).
METHODS = ("kasa", "kasa-auto", "kasa-auto-ones", "lora", "pissa", "milora", "peft-kasa", "dora", "prefix", "series",
           "parallel")
SETS = ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa",
        "average")
MODES = {"option_accuracy": "option log-likelihood", "generation_accuracy": "generation + answer extraction"}
SEEDS = (0, 1, 2)
TRAIN_SAMPLES = 400
TEST_SAMPLES = 50
SETTINGS = {"task": "commonsense:all", "model": "smollm2", "r": 8, "alpha": 16.0,
            "lr": 3e-4, "epochs": 1.0, "batch_size": 8, "max_length": 256, "max_train_samples": TRAIN_SAMPLES,
            "max_eval_samples": TEST_SAMPLES, "num_beams": 1, "max_new_tokens": 16}


def runs() -> list[Run]:
    return [Run(f"commonsense-{method}-s{seed}", {**with_method(SETTINGS, method), "seed": seed},
                {"method": method, "seed": seed}) for seed in SEEDS for method in METHODS]


def summarise(records: list[Record], out: Path) -> None:
    sections = []
    for mode, title in MODES.items():
        per_set = [{**r, "labels": {**r["labels"], "set": name}} for r in records for name in SETS]
        stats = cells(per_set, "method", "set", lambda r, m=mode: metric(r, "final", f"{r['labels']['set']}/{m}"))
        paired = paired_differences(records, "method", "lora", "seed",
                                    lambda r, m=mode: metric(r, "final", f"average/{m}"))
        sections.append(f"## Accuracy by {title} (`{mode}`)\n\n{stat_table(stats, METHODS, SETS, 'method')}\n"
                        f"Average accuracy minus LoRA's with the same seed:\n\n"
                        f"{paired_table(paired, METHODS, SEEDS, 'method', digits=1)}")
    if comparison := example_comparison(records, out):
        sections.append(comparison)
    # the adapters' targets as the records say (the task's default: methods without target modules have none)
    targets = sorted({",".join(modules) for r in records
                      if (modules := r["run"].get("config", {}).get("target_modules"))})
    (out / "summary.md").write_text(
        f"# Commonsense reasoning, SmolLM2-135M (`smollm2`), r = 8 on {' / '.join(targets) or 'the default targets'}"
        "\n\n"
        f"Accuracy x100 on a fixed {TEST_SAMPLES}-example subset of each test set, mean ± std over seeds "
        f"{seeds_of(records)} (the finished runs); trained on {TRAIN_SAMPLES} fixed examples of the available training "
        "files (boolq, ARC-Easy, ARC-Challenge, openbookqa), 1 epoch, batch 8, lr 3e-4; greedy generation of at "
        "most 16 tokens. kasa-auto is kasa with `drop_rank: auto`; kasa-auto-ones also starts sigma at 1 "
        f"(`sigma_init: ones`). {own_rates(METHODS)}\n\n" + "\n".join(sections)
        + f"\nMachine: {machine_line(records)}.\nCommand: `python benchmarks/quality/commonsense.py`\n")


def answers_right(record: Record, out: Path) -> dict[str, np.ndarray] | None:
    """Per mode, whether each test answer of the run is right (1) or not (0), and (``"set"``) each answer's test
    set, from the answers kept beside its record (``<id>.predictions.jsonl``; None for a run recorded without
    them)."""
    path = out / "runs" / f"{record['id']}.predictions.jsonl"
    if not path.is_file():
        return None
    answers = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {"set": np.array([a["set"] for a in answers]),
            "option_accuracy": np.array([a["option_choice"] == a["answer"] for a in answers], dtype=float),
            "generation_accuracy": np.array([a["extracted"] == a["answer"] for a in answers], dtype=float)}


def average_difference(ours: np.ndarray, theirs: np.ndarray, sets: np.ndarray):
    """``d(items)``: the average over test sets of the accuracy of ``ours`` minus that of ``theirs`` (x100) on the
    answers ``items`` (indices, repeats allowed), as the table's average weighs the sets: equally."""
    labels, set_of = np.unique(sets, return_inverse=True)

    def difference(items: np.ndarray) -> float:
        per_set = (np.bincount(set_of[items], weights=(ours - theirs)[items], minlength=len(labels))
                   / np.bincount(set_of[items], minlength=len(labels)))
        return 100 * float(per_set.mean())
    return difference


def example_comparison(records: list[Record], out: Path) -> str:
    """Each method against LoRA over the seeds where both kept their answers: the average accuracy's difference,
    with 95% intervals over the test answers (seeds held fixed) and over seeds and answers (`quality.intervals`)."""
    right = {(r["labels"]["method"], r["labels"]["seed"]): answers_right(r, out) for r in records}
    rows = []
    for method in METHODS:
        seeds = [s for s in SEEDS if method != "lora" and right.get((method, s)) and right.get(("lora", s))]
        if not seeds:
            continue
        sets = right[("lora", seeds[0])]["set"]
        if any(not np.array_equal(right[(m, s)]["set"], sets) for m in (method, "lora") for s in seeds):
            raise ValueError(f"the kept answers of {method} and lora are not of the same test questions: rerun them")
        cells = []
        for mode in MODES:
            differences = [average_difference(right[(method, s)][mode], right[("lora", s)][mode], sets)
                           for s in seeds]
            over_answers = seed_item_interval(differences, sets, resample_seeds=False)
            over_both = seed_item_interval(differences, sets)
            cells += [f"{over_both.estimate:+.1f}", _interval(over_answers), _interval(over_both)]
        rows.append([method, ", ".join(map(str, seeds)), str(len(sets)), *cells])
    if not rows:
        return ""
    header = [f"{mode}: {title}" for mode in MODES
              for title in ("minus LoRA's", "95% over answers", "95% over seeds and answers")]
    table = markdown_table(["method", "seeds", "answers a seed", *header], rows)
    return ("## Against LoRA, answer by answer and across seeds\n\nAverage accuracy minus LoRA's (x100), mean over "
            "the seeds where both runs kept their answers (`runs/<id>.predictions.jsonl`), with 95% percentile "
            "intervals (`benchmarks/quality/intervals.py`, 2000 replicates) over the test answers, resampled "
            "within each set with the trained runs held fixed, and over the training seeds (paired with LoRA's) "
            "and the answers together. With two or three seeds the second is itself approximate.\n\n" + table)


def _interval(interval: Interval) -> str:
    return f"[{interval.low:+.1f}, {interval.high:+.1f}]"


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
