"""The multiple-choice benchmarks MedEvalKit and lmms-eval report (PMC-VQA, OmniMedVQA, MMMU Health &
Medicine, MedXpertQA MM): hand-made rows in each published format (see each converter's docstring for the
source checked) become rows with the options in the prompt and the letter as answer, pass the row checks,
carry the labels their data config breaks scores down by, and bad rows are rejects with their reason."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from medvl.config import dataset_labels
from medvl.data.converters import convert, partition
from medvl.data.format import IMAGE_TOKEN, answer_of, image_paths
from medvl.data.row_checks import default_checks, first_problem
from medvl.evaluation.scoring import prediction_record, score

INSTRUCTION = "Answer with the option's letter from the given choices directly."


def run(name: str, root: Path, split: str = "test", **options):
    return partition(convert(name, root, split, **options))


def reasons(rejects) -> list[str]:
    return [r.reason for r in rejects]


def assert_valid(rows: list[dict], root: Path, breakdowns: list[str] | None = None) -> None:
    """Rows pass every processor-free row check once their images exist, and carry each breakdown label."""
    for row in rows:
        for rel in image_paths(row):
            if not (root / rel).exists():
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (90, 40, 20)).save(root / rel)
    checks = default_checks(require_category=True)
    assert [(row["id"], first_problem(row, root, checks)) for row in rows] == [(row["id"], None) for row in rows]
    for key in breakdowns or []:
        assert all(row["meta"].get(key) for row in rows), key


def write_csv(path: Path, columns: list[str], records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(records)
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (6, 5), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


# --- PMC-VQA ---------------------------------------------------------------------------------

V1_COLUMNS = ["Figure_path", "Question", "Answer", "Choice A", "Choice B", "Choice C", "Choice D", "Answer_label"]
V2_COLUMNS = ["index", "Figure_path", "Caption", "Question", "Choice A", "Choice B", "Choice C", "Choice D",
              "Answer", "split"]
UPTAKE = {"Figure_path": "PMC1064097_F1.jpg", "Question": "What is the uptake pattern in the breast?",
          "Answer": "Focal uptake pattern", "Choice A": "A:Diffuse uptake pattern",
          "Choice B": "B:Focal uptake pattern", "Choice C": "C:No uptake pattern",
          "Choice D": "D:Cannot determine from the information given", "Answer_label": "B"}


def test_pmc_vqa_version_1_card_row(tmp_path: Path) -> None:
    """The dataset card's sample row: ``X:`` choice prefixes, the letter in Answer_label."""
    bad = [{**UPTAKE, "Answer_label": "E"}, {**UPTAKE, "Choice C": "", "Answer_label": "C"},
           {**UPTAKE, "Figure_path": " "}, {**UPTAKE, "Choice B": "", "Choice C": "", "Choice D": ""}]
    write_csv(tmp_path / "test_clean.csv", V1_COLUMNS, [UPTAKE, *bad])
    rows, rejects = run("pmc_vqa", tmp_path)
    assert [r["id"] for r in rows] == ["pmc_vqa-test-0"]
    row = rows[0]
    assert row["image"] == "images/PMC1064097_F1.jpg"  # no figures/ copy of it: images/
    assert row["conversations"][0]["value"] == "\n".join([
        IMAGE_TOKEN, "What is the uptake pattern in the breast?", "A. Diffuse uptake pattern",
        "B. Focal uptake pattern", "C. No uptake pattern", "D. Cannot determine from the information given",
        INSTRUCTION])
    assert answer_of(row) == "B" and row["meta"]["answer_text"] == "Focal uptake pattern"
    assert row["answer_type"] == "CLOSED"
    assert reasons(rejects) == ["bad_answer_option", "bad_answer_option", "missing_field", "bad_options"]
    assert [r.source for r in rejects] == [f"test_clean.csv:line {n}" for n in (3, 4, 5, 6)]
    assert "'E' is not one of ['A', 'B', 'C', 'D']" in rejects[0].message
    assert_valid(rows, tmp_path)


