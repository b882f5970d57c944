"""medvl.compare keeps every ``by_*`` breakdown of metrics.json (GMAI-MMBench's task, department,
granularity and modality; Slake's modality and content type; VQA-RAD's question type) in its markdown
and CSV tables, best in bold, and runs McNemar's test on multiple-choice accuracy as well as closed accuracy.

The eval directories are scored by medvl.eval's own ``score`` from hand-made predictions: no model runs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medvl.config import dataset_labels
from medvl.evaluation.compare import compare, load_runs, pairwise_significance
from medvl.evaluation.scoring import breakdown_labels, score

# (task, department, granularity, modality) of six GMAI-MMBench-like questions.
GMAI_META = [
    ("Disease Diagnosis", "Pulmonary Medicine", "image level", "CT"),
    ("Disease Diagnosis", "Pulmonary Medicine", "image level", "X-Ray"),
    ("Disease Diagnosis", "Neurology", "image level", "MRI"),
    ("Organ Recognition", "Neurology", "box level", "MRI"),
    ("Organ Recognition", "Urology", "mask level", "CT"),
    ("Organ Recognition", "Urology", "mask level", "CT"),
]
OPTIONS = {"A": "lung", "B": "liver", "C": "brain", "D": "kidney"}


def _score_cfg():
    return OmegaConf.create({"metrics": ["exact_match"],
                             "bertscore": {"model": None, "num_layers": None, "dtype": "float32"}})


def scored_eval_dir(path: Path, name: str, data: str, records: list[dict]) -> Path:
    """An eval directory as medvl.eval writes it, scored by medvl.eval's ``score`` from given predictions."""
    tables = score(records, _score_cfg(), **dataset_labels(data))
    tables["run"] = {"name": name, "ckpt": None, "model": "tiny", "data": data, "split": "test", "prompt": "default"}
    path.mkdir(parents=True)
    (path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (path / "metrics.json").write_text(json.dumps(tables), encoding="utf-8")
    return path


def _gmai_records(right: list[bool]) -> list[dict]:
    records = []
    for i, ((task, department, granularity, modality), correct) in enumerate(zip(GMAI_META, right)):
        # "Answer: B" is the right choice but no exact match: choice_accuracy and exact_match differ.
        records.append({"id": f"g{i}", "question": "Which organ?", "reference": "B",
                        "prediction": "Answer: B" if correct else "C", "category": "closed_choice",
                        "answer_type": "CLOSED", "nll": None, "n_tokens": 0, "perplexity": None,
                        "meta": {"task": task, "department": department, "granularity": granularity,
                                 "modality": modality, "options": OPTIONS}})
    return records


@pytest.fixture
def gmai_runs(tmp_path: Path) -> tuple[Path, Path]:
    weak = scored_eval_dir(tmp_path / "weak", "weak", "gmai_mmbench",
                           _gmai_records([True, False, False, False, True, False]))
    strong = scored_eval_dir(tmp_path / "strong", "strong", "gmai_mmbench",
                             _gmai_records([True, True, True, False, True, True]))
    return weak, strong


def test_gmai_task_department_granularity_and_modality_tables(gmai_runs, tmp_path: Path) -> None:
    result = compare(list(gmai_runs), out_dir=tmp_path / "out", n_boot=50, metrics=["choice_accuracy"])
    markdown = (tmp_path / "out" / "model_comparison_tables.md").read_text(encoding="utf-8")
    for title in ("## By task", "## By department", "## By granularity", "## By modality"):
        assert title in markdown
    lines = markdown.splitlines()
    # Disease Diagnosis: weak right on 1 of 3, strong on 3 of 3; Organ Recognition: 1 of 3 vs 2 of 3.
    assert "| Task | Metric | weak | strong |" in lines
    assert "| Disease Diagnosis | choice_accuracy ↑ | 0.3333 | **1.0000** |" in lines
    assert "| Organ Recognition | choice_accuracy ↑ | 0.3333 | **0.6667** |" in lines
    assert "| Disease Diagnosis | count | 3 | 3 |" in lines
    assert "| Pulmonary Medicine | choice_accuracy ↑ | 0.5000 | **1.0000** |" in lines
    assert "| Neurology | choice_accuracy ↑ | 0.0000 | **0.5000** |" in lines
    assert "| Urology | choice_accuracy ↑ | 0.5000 | **1.0000** |" in lines
    assert "| box level | choice_accuracy ↑ | 0.0000 | 0.0000 |" in lines  # all equal: no bold
    assert "| X-Ray | choice_accuracy ↑ | 0.0000 | **1.0000** |" in lines

    with (tmp_path / "out" / "model_comparison.csv").open(encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    task_rows = {(r["run"], r["group"]): r for r in records if r["breakdown"] == "task"}
    assert float(task_rows["strong", "Disease Diagnosis"]["value"]) == pytest.approx(1.0)
    assert task_rows["strong", "Disease Diagnosis"]["best"] == "True"
    assert task_rows["weak", "Disease Diagnosis"]["best"] == "False"
    assert task_rows["weak", "Disease Diagnosis"]["count"] == "3"
    assert {r["breakdown"] for r in records} == {"overall", "answer_type", "category", "task", "department",
                                                 "granularity", "modality"}
    # One table value per run, breakdown and group: a modality named like a department cannot collide.
    assert len({(r["run"], r["breakdown"], r["group"], r["metric"]) for r in records}) == len(records)
    assert result["table"] and all("breakdown" in r for r in result["table"])


def test_mcnemar_and_bootstrap_cover_multiple_choice_accuracy(gmai_runs) -> None:
    weak, strong = load_runs(list(gmai_runs))
    result = pairwise_significance(weak, strong, n_boot=100)
    choice = result["mcnemar"]["choice_accuracy"]
    # weak right on g0, g4; strong right on g0, g1, g2, g4, g5: b = 0, c = 3 over the 6 questions.
    assert (choice["n"], choice["b"], choice["c"], choice["method"]) == (6, 0, 3, "exact")
    assert result["bootstrap"]["choice_accuracy"]["diff"] == pytest.approx(3 / 6)


def test_mcnemar_section_of_significance_md_names_choice_accuracy(gmai_runs, tmp_path: Path) -> None:
    compare(list(gmai_runs), out_dir=tmp_path / "out", n_boot=20)
    text = (tmp_path / "out" / "significance.md").read_text(encoding="utf-8")
    assert any(line.startswith("| choice_accuracy | 6 | 0 | 3 | exact |") for line in text.splitlines())


def _short_records(field: str, labels: list[str], right: list[bool], prefix: str) -> list[dict]:
    return [{"id": f"{prefix}{i}", "question": "Is it normal?", "reference": "yes",
             "prediction": "yes" if ok else "no", "category": "closed_yes_no", "answer_type": "CLOSED",
             "nll": None, "n_tokens": 0, "perplexity": None, "meta": {field: label}}
            for i, (label, ok) in enumerate(zip(labels, right))]


@pytest.mark.parametrize("data, field, labels, title", [
    ("slake", "modality", ["CT", "CT", "MRI", "X-Ray"], "## By modality"),
    ("slake", "content_type", ["Organ", "Organ", "Position", "Position"], "## By content type"),
    ("vqa_rad", "question_type", ["ABN", "ABN, POS", "POS", "PRES"], "## By question type"),
])
def test_slake_and_vqa_rad_breakdowns_come_along(data, field, labels, title, tmp_path: Path) -> None:
    a = scored_eval_dir(tmp_path / "a", "A", data, _short_records(field, labels, [True, False, True, False], "s"))
    b = scored_eval_dir(tmp_path / "b", "B", data, _short_records(field, labels, [True, True, True, True], "s"))
    result = compare([a, b], out_dir=tmp_path / "out", n_boot=20, metrics=["exact_match"])
    markdown = (tmp_path / "out" / "model_comparison_tables.md").read_text(encoding="utf-8")
    assert title in markdown
    breakdown = field
    groups = {r["group"] for r in result["table"] if r["breakdown"] == breakdown}
    multi = field in dataset_labels(data)["multi_label"]
    expected = {label for value in labels for label in breakdown_labels(value, multi)}
    assert groups == expected
    value = {(r["run"], r["group"]): r["value"] for r in result["table"] if r["breakdown"] == breakdown}
    assert value["A", labels[0]] == pytest.approx(json.loads((a / "metrics.json").read_text())[f"by_{field}"]
                                                  [labels[0]]["exact_match"])
