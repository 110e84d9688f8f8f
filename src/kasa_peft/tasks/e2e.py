"""E2E NLG Challenge data and the challenge's official metrics.

Data: ``<data_dir>/e2e/{train,dev,test}.csv`` with columns ``mr,ref`` (``test.csv`` is
the released ``testset_w_refs.csv``); each MR appears once per human reference. Without
a data directory: the hub's ``tuetschek/e2e_nlg`` (``meaning_representation``, ``human_reference``).

Metrics reproduce the official scorer, ``measure_scores.py`` of tuetschek/e2e-metrics:

* BLEU and NIST as its ``mteval-v13a-sig.pl`` computes them: mteval's default
  normalisation (ASCII lowercasing, 13a tokenization), corpus-level statistics over
  all references of each MR, closest reference length (shorter one on ties), mteval's
  BLEU smoothing of n-gram orders with no match, and NIST information weights from
  all references. The scorer pads every MR to the largest reference count with empty
  references; as in mteval, those are skipped for the brevity penalty, and NIST's
  average reference length is (all reference words) / (mean count of non-empty references
  per MR), mteval's ``$cum_ref_count / $cum_seg_count``.
* METEOR 1.5, ROUGE-L and CIDEr(-D) from pycocoevalcap, on text lowercased and
  tokenized by its Stanford PTBTokenizer (punctuation removed).

Predictions and references are whitespace-stripped first, as the scorer reads lines.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import string
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache

from ._common import PathLike, check_choice, data_path, read_csv, read_lines, require_columns
from .hub import E2E, hub_records, hub_split
from .metrics import check_lengths

E2E_SPLITS = ("train", "dev", "test")
PROMPT_SEPARATOR = " ||"
COCO_METRICS = ("METEOR", "ROUGE_L", "CIDEr")

_BLEU_ORDER = 4
_NIST_ORDER = 5
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
Scores = dict[str, float | str | None]


def read_e2e_csv(path: PathLike) -> list[tuple[str, str]]:
    """The ``(mr, ref)`` rows of an E2E CSV file (header ``mr,ref``)."""
    columns, rows = read_csv(path)
    require_columns(columns, ("mr", "ref"), path)
    return [(row["mr"], row["ref"]) for row in rows]


def load_e2e(data_dir: PathLike | None, split: str) -> list[tuple[str, str]]:
    """The ``(mr, ref)`` pairs of ``e2e/<split>.csv``, or of the hub's split without ``data_dir``;
    ``split`` is train, dev or test."""
    check_choice(split, E2E_SPLITS, "E2E split")
    if data_dir is None:
        return [(row["meaning_representation"], row["human_reference"]) for row in hub_records(E2E, hub_split(split))]
    return read_e2e_csv(data_path(data_dir, f"e2e/{split}.csv"))


def group_references(pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[list[str]]]:
    """Distinct MRs in order of first appearance, with each MR's references in file order."""
    grouped: dict[str, list[str]] = {}
    for mr, ref in pairs:
        grouped.setdefault(mr, []).append(ref)
    return list(grouped), list(grouped.values())


def format_mr(mr: str) -> str:
    """The causal-LM prompt for an MR: the MR followed by ``" ||"``.

    The model continues with ``format_target(ref)``, i.e. a space and the text;
    strip the generated continuation before scoring.
    """
    return mr + PROMPT_SEPARATOR


def format_target(ref: str) -> str:
    """The training continuation of ``format_mr(mr)``: a space, then the reference text."""
    return " " + ref


def read_predictions(path: PathLike) -> list[str]:
    """One system output per line, whitespace-stripped, empty lines kept (as the official scorer)."""
    return [line.strip() for line in read_lines(path, "utf-8")]


def score_e2e_files(predictions_path: PathLike, references_csv: PathLike) -> Scores:
    """Score a predictions file (one line per distinct MR of ``references_csv``, in order)."""
    return score_e2e_predictions(predictions_path, read_e2e_csv(references_csv), str(references_csv))


def score_e2e_predictions(predictions_path: PathLike, pairs: Sequence[tuple[str, str]], source: str) -> Scores:
    """Score a predictions file against ``(mr, ref)`` pairs: one line per distinct MR, in order of first
    appearance; ``source`` names the pairs in errors."""
    predictions = read_predictions(predictions_path)
    mrs, references = group_references(pairs)
    if len(predictions) != len(mrs):
        raise ValueError(
            f"{predictions_path} has {len(predictions)} lines but {source} has {len(mrs)} distinct MRs; "
            "write one output line per distinct MR, in the order the MRs first appear in the references"
        )
    return e2e_metrics(predictions, references)


