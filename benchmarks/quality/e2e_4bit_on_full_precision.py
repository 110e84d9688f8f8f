"""The E2E table's adapters trained on the 4-bit base, decoded again on the full-precision base.

    python benchmarks/quality/e2e_4bit_on_full_precision.py [--jobs 1 --threads 1]
    python benchmarks/quality/e2e_bootstrap.py

QLoRA's deployment: train on 4 bits, serve in full precision. Each run scores the adapter of one of the E2E
table's `kasa-auto-4bit` and `lora-4bit` runs (`harness.scored_again`: trained first if that run has not) with
the table's own decoding, on `smollm2` unquantized. The summary puts each adapter's two decodings side by side;
`e2e_bootstrap.py` compares them with the full-precision runs and with each other.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for `quality`

from quality import e2e  # noqa: E402
from quality.harness import Record, Run, load_records, main, scored_again  # noqa: E402
from quality.summary import machine_line, seeds_of  # noqa: E402

TABLE = "e2e_4bit_on_full_precision"
METHODS = ("kasa-auto-4bit", "lora-4bit")
ON_FULL_PRECISION = "-on-full-precision"  # a run's id is the id of the E2E run it scores again, then this


def runs() -> list[Run]:
    return [scored_again(run, e2e.TABLE, run.id + ON_FULL_PRECISION, {"quantize": None})
            for run in e2e.runs(METHODS)]


def summarise(records: list[Record], out: Path) -> None:
    on_4bit = load_records(out.parent, e2e.TABLE, e2e.runs(METHODS))
    tables = "\n".join(f"Decoded on the {base}, seeds {seeds_of(group)}:\n\n{e2e.means_table(group, METHODS)}"
                       for base, group in (("4-bit base", on_4bit), ("full-precision base", records)) if group)
    (out / "summary.md").write_text(
        "# E2E adapters trained on the 4-bit base, decoded on the 4-bit base and on the full-precision base\n\n"
        "The `kasa-auto-4bit` and `lora-4bit` runs of the E2E table (trained on SmolLM2 quantized to NF4 with "
        "double quantization), each adapter decoded again on the full-precision `smollm2` (the QLoRA deployment: "
        "train on 4 bits, serve in full precision) with the table's decoding "
        f"({e2e.TEST_MRS} fixed test MRs, beam {e2e.BEAMS}, up to {e2e.MAX_NEW_TOKENS} new tokens). Mean ± std "
        "over seeds (BLEU, METEOR, ROUGE-L x100; NIST, CIDEr as they are).\n\n"
        f"{tables}\nMachine: {machine_line(records)}.\n"
        "Command: `python benchmarks/quality/e2e_4bit_on_full_precision.py`\n")


if __name__ == "__main__":
    sys.exit(main(TABLE, runs(), summarise))
