"""Instruction following scored by IFEval: SmolLM2-135M-Instruct fine-tuned on the T0 subset at three seeds,
kasa (paper), kasa with ``drop_rank: auto`` and ``sigma_init: ones`` (the README's pick), lora, pissa and milora,
against the untrained base (already instruction-tuned: the reference row shows what fine-tuning keeps).

    python benchmarks/quality/instruct.py [--jobs 2 --threads 1]    # resumable: finished runs are skipped

Protocol, sized to the 2 CPU cores of this machine:

* **training**: ``TRAIN_SAMPLES`` fixed pairs of ``instruct/self_instruct/t0_train_50k_subset`` (``--task ifeval``,
  ``sft``'s training, loss on the response), cut at ``MAX_LENGTH`` tokens, one epoch (50 steps), batch 8 grouped
  by length, lr 2e-4, r = 8 on q_proj/v_proj, seeds 0-2; trained by the ``ifeval`` task's pipeline, whose Trainer
  carries the same ``KasaTrainerMixin`` as TRL's ``KasaSFTTrainer``: on prompt/response pairs with the loss on the
  response the two log the same losses to 1e-5 until a batch holds an example longer than the cutoff, which TRL
  cuts by one more token (``benchmarks/results/trl_e2e_parity.md``); the pipeline keeps every record's config
  complete and its run resumable by this harness;
* **IFEval**: all 541 prompts (``EVAL_PROMPTS``: ``None``), greedy through the chat template, at most
  ``MAX_NEW_TOKENS`` new tokens, decoded with continuous batching, ``EVAL_BATCH`` rows at a time (token-identical
  to ``generate``; a finished response leaves the batch and a waiting prompt takes its place), scored by
  lm-evaluation-harness's checks: prompt and instruction level, strict and loose;
* **ROUGE-L**, the secondary column: the 252 held-out user-oriented Self-Instruct tasks, at most 128 new tokens.

Why this size (measured, niced, on these cores under a load average of 8-12 from other work; CPU seconds are the
process's own, which that load disturbs least):

* ``benchmarks/results/quality/instruct/budget.md``: the base model on 16 fixed IFEval prompts at 512 new tokens.
  The 6 responses that stop do so within 166 tokens; the other 10 had not stopped at 512. The four IFEval scores
  of the sample are the same at 128, 256, 384 and 512 tokens: a larger budget buys tokens, not verdicts.
  Decoding ran at 36.8 kept tokens per CPU second (1 thread, batch 8), so all 541 prompts take about 0.75 CPU
  hours at 256 tokens, 1.1 at 384, 1.4 at 512 (1280: at least 3.4).
* Batch 32 rather than 8: on these CPUs a decoding step costs nearly as much for one row as for many (SmolLM2,
  one thread, a 300-token cache: 87 ms for 1 row, 142 for 8, 201 for 16, 299 for 32), so rows per step are what
  buys speed, and continuous batching keeps the batch full while prompts wait. ``benchmarks/results/decoding.md``
  (32 of these prompts, 256 tokens): 81 kept tokens per CPU second at batch 32, 2.3x `generate` at batch 8 and
  1.34x `generate` at batch 32, with token-identical responses. At that speed all 541 prompts take about 0.35 CPU
  hours at 256 tokens.
* 256 rather than 128: 29 IFEval prompts ask for at least 180 words, which do not fit in 128 tokens; 25 of them ask
  for at least 270 words, which no budget below 384 holds, so they are failed by every method alike whichever of
  256 and 384 is chosen, while 384 costs about half as much again.
* Training: 13-19 CPU seconds per step of 8 examples cut at 256 tokens (lora, the longest batches first), so 50
  steps cost at most about 0.25 CPU hours a run. 2000 examples at 512 tokens (the earlier setting) would cost
  about 3 CPU hours a run.
* The grid: 15 trainings (at most 3.5 CPU hours), 16 IFEval evaluations (about 5.5), 16 ROUGE-L evaluations (at
  most 2, were every response cut at 128 tokens): about 11 CPU hours, under 6 hours of the two cores with two
  runs at a time (``--jobs 2 --threads 1``) when nothing else runs. ``EVAL_PROMPTS = 256`` would halve the
  evaluations (a fixed subset, ``--max-eval-samples``, of both the IFEval prompts and the held-out tasks).

A response cut at the budget fails length and ending instructions for every method alike, so the table reports per
method how many of its responses hit the budget (``budget_hits``) and scores the prompts no run cut off
separately; the intervals against LoRA resample the training seeds and the prompts together
(`quality.intervals`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from quality.harness import Record, Run, main, with_method, record_path  # noqa: E402
from quality.intervals import Interval, seed_item_interval  # noqa: E402
from quality.summary import Stat, cells, group, machine_line, markdown_table, metric, stat_table  # noqa: E402

TABLE = "instruct"
BASE = "base"
REFERENCE = "lora"
METHODS = ("kasa", "kasa-auto-ones", "lora", "pissa", "milora")
IFEVAL_METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
ROUGE_L = "user_oriented/rouge_l"  # already 0-100
METRICS = (*IFEVAL_METRICS, ROUGE_L)
NAMES = {"prompt_level_strict_acc": "prompt strict", "inst_level_strict_acc": "instruction strict",
         "prompt_level_loose_acc": "prompt loose", "inst_level_loose_acc": "instruction loose", ROUGE_L: "ROUGE-L"}
SEEDS = (0, 1, 2)
TRAIN_SAMPLES = 400
MAX_LENGTH = 256
EVAL_PROMPTS: int | None = None  # all 541 IFEval prompts and all 252 held-out tasks
MAX_NEW_TOKENS = 256
EVAL_BATCH = 32  # rows decoded together: a step costs about 2x for 32 rows what it costs for 8
IFEVAL_SIZE, HELD_OUT_SIZE = 541, 252
SETTINGS = {"task": "ifeval", "model": "smollm2", "r": 8, "alpha": 16.0, "lr": 2e-4, "epochs": 1.0, "batch_size": 8,
            "group_by_length": True, "max_length": MAX_LENGTH, "max_train_samples": TRAIN_SAMPLES, "num_beams": 1,
            "max_new_tokens": MAX_NEW_TOKENS, "max_eval_samples": EVAL_PROMPTS, "eval_batch_size": EVAL_BATCH,
            "instruct_eval_sets": ["user_oriented"]}


def runs() -> list[Run]:
    """The untrained base first, then every method at seed 0, then seeds 1 and 2 (a partial grid is a table)."""
    base = Run(f"{TABLE}-{BASE}", {**SETTINGS, "seed": 0}, {"method": BASE, "seed": 0}, train=False)
    return [base, *(Run(f"{TABLE}-{method}-s{seed}", {**with_method(SETTINGS, method), "seed": seed},
                        {"method": method, "seed": seed}) for seed in SEEDS for method in METHODS)]


def scaled(record: Record) -> float:
    """The record's ``metric`` label as a percentage (IFEval's accuracies are fractions, ROUGE-L already 0-100)."""
    name = record["labels"]["metric"]
    return metric(record, "final", name, 1.0 if name == ROUGE_L else 100.0)


class Answers:
    """A run's kept answers, item by item: IFEval verdicts per prompt, ROUGE-L per held-out task."""

    def __init__(self, results: Path, record: Record) -> None:
        path = record_path(results, TABLE, record["id"])
        rows = [json.loads(line) for line in path.with_suffix(".ifeval.jsonl").read_text().splitlines()]
        self.keys = [row["key"] for row in rows]
        self.hit_budget = np.array([row["hit_budget"] for row in rows])
        self.prompt = {name: np.array([row[name] for row in rows], dtype=float) for name in IFEVAL_METRICS
                       if name.startswith("prompt")}
        self.followed = {name: np.array([sum(row[name]) for row in rows], dtype=float) for name in IFEVAL_METRICS
                         if name.startswith("inst")}
        self.instructions = np.array([len(row["instruction_id_list"]) for row in rows], dtype=float)
        held_out = path.with_suffix(".sft.jsonl")
        self.rouge = np.array(_rouge_per_item(held_out)) if held_out.is_file() else np.zeros(0)

    def score(self, name: str, items: np.ndarray) -> float:
        """``name`` (x100) of the items ``items`` (indices, repeats allowed): prompts for IFEval, tasks for ROUGE-L."""
        if name == ROUGE_L:
            return float(self.rouge[items].mean())
        if name in self.prompt:
            return 100 * float(self.prompt[name][items].mean())
        return 100 * float(self.followed[name][items].sum() / self.instructions[items].sum())


