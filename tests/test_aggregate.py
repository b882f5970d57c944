from __future__ import annotations

import pytest

from medvl.data.taxonomy import CATEGORIES
from medvl.evaluation.aggregate import UNCATEGORIZED, aggregate
from medvl.evaluation.metrics import compute_metrics, make_corpus_fn

TOL = 1e-6


def test_means_by_hand() -> None:
    # Two closed yes/no rows scoring 1.0 and four open location rows scoring 0.25:
    # overall (1.0*2 + 0.25*4) / (2+4) = 0.5.
    rows = [{"category": "closed_yes_no", "answer_type": "CLOSED"}] * 2 + [
        {"category": "open_location", "answer_type": "OPEN"}
    ] * 4
    per_sample = [{"exact_match": 1.0}] * 2 + [{"exact_match": 0.25}] * 4
    result = aggregate(rows, per_sample)
    assert result["overall"] == {"exact_match": pytest.approx(0.5), "count": 6}
    assert result["closed"] == {"exact_match": 1.0, "count": 2}
    assert result["open"] == {"exact_match": 0.25, "count": 4}
    assert result["by_category"] == {
        "closed_yes_no": {"exact_match": 1.0, "count": 2},
        "open_location": {"exact_match": 0.25, "count": 4},
    }


def test_metrics_only_average_over_rows_that_have_them() -> None:
    rows = [
        {"category": "closed_yes_no", "answer_type": "CLOSED"},
        {"category": "closed_yes_no", "answer_type": "CLOSED"},
        {"category": "open_abnormality", "answer_type": "OPEN"},
    ]
    per_sample = [
        {"word_f1": 1.0, "closed_accuracy": 1.0},
        {"word_f1": 0.0, "closed_accuracy": 0.0},
        {"word_f1": 0.5, "open_recall": 0.75},
    ]
    result = aggregate(rows, per_sample)
    assert result["overall"] == {"word_f1": pytest.approx(0.5), "closed_accuracy": 0.5, "open_recall": 0.75, "count": 3}
    assert result["closed"] == {"word_f1": 0.5, "closed_accuracy": 0.5, "count": 2}
    assert result["open"] == {"word_f1": 0.5, "open_recall": 0.75, "count": 1}


def test_corpus_fn_recomputes_corpus_metrics_per_group() -> None:
    rows = [
        {"category": "closed_yes_no", "answer_type": "CLOSED"},
        {"category": "open_counting", "answer_type": "OPEN"},
    ] * 2
    per_sample = [{"exact_match": 1.0, "bleu4": 0.9}, {"exact_match": 0.0, "bleu4": 0.1}] * 2
    calls: list[list[int]] = []

    def corpus_fn(indices):
        calls.append(list(indices))
        return {"bleu4": 100.0 + len(indices)}  # stands in for a real corpus score

    result = aggregate(rows, per_sample, corpus_fn)
    assert result["overall"] == {"exact_match": 0.5, "bleu4": 104.0, "count": 4}
    assert result["closed"] == {"exact_match": 1.0, "bleu4": 102.0, "count": 2}
    assert result["by_category"]["open_counting"] == {"exact_match": 0.0, "bleu4": 102.0, "count": 2}
    assert sorted(calls) == sorted([[0, 1, 2, 3], [0, 2], [1, 3], [0, 2], [1, 3]])
    # Without corpus_fn, a corpus metric falls back to the mean of its per-sample scores.
    assert aggregate(rows, per_sample)["overall"]["bleu4"] == pytest.approx(0.5)


def test_missing_or_unknown_categories_never_crash() -> None:
    rows = [
        {"answer_type": "OPEN"},  # no category
        {"category": None, "answer_type": "CLOSED"},
        {"category": "open_anatomy"},  # answer type from the taxonomy
        {"category": "made_up"},  # unknown category, no answer type: overall only
        {},
    ]
    per_sample = [{"exact_match": v} for v in (1.0, 0.0, 1.0, 0.0, 1.0)]
    result = aggregate(rows, per_sample)
    assert result["overall"] == {"exact_match": pytest.approx(0.6), "count": 5}
    assert result["closed"] == {"exact_match": 0.0, "count": 1}
    assert result["open"] == {"exact_match": 1.0, "count": 2}
    assert list(result["by_category"]) == ["open_anatomy", "made_up", UNCATEGORIZED]
    assert result["by_category"][UNCATEGORIZED] == {"exact_match": pytest.approx(2 / 3), "count": 3}


