"""Paired statistics of two evaluation runs: bootstrap CIs of each metric's difference and McNemar's test.

Rows are paired by ``id`` over the ids both runs scored. Per-sample metrics are resampled as means;
BLEU-4 and perplexity as corpus statistics recomputed on each resample (:data:`CORPUS_STATISTICS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medvl.evaluation.compare.runs import PREDICTIONS_FILE, Run
from medvl.evaluation.resample import check_bootstrap, percentile_ci
from medvl.tables import is_number

#: Per-sample accuracies that McNemar's test is run on (1.0 = correct; null where they do not apply:
#: closed accuracy on open rows, choice accuracy on rows without options).
MCNEMAR_METRICS = ("closed_accuracy", "choice_accuracy")
#: Below this many discordant pairs McNemar's test is the exact binomial test.
EXACT_BELOW = 25


def bootstrap_ci(
    reference: Sequence[float],
    other: Sequence[float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | int | None]:
    """Paired bootstrap percentile CI of ``mean(other) - mean(reference)``.

    ``reference[i]`` and ``other[i]`` are the two runs' scores on the same item; items are
    resampled with replacement ``n_boot`` times with ``numpy.random.default_rng(seed)``.

    Returns:
        ``{"n", "reference_mean", "other_mean", "diff", "low", "high"}``; means and bounds are None
        when there are no pairs.
    """
    a = np.asarray(reference, dtype=float)
    b = np.asarray(other, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-d sequences of equal length, got {a.shape} and {b.shape}")
    check_bootstrap(n_boot, confidence)
    n = int(a.size)
    if n == 0:
        return dict(_NO_PAIRS)
    deltas = b - a
    low, high = percentile_ci(n, lambda index: deltas[index].mean(axis=1), n_boot=n_boot, seed=seed,
                               confidence=confidence)
    return {"n": n, "reference_mean": float(a.mean()), "other_mean": float(b.mean()), "diff": float(deltas.mean()),
            "low": low, "high": high}


_NO_PAIRS = {"n": 0, "reference_mean": None, "other_mean": None, "diff": None, "low": None, "high": None}


def mcnemar(reference_correct: Sequence[bool], other_correct: Sequence[bool]) -> dict[str, Any]:
    """McNemar's test of paired correctness.

    ``b`` counts items the reference got right and the other run wrong, ``c`` the reverse. With
    fewer than 25 discordant pairs it is the exact two-sided binomial test of ``b`` in ``b + c``
    trials at p = 0.5 (statistic: ``min(b, c)``); otherwise the chi-square test with continuity
    correction, ``(|b - c| - 1)^2 / (b + c)`` on 1 degree of freedom. No discordant pairs: p = 1.

    Returns:
        ``{"n", "b", "c", "method", "statistic", "p_value"}``.
    """
    from scipy import stats  # scipy.stats takes ~0.5 s to import; only needed here

    ref = [bool(x) for x in reference_correct]
    oth = [bool(x) for x in other_correct]
    if len(ref) != len(oth):
        raise ValueError(f"{len(ref)} reference outcomes but {len(oth)} other outcomes")
    b = sum(r and not o for r, o in zip(ref, oth))
    c = sum(o and not r for r, o in zip(ref, oth))
    discordant = b + c
    if discordant < EXACT_BELOW:
        method = "exact"
        statistic = float(min(b, c))
        p_value = 1.0 if discordant == 0 else float(stats.binomtest(b, discordant, 0.5).pvalue)
    else:
        method = "chi2"
        statistic = (abs(b - c) - 1) ** 2 / discordant
        p_value = float(stats.chi2.sf(statistic, df=1))
    return {"n": len(ref), "b": b, "c": c, "method": method, "statistic": float(statistic),
            "p_value": min(1.0, p_value)}


#: Metrics whose table value is a corpus statistic that the paired bootstrap recomputes on each
#: resample from per-row sufficient statistics (not the mean of per-sample scores).
CORPUS_STATISTICS = ("bleu4", "perplexity")
#: Corpus metrics whose statistic cannot be recomputed from what predictions.jsonl holds: METEOR's
#: corpus score pools fragmentation statistics inside the Java scorer. No CI rather than the CI of
#: a different quantity (the mean of sentence METEOR) beside the corpus value in the tables.
NO_BOOTSTRAP = {"meteor": "corpus METEOR pools statistics inside the Java scorer; no resampled CI"}
_BLEU_N = 4


def _bleu_stats(prediction: object, reference: object) -> list[float]:
    """[pred length, ref length, guess_1..4, correct_1..4] as pycocoevalcap's BleuScorer counts them.

    Texts are tokenized as ``medvl.evaluation.metrics.bleu4`` tokenizes them (normalized words), and
    with one reference, ``closest`` reference length is that reference's length.
    """
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    from medvl.evaluation.normalize import words

    hyp, ref = " ".join(words(prediction)), " ".join(words(reference))
    comps = cook_test(hyp, cook_refs([ref], n=_BLEU_N), eff="closest", n=_BLEU_N)
    return [comps["testlen"], comps["reflen"], *comps["guess"], *comps["correct"]]


def _bleu_from_stats(totals: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 from summed :func:`_bleu_stats` (last axis), exactly as BleuScorer.compute_score."""
    small, tiny = 1e-9, 1e-15
    testlen, reflen = totals[..., 0], totals[..., 1]
    guess, correct = totals[..., 2 : 2 + _BLEU_N], totals[..., 2 + _BLEU_N :]
    bleu = np.prod((correct + tiny) / (guess + small), axis=-1) ** (1.0 / _BLEU_N)
    ratio = (testlen + tiny) / (reflen + small)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.minimum(ratio, 1)), 1.0)
    # medvl's bleu4 scores a corpus with no words on either side as 0 (CiderScorer-style guard).
    return np.where((testlen > 0) & (reflen > 0), bleu * penalty, 0.0)


