"""Issue 18's cross-check on SmolLM2: our commonsense option accuracy against lm-evaluation-harness's ``acc``.

On each of the eight commonsense sets, the same fixed examples and the same prompt (through the chat template, as
the commonsense table trains and scores), for the base model and for trained adapters (finished runs of
``benchmarks/quality/commonsense.py``, or any ``kasa-peft train --task commonsense:all`` run). lm-eval runs
the model with the adapter merged (``kasa-peft eval --harness``); ours scores the options of the unmerged model.
The two must agree example for example, so every accuracy must be equal.

    python benchmarks/harness_crosscheck.py [--runs RUN_DIR ...] [--max-eval-samples 50]
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine_info, machine_sentence, write_results  # noqa: E402

from kasa_peft.pipelines.causal_lm import OPTION_SCORER  # noqa: E402
from kasa_peft.pipelines.config import resolve_config  # noqa: E402
from kasa_peft.pipelines.run import evaluate, evaluate_with_harness  # noqa: E402
from kasa_peft.pipelines.run_dir import read_run  # noqa: E402
from kasa_peft.tasks.commonsense import COMMONSENSE_SETS  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BASE = {"model": "smollm2", "task": "commonsense:all", "use_chat_template": True}


def compare(recorded: dict, adapter: str | None, data_dir: Path, samples: int) -> dict[str, dict[str, float]]:
    """Per set, our ``option_accuracy`` and lm-eval's ``acc`` for one model (base, or base + adapter)."""
    config = resolve_config(recorded, {"data_dir": str(data_dir), "max_eval_samples": samples,
                                       "max_new_tokens": 1})  # generation is not compared: one token is enough
    ours = evaluate(config, adapter)
    theirs = evaluate_with_harness(config, adapter, ["commonsense:all"])
    return {name: {"ours": ours[f"{name}/option_accuracy"], "lm_eval": theirs[f"kasa_commonsense_{name}"]["acc,none"]}
            for name in COMMONSENSE_SETS}


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    header = "| model | " + " | ".join(COMMONSENSE_SETS) + " | all equal |\n"
    lines = [header, "|---" * (len(COMMONSENSE_SETS) + 2) + "|\n"]
    for model, per_set in results.items():
        cells = [f"{100 * v['ours']:.0f} / {100 * v['lm_eval']:.0f}" for v in per_set.values()]
        equal = all(v["ours"] == v["lm_eval"] for v in per_set.values())
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {'yes' if equal else '**no**'} |\n")
    return "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="*", default=[], help="finished commonsense runs (their --output-dir)")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--max-eval-samples", type=int, default=50)
    args = parser.parse_args()
    machine = {**machine_info(), "lm_eval": metadata.version("lm_eval")}
    models = {"base (smollm2)": (BASE, None)}
    models |= {Path(run).parent.name if Path(run).name == "output" else Path(run).name: (read_run(run)["config"], run)
               for run in args.runs}
    results = {}
    for name, (recorded, adapter) in models.items():  # the page is rewritten after each model
        results[name] = compare(recorded, adapter, args.data_dir, args.max_eval_samples)
        text = ("# Commonsense: our option accuracy against lm-evaluation-harness's acc\n\n"
                f"{machine_sentence(machine)} lm_eval {machine['lm_eval']}. {args.max_eval_samples} fixed examples "
                "of each set, the prompt through the chat template; each cell is ours / lm-eval's accuracy x100.\n\n"
                + table(results))
        write_results("harness_crosscheck", {"machine": machine, "evaluation": {"option_scorer": OPTION_SCORER},
                                             "results": results}, text)


if __name__ == "__main__":
    main()
