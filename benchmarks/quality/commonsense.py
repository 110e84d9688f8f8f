"""Table 3: commonsense reasoning with SmolLM2-135M, kasa (paper and automatic truncation, ``kasa-auto``) against
lora, pissa, milora and PEFT's KaSA, 8 test sets, and per seed the average's paired difference against lora.

    python benchmarks/quality/commonsense.py [--jobs 1 --threads 2]

Sized for one CPU core (a SmolLM2 step of batch 8 at these lengths takes about 10 s): every method trains
on the same fixed ``TRAIN_SAMPLES`` examples of the available commonsense training files
(``commonsense:all``: boolq, ARC-Easy, ARC-Challenge, openbookqa here) for one epoch (batch 8, lr 3e-4,
cutoff 256, r = 8 on q_proj/v_proj) and is scored on the same fixed ``TEST_SAMPLES`` examples of each of the
8 test sets, two ways: option log-likelihood (the main metric, reliable for a small model) and greedy
generation of at most 16 tokens with answer extraction (LLM-Adapters' protocol; the answer sentence,
"the correct answer is ...", takes under 10). The learning rate is LLM-Adapters' 3e-4, set before any run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from quality.harness import Record, Run, main, method_settings  # noqa: E402
from quality.summary import (  # noqa: E402
    cells, machine_line, markdown_table, metric, paired_differences, paired_interval, paired_table, seeds_of,
    stat_table,
)

TABLE = "commonsense"
METHODS = ("kasa", "kasa-auto", "kasa-auto-ones", "lora", "pissa", "milora", "peft-kasa")
SETS = ("boolq", "piqa", "social_i_qa", "hellaswag", "winogrande", "ARC-Easy", "ARC-Challenge", "openbookqa",
        "average")
MODES = {"option_accuracy": "option log-likelihood", "generation_accuracy": "generation + answer extraction"}
SEEDS = (0, 1, 2)
TRAIN_SAMPLES = 400
TEST_SAMPLES = 50


def runs() -> list[Run]:
    settings = {"task": "commonsense:all", "model": "smollm2", "r": 8, "alpha": 16.0,
                "lr": 3e-4, "epochs": 1.0, "batch_size": 8, "max_length": 256, "max_train_samples": TRAIN_SAMPLES,
                "max_eval_samples": TEST_SAMPLES, "num_beams": 1, "max_new_tokens": 16}
    return [Run(f"commonsense-{method}-s{seed}", {**settings, **method_settings(method), "seed": seed},
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
    (out / "summary.md").write_text(
        "# Commonsense reasoning, SmolLM2-135M (`smollm2`), r = 8 on q_proj/v_proj\n\n"
        f"Accuracy x100 on a fixed {TEST_SAMPLES}-example subset of each test set, mean ± std over seeds "
        f"{seeds_of(records)} (the finished runs); trained on {TRAIN_SAMPLES} fixed examples of the available training "
        "files (boolq, ARC-Easy, ARC-Challenge, openbookqa), 1 epoch, batch 8, lr 3e-4; greedy generation of at "
        "most 16 tokens. kasa-auto is kasa with `drop_rank: auto`; kasa-auto-ones also starts sigma at 1 "
        "(`sigma_init: ones`).\n\n" + "\n".join(sections)
        + f"\nMachine: {machine_line(records)}.\nCommand: `python benchmarks/quality/commonsense.py`\n")


def answers_right(record: Record, out: Path) -> dict[str, list[bool]] | None:
    """Per mode, whether each test answer of the run is right, from the answers kept beside its record
    (``<id>.predictions.jsonl``; None for a run recorded without them)."""
    path = out / "runs" / f"{record['id']}.predictions.jsonl"
    if not path.is_file():
        return None
    answers = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {"option_accuracy": [a["option_choice"] == a["answer"] for a in answers],
            "generation_accuracy": [a["extracted"] == a["answer"] for a in answers]}


def example_comparison(records: list[Record], out: Path) -> str:
    """Each method against LoRA answer by answer, pooled over the seeds where both kept their answers."""
    right = {(r["labels"]["method"], r["labels"]["seed"]): answers_right(r, out) for r in records}
    rows = []
    for method in METHODS:
        seeds = [s for s in SEEDS if method != "lora" and right.get((method, s)) and right.get(("lora", s))]
        if not seeds:
            continue
        intervals = []
        for mode in MODES:
            differences = [int(ours) - int(lora) for s in seeds
                           for ours, lora in zip(right[(method, s)][mode], right[("lora", s)][mode], strict=True)]
            mean, half_width = paired_interval(differences)
            intervals.append(f"{100 * mean:+.1f} ± {100 * half_width:.1f}")
        rows.append([method, ", ".join(map(str, seeds)), str(len(differences)), *intervals])
    if not rows:
        return ""
    table = markdown_table(["method", "seeds", "answers", *(f"{mode} minus LoRA's" for mode in MODES)], rows)
    return ("## Answer by answer against LoRA\n\nAccuracy minus LoRA's (x100) over every test answer of the seeds "
            "where both runs kept their answers (`runs/<id>.predictions.jsonl`), ± the half-width of a 95% "
            "interval (normal approximation, the pairs taken as independent):\n\n" + table)


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