def test_pmc_vqa_version_2_as_medevalkit_reads_it(tmp_path: Path) -> None:
    """test_2.csv: an index column, the letter (or an option's text) in Answer, images under figures/."""
    base = {"index": "17", "Figure_path": "PMC1_F2.jpg", "Caption": "CT of the chest.",
            "Question": "Which organ is enlarged?", "Choice A": " A:Liver", "Choice B": " B:Spleen",
            "Choice C": " C:Heart", "Choice D": " D:Kidney", "Answer": "C", "split": "test"}
    write_csv(tmp_path / "test_2.csv", V2_COLUMNS, [base, {**base, "index": "18", "Answer": "Spleen"}])
    (tmp_path / "figures").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "figures" / "PMC1_F2.jpg")
    rows, rejects = run("pmc_vqa", tmp_path)
    assert not rejects
    assert [(r["id"], answer_of(r), r["image"]) for r in rows] == [
        ("pmc_vqa-test-17", "C", "figures/PMC1_F2.jpg"), ("pmc_vqa-test-18", "B", "figures/PMC1_F2.jpg")]
    assert rows[0]["meta"]["options"] == {"A": "Liver", "B": "Spleen", "C": "Heart", "D": "Kidney"}
    assert_valid(rows, tmp_path)
    # A file without the answer column cannot be scored.
    write_csv(tmp_path / "x.csv", V2_COLUMNS[:-2], [{k: base[k] for k in V2_COLUMNS[:-2]}])
    _, rejects = run("pmc_vqa", tmp_path, file="x.csv")
    assert reasons(rejects) == ["missing_field"] and "Answer" in rejects[0].message


# --- OmniMedVQA ------------------------------------------------------------------------------


def omni(qid: str, **changes) -> dict:
    record = {"dataset": "ACRIMA", "question_id": qid, "question_type": "Disease Diagnosis",
              "question": "What is the diagnosis shown in this fundus image?", "gt_answer": "Glaucoma",
              "image_path": "Images/ACRIMA/Im001_ACRIMA.png", "option_A": "Cataract", "option_B": "Glaucoma",
              "option_C": "Normal", "option_D": "Macular degeneration", "modality_type": "Fundus Photography"}
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def test_omnimedvqa_open_and_restricted_access(tmp_path: Path) -> None:
    qa = tmp_path / "QA_information"
    two = omni("Chest CT Scan_0001", question="Is this a CT image?", gt_answer="yes", option_A="yes",
               option_B="no", option_C=None, option_D=None, modality_type=None, modality="CT(Computed Tomography)",
               question_type="Modality Recognition", dataset="Chest CT Scan", image_path="Images/Chest CT/1.png")
    (qa / "Open-access").mkdir(parents=True)
    (qa / "Open-access" / "ACRIMA.json").write_text(json.dumps([
        omni("ACRIMA_0000"), two, omni("ACRIMA_0002", gt_answer="Retinal detachment"),
        omni("ACRIMA_0003", image_path=None), omni("ACRIMA_0004", option_A=None, option_B=None, option_C=None,
                                                   option_D=None)]))
    (qa / "Restricted-access").mkdir()
    (qa / "Restricted-access" / "AIDA.json").write_text(json.dumps([omni("AIDA_0000", dataset="AIDA")]))
    rows, rejects = run("omnimedvqa", tmp_path)
    assert [r["id"] for r in rows] == ["omnimedvqa-test-ACRIMA_0000", "omnimedvqa-test-Chest CT Scan_0001"]
    first, second = rows
    assert answer_of(first) == "B" and first["image"] == "Images/ACRIMA/Im001_ACRIMA.png"
    assert "\nB. Glaucoma\nC. Normal\n" in first["conversations"][0]["value"]
    assert first["meta"] | {"options": None} == {
        "question_id": "ACRIMA_0000", "question_type": "Disease Diagnosis", "modality": "Fundus Photography",
        "dataset": "ACRIMA", "access": "Open-access", "options": None, "answer_text": "Glaucoma",
        "category_rule": first["meta"]["category_rule"]}
    # Two options, and the one record that names its modality "modality".
    assert answer_of(second) == "A" and list(second["meta"]["options"]) == ["A", "B"]
    assert second["meta"]["modality"] == "CT(Computed Tomography)" and second["category"] == "closed_modality"
    assert reasons(rejects) == ["bad_answer_option", "missing_field", "missing_field"]
    assert [r.source for r in rejects] == ["ACRIMA.json:row 2", "ACRIMA.json:row 3", "ACRIMA.json:row 4"]
    assert_valid(rows, tmp_path, dataset_labels("omnimedvqa")["breakdowns"])
    everything, _ = run("omnimedvqa", tmp_path, access="all")
    assert everything[-1]["meta"]["access"] == "Restricted-access" and len(everything) == 3
    with pytest.raises(ValueError, match="has no 'train' split"):
        run("omnimedvqa", tmp_path, "train")