def e2e_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """BLEU, NIST, METEOR, ROUGE_L and CIDEr as the official E2E scorer reports them.

    BLEU, METEOR and ROUGE_L are fractions (0–1). A metric that cannot be computed
    here (METEOR, ROUGE_L and CIDEr need Java) is ``None``, with the reason under
    ``"<metric>_unavailable_reason"``.
    """
    predictions = [prediction.strip() for prediction in predictions]
    references = [[ref.strip() for ref in refs] for refs in references]
    return {**mteval_scores(predictions, references), **coco_scores(predictions, references)}


# --- BLEU and NIST (mteval-v13a) --------------------------------------------------------


def mteval_tokenize(text: str) -> list[str]:
    """mteval-v13a's default normalisation: lowercase A–Z only, then 13a tokenization."""
    return _tokenizer_13a()(text.translate(_ASCII_LOWER)).split()


@cache
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def mteval_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus ``BLEU`` (0–1) and ``NIST`` as ``mteval-v13a-sig.pl`` computes them for the E2E scorer."""
    hyps, refs, matches = _matched_segments(predictions, references)
    return {"BLEU": _bleu(hyps, refs, matches), "NIST": _nist(hyps, refs, matches)}


def bleu_of_resampled(predictions: Sequence[str], references: Sequence[Sequence[str]]
                      ) -> Callable[[Sequence[int]], float]:
    """A function of segment indices (repeats allowed) giving ``mteval_scores``' BLEU of those segments, with
    tokenisation, n-gram matching and each segment's `_bleu_statistics` done once: what a paired bootstrap over
    test MRs calls thousands of times."""
    statistics = [_bleu_statistics(*segment) for segment in zip(*_matched_segments(predictions, references),
                                                                  strict=True)]
    return lambda indices: _bleu_of_totals([statistics[i] for i in indices])


def _matched_segments(predictions: Sequence[str], references: Sequence[Sequence[str]]
                      ) -> tuple[list[list[str]], list[list[list[str]]], list[list[Counter]]]:
    """Tokenised hypotheses and references, and each hypothesis's clipped n-gram matches for n = 1..5."""
    check_lengths(predictions, references)
    hyps = [mteval_tokenize(prediction) for prediction in predictions]
    refs = [[mteval_tokenize(ref) for ref in segment_refs] for segment_refs in references]
    for number, segment_refs in enumerate(refs, start=1):
        if not any(segment_refs):
            raise ValueError(f"prediction {number} has no non-empty reference")
    matches = [[_clipped_matches(hyp, segment_refs, n) for n in range(1, _NIST_ORDER + 1)]
               for hyp, segment_refs in zip(hyps, refs, strict=True)]
    return hyps, refs, matches


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def _clipped_matches(hyp: Sequence[str], refs: Sequence[Sequence[str]], n: int) -> Counter:
    """Hypothesis n-grams, each counted at most as often as in the reference using it most."""
    most_in_a_ref: Counter = Counter()
    for ref in refs:
        most_in_a_ref |= _ngrams(ref, n)
    return _ngrams(hyp, n) & most_in_a_ref


def _ngram_total(hyps: Sequence[Sequence[str]], n: int) -> int:
    return sum(max(len(hyp) - n + 1, 0) for hyp in hyps)


def _bleu(hyps: Sequence[list[str]], refs: Sequence[list[list[str]]], matches: list[list[Counter]]) -> float:
    return _bleu_of_totals([_bleu_statistics(*segment) for segment in zip(hyps, refs, matches, strict=True)])


def _bleu_statistics(hyp: list[str], refs: list[list[str]], matches: list[Counter]) -> tuple[int, ...]:
    """What corpus BLEU sums over segments: the hypothesis length, the closest reference length, then per order
    n = 1..4 the clipped n-gram matches, then per order the hypothesis n-grams."""
    orders = range(1, _BLEU_ORDER + 1)
    return (len(hyp), _closest_length(len(hyp), refs), *(sum(matches[n - 1].values()) for n in orders),
            *(max(len(hyp) - n + 1, 0) for n in orders))


def _bleu_of_totals(segments: Sequence[tuple[int, ...]]) -> float:
    """Corpus BLEU from the segments' `_bleu_statistics`."""
    if not segments:
        return 0.0
    hyp_length, ref_length, *counts = (sum(column) for column in zip(*segments, strict=True))
    if hyp_length == 0:
        return 0.0
    log_precision, smoothing = 0.0, 1
    for hits, total in zip(counts[:_BLEU_ORDER], counts[_BLEU_ORDER:], strict=True):
        if total == 0:  # mteval counts an order without candidate n-grams as precision 1
            continue
        if hits == 0:  # mteval's smoothing: 1 / (2^k * total) for the k-th order without a match
            smoothing *= 2
            log_precision += math.log(1 / (smoothing * total))
        else:
            log_precision += math.log(hits / total)
    brevity = math.exp(min(0.0, 1 - ref_length / hyp_length))
    return brevity * math.exp(log_precision / _BLEU_ORDER)


