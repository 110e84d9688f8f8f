"""Check the GGUF exports in llama.cpp itself (llama-cpp-python) against our PyTorch model.

For a KaSA adapter trained on the ``smollm2`` base (a Q4_1 GGUF, which transformers dequantizes to float32):

1. the floor: the base alone in llama.cpp (Q4_1 weights, activations quantized to Q8_1 in its matmuls) against
   our float32 copy of the same weights, on the same token ids;
2. the base GGUF plus our LoRA adapter GGUF (``--format gguf``) in llama.cpp against our model with the adapter;
3. the merged GGUF (``--format merged-gguf``) in f32, q8_0 and the source's Q4_1, against our model with the adapter.

For each: the next-token logits at the last prompt position (max |difference| per prompt), and greedy
generations of ``--new-tokens`` tokens on ``--prompts`` E2E test prompts, token for token; where two
generations part, the top-1/top-2 logit gap of our model at that step is recorded (a near-tie is a gap
below the floor's largest logit difference).

    python benchmarks/gguf_check.py --adapter RUN/adapter [--prompts 20] [--new-tokens 24]

llama-cpp-python is installed when missing (a wheel in ~/.cache/kasa-peft/wheels is used if present; building
it from source took ~35 minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import REPO, RESULTS, machine_info, write_results  # noqa: E402

WHEELS = Path.home() / ".cache" / "kasa-peft" / "wheels"


# what llama.cpp runs, against our base model (base*) or our model with the adapter (the others)
RUNS = {"base": "the base GGUF alone (Q4_1): the floor",
        "adapter": "the base GGUF + our adapter GGUF",
        "base-f32": "the base GGUF dequantized to f32, alone: the floor without quantization",
        "adapter-f32": "the f32 base + our adapter GGUF",
        "merged-f32": "our merged GGUF, f32", "merged-q8_0": "our merged GGUF, q8_0",
        "merged-source": "our merged GGUF, the base's types (Q4_1)"}


def f32_copy(source: Path, out: Path) -> Path:
    """The GGUF file ``source`` with every tensor dequantized to float32 (metadata kept)."""
    import gguf

    from kasa_peft.interop.gguf.merged import copied_fields, output_tensor
    from kasa_peft.interop.gguf.writing import write_gguf

    reader = gguf.GGUFReader(source)
    tensors = [output_tensor(t, None, "f32") for t in reader.tensors]
    return write_gguf(out, reader.fields["general.architecture"].contents(), copied_fields(reader, "f32"), tensors)


def ensure_llama_cpp() -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--find-links", str(WHEELS), "llama-cpp-python"],
                       check=True)


def e2e_prompts(data_dir: str, count: int) -> list[str]:
    from kasa_peft.tasks.e2e import format_mr, group_references, load_e2e

    mrs, _ = group_references(load_e2e(data_dir, "test"))
    return [format_mr(mr) for mr in mrs[:count]]


def torch_greedy(model, ids: list[int], new_tokens: int, eos: int) -> tuple[np.ndarray, list[int], list[float]]:
    """Last-position logits of the prompt, then greedy tokens and each step's top-1 minus top-2 logit."""
    with torch.no_grad():
        out = model(torch.tensor([ids]), use_cache=True)
        first = out.logits[0, -1].float().numpy()
        logits, tokens, gaps = out.logits[0, -1], [], []
        for _ in range(new_tokens):
            top = torch.topk(logits.float(), 2)
            tokens.append(int(top.indices[0]))
            gaps.append(float(top.values[0] - top.values[1]))
            if tokens[-1] == eos:
                break
            out = model(torch.tensor([[tokens[-1]]]), past_key_values=out.past_key_values, use_cache=True)
            logits = out.logits[0, -1]
    return first, tokens, gaps


def llama_greedy(llm, ids: list[int], new_tokens: int, eos: int) -> tuple[np.ndarray, list[int]]:
    llm.reset()
    llm.eval(ids)
    first = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    logits, tokens = first, []
    for _ in range(new_tokens):
        tokens.append(int(np.argmax(logits)))
        if tokens[-1] == eos:
            break
        llm.eval([tokens[-1]])
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
    return first, tokens


