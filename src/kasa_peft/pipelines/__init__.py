"""Task pipelines: data, encoding and evaluation per task family, and the runner that trains and records a run."""

from .config import TASK_DEFAULTS, RunConfig, read_config_file, resolve_config
from .demo import run_demo
from .registry import build_pipeline
from .run import RunResult, evaluate, read_run, train
from .scoring import score

__all__ = ["TASK_DEFAULTS", "RunConfig", "RunResult", "build_pipeline", "evaluate", "read_config_file", "read_run",
           "resolve_config", "run_demo", "score", "train"]
