"""Running many metrics: :func:`compute_metrics` scores aligned predictions and references with the
registered metrics, and :func:`make_corpus_fn` re-scores a subset for :func:`medvl.evaluation.aggregate.aggregate`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from medvl.data.taxonomy import CLOSED, OPEN, normalize_answer_type
from medvl.evaluation.metrics.bertscore import BERTSCORE_DTYPES, bertscore_by_language, bertscore_scorer
from medvl.evaluation.metrics.checks import import_backends
from medvl.evaluation.metrics.registry import METRICS, Metric, mean, selected
from medvl.evaluation.normalize import LANGUAGES, NO, YES, normalize_answer, text_language


def row_languages(references: Sequence[object], languages: Sequence[object] | None = None) -> list[str]:
    """Each row's language from its data: the given one, else its reference's (:func:`resolve_language`)."""
    return [resolve_language(None if languages is None else languages[i], ref) for i, ref in enumerate(references)]


def resolve_language(language: object, reference: object, question: object = None) -> str:
    """``"en"`` or ``"zh"`` for a row: ``language`` when it is one (Slake's ``q_lang``), else zh when the question or
    the reference has Chinese characters.

    Never the prediction: an English row answered in Chinese is still an English row, scored by the English
    BERTScore model and counted in the en group (a poor score, not a row moved out of its language).
    """
    if language in LANGUAGES:
        return str(language)
    return "zh" if "zh" in (text_language(question), text_language(reference)) else "en"


def resolve_answer_type(answer_type: object, reference: object) -> str:
    """``CLOSED`` or ``OPEN`` for a row; unknown rows are closed when the reference is yes/no."""
    return normalize_answer_type(answer_type) or (CLOSED if normalize_answer(reference) in (YES, NO) else OPEN)


# METEOR's work happens in a JVM, so it goes to a thread at once and runs beside the GIL-bound
# Python scorers (sample metrics, BLEU, CIDEr, ROUGE-L) on the other core. BERTScore comes last
# and alone: torch keeps both cores busy, and any thread that takes a core from one of its
# OpenMP workers stalls every matrix product, so overlapping it with METEOR gains nothing here
# (benchmarks/metrics_throughput.py on 2 cores: 104 s this way, 105 s with BERTScore in a thread
# beside METEOR).
_BACKGROUND = ("meteor",)
_LAST = ("bertscore_f1",)


def compute_metrics(
    predictions: Sequence[object],
    references: Sequence[object],
    answer_types: Sequence[object] | None = None,
    *,
    metrics: Sequence[str] | None = None,
    bertscore_model: str | None = None,
    bertscore_num_layers: int | None = None,
    bertscore_dtype: str = "float32",
    bertscore_model_zh: str | None = None,
    languages: Sequence[object] | None = None,
    options: Sequence[Mapping[str, str | None] | None] | None = None,
    timings: dict[str, float] | None = None,
    notes: dict[str, str] | None = None,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Score predictions against references with the registered metrics.

    METEOR runs concurrently in a thread (its work happens in a Java process) while the calling
    thread runs the sample metrics, BLEU, CIDEr and ROUGE-L, and the BERTScore model loads; then
    BERTScore runs on both cores.

    Args:
        predictions: model outputs; ``None``, numbers and blank strings score 0.
        references: gold answers, aligned with ``predictions``.
        answer_types: ``"CLOSED"`` / ``"OPEN"`` per row, for closed_accuracy and open_recall;
            missing ones are inferred (closed when the reference is yes/no).
        metrics: names from :data:`METRICS`; all of them by default.
        bertscore_model: model name or local directory for BERTScore (default: offline MiniLM).
        bertscore_num_layers: layer whose embeddings BERTScore compares.
        bertscore_dtype: ``"bfloat16"`` runs the BERTScore model under autocast, about twice as
            fast on CPUs with native bf16, with per-sample F1 within a few 1e-3 of float32.
        bertscore_model_zh: a multilingual model (name or local directory) for the zh rows'
            BERTScore, at bert-score's layer for it. ``None``: zh rows are not scored by BERTScore (their
            ``bertscore_f1`` is ``None``, the corpus value absent) and ``notes`` says why.
        languages: ``"en"`` / ``"zh"`` per row; missing ones are read from the reference (zh when it has
            Chinese characters), never from the prediction (:func:`resolve_language`).
        options: each row's multiple-choice options (``meta.options``; ``None`` on other rows). On those rows
            the metrics that read them (:attr:`Metric.reads_options`: closed_accuracy, substring_match)
            score the option letter extracted from the prediction.
        timings: if given, filled with each scorer's wall-clock seconds.
        notes: if given, filled with ``{metric: reason}`` for each metric left out on some rows.

    Returns:
        ``(per_sample, corpus)``: one dict per row with every metric that applies to it (corpus
        metrics included, as their per-sample scores; ``None`` where a metric applies but was left
        out, see ``notes``), and the corpus-level values: the mean for a sample metric (over the
        rows it applies to; absent when none does), the corpus score for a corpus metric (absent
        when it was left out on some rows).
    """
    predictions, references = list(predictions), list(references)
    names = _checked_names(predictions, references, answer_types, options, metrics, bertscore_dtype)
    batch = _Batch(
        predictions,
        references,
        types=[resolve_answer_type(None if answer_types is None else answer_types[i], ref)
               for i, ref in enumerate(references)],
        timings={} if timings is None else timings,
        notes={} if notes is None else notes,
        languages=row_languages(references, languages),
        options=[None] * len(references) if options is None else list(options),
        bertscore={"model": bertscore_model, "num_layers": bertscore_num_layers, "dtype": bertscore_dtype,
                   "model_zh": bertscore_model_zh},
    )
    _score_all(batch, names)
    corpus = {name: batch.corpus[name] for name in names if name in batch.corpus}  # in the order asked for
    return batch.per_sample, corpus


def _checked_names(
    predictions: Sequence[object],
    references: Sequence[object],
    answer_types: Sequence[object] | None,
    options: Sequence[object] | None,
    metrics: Sequence[str] | None,
    bertscore_dtype: str,
) -> list[str]:
    """The selected metric names, once the rows line up and the BERTScore dtype is known."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if answer_types is not None and len(answer_types) != len(references):
        raise ValueError(f"{len(answer_types)} answer types for {len(references)} references")
    if options is not None and len(options) != len(references):
        raise ValueError(f"{len(options)} option sets for {len(references)} references")
    names = selected(metrics)
    if bertscore_dtype not in BERTSCORE_DTYPES:
        raise ValueError(f"bertscore_dtype must be one of {BERTSCORE_DTYPES}, got {bertscore_dtype!r}")
    return names


@dataclass
class _Batch:
    """The rows :func:`compute_metrics` scores, and what scoring them collects.

    Attributes:
        types: ``CLOSED`` / ``OPEN`` per row.
        languages: ``en`` / ``zh`` per row.
        options: each row's multiple-choice options, or None.
        bertscore: bertscore_f1's ``model``, ``num_layers``, ``dtype`` and ``model_zh``.
        per_sample: one dict of scores per row; ``corpus``: the corpus-level values, in scoring order.
    """

    predictions: list[object]
    references: list[object]
    types: list[str]
    timings: dict[str, float]
    notes: dict[str, str]
    languages: list[str]
    options: list[Mapping[str, str | None] | None]
    bertscore: dict[str, Any]
    per_sample: list[dict[str, float | None]] = field(init=False)
    corpus: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.per_sample = [{} for _ in self.predictions]

    def record(self, name: str, result: tuple[float | None, Sequence[float | None]], seconds: float) -> None:
        """Keep a corpus metric's ``(score, per-sample scores)``; a ``None`` score (left out on some rows) is
        not a corpus value."""
        score, scores = result
        self.timings[name] = seconds
        if score is not None:
            self.corpus[name] = score
        for row, value in zip(self.per_sample, scores):
            row[name] = value


def _score_all(batch: _Batch, names: Sequence[str]) -> None:
    """Run the metrics ``names`` on ``batch``: METEOR in a thread from the start, the BERTScore models loading
    beside the sample metrics and the Python corpus scorers, then BERTScore alone (see :data:`_BACKGROUND`)."""
    corpus_names = [name for name in names if METRICS[name].level == "corpus"]
    import_backends(corpus_names)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="metric") as pool:
        background = {
            name: pool.submit(_timed, METRICS[name].fn, batch.predictions, batch.references)
            for name in corpus_names
            if name in _BACKGROUND
        }
        if "bertscore_f1" in corpus_names and any(map(normalize_answer, batch.predictions)):
            _load_bertscore_models(pool, batch)
        _score_sample_metrics(batch, names)
        for name in corpus_names:
            if name not in _BACKGROUND + _LAST:
                batch.record(name, *_timed(METRICS[name].fn, batch.predictions, batch.references))
        for name, future in background.items():
            batch.record(name, *future.result())
        if "bertscore_f1" in corpus_names:  # _LAST: a model per language
            batch.record("bertscore_f1", *_timed(bertscore_by_language, batch.predictions, batch.references,
                                                 batch.languages, batch.bertscore, batch.notes))


def _load_bertscore_models(pool: ThreadPoolExecutor, batch: _Batch) -> None:
    """Start loading the BERTScore models the rows' languages need, while the other metrics run (a model that
    fails to load fails again, with its error, when BERTScore runs)."""
    if "en" in batch.languages:
        pool.submit(bertscore_scorer, batch.bertscore["model"], batch.bertscore["num_layers"])
    if "zh" in batch.languages and batch.bertscore["model_zh"]:
        pool.submit(bertscore_scorer, batch.bertscore["model_zh"])


def _score_sample_metrics(batch: _Batch, names: Sequence[str]) -> None:
    """Each sample metric of ``names`` on the rows it applies to, and its mean over them (none: no mean)."""
    for name in names:
        if METRICS[name].level == "sample":
            start = time.perf_counter()
            values = _score_rows(METRICS[name], batch)
            if values:
                batch.corpus[name] = mean(values)
            batch.timings[name] = time.perf_counter() - start


def _score_rows(metric: Metric, batch: _Batch) -> list[float]:
    """Score each row the metric applies to, store it in ``batch.per_sample``, return the values."""
    values = []
    for row, pred, ref, row_type, options in zip(batch.per_sample, batch.predictions, batch.references, batch.types,
                                                 batch.options):
        if metric.answer_type is None or metric.answer_type == row_type:
            kwargs = {"options": options} if metric.reads_options and options else {}
            row[metric.name] = metric.fn(pred, ref, **kwargs)
            values.append(row[metric.name])
    return values


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def make_corpus_fn(
    predictions: Sequence[object],
    references: Sequence[object],
    *,
    metrics: Sequence[str] | None = None,
) -> Callable[[Sequence[int]], dict[str, float]]:
    """A ``corpus_fn`` for :func:`medvl.evaluation.aggregate.aggregate`.

    It re-scores a subset of rows (given by index) with the corpus metrics whose score is not a
    mean of per-sample scores (BLEU-4, METEOR); the mean-decomposable ones (CIDEr with the whole
    set's document frequencies, ROUGE-L, BERTScore) are averaged by ``aggregate`` from the
    per-sample values without re-running a model.
    """
    predictions, references = list(predictions), list(references)
    names = [
        name for name in selected(metrics) if METRICS[name].level == "corpus" and not METRICS[name].mean_of_samples
    ]

    def corpus_fn(indices: Sequence[int]) -> dict[str, float]:
        preds = [predictions[i] for i in indices]
        refs = [references[i] for i in indices]
        return {name: METRICS[name].fn(preds, refs)[0] for name in names}

    return corpus_fn
