"""Per-row string metrics: ``fn(prediction, reference) -> float`` in [0, 1] on normalized answers.

Every one sees text through :func:`medvl.evaluation.normalize.normalize_answer` (or its word and
character tokens), so an empty or non-text prediction scores 0 and never raises.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Mapping, Sequence

from medvl.data.taxonomy import CLOSED, OPEN
from medvl.evaluation.extract import extract_choice, extract_yes_no
from medvl.evaluation.metrics.registry import choice_accuracy, register_metric
from medvl.evaluation.normalize import NO, YES, chars, normalize_answer, words


@register_metric("exact_match")
def exact_match(prediction: object, reference: object) -> float:
    """Normalized equality, word by word: a space between Chinese characters ("左 肺") does not count."""
    pred = words(prediction)
    return float(bool(pred) and pred == words(reference))


@register_metric("substring_match", reads_options=True)
def substring_match(prediction: object, reference: object, options: Mapping[str, str | None] | None = None) -> float:
    """1.0 when either normalized answer contains the other as whole words (Chinese: characters).

    Whole words so that the reference "no" is not found in "normal". On a multiple-choice row
    (``options``) the reference is an option letter, not a word (option A's "a" is in almost any
    sentence): the row counts when the letter extracted from the prediction is the reference
    (:func:`picks_reference`).
    """
    if options:
        return picks_reference(prediction, reference, options)
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


@register_metric("closed_accuracy", answer_type=CLOSED, reads_options=True)
def closed_accuracy(prediction: object, reference: object, options: Mapping[str, str | None] | None = None) -> float:
    """LLaVA-Med's closed-question accuracy, on the extracted answer.

    A yes/no reference is compared with :func:`~medvl.evaluation.extract.extract_yes_no` of the
    prediction. Any other closed reference ("Left", "Liver", an option of an "A or B?" question)
    counts when its words appear, in order, in the prediction: LLaVA-Med's ``gt in pred``, except
    that an occurrence right after a negation ("not normal", 不正常) does not count. A multiple-choice
    row (``options``: its ``meta.options``, the reference an option letter) is its choice_accuracy
    (:func:`picks_reference`).
    """
    if options:
        return picks_reference(prediction, reference, options)
    ref = normalize_answer(reference)
    if not ref:
        return 0.0
    if ref in (YES, NO):
        return float(extract_yes_no(prediction) == ref)
    return float(_contains_unnegated(words(prediction), words(ref)))


def picks_reference(prediction: object, reference: object, options: Mapping[str, str | None]) -> float:
    """A multiple-choice row's choice_accuracy: 1.0 when the option letter
    :func:`~medvl.evaluation.extract.extract_choice` reads from the prediction is the reference letter."""
    return choice_accuracy({"extracted_choice": extract_choice(prediction, dict(options)), "reference": reference})


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