def test_empty_groups_and_empty_input() -> None:
    result = aggregate([{"category": "closed_modality", "answer_type": "closed"}], [{"exact_match": 1.0}])
    assert result["closed"] == {"exact_match": 1.0, "count": 1}  # answer type is case-insensitive
    assert result["open"] == {"count": 0}
    assert aggregate([], [], lambda indices: {"bleu4": 1.0}) == {
        "overall": {"count": 0},
        "closed": {"count": 0},
        "open": {"count": 0},
        "by_category": {},
    }
    with pytest.raises(ValueError):
        aggregate([{}], [])


def test_categories_follow_taxonomy_order() -> None:
    ids = list(CATEGORIES)
    rows = [{"category": c} for c in reversed(ids)]
    result = aggregate(rows, [{} for _ in rows])
    assert list(result["by_category"]) == ids
    assert result["closed"]["count"] == 4 and result["open"]["count"] == 8


def test_with_real_metrics_end_to_end() -> None:
    rows = [
        {"category": "closed_yes_no", "answer_type": "CLOSED", "answer": "Yes", "prediction": "Yes, it does."},
        {"category": "closed_yes_no", "answer_type": "CLOSED", "answer": "No", "prediction": "Yes"},
        {"category": "open_anatomy", "answer_type": "OPEN", "answer": "Right Lung", "prediction": "The right lung"},
        {"category": "open_anatomy", "answer_type": "OPEN", "answer": "Liver", "prediction": ""},
    ]
    preds, refs = [r["prediction"] for r in rows], [r["answer"] for r in rows]
    metrics = ["exact_match", "closed_accuracy", "open_recall", "bleu4", "cider"]
    per_sample, corpus = compute_metrics(preds, refs, [r["answer_type"] for r in rows], metrics=metrics)
    result = aggregate(rows, per_sample, make_corpus_fn(preds, refs, metrics=metrics))
    overall = dict(result["overall"])
    assert overall.pop("count") == 4
    assert overall == pytest.approx(corpus)
    assert result["closed"]["closed_accuracy"] == 0.5
    assert result["open"]["open_recall"] == 0.5
    assert "open_recall" not in result["closed"]


def test_cider_of_a_subset_uses_the_whole_sets_document_frequencies() -> None:
    rows = [
        {"category": "a", "answer_type": "OPEN", "answer": "left lung", "prediction": "left lung"},
        {"category": "a", "answer_type": "OPEN", "answer": "liver", "prediction": "the heart"},
        {"category": "b", "answer_type": "CLOSED", "answer": "yes", "prediction": "yes"},
        {"category": "c", "answer_type": "OPEN", "answer": "right kidney", "prediction": "right kidney"},
    ]
    preds, refs = [r["prediction"] for r in rows], [r["answer"] for r in rows]
    per_sample, corpus = compute_metrics(preds, refs, [r["answer_type"] for r in rows], metrics=["cider"])
    tables = aggregate(rows, per_sample, make_corpus_fn(preds, refs, metrics=["cider"]))
    # Re-scored alone, a one-row category has IDF log(1) - log(1) = 0: CIDEr 0 for a perfect answer.
    assert tables["by_category"]["c"]["cider"] == pytest.approx(per_sample[3]["cider"], abs=TOL)
    assert tables["by_category"]["c"]["cider"] > 1.0
    assert tables["closed"]["cider"] > 1.0  # every closed reference is "yes"
    # Groups average to the overall score, as every other table row does.
    assert tables["overall"]["cider"] == pytest.approx(corpus["cider"], abs=TOL)
    assert tables["by_category"]["a"]["cider"] == pytest.approx(
        (per_sample[0]["cider"] + per_sample[1]["cider"]) / 2, abs=TOL
    )
