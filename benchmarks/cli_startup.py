"""How fast `kasa-peft` answers `--help` and argument errors: this checkout against another (``--baseline``).

Each command runs as ``python -m kasa_peft.cli ...`` in a fresh process with ``PYTHONPATH`` set to the
checkout's ``src/``; ``python -c pass`` (the interpreter alone) is timed with them as the floor. All candidates
alternate (A B C A B C ...), so drifting load on a shared machine hits them alike; medians are reported.

    git worktree add /tmp/kasa-before <commit> && python benchmarks/cli_startup.py --baseline /tmp/kasa-before
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from common import alternate, machine_info, median, write_results

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "--help": ["--help"],
    "train --help": ["train", "--help"],
    "train --bogus-flag": ["train", "--bogus-flag"],
    "train with --r -1": ["train", "--task", "classify", "--model", "m", "--r", "-1", "--output-dir", "out"],
}


def run(source: Path, args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(source / "src")}
    subprocess.run([sys.executable, "-m", "kasa_peft.cli", *args], env=env, capture_output=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout (e.g. a worktree of a commit)")
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    candidates = {"python -c pass": lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)}
    for name, args in COMMANDS.items():
        candidates[f"baseline: {name}"] = lambda args=args: run(options.baseline, args)
        candidates[f"this checkout: {name}"] = lambda args=args: run(REPO, args)
    times = alternate(candidates, options.repeats)
    medians = {name: median(values) for name, values in times.items()}
    rows = [f"| {name} | {medians[f'baseline: {name}']:.2f} | {medians[f'this checkout: {name}']:.2f} |"
            for name in COMMANDS]
    markdown = "\n".join([
        f"# kasa-peft startup (median of {options.repeats}, seconds; `python -c pass`: "
        f"{medians['python -c pass']:.2f})", "", "| command | baseline | this checkout |", "|---|---|---|", *rows, ""])
    write_results("cli_startup", {"machine": machine_info(), "times": times, "medians": medians}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
