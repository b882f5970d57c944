"""Closed/open and category: the dataset's own labels first, documented rules otherwise."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from medvl.data.categorize import LABEL_TABLES, categorize
from medvl.data.converters import convert, partition
from medvl.data.format import make_row
from medvl.data.taxonomy import CATEGORIES

SAMPLES = Path(__file__).parent / "fixtures" / "samples"
DOCS = Path(__file__).parents[1] / "docs" / "taxonomy.md"


def sample(name: str):
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def row(question: str, answer: str, *, answer_type: str | None = None, source: str = "", **meta):
    return make_row("r", "a.jpg", question, answer, answer_type=answer_type, source=source, meta=meta)


def convert_json(tmp_path: Path, name: str, file: str, records, split: str, **options):
    (tmp_path / file).write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    rows, rejects = partition(convert(name, tmp_path, split, **options))
    assert rejects == []
    return rows


def test_slake_answer_type_is_the_datasets_own_on_every_sample_row(tmp_path: Path) -> None:
    records = sample("slake_train_en.json") + sample("slake_validate_en.json") + sample("slake_test_zh.json")
    rows = convert_json(tmp_path, "slake", "test.json", records, "test", lang="all")
    assert len(rows) == len(records) == 190
    assert [r["answer_type"] for r in rows] == [rec["answer_type"] for rec in records]
    assert all(r["meta"]["category_rule"].startswith("answer_type=dataset;") for r in rows)
    assert all(r["meta"]["category_rule"].split("; ")[1].startswith("category=slake.content_type=") for r in rows)


def test_dataset_answer_type_is_never_overridden() -> None:
    # Slake's "Which organ is abnormal, heart or lung?" is CLOSED although its answer is not yes/no,
    # and an OPEN row answered "yes" stays OPEN.
    assert categorize(row("Which organ is abnormal, heart or lung?", "Lung", answer_type="CLOSED",
                          source="slake", content_type="Abnormality"))[:2] == ("CLOSED", "closed_general")
    assert categorize(row("Where is the liver?", "yes", answer_type="OPEN"))[0] == "OPEN"
    assert categorize(row("Is it?", "no", answer_type=" closed "))[0] == "CLOSED"
    answer_type, _, rule = categorize(row("Is it?", "no", answer_type="MAYBE"))
    assert answer_type == "CLOSED" and "'MAYBE' unusable" in rule


def test_vqa_rad_labels_equal_dataset_answer_type(tmp_path: Path) -> None:
    records = sample("vqa_rad_test.json")
    rows = convert_json(tmp_path, "vqa_rad", "testset.json", records, "test")
    assert [r["answer_type"] for r in rows] == [rec["answer_type"] for rec in records]


@pytest.mark.parametrize(
    ("source", "label", "answer_type", "question", "answer", "expected"),
    [
        ("slake", "Organ", "CLOSED", "Does the picture contain liver?", "No", "closed_yes_no"),
        ("slake", "Organ", "CLOSED", "图片中包含脾脏吗?", "不包含", "closed_yes_no"),
        ("slake", "Size", "CLOSED", "Which is bigger in this image, heart or lung?", "Lung", "closed_general"),
        ("slake", "Position", "CLOSED", "Do the organs in the image exist in the pelvic cavity?", "No",
         "closed_location"),
        ("slake", "Modality", "CLOSED", "Is this image taken via X-Ray?", "Yes", "closed_modality"),
        ("slake", "Modality", "OPEN", "What modality is used to take this image?", "MRI", "open_description"),
        ("slake", "Organ", "OPEN", "What is the main organ in the image?", "Lung", "open_anatomy"),
        ("slake", "KG", "OPEN", "How to treat the disease located on the left of lung?", "Surgery", "open_impact"),
        ("slake", "Size", "OPEN", "What is the largest organ in the picture?", "Liver", "open_comparison"),
        ("slake", "Quantity", "OPEN", "How many kidneys in this image?", "2", "open_counting"),
        ("slake", "Color", "OPEN", "图中右肺显示什么颜色?", "黑色", "open_appearance"),
        ("vqa_rad", "POS", "OPEN", "Where is the spleen located?", "On the left", "open_location"),
        ("vqa_rad", "ABN, POS", "OPEN", "What pathology is seen? What side?", "right effusion", "open_abnormality"),
        ("vqa_rad", "PRES, POS", "CLOSED", "Is there a mass in the left lobe?", "yes", "closed_yes_no"),
        ("vqa_rad", "pos", "CLOSED", "Is the lesion on the left?", "yes", "closed_location"),
        ("vqa_rad", "PLANE", "CLOSED", "Is this an AP or PA film?", "AP", "closed_modality"),
        ("vqa_rad", "SIZE", "CLOSED", "Is the heart enlarged?", "No", "closed_yes_no"),
        ("vqa_rad", "COUNT", "OPEN", "How many lesions are there?", "3", "open_counting"),
        ("vqa_rad", "OTHER", "OPEN", "What is the widened mediastinum caused by?", "mass", "open_impact"),
        ("vqa_rad", "OTHER", "CLOSED", "Can a diagnosis of appendicitis be made?", "No", "closed_yes_no"),
        ("gmai_mmbench", "Disease Diagnosis", "CLOSED", "What is the diagnosis?\nA. x\nB. y", "A",
         "closed_general"),
    ],
)
def test_label_tables(source, label, answer_type, question, answer, expected) -> None:
    key = LABEL_TABLES[source][0]
    got = categorize(row(question, answer, answer_type=answer_type, source=source, **{key: label}))
    assert got[:2] == (answer_type, expected)
    assert (f"{source}.{key}=" in got[2]) and got[2].startswith("answer_type=dataset;")


@pytest.mark.parametrize(
    ("content_type", "question", "answer"),
    [
        # Real Slake Chinese test/train rows; their English twins ("Does the picture contain ...?") are yes/no.
        ("Organ", "这张图像里是否包含膀胱?", "不包含"),
        ("Organ", "胃是否存在于图像中?", "不存在"),
        ("Abnormality", "这张图片看起来是否正常?", "不正常"),
        ("Abnormality", "图片里是否存在异常?", "无异常"),
        ("KG", "图中有没有器官可以被用于呼吸?", "有"),
        ("KG", "图片中包含器官可以被用于排泄机体废物质?", "不包含"),  # polar by intonation alone
        ("Abnormality", "在这张图片中,右下肺可以观察到吗积液?", "可以"),  # 吗 misplaced
        ("Organ", "图片中包含脾脏吗?", "包含"),
        # A-not-A forms beyond Slake's.
        ("Abnormality", "肝脏是不是正常的?", "是"),
        ("KG", "这种病能不能治愈?", "能"),
        ("KG", "这个器官可不可以被切除?", "可以"),
        ("Abnormality", "病灶会不会扩散?", "不会"),
    ],
)
def test_chinese_polar_questions_are_yes_no(content_type: str, question: str, answer: str) -> None:
    got = categorize(row(question, answer, answer_type="CLOSED", source="slake", content_type=content_type))
    assert got[:2] == ("CLOSED", "closed_yes_no")
    assert got[2].endswith(f"slake.content_type={content_type}/yes_no"), got[2]


@pytest.mark.parametrize(
    ("answer_type", "question", "answer", "category"),
    [
        # Real Slake Chinese rows: choices (还是, 哪个) and questions with a question word stay out of yes/no, as
        # their English twins do ("How much damage will be caused ...?" "None").
        ("CLOSED", "相对于其他组织,脑肿瘤是白色的还是灰色的?", "白色", "closed_general"),
        ("CLOSED", "肺或者心脏哪个是异常的?", "肺", "closed_general"),
        ("CLOSED", "拍这样的图像会对身体造成多大的伤害?", "没有", "closed_general"),
        ("CLOSED", "图片中包含哪些疾病?", "没有", "closed_general"),
        ("CLOSED", "是否存在肺炎还是肺结核?", "肺炎", "closed_general"),
        # A dataset's OPEN stays OPEN whatever the question's form.
        ("OPEN", "图中是否有器官可以被用于呼吸? 是哪个?", "肺", "open_impact"),
        ("OPEN", "图中有没有异常?", "没有", "open_impact"),
    ],
)
def test_chinese_non_polar_questions(answer_type: str, question: str, answer: str, category: str) -> None:
    got = categorize(row(question, answer, answer_type=answer_type, source="slake", content_type="KG"))
    assert got[:2] == (answer_type, category)


def test_chinese_yes_no_in_the_closed_question_rules() -> None:
    """Unlabelled Chinese closed rows go through the same yes/no test as labelled ones."""
    assert categorize(row("这张图像里是否包含膀胱?", "不包含", answer_type="CLOSED"))[1] == "closed_yes_no"
    assert categorize(row("脑肿瘤是白色的还是灰色的?", "白色", answer_type="CLOSED"))[1] == "closed_general"


def test_label_not_in_table_falls_back_to_rules() -> None:
    _, category, rule = categorize(row("Where is the lesion?", "left", answer_type="OPEN", source="slake",
                                       content_type="Texture"))
    assert category == "open_location" and rule.endswith("question:location (slake.content_type=Texture not in table)")


@pytest.mark.parametrize(
    ("source", "question", "answer", "expected"),
    [
        # PathVQA: closed exactly when the answer is yes/no.
        ("pathvqa", "does this image show atherosclerosis?", "yes", ("CLOSED", "closed_yes_no")),
        ("pathvqa", "what is present?", "cardiovascular", ("OPEN", "open_description")),
        ("pathvqa", "where is the pacemaker?", "in the right ventricle", ("OPEN", "open_location")),
        ("pathvqa", "why is the bone expanded?", "due to a gelatinous tumour", ("OPEN", "open_impact")),
        ("pathvqa", "how many nuclei are visible?", "4", ("OPEN", "open_counting")),
        ("pathvqa", "what is the shape of the kidney?", "oval", ("OPEN", "open_appearance")),
        ("pathvqa", "what is the most likely diagnosis?", "sarcoma", ("OPEN", "open_abnormality")),
        ("pathvqa", "which organ is shown here?", "heart", ("OPEN", "open_anatomy")),
        ("pathvqa", "which lesion is bigger than the other one?", "the first", ("OPEN", "open_comparison")),
        # User rows: a choice question is closed whatever the answer.
        ("", "is the mass in the left or right lung?", "left", ("CLOSED", "closed_location")),
        # LLaVA-Med: long replies, choice questions, descriptions.
        ("llava_med", "Is this a CT or MRI?", "This is a CT scan of the abdomen.", ("CLOSED", "closed_modality")),
        ("llava_med", "Do you see an endotracheal tube?", "Yes, it is placed correctly.",
         ("CLOSED", "closed_yes_no")),
        ("llava_med", "Is the lesion benign or malignant?", "It appears malignant.", ("CLOSED", "closed_general")),
        ("llava_med", "Describe the image concisely.", "No evidence of fracture; the bones are intact.",
         ("OPEN", "open_description")),
        ("llava_med", "What imaging modality was used?", "MRI", ("OPEN", "open_description")),
        ("llava_med", "Summarize the visual content of the image.", "A histology slide.",
         ("OPEN", "open_description")),
    ],
)
def test_question_rules(source, question, answer, expected) -> None:
    answer_type, category, rule = categorize(row(question, answer, source=source))
    assert (answer_type, category) == expected
    assert "answer_type=dataset" not in rule and "category=question:" in rule


@pytest.mark.parametrize(
    ("question", "answer", "category"),
    [
        # Real PathVQA train rows that the choice rule ("what ..., X or Y?") used to mark CLOSED.
        ("what are basophilic (blue), eosinophilic (red), or nonstaining?", "peptide hormones",
         "open_description"),
        ("what are arranged in sheets, cords or aggregates and at places form pseudorosettes?", "tumour cells",
         "open_description"),
        ("what is stillbirth associated with, in which the midface structures are fused or ill-formed?",
         "a lethal malformation", "open_anatomy"),
        # Nor does any other question form make a PathVQA row CLOSED.
        ("Is this a CT or MRI?", "CT", "open_description"),
        ("Do you see an endotracheal tube?", "Yes, it is placed correctly.", "open_description"),
    ],
)
def test_pathvqa_is_closed_only_for_a_yes_no_answer(question: str, answer: str, category: str) -> None:
    answer_type, got, rule = categorize(row(question, answer, source="pathvqa"))
    assert (answer_type, got) == ("OPEN", category)
    assert rule.startswith("answer_type=not_yes_no_answer;"), rule
    assert categorize(row(question, "no", source="pathvqa"))[0] == "CLOSED"


def test_multiple_choice_rows_are_closed_without_a_label() -> None:
    got = categorize(row("Which?\nA. a\nB. b", "A", source="gmai_mmbench", options={"A": "a", "B": "b"}))
    assert got[:2] == ("CLOSED", "closed_general") and "multiple_choice" in got[2]


def test_every_eval_row_of_every_sample_gets_a_category(tmp_path: Path) -> None:
    cases = [
        ("slake", "test.json", sample("slake_validate_en.json") + sample("slake_test_zh.json"), {"lang": "all"}),
        ("vqa_rad", "testset.json", sample("vqa_rad_test.json"), {}),
        ("pathvqa", "test.json", sample("pathvqa_test.json"), {}),
    ]
    for name, file, records, options in cases:
        rows = convert_json(tmp_path, name, file, records, "test", **options)
        assert len(rows) == len(records)
        for r in rows:
            assert r["category"] in CATEGORIES and CATEGORIES[r["category"]][0] == r["answer_type"]


def test_docs_tables_match_code() -> None:
    """docs/taxonomy.md lists every label table entry exactly as the code maps it."""
    text = DOCS.read_text(encoding="utf-8")
    shown = {"by_answer_form": "yes/no → `closed_yes_no`, else `closed_general`", "by_question_rules": "question rules"}
    for _, table, _ in LABEL_TABLES.values():
        for label, (closed, open_) in table.items():
            line = f"| `{label}` | {shown.get(closed, f'`{closed}`')} | {shown.get(open_, f'`{open_}`')} |"
            assert line in text, line
    from medvl.data.categorize import CLOSED_RULES, OPEN_RULES

    for name, _, category in CLOSED_RULES + OPEN_RULES:
        assert re.search(rf"^\| `{name}` \|.*\| `{category}` \|$", text, re.M), name


@pytest.mark.parametrize("task", ["Muscle", "Nervous Tissue"])
def test_gmai_task_names_as_the_tsv_spells_them(task: str) -> None:
    # VLMEvalKit's per-task results for GMAI-MMBench_VAL name these two tasks without "Recognition";
    # a polar question of such a task must not leave the task's table for the question rules.
    row = make_row("g", "a.jpg", "Is this muscle the biceps?\nA. yes\nB. no", "A", source="gmai_mmbench",
                   meta={"task": task, "options": {"A": "yes", "B": "no"}})
    answer_type, category, rule = categorize(row)
    assert (answer_type, category) == ("CLOSED", "closed_general")
    assert rule.endswith(f"category=gmai_mmbench.task={task}"), rule
