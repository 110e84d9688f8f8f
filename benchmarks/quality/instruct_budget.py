"""How many new tokens IFEval responses need: the measurement behind the instruction table's decoding budget.

    python benchmarks/quality/instruct_budget.py [--samples 16 --max-new-tokens 1280 --threads 1]

The base SmolLM2-135M-Instruct answers a fixed sample of the 541 IFEval prompts (``fixed_subset``, the same
rule as ``--max-eval-samples``) greedily through the chat template, up to lm-evaluation-harness's 1280 new
tokens, with continuous batching (batch 8). Greedy decoding makes the response at a smaller budget ``b`` the
first ``b`` tokens of this one, so one run gives, at every candidate budget, how many responses hit it, the
IFEval scores of the cut responses, and the tokens to decode; with the measured decoding speed that is the
hours one evaluation of all 541 prompts would take at each budget. Writes
``benchmarks/results/quality/instruct/budget.json`` and ``budget.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/, for common.py

from common import machine_info, machine_sentence, write_results  # noqa: E402
from quality.harness import DATA  # noqa: E402
from kasa_peft.models import load_model  # noqa: E402
from kasa_peft.pipelines.base import fixed_subset  # noqa: E402
from kasa_peft.pipelines.causal_lm import encode_prompt, padding_id  # noqa: E402
from kasa_peft.pipelines.continuous_batching import greedy_decode  # noqa: E402
from kasa_peft.tasks.ifeval import load_ifeval, score_ifeval  # noqa: E402

BUDGETS = (128, 256, 384, 512, 768, 1024, 1280)
BATCH_SIZE = 8
PROMPTS_IN_IFEVAL = 541


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--samples", type=int, default=16, help="IFEval prompts (fixed subset)")
    parser.add_argument("--max-new-tokens", type=int, default=1280)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("smollm2", "causal_lm")
    prompts = fixed_subset(load_ifeval(args.data_dir), args.samples)
    encoded = [encode_prompt(tokenizer, p.prompt, True) for p in prompts]
    start, cpu_start = time.perf_counter(), time.process_time()
    generated = greedy_decode(model, encoded, max_new_tokens=args.max_new_tokens,
                              eos_token_ids=[tokenizer.eos_token_id], pad_token_id=padding_id(tokenizer),
                              batch_size=BATCH_SIZE)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = sum(map(len, generated))
    stopped = [len(ids) for ids in generated if ids[-1] == tokenizer.eos_token_id]
    rows = []
    for budget in (b for b in BUDGETS if b <= args.max_new_tokens):
        cut = [ids[:budget] for ids in generated]
        metrics, _ = score_ifeval(prompts, [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in cut])
        hits = sum(len(ids) == budget and ids[-1] != tokenizer.eos_token_id for ids in cut)
        decoded = sum(map(len, cut))
        rows.append({"budget": budget, "hits": hits, "tokens": decoded,
                     "cpu_hours_541": decoded / args.samples * PROMPTS_IN_IFEVAL / (tokens / cpu_seconds) / 3600,
                     **{name: metrics[name] for name in ("prompt_level_strict_acc", "inst_level_strict_acc",
                                                         "prompt_level_loose_acc", "inst_level_loose_acc")}})
    info = machine_info()
    table = "\n".join(
        f"| {r['budget']} | {r['hits']} of {args.samples} | {r['tokens']} | {r['cpu_hours_541']:.1f} | "
        f"{100 * r['prompt_level_strict_acc']:.1f} | {100 * r['inst_level_strict_acc']:.1f} | "
        f"{100 * r['prompt_level_loose_acc']:.1f} | {100 * r['inst_level_loose_acc']:.1f} |" for r in rows)
    markdown = "\n".join([
        "# IFEval: how many new tokens the base model's responses need", "",
        machine_sentence(info, ("torch", "transformers")), "",
        f"Base SmolLM2-135M-Instruct, {args.samples} fixed IFEval prompts (`fixed_subset`), greedy, chat template, "
        f"continuous batching (batch {BATCH_SIZE}), one run at {args.max_new_tokens} new tokens: {tokens} tokens "
        f"in {seconds:.0f} s ({cpu_seconds:.0f} CPU seconds: {tokens / cpu_seconds:.1f} tokens per CPU second, the "
        f"measure that shared cores leave meaningful). {len(stopped)} of {args.samples} responses stopped "
        f"by themselves, after {sorted(stopped)} tokens. A smaller budget's response is the first tokens of this "
        "one (greedy), so each row is exact for this sample; the CPU hours scale its tokens to 541 prompts at "
        "this speed (an overestimate: a shorter budget attends over shorter caches).", "",
        "| budget | responses cut off | tokens decoded | CPU hours for 541 prompts | prompt strict | inst strict "
        "| prompt loose | inst loose |", "|---|---|---|---|---|---|---|---|", table, ""])
    write_results("quality/instruct/budget", {
        "machine": info, "samples": args.samples, "max_new_tokens": args.max_new_tokens, "seconds": seconds,
        "cpu_seconds": cpu_seconds, "tokens": tokens, "budgets": rows, "keys": [p.key for p in prompts],
        "lengths": [len(ids) for ids in generated]}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
