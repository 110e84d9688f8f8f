"""The Hugging Face hub: whether it can be reached, and the benchmark data for runs without ``--data-dir``.

Without a network, ``huggingface_hub`` retries each request for about a minute before it gives up;
:func:`hub_reachable` finds out once, in at most a few seconds, so that an offline machine fails fast (or
reads its local cache) instead.

Every source is read with ``datasets.load_dataset`` (cached by ``datasets``); each task
loader turns the rows into exactly what it makes of the local files:

* GLUE: ``nyu-mll/glue``, config = task name (``cola``, ``sst2``, ``mrpc``, ...); our ``dev``
  split is the hub's ``validation`` (MNLI: ``validation_matched``, ``validation_mismatched``).
* E2E: ``tuetschek/e2e_nlg`` at ``refs/convert/parquet`` (its main branch is a loading script);
  splits train, validation (our ``dev``) and test.
* Commonsense: LLM-Adapters' ``dataset/<name>/<split>.json`` at the commit our copies come from,
  through the ``json`` loader (``LLM_ADAPTERS_JSON``).
* Instruction following: ``yizhongw/self_instruct`` at ``refs/convert/parquet``, config ``p3``
  (T0 training data) and ``human_eval`` (the user-oriented evaluation set); the seed tasks as
  Self-Instruct's ``data/seed_tasks.jsonl`` at the commit our copies come from, through the ``json`` loader.
* IFEval: ``google/IFEval``, split ``train`` (the 541 prompts).
"""

from __future__ import annotations

import functools
import socket
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

PARQUET = "refs/convert/parquet"  # the hub's parquet export of a dataset that is a loading script upstream
GLUE = "nyu-mll/glue"
LLM_ADAPTERS_JSON = ("https://raw.githubusercontent.com/AGI-Edgerunners/LLM-Adapters/"
                     "816657208af4db747803f87ba40a4c71383fed7a/dataset/{name}/{split}.json")
SELF_INSTRUCT = "yizhongw/self_instruct"
SEED_TASKS_JSONL = ("https://raw.githubusercontent.com/yizhongw/self-instruct/"
                    "0b26ccaa415992100fa32df62d41b994cf928e23/data/seed_tasks.jsonl")
_FIX = "pass --data-dir with the layout of shared/data (see the README), or --train-file/--eval-file"
PROBE_TIMEOUT_SECONDS = 3.0


def offline_mode() -> bool:
    """Whether the user switched the hub off (``HF_HUB_OFFLINE=1``): only local caches are read."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@functools.cache
def hub_reachable() -> bool:
    """Whether the hub answers a TCP connection within ``PROBE_TIMEOUT_SECONDS`` (asked once per process).

    ``False`` in offline mode. With an HTTP(S) proxy configured the hub is assumed reachable (the proxy, not
    this machine, resolves it).
    """
    if offline_mode():
        return False
    if urllib.request.getproxies().get("https"):
        return True
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=PROBE_TIMEOUT_SECONDS).close()
    except OSError:
        return False
    return True


def unreachable_hub_message() -> str:
    from huggingface_hub import constants

    return f"the Hugging Face hub ({constants.ENDPOINT}) cannot be reached from this machine"


@dataclass(frozen=True)
class HubSource:
    """Where ``datasets.load_dataset`` finds a data set: a hub dataset (config, revision), or ``"json"`` and a URL."""

    path: str
    name: str | None = None
    revision: str | None = None
    data_files: str | None = None

    def __str__(self) -> str:
        where = self.data_files or self.path + (f"@{self.revision}" if self.revision else "")
        return where + (f" (config {self.name!r})" if self.name else "")


E2E = HubSource("tuetschek/e2e_nlg", revision=PARQUET)
T0_TRAIN = HubSource(SELF_INSTRUCT, "p3", PARQUET)
INSTRUCT_EVAL = {"user_oriented": HubSource(SELF_INSTRUCT, "human_eval", PARQUET),
                 "seed": HubSource("json", data_files=SEED_TASKS_JSONL)}
IFEVAL = HubSource("google/IFEval")


def hub_split(split: str) -> str:
    """The hub's name of one of our splits: ``dev`` is ``validation`` (``dev_matched``: ``validation_matched``)."""
    return split.replace("dev", "validation")


def hub_records(source: HubSource, split: str) -> list[dict[str, Any]]:
    """The rows of ``split`` of ``source`` as dicts; ``ConnectionError`` saying what to do when it cannot be loaded."""
    import datasets

    if not offline_mode() and not hub_reachable():
        raise ConnectionError(f"could not load {source}, split {split!r}: {unreachable_hub_message()} (if a copy is in "
                              f"the datasets cache, set HF_HUB_OFFLINE=1 to read it): {_FIX}")
    try:
        rows = datasets.load_dataset(source.path, source.name, revision=source.revision,
                                     data_files=source.data_files, split=split)
    except (OSError, ValueError, ImportError) as error:  # no network, unknown dataset or split, no HTTP support
        raise ConnectionError(f"could not load {source}, split {split!r}, from the Hugging Face hub "
                              f"({type(error).__name__}: {error}): {_FIX}") from error
    return list(rows)
