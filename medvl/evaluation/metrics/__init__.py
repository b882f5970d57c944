"""Metrics: a registry of small scoring functions, and :func:`compute_metrics` to run them.

Two kinds of metric, registered with :func:`register_metric` (lm-eval-harness style):

* ``level="sample"``: ``fn(prediction, reference) -> float``, averaged over rows.
* ``level="corpus"``: ``fn(predictions, references) -> (corpus_score, per_sample_scores)``, for
  scorers that need the whole corpus (BLEU's brevity penalty, CIDEr's document frequencies,
  METEOR's pooled statistics) or that are only fast in one batch (ROUGE-L, BERTScore).

Every scorer sees text through :func:`medvl.evaluation.normalize.normalize_answer`; the n-gram
scorers (BLEU, CIDEr, METEOR, ROUGE-L) get it tokenized by :func:`~medvl.evaluation.normalize.words`
and joined by spaces, so Chinese is scored per character: the same libraries, fed characters
separated by spaces, as Chinese VQA work feeds BLEU and ROUGE. pycocoevalcap's PTBTokenizer runs
offline and fast (about 0.5 s for 10k pairs) but keeps a Chinese answer as one token, and
rouge-score's default tokenizer drops every non-ASCII letter, so neither is used. BERTScore takes
a model per language (:func:`compute_metrics`). An empty or non-text prediction scores 0
everywhere and never raises.

The modules, by concern: :mod:`.registry` (names, levels, directions), :mod:`.text` (per-row string
metrics), :mod:`.corpus` (BLEU-4, CIDEr, ROUGE-L, METEOR from their libraries), :mod:`.bertscore`,
:mod:`.checks` (what scoring needs, checked before work starts) and :mod:`.compute` (running them).
Everything is imported from here.
"""

from __future__ import annotations

# isort: off
# The import order is the registration order, which is the default metric order (the columns of
# metrics.json and the tables): string metrics, then the corpus ones, BERTScore last.
from medvl.evaluation.metrics.registry import (
    METRICS,
    RECORD_METRICS,
    Metric,
    MetricError,
    choice_accuracy,
    higher_is_better,
    nll_per_token,
    record_perplexity,
    register_metric,
)
from medvl.evaluation.metrics.text import (
    char_f1,
    char_precision,
    char_recall,
    closed_accuracy,
    exact_match,
    open_recall,
    overlap_prf,
    soft_match,
    substring_match,
    word_f1,
    word_jaccard,
    word_precision,
    word_recall,
)
from medvl.evaluation.metrics.corpus import bleu4, cider, meteor, meteor_scorer, rouge_l
from medvl.evaluation.metrics.bertscore import (
    BERTSCORE_DTYPES,
    DEFAULT_BERTSCORE_LAYERS,
    bertscore_f1,
    bertscore_scorer,
    default_bertscore_model,
    no_bertscore_zh_reason,
)

# isort: on
from medvl.evaluation.metrics.checks import check_bertscore_model, check_metrics, check_scoring
from medvl.evaluation.metrics.compute import compute_metrics, make_corpus_fn, resolve_answer_type, row_languages

__all__ = [
    "BERTSCORE_DTYPES",
    "DEFAULT_BERTSCORE_LAYERS",
    "METRICS",
    "RECORD_METRICS",
    "Metric",
    "MetricError",
    "bertscore_f1",
    "bertscore_scorer",
    "bleu4",
    "char_f1",
    "char_precision",
    "char_recall",
    "check_bertscore_model",
    "check_metrics",
    "check_scoring",
    "choice_accuracy",
    "cider",
    "closed_accuracy",
    "compute_metrics",
    "default_bertscore_model",
    "exact_match",
    "higher_is_better",
    "make_corpus_fn",
    "meteor",
    "meteor_scorer",
    "nll_per_token",
    "no_bertscore_zh_reason",
    "open_recall",
    "overlap_prf",
    "record_perplexity",
    "register_metric",
    "resolve_answer_type",
    "rouge_l",
    "row_languages",
    "soft_match",
    "substring_match",
    "word_f1",
    "word_jaccard",
    "word_precision",
    "word_recall",
]
