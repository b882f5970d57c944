"""Answer normalization and tokenization, which every metric reads text through."""

from __future__ import annotations

import pytest

from medvl.evaluation.metrics import exact_match
from medvl.evaluation.normalize import chars, normalize_answer, words


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  The Left  Lung. ", "the left lung"),
        ("X-Ray", "x ray"),
        ("2.5 cm.", "2.5 cm"),
        ("Don't know", "dont know"),
        ("Dyspnea, hemoptysis, chest pain", "dyspnea hemoptysis chest pain"),
        ("Yes.", "yes"),
        ("Y", "yes"),
        ("TRUE", "yes"),
        ("Correct!", "yes"),
        ("是", "yes"),
        ("是的", "yes"),
        ("n", "no"),
        ("False", "no"),
        ("否", "no"),
        ("不是", "no"),
        ("true lumen", "true lumen"),  # aliases apply to whole answers only
        ("左肺，右侧。", "左肺 右侧"),  # full-width punctuation
        ("１２ｍｍ", "12mm"),  # full-width digits and letters
        ("a ||| b\nc", "a b c"),
        ("", ""),
        ("   \n\t", ""),
        (None, ""),
        (3.5, ""),
        (float("nan"), ""),
        (["yes"], ""),
        (True, ""),
        (2, "2"),  # VQA counts stored as JSON numbers
    ],
)
def test_normalize_answer(text: object, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_words_split_chinese_per_character_and_english_on_spaces() -> None:
    assert words("Left lung, 左肺") == ["left", "lung", "左", "肺"]
    assert words("图中肺哪一个叶是正常的?") == list("图中肺哪一个叶是正常的")
    assert words("T2-weighted MRI") == ["t2", "weighted", "mri"]
    assert words(None) == []
    assert chars("Left lung") == list("leftlung")
    assert chars("左 肺") == ["左", "肺"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1,000", "1000"), ("1,234,567 cells", "1234567 cells"), ("1,2", "1 2"), ("Left Lung, Right", "left lung right")],
)
def test_thousands_separators(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected
    assert exact_match("1000", "1,000") == 1.0
