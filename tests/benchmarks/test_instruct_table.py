"""The instruction-following table's summary on hand-made records and kept answers: the budget-hit counts, the
score on the prompts no run cut off, and the differences with LoRA, each worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

from quality import harness, instruct

# per method: per prompt (strict, followed instructions of 2, cut at the budget); ROUGE-L of two held-out tasks
ANSWERS = {"lora": ([(True, 2, False), (False, 1, False), (False, 0, True)], [40.0, 20.0]),
           "kasa": ([(True, 2, False), (True, 2, False), (False, 1, True)], [50.0, 30.0])}


def write_run(results: Path, method: str, seed: int, train_loss: float | None = None) -> dict:
    prompts, rouge = ANSWERS[method]
    run_id = f"instruct-{method}-s{seed}"
    path = harness.record_path(results, instruct.TABLE, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"key": k, "instruction_id_list": ["a", "b"], "hit_budget": cut, "prompt_level_strict_acc": strict,
             "prompt_level_loose_acc": strict, "inst_level_strict_acc": [True] * followed + [False] * (2 - followed),
             "inst_level_loose_acc": [True] * followed + [False] * (2 - followed)}
            for k, (strict, followed, cut) in enumerate(prompts)]
    path.with_suffix(".ifeval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    # ROUGE-L of a generation against itself is 100, against a disjoint text 0: build generations that score as
    # ANSWERS says (reference of 10 words, generation sharing the first k of them: F = 2k / 20)
    held_out = []
    for score in rouge:
        words = [f"w{i}" for i in range(10)]
        shared = round(score / 10)
        held_out.append({"set": "user_oriented", "prompt": "p", "reference": " ".join(words),
                         "generation": " ".join(words[:shared] + [f"x{i}" for i in range(10 - shared)])})
    path.with_suffix(".sft.jsonl").write_text("".join(json.dumps(row) + "\n" for row in held_out))
    accuracy = sum(strict for strict, _, _ in prompts) / len(prompts)
    metrics = {**{name: accuracy for name in instruct.IFEVAL_METRICS}, instruct.ROUGE_L: sum(rouge) / len(rouge),
               "budget_hits": sum(cut for _, _, cut in prompts)}
    return {"table": instruct.TABLE, "id": run_id, "labels": {"method": method, "seed": seed},
            "command": "python benchmarks/quality/instruct.py",
            "run": {"final": {"metrics": metrics}, "config": {}, "device": "cpu", "train_loss": train_loss},
            "machine": {"date": "2026-01-01 00:00:00", "cpu": "x", "cores": 2, "torch_threads": 1, "python": "3.11",
                        "versions": {"torch": "2"}}}


def test_summary_counts_budget_hits_scores_uncut_prompts_and_differences_with_lora(tmp_path):
    results = tmp_path / "results"
    losses = {("kasa", 0): 2.0, ("kasa", 1): 3.0, ("lora", 0): 1.5, ("lora", 1): 1.5}
    records = [write_run(results, method, seed, losses[method, seed]) for method in ANSWERS for seed in (0, 1)]
    instruct.summarise(records, results / instruct.TABLE)
    text = (results / instruct.TABLE / "summary.md").read_text()
    kasa = next(line for line in text.splitlines() if line.startswith("| kasa |"))
    cells = [cell.strip() for cell in kasa.strip("|").split("|")]
    assert cells[-3] == "2.50 ± 0.71"  # mean training loss over the seeds: (2 + 3) / 2, std sqrt(0.5)
    # prompt strict 2/3 on both seeds: 66.7 ± 0; one response of 3 cut per run; prompts no run cut off: 0 and 1,
    # where kasa passes both (100) and lora one (50)
    assert cells[1] == "**66.7 ± 0.0**" and cells[-2] == "1.0 ± 0.0" and cells[-1] == "100.0 ± 0.0"
    assert "the 2 prompts that no run of any row cut off" in text
    lora = [cell.strip() for cell in next(line for line in text.splitlines() if line.startswith("| lora |"))
            .strip("|").split("|")]
    assert lora[-1] == "50.0 ± 0.0"
    against = next(line for line in text.splitlines() if line.startswith("| kasa |") and "[" in line)
    differences = [cell.strip().split(" ")[0] for cell in against.strip("|").split("|")[1:]]
    # prompt strict 2/3 - 1/3; instructions 5/6 - 3/6; ROUGE-L (50 + 30) / 2 - (40 + 20) / 2
    assert differences == ["+33.3", "+33.3", "+33.3", "+33.3", "+10.0"]
