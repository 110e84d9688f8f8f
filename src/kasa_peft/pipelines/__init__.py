"""Task pipelines: data, encoding and evaluation per task family, and the runner that trains and records a run.

The names below are imported on first use, so that importing the package (``kasa-peft --help``) stays fast.
"""

from ..lazy import lazy_getattr

_EXPORTS = {
    "TASK_DEFAULTS": "config", "RunConfig": "config", "read_config_file": "config", "resolve_config": "config",
    "build_pipeline": "registry", "RunResult": "run", "evaluate": "run", "read_run": "run_dir", "train": "run",
    "run_demo": "demo", "score": "scoring",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
