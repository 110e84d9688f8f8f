"""E2E BLEU against LoRA, MR by MR: a paired bootstrap over the test MRs, from the E2E table's kept predictions.

    python benchmarks/quality/e2e_bootstrap.py [--table e2e|e2e_full] [--data-dir DIR]

For each method, over the seeds where it and LoRA both kept their predictions, the statistic is the mean over
seeds of ``BLEU(method) - BLEU(LoRA)``, both computed on the same resampled test MRs (Koehn's paired bootstrap,
2004, with every seed's runs resampled together), and the interval is scipy's 95% BCa interval. It says how far
the test MRs leave the seed-averaged difference uncertain given these trained runs; the spread between
training seeds is the table's paired column.

Writes ``<results>/<table>/bootstrap.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from kasa_peft.tasks.e2e import bleu_of_resampled, read_predictions  # noqa: E402
from quality import e2e, e2e_full  # noqa: E402
from quality.harness import DATA, RESULTS, Record, load_records, record_path  # noqa: E402
from quality.rescore_e2e import references_of  # noqa: E402
from quality.summary import markdown_table  # noqa: E402

REFERENCE = "lora"
RESAMPLES = 2000
TABLES = {module.TABLE: module for module in (e2e, e2e_full)}


def bleu_difference(ours: list[list[str]], lora: list[list[str]], references: list[list[str]]
                    ) -> tuple[float, float, float]:
    """``(difference, low, high)``: the seed-averaged BLEU difference (x100) on all MRs and its 95% BCa interval.

    ``ours[s]`` / ``lora[s]``: the predictions of seed ``s``'s runs, one per MR of ``references``."""
    pairs = [(bleu_of_resampled(a, references), bleu_of_resampled(b, references)) for a, b in zip(ours, lora,
                                                                                                strict=True)]

    def difference(indices: np.ndarray) -> float:
        return 100 * float(np.mean([bleu_a(indices) - bleu_b(indices) for bleu_a, bleu_b in pairs]))

    mrs = np.arange(len(references))
    result = bootstrap((mrs,), difference, vectorized=False, n_resamples=RESAMPLES, method="BCa",
                       random_state=np.random.default_rng(0))
    return difference(mrs), float(result.confidence_interval.low), float(result.confidence_interval.high)


def comparison(table, records: list[Record], results: Path, data_dir: Path) -> str:
    """The markdown table of every method of ``table`` (a table module) against LoRA over the seeds both kept
    predictions for."""
    kept = {(r["labels"]["method"], r["labels"]["seed"]): r for r in records
            if record_path(results, table.TABLE, r["id"]).with_suffix(".predictions.txt").is_file()}

    def predictions(record: Record) -> list[str]:
        return read_predictions(record_path(results, table.TABLE, record["id"]).with_suffix(".predictions.txt"))

    lora_seeds = [s for s in table.SEEDS if (REFERENCE, s) in kept]
    # every run of a table is scored on the same fixed MRs
    references = references_of(kept[(REFERENCE, lora_seeds[0])], data_dir) if lora_seeds else []
    rows = []
    for method in table.METHODS:
        seeds = [s for s in lora_seeds if (method, s) in kept and method != REFERENCE]
        if not seeds:
            continue
        mean, low, high = bleu_difference([predictions(kept[(method, s)]) for s in seeds],
                                          [predictions(kept[(REFERENCE, s)]) for s in seeds], references)
        rows.append([method, ", ".join(map(str, seeds)), f"{mean:+.2f}", f"[{low:+.2f}, {high:+.2f}]",
                     "yes" if low > 0 or high < 0 else "no"])
    return markdown_table(["method", "seeds", "BLEU minus LoRA's (x100)", "95% interval over test MRs",
                           "excludes 0"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"records and summaries (default {RESULTS})")
    parser.add_argument("--data-dir", type=Path, default=DATA, help=f"the benchmark data (default {DATA})")
    parser.add_argument("--table", choices=sorted(TABLES), default=e2e.TABLE, help="the E2E table (default e2e)")
    args = parser.parse_args(argv)
    table = TABLES[args.table]
    records = load_records(args.results, table.TABLE, table.runs())
    comparisons = comparison(table, records, args.results, args.data_dir)
    command = "python benchmarks/quality/e2e_bootstrap.py" + ("" if table is e2e else f" --table {args.table}")
    out = args.results / table.TABLE / "bootstrap.md"
    out.write_text("# E2E BLEU against LoRA, test MR by test MR (paired bootstrap)\n\n"
                   + __doc__.split("\n\n")[2].replace("\n", " ").strip() + "\n\n" + comparisons
                   + f"\nCommand: `{command}`\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
