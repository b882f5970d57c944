"""The metric registry: each metric's function, level and direction (lm-eval-harness's ``@register_metric``).

A prediction record's own scores (the extracted option letter, the reference answer's likelihood) are
registered here too, for their name and direction: :mod:`medvl.evaluation.scoring` computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["sample", "corpus", "record"]


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes:
        higher_is_better: the metric's direction, for bold-best in tables and the best checkpoint
            (:func:`higher_is_better`).
        level: ``"sample"`` (``fn(prediction, reference)``), ``"corpus"`` (``fn(predictions, references)``)
            or ``"record"`` (``fn(record)`` of a prediction record, see :data:`RECORD_METRICS`).
        answer_type: ``"CLOSED"`` or ``"OPEN"`` when the metric only means something for rows of
            that type (closed_accuracy, open_recall); other rows get no value, not a zero.
        mean_of_samples: for a corpus metric, whether its corpus score is just the mean of its
            per-sample scores (CIDEr, ROUGE-L, BERTScore), so a subset's score needs no re-scoring.
        reads_options: for a sample metric, whether ``fn`` takes a multiple-choice row's options
            (``fn(prediction, reference, options=meta["options"])``), whose reference is an option
            letter rather than words (closed_accuracy, substring_match).
    """

    name: str
    fn: Callable[..., Any]
    higher_is_better: bool = True
    level: Level = "sample"
    answer_type: str | None = None
    mean_of_samples: bool = True
    reads_options: bool = False


#: The text metrics, which :func:`compute_metrics` runs on (prediction, reference) pairs.
METRICS: dict[str, Metric] = {}
#: Scores of a prediction record's other fields (the option letter extracted from a multiple-choice
#: answer, the reference answer's likelihood): :mod:`medvl.evaluation.scoring` computes them, not
#: :func:`compute_metrics`; they are registered for their name and direction.
RECORD_METRICS: dict[str, Metric] = {}


def register_metric(
    name: str,
    higher_is_better: bool = True,
    level: Level = "sample",
    *,
    answer_type: str | None = None,
    mean_of_samples: bool = True,
    reads_options: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` under ``name`` (in :data:`RECORD_METRICS` for ``level="record"``, else in :data:`METRICS`);
    the function itself is returned unchanged."""
    if level not in ("sample", "corpus", "record"):
        raise ValueError(f"level must be 'sample', 'corpus' or 'record', got {level!r}")

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METRICS or name in RECORD_METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        registry = RECORD_METRICS if level == "record" else METRICS
        registry[name] = Metric(name, fn, higher_is_better, level, answer_type, mean_of_samples, reads_options)
        return fn

    return decorator


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric ``name`` is better, as the metric was registered.

    Raises:
        MetricError: ``name`` is not a registered metric.
    """
    metric = METRICS.get(name) or RECORD_METRICS.get(name)
    if metric is None:
        raise MetricError(f"unknown metric {name!r}; registered: {', '.join([*METRICS, *RECORD_METRICS])}")
    return metric.higher_is_better


class MetricError(ValueError):
    """A metric that is not registered, or cannot run on this machine."""


def selected(metrics: Sequence[str] | None) -> list[str]:
    """The names of ``metrics`` (all of :data:`METRICS` when ``None``; one name may be a string).

    Raises:
        MetricError: a name that is not registered.
    """
    if isinstance(metrics, str):  # one name, not its letters ("unknown metrics ['b', 'l', ...]")
        metrics = [metrics]
    names = list(METRICS) if metrics is None else list(metrics)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise MetricError(f"unknown metrics {unknown}; registered: {', '.join(METRICS)}")
    return names


def mean(values: Sequence[float]) -> float:
    """The mean, 0.0 of no values."""
    return sum(values) / len(values) if values else 0.0


# --------------------------------------------------------------------------------------------
# Record-level scores: fn(record) of a prediction record (medvl.evaluation.scoring.prediction_record).


@register_metric("choice_accuracy", level="record")
def choice_accuracy(record: dict[str, Any]) -> float:
    """1.0 when the option letter extracted from a multiple-choice answer (``extracted_choice``) is the reference."""
    return float(record.get("extracted_choice") == str(record["reference"]).strip().upper())


@register_metric("nll_per_token", higher_is_better=False, level="record")
def nll_per_token(record: dict[str, Any]) -> float | None:
    """The reference answer's negative log-likelihood per token, in nats (None: not scored)."""
    return record["nll"] / record["n_tokens"] if record.get("nll") is not None and record.get("n_tokens") else None


def record_perplexity(record: dict[str, Any]) -> float | None:
    """The reference answer's perplexity. A group reports its corpus perplexity (``perplexity``) and the median
    of its records' (``perplexity_median``): :func:`medvl.evaluation.scoring.finish_group`."""
    return record.get("perplexity")


register_metric("perplexity", higher_is_better=False, level="record")(record_perplexity)
register_metric("perplexity_median", higher_is_better=False, level="record")(record_perplexity)
