"""A small client for any OpenAI-compatible chat endpoint (``POST {url}/chat/completions``), with a resumable cache.

Hosted APIs (OpenAI, Together, OpenRouter, ...) and local servers (llama.cpp's ``llama-server``,
``python -m llama_cpp.server``, vLLM, Ollama) all speak this protocol. Each judgment is appended to a JSONL cache,
keyed by a hash of the request (model, messages, temperature, max tokens), as soon as it arrives: a run that
stops (an error, Ctrl-C) resumes with the judgments already made and never asks for them again.

Failures: a timeout, a connection error or an HTTP 5xx is retried with exponential backoff; HTTP 429 (rate
limit) waits for the server's ``Retry-After`` when it sends one. Other 4xx answers (a wrong key, an unknown
model) are not retried: they raise at once with the server's message.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

_RETRIED_STATUS = {429, 500, 502, 503, 504}
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


class JudgeError(OSError):
    """The endpoint could not give a judgment (unreachable, after the retries, or a request it refuses)."""


@dataclass
class ChatEndpoint:
    """``url`` is the API base (``https://api.openai.com/v1``, ``http://localhost:8080/v1``)."""

    url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 5
    backoff: float = 2.0  # seconds before the first retry; doubled after each
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def __post_init__(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"--judge-url {self.url!r} is not an http(s) URL: give the API base, e.g. "
                             "https://api.openai.com/v1 or http://localhost:8080/v1")
        if not self.model:
            raise ValueError("no judge model: pass --judge-model (e.g. gpt-4o, or the name the local server serves)")

    def check_reachable(self) -> None:
        """One ``GET {url}/models``, before hours of answer generation: an endpoint that cannot be reached or that
        refuses the key fails at once. Any other answer passes (not every OpenAI-compatible server lists models)."""
        import requests

        try:
            response = requests.get(self.url.rstrip("/") + "/models", headers=self._headers(),
                                    timeout=min(self.timeout, 10.0))
        except (requests.Timeout, requests.ConnectionError) as error:
            raise JudgeError(f"{self.url} cannot be reached ({type(error).__name__}: {error}); check --judge-url "
                             "and that the server is running") from error
        if response.status_code in (401, 403):
            raise JudgeError(f"{self.url} refused the API key (HTTP {response.status_code}: {response.text[:200]})")

    def complete(self, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
        """The assistant message's text for ``messages``."""
        import requests

        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": temperature,
                                "max_tokens": max_tokens}
        headers = self._headers()
        wait, problem = self.backoff, ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.sleep(wait)
                wait *= 2
            try:
                response = requests.post(self.url.rstrip("/") + "/chat/completions", json=body, headers=headers,
                                         timeout=self.timeout)
            except (requests.Timeout, requests.ConnectionError) as error:
                problem = f"{type(error).__name__}: {error}"
                continue
            if response.status_code in _RETRIED_STATUS:
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
                wait = max(wait, _retry_after(response))
                continue
            if response.status_code != 200:
                raise JudgeError(f"{self.url} answered HTTP {response.status_code}: {response.text[:300]} "
                                 "(check --judge-url, --judge-model and the API key)")
            return _message_text(response, self.url)
        raise JudgeError(f"{self.url}: no answer after {self.retries + 1} attempts (last: {problem}); the cache "
                         "keeps the judgments made so far, so rerunning the same command resumes")

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def endpoint_from_options(url: str | None, model: str | None, key_env: str, timeout: float) -> ChatEndpoint:
    """The endpoint the command line names; the key comes from the environment variable ``key_env``, and only a
    local endpoint (localhost) may go without one."""
    import os

    if not url:
        raise ValueError("no judge endpoint: pass --judge-url (e.g. https://api.openai.com/v1, or "
                         "http://localhost:8080/v1 for a local llama.cpp server) and --judge-model")
    endpoint = ChatEndpoint(url, model or "", os.environ.get(key_env) or None, timeout)
    if endpoint.api_key is None and urlparse(url).hostname not in _LOCAL_HOSTS:
        raise ValueError(f"no API key for {url}: set the environment variable {key_env} (or name another one "
                         "with --judge-key-env)")
    return endpoint


def _retry_after(response) -> float:
    try:
        return float(response.headers.get("Retry-After", 0))
    except ValueError:
        return 0.0


def _message_text(response, url: str) -> str:
    try:
        return response.json()["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise JudgeError(f"{url} did not answer in the OpenAI chat format ({type(error).__name__}: "
                         f"{response.text[:200]})") from error


class JudgmentCache:
    """Judgments by request hash, in a JSONL file that grows one line per judgment (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short when a run was killed: that judgment is asked again
                    continue
                self.entries[record["key"]] = record["judgment"]

    @staticmethod
    def key(model: str, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
        request = json.dumps([model, messages, temperature, max_tokens], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(request.encode("utf-8")).hexdigest()

    def judge(self, endpoint: ChatEndpoint, messages: list[dict[str, str]], temperature: float, max_tokens: int,
              **context: Any) -> str:
        """The cached judgment of this request, or a new one from ``endpoint`` (appended to the file at once)."""
        key = self.key(endpoint.model, messages, temperature, max_tokens)
        if key not in self.entries:
            judgment = endpoint.complete(messages, temperature, max_tokens)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as file:
                file.write(json.dumps({"key": key, "judge_model": endpoint.model, **context,
                                       "judgment": judgment}, ensure_ascii=False) + "\n")
            self.entries[key] = judgment
        return self.entries[key]
