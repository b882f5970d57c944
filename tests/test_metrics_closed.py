"""Closed questions: an answer that is negated, hedged ("yes and no") or names two options is not a correct
closed answer, in English and in Slake's Chinese closed rows; a multiple-choice row's closed answer is the option
letter extracted from it, in every table and in medvl.compare's McNemar test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medvl.config import dataset_labels
from medvl.data.format import make_row
from medvl.evaluation import metrics as M
from medvl.evaluation.compare.runs import load_runs
from medvl.evaluation.compare.stats import pairwise_significance
from medvl.evaluation.extract import extract_choice, extract_yes_no
from medvl.evaluation.normalize import normalize_answer
from medvl.evaluation.report import write_reports
from medvl.evaluation.scoring import prediction_record, score

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


CHOICES = {"A": "mass", "B": "polyp", "C": "ulcer", "D": "normal"}


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("The image shows a polyp.", 0.0),  # the article is not option A
        ("This is a normal mucosa.", 0.0),
        ("It is an ulcer with a clot.", 0.0),
        ("B", 0.0),
        ("A", 1.0),
        ("(A) mass", 1.0),
        ("The answer is A.", 1.0),
        ("It is a mass.", 1.0),  # option A's text
    ],
)
def test_closed_accuracy_and_substring_match_on_a_multiple_choice_row_read_the_extracted_letter(
    prediction: str, expected: float
) -> None:
    for name in ("closed_accuracy", "substring_match"):
        assert M.METRICS[name].fn(prediction, "A", options=CHOICES) == expected, name
    per_sample, corpus = M.compute_metrics([prediction, prediction], ["A", "A"], ["CLOSED", "CLOSED"],
                                           metrics=["closed_accuracy", "substring_match"], options=[CHOICES, None])
    assert per_sample[0] == {"closed_accuracy": expected, "substring_match": expected}
    assert corpus["closed_accuracy"] == pytest.approx((expected + per_sample[1]["closed_accuracy"]) / 2)


def _choice_records(predictions: list[str]) -> list[dict]:
    rows = [make_row(f"r{i}", None, "What is shown?\nA. mass\nB. polyp\nC. ulcer\nD. normal", "A",
                     answer_type="CLOSED", category="closed_other", meta={"options": CHOICES})
            for i in range(len(predictions))]
    return [prediction_record(row, prediction) for row, prediction in zip(rows, predictions)]


def test_multiple_choice_closed_accuracy_reaches_the_tables_metrics_json_and_mcnemar(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"metrics": ["exact_match", "substring_match", "closed_accuracy"],
                            "bertscore": {"model": None, "num_layers": None, "dtype": "float32"}})
    runs = {"sentences": ["The image shows a polyp.", "This is a normal mucosa.", "It is an ulcer.", "A"],
            "letters": ["A", "A", "B", "A"]}
    for name, predictions in runs.items():
        records = _choice_records(predictions)
        tables = score(records, cfg, **dataset_labels("gmai_mmbench"))
        for record in records:
            scores = record["metrics"]
            assert scores["closed_accuracy"] == scores["substring_match"] == scores["choice_accuracy"], record
        expected = sum(r["metrics"]["choice_accuracy"] for r in records) / len(records)
        assert tables["closed"]["closed_accuracy"] == tables["by_category"]["closed_other"]["closed_accuracy"]
        assert tables["overall"]["closed_accuracy"] == tables["closed"]["closed_accuracy"] == expected
        (tmp_path / name).mkdir()
        write_reports(records, {**tables, "run": {"name": name}}, tmp_path / name)
        metrics_json = json.loads((tmp_path / name / "metrics.json").read_text(encoding="utf-8"))
        assert metrics_json["by_category"]["closed_other"]["closed_accuracy"] == expected
    assert expected == 0.75  # the letters' run; the sentences' run scores 1/4, not 3/4
    sentences, letters = load_runs([tmp_path / "sentences", tmp_path / "letters"])
    mcnemar = pairwise_significance(sentences, letters, n_boot=10)["mcnemar"]
    assert mcnemar["closed_accuracy"] == mcnemar["choice_accuracy"]
    assert (mcnemar["closed_accuracy"]["b"], mcnemar["closed_accuracy"]["c"]) == (0, 2)
