import math
import shutil

import pytest

from kasa_peft.tasks import e2e
from kasa_peft.tasks.e2e import (
    e2e_metrics,
    format_mr,
    format_target,
    group_references,
    load_e2e,
    bleu_of_resampled,
    mteval_scores,
    mteval_tokenize,
    read_predictions,
    score_e2e_files,
)

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer and METEOR need Java")
NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2  # NIST's length-penalty constant: ratio 2/3 scores 0.5
ROUGE_BETA = 1.2  # pycocoevalcap's ROUGE-L recall weight


def nist_penalty(ratio: float) -> float:
    return math.exp(-NIST_BETA * math.log(ratio) ** 2)


def rouge_f(precision: float, recall: float) -> float:
    return (1 + ROUGE_BETA**2) * precision * recall / (recall + ROUGE_BETA**2 * precision)


# --- data ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_real_splits_rows_and_distinct_mrs(data_dir):
    counts = {}
    for split in ("train", "dev", "test"):
        pairs = load_e2e(data_dir, split)
        mrs, references = group_references(pairs)
        counts[split] = (len(pairs), len(mrs), sum(map(len, references)))
    assert counts == {"train": (42061, 4862, 42061), "dev": (4672, 547, 4672), "test": (4693, 630, 4693)}
    assert load_e2e(data_dir, "test")[0] == ("name[Blue Spice], eatType[coffee shop], area[city centre]",
                                              "A coffee shop in the city centre area called Blue Spice.")


def test_group_references_keeps_first_appearance_order():
    pairs = [("b", "1"), ("a", "2"), ("b", "3"), ("c", "4"), ("a", "5")]
    assert group_references(pairs) == (["b", "a", "c"], [["1", "3"], ["2", "5"], ["4"]])


def test_prompt_and_target_format():
    assert format_mr("name[X], eatType[pub]") + format_target("X is a pub.") == "name[X], eatType[pub] || X is a pub."


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="e2e/test.csv not found"):
        load_e2e(tmp_path, "test")
    with pytest.raises(ValueError, match="'valid'.*train, dev, test"):
        load_e2e(tmp_path, "valid")