# --- MMMU ------------------------------------------------------------------------------------


def mmmu(n: int, **changes) -> dict:
    record = {"id": f"validation_Clinical_Medicine_{n}",
              "question": "<image 1> shows a biopsy. Which stain highlights the structure in <image 2>?",
              "options": "['H&E', 'PAS', 'Congo red', '<image 3>']", "explanation": "",
              "image_1": "img/a.png", "image_2": "img/b.png", "image_3": "img/c.png", "image_4": None,
              "image_5": None, "image_6": None, "image_7": None, "img_type": "['Pathological Images']",
              "answer": "B", "topic_difficulty": "Medium", "question_type": "multiple-choice",
              "subfield": "Pathology"}
    record.update(changes)
    return record


def test_mmmu_image_references_become_placeholders_in_order(tmp_path: Path) -> None:
    records = [
        mmmu(1),
        # A second reference to one image, and an image column the text never names (goes in front).
        mmmu(2, question="Compare <image 2> with <image 1>; is <image 2> normal?", options="['Yes', 'No']",
             answer="A"),
        mmmu(3, question="What dose in mg is due? <image 1>", options="[]", answer="['24', '24.0']",
             question_type="open", image_2=None, image_3=None),
        mmmu(4, answer="E"),
        mmmu(5, image_2=None),
        mmmu(6, options="not a list"),
        mmmu(7, answer="?"),
    ]
    write_jsonl(tmp_path / "Clinical_Medicine" / "validation.jsonl", records)
    rows, rejects = run("mmmu", tmp_path, "validation", subjects=["Clinical_Medicine"])
    assert [r["id"] for r in rows] == [f"mmmu-validation-Clinical_Medicine_{n}" for n in (1, 2, 3)]
    first, second, open_row = rows
    assert first["image"] == ["img/a.png", "img/b.png", "img/c.png"]
    assert first["conversations"][0]["value"] == "\n".join([
        "<image> shows a biopsy. Which stain highlights the structure in <image>?",
        "A. H&E", "B. PAS", "C. Congo red", "D. <image>", INSTRUCTION])
    assert answer_of(first) == "B" and first["meta"]["answer_text"] == "PAS"
    assert {k: first["meta"][k] for k in ("subject", "subfield", "difficulty", "img_type")} == {
        "subject": "Clinical_Medicine", "subfield": "Pathology", "difficulty": "Medium",
        "img_type": ["Pathological Images"]}
    assert second["image"] == ["img/c.png", "img/b.png", "img/a.png"]
    assert second["conversations"][0]["value"].startswith(
        "<image>\nCompare <image> with <image>; is image 2 normal?\nA. Yes\nB. No\n")
    assert answer_of(open_row) == "24" and open_row["meta"]["answers"] == ["24", "24.0"]
    assert open_row["answer_type"] == "OPEN" and open_row["image"] == ["img/a.png"]
    assert reasons(rejects) == ["bad_answer_option", "missing_field", "bad_value", "empty_answer"]
    assert "<image 2> but image_2 is empty" in rejects[1].message
    assert_valid(rows, tmp_path, dataset_labels("mmmu")["breakdowns"])
    with pytest.raises(FileNotFoundError, match="Basic_Medical_Science"):
        run("mmmu", tmp_path, "validation")  # the other four subjects are not there


