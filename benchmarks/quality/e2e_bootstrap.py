"""E2E BLEU, A against B: intervals over the test MRs and over training seeds and MRs, from the kept predictions.

    python benchmarks/quality/e2e_bootstrap.py [--table e2e|e2e_full] [--data-dir DIR]

Each cell is a method against LoRA (and, in the E2E table, the 4-bit rows against each other and against their
full-precision runs), over the seeds where both kept their predictions: the mean over seeds of ``BLEU(A) - BLEU(B)``
(x100), both runs of a seed scored on the same MRs. Two 95% percentile intervals (`quality.intervals`, 2000
replicates): over the test MRs with the trained runs held fixed (Koehn's paired bootstrap), and over the training
seeds (paired) and the MRs together, which also counts what another set of seeds would have given.

Writes ``<results>/<table>/bootstrap.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from kasa_peft.tasks.e2e import bleu_of_resampled, read_predictions  # noqa: E402
from quality import e2e, e2e_4bit_on_full_precision, e2e_full  # noqa: E402
from quality.harness import DATA, RESULTS, Record, load_records, record_path  # noqa: E402
from quality.intervals import Interval, seed_item_interval  # noqa: E402
from quality.rescore_e2e import references_of  # noqa: E402
from quality.summary import markdown_table  # noqa: E402

REFERENCE = "lora"
TABLES = {module.TABLE: module for module in (e2e, e2e_full)}
FULL_PRECISION = "full-precision-base"  # the 4-bit rows' adapters decoded again (e2e_4bit_on_full_precision.py)


class Side(NamedTuple):
    """One side of a comparison: a method row, decoded on its own base or (``decoded``) on another."""

    method: str
    decoded: str = ""  # "" or FULL_PRECISION

    def __str__(self) -> str:
        return self.method + (" (decoded on the full-precision base)" if self.decoded else "")

    def predictions(self, results: Path, table: str, record: Record) -> Path:
        """Where the predictions of ``record`` (a run of ``table``) are kept, decoded on this side's base."""
        if self.decoded:
            served = e2e_4bit_on_full_precision
            return record_path(results, served.TABLE, record["id"] + served.ON_FULL_PRECISION).with_suffix(
                ".predictions.txt")
        return record_path(results, table, record["id"]).with_suffix(".predictions.txt")


def comparisons(table) -> list[tuple[Side, Side]]:
    """The table's "A against B" cells: every method row (the added baselines included) against LoRA; in the E2E
    table also the 4-bit rows (trained on the NF4 base) against each other, decoded on either base, and against
    their full-precision runs."""
    pairs = [(Side(method), Side(REFERENCE)) for method in table.ROWS if method != REFERENCE]
    if table is e2e:
        pairs += [(Side("kasa-auto-4bit"), Side("lora-4bit")),
                  (Side("kasa-auto-4bit", FULL_PRECISION), Side("lora-4bit", FULL_PRECISION)),
                  (Side("kasa-auto-4bit"), Side("kasa-auto")),
                  (Side("kasa-auto-4bit", FULL_PRECISION), Side("kasa-auto")),
                  (Side("lora-4bit", FULL_PRECISION), Side("lora"))]
    return pairs


def paired_bleu(ours: list[str], theirs: list[str], references: list[list[str]]) -> Callable[[np.ndarray], float]:
    """``BLEU(ours) - BLEU(theirs)`` (x100) on a resample of the MRs (the indices of ``references`` drawn)."""
    bleu_ours, bleu_theirs = bleu_of_resampled(ours, references), bleu_of_resampled(theirs, references)
    return lambda items: 100 * (bleu_ours(items) - bleu_theirs(items))


def bleu_difference(ours: list[list[str]], theirs: list[list[str]], references: list[list[str]]
                    ) -> tuple[Interval, Interval]:
    """The seed-averaged BLEU difference (x100) with its 95% intervals over the MRs alone and over seeds and MRs.

    ``ours[s]`` / ``theirs[s]``: the predictions of seed ``s``'s runs, one per MR of ``references``."""
    differences = [paired_bleu(a, b, references) for a, b in zip(ours, theirs, strict=True)]
    strata = [0] * len(references)
    return (seed_item_interval(differences, strata, resample_seeds=False),
            seed_item_interval(differences, strata))


def comparison(table, records: list[Record], results: Path, data_dir: Path) -> str:
    """The markdown table of the comparisons of ``table`` (a table module) over the seeds both sides kept
    predictions for."""
    runs = {(r["labels"]["method"], r["labels"]["seed"]): r for r in records}

    def kept(side: Side, seed: int) -> Path | None:
        record = runs.get((side.method, seed))
        path = side.predictions(results, table.TABLE, record) if record else None
        return path if path is not None and path.is_file() else None

    references: list[list[str]] | None = None  # every run of a table is scored on the same fixed MRs
    rows = []
    for ours, theirs in comparisons(table):
        seeds = [s for s in table.SEEDS if kept(ours, s) and kept(theirs, s)]
        if not seeds:
            continue
        references = references or references_of(runs[(theirs.method, seeds[0])], data_dir)
        over_mrs, over_both = bleu_difference([read_predictions(kept(ours, s)) for s in seeds],
                                              [read_predictions(kept(theirs, s)) for s in seeds], references)
        rows.append([str(ours), str(theirs), ", ".join(map(str, seeds)), f"{over_both.estimate:+.2f}",
                     _interval(over_mrs), _interval(over_both), "yes" if over_both.excludes_zero() else "no"])
    return markdown_table(["A", "against B", "seeds", "BLEU of A minus B (x100)", "95% over test MRs",
                           "95% over seeds and MRs", "excludes 0 (seeds and MRs)"], rows)


def _interval(interval: Interval) -> str:
    return f"[{interval.low:+.2f}, {interval.high:+.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"records and summaries (default {RESULTS})")
    parser.add_argument("--data-dir", type=Path, default=DATA, help=f"the benchmark data (default {DATA})")
    parser.add_argument("--table", choices=sorted(TABLES), default=e2e.TABLE, help="the E2E table (default e2e)")
    args = parser.parse_args(argv)
    table = TABLES[args.table]
    records = load_records(args.results, table.TABLE, table.runs())
    comparisons_table = comparison(table, records, args.results, args.data_dir)
    command = "python benchmarks/quality/e2e_bootstrap.py" + ("" if table is e2e else f" --table {args.table}")
    out = args.results / table.TABLE / "bootstrap.md"
    out.write_text("# E2E BLEU, A against B: intervals over the test MRs, and over training seeds and MRs\n\n"
                   + __doc__.split("\n\n")[2].replace("\n", " ").strip() + " With three seeds, the interval over "
                   "seeds and MRs is itself approximate (`benchmarks/quality/intervals.py` says why).\n\n"
                   + comparisons_table + f"\nCommand: `{command}`\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
