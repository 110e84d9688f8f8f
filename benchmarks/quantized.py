"""Issue 14's benchmark: KaSA on a bitsandbytes 4-bit / 8-bit base vs a float32 base, and vs PEFT LoRA on the same
quantized base: training-step peak memory and step time.

Models: SmolLM2-135M (``smollm2``) and a Llama-shaped model built from a config with random weights
(``llama-0.5b``: 10 layers, hidden 2048, MLP 5632, tied 32k vocabulary, 0.51B parameters; its weights dominate
memory). SmolLM2 loads as ``--quantize`` loads it (``load_model(..., quantize=...)``: NF4 with double
quantization; LLM.int8()); the random model is quantized in memory the same way by ``quantize_linear_layers``.
The adapters are rank 8 on ``q_proj`` and ``v_proj`` (both methods); batch 1 x 64 tokens; AdamW; KaSA's
regulariser included.

* memory: one subprocess per (model, storage, method); peak RSS sampled every millisecond during the training
  steps, and the same minus the RSS of the process before the model was built (interpreter, torch, transformers,
  bitsandbytes: the CPU analogue of ``torch.cuda.max_memory_allocated``, which leaves out the CUDA context).
  The probes run with glibc's mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``): by default glibc raises
  it as large buffers are freed, so the float32 copies bitsandbytes dequantizes into for every matmul end up on
  the heap and stay in the RSS after they are freed (0.389 instead of 0.321 for llama-0.5b's 4-bit / float32);
  with a fixed threshold the RSS counts the buffers that are alive, as ``max_memory_allocated`` does on a GPU.
  Goal: on the weight-dominated model, KaSA on the 4-bit base at most 0.35x KaSA on the float32 base;
* step time: one subprocess per (model, storage) holding both methods on copies of the same base, steps
  interleaved (ours, LoRA, ours, ...). Goal: KaSA at most 1.05x PEFT LoRA on the same 4-bit base.

    nice -n 10 python benchmarks/quantized.py [--models llama-0.5b smollm2] [--steps 4] [--threads 2]
    nice -n 10 python benchmarks/quantized.py --memory-only --models llama-1b --steps 2   # memory, 0.95B
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import alternate, machine_info, machine_sentence, median, peak_rss, write_results  # noqa: E402

STORAGES = ("float32", "4bit", "8bit")
METHODS = ("kasa", "lora")
TARGETS = ("q_proj", "v_proj")
R, ALPHA, BATCH, LENGTH = 8, 16, 1, 64
GOALS = {"memory_4bit_vs_float32": 0.35, "step_vs_lora_4bit": 1.05}
MEMORY_PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}  # freed large buffers leave the RSS (module docstring)
LLAMA_SHAPE = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_attention_heads=16,
                   num_key_value_heads=4, tie_word_embeddings=True, max_position_embeddings=256)
RANDOM_LLAMAS = {"llama-0.5b": 10, "llama-1b": 20}  # layers: 0.51B and 0.95B parameters


def load_base(name: str, storage: str) -> torch.nn.Module:
    if name == "smollm2":
        from kasa_peft.models import load_model

        return load_model("smollm2", "causal_lm", quantize=None if storage == "float32" else storage)[0]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_SHAPE, num_hidden_layers=RANDOM_LLAMAS[name])).eval()
    if storage == "float32":
        return model
    from kasa_peft.models.bitsandbytes import quantize_linear_layers

    return quantize_linear_layers(model, storage)


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter and buffer (each storage once): the model's own memory, base and adapter."""
    tensors = {t.data_ptr(): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def prepared(method: str, base: torch.nn.Module) -> torch.nn.Module:
    if method == "kasa":
        import kasa_peft

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: the truncation warns that it removes > 1%
            return kasa_peft.inject(base, kasa_peft.KasaConfig(r=R, alpha=ALPHA, target_modules=TARGETS))
    from peft import LoraConfig, get_peft_model

    return get_peft_model(base, LoraConfig(r=R, lora_alpha=ALPHA, target_modules=list(TARGETS),
                                           task_type="CAUSAL_LM"))


def step_fn(method: str, model: torch.nn.Module, vocab: int):
    import kasa_peft

    ids = torch.randint(0, vocab, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        if method == "kasa":
            loss = loss + kasa_peft.regularization_loss(model)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def memory_probe(name: str, storage: str, method: str, steps: int) -> dict:
    """In a subprocess: the RSS before the model exists, and the peak RSS during training steps."""
    import kasa_peft  # noqa: F401  (imported before the baseline, as everything the run needs)
    import peft  # noqa: F401
    if storage != "float32":
        import kasa_peft.models.bitsandbytes  # noqa: F401
    process = psutil.Process()
    before_model = process.memory_info().rss
    base = load_base(name, storage)
    vocab = base.config.vocab_size
    model = prepared(method, base)
    step = step_fn(method, model, vocab)
    step()
    _, peak = peak_rss(step, steps)
    return {"peak_rss": peak, "before_model_rss": before_model, "tensor_bytes": tensor_bytes(model)}


def time_probe(name: str, storage: str, steps: int) -> dict:
    """In a subprocess: both methods on copies of one base, training steps interleaved."""
    base = load_base(name, storage)
    vocab = base.config.vocab_size
    steps_by_method = {m: step_fn(m, prepared(m, copy.deepcopy(base)), vocab) for m in METHODS}
    del base
    for step in steps_by_method.values():  # warm-up
        step()
    return alternate(steps_by_method, steps)


def probe(kind: str, *args: str, steps: int, threads: int) -> dict:
    command = [sys.executable, __file__, f"--{kind}-probe", *args, "--steps", str(steps), "--threads", str(threads)]
    env = {**os.environ, **(MEMORY_PROBE_ENV if kind == "memory" else {})}
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_model(name: str, steps: int, threads: int) -> dict:
    memory, times = {}, {}
    for i, storage in enumerate(STORAGES):
        for method in METHODS if i % 2 == 0 else METHODS[::-1]:
            memory[f"{storage}/{method}"] = probe("memory", name, storage, method, steps=max(2, steps // 2),
                                                 threads=threads)
            print(name, storage, method, memory[f"{storage}/{method}"], flush=True)
        times[storage] = probe("time", name, storage, steps=steps, threads=threads)
        print(name, storage, {m: median(t) for m, t in times[storage].items()}, flush=True)
    return {"memory": memory, "step_s": times}


def memory_only(name: str, steps: int, threads: int) -> str:
    """KaSA's peak training memory on the 4-bit and the float32 base only (for a model too slow to time here)."""
    runs = {storage: probe("memory", name, storage, "kasa", steps=steps, threads=threads)
            for storage in ("float32", "4bit")}
    above = {s: (r["peak_rss"] - r["before_model_rss"]) / 2**20 for s, r in runs.items()}
    tensors = {s: r["tensor_bytes"] / 2**20 for s, r in runs.items()}
    ratio = above["4bit"] / above["float32"]
    lines = [f"# KaSA's peak training memory, {name} ({RANDOM_LLAMAS.get(name)} layers of the random Llama), "
             "4-bit vs float32 base", "", f"Command: `{' '.join(sys.argv)}`; measured as in quantized.md, glibc's mmap "
             "threshold fixed at 1 MiB (`benchmarks/quantized.py`'s docstring says why).", "",
             "| base | model tensors | peak RSS above baseline | peak RSS |", "|---|---|---|---|"]
    lines += [f"| {s} | {tensors[s]:.0f} MiB | {above[s]:.0f} MiB | {runs[s]['peak_rss'] / 2**20:.0f} MiB |"
              for s in runs]
    lines += ["", f"4-bit / float32: {ratio:.3f} above baseline (goal <= {GOALS['memory_4bit_vs_float32']}: "
              f"{'met' if ratio <= GOALS['memory_4bit_vs_float32'] else 'not met'}), "
              f"{tensors['4bit'] / tensors['float32']:.3f} in model tensors."]
    write_results(f"quantized_memory_{name}", {"runs": runs, "ratio_above_baseline": ratio,
                                               "memory_probe_env": MEMORY_PROBE_ENV}, "\n".join(lines) + "\n")
    return "\n".join(lines)


def summarize(raw: dict) -> dict:
    mib = {key: {"peak": r["peak_rss"] / 2**20, "above_baseline": (r["peak_rss"] - r["before_model_rss"]) / 2**20,
                 "tensors": r["tensor_bytes"] / 2**20} for key, r in raw["memory"].items()}
    step = {storage: {m: median(t) for m, t in runs.items()} for storage, runs in raw["step_s"].items()}
    return {
        "memory_mib": mib,
        "step_median_s": step,
        "memory_4bit_vs_float32": mib["4bit/kasa"]["above_baseline"] / mib["float32/kasa"]["above_baseline"],
        "memory_4bit_vs_float32_total_rss": mib["4bit/kasa"]["peak"] / mib["float32/kasa"]["peak"],
        "memory_8bit_vs_float32": mib["8bit/kasa"]["above_baseline"] / mib["float32/kasa"]["above_baseline"],
        "tensors_4bit_vs_float32": mib["4bit/kasa"]["tensors"] / mib["float32/kasa"]["tensors"],
        "memory_vs_lora": {s: mib[f"{s}/kasa"]["above_baseline"] / mib[f"{s}/lora"]["above_baseline"]
                           for s in STORAGES},
        "step_vs_lora": {s: step[s]["kasa"] / step[s]["lora"] for s in STORAGES},
        "step_vs_lora_4bit": step["4bit"]["kasa"] / step["4bit"]["lora"],
    }


def markdown(summaries: dict, info: dict) -> str:
    lines = ["# KaSA on quantized bases: peak training memory and step time", "",
             f"{machine_sentence(info, ('torch', 'transformers', 'peft', 'bitsandbytes'))} "
             f"Rank {R} on {', '.join(TARGETS)}, batch {BATCH} x {LENGTH} tokens, "
             "AdamW. Memory: peak RSS during training steps, above the RSS before the model was built (and in "
             "total); time: medians of interleaved steps, ours and PEFT LoRA on copies of the same base. CPU only "
             "(bitsandbytes' CPU kernels): GPU step times are not measured here.", "",
             "| model | base | model tensors | KaSA peak above baseline | PEFT LoRA | KaSA / LoRA | KaSA step | "
             "LoRA step | KaSA / LoRA |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in summaries.items():
        for storage in STORAGES:
            mem, step = s["memory_mib"], s["step_median_s"][storage]
            lines.append(f"| {name} | {storage} | {mem[f'{storage}/kasa']['tensors']:.0f} MiB | "
                         f"{mem[f'{storage}/kasa']['above_baseline']:.0f} MiB "
                         f"({mem[f'{storage}/kasa']['peak']:.0f} total) | "
                         f"{mem[f'{storage}/lora']['above_baseline']:.0f} MiB | {s['memory_vs_lora'][storage]:.3f} | "
                         f"{step['kasa']:.2f} s | {step['lora']:.2f} s | {s['step_vs_lora'][storage]:.3f} |")
    lines += ["", "| model | goal | measured | met |", "|---|---|---|---|"]
    for name, s in summaries.items():
        ratio = s["memory_4bit_vs_float32"]
        lines.append(f"| {name} | KaSA memory, 4-bit / float32 base <= {GOALS['memory_4bit_vs_float32']} "
                     f"{'(the goal is for the weight-dominated model)' if name == 'smollm2' else ''} | {ratio:.3f} "
                     f"(total RSS {s['memory_4bit_vs_float32_total_rss']:.3f}) | "
                     f"{'yes' if ratio <= GOALS['memory_4bit_vs_float32'] else '**no**'} |")
        ratio = s["step_vs_lora_4bit"]
        lines.append(f"| {name} | KaSA step / PEFT LoRA step, 4-bit base <= {GOALS['step_vs_lora_4bit']} | "
                     f"{ratio:.3f} | {'yes' if ratio <= GOALS['step_vs_lora_4bit'] else '**no**'} |")
    lines += ["", "Model tensors: every parameter and buffer, base and adapter (4-bit / float32 for KaSA: " +
              ", ".join(f"{n} {s['tensors_4bit_vs_float32']:.3f}" for n, s in summaries.items()) + ")."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["llama-0.5b", "smollm2"],
                        choices=[*RANDOM_LLAMAS, "smollm2"])
    parser.add_argument("--memory-only", action="store_true", help="KaSA's memory on the 4-bit and float32 bases only")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory-probe", nargs=3, metavar=("MODEL", "STORAGE", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--time-probe", nargs=2, metavar=("MODEL", "STORAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe or args.time_probe:
        result = (memory_probe(*args.memory_probe, steps=args.steps) if args.memory_probe
                  else time_probe(*args.time_probe, steps=args.steps))
        print(json.dumps(result))
        return
    if args.memory_only:
        for name in args.models:
            print(memory_only(name, args.steps, args.threads), flush=True)
        return
    info = machine_info()
    info["versions"]["bitsandbytes"] = metadata.version("bitsandbytes")
    raw, summaries = {}, {}
    for name in args.models:  # the results are rewritten after each model
        raw[name] = run_model(name, args.steps, args.threads)
        summaries[name] = summarize(raw[name])
        info["load_average_after"] = os.getloadavg()
        paths = write_results("quantized", {"machine": info, "summary": summaries, "raw": raw, "goals": GOALS},
                              markdown(summaries, info))
        print(f"wrote {paths[0]} and {paths[1]}", flush=True)


if __name__ == "__main__":
    main()
