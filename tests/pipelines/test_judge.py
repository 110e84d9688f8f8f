"""`kasa-peft judge` end to end against a fake OpenAI-compatible server: two-turn answers from a tiny model,
single-answer grading with unparseable verdicts counted, pairwise in both orders, resuming without repeated
calls, clear CLI errors; and one run against llama-cpp-python's real server where it is installed."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from interop.fake_chat_server import fake_chat_server
from kasa_peft.pipelines.judge_client import ChatEndpoint, JudgeError
from kasa_peft.pipelines.generation import Decoding
from kasa_peft.pipelines.judge import JudgeRun, run_judge
from kasa_peft.tasks.mt_bench import parse_rating
from tiny_models import tiny_llama

from .helpers import save_model

CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")
QUESTIONS = [{"question_id": 81, "category": "writing", "turns": ["Write a poem.", "Now shorter."]},
             {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "And 3+3?"]}]
PROMPTS = {  # the real templates' fields, shortened
    "single-v1": "Q: {question}\nA: {answer}",
    "single-math-v1": "Q: {question}\nREF: {ref_answer_1}\nA: {answer}",
    "single-v1-multi-turn": "Q1: {question_1}\nA1: {answer_1}\nQ2: {question_2}\nA2: {answer_2}",
    "single-math-v1-multi-turn": "Q1: {question_1}\nREF1: {ref_answer_1}\nA1: {answer_1}\nQ2: {question_2}\n"
                                 "REF2: {ref_answer_2}\nA2: {answer_2}",
    "pair-v2": "Q: {question}\n[A] {answer_a}\n[B] {answer_b}",
    "pair-math-v1": "Q: {question}\nREF: {ref_answer_1}\n[A] {answer_a}\n[B] {answer_b}",
    "pair-v2-multi-turn": "Q1: {question_1}\n[A] {answer_a_1} / {answer_a_2}\nQ2: {question_2}\n"
                          "[B] {answer_b_1} / {answer_b_2}",
    "pair-math-v1-multi-turn": "REF: {ref_answer_1} / {ref_answer_2}\n[A] {answer_a_1} / {answer_a_2}\n"
                               "[B] {answer_b_1} / {answer_b_2}",
}
DECODING = Decoding(batch_size=2, max_new_tokens=3, num_beams=1, length_penalty=1.0, no_repeat_ngram_size=0,
                    use_chat_template=None)


@pytest.fixture
def mt_bench_dir(tmp_path) -> Path:
    folder = tmp_path / "data" / "instruct" / "mt_bench"
    folder.mkdir(parents=True)
    lines = lambda rows: "".join(json.dumps(r) + "\n" for r in rows)  # noqa: E731
    (folder / "question.jsonl").write_text(lines(QUESTIONS))
    (folder / "reference_answer_gpt-4.jsonl").write_text(lines([
        {"question_id": 111, "choices": [{"index": 0, "turns": ["4", "6"]}]}]))
    (folder / "judge_prompts.jsonl").write_text(lines(
        [{"name": name, "type": "x", "system_prompt": f"system of {name}", "prompt_template": template}
         for name, template in PROMPTS.items()]))
    return tmp_path / "data"


@pytest.fixture(scope="module")
def chat_llama_dir(tmp_path_factory) -> str:
    from transformers import AutoTokenizer

    directory = save_model(tmp_path_factory.mktemp("chat_llama"), tiny_llama())
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def judge_run(model: str, data: Path, out: Path, url: str, mode="single", adapters=None) -> JudgeRun:
    endpoint = ChatEndpoint(url, "judge", None, timeout=5.0, retries=0)
    return JudgeRun(model, adapters or {}, str(data), out, endpoint, mode, DECODING)


def user_text(body) -> str:
    return body["messages"][1]["content"]


def test_single_grading_generates_both_turns_and_counts_unparseable(chat_llama_dir, mt_bench_dir, tmp_path):
    out = tmp_path / "out"

    def reply(body, n):  # turn-1 prompts are rated, turn-2 verdicts carry no [[rating]]
        return {"text": "Rating: [[7]]" if "Q2:" not in user_text(body) else "a fine answer, I'd say"}
    with fake_chat_server(reply) as server:
        summary = run_judge(judge_run(chat_llama_dir, mt_bench_dir, out, server.url))
    result = summary["results"]["base"]
    assert result["judgments"] == 4 and result["unparseable"] == 2
    assert result["score"] == 7.0 and result["turn_2"] is None
    answers = [json.loads(line) for line in (out / "answers" / "base.jsonl").read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [81, 111] and all(len(a["turns"]) == 2 for a in answers)
    bodies = {(b["messages"][0]["content"], user_text(b)) for b in server.requests}
    math_turn_2 = next(text for system, text in bodies if system == "system of single-math-v1-multi-turn")
    assert "REF1: 4" in math_turn_2 and "REF2: 6" in math_turn_2 and f"A1: {answers[1]['turns'][0]}" in math_turn_2
    assert {system for system, _ in bodies} == {"system of single-v1", "system of single-math-v1",
                                                "system of single-v1-multi-turn",
                                                "system of single-math-v1-multi-turn"}
    assert all(b["temperature"] == 0.0 and b["max_tokens"] == 2048 for b in server.requests)
    assert json.loads((out / "judge_results.json").read_text())["results"] == summary["results"]


def test_an_interrupted_run_resumes_without_asking_twice(chat_llama_dir, mt_bench_dir, tmp_path):
    out = tmp_path / "out"
    with fake_chat_server(lambda body, n: {"status": 401, "text": "stop"} if n == 3 else {"text": "[[6]]"}) as server:
        with pytest.raises(JudgeError, match="HTTP 401"):
            run_judge(judge_run(chat_llama_dir, mt_bench_dir, out, server.url))
    assert len(server.requests) == 3  # two judgments kept, the third refused
    with fake_chat_server(lambda body, n: {"text": "[[6]]"}) as server:
        summary = run_judge(judge_run(chat_llama_dir, mt_bench_dir, out, server.url))
    assert len(server.requests) == 2 and summary["results"]["base"]["score"] == 6.0
    with fake_chat_server(lambda body, n: {"text": "[[1]]"}) as server:
        again = run_judge(judge_run(chat_llama_dir, mt_bench_dir, out, server.url))
    assert server.requests == [] and again["results"] == summary["results"]


def write_answers(out: Path, name: str, adapter: str, text: str) -> None:
    (out / "answers").mkdir(parents=True, exist_ok=True)
    (out / "answers" / f"{name}.jsonl").write_text("".join(
        json.dumps({"question_id": q["question_id"], "adapter": adapter, "turns": [f"{text} 1", f"{text} 2"]}) + "\n"
        for q in QUESTIONS))


@pytest.mark.parametrize(("judge_says", "expected"), [
    ("the better one", {"win": 4, "loss": 0, "tie": 0, "unparseable": 0, "win_rate": 1.0}),
    ("always A", {"win": 0, "loss": 0, "tie": 4, "unparseable": 0, "win_rate_adjusted": 0.5}),  # position bias
    ("nothing", {"win": 0, "loss": 0, "tie": 0, "unparseable": 4, "win_rate": None}),
])
def test_pairwise_judges_both_orders(mt_bench_dir, tmp_path, judge_says, expected):
    out = tmp_path / "out"
    write_answers(out, "kasa", "/runs/kasa", "good")
    write_answers(out, "lora", "/runs/lora", "poor")

    def reply(body, n):
        a_is_good = re.search(r"\[A\] good", user_text(body)) is not None
        verdict = {"the better one": "[[A]]" if a_is_good else "[[B]]", "always A": "[[A]]", "nothing": "hmm"}
        return {"text": verdict[judge_says]}
    with fake_chat_server(reply) as server:
        summary = run_judge(judge_run("unused-model", mt_bench_dir, out, server.url, "pairwise",
                                      {"kasa": "/runs/kasa", "lora": "/runs/lora"}))
    result = summary["results"]["kasa vs lora"]
    assert result["games"] == 4 and {k: result[k] for k in expected} == expected
    assert len(server.requests) == 8  # 2 questions x 2 turns x 2 orders


def test_pairwise_generates_for_a_kasa_adapter_and_a_peft_lora_run(chat_llama_dir, mt_bench_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from kasa_peft.training import MethodSpec, prepare_model

    runs = {}
    for method in ("kasa", "lora"):
        spec = MethodSpec(method=method, r=2, alpha=4.0, target_modules=("q_proj", "v_proj"))
        prepare_model(AutoModelForCausalLM.from_pretrained(chat_llama_dir), spec).save(tmp_path / method)
        runs[method] = str(tmp_path / method)
    out = tmp_path / "out"
    with fake_chat_server(lambda body, n: {"text": "[[A]]"}) as server:
        summary = run_judge(judge_run(chat_llama_dir, mt_bench_dir, out, server.url, "pairwise", runs))
    assert summary["results"]["kasa vs lora"]["tie"] == 4  # "always A": every game is a tie
    assert 4 <= len(server.requests) <= 8  # where both answers coincide, the swapped order is the same request
    for method in runs:
        answers = [json.loads(line) for line in (out / "answers" / f"{method}.jsonl").read_text().splitlines()]
        assert [a["adapter"] for a in answers] == [runs[method]] * 2 and all(len(a["turns"]) == 2 for a in answers)


def test_cli_errors_before_loading_anything(cli, mt_bench_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    base = ["judge", "--model", "no/such-model", "--output-dir", tmp_path / "out", "--data-dir", mt_bench_dir]
    for extra, message in (([], "no judge endpoint: pass --judge-url"),
                           (["--judge-url", "api.openai.com", "--judge-model", "gpt-4o"], "not an http(s) URL"),
                           (["--judge-url", "https://api.openai.com/v1", "--judge-model", "gpt-4o"],
                            "set the environment variable OPENAI_API_KEY")):
        result = cli(*base, *extra)
        assert result.code == 1 and result.err.startswith("kasa-peft: error: ") and message in result.err, result.err
        assert result.err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_an_unreachable_judge_fails_before_any_answer_is_generated(cli, chat_llama_dir, mt_bench_dir, tmp_path):
    """Answering the 80 questions takes hours on a CPU: a judge that cannot be reached ends the command at once,
    with one error line."""
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    result = cli("judge", "--model", chat_llama_dir, "--data-dir", mt_bench_dir, "--output-dir", out,
                 "--judge-url", f"http://127.0.0.1:{port}/v1", "--judge-model", "judge", "--max-new-tokens", 3)
    assert result.code == 1 and "Traceback" not in result.err and result.err.count("kasa-peft: error:") == 1
    assert f"http://127.0.0.1:{port}/v1 cannot be reached" in result.err
    assert not (out / "answers").exists()


def test_run_errors(mt_bench_dir, tmp_path):
    with pytest.raises(ValueError, match="'base' is taken"):
        run_judge(judge_run("m", mt_bench_dir, tmp_path, "http://localhost:1/v1", adapters={"base": "/x"}))
    with pytest.raises(ValueError, match="pairwise judging compares two models, got 3"):
        run_judge(judge_run("m", mt_bench_dir, tmp_path, "http://localhost:1/v1", "pairwise",
                            {"a": "/a", "b": "/b", "c": "/c"}))
    assert not (tmp_path / "answers").exists()


@contextmanager
def llama_cpp_server(gguf: Path, port: int) -> Iterator[str]:
    """``python -m llama_cpp.server`` serving ``gguf`` on localhost; yields the API base once it answers."""
    import requests

    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                               "--port", str(port), "--n_ctx", "4096", "--model_alias", "smollm2"],
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(240):
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"llama_cpp.server exited: {log.read().decode()[-2000:]}")
            try:
                if requests.get(f"{url}/models", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.mark.integration
def test_against_llama_cpp_server(tmp_path, mt_bench_dir, chat_llama_dir):
    """The protocol against a real OpenAI-compatible server: llama-cpp-python serving the SmolLM2 GGUF (a 135M
    judge: the verdicts mean nothing, the requests, parsing and counting are what is checked)."""
    pytest.importorskip("llama_cpp.server")
    from kasa_peft.models import ModelLoadError, resolve_model_path

    try:
        source = resolve_model_path("smollm2")
        gguf = Path(source.path) / source.gguf_file
    except ModelLoadError as error:
        pytest.skip(str(error))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with llama_cpp_server(gguf, port) as url:
        run = judge_run(chat_llama_dir, mt_bench_dir, tmp_path / "out", url)
        summary = run_judge(JudgeRun(run.model, {}, run.data_dir, run.output_dir,
                                     ChatEndpoint(url, "smollm2", None, timeout=300.0, retries=1), "single",
                                     DECODING))
    result = summary["results"]["base"]
    cached = [json.loads(line) for line in (tmp_path / "out" / "judgments.jsonl").read_text().splitlines()]
    assert result["judgments"] == 4 == len(cached) and all(isinstance(c["judgment"], str) for c in cached)
    parsed = [parse_rating(c["judgment"]) for c in cached]
    assert result["unparseable"] == parsed.count(None)
