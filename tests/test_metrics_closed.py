"""Closed questions: an answer that is negated, hedged ("yes and no") or names two options is not a correct
closed answer, in English and in Slake's Chinese closed rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medvl.evaluation import metrics as M
from medvl.evaluation.extract import extract_choice, extract_yes_no
from medvl.evaluation.normalize import normalize_answer

SAMPLES = Path(__file__).parent / "fixtures" / "samples"  # verbatim copies of ../shared/samples


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