def _perplexity_from_stats(totals: np.ndarray) -> np.ndarray:
    """Corpus perplexity exp(total NLL / total tokens) from summed (nll, n_tokens)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.exp(totals[..., 0] / totals[..., 1])


def corpus_stats(run: Run, metric: str) -> dict[str, list[float]]:
    """``{id: sufficient statistics}`` of a :data:`CORPUS_STATISTICS` metric for each usable row."""
    out = {}
    for row in run.rows:
        if "id" not in row:
            continue
        if metric == "bleu4":
            if "prediction" in row and "reference" in row:
                out[str(row["id"])] = _bleu_stats(row["prediction"], row["reference"])
        elif metric == "perplexity":
            nll, n = row.get("nll"), row.get("n_tokens")
            if is_number(nll) and is_number(n) and n > 0:
                out[str(row["id"])] = [float(nll), float(n)]
    return out


_STATISTIC = {"bleu4": _bleu_from_stats, "perplexity": _perplexity_from_stats}


def corpus_statistic(metric: str, totals: np.ndarray) -> np.ndarray:
    """The corpus value of a :data:`CORPUS_STATISTICS` metric from its :func:`corpus_stats` rows summed over
    the items (last axis; leading axes are resamples): what the paired bootstrap recomputes on each draw."""
    return _STATISTIC[metric](totals)


def bootstrap_corpus_ci(
    reference: Sequence[Sequence[float]],
    other: Sequence[Sequence[float]],
    statistic: Any,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | int | None]:
    """Paired bootstrap percentile CI of ``statistic(sum(other)) - statistic(sum(reference))``.

    ``reference[i]`` and ``other[i]`` are the two runs' sufficient statistics on the same item (a
    corpus statistic of summed per-item counts, such as BLEU or corpus perplexity); each resample
    draws items with replacement and recomputes the statistic of both runs on the same draw.
    """
    a = np.asarray(reference, dtype=float)
    b = np.asarray(other, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired statistics must be two (n, k) arrays of equal shape, got {a.shape} and {b.shape}")
    check_bootstrap(n_boot, confidence)
    n = int(a.shape[0])
    if n == 0:
        return dict(_NO_PAIRS)
    ref_value, other_value = float(statistic(a.sum(axis=0))), float(statistic(b.sum(axis=0)))
    low, high = percentile_ci(
        n, lambda index: statistic(b[index].sum(axis=1)) - statistic(a[index].sum(axis=1)),
        n_boot=n_boot, seed=seed, confidence=confidence,
    )
    return {"n": n, "reference_mean": ref_value, "other_mean": other_value, "diff": other_value - ref_value,
            "low": low, "high": high}


def sample_scores(run: Run, metric: str) -> dict[str, float]:
    """``{id: score}`` of one per-sample metric (``perplexity`` reads the row's own field)."""
    out = {}
    for row in run.rows:
        if "id" not in row:
            continue
        if metric == "perplexity" and "perplexity" in row:
            value = row.get("perplexity")
        else:
            value = (row.get("metrics") or {}).get(metric)
        if is_number(value):
            out[str(row["id"])] = float(value)
    return out


def sample_metrics(runs: Sequence[Run]) -> list[str]:
    """Per-sample metric names found in the runs' predictions, first-seen order."""
    names: dict[str, None] = {}
    for run in runs:
        for row in run.rows:
            for key, value in (row.get("metrics") or {}).items():
                if is_number(value):
                    names.setdefault(key, None)
            if is_number(row.get("perplexity")):
                names.setdefault("perplexity", None)
    return list(names)


def _ids(run: Run) -> list[str]:
    return list(dict.fromkeys(str(row["id"]) for row in run.rows if "id" in row))


def _paired_ci(
    reference: Run, other: Run, common: Sequence[str], metric: str, *, n_boot: int, seed: int, confidence: float
) -> dict[str, float | int | None] | None:
    """The bootstrap CI of one metric over the ``common`` ids where both runs have it; None where there are none."""
    if metric in CORPUS_STATISTICS:
        ref_stats, other_stats = corpus_stats(reference, metric), corpus_stats(other, metric)
        ids = [i for i in common if i in ref_stats and i in other_stats]
        if not ids:
            return None
        return bootstrap_corpus_ci([ref_stats[i] for i in ids], [other_stats[i] for i in ids], _STATISTIC[metric],
                                   n_boot=n_boot, seed=seed, confidence=confidence)
    ref_scores, other_scores = sample_scores(reference, metric), sample_scores(other, metric)
    ids = [i for i in common if i in ref_scores and i in other_scores]
    if not ids:
        return None
    return bootstrap_ci([ref_scores[i] for i in ids], [other_scores[i] for i in ids],
                        n_boot=n_boot, seed=seed, confidence=confidence)


def pairwise_significance(
    reference: Run,
    other: Run,
    *,
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Bootstrap CIs of each per-sample metric's difference and McNemar on closed and multiple-choice accuracy.

    Rows are paired by id; a metric's pairs are the shared ids where both runs have a value.
    McNemar's test runs on each of :data:`MCNEMAR_METRICS` that ``metrics`` selects (all by default)
    and both runs score on some shared id.

    Returns:
        ``{"reference", "run", "n_reference", "n_run", "n_common", "bootstrap": {metric: ...},
        "mcnemar": {metric: ...}, "note": str | None, "skipped": {metric: why}}``; ``note`` says why
        statistics are missing (no predictions, or no ids in common). BLEU-4 and perplexity are
        resampled as corpus statistics (see :data:`CORPUS_STATISTICS`), METEOR is skipped.
    """
    ref_ids, other_ids = _ids(reference), _ids(other)
    other_set = set(other_ids)
    common = [i for i in ref_ids if i in other_set]
    result: dict[str, Any] = {
        "reference": reference.name,
        "run": other.name,
        "n_reference": len(ref_ids),
        "n_run": len(other_ids),
        "n_common": len(common),
        "bootstrap": {},
        "mcnemar": {},
        "note": None,
        "skipped": {},
    }
    missing = [run.name for run in (reference, other) if not run.has_predictions]
    if missing:
        result["note"] = f"no {PREDICTIONS_FILE} (or no rows) for {', '.join(missing)}: no paired statistics"
        return result
    if not common:
        result["note"] = (
            f"no ids in common ({len(ref_ids)} ids in {reference.name}, {len(other_ids)} in {other.name}; "
            "were they evaluated on different data?): no paired statistics"
        )
        return result
    names = list(metrics) if metrics is not None else sample_metrics([reference, other])
    for metric in names:
        if metric in NO_BOOTSTRAP:
            result["skipped"][metric] = NO_BOOTSTRAP[metric]
        elif (ci := _paired_ci(reference, other, common, metric, n_boot=n_boot, seed=seed,
                               confidence=confidence)) is not None:
            result["bootstrap"][metric] = ci
    for metric in MCNEMAR_METRICS:
        if metrics is not None and metric not in metrics:
            continue
        ref_acc, other_acc = sample_scores(reference, metric), sample_scores(other, metric)
        ids = [i for i in common if i in ref_acc and i in other_acc]
        if ids:
            result["mcnemar"][metric] = mcnemar([ref_acc[i] >= 0.5 for i in ids], [other_acc[i] >= 0.5 for i in ids])
    return result


def significance(
    runs: Sequence[Run],
    reference_index: int = 0,
    *,
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """:func:`pairwise_significance` of every run against ``runs[reference_index]``."""
    reference = runs[reference_index]
    return [
        pairwise_significance(reference, run, metrics=metrics, n_boot=n_boot, seed=seed, confidence=confidence)
        for index, run in enumerate(runs)
        if index != reference_index
    ]
