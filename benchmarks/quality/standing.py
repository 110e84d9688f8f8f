"""Where KaSA stands against every other method of the quality tables, method by method: above, level or below.

    python benchmarks/quality/standing.py [--results DIR] [--data-dir DIR]

For each KaSA row (`kasa`, the paper's truncation, and `kasa-auto-ones`, the README's pick, where a table has it)
and each other method of a table (not the rows trained on a 4-bit base: the quantized page compares those base
against base), over the seeds both have finished: the mean over seeds of KaSA's score minus the method's, with its
95% interval over the training seeds (paired) and the test items together (`quality.intervals`). KaSA is **above**
where the interval lies above 0, **below** where it lies below, and **level** where it contains 0 (level within the
interval: the runs cannot tell the two apart, which is not the same as showing them equal). The columns are each
table's main metric: GLUE per task (dev accuracy, MCC or Pearson; its records keep no per-example predictions, so
its intervals resample the seeds alone, and need two of them), E2E BLEU (on the table's 50 MRs with beam search, and
on all 630 with greedy decoding), commonsense average accuracy by option log-likelihood, IFEval prompt-level strict
accuracy.

Writes ``<results>/standing.md``: first the verdicts alone, for KaSA as the README recommends it on each model
(``kasa-auto-ones`` where a table has it; on GLUE with MiniLM, where the paper's truncation and ``auto`` coincide,
``kasa``), which the README shows (`tools/docs_pages.py`); then every cell in full, for both KaSA rows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from kasa_peft.tasks.e2e import read_predictions  # noqa: E402
from quality import commonsense, e2e, e2e_full, glue, instruct  # noqa: E402
from quality.e2e_bootstrap import paired_bleu  # noqa: E402
from quality.harness import DATA, RESULTS, Record, load_records, record_path  # noqa: E402
from quality.intervals import Difference, Interval, seed_item_interval  # noqa: E402
from quality.rescore_e2e import references_of  # noqa: E402
from quality.summary import markdown_table, metric  # noqa: E402

KASA_ROWS = ("kasa", "kasa-auto-ones")
PICK = "kasa-auto-ones"  # the README's recommendation; a table without it (GLUE) shows the paper's kasa
# (ours, theirs) of one seed -> d_s and the items' strata, or None where a run kept no items to compare
Paired = tuple[Difference, Sequence[Hashable]]
Pairing = Callable[[Record, Record], Paired | None]
Found = tuple[Interval, list[int]] | None  # `standing`: the interval and the seeds it covers, if any


@dataclass(frozen=True)
class Column:
    """One measurement: a table's records (those of one GLUE task), how two runs of a seed differ on its items, and
    the seeds the table trains."""

    title: str
    records: list[Record]
    pairing: Pairing
    seeds: Sequence[int]


def columns(results: Path, data_dir: Path) -> list[Column]:
    glue_records = load_records(results, glue.TABLE, glue.runs())
    found = [Column(f"GLUE {task} ({glue.METRIC_NAMES[task]})",
                    [r for r in glue_records if r["labels"]["task"] == task], seeds_only, glue.SEEDS)
             for task in glue.TASKS]

    def commonsense_pairing(ours: Record, theirs: Record) -> Paired | None:
        out = results / commonsense.TABLE
        a, b = commonsense.answers_right(ours, out), commonsense.answers_right(theirs, out)
        if a is None or b is None:
            return None
        if not np.array_equal(a["set"], b["set"]):
            raise ValueError(f"{ours['id']} and {theirs['id']} kept answers to different questions: rerun one")
        return commonsense.average_difference(a["option_accuracy"], b["option_accuracy"], a["set"]), a["set"]

    def instruct_pairing(ours: Record, theirs: Record) -> Paired | None:
        kept = [record_path(results, instruct.TABLE, r["id"]).with_suffix(".ifeval.jsonl") for r in (ours, theirs)]
        if not all(path.is_file() for path in kept):
            return None
        a, b = instruct.Answers(results, ours), instruct.Answers(results, theirs)
        return instruct.item_difference(a, b, "prompt_level_strict_acc"), [0] * len(a.keys)

    found += [
        e2e_column("E2E BLEU", e2e, results, data_dir),
        e2e_column("E2E BLEU, 630 MRs", e2e_full, results, data_dir),
        Column("commonsense (option log-likelihood)",
               load_records(results, commonsense.TABLE, commonsense.runs()), commonsense_pairing, commonsense.SEEDS),
        Column("IFEval (prompt strict)",
               [r for r in load_records(results, instruct.TABLE, instruct.runs()) if r["labels"]["method"] != "base"],
               instruct_pairing, instruct.SEEDS)]
    return [replace(column, records=full_precision(column.records)) for column in found]


def e2e_column(title: str, table, results: Path, data_dir: Path) -> Column:
    """BLEU in an E2E table (``e2e`` or ``e2e_full``), paired MR by MR on the predictions the runs kept."""
    records = load_records(results, table.TABLE, table.runs())
    references = references_of(records[0], data_dir) if records else []  # the same fixed MRs for every run

    def pairing(ours: Record, theirs: Record) -> Paired | None:
        kept = [record_path(results, table.TABLE, r["id"]).with_suffix(".predictions.txt") for r in (ours, theirs)]
        if not all(path.is_file() for path in kept):
            return None
        return paired_bleu(*(read_predictions(path) for path in kept), references), [0] * len(references)

    return Column(title, records, pairing, table.SEEDS)


def full_precision(records: list[Record]) -> list[Record]:
    """The runs on the unquantized base: a row trained on a quantized one (``lora-4bit``) is the same method on
    another base, compared base against base on the quantized page, not a method to stand against."""
    return [r for r in records if not r["run"]["config"].get("quantize")]


def seeds_only(ours: Record, theirs: Record) -> Paired:
    """A run pair compared by its main metric alone (no kept items): one pseudo-item, so only seeds resample."""
    value = metric(ours) - metric(theirs)
    return (lambda items: value), [0]


def standing(column: Column, ours: str, theirs: str) -> Found:
    """``ours`` minus ``theirs`` in ``column`` over the seeds both finished and kept items for, with those seeds;
    None where there are none, or only one in a column without items."""
    runs = {(r["labels"]["method"], r["labels"]["seed"]): r for r in column.records}
    paired = {s: column.pairing(runs[(ours, s)], runs[(theirs, s)])
              for (m, s) in sorted(runs) if m == ours and (theirs, s) in runs}
    kept = {s: pair for s, pair in paired.items() if pair is not None}
    if not kept or (column.pairing is seeds_only and len(kept) < 2):  # one seed, no items: nothing to resample
        return None
    strata = next(iter(kept.values()))[1]
    interval = seed_item_interval([d for d, _ in kept.values()], strata,
                                  resample_items=column.pairing is not seeds_only)
    return interval, sorted(kept)


def verdict(interval: Interval) -> str:
    return "above" if interval.low > 0 else "below" if interval.high < 0 else "level"


def report(results: Path, data_dir: Path) -> str:
    found = columns(results, data_dir)
    methods = [m for m in dict.fromkeys(r["labels"]["method"] for c in found for r in c.records) if m not in KASA_ROWS]
    cells = {(ours, theirs): [standing(column, ours, theirs) for column in found]
             for ours in KASA_ROWS for theirs in methods}  # each comparison once: E2E's rescores the BLEU
    sections = [verdicts(found, methods, cells)]
    for ours in KASA_ROWS:
        rows = [[theirs, *map(_cell, cells[(ours, theirs)])] for theirs in methods if any(cells[(ours, theirs)])]
        if rows:
            sections.append(f"## {ours} against each method\n\n"
                            + markdown_table(["method", *(c.title for c in found)], rows))
    return "\n".join(sections)


def verdicts(found: list[Column], methods: list[str], cells: dict[tuple[str, str], list[Found]]) -> str:
    """KaSA as recommended per model against each method: the verdicts alone."""
    picks = [PICK if any(r["labels"]["method"] == PICK for r in c.records) else "kasa" for c in found]
    rows = [[method, *(glance(cells[(pick, method)][i], found[i].seeds) for i, pick in enumerate(picks))]
            for method in methods]
    rows = [row for row in rows if any(cell != "—" for cell in row[1:])]
    return (f"## At a glance\n\nKaSA ({PICK} where a column has its runs, else kasa) against each method: above, "
            "level or below; a verdict over fewer seeds than its table trains says over how many (its grid is still "
            "running).\n\n" + markdown_table(["KaSA against", *(c.title for c in found)], rows) + "\n")


def glance(found: Found, table_seeds: Sequence[int]) -> str:
    """The verdict alone, with its number of seeds where it has fewer than its table trains (``table_seeds``)."""
    if found is None:
        return "—"
    interval, seeds = found
    return verdict(interval) + (f" ({_seeds(seeds)})" if len(seeds) < len(table_seeds) else "")


def _cell(found: Found) -> str:
    if found is None:
        return "—"
    interval, seeds = found
    span = f"{interval.estimate:+.1f} [{interval.low:+.1f}, {interval.high:+.1f}]"
    return f"{verdict(interval)} ({span}, {_seeds(seeds)})"


def _seeds(seeds: list[int]) -> str:
    return f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"records and summaries (default {RESULTS})")
    parser.add_argument("--data-dir", type=Path, default=DATA, help=f"the benchmark data (default {DATA})")
    args = parser.parse_args(argv)
    out = args.results / "standing.md"
    out.write_text("# Where KaSA stands, method by method\n\n" + __doc__.split("\n\n")[2].replace("\n", " ").strip()
                   + " Each cell: the verdict (KaSA minus the method, x100, 95% interval, seeds).\n\n"
                   + report(args.results, args.data_dir) + "\nCommand: `python benchmarks/quality/standing.py`\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
