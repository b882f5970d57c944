from __future__ import annotations

import json
from pathlib import Path

import pytest

from medvl.evaluation.extract import extract_choice, extract_yes_no

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("Yes", "yes"),
        ("yes.", "yes"),
        ("NO!", "no"),
        ("Y", "yes"),
        ("True", "yes"),
        ("correct", "yes"),
        ("false", "no"),
        ("Yes, the liver is enlarged.", "yes"),
        ("There is no pleural effusion.", "no"),
        ("No, there is no sign of a mass.", "no"),
        ("Yes, no mass is seen.", "yes"),  # the first decision wins
        # Whole words only: LLaVA-Med's substring test reads these as "no" / "yes".
        ("The image is normal.", None),
        ("The eyes are symmetric.", None),
        ("Abnormal opacity in the left lung.", None),
        # Chinese (Slake zh): leading word, else an unambiguous phrase.
        ("是", "yes"),
        ("是的", "yes"),
        ("是的，肺是异常的。", "yes"),
        ("否", "no"),
        ("不是", "no"),
        ("包含", "yes"),
        ("不包含", "no"),
        ("图片中不包含脾脏。", "no"),
        ("图片中包含脾脏。", "yes"),
        ("不正常", None),
        ("这是横断面", None),
        ("", None),
        ("   ", None),
        (None, None),
        (3.0, None),
        (float("nan"), None),
    ],
)
def test_extract_yes_no(prediction: object, expected: str | None) -> None:
    assert extract_yes_no(prediction) == expected


OPTIONS = {
    "A": "barrett's esophagus",
    "B": "gastrointestinal tract cancer",
    "C": "high-grade dysplasia",
    "D": "polyp",
    "E": None,
}


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("[B]", "B"),
        ("B.", "B"),
        ("Answer: B", "B"),
        ("answer: b", "B"),
        ("The correct answer is (C).", "C"),
        ("The answer is D, polyp.", "D"),
        ("Option A", "A"),
        ("B. gastrointestinal tract cancer", "B"),
        ("C) high-grade dysplasia", "C"),
        ("(D) polyp", "D"),
        ("（D）", "D"),  # full-width brackets
        ("polyp", "D"),
        ("It looks like a polyp.", "D"),
        ("High-grade dysplasia.", "C"),
        ("Barrett's esophagus", "A"),
        # Not an answer, or more than one.
        ("E", None),  # option E has no text in this row
        ("F", None),
        ("A mass is seen in the stomach.", None),  # the article is not option A
        ("the answer is a mass", None),
        ("polyp or high-grade dysplasia", None),
        ("I cannot tell.", None),
        ("", None),
        (None, None),
        (2, None),
    ],
)
def test_extract_choice(prediction: object, expected: str | None) -> None:
    assert extract_choice(prediction, OPTIONS) == expected


def test_extract_choice_prefers_the_longer_of_nested_option_texts() -> None:
    options = {"A": "liver", "B": "liver cancer", "C": "lung"}
    assert extract_choice("This is liver cancer.", options) == "B"
    assert extract_choice("The liver.", options) == "A"
    assert extract_choice("The lung and the liver.", options) is None


def test_extract_choice_without_usable_options() -> None:
    assert extract_choice("A", {}) is None
    assert extract_choice("A", {"A": None, "B": "  "}) is None


def test_extract_choice_on_gmai_mmbench_rows() -> None:
    rows = json.loads((FIXTURES / "gmai_choice_rows.json").read_text(encoding="utf-8"))["rows"]
    assert len(rows) == 12
    for row in rows:
        assert extract_choice(row["prediction"], row["options"]) == row["expected_choice"], row["prediction"]


AUDIT_OPTIONS = {"A": "mass", "B": "polyp", "C": "ulcer", "D": "normal mucosa"}


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        # A letter that opens the answer wins over the options its explanation names.
        ("B. Polyp. Option A is unlikely because the lesion is pedunculated.", "B"),
        ("B\nOption A (mass) would appear irregular.", "B"),
        ("(B) polyp; choice C is ruled out.", "B"),
        ("B. polyp (not A. mass)", "B"),
        # A statement of the answer, the last one, wins over a leading letter.
        ("The lesion is a polyp, so the answer is B.", "B"),
        ("Option A is unlikely; the answer is C.", "C"),
        ("The answer is C. Option A is unlikely.", "C"),
        ("A. Mass is not seen here. The answer is B.", "B"),
        ("A: no. B: yes. So the answer is B.", "B"),
        ("So the answer should be option B", "B"),
        # An option chosen in words.
        ("Option B is correct.", "B"),
        ("I choose option B.", "B"),
        ("Therefore, choice B.", "B"),
        ("I'd go with option C.", "C"),
        ("I would pick D.", "D"),
        # "option X" / "choice X" only where it states the answer.
        ("The answer is option B", "B"),
        ("Option: B", "B"),
        ("Answer: (B)", "B"),
        ("The correct option is D.", "D"),
        ("Option A is unlikely.", None),
        ("Polyp. Option A is unlikely.", "B"),  # no letter chosen: option B's text
        ("It is not a mass; it is a polyp.", None),
    ],
)
def test_extract_choice_reads_the_answer_statement_then_the_leading_letter_then_a_chosen_option(
    prediction: str, expected: str | None
) -> None:
    assert extract_choice(prediction, AUDIT_OPTIONS) == expected
