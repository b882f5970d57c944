"""A dataset's own taxonomy (``data.categories``): declared in a data config, it decides which given categories
prepare keeps (undeclared or against the row's answer type: ``bad_category``), and evaluation's tables, report and
medvl.compare show its names, in its order, grouped closed/open by its answer types."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from medvl.config import BertScoreConfig, ConfigError
from medvl.data.converters import convert, partition
from medvl.data.format import make_row, read_jsonl
from medvl.data.row_checks import default_checks, first_problem
from medvl.data.taxonomy import TaxonomyError, declared_taxonomy, label_problem
from medvl.evaluation.compare import compare
from medvl.evaluation.run import data_taxonomy
from medvl.evaluation.scoring import score

from .conftest import compose_config, run_eval

#: Declared out of alphabetical order, so that the tables' order can only come from the declaration.
TAXONOMY = {"lesion_size": "OPEN", "lesion_present": "CLOSED"}
DATA_CONFIG = """\
name: lesions
format: llava
root: ???
dir: ???
categories:             # the order tables show them in
  lesion_size: OPEN
  lesion_present: CLOSED
"""


def _row(row_id: str, question: str, answer: str, **labels: str) -> dict:
    return {"id": row_id, "image": "a.png", **labels,
            "conversations": [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]}


def _lines(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def lesions(tmp_path: Path) -> tuple[Path, list[str]]:
    """(prepared folder, overrides): LLaVA-format rows with category fields under ``tmp_path/lesions`` and a data
    config that declares the taxonomy (found through hydra.searchpath, as a user's own config is)."""
    root = tmp_path / "lesions"
    root.mkdir()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(root / "a.png")
    (root / "train.jsonl").write_text(_lines([
        _row("t1", "Is there a lesion?", "yes", category="lesion_present"),
        _row("t2", "Describe the image.", "a round lesion"),  # training rows need no category
    ]))
    (root / "test.jsonl").write_text(_lines([
        _row("s1", "Is there a lesion?", "yes", category="lesion_present"),
        _row("s2", "How big is the lesion?", "two centimetres", category="lesion_size"),
        _row("s3", "Is the lesion benign?", "no", category="lesion_present", answer_type="closed"),
        _row("s4", "Is the liver normal?", "yes", category="closed_yes_no"),  # built-in, not declared
        _row("s5", "How big is it?", "small", category="lesion_size", answer_type="CLOSED"),  # declared OPEN
        _row("s6", "Is there a cyst?", "no"),  # no category in an evaluation split
    ]))
    conf = tmp_path / "myconf" / "data"
    conf.mkdir(parents=True)
    (conf / "lesions.yaml").write_text(DATA_CONFIG)
    own = [f"hydra.searchpath=[file://{tmp_path / 'myconf'}]", "data=lesions", f"data.root={root}",
           f"data.dir={tmp_path / 'prepared'}"]
    return tmp_path / "prepared", own


def _prepare(cache_dir: Path, overrides: list[str]) -> dict:
    from medvl.data.prepare import prepare

    return prepare(compose_config(cache_dir, "prepare", [*overrides, "model=tiny", "workers=1"]))


# --------------------------------------------------------------------------------------------
# The declaration


def test_a_declared_taxonomy_keeps_its_order_and_names() -> None:
    declared = OmegaConf.create({"categories": {"zeta": "OPEN", "alpha": "closed"}}).categories
    assert list(declared_taxonomy(declared).items()) == [("zeta", "OPEN"), ("alpha", "CLOSED")]
    assert declared_taxonomy(None) is None and declared_taxonomy({}) is None  # the built-in 12


@pytest.mark.parametrize("declared, words", [
    ({"size": "MAYBE"}, "data.categories.size must be CLOSED or OPEN"),
    ({"overall": "OPEN"}, "reserved"),
    ({" size": "OPEN"}, "not a usable category name"),
    ({"a|b": "OPEN"}, "not a usable category name"),
    (["size"], "must map category names"),
])
def test_an_unusable_declaration_is_one_line(declared, words) -> None:
    with pytest.raises(TaxonomyError, match=words.replace("|", r"\|")):
        declared_taxonomy(declared)


def test_the_data_config_schema_takes_the_declaration_and_refuses_other_answer_types(cache_dir) -> None:
    cfg = compose_config(cache_dir, "eval", ["data=llava", "+data.categories.lesion_present=CLOSED"])
    assert declared_taxonomy(cfg.data.categories) == {"lesion_present": "CLOSED"}
    assert declared_taxonomy(compose_config(cache_dir, "eval", ["data=slake"]).data.categories) is None
    assert compose_config(cache_dir, "eval", ["data=llava", "data.categories=null"]).data.categories is None
    with pytest.raises(Exception, match="lesion_present"):
        compose_config(cache_dir, "eval", ["data=llava", "+data.categories.lesion_present=MAYBE"])


def test_label_problem_names_undeclared_and_contradicting_categories() -> None:
    assert label_problem(TAXONOMY, "lesion_size", None) is None
    assert label_problem(TAXONOMY, "lesion_size", "open") is None
    assert "not declared in data.categories" in label_problem(TAXONOMY, "closed_yes_no", None)
    assert "lesion_size is OPEN" in label_problem(TAXONOMY, "lesion_size", "CLOSED")
    assert label_problem(None, "closed_yes_no", "CLOSED") is None  # the built-in taxonomy as before
    assert "not a taxonomy id" in label_problem(None, "lesion_size", None)


# --------------------------------------------------------------------------------------------
# Prepare


def test_converting_under_a_user_taxonomy(lesions, tmp_path) -> None:
    root = tmp_path / "lesions"
    rows, rejects = partition(convert("llava", root, "test", categories=TAXONOMY))
    assert [(r["id"], r["category"], r["answer_type"]) for r in rows] == [
        ("s1", "lesion_present", "CLOSED"), ("s2", "lesion_size", "OPEN"), ("s3", "lesion_present", "CLOSED"),
        ("s6", None, "CLOSED")]  # no category: the rules give the answer type only, they cannot name a user's
    assert [(r.source, r.reason) for r in rejects] == [("test.jsonl:line 4", "bad_category"),
                                                       ("test.jsonl:line 5", "bad_category")]
    assert "'closed_yes_no' is not declared in data.categories" in rejects[0].message
    assert "lesion_size is OPEN" in rejects[1].message
    # The same file under the built-in taxonomy: the user's names are what is undeclared.
    _, builtin_rejects = partition(convert("llava", root, "test"))
    assert [r.raw["id"] for r in builtin_rejects] == ["s1", "s2", "s3", "s5"]


def test_prepare_keeps_declared_categories_and_rejects_the_rest_with_reasons(cache_dir, lesions) -> None:
    out, own = lesions
    report = _prepare(cache_dir, own)
    assert [(r["id"], r["category"], r["answer_type"]) for r in read_jsonl(out / "test.jsonl")] == [
        ("s1", "lesion_present", "CLOSED"), ("s2", "lesion_size", "OPEN"), ("s3", "lesion_present", "CLOSED")]
    train = read_jsonl(out / "train.jsonl")
    assert [(r["id"], r["category"]) for r in train] == [("t1", "lesion_present"), ("t2", None)]
    rejects = {r["id"]: r["reason"] for r in read_jsonl(out / "rejects.jsonl")}
    assert rejects == {"s4": "bad_category", "s5": "bad_category", "s6": "missing_category"}
    assert report["data"]["categories"] == TAXONOMY
    table = (out / "categories.md").read_text()
    assert table.index("`lesion_size`") < table.index("`lesion_present`") and "closed_yes_no" not in table


def test_rows_of_a_users_own_converter_meet_the_taxonomy_in_the_row_checks(cache_dir, lesions, tmp_path,
                                                                          monkeypatch) -> None:
    """A ``data.format=module:function`` converter (the README's mydata example) fills the category itself."""
    (tmp_path / "mylesions.py").write_text(
        "from medvl.data.format import make_row\n\n"
        "def convert_mylesions(root, split):\n"
        "    for i, (q, a, cat, kind) in enumerate([('Is there a lesion?', 'yes', 'lesion_present', None),\n"
        "                                           ('How big?', '2 cm', 'lesion_size', 'CLOSED'),\n"
        "                                           ('Grade?', 'II', 'tumour_grade', None)]):\n"
        "        yield make_row(f'{split}-{i}', 'a.png', q, a, answer_type=kind, category=cat, source='mine')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out, own = lesions
    _prepare(cache_dir, [*own, "data.format=mylesions:convert_mylesions"])
    assert [(r["category"], r["answer_type"]) for r in read_jsonl(out / "test.jsonl")] == [
        ("lesion_present", "CLOSED")]
    rejects = [r for r in read_jsonl(out / "rejects.jsonl") if r["split"] == "test"]
    assert [(r["id"], r["reason"]) for r in rejects] == [("test-1", "bad_category"), ("test-2", "bad_category")]
    assert "tumour_grade" in rejects[1]["message"]


def test_the_row_checks_take_the_taxonomy() -> None:
    row = make_row("r", None, "Is there a lesion?", "yes", category="lesion_present", answer_type="CLOSED")
    checks = default_checks(require_category=True, categories=TAXONOMY)
    assert first_problem(row, Path("."), checks) is None
    assert first_problem(row | {"answer_type": "OPEN"}, Path("."), checks).reason == "bad_category"
    assert first_problem(row | {"category": "closed_yes_no"}, Path("."), checks).reason == "bad_category"
    assert first_problem(row | {"category": None}, Path("."), checks).reason == "missing_category"


# --------------------------------------------------------------------------------------------
# Evaluation


def _records() -> list[dict]:
    def record(i: int, category: str, reference: str, prediction: str) -> dict:
        # No answer_type: the declared one decides closed/open ("2 cm" would read as open, "yes" as closed).
        return {"id": f"q{i}", "question": "q?", "reference": reference, "prediction": prediction,
                "category": category, "answer_type": None, "meta": {}, "nll": None, "n_tokens": 0}

    return [record(0, "lesion_present", "2 cm", "2 cm"), record(1, "lesion_size", "yes", "no"),
            record(2, "lesion_present", "3 cm", "4 cm")]


def test_closed_and_open_follow_the_declared_answer_types_and_order() -> None:
    cfg = OmegaConf.create({"metrics": ["exact_match"], "bertscore": OmegaConf.structured(BertScoreConfig),
                            "data": {"categories": {"lesion_size": "OPEN", "lesion_present": "CLOSED"}}})
    tables = score(_records(), cfg)
    assert list(tables["by_category"]) == ["lesion_size", "lesion_present"]
    assert (tables["closed"]["count"], tables["open"]["count"]) == (2, 1)
    assert tables["closed"]["exact_match"] == 0.5 and tables["open"]["exact_match"] == 0.0
    assert tables["taxonomy"] == TAXONOMY


def test_eval_refuses_rows_whose_category_the_taxonomy_does_not_declare_before_loading_a_model() -> None:
    data = OmegaConf.create({"categories": TAXONOMY, "dir": "prepared"})
    with pytest.raises(ConfigError, match=r"does not declare closed_yes_no \(1 rows\)"):
        data_taxonomy(data, [{"category": "lesion_size"}, {"category": "closed_yes_no"}])
    assert data_taxonomy(OmegaConf.create({"categories": {}, "dir": "x"}), [{"category": "closed_yes_no"}]) is None


def test_eval_tables_report_and_compare_use_the_declared_names_in_order(cache_dir, lesions, tmp_path) -> None:
    _, own = lesions
    _prepare(cache_dir, own)
    # The taxonomy reaches evaluation from the data config alone: the command does not repeat it.
    run_eval(cache_dir, tmp_path / "eval_a", [*own, "model=tiny", "metrics=[exact_match]", "max_new_tokens=4"])
    a = tmp_path / "eval_a"
    metrics = json.loads((a / "metrics.json").read_text())
    assert list(metrics["by_category"]) == ["lesion_size", "lesion_present"]
    assert metrics["taxonomy"] == TAXONOMY
    assert (metrics["closed"]["count"], metrics["open"]["count"]) == (2, 1)
    with open(a / "by_category.csv", newline="") as f:
        lines = list(csv.DictReader(f))
    assert [(r["category"], r["answer_type"], r["count"]) for r in lines] == [
        ("lesion_size", "OPEN", "1"), ("lesion_present", "CLOSED", "2"), ("overall", "", "3"), ("closed", "", "2"),
        ("open", "", "1")]
    tables_md = (a / "tables.md").read_text()
    assert tables_md.index("| lesion_size |") < tables_md.index("| lesion_present |")
    page = (a / "report.html").read_text()  # the predictions browser's category filter: the tables' order too
    assert page.index('<option value="lesion_size">') < page.index('<option value="lesion_present">')
    assert OmegaConf.load(a / "eval_config.yaml").data.categories == TAXONOMY

    b = tmp_path / "eval_b"
    shutil.copytree(a, b)
    metrics["run"]["name"] = "other"
    (b / "metrics.json").write_text(json.dumps(metrics))
    result = compare([a, b], out_dir=tmp_path / "cmp", n_boot=50)
    groups = [r["group"] for r in result["table"] if r["breakdown"] == "category" and r["run"] == "other"]
    assert list(dict.fromkeys(groups)) == ["lesion_size", "lesion_present"]
    comparison = (tmp_path / "cmp" / "model_comparison_tables.md").read_text()
    assert comparison.index("| lesion_size |") < comparison.index("| lesion_present |")
    assert "lesion_size" in (tmp_path / "cmp" / "model_comparison.html").read_text()
