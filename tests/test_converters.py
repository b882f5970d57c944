"""Converters on real sample rows (tests/fixtures/samples, copied verbatim from ../shared/samples)
and on every kind of bad row. Images are stand-ins written under tmp_path at the referenced paths."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from medvl.data.converters import CONVERTERS, REASONS, Reject, convert, partition
from medvl.data.format import IMAGE_TOKEN, answer_of, image_paths, question_of
from medvl.data.row_checks import default_checks, first_problem
from medvl.data.taxonomy import CATEGORIES

SAMPLES = Path(__file__).parent / "fixtures" / "samples"
GMAI_COLUMNS = ["index", "question", "A", "B", "C", "D", "E", "answer", "category", "clinical vqa task",
                "department", "perceptual granularity", "modality", "original task"]

# Reasons each test below produces, collected to check that every converter reason is exercised.
EXERCISED: set[str] = set()


def sample(name: str):
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


def stand_in_images(root: Path, rows: list[dict]) -> None:
    for row in rows:
        for rel in image_paths(row):
            path = root / rel
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (120, 60, 30)).save(path)


def png_b64(color=(10, 200, 30)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (6, 5), color).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def run(name: str, root: Path, split: str, **options):
    rows, rejects = partition(convert(name, root, split, **options))
    EXERCISED.update(r.reason for r in rejects)
    return rows, rejects


def assert_valid(rows: list[dict], root: Path, require_category: bool = True) -> None:
    """Converted rows pass every processor-free row check once their images exist."""
    stand_in_images(root, rows)
    checks = default_checks(require_category=require_category)
    assert [(row["id"], first_problem(row, root, checks)) for row in rows] == [(row["id"], None) for row in rows]
    for row in rows:
        assert json.loads(json.dumps(row, ensure_ascii=False)) == row  # writable as JSONL
        assert row["category"] in CATEGORIES
        assert CATEGORIES[row["category"]][0] == row["answer_type"]
        assert "category_rule" in row["meta"]


def reasons(rejects: list[Reject]) -> list[str]:
    return [r.reason for r in rejects]


# --- Slake -----------------------------------------------------------------------------------


@pytest.fixture
def slake_root(tmp_path: Path) -> Path:
    root = tmp_path / "Slake1.0"
    # Each Slake file mixes languages; train gets the English train rows plus the Chinese rows.
    write_json(root / "train.json", sample("slake_train_en.json") + sample("slake_test_zh.json"))
    write_json(root / "validate.json", sample("slake_validate_en.json"))
    write_json(root / "test.json", sample("slake_test_zh.json"))
    return root


def test_slake_real_rows(slake_root: Path) -> None:
    rows, rejects = run("slake", slake_root, "train")
    assert len(rows) == 120 and len(rejects) == 30
    assert set(reasons(rejects)) == {"lang_filtered"} and all(r.is_filter for r in rejects)
    source = sample("slake_train_en.json")
    for row, record in zip(rows, source, strict=True):
        assert row["id"] == f"slake-train-{record['qid']}"
        assert row["image"] == f"imgs/{record['img_name']}"
        assert question_of(row) == record["question"].strip()
        assert answer_of(row) == record["answer"].strip()
        assert row["answer_type"] == record["answer_type"]
        for key in ("answer_type", "content_type", "modality", "location", "base_type", "qid"):
            assert row["meta"][key] == record[key]
    assert_valid(rows, slake_root)


def test_slake_split_names_and_lang(slake_root: Path) -> None:
    rows, _ = run("slake", slake_root, "validation")  # our "validation" is Slake's validate.json
    assert len(rows) == 40 and rows[0]["id"].startswith("slake-validation-")
    zh, zh_rejects = run("slake", slake_root, "train", lang="zh")
    assert len(zh) == 30 and len(zh_rejects) == 120 and {r["meta"]["q_lang"] for r in zh} == {"zh"}
    everything, none = run("slake", slake_root, "train", lang="all")
    assert len(everything) == 150 and none == []
    with pytest.raises(ValueError, match="lang"):
        list(convert("slake", slake_root, "train", lang="fr"))
    with pytest.raises(ValueError, match="split"):
        list(convert("slake", slake_root, "val"))


def test_slake_bad_rows(tmp_path: Path) -> None:
    good = sample("slake_train_en.json")[:3]
    bad = [
        ["not", "an", "object"],
        {k: v for k, v in good[0].items() if k != "img_name"},
        {**good[0], "question": "   "},
        {**good[0], "answer": ""},
        {**good[0], "answer": ["Liver"]},
        {**good[0], "img_name": 7},
        {**good[0], "q_lang": "zh"},
    ]
    write_json(tmp_path / "train.json", [good[0], *bad, good[1], good[2]])
    rows, rejects = run("slake", tmp_path, "train")
    assert [r["id"] for r in rows] == [f"slake-train-{g['qid']}" for g in good]  # later rows still read
    assert reasons(rejects) == ["malformed_row", "missing_field", "empty_question", "empty_answer",
                                "bad_value", "bad_value", "lang_filtered"]
    assert [r.source for r in rejects][:2] == ["train.json:row 1", "train.json:row 2"]
    assert "img_name" in rejects[1].message and rejects[1].raw == bad[1]
    assert len(rows) + len(rejects) == 3 + len(bad)


def test_broken_json_list_is_one_reject(tmp_path: Path) -> None:
    (tmp_path / "train.json").write_text('[{"qid": 1, "question": "a"},\n  {"qid": 2,,}]', encoding="utf-8")
    rows, rejects = run("slake", tmp_path, "train")
    assert rows == [] and reasons(rejects) == ["malformed_json"]
    assert rejects[0].source == "train.json:line 2"


def test_missing_input_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="test.json"):
        list(convert("slake", tmp_path, "test"))
    with pytest.raises(ValueError, match="has no converter"):
        list(convert("slake2", tmp_path, "test"))


# --- VQA-RAD ---------------------------------------------------------------------------------


def test_vqa_rad_real_rows(tmp_path: Path) -> None:
    source = sample("vqa_rad_test.json")
    write_json(tmp_path / "testset.json", source)
    rows, rejects = run("vqa_rad", tmp_path, "test")
    assert rejects == [] and len(rows) == 80
    for row, record in zip(rows, source, strict=True):
        assert row["id"] == f"vqa_rad-test-{record['qid']}"
        assert row["image"] == f"images/{record['image_name']}"
        assert row["answer_type"] == record["answer_type"]
        assert row["meta"]["question_type"] == record["question_type"]
        assert row["meta"]["image_organ"] == record["image_organ"]
    assert_valid(rows, tmp_path)
    with pytest.raises(ValueError, match="no 'validation' split"):
        list(convert("vqa_rad", tmp_path, "validation"))


def test_vqa_rad_bad_rows_and_numeric_answer(tmp_path: Path) -> None:
    good = sample("vqa_rad_test.json")[0]
    records = [
        {**good, "qid": 1, "answer": 2},  # numeric answers occur in VQA-RAD: kept as text
        {k: v for k, v in good.items() if k != "qid"},
        {**good, "qid": 3, "answer": None},
        {**good, "qid": 4, "image_name": ""},
        "a string",
    ]
    write_json(tmp_path / "trainset.json", records)
    rows, rejects = run("vqa_rad", tmp_path, "train")
    assert [answer_of(r) for r in rows] == ["2"]
    assert reasons(rejects) == ["missing_field", "missing_field", "bad_value", "malformed_row"]
    assert len(rows) + len(rejects) == len(records)


# --- PathVQA ---------------------------------------------------------------------------------


def test_pathvqa_real_rows_windows_paths(tmp_path: Path) -> None:
    source = sample("pathvqa_test.json")
    assert "\\" in source[0]["image_path"]
    write_json(tmp_path / "test.json", source)
    rows, rejects = run("pathvqa", tmp_path, "test")
    assert rejects == [] and len(rows) == 80
    assert rows[0]["image"] == "images/test/pathvqa_00000.jpg"
    for n, (row, record) in enumerate(zip(rows, source, strict=True)):
        assert row["id"] == f"pathvqa-test-{n}"
        assert "\\" not in row["image"]
        # Closed/open from medvl's yes/no rule, never from the third party's label in the file.
        assert row["answer_type"] == ("CLOSED" if record["answer"] in ("yes", "no") else "OPEN")
        assert row["meta"]["heuristic_answer_type"] == record["answer_type"]
    assert_valid(rows, tmp_path)


def test_pathvqa_image_field_and_bad_rows(tmp_path: Path) -> None:
    records = [
        {"image": "images\\val\\a.jpg", "question": "is this normal?", "answer": "no"},
        {"image": {"bytes": "..."}, "question": "q", "answer": "a"},
        {"question": "q", "answer": "a"},
        {"image": "x.jpg", "question": "q", "answer": "  "},
    ]
    write_json(tmp_path / "val.json", records)
    rows, rejects = run("pathvqa", tmp_path, "validation")
    assert [r["image"] for r in rows] == ["images/val/a.jpg"]
    assert reasons(rejects) == ["bad_value", "missing_field", "empty_answer"]
    assert "image/image_path" in rejects[1].message


# --- GMAI-MMBench ----------------------------------------------------------------------------


def write_tsv(path: Path, records: list[dict], columns: list[str]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for record in records:
            writer.writerow(["" if record.get(c) is None else record[c] for c in columns])
    return path


def test_gmai_base64_images_become_files(tmp_path: Path) -> None:
    source = sample("gmai_mmbench_val.json")
    records = [{**r, "image": png_b64()} for r in source]
    write_tsv(tmp_path / "GMAI-MMBench_VAL.tsv", records, GMAI_COLUMNS + ["image"])
    rows, rejects = run("gmai_mmbench", tmp_path, "validation")
    assert rejects == [] and len(rows) == 60
    for row, record in zip(rows, source, strict=True):
        assert row["id"] == f"gmai_mmbench-validation-{record['index']}"
        assert row["image"] == f"images/GMAI-MMBench_VAL/{record['index']}.png"
        assert (tmp_path / row["image"]).is_file()
        options = {k: record[k] for k in "ABCDE" if record[k] is not None}
        assert row["meta"]["options"] == options
        assert answer_of(row) == record["answer"]
        assert row["meta"]["answer_text"] == options[record["answer"]]
        question = question_of(row)
        assert question.startswith(record["question"])
        assert all(f"\n{k}. {v}" in question for k, v in options.items())
        assert "E. " not in question if record["E"] is None else True
        assert row["meta"]["task"] == record["clinical vqa task"]
        assert row["meta"]["department"] == record["department"]
        assert row["meta"]["granularity"] == record["perceptual granularity"]
        assert row["meta"]["modality"] == record["modality"]
        assert row["answer_type"] == "CLOSED"
    with Image.open(tmp_path / rows[0]["image"]) as im:
        assert im.size == (6, 5)
    assert_valid(rows, tmp_path)


# The Hub's GMAI-MMBench_VAL.tsv spells the task column "clinical VQA task"; VLMEvalKit's result sheets
# (where the sample rows come from) lower-case every column.
HUB_GMAI_COLUMNS = [{"clinical vqa task": "clinical VQA task"}.get(c, c) for c in GMAI_COLUMNS]


@pytest.mark.parametrize("columns", [GMAI_COLUMNS, HUB_GMAI_COLUMNS,
                                     [c if len(c) == 1 else f" {c.title()} " for c in GMAI_COLUMNS]],
                         ids=["lower_case", "hub", "title_case_padded"])
def test_gmai_column_names_ignore_case_and_spaces(tmp_path: Path, columns: list[str]) -> None:
    source = sample("gmai_mmbench_val.json")[:6]
    records = [{new: {**r, "image": png_b64()}[old] for old, new in zip(GMAI_COLUMNS + ["image"],
                                                                      columns + ["image"], strict=True)}
               for r in source]
    write_tsv(tmp_path / "GMAI-MMBench_VAL.tsv", records, columns + ["image"])
    rows, rejects = run("gmai_mmbench", tmp_path, "validation")
    assert rejects == [] and len(rows) == 6
    for row, record in zip(rows, source, strict=True):
        assert row["meta"]["task"] == record["clinical vqa task"]
        assert row["meta"]["granularity"] == record["perceptual granularity"]
        assert row["meta"]["options"] == {k: record[k] for k in "ABCDE" if record[k] is not None}
        assert row["meta"]["category_rule"].endswith(f"category=gmai_mmbench.task={record['clinical vqa task']}")


def test_gmai_image_paths_made_relative(tmp_path: Path) -> None:
    source = sample("gmai_mmbench_val.json")[:5]
    assert source[0]["image_path"].startswith("/root/LMUData/images/")
    records = [*source, {**source[0], "index": "900", "image_path": str(tmp_path / "own" / "x.jpg")}]
    write_tsv(tmp_path / "gmai.tsv", records, GMAI_COLUMNS + ["image_path"])
    rows, rejects = run("gmai_mmbench", tmp_path, "validation", file="gmai.tsv")
    assert rejects == []
    assert rows[0]["image"] == f"images/GMAI-MMBench_VAL/{source[0]['index']}.jpg"
    assert rows[-1]["image"] == "own/x.jpg"
    assert_valid(rows, tmp_path)


def test_gmai_shared_image_reference(tmp_path: Path) -> None:
    base = sample("gmai_mmbench_val.json")[0]
    records = [
        {**base, "index": "1", "image": "2"},  # points forward: resolved after the stream
        {**base, "index": "2", "image": png_b64()},
        {**base, "index": "3", "image": "2"},
        {**base, "index": "4", "image": "77"},  # points at nothing
    ]
    write_tsv(tmp_path / "GMAI-MMBench_VAL.tsv", records, GMAI_COLUMNS + ["image"])
    rows, rejects = run("gmai_mmbench", tmp_path, "validation")
    assert {r["meta"]["index"]: r["image"] for r in rows} == {
        i: "images/GMAI-MMBench_VAL/2.png" for i in ("1", "2", "3")}
    assert reasons(rejects) == ["bad_image_reference"] and rejects[0].source.endswith("line 5")


def test_gmai_shared_image_of_a_rejected_row(tmp_path: Path) -> None:
    # The row that carries an image may itself be unusable; rows sharing its image are not.
    base = sample("gmai_mmbench_val.json")[0]
    assert base["E"] is None
    records = [
        {**base, "index": "1", "image": "2"},  # points forward to a rejected row
        {**base, "index": "2", "image": png_b64(), "answer": "E"},  # E is blank: bad_answer_option
        {**base, "index": "3", "image": "2"},
        {**base, "index": "4", "image": png_b64(), "question": " "},
        {**base, "index": "5", "image": "4"},
    ]
    write_tsv(tmp_path / "GMAI-MMBench_VAL.tsv", records, GMAI_COLUMNS + ["image"])
    rows, rejects = run("gmai_mmbench", tmp_path, "validation")
    assert {r["meta"]["index"]: r["image"] for r in rows} == {
        "1": "images/GMAI-MMBench_VAL/2.png", "3": "images/GMAI-MMBench_VAL/2.png",
        "5": "images/GMAI-MMBench_VAL/4.png"}
    assert [(r.source, r.reason) for r in rejects] == [("GMAI-MMBench_VAL.tsv:line 3", "bad_answer_option"),
                                                       ("GMAI-MMBench_VAL.tsv:line 5", "empty_question")]
    assert_valid(rows, tmp_path)


def test_gmai_bad_rows(tmp_path: Path) -> None:
    base = {**sample("gmai_mmbench_val.json")[0], "image": png_b64()}
    records = [
        {**base, "index": "10", "answer": "E"},  # E is blank for this question
        {**base, "index": "11", "answer": ""},
        {**base, "index": "12", "B": None, "C": None, "D": None},
        {**base, "index": "13", "image": "!!!not base64" + "x" * 80},
        {**base, "index": "14", "image": base64.b64encode(b"plain text, not an image" * 5).decode()},
        {**base, "index": "../../etc/x"},
        {**base, "index": "16", "question": " "},
        {**base, "index": "17", "image": ""},
        {**base, "index": "18"},  # good, after all the bad ones
    ]
    path = write_tsv(tmp_path / "GMAI-MMBench_VAL.tsv", records, GMAI_COLUMNS + ["image"])
    with open(path, "a", encoding="utf-8") as f:
        f.write("19\tonly three\tcolumns\n")
        f.write("\t".join(["20"] + ["x"] * (len(GMAI_COLUMNS) + 1)) + "\n")
    rows, rejects = run("gmai_mmbench", tmp_path, "validation")
    assert [r["meta"]["index"] for r in rows] == ["18"]
    assert reasons(rejects) == ["bad_answer_option", "empty_answer", "bad_options", "bad_image_data",
                                "bad_image_data", "bad_value", "empty_question", "missing_field",
                                "malformed_row", "malformed_row"]
    assert [r.source for r in rejects][:2] == ["GMAI-MMBench_VAL.tsv:line 2", "GMAI-MMBench_VAL.tsv:line 3"]
    assert "<base64" in rejects[3].raw["image"]  # no megabytes of base64 in reports
    assert len(rows) + len(rejects) == len(records) + 2
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "etc" / "x.png").exists()


def test_gmai_has_no_train_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no 'train' split"):
        list(convert("gmai_mmbench", tmp_path, "train"))


# --- LLaVA-Med -------------------------------------------------------------------------------


def test_llava_med_align(tmp_path: Path) -> None:
    prompts = sample("llava_med_alignment_prompts.json")["prompts"]
    records = [{"id": f"PMC{i}_F1", "image": f"PMC{i}_F1.jpg",
                "conversations": [{"from": "human", "value": f"{prompt}\n{IMAGE_TOKEN}"},
                                  {"from": "gpt", "value": "Axial CT of the chest showing a mass."}]}
               for i, prompt in enumerate(prompts)]
    write_json(tmp_path / "alignment" / "llava_med_alignment_500k.json", records)
    rows, rejects = run("llava_med_align", tmp_path, "train")
    assert rejects == [] and len(rows) == 27
    assert rows[0]["id"] == "llava_med_align-PMC0_F1" and rows[0]["image"] == "images/PMC0_F1.jpg"
    # The placeholder is where the data put it; none is added when one is present.
    assert rows[0]["conversations"][0]["value"] == f"{prompts[0]}\n{IMAGE_TOKEN}"
    assert {r["category"] for r in rows} == {"open_description"}
    assert {r["answer_type"] for r in rows} == {"OPEN"}
    assert_valid(rows, tmp_path)


def test_llava_med_instruct_multi_turn(tmp_path: Path) -> None:
    source = sample("llava_med_instruct_fewshot_rows.json")["rows"]
    # The few-shot rows are in the instruct schema minus id/image, which the 60K file has.
    records = [{**r, "image": f"{r['pair_id']}.jpg"} for r in source]
    write_json(tmp_path / "instruct" / "llava_med_instruct_60k.json", records)
    rows, rejects = run("llava_med_instruct", tmp_path, "train")
    assert rejects == [] and len(rows) == 8
    for row, record in zip(rows, source, strict=True):
        assert row["id"] == f"llava_med_instruct-{record['pair_id']}"
        assert len(row["conversations"]) == len(record["conversations"])
        assert row["conversations"][0]["value"] == f"{IMAGE_TOKEN}\n" + record["conversations"][0]["value"]
        assert [t["value"] for t in row["conversations"][1:]] == [t["value"] for t in record["conversations"][1:]]
        for key in ("pair_id", "pmid", "fig_label", "domain"):
            assert row["meta"][key] == record[key]
        assert "fig_caption" not in row["meta"]
    assert_valid(rows, tmp_path, require_category=False)


def test_llava_med_bad_rows(tmp_path: Path) -> None:
    ok = {"id": "a", "image": "a.jpg", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}]}
    records = [ok, {**ok, "image": None}, {**ok, "conversations": "hi"}, {**ok, "conversations": [{"from": "human"}]},
               {"image": "b.jpg", "conversations": ok["conversations"]}, 42]
    write_json(tmp_path / "llava_med_alignment_500k.json", records)
    rows, rejects = run("llava_med_align", tmp_path, "train")
    assert len(rows) == 1
    assert reasons(rejects) == ["missing_field", "bad_value", "bad_value", "missing_field", "malformed_row"]
    assert "image" in rejects[0].message and "id" in rejects[3].message


# --- generic LLaVA ---------------------------------------------------------------------------


def test_llava_jsonl_malformed_line_and_labels(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": f"{IMAGE_TOKEN}\nHow many kidneys are visible?"}, {"from": "gpt", "value": "2"}]
    lines = [
        json.dumps({"id": "r1", "image": "a.png", "conversations": turns}),
        '{"id": "r2", "image": "b.png", "conversations": [',  # truncated line
        json.dumps({"id": "r3", "image": None,
                    "conversations": [{"from": "user", "value": "Text only?"}, {"from": "assistant", "value": "yes"}]}),
        json.dumps({"id": "r4", "image": ["a.png", "b.png"], "category": "open_comparison", "meta": {"k": 1},
                    "conversations": [{"from": "human", "value": f"{IMAGE_TOKEN}{IMAGE_TOKEN} Which is larger?"},
                                      {"from": "gpt", "value": "left"}]}),
        json.dumps({"id": "r5", "image": "a.png", "category": "open_weird", "conversations": turns}),
        json.dumps({"id": "r6", "image": "a.png", "category": "closed_yes_no", "answer_type": "OPEN",
                    "conversations": turns}),
        json.dumps({"id": "r7", "image": "a.png", "answer_type": "SOMETIMES", "conversations": turns}),
        "",
        json.dumps({"id": 8, "image": "a.png", "answer_type": "closed", "conversations": turns}),
    ]
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows, rejects = run("llava", tmp_path, "test")
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"r1", "r3", "r4", "8"}
    assert by_id["r1"]["category"] == "open_counting"
    assert by_id["r3"]["image"] is None and by_id["r3"]["conversations"][0]["from"] == "human"
    assert by_id["r4"]["image"] == ["a.png", "b.png"] and by_id["r4"]["meta"]["category_rule"] == "given"
    assert by_id["r4"]["answer_type"] == "OPEN" and by_id["r4"]["meta"]["k"] == 1
    assert by_id["8"]["answer_type"] == "CLOSED"  # the row's own answer type, normalized
    assert [(r.source, r.reason) for r in rejects] == [
        ("test.jsonl:line 2", "malformed_json"), ("test.jsonl:line 5", "bad_category"),
        ("test.jsonl:line 6", "bad_category"), ("test.jsonl:line 7", "bad_value")]
    assert rejects[0].raw == lines[1]
    assert len(rows) + len(rejects) == 8  # the blank line is not a row
    assert_valid(rows, tmp_path)


def test_llava_json_list_with_image_dir(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "What is shown?"}, {"from": "gpt", "value": "A chest X-ray."}]
    write_json(tmp_path / "mine.json", [{"id": "x", "image": "./sub\\x.png", "conversations": turns}])
    rows, _ = run("llava", tmp_path, "train", file="mine.json", image_dir="pics")
    assert rows[0]["image"] == "pics/sub/x.png"
    assert rows[0]["conversations"][0]["value"] == f"{IMAGE_TOKEN}\nWhat is shown?"


def test_one_json_object_is_one_reject(tmp_path: Path) -> None:
    # The sample file itself is a pretty-printed object {source, rows}, not a list of rows.
    (tmp_path / "train.json").write_bytes((SAMPLES / "llava_med_instruct_fewshot_rows.json").read_bytes())
    rows, rejects = run("llava", tmp_path, "train")
    assert rows == [] and [(r.source, r.reason) for r in rejects] == [("train.json:line 1", "malformed_json")]


def test_jsonl_content_in_a_json_file(tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]
    lines = [json.dumps({"id": f"r{i}", "conversations": turns}) for i in range(3)]
    (tmp_path / "train.json").write_text("\n".join(lines), encoding="utf-8")
    rows, rejects = run("llava", tmp_path, "train")
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"] and rejects == []


def test_pathvqa_null_image_falls_back_to_image_path(tmp_path: Path) -> None:
    write_json(tmp_path / "test.json", [{"image": None, "image_path": "a\\b.jpg", "question": "q?", "answer": "yes"}])
    rows, _ = run("pathvqa", tmp_path, "test")
    assert rows[0]["image"] == "a/b.jpg"


# --- registry --------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert set(CONVERTERS) == {"llava_med_align", "llava_med_instruct", "slake", "vqa_rad", "pathvqa",
                               "gmai_mmbench", "pmc_vqa", "omnimedvqa", "mmmu", "medxpertqa", "llava", "hf"}


def test_every_converter_reason_is_exercised(request: pytest.FixtureRequest) -> None:
    # Runs last in this file (pytest keeps definition order): the tests above fill EXERCISED.
    selected = {item.name for item in request.session.items if item.module is request.module}
    if len(selected) < sum(1 for name in globals() if name.startswith("test_")):
        pytest.skip("needs the whole file to run")
    row_check_reasons = {"bad_field_type", "bad_roles", "placeholder_mismatch", "image_outside_root",
                         "image_missing", "image_unreadable", "image_mode_unsupported", "missing_category",
                         "duplicate_id", "too_long"}
    assert set(REASONS) - row_check_reasons <= EXERCISED