def test_mmmu_parquet_with_embedded_images(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    image = {"bytes": png_bytes(), "path": "a.png"}
    records = [mmmu(1, image_1=image, image_2=image, image_3=image),
               mmmu(2, image_1={"bytes": b"not an image", "path": None}, image_2=image, image_3=image)]
    path = tmp_path / "Pharmacy" / "validation-00000-of-00001.parquet"
    path.parent.mkdir()
    pq.write_table(pa.Table.from_pylist(records), path)
    rows, rejects = run("mmmu", tmp_path, "validation", subjects=["Pharmacy"])
    assert rows[0]["image"] == [f"images/validation/validation_Clinical_Medicine_1_{n}.png" for n in (1, 2, 3)]
    assert (tmp_path / rows[0]["image"][0]).read_bytes() == png_bytes()
    assert reasons(rejects) == ["bad_image_data"] and rejects[0].source == "Pharmacy/" + path.name + ":row 1"
    assert rejects[0].raw["image_2"].endswith("image bytes>")  # no bytes in the rejects file
    assert_valid(rows, tmp_path)


# --- MedXpertQA ------------------------------------------------------------------------------

STEM = "A 26-year-old man falls on his outstretched hand. Radiographs are shown in Figures A and B. Next step?"
CHOICES = {"A": "Splint", "B": "Open reduction", "C": "Observation", "D": "Arthroscopy", "E": "Casting"}


def xpert(qid: str, hub: bool = True, **changes) -> dict:
    inline = " ".join(f"({k}) {v}" for k, v in CHOICES.items())
    record = {"id": qid, "question": f"{STEM}\nAnswer Choices: {inline}",
              "options": dict(CHOICES) if hub else [{"letter": k, "content": v} for k, v in CHOICES.items()],
              "label": "B" if hub else ["B"],
              "images": [f"{qid}-a.jpeg", f"{qid}-b.jpeg"] if hub else [{"image_path": f"{qid}-a.jpeg"}],
              "medical_task": "Treatment", "body_system": "Skeletal", "question_type": "Reasoning"}
    record.update(changes)
    return record


def test_medxpertqa_hub_and_authors_shapes(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "MM" / "test.jsonl", [
        xpert("MM-0"), xpert("MM-1", hub=False), xpert("MM-2", label="F"), xpert("MM-3", images=[]),
        xpert("MM-4", options={"A": "Splint", "B": ""}, label="A"), xpert("MM-5", options="A, B")])
    rows, rejects = run("medxpertqa", tmp_path)
    assert [(r["id"], answer_of(r)) for r in rows] == [("medxpertqa-test-MM-0", "B"), ("medxpertqa-test-MM-1", "B")]
    hub, authors = rows
    assert hub["image"] == ["images/MM-0-a.jpeg", "images/MM-0-b.jpeg"] and authors["image"] == ["images/MM-1-a.jpeg"]
    # The question's own "Answer Choices:" tail is replaced by the lettered list: the options appear once.
    assert hub["conversations"][0]["value"] == "\n".join([
        IMAGE_TOKEN, IMAGE_TOKEN, STEM, *(f"{k}. {v}" for k, v in CHOICES.items()), INSTRUCTION])
    assert authors["conversations"][0]["value"].count("Open reduction") == 1
    assert {k: hub["meta"][k] for k in ("id", "medical_task", "body_system", "question_type")} == {
        "id": "MM-0", "medical_task": "Treatment", "body_system": "Skeletal", "question_type": "Reasoning"}
    assert reasons(rejects) == ["bad_answer_option", "missing_field", "bad_options", "bad_value"]
    assert_valid(rows, tmp_path, dataset_labels("medxpertqa")["breakdowns"])


def test_medxpertqa_scored_by_letter_with_its_breakdowns(tmp_path: Path) -> None:
    """The GMAI-MMBench path end to end: letters extracted from free answers, choice_accuracy overall and
    per label the data config names."""
    write_jsonl(tmp_path / "MM" / "test.jsonl", [
        xpert("MM-0"), xpert("MM-1", medical_task="Diagnosis"), xpert("MM-2", medical_task="Diagnosis", label="C")])
    rows, _ = run("medxpertqa", tmp_path)
    records = [prediction_record(row, answer) for row, answer in
               zip(rows, ["The answer is B.", "(B) Open reduction", "Open reduction"])]
    cfg = OmegaConf.create({"metrics": ["exact_match"], "bertscore": {"model": None, "num_layers": None,
                                                                      "dtype": "float32"}})
    labels = dataset_labels("medxpertqa")
    tables = score(records, cfg, labels["breakdowns"], labels["multi_label"])
    assert [r["extracted_choice"] for r in records] == ["B", "B", "B"]
    assert tables["overall"]["choice_accuracy"] == pytest.approx(2 / 3)
    assert {k: (v["count"], v["choice_accuracy"]) for k, v in tables["by_medical_task"].items()} == {
        "Diagnosis": (2, 0.5), "Treatment": (1, 1.0)}
    assert set(tables) >= {"by_body_system", "by_question_type"}