def _rouge_per_item(path: Path) -> list[float]:
    from kasa_peft.tasks.instruct import rouge_l

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [rouge_l([row["generation"]], [row["reference"]]) for row in rows if row["set"] == "user_oriented"]


def intervals(answers: dict[tuple[str, int], Answers], rows: list[str]) -> dict[str, dict[str, Interval]]:
    """Per row and metric, the seed-averaged difference with LoRA (x100) and its 95% interval over the training
    seeds (paired) and the items together; the base, untrained, is the same run against every LoRA seed."""
    found: dict[str, dict[str, Interval]] = {}
    for row in rows:
        seeds = [s for s in SEEDS if (REFERENCE, s) in answers and (row, 0 if row == BASE else s) in answers]
        if row == REFERENCE or not seeds:
            continue
        pairs = [(answers[(row, 0 if row == BASE else s)], answers[(REFERENCE, s)]) for s in seeds]
        found[row] = {name: seed_item_interval([item_difference(a, b, name) for a, b in pairs], [0] * size)
                      for name in METRICS
                      if (size := len(pairs[0][1].rouge) if name == ROUGE_L else len(pairs[0][1].keys))}
    return found


def item_difference(ours: Answers, theirs: Answers, name: str) -> Callable[[np.ndarray], float]:
    """``d(items)``: ``name`` of ``ours`` minus that of ``theirs`` (x100) on the items ``items``."""
    if ours.keys != theirs.keys or len(ours.rouge) != len(theirs.rouge):
        raise ValueError("two runs of the instruct table answered different prompts: rerun the stale one")
    return lambda items: ours.score(name, items) - theirs.score(name, items)


