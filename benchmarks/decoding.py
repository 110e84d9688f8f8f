"""Greedy decoding with continuous batching (`pipelines.continuous_batching`) against plain `model.generate`, on
SmolLM2-135M-Instruct and the same IFEval prompts, at the same budget, at each of ``--batch-sizes``.

Both decode a fixed sample of the IFEval prompts (``fixed_subset``) through the chat template, greedily, at most
``--max-new-tokens`` new tokens: `generate` on batches of similar length (the library's `generate_ids`, which the
IFEval pipeline used before), continuous batching with rows leaving when they stop and waiting prompts joining.
All candidates alternate (A B C D A B C D ...) and the medians are compared, in CPU time (the process's own, which
other work on shared cores disturbs less than wall time) and wall time. Tokens per second count the tokens kept:
each response up to and including its EOS. "Row-steps" are the rows the model computes: for `generate` every row
of a batch until its longest response stops, for continuous batching each response's own tokens. Every
candidate's responses are compared token by token with `generate`'s at the first batch size.

    python benchmarks/decoding.py [--samples 32 --max-new-tokens 256 --batch-sizes 8 32 --repeats 1 --threads 1]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, machine_info, machine_sentence, median, write_results  # noqa: E402

from kasa_peft.models import load_model  # noqa: E402
from kasa_peft.pipelines.base import fixed_subset  # noqa: E402
from kasa_peft.pipelines.causal_lm import encode_prompt, generate_ids, length_sorted_batches, padding_id  # noqa: E402
from kasa_peft.pipelines.continuous_batching import greedy_decode  # noqa: E402
from kasa_peft.tasks.ifeval import load_ifeval  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--samples", type=int, default=32, help="IFEval prompts (fixed subset)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_model("smollm2", "causal_lm")
    prompts = [encode_prompt(tokenizer, p.prompt, True) for p in fixed_subset(load_ifeval(args.data_dir), args.samples)]
    settings = {"max_new_tokens": args.max_new_tokens, "pad_token_id": padding_id(tokenizer), "progress": False}
    decoders = {}
    for size in args.batch_sizes:
        decoders[f"generate, batch {size}"] = functools.partial(
            generate_ids, model, prompts, eos_token_id=tokenizer.eos_token_id, batch_size=size, **settings)
        decoders[f"continuous, batch {size}"] = functools.partial(
            greedy_decode, model, prompts, eos_token_ids=[tokenizer.eos_token_id], batch_size=size, **settings)
    outputs: dict[str, list[list[int]]] = {}
    cpu: dict[str, list[float]] = {name: [] for name in decoders}

    def run(name: str) -> None:
        start = time.process_time()
        outputs[name] = decoders[name]()
        cpu[name].append(time.process_time() - start)

    wall = alternate({name: functools.partial(run, name) for name in decoders}, args.repeats)
    reference = outputs[f"generate, batch {args.batch_sizes[0]}"]
    lengths = [len(ids) for ids in reference]
    kept = sum(lengths)
    medians = {name: {"wall": median(wall[name]), "cpu": median(cpu[name])} for name in decoders}
    row_steps = {}
    for size in args.batch_sizes:
        row_steps[f"generate, batch {size}"] = sum(
            len(batch) * max(lengths[i] for i in batch)
            for batch in length_sorted_batches([len(p) for p in prompts], size))
        row_steps[f"continuous, batch {size}"] = kept
    identical = {name: sum(a == b for a, b in zip(reference, outputs[name], strict=True)) for name in decoders}
    hits = sum(n == args.max_new_tokens and ids[-1] != tokenizer.eos_token_id
               for n, ids in zip(lengths, reference, strict=True))
    baseline = medians[f"generate, batch {args.batch_sizes[0]}"]
    info = machine_info()
    rows = [f"| {name} | {medians[name]['wall']:.1f} | {medians[name]['cpu']:.1f} | "
            f"{kept / medians[name]['cpu']:.1f} | {baseline['cpu'] / medians[name]['cpu']:.2f}x | "
            f"{row_steps[name]} | {identical[name]} of {args.samples} |" for name in decoders]
    ratios = {size: {clock: medians[f"generate, batch {size}"][clock] / medians[f"continuous, batch {size}"][clock]
                     for clock in ("wall", "cpu")} for size in args.batch_sizes}
    markdown = "\n".join([
        "# Greedy decoding: continuous batching against `model.generate`", "",
        machine_sentence(info, ("torch", "transformers")), "",
        f"SmolLM2-135M-Instruct, {args.samples} fixed IFEval prompts, chat template, greedy, at most "
        f"{args.max_new_tokens} new tokens, {args.threads} torch thread(s); median of {args.repeats} alternating "
        f"run(s). {kept} tokens kept (each response up to its EOS; {hits} of {args.samples} cut at the budget).", "",
        f"| decoder | wall s | CPU s | kept tokens / CPU s | CPU speed-up over generate at batch "
        f"{args.batch_sizes[0]} | row-steps computed | responses token-identical to generate at batch "
        f"{args.batch_sizes[0]} |", "|---|---|---|---|---|---|---|", *rows, "",
        "Continuous batching against `generate` at the same batch size: " + "; ".join(
            f"batch {size}: **{r['cpu']:.2f}x** in CPU time, {r['wall']:.2f}x in wall time"
            for size, r in ratios.items()) + ".", ""])
    write_results("decoding", {"machine": info, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
                               "batch_sizes": args.batch_sizes, "wall": wall, "cpu": cpu, "medians": medians,
                               "ratios": ratios, "kept_tokens": kept, "lengths": lengths, "row_steps": row_steps,
                               "identical": identical}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
