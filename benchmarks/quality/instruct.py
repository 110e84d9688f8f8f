"""Instruction following scored by IFEval: SmolLM2-135M fine-tuned on the T0 subset,
kasa (paper and `drop_rank: auto`) against lora and pissa.

    python benchmarks/quality/instruct.py [--jobs 1 --threads 2]

Every method trains on the same fixed ``TRAIN_SAMPLES`` pairs of ``instruct/self_instruct/t0_train_50k_subset``
(``--task ifeval``: ``sft``'s training) for one epoch (batch 8, lr 2e-4, cutoff 512, r = 8 on q_proj/v_proj),
seeds 0-2, and is scored on all 541 IFEval prompts: greedy generation through the chat template, at most
``MAX_NEW_TOKENS`` new tokens (lm-evaluation-harness's budget), lm-eval's checks. The base model (no training)
is the reference row: `kasa-peft eval --model smollm2 --task ifeval --data-dir DATA`. The secondary column is
ROUGE-L on the 252 held-out user-oriented Self-Instruct tasks (``sft``'s metric, at most 128 new tokens).

Not yet run (a later session): 12 runs x 541 generations of up to 1280 tokens need a GPU, or days on this
machine's 2 shared CPU cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from quality.harness import Record, Run, main, method_settings  # noqa: E402
from quality.summary import cells, machine_line, metric, stat_table  # noqa: E402

TABLE = "instruct"
METHODS = ("kasa", "kasa-auto", "lora", "pissa")
IFEVAL_METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
ROUGE_L = "user_oriented/rouge_l"  # already 0-100
METRICS = (*IFEVAL_METRICS, ROUGE_L)
SEEDS = (0, 1, 2)
TRAIN_SAMPLES = 2000
MAX_NEW_TOKENS = 1280


def runs() -> list[Run]:
    settings = {"task": "ifeval", "model": "smollm2", "r": 8, "alpha": 16.0, "lr": 2e-4, "epochs": 1.0,
                "batch_size": 8, "max_length": 512, "max_train_samples": TRAIN_SAMPLES, "num_beams": 1,
                "max_new_tokens": MAX_NEW_TOKENS, "instruct_eval_sets": ["user_oriented"]}
    return [Run(f"instruct-{method}-s{seed}", {**settings, **method_settings(method), "seed": seed},
                {"method": method, "seed": seed}) for seed in SEEDS for method in METHODS]


def scaled(record: Record) -> float:
    """The record's ``metric`` label as a percentage (IFEval's accuracies are fractions, ROUGE-L already 0-100)."""
    name = record["labels"]["metric"]
    return metric(record, "final", name, 1.0 if name == ROUGE_L else 100.0)


def summarise(records: list[Record], out: Path) -> None:
    stats = cells([{**r, "labels": {**r["labels"], "metric": name}} for r in records for name in METRICS],
                  "method", "metric", scaled)
    (out / "summary.md").write_text(
        "# Instruction following (IFEval), SmolLM2-135M (`smollm2`), r = 8 on q_proj/v_proj\n\n"
        f"IFEval accuracy x100 on the 541 prompts, mean ± std over seeds {', '.join(map(str, SEEDS))}; trained on "
        f"{TRAIN_SAMPLES} fixed T0 pairs, 1 epoch, batch 8, lr 2e-4; greedy, at most {MAX_NEW_TOKENS} new "
        "tokens, scored with lm-evaluation-harness's IFEval checks. The last column, the secondary metric, is "
        "ROUGE-L on the 252 held-out user-oriented Self-Instruct tasks (at most 128 new tokens).\n\n"
        f"{stat_table(stats, METHODS, METRICS, 'method')}"
        f"\nMachine: {machine_line(records)}.\nCommand: `python benchmarks/quality/instruct.py`\n")


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