def _closest_length(hyp_length: int, refs: Sequence[Sequence[str]]) -> int:
    """Length of the reference closest in length (the shorter on ties); empty ones are padding."""
    return min((len(ref) for ref in refs if ref), key=lambda length: (abs(length - hyp_length), length))


def _nist(hyps: Sequence[list[str]], refs: Sequence[list[list[str]]], matches: list[list[Counter]]) -> float:
    info = _nist_information(refs)
    score = 0.0
    for n in range(1, _NIST_ORDER + 1):
        gained = sum(info[ngram] * count for segment in matches for ngram, count in segment[n - 1].items())
        score += gained / max(_ngram_total(hyps, n), 1)
    hyp_words = sum(len(hyp) for hyp in hyps)
    return score * _nist_length_penalty(hyp_words / _nist_reference_length(refs))


def _nist_reference_length(refs: Sequence[list[list[str]]]) -> float:
    """mteval's average reference length: all reference words over the mean number of
    non-empty references per segment (``$cum_ref_count / $cum_seg_count``), not the
    number of reference sets, which counts the empty padding too."""
    ref_words = sum(len(ref) for segment_refs in refs for ref in segment_refs)
    non_empty_refs = sum(1 for segment_refs in refs for ref in segment_refs if ref)
    return ref_words / (non_empty_refs / len(refs))


def _nist_information(refs: Sequence[list[list[str]]]) -> dict[tuple[str, ...], float]:
    """log2(count(w1..wn-1) / count(w1..wn)) over all references; the words total for n = 1."""
    counts: Counter = Counter()
    for segment_refs in refs:
        for ref in segment_refs:
            for n in range(1, _NIST_ORDER + 1):
                counts.update(_ngrams(ref, n))
    words = sum(len(ref) for segment_refs in refs for ref in segment_refs)
    return {ngram: math.log2((counts[ngram[:-1]] if len(ngram) > 1 else words) / count)
            for ngram, count in counts.items()}


def _nist_length_penalty(ratio: float) -> float:
    """exp(-beta * ln(ratio)^2), with beta set so that a ratio of 2/3 scores 0.5; 1 from ratio 1 up."""
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    beta = -math.log(0.5) / math.log(1.5) ** 2
    return math.exp(-beta * math.log(ratio) ** 2)


# --- METEOR, ROUGE-L, CIDEr (pycocoevalcap) ----------------------------------------------


def coco_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> Scores:
    """``METEOR``, ``ROUGE_L`` and ``CIDEr`` via pycocoevalcap, after its PTB tokenization.

    These need ``java`` on ``PATH`` (Stanford PTBTokenizer and meteor-1.5.jar ship
    inside pycocoevalcap); without it they are ``None`` with a reason.
    """
    check_lengths(predictions, references)
    if shutil.which("java") is None:
        return _unavailable(COCO_METRICS, "no `java` on PATH: the official scorer tokenizes with Stanford "
                                          "PTBTokenizer and runs METEOR 1.5, both Java programs; install a "
                                          "Java runtime (e.g. `apt-get install default-jre-headless`)")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    refs = tokenizer.tokenize({i: [{"caption": ref} for ref in segment_refs]
                               for i, segment_refs in enumerate(references)})
    hyps = tokenizer.tokenize({i: [{"caption": prediction}] for i, prediction in enumerate(predictions)})
    return {**_meteor(refs, hyps),
            "ROUGE_L": float(Rouge().compute_score(refs, hyps)[0]),
            "CIDEr": float(Cider().compute_score(refs, hyps)[0])}


def _meteor(refs: dict[int, list[str]], hyps: dict[int, list[str]]) -> Scores:
    from pycocoevalcap.meteor.meteor import Meteor

    meteor = Meteor()
    try:
        return {"METEOR": float(meteor.compute_score(refs, hyps)[0])}
    except (OSError, ValueError) as error:  # the JVM did not start or died (e.g. out of memory)
        _shut_down_failed(meteor)
        return _unavailable(("METEOR",), f"meteor-1.5.jar failed: {error!r}")


def _shut_down_failed(meteor) -> None:
    """Reap a Meteor wrapper whose compute_score raised, so that its ``__del__`` neither
    blocks (the lock is still held) nor fails flushing into the dead process."""
    process = meteor.meteor_p
    process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        with contextlib.suppress(OSError):
            stream.close()
    meteor.lock.release()


def _unavailable(metrics: Sequence[str], reason: str) -> Scores:
    scores: Scores = {}
    for metric in metrics:
        scores[metric] = None
        scores[f"{metric}_unavailable_reason"] = reason
    return scores
