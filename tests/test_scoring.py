"""The one scoring path (medvl.evaluation.scoring): metric directions read from the registry, breakdown
tables that a dataset's config file declares (also for a run saved before data configs named them), the
one prediction record, and the one reading of an answer-type label."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medvl.config import add_dataset_labels, dataset_labels
from medvl.data.format import make_row
from medvl.data.taxonomy import normalize_answer_type
from medvl.evaluation import metrics as M
from medvl.evaluation.metrics import make_corpus_fn
from medvl.evaluation.scoring import breakdown_labels, prediction_record, score

CFG = OmegaConf.create({"metrics": ["exact_match", "word_f1", "bleu4"],
                        "bertscore": {"model": None, "num_layers": None, "dtype": "float32"}})


def _records(metas: list[dict], answers: list[str]) -> list[dict]:
    """Records of "Which organ?" rows answered ``answers`` (reference "liver"), each with its NLL."""
    rows = [make_row(f"r{i}", None, "Which organ?", "liver", answer_type="OPEN", category="open_anatomy", meta=meta)
            for i, meta in enumerate(metas)]
    return [prediction_record(row, answer, nll=1.0 + i, n_tokens=2) for i, (row, answer) in enumerate(zip(rows, answers))]


def test_every_value_scoring_reports_has_a_registered_direction() -> None:
    records = _records([{"options": {"A": "liver", "B": "lung"}}, {}], ["A) liver", "lung"])
    records[0]["reference"] = "A"
    tables = score(records, CFG)
    reported = {name for group in ("overall", "closed", "open") for name in tables[group] if name != "count"}
    reported |= {name for record in records for name in record["metrics"]}
    assert {"choice_accuracy", "perplexity", "perplexity_median", "nll_per_token", "exact_match"} <= reported
    directions = {name: M.higher_is_better(name) for name in reported}
    assert {name for name, higher in directions.items() if not higher} == {"perplexity", "perplexity_median",
                                                                          "nll_per_token"}
    with pytest.raises(M.MetricError, match="unknown metric 'loss'"):
        M.higher_is_better("loss")
    # The text registry compute_metrics runs over is unchanged: the record scores are not text metrics.
    assert not set(M.RECORD_METRICS) & set(M.METRICS)


def test_the_record_holds_the_reference_answers_likelihood() -> None:
    row = make_row("r0", "a.png", "Which organ?", "liver", category="open_anatomy", meta={"modality": "CT"})
    record = prediction_record(row, "the liver", nll=2.0, n_tokens=2)
    assert record == {"id": "r0", "question": "Which organ?", "reference": "liver", "prediction": "the liver",
                      "category": "open_anatomy", "answer_type": None, "meta": {"modality": "CT"},
                      "nll": 2.0, "n_tokens": 2, "perplexity": pytest.approx(math.e)}
    assert prediction_record(row, "liver")["perplexity"] is None


def _dataset_config(tmp_path: Path) -> Path:
    """A dataset registered the documented way: its own file under conf/data/ naming its label columns."""
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "tumour.yaml").write_text(
        "name: tumour\nformat: medvl\nroot: /data/tumour\ndir: ${data.root}\n"
        "breakdowns: [grade, site]\nmulti_label: [site]\n")
    return tmp_path / "conf"


def test_a_dataset_config_names_its_breakdown_tables(compose, tmp_path: Path) -> None:
    conf = _dataset_config(tmp_path)
    cfg = compose(["data=tumour", f"hydra.searchpath=[file://{conf}]"], config_name="eval")
    assert list(cfg.data.breakdowns) == ["grade", "site"] and list(cfg.data.multi_label) == ["site"]
    records = _records([{"grade": "G1", "site": "liver, lung"}, {"grade": "G2", "site": "liver"},
                        {"grade": "G1"}], ["liver", "lung", "liver"])
    tables = score(records, CFG, cfg.data.breakdowns, cfg.data.multi_label)
    assert {k: v["count"] for k, v in tables["by_grade"].items()} == {"G1": 2, "G2": 1}
    # site lists several labels: the first row counts under liver and under lung; the third has none.
    assert {k: v["count"] for k, v in tables["by_site"].items()} == {"liver": 2, "lung": 1}
    assert tables["by_site"]["liver"]["exact_match"] == pytest.approx(0.5)
    assert tables["by_grade"]["G1"]["perplexity"] == pytest.approx(math.exp((1.0 + 3.0) / 4))
    assert "by_modality" not in score(records, CFG)  # nothing is a breakdown unless the dataset says so


def test_the_shipped_dataset_configs_name_their_breakdowns() -> None:
    assert dataset_labels("slake") == {"breakdowns": ["modality", "content_type"], "multi_label": []}
    assert dataset_labels("vqa_rad") == {"breakdowns": ["question_type"], "multi_label": ["question_type"]}
    assert dataset_labels("gmai_mmbench")["breakdowns"] == ["task", "department", "granularity", "modality"]
    assert dataset_labels("pathvqa") == dataset_labels("no_such_dataset") == {"breakdowns": [], "multi_label": []}


@pytest.mark.parametrize("saved, expected", [
    ({"name": "vqa_rad"}, {"breakdowns": ["question_type"], "multi_label": ["question_type"]}),
    ({"name": "pathvqa"}, {"breakdowns": [], "multi_label": []}),
    ({"name": "slake", "breakdowns": ["location"]}, {"breakdowns": ["location"], "multi_label": []}),
])
def test_a_run_saved_before_data_configs_named_breakdowns_gets_its_datasets(compose, saved: dict,
                                                                           expected: dict) -> None:
    # medvl.eval's default data (synth) has a breakdown of its own; the run's dataset must not inherit it.
    cfg = compose([], config_name="eval")
    assert list(cfg.data.breakdowns) == ["modality"]
    run_config = OmegaConf.create({"data": {"format": "medvl", "root": "/r", "dir": "/d", **saved}})
    add_dataset_labels(run_config)
    data = OmegaConf.merge(cfg.data, run_config.data)  # as +ckpt= evaluation takes the run's data group
    assert {key: list(data[key]) for key in expected} == expected
    add_dataset_labels(None)  # a model directory without a run config
    add_dataset_labels(OmegaConf.create({"model": {}}))


@pytest.mark.parametrize("label, expected", [
    ("CLOSED", "CLOSED"), (" open ", "OPEN"), ("closed", "CLOSED"), ("yes/no", None), (None, None), (1, None)])
def test_an_answer_type_label_is_read_in_one_place(label: object, expected: str | None) -> None:
    assert normalize_answer_type(label) == expected
    # Scoring's answer type follows the label (a yes/no reference would otherwise make the row closed).
    assert M.resolve_answer_type(label, "yes") == (expected or "CLOSED")


def _score_cfg(metrics: list[str]):
    return OmegaConf.create({"metrics": metrics, "bertscore": {"model": None, "num_layers": None,
                                                               "dtype": "float32"}})


def _record(i: int, modality: str | None, reference: str, prediction: str, nll: float, n: int) -> dict:
    return {"id": f"r{i}", "question": "q", "reference": reference, "prediction": prediction,
            "category": "open_anatomy", "answer_type": "OPEN",
            "meta": None if modality is None else {"modality": modality},
            "nll": nll, "n_tokens": n, "perplexity": math.exp(nll / n)}


def test_breakdowns_use_corpus_scores_and_corpus_perplexity_like_categories():
    records = [
        _record(0, "CT", "the left lung", "the left lung", 1.0, 2),
        _record(1, "CT", "a round mass in the liver", "a mass in the liver", 6.0, 3),
        _record(2, "MRI", "brain", "brain", 0.5, 1),
        _record(3, "MRI", "two small lesions", "one lesion", 9.0, 4),
        _record(4, None, "heart", "lung", 2.0, 2),  # a row without meta is left out of the breakdown
    ]
    names = ["exact_match", "bleu4", "cider"]
    tables = score(records, _score_cfg(names), **dataset_labels("synth"))
    corpus_fn = make_corpus_fn([r["prediction"] for r in records], [r["reference"] for r in records],
                               metrics=names)
    for modality, indices in (("CT", [0, 1]), ("MRI", [2, 3])):
        group = tables["by_modality"][modality]
        assert group["count"] == 2
        # BLEU-4 and CIDEr of the group's rows as a corpus, as by_category reports them.
        for name, value in corpus_fn(indices).items():
            assert group[name] == pytest.approx(value), (modality, name)
        nll = sum(records[i]["nll"] for i in indices)
        n = sum(records[i]["n_tokens"] for i in indices)
        assert group["perplexity"] == pytest.approx(math.exp(nll / n))
        assert "nll_per_token" not in group
    assert set(tables["by_modality"]) == {"CT", "MRI"}


def test_perplexity_is_not_reported_for_a_group_where_only_some_rows_have_it():
    records = [_record(0, "CT", "a", "a", 1.0, 2), _record(1, "CT", "b", "b", 2.0, 2)]
    records[1].update(nll=None, n_tokens=0, perplexity=None)
    tables = score(records, _score_cfg(["exact_match"]), **dataset_labels("synth"))
    assert "perplexity" not in tables["overall"] and "perplexity" not in tables["by_modality"]["CT"]


def test_a_vqa_rad_row_with_two_question_types_counts_under_each():
    assert breakdown_labels("ABN, POS", multi_label=True) == ["ABN", "POS"]
    assert breakdown_labels(None, multi_label=True) == []
    assert breakdown_labels("Organ, Position") == ["Organ, Position"]  # Slake's content_type is one label
    records = [_record(i, None, "lung", pred, 1.0, 1) for i, pred in enumerate(["lung", "heart", "lung"])]
    for record, qtype in zip(records, ["ABN, POS", "ABN", "POS"]):
        record["meta"] = {"question_type": qtype}
    tables = score(records, _score_cfg(["exact_match"]), **dataset_labels("vqa_rad"))
    assert set(tables["by_question_type"]) == {"ABN", "POS"}
    assert tables["by_question_type"]["ABN"]["count"] == 2
    assert tables["by_question_type"]["ABN"]["exact_match"] == pytest.approx(0.5)
    assert tables["by_question_type"]["POS"]["exact_match"] == pytest.approx(1.0)


def test_closed_and_open_metrics_follow_the_answer_type_the_tables_use():
    # No answer_type: the category says CLOSED (an "A or B?" question), although the reference is not yes/no.
    records = [_record(0, None, "Left", "The left one.", 1.0, 1), _record(1, None, "yes", "Yes.", 1.0, 1)]
    records[0].update(category="closed_location", answer_type=None)
    records[1].update(category="mystery", answer_type=None)  # unknown category: yes/no reference -> CLOSED
    tables = score(records, _score_cfg(["closed_accuracy", "open_recall"]), **dataset_labels("synth"))
    for record in records:
        assert record["metrics"]["closed_accuracy"] == 1.0 and "open_recall" not in record["metrics"]
    assert tables["closed"]["count"] == 2 and tables["closed"]["closed_accuracy"] == 1.0
    assert tables["open"]["count"] == 0


def test_a_lowercase_letter_reference_is_matched():
    record = {**_record(0, None, "b", "(B) polyp", 1.0, 1), "answer_type": "CLOSED"}
    record["meta"] = {"options": {"A": "mass", "B": "polyp"}}
    score([record], _score_cfg(["exact_match"]), **dataset_labels("gmai_mmbench"))
    assert record["extracted_choice"] == "B" and record["metrics"]["choice_accuracy"] == 1.0
