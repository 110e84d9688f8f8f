"""IFEval scoring through lm-evaluation-harness's checks: hand-made responses whose verdict per instruction kind is
known, strict against loose, the two aggregation levels, and the offline ``punkt_tab``."""

from __future__ import annotations

import pytest

pytest.importorskip("lm_eval")
pytest.importorskip("punkt")

from kasa_peft.tasks.ifeval import IFEvalPrompt, install_punkt_tab, load_ifeval, score_ifeval  # noqa: E402

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("punctuation:no_comma", {}, "Hello world", "Hello, world"),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 5}, "one two three",
     "one two three four five six"),
    # "Dr." is one of Punkt's English abbreviations: three sentences, not four (a naive split on ". " says four)
    ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3},
     "The cat sat. Dr. Smith came in. It rained.", "Only one sentence here."),
    ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 4},
     "The cat sat. Dr. Smith came in. It rained.", "One. Two. Three. Four."),
    ("change_case:english_lowercase", {}, "all lower case", "Not all lower case"),
    ("change_case:capital_word_frequency", {"capital_relation": "at least", "capital_frequency": 2},
     "THIS is GREAT", "This is great"),
    ("detectable_format:json_format", {}, '{"answer": 1}', "answer: 1"),
    ("detectable_format:title", {}, "<<My Title>>\nSome text", "My Title\nSome text"),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "Dear [name], see [address].",
     "Dear [name], see you."),
    ("keywords:existence", {"keywords": ["banana"]}, "I like a banana.", "I like apples."),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Done. Any other questions?", "Done."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* one\n* two", "* one"),
]


def prompt(key: int, *instructions: tuple[str, dict]) -> IFEvalPrompt:
    return IFEvalPrompt(key, "a prompt", tuple(i for i, _ in instructions), tuple(k for _, k in instructions))


@pytest.mark.parametrize(("instruction", "kwargs", "follows", "breaks"), CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_each_instruction_kind_passes_and_fails_as_written(instruction, kwargs, follows, breaks):
    metrics, rows = score_ifeval([prompt(0, (instruction, kwargs)), prompt(1, (instruction, kwargs))],
                                 [follows, breaks])
    assert [row["inst_level_strict_acc"] for row in rows] == [[True], [False]]
    assert metrics["prompt_level_strict_acc"] == 0.5
    assert metrics["by_instruction"][instruction] == {"n": 2, "strict": 0.5, "loose": 0.5}


def test_loose_forgives_a_preamble_line_strict_does_not():
    metrics, _ = score_ifeval([prompt(0, ("change_case:english_lowercase", {}))], ["Sure:\nall lower case"])
    assert metrics["prompt_level_strict_acc"] == 0.0
    assert metrics["prompt_level_loose_acc"] == 1.0


def test_prompt_level_needs_every_instruction_instruction_level_counts_each():
    prompts = [prompt(0, ("punctuation:no_comma", {}), ("change_case:english_lowercase", {})),
               prompt(1, ("punctuation:no_comma", {}))]
    metrics, _ = score_ifeval(prompts, ["hello, world", "hello"])  # 1 of 2, then 1 of 1
    assert metrics["prompt_level_strict_acc"] == 0.5
    assert metrics["inst_level_strict_acc"] == pytest.approx(2 / 3)


def test_an_empty_response_follows_nothing():
    metrics, _ = score_ifeval([prompt(0, ("punctuation:no_comma", {}))], [""])  # no comma, yet not followed
    assert metrics["inst_level_loose_acc"] == 0.0


def test_response_count_must_match():
    with pytest.raises(ValueError, match="2 responses for 1 IFEval prompts"):
        score_ifeval([prompt(0, ("punctuation:no_comma", {}))], ["a", "b"])


def test_offline_punkt_tab_holds_the_packaged_english_parameters(tmp_path, monkeypatch):
    import nltk
    import punkt
    from nltk.tokenize.punkt import PunktTokenizer

    monkeypatch.setattr(nltk.data, "path", [])  # no installed punkt_tab: the packaged one must be written
    monkeypatch.setenv("KASA_PEFT_NLTK_DATA", str(tmp_path))
    install_punkt_tab()
    assert (tmp_path / "tokenizers" / "punkt_tab" / "english" / "ortho_context.tab").is_file()
    loaded, packaged = PunktTokenizer("english")._params, punkt.load_model("english")
    assert loaded.abbrev_types == set(packaged.abbrev_types) and len(loaded.abbrev_types) == 156
    assert loaded.collocations == set(packaged.collocations)
    assert loaded.sent_starters == set(packaged.sent_starters)
    assert dict(loaded.ortho_context) == dict(packaged.ortho_context)


def test_bad_record_is_named(tmp_path):
    (tmp_path / "instruct" / "ifeval").mkdir(parents=True)
    (tmp_path / "instruct" / "ifeval" / "input_data.jsonl").write_text(
        '{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}\n')
    with pytest.raises(ValueError, match="record 1: 1 instructions but 0 kwargs"):
        load_ifeval(tmp_path)


@pytest.mark.integration
def test_the_shared_file_loads_and_scores(data_dir):
    prompts = load_ifeval(data_dir)
    assert len(prompts) == 541
    metrics, rows = score_ifeval(prompts, [""] * len(prompts))
    assert metrics["prompt_level_loose_acc"] == 0.0 and len(rows) == 541
    assert sum(v["n"] for v in metrics["by_instruction"].values()) == 834  # IFEval's instruction count