def test_read_predictions_strips_lines_and_keeps_empty_ones(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("  a pub. \n\nX\n", encoding="utf-8")
    assert read_predictions(path) == ["a pub.", "", "X"]


def test_non_utf8_files_are_named(tmp_path):
    (tmp_path / "out.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match=r"out\.txt is not UTF-8 text \(byte 0xe9 at byte 3\)"):
        read_predictions(tmp_path / "out.txt")
    (tmp_path / "refs.csv").write_bytes(b"mr,ref\nname[X],caf\xe9\n")
    with pytest.raises(ValueError, match=r"refs\.csv is not UTF-8 text"):
        e2e.read_e2e_csv(tmp_path / "refs.csv")


def test_score_files_requires_one_line_per_distinct_mr(tmp_path):
    refs = tmp_path / "refs.csv"
    refs.write_text("mr,ref\nm1,a\nm1,b\nm2,c\n", encoding="utf-8")
    predictions = tmp_path / "out.txt"
    predictions.write_text("a\nc\nextra\n", encoding="utf-8")
    with pytest.raises(ValueError, match="3 lines but .*refs.csv has 2 distinct MRs"):
        score_e2e_files(predictions, refs)


# --- mteval tokenization, BLEU, NIST (pure Python) -----------------------------------------


def test_mteval_tokenization():
    # ASCII-only lowercasing; punctuation split off, except "." and "," between digits and "-" after one.
    assert mteval_tokenize("The ÉCOLE, costs £20-25. Price 2,50") == [
        "the", "École", ",", "costs", "£20", "-", "25", ".", "price", "2,50"]


def test_bleu_of_the_classic_example():
    hyp = "the cat the cat on the mat"
    refs = ["the cat is on the mat", "there is a cat on the mat"]
    # clipped n-gram precisions 5/7, 4/6, 2/5, 1/4; the closest reference length is 7, so no brevity penalty
    expected = (5 / 7 * 4 / 6 * 2 / 5 * 1 / 4) ** (1 / 4)
    assert mteval_scores([hyp], [refs])["BLEU"] == pytest.approx(expected)


def test_bleu_brevity_penalty_and_orders_without_candidates():
    # 1- and 2-gram precision 1; no 3/4-grams in the candidate, which mteval counts as precision 1
    assert mteval_scores(["the cat"], [["the cat sat on the mat"]])["BLEU"] == pytest.approx(math.exp(1 - 6 / 2))


def test_bleu_smooths_orders_without_a_match():
    # precisions 2/3, 1/2, then 0/1 trigrams smoothed to 1/(2*1); no 4-grams in the candidate (precision 1)
    expected = (2 / 3 * 1 / 2 * 1 / 2) ** (1 / 4)
    assert mteval_scores(["a b c"], [["a b d"]])["BLEU"] == pytest.approx(expected)


def test_bleu_takes_the_shorter_of_two_equally_close_references():
    # candidate of 5 words, references of 4 and 6: the 4-word one counts, so no brevity penalty
    scores = mteval_scores(["a b c d e"], [["a b c d", "a b c d e f"]])
    assert scores["BLEU"] == pytest.approx(1.0)


def test_perfect_predictions_score_bleu_one_ignoring_ascii_case():
    assert mteval_scores(["THE Vaults is a pub."], [["x", "the vaults is a pub."]])["BLEU"] == pytest.approx(1.0)


def test_bleu_of_resampled_segments_is_the_corpus_bleu_of_those_segments():
    predictions = ["the cat sat on the mat", "a b c", "the dog ran", "x y"]
    references = [["the cat sat on a mat", "a cat sat"], ["a b d"], ["the dog ran away", "dogs run"], ["x y z"]]
    bleu = bleu_of_resampled(predictions, references)
    assert bleu(range(4)) == pytest.approx(mteval_scores(predictions, references)["BLEU"])
    indices = [2, 0, 0, 3]  # a bootstrap resample: repeats allowed, segment 1 left out
    assert bleu(indices) == pytest.approx(mteval_scores([predictions[i] for i in indices],
                                                        [references[i] for i in indices])["BLEU"])
    assert bleu(indices) != pytest.approx(bleu(range(4)))


def test_nist_of_a_two_segment_example():
    # reference words: the x2, cat, sat, dog (5); info(the) = log2(5/2), info(cat) = info(dog) = log2(5),
    # info(the cat) = info(the dog) = log2(2/1) = 1. Unigram gain over 4 candidate words, bigram 2 over 2.
    scores = mteval_scores(["the cat", "the dog"], [["the cat sat"], ["the dog"]])
    expected = (2 * math.log2(5 / 2) + 2 * math.log2(5)) / 4 + 2 / 2
    assert scores["NIST"] == pytest.approx(expected * nist_penalty(4 / 5))


def test_nist_averages_reference_length_over_the_mean_non_empty_reference_count():
    # mteval-v13a: average reference length = reference words / (non-empty references / segments).
    # 6 reference words, 3 references over 2 segments: 6 / 1.5 = 4 against 2 candidate words, ratio 1/2.
    # (Dividing by the largest reference count, 2, would give 3 and ratio 2/3.) Empty references are the
    # official scorer's padding and count for nothing. info(a) = log2(6/2), info(c) = log2(6/1).
    expected = nist_penalty(1 / 2) * (math.log2(3) + math.log2(6)) / 2
    for refs in ([["a b", "a b"], ["c d"]], [["a b", "a b"], ["c d", ""]], [["a b", "", "a b"], ["", "c d"]]):
        assert mteval_scores(["a", "c"], refs)["NIST"] == pytest.approx(expected)


@pytest.mark.integration
def test_bleu_matches_sacrebleu_13a_on_real_multi_reference_data(data_dir):
    sacrebleu = pytest.importorskip("sacrebleu")
    _, references = group_references(load_e2e(data_dir, "dev"))
    references = references[:200]
    hyps = [refs[-1] for refs in references]  # hold one reference out as the "system"
    refs = [refs[:-1] or refs for refs in references]
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(max(map(len, refs)))]
    expected = sacrebleu.corpus_bleu(hyps, streams, tokenize="13a", lowercase=True).score / 100
    assert mteval_scores(hyps, refs)["BLEU"] == pytest.approx(expected, rel=1e-9)
    assert mteval_scores([r[0] for r in references], references)["BLEU"] == pytest.approx(1.0)


@pytest.mark.integration
def test_nist_matches_nltk_on_real_single_reference_data(data_dir):
    nist_score = pytest.importorskip("nltk.translate.nist_score")
    _, references = group_references(load_e2e(data_dir, "dev"))
    pairs = [(refs[-1], refs[0]) for refs in references[:200] if len(refs) > 1]
    hyps, refs = [h for h, _ in pairs], [[r] for _, r in pairs]
    expected = nist_score.corpus_nist([[mteval_tokenize(r[0])] for r in refs], [mteval_tokenize(h) for h in hyps])
    assert mteval_scores(hyps, refs)["NIST"] == pytest.approx(expected, rel=1e-9)


def test_input_errors():
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        e2e_metrics(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="prediction 1 has no non-empty reference"):
        e2e_metrics(["a"], [["  "]])


# --- the full scorer (Java) ----------------------------------------------------------------


@needs_java
def test_full_scorer_on_a_hand_worked_corpus(tmp_path):
    """One run of the Java scorers (each costs seconds), on files, over four segments:
    'p q' vs 'p q r'; 's t' vs 's t'; a copy of a reference up to case; a copy up to case with 'é'."""
    (tmp_path / "refs.csv").write_text(
        'mr,ref\n"name[P], food[Q]",p q r\nname[S],s t\n'
        "name[V],The Vaults is a pub.\nname[V],A pub called The Vaults.\nname[N],Near Café Adriatic.\n",
        encoding="utf-8")
    (tmp_path / "out.txt").write_text("p q\ns t\nTHE VAULTS IS A PUB.\nnear Café Adriatic.\n", encoding="utf-8")
    scores = score_e2e_files(tmp_path / "out.txt", tmp_path / "refs.csv")

    # BLEU (mteval tokens keep "."): every candidate n-gram matches; 14 candidate words against
    # closest reference lengths 3 + 2 + 6 + 4 = 15.
    assert scores["BLEU"] == pytest.approx(math.exp(1 - 15 / 14))
    # ROUGE-L (PTB tokens: lowercased, "." dropped): LCS 2 gives P = 2/2, R = 2/3 for 'p q'; the rest are copies.
    assert scores["ROUGE_L"] == pytest.approx((rouge_f(1, 2 / 3) + 3) / 4)
    # CIDEr-D: no n-gram is shared between segments, so every idf is ln 4 and cancels in the cosines.
    # Each segment scores 10 * (mean over n = 1..4 of the cosine), averaged over its references:
    # 'p q': unigram 2/sqrt(2*3), bigram 1/sqrt(1*2), and a length penalty exp(-1/(2*6^2)) as pycocoevalcap
    # counts length in bigrams (1 vs 2); 's t': 1, 1, 0, 0; the Vaults copy: 1, 1, 1, 1 against itself and
    # 4/5, 2/4, 0, 0 against 'a pub called the vaults'; 'near café adriatic': 1, 1, 1, 0.
    cider = [10 * math.exp(-1 / 72) * (2 / math.sqrt(6) + 1 / math.sqrt(2)) / 4, 10 * 2 / 4,
             10 * (4 / 4 + (4 / 5 + 2 / 4) / 4) / 2, 10 * 3 / 4]
    assert scores["CIDEr"] == pytest.approx(sum(cider) / 4)
    assert 0 < scores["METEOR"] < 1
    # NIST: 21 reference words; unigram info log2(21/count): "the", "vaults", "a", "pub" occur twice, "." three
    # times. Non-zero higher-order info: "vaults is", "pub ." (log2(2/1) each) of 10 candidate bigrams, and
    # "the vaults is", "a pub ." of 6 trigrams. 14 candidate words against 21 / (5 references / 4 segments) = 16.8.
    unigram_info = 8 * math.log2(21) + 4 * math.log2(21 / 2) + 2 * math.log2(21 / 3)
    assert scores["NIST"] == pytest.approx((unigram_info / 14 + 2 / 10 + 2 / 6) * nist_penalty(14 / 16.8))


def test_without_java_coco_metrics_are_none_with_a_reason(monkeypatch):
    monkeypatch.setattr(e2e.shutil, "which", lambda name: None)
    scores = e2e_metrics(["a b"], [["a b"]])
    assert scores["BLEU"] == pytest.approx(1.0)
    for metric in ("METEOR", "ROUGE_L", "CIDEr"):
        assert scores[metric] is None
        assert "java" in scores[f"{metric}_unavailable_reason"]


@needs_java
def test_a_failing_meteor_jar_gives_none_with_a_reason(monkeypatch):
    import pycocoevalcap.meteor.meteor as meteor_module

    monkeypatch.setattr(meteor_module, "METEOR_JAR", "missing-meteor.jar")
    scores = e2e_metrics(["a b"], [["a b"]])
    assert scores["METEOR"] is None
    assert "meteor-1.5.jar failed" in scores["METEOR_unavailable_reason"]
    assert scores["ROUGE_L"] == pytest.approx(1.0)
