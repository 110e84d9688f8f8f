"""Task pipelines: data, encoding and evaluation per task family, and the runner that trains and records a run.

The names below are imported on first use, so that importing the package (``kasa-peft --help``) stays fast.
"""

import importlib

_EXPORTS = {
    "TASK_DEFAULTS": "config", "RunConfig": "config", "read_config_file": "config", "resolve_config": "config",
    "build_pipeline": "registry", "RunResult": "run", "evaluate": "run", "read_run": "run", "train": "run",
    "run_demo": "demo", "score": "scoring",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