def summarise(records: list[Record], out: Path) -> None:
    rows = [BASE, *METHODS]
    stats = cells([{**r, "labels": {**r["labels"], "metric": name}} for r in records for name in METRICS],
                  "method", "metric", scaled)
    results = out.parent
    answers = {(r["labels"]["method"], r["labels"]["seed"]): Answers(results, r) for r in records
               if record_path(results, TABLE, r["id"]).with_suffix(".ifeval.jsonl").is_file()}
    hits = per_method(records, lambda r: float(r["run"]["final"]["metrics"]["budget_hits"]))
    losses = per_method(records, lambda r: r["run"].get("train_loss"))
    uncut = _uncut_scores(answers)
    prompts, tasks = (EVAL_PROMPTS or IFEVAL_SIZE), min(EVAL_PROMPTS or HELD_OUT_SIZE, HELD_OUT_SIZE)
    extra = {"mean training loss": {r: s.format(2) for r, s in losses.items()},
             f"responses cut at {MAX_NEW_TOKENS} tokens (of {prompts})": {r: s.format(1) for r, s in hits.items()},
             "prompt strict on prompts no run cut off": {r: s.format(1) for r, s in uncut.items()}}
    found = intervals(answers, rows)
    interval_rows = [[row, *(_cell(found[row].get(name)) for name in METRICS)] for row in rows if row in found]
    uncut_count = len(_uncut_items(answers)) if answers else 0
    (out / "summary.md").write_text(
        "# Instruction following (IFEval), SmolLM2-135M-Instruct (`smollm2`), r = 8 on q_proj/v_proj\n\n"
        f"**Protocol (sized to these CPUs):** {prompts} of the 541 IFEval prompts, "
        f"greedy through the chat template, at most {MAX_NEW_TOKENS} new tokens (lm-evaluation-harness allows "
        "1280), scored with lm-evaluation-harness's IFEval checks; accuracies x100. Training: "
        f"{TRAIN_SAMPLES} fixed T0 pairs, cut at {MAX_LENGTH} tokens, 1 epoch, batch 8 grouped by length, "
        f"lr 2e-4, seeds {', '.join(map(str, SEEDS))} (mean ± std over seeds; `base` is the untrained model, one "
        f"run). ROUGE-L, the secondary column: {tasks} of the 252 held-out user-oriented Self-Instruct "
        "tasks, at most 128 new tokens. Why this size: `benchmarks/quality/instruct.py`'s docstring and "
        "`budget.md`.\n\n"
        f"{stat_table(stats, rows, METRICS, 'method', NAMES.get, extra=extra)}\n"
        "The mean training loss is the Trainer's, over all of a run's steps: the loss on the response tokens, plus "
        "the regularisers on the KaSA rows. "
        f"A response cut at the budget fails most length and ending instructions whatever the method: the "
        f"second-last column counts them per run, the last scores the {uncut_count} prompts that no run of any row "
        "cut off.\n\n"
        f"## Against LoRA: mean over seeds of A minus LoRA (x100), 95% interval over training seeds and items\n\n"
        "Paired bootstrap over the seeds and the prompts (ROUGE-L: the held-out tasks) together "
        "(`benchmarks/quality/intervals.py`, 2000 replicates); `base` is one untrained run against each LoRA "
        "seed; * marks an interval that excludes 0.\n\n"
        + (markdown_table(["A", *(NAMES[n] for n in METRICS)], interval_rows) if interval_rows else
           "(no pair of runs with kept answers yet)\n")
        + f"\nMachine: {machine_line(records)}.\nCommand: `python benchmarks/quality/instruct.py`\n")


def per_method(records: list[Record], value: Callable[[Record], float | None]) -> dict[str, Stat]:
    """Per method, mean ± std of ``value`` over its runs; a run without one (the untrained base has no training
    loss) is left out, and a method with none has no entry."""
    found = {}
    for (method,), runs in group(records, ("method",)).items():
        if values := [v for r in runs if (v := value(r)) is not None]:
            found[method] = Stat.of(values)
    return found


def _uncut_items(answers: dict[tuple[str, int], Answers]) -> np.ndarray:
    """The prompts (indices) no run cut off at the budget."""
    return np.flatnonzero(~np.any([a.hit_budget for a in answers.values()], axis=0))


def _uncut_scores(answers: dict[tuple[str, int], Answers]) -> dict[str, Stat]:
    """Per row, prompt-level strict accuracy (x100) on the prompts no run cut off, mean ± std over its runs."""
    items = _uncut_items(answers) if answers else np.zeros(0, dtype=int)
    if not len(items):
        return {}
    by_row: dict[str, list[float]] = {}
    for (row, _), a in answers.items():
        by_row.setdefault(row, []).append(a.score("prompt_level_strict_acc", items))
    return {row: Stat.of(values) for row, values in by_row.items()}


def _cell(interval: Interval | None) -> str:
    if interval is None:
        return "—"
    mark = " *" if interval.excludes_zero() else ""
    return f"{interval.estimate:+.1f} [{interval.low:+.1f}, {interval.high:+.1f}]{mark}"


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
