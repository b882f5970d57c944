"""Corpus-level n-gram metrics wrapping their libraries: BLEU-4 and CIDEr (pycocoevalcap), ROUGE-L
(rouge-score) and METEOR (pycocoevalcap's Java jar); ``fn(predictions, references) -> (corpus score,
per-sample scores)``.

They get texts normalized, tokenized by :func:`~medvl.evaluation.normalize.words` and joined by spaces,
so Chinese is scored per character: pycocoevalcap's PTBTokenizer keeps a Chinese answer as one token,
and rouge-score's default tokenizer drops every non-ASCII letter, so neither is used.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from medvl.evaluation.metrics.registry import mean, register_metric
from medvl.evaluation.normalize import normalize_answer, words


def _tokenized(texts: Sequence[object]) -> list[str]:
    """Texts as the n-gram scorers expect them: normalized words joined by single spaces."""
    return [" ".join(words(text)) for text in texts]


def _zero_if_empty(scores: Sequence[float], hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """Per-sample scores with 0 where either side is empty (BLEU's smoothing would give 1e-15)."""
    return [float(score) if hyp and ref else 0.0 for score, hyp, ref in zip(scores, hyps, refs)]


@register_metric("bleu4", level="corpus", mean_of_samples=False)
def bleu4(predictions: Sequence[object], references: Sequence[object]) -> tuple[float, list[float]]:
    """Corpus BLEU-4 from pycocoevalcap (``Bleu(4)``, "closest" reference length) and sentence BLEU-4."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    hyps, refs = _tokenized(predictions), _tokenized(references)
    if not any(hyps) or not any(refs):
        return 0.0, [0.0] * len(hyps)
    scorer = BleuScorer(n=4)
    for hyp, ref in zip(hyps, refs):
        scorer += (hyp, [ref])
    # Bleu.compute_score does exactly this, but with verbose=1, which prints from worker threads.
    score, scores = scorer.compute_score(option="closest", verbose=0)
    return float(score[3]), _zero_if_empty(scores[3], hyps, refs)


# CIDEr's corpus score is the mean of its per-sample scores; only the document frequencies need
# the corpus. A subset (closed, a category) is scored with the whole evaluated set's frequencies,
# as COCO does per image: re-scoring it alone would take IDF from the subset, which gives 0 to a
# perfect answer in a one-row category or in a group whose references are all "yes".
@register_metric("cider", level="corpus", mean_of_samples=True)
def cider(predictions: Sequence[object], references: Sequence[object]) -> tuple[float, list[float]]:
    """pycocoevalcap's CIDEr (n=4, sigma=6; document frequencies from this corpus' references)."""
    from pycocoevalcap.cider.cider_scorer import CiderScorer

    hyps, refs = _tokenized(predictions), _tokenized(references)
    # CiderScorer raises on a corpus whose references are all empty (no document frequencies).
    if not any(hyps) or not any(refs):
        return 0.0, [0.0] * len(hyps)
    scorer = CiderScorer(n=4, sigma=6.0)
    for hyp, ref in zip(hyps, refs):
        scorer += (hyp, [ref])
    score, scores = scorer.compute_score()
    return float(score), _zero_if_empty(scores, hyps, refs)


class _WordsTokenizer:
    """rouge-score tokenizer interface over :func:`words`; its default drops every non-ASCII letter."""

    def tokenize(self, text: str) -> list[str]:
        return words(text)


_ROUGE: dict[str, Any] = {}


@register_metric("rouge_l", level="corpus")
def rouge_l(predictions: Sequence[object], references: Sequence[object]) -> tuple[float, list[float]]:
    """Mean ROUGE-L F-measure (rouge-score's ``RougeScorer(["rougeL"])``, tokenized by :func:`words`)."""
    if "scorer" not in _ROUGE:
        from rouge_score.rouge_scorer import RougeScorer

        _ROUGE["scorer"] = RougeScorer(["rougeL"], tokenizer=_WordsTokenizer())
    scorer = _ROUGE["scorer"]
    scores = [
        scorer.score(normalize_answer(ref), normalize_answer(pred))["rougeL"].fmeasure
        if words(pred) and words(ref)
        else 0.0
        for pred, ref in zip(predictions, references)
    ]
    return mean(scores), scores


# One METEOR JVM per process: starting it (loading the paraphrase table) takes seconds.
_METEOR: dict[str, Any] = {}
_METEOR_LOCK = threading.Lock()


def meteor_scorer() -> Any:
    """The process's pycocoevalcap ``Meteor`` (one JVM), started again if its process has died."""
    with _METEOR_LOCK:
        scorer = _METEOR.get("scorer")
        if scorer is None or scorer.meteor_p.poll() is not None:
            from pycocoevalcap.meteor.meteor import Meteor

            try:
                scorer = _METEOR["scorer"] = Meteor()
            except FileNotFoundError as err:
                raise RuntimeError("METEOR runs pycocoevalcap's Java jar: install a Java runtime") from err
        return scorer


def _drop_meteor(scorer: Any) -> None:
    """Kill a METEOR process that failed mid-call so the next call starts a fresh one."""
    with _METEOR_LOCK:
        if _METEOR.get("scorer") is scorer:
            del _METEOR["scorer"]
    scorer.meteor_p.kill()
    # Meteor.compute_score holds its lock without try/finally, and Meteor.__del__ waits on it.
    if scorer.lock.locked():
        scorer.lock.release()


@register_metric("meteor", level="corpus", mean_of_samples=False)
def meteor(predictions: Sequence[object], references: Sequence[object]) -> tuple[float, list[float]]:
    """pycocoevalcap's METEOR 1.5 (``-l en -norm``): every pair in one call to one JVM.

    The corpus score is the jar's own, from statistics pooled over all pairs (not the mean of the
    per-sample scores). An empty prediction stays in the pool, where it costs recall as it should.
    """
    hyps, refs = _tokenized(predictions), _tokenized(references)
    if not any(hyps) or not any(refs):
        return 0.0, [0.0] * len(hyps)
    scorer = meteor_scorer()
    try:
        score, scores = scorer.compute_score(
            {i: [ref] for i, ref in enumerate(refs)}, {i: [hyp] for i, hyp in enumerate(hyps)}
        )
    except Exception:
        _drop_meteor(scorer)
        raise
    return float(score), _zero_if_empty(scores, hyps, refs)
