"""Regression tests from a review of the metrics layer: each case scored a published number wrongly."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import pytest

from medvl.evaluation import metrics as M
from medvl.evaluation.aggregate import aggregate
from medvl.evaluation.extract import extract_choice, extract_yes_no
from medvl.evaluation.normalize import normalize_answer

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLES = FIXTURES / "samples"  # verbatim copies of ../shared/samples
TOL = 1e-6


def _llava_med_answers() -> list[str]:
    """Long LLaVA-Med answers, the kind soft_match's difflib heuristic distorted."""
    rows = json.loads((SAMPLES / "llava_med_instruct_fewshot_rows.json").read_text(encoding="utf-8"))["rows"]
    answers = [turn["value"] for row in rows for turn in row["conversations"] if turn["from"] == "gpt"]
    return [answer for answer in answers if len(normalize_answer(answer)) >= 200]


def test_cider_of_a_subset_uses_the_whole_sets_document_frequencies() -> None:
    rows = [
        {"category": "a", "answer_type": "OPEN", "answer": "left lung", "prediction": "left lung"},
        {"category": "a", "answer_type": "OPEN", "answer": "liver", "prediction": "the heart"},
        {"category": "b", "answer_type": "CLOSED", "answer": "yes", "prediction": "yes"},
        {"category": "c", "answer_type": "OPEN", "answer": "right kidney", "prediction": "right kidney"},
    ]
    preds, refs = [r["prediction"] for r in rows], [r["answer"] for r in rows]
    per_sample, corpus = M.compute_metrics(preds, refs, [r["answer_type"] for r in rows], metrics=["cider"])
    tables = aggregate(rows, per_sample, M.make_corpus_fn(preds, refs, metrics=["cider"]))
    # Re-scored alone, a one-row category has IDF log(1) - log(1) = 0: CIDEr 0 for a perfect answer.
    assert tables["by_category"]["c"]["cider"] == pytest.approx(per_sample[3]["cider"], abs=TOL)
    assert tables["by_category"]["c"]["cider"] > 1.0
    assert tables["closed"]["cider"] > 1.0  # every closed reference is "yes"
    # Groups average to the overall score, as every other table row does.
    assert tables["overall"]["cider"] == pytest.approx(corpus["cider"], abs=TOL)
    assert tables["by_category"]["a"]["cider"] == pytest.approx(
        (per_sample[0]["cider"] + per_sample[1]["cider"]) / 2, abs=TOL
    )


def test_soft_match_is_not_distorted_by_difflibs_autojunk_on_long_answers() -> None:
    long_refs = _llava_med_answers()
    assert len(long_refs) >= 2
    pred, ref = long_refs[0], long_refs[1]
    pred_n, ref_n = normalize_answer(pred), normalize_answer(ref)
    expected = difflib.SequenceMatcher(None, pred_n, ref_n, autojunk=False).ratio()
    assert M.soft_match(pred, ref) == pytest.approx(expected, abs=TOL)
    # With autojunk the common letters of a 200+ character reference are junk, and the ratio of
    # two medical answers sharing many words collapses toward 0.
    assert expected > 0.1


def test_rouge_l_reads_a_numeric_reference_like_every_other_metric() -> None:
    per_sample, _ = M.compute_metrics(["2"], [2], metrics=["exact_match", "rouge_l", "word_f1"])
    assert per_sample[0] == {"exact_match": 1.0, "rouge_l": 1.0, "word_f1": 1.0}


def test_exact_match_ignores_spaces_between_chinese_characters() -> None:
    assert M.exact_match("左 肺", "左肺") == 1.0
    assert M.exact_match("左肺", "右肺") == 0.0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("The brain is not normal.", "Normal", 0.0),
        ("It isn't enlarged.", "Enlarged", 0.0),
        ("Non-enhancing lesion", "enhancing", 0.0),
        ("不正常", "正常", 0.0),  # Slake zh closed answers: 正常 / 不正常
        ("不对称", "对称", 0.0),
        ("不正常", "不正常", 1.0),
        ("It is not left, it is right.", "Right", 1.0),
        ("It is not left, it is right.", "Left", 0.0),
        ("The left side is normal.", "Normal", 1.0),
        ("It is not fused.", "not fused", 1.0),  # PathVQA
    ],
)
def test_closed_accuracy_does_not_credit_a_negated_answer(prediction: str, reference: str, expected: float) -> None:
    assert M.closed_accuracy(prediction, reference) == expected


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("Yes and no.", None),
        ("yes or no", None),
        ("Yes/No", None),
        ("No or yes?", None),
        ("Yes and no, it depends on the window.", None),
        ("Yes, no mass is seen.", "yes"),
        ("Yes and no mass is seen", "yes"),
        ("No, there is no effusion.", "no"),
    ],
)
def test_extract_yes_no_reads_a_hedge_as_no_answer(prediction: str, expected: str | None) -> None:
    assert extract_yes_no(prediction) == expected
    if expected is None:
        assert M.closed_accuracy(prediction, "yes") == M.closed_accuracy(prediction, "no") == 0.0


OPTIONS = {"A": "polyp", "B": "mass", "C": "cyst", "D": "normal mucosa"}


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("(B) or (C)", None),
        ("The answer is B or C.", None),
        ("Answer: A and B", None),
        ("Answer: B/C", None),
        ("Answer: B, C", None),
        ("B) or C)", None),
        ("(A) polyp (B) mass (C) cyst", None),  # the options read back
        ("Answer: A and the mass is benign", "A"),
        ("Answer: A, because of the stalk", "A"),
        ("The answer is (B).", "B"),
        ("B. mass", "B"),
        ("A mass.", "B"),  # the article, then option B's text
    ],
)
def test_extract_choice_two_letters_are_no_answer(prediction: str, expected: str | None) -> None:
    assert extract_choice(prediction, OPTIONS) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,000", "1000"), ("1,234,567 cells", "1234567 cells"), ("1,2", "1 2"), ("Left Lung, Right", "left lung right")],
)
def test_thousands_separators(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected
    assert M.exact_match("1000", "1,000") == 1.0


def test_slake_zh_closed_rows() -> None:
    """Real Slake zh closed rows: the reference itself and its negation."""
    rows = json.loads((SAMPLES / "slake_test_zh.json").read_text(encoding="utf-8"))
    rows = rows["rows"] if isinstance(rows, dict) else rows
    closed = [row for row in rows if row["answer_type"] == "CLOSED"]
    assert closed
    for row in closed:
        ref = row["answer"]
        assert M.closed_accuracy(ref, ref) == 1.0, ref
        negated = {"yes": "否", "no": "是"}.get(normalize_answer(ref), "不" + ref if not ref.startswith("不") else None)
        if negated is not None:
            assert M.closed_accuracy(negated, ref) == 0.0, (negated, ref)


def test_compute_metrics_takes_one_metric_name_as_a_string() -> None:
    assert M.compute_metrics(["Yes"], ["yes"], metrics="exact_match") == ([{"exact_match": 1.0}], {"exact_match": 1.0})
    with pytest.raises(M.MetricError, match=r"unknown metrics \['bleu'\]"):
        M.compute_metrics(["a"], ["a"], metrics="bleu")