def compare(name: str, llm, reference: list[tuple[np.ndarray, list[int], list[float]]], prompts_ids, args,
            eos: int) -> dict:
    rows = []
    for ids, (ref_first, ref_tokens, ref_gaps) in zip(prompts_ids, reference, strict=True):
        first, tokens = llama_greedy(llm, ids, args.new_tokens, eos)
        parted = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens, strict=False)) if a != b), None)
        if parted is None and len(tokens) != len(ref_tokens):
            parted = min(len(tokens), len(ref_tokens))
        rows.append({"max_abs_logit_diff": float(np.abs(first - ref_first).max()),
                     "same_top1": int(np.argmax(first)) == int(np.argmax(ref_first)),
                     "tokens_equal": parted is None, "parted_at": parted,
                     "gap_at_parting": ref_gaps[parted] if parted is not None and parted < len(ref_gaps) else None,
                     "ours": ref_tokens, "llama_cpp": tokens})
    diffs = [r["max_abs_logit_diff"] for r in rows]
    summary = {"median_max_abs_logit_diff": statistics.median(diffs), "max_max_abs_logit_diff": max(diffs),
               "prompts_identical": sum(r["tokens_equal"] for r in rows), "prompts": len(rows),
               "parting_gaps": [r["gap_at_parting"] for r in rows if not r["tokens_equal"]]}
    print(f"{name}: {summary}", flush=True)
    return {"summary": summary, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="a KaSA adapter directory trained on smollm2")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--llama-threads", type=int, default=1,
                        help="llama.cpp threads (its threads spin at barriers: 1 on a busy machine)")
    parser.add_argument("--name", default="gguf/smollm2_e2e")
    parser.add_argument("--runs", type=lambda text: text.split(","), default=list(RUNS),
                        help=f"comma-separated, of {', '.join(RUNS)}")
    args = parser.parse_args()
    ensure_llama_cpp()
    from llama_cpp import Llama

    import kasa_peft as kp
    from kasa_peft.interop.gguf import export_gguf_adapter, export_merged_gguf
    from kasa_peft.interop.gguf.merged import gguf_file
    from kasa_peft.models import load_model

    torch.set_num_threads(args.threads)
    print("exporting and running our model", flush=True)
    model, tokenizer = load_model("smollm2", "causal_lm")
    base_gguf = gguf_file("smollm2")
    eos = tokenizer.eos_token_id
    prompts = e2e_prompts(args.data_dir, args.prompts)
    prompts_ids = [tokenizer(p)["input_ids"] for p in prompts]
    work = Path(tempfile.mkdtemp(prefix="gguf_check-"))
    files = {"base": base_gguf, "base-f32": f32_copy(base_gguf, work / "base-f32.gguf")}
    if any(run.startswith("adapter") for run in args.runs):
        files["adapter"] = export_gguf_adapter(args.adapter, work / "adapter.gguf", base_model=model)
    for run in args.runs:
        if run.startswith("merged-"):
            files[run] = export_merged_gguf(args.adapter, work / f"{run}.gguf", base_model=model,
                                            tensor_type=run.removeprefix("merged-"))
    base_reference = [torch_greedy(model, ids, args.new_tokens, eos) for ids in prompts_ids]
    kp.load_adapter(model, args.adapter)
    adapted_reference = [torch_greedy(model, ids, args.new_tokens, eos) for ids in prompts_ids]

    def llama(path, lora=None):
        return Llama(str(path), lora_path=str(lora) if lora else None, n_ctx=256, n_batch=256, logits_all=True,
                     n_threads=args.llama_threads, seed=0, verbose=False)

    results = {}
    for run in args.runs:
        if run in ("base", "base-f32"):
            results[run] = compare(run, llama(files[run]), base_reference, prompts_ids, args, eos)
        elif run.startswith("adapter"):
            base_file = files["base-f32" if run == "adapter-f32" else "base"]
            results[run] = compare(run, llama(base_file, files["adapter"]), adapted_reference, prompts_ids, args, eos)
        else:
            results[run] = compare(run, llama(files[run]), adapted_reference, prompts_ids, args, eos)
    llama_tokens = llama(base_gguf)
    same_ids = sum(llama_tokens.tokenize(p.encode(), add_bos=False, special=True) == ids
                   for p, ids in zip(prompts, prompts_ids, strict=True))
    adapter_shift = [float(np.abs(a[0] - b[0]).max()) for a, b in zip(adapted_reference, base_reference, strict=True)]
    import llama_cpp
    data = {"machine": machine_info(), "llama_cpp_python": llama_cpp.__version__, "base_gguf": str(base_gguf),
            "adapter": str(Path(args.adapter).resolve()), "prompts": prompts, "new_tokens": args.new_tokens,
            "llama_cpp_tokenizer_gives_the_same_ids": f"{same_ids}/{len(prompts)}",
            "adapter_shift_of_logits_median": statistics.median(adapter_shift),
            "file_sizes_bytes": {k: Path(v).stat().st_size for k, v in files.items()}, "results": results}
    (RESULTS / args.name).parent.mkdir(parents=True, exist_ok=True)
    write_results(args.name, data, markdown(data))


def markdown(data: dict) -> str:
    lines = [f"# GGUF exports in llama.cpp (llama-cpp-python {data['llama_cpp_python']}) vs our PyTorch model", "",
             f"Base `{Path(data['base_gguf']).name}`; adapter `{data['adapter']}`; {len(data['prompts'])} E2E test "
             f"prompts, greedy, up to {data['new_tokens']} new tokens (stopping at EOS). Same token ids fed to both "
             f"(llama.cpp's own tokenizer gives the same ids on {data['llama_cpp_tokenizer_gives_the_same_ids']}).",
             f"The adapter moves our next-token logits by {data['adapter_shift_of_logits_median']:.2f} (median max "
             "|difference|), the scale against which the differences below are small or not.", "",
             "| llama.cpp runs | vs ours | median max abs logit diff | max | greedy identical | "
             "our top-1/top-2 gap where they part |", "|---|---|---|---|---|---|"]
    for name, result in data["results"].items():
        s = result["summary"]
        gaps = ", ".join(f"{g:.3f}" for g in s["parting_gaps"] if g is not None) or "-"
        reference = "base" if name.startswith("base") else "base + KaSA"
        lines.append(f"| {name}: {RUNS[name]} | {reference} | {s['median_max_abs_logit_diff']:.4f} | "
                     f"{s['max_max_abs_logit_diff']:.4f} | {s['prompts_identical']}/{s['prompts']} | {gaps} |")
    machine = data["machine"]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores; torch {machine['versions']['torch']}, "
              f"transformers {machine['versions']['transformers']}; {machine['date']}.",
              f"Command: `python benchmarks/{machine['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
