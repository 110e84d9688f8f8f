"""The OpenAI-compatible judge client against a fake server: a good answer, a timeout, 429 then success, a refused
request, the resumable cache, and clear errors for a missing endpoint, a bad URL or a missing key."""

from __future__ import annotations

import pytest

from interop.fake_chat_server import fake_chat_server
from kasa_peft.pipelines.judge_client import ChatEndpoint, JudgeError, JudgmentCache, endpoint_from_options

MESSAGES = [{"role": "system", "content": "judge"}, {"role": "user", "content": "rate this"}]


def endpoint(url: str, sleeps: list | None = None, **options) -> ChatEndpoint:
    return ChatEndpoint(url, "judge-model", None, sleep=(sleeps if sleeps is not None else []).append, **options)


def test_good_answer_and_the_request_sent():
    with fake_chat_server(lambda body, n: {"text": "Fine. Rating: [[8]]"}) as server:
        text = endpoint(server.url).complete(MESSAGES, temperature=0.0, max_tokens=2048)
    assert text == "Fine. Rating: [[8]]"
    assert server.requests == [{"model": "judge-model", "messages": MESSAGES, "temperature": 0.0,
                                "max_tokens": 2048}]


def test_429_waits_for_retry_after_then_succeeds():
    def reply(body, n):
        return {"status": 429, "headers": {"Retry-After": "3"}} if n == 1 else {"text": "[[5]]"}
    sleeps: list[float] = []
    with fake_chat_server(reply) as server:
        text = endpoint(server.url, sleeps, backoff=0.5).complete(MESSAGES, 0.0, 16)
    assert text == "[[5]]" and len(server.requests) == 2
    assert sleeps == [3.0]  # the server's Retry-After, longer than the 0.5 s backoff


def test_timeout_is_retried_with_backoff():
    with fake_chat_server(lambda body, n: {"text": "[[6]]", "delay": 1.0 if n == 1 else 0}) as server:
        sleeps: list[float] = []
        text = endpoint(server.url, sleeps, timeout=0.2, backoff=0.25).complete(MESSAGES, 0.0, 16)
    assert text == "[[6]]" and len(server.requests) == 2 and sleeps == [0.25]


def test_giving_up_after_the_retries_says_how_to_resume():
    with fake_chat_server(lambda body, n: {"status": 503, "text": "overloaded"}) as server:
        sleeps: list[float] = []
        with pytest.raises(JudgeError, match="no answer after 3 attempts.*HTTP 503.*resumes"):
            endpoint(server.url, sleeps, retries=2, backoff=1.0).complete(MESSAGES, 0.0, 16)
    assert len(server.requests) == 3 and sleeps == [1.0, 2.0]


def test_a_refused_request_is_not_retried():
    with fake_chat_server(lambda body, n: {"status": 401, "text": "invalid api key"}) as server:
        with pytest.raises(JudgeError, match="HTTP 401: invalid api key"):
            endpoint(server.url).complete(MESSAGES, 0.0, 16)
    assert len(server.requests) == 1


def test_cache_answers_a_repeated_request_without_calling_and_survives_a_restart(tmp_path):
    path = tmp_path / "judgments.jsonl"
    with fake_chat_server(lambda body, n: {"text": f"[[{n}]]"}) as server:
        judge = endpoint(server.url)
        first = JudgmentCache(path).judge(judge, MESSAGES, 0.0, 16, question_id=1)
        again = JudgmentCache(path).judge(judge, MESSAGES, 0.0, 16, question_id=1)  # a new process, same file
        other = JudgmentCache(path).judge(judge, MESSAGES[:1], 0.0, 16)
    assert (first, again, other) == ("[[1]]", "[[1]]", "[[2]]")
    assert len(server.requests) == 2


def test_a_line_cut_by_a_killed_run_is_asked_again(tmp_path):
    path = tmp_path / "judgments.jsonl"
    path.write_text('{"key": "abc", "judgment": "[[1')
    assert JudgmentCache(path).entries == {}


@pytest.mark.parametrize(("url", "model", "env", "message"), [
    (None, "m", {}, "no judge endpoint: pass --judge-url"),
    ("localhost:8080/v1", "m", {}, "is not an http\\(s\\) URL"),
    ("http://localhost:8080/v1", None, {}, "no judge model: pass --judge-model"),
    ("https://api.openai.com/v1", "gpt-4o", {}, "no API key for https://api.openai.com/v1: set the environment "
                                                 "variable JUDGE_TEST_KEY"),
])
def test_clear_errors(monkeypatch, url, model, env, message):
    monkeypatch.delenv("JUDGE_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match=message):
        endpoint_from_options(url, model, "JUDGE_TEST_KEY", 10.0)


def test_key_comes_from_the_named_variable_and_localhost_needs_none(monkeypatch):
    monkeypatch.setenv("JUDGE_TEST_KEY", "sk-test")
    assert endpoint_from_options("https://api.openai.com/v1", "gpt-4o", "JUDGE_TEST_KEY", 10.0).api_key == "sk-test"
    monkeypatch.delenv("JUDGE_TEST_KEY")
    assert endpoint_from_options("http://127.0.0.1:8080/v1", "local", "JUDGE_TEST_KEY", 10.0).api_key is None


def test_the_key_is_sent_as_a_bearer_token():
    with fake_chat_server(lambda body, n: {"text": "ok"}) as server:
        ChatEndpoint(server.url, "m", "sk-test").complete(MESSAGES, 0.0, 16)
        ChatEndpoint(server.url, "m", None).complete(MESSAGES, 0.0, 16)
    assert server.authorizations == ["Bearer sk-test", None]
