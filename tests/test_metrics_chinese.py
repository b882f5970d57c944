"""Chinese answers are scored like their English twins: yes/no folded the same way on both sides,
characters as words in every n-gram scorer, BERTScore only from a multilingual model, and en and zh
reported apart when a run has both (Slake ``data.lang=all``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medvl.config import dataset_labels
from medvl.evaluation import metrics as M
from medvl.evaluation.aggregate import row_language
from medvl.evaluation.normalize import normalize_answer, text_language
from medvl.evaluation.report import write_reports
from medvl.evaluation.scoring import score

SAMPLES = Path(__file__).parent / "fixtures" / "samples"
TOL = 1e-6
TEXT_METRICS = ["substring_match", "word_f1", "soft_match", "bleu4", "rouge_l"]

# The issue's example and its English twin: the same answer, a decision then a finding.
ZH = ("是，图中有肝脏", "是")
EN = ("yes, the image shows the liver", "yes")


def _scores(pred: str, ref: str, metrics: list[str]) -> dict[str, float]:
    per_sample, _ = M.compute_metrics([pred], [ref], metrics=metrics)
    return per_sample[0]


def test_issue_example_scores_like_its_english_twin() -> None:
    zh, en = _scores(*ZH, TEXT_METRICS), _scores(*EN, TEXT_METRICS)
    for name in TEXT_METRICS:
        assert zh[name] > 0 and en[name] > 0, name
    # One decision word and five more words (characters) on each side: the same counts, the same scores.
    for name in ("substring_match", "word_f1", "bleu4", "rouge_l"):
        assert zh[name] == pytest.approx(en[name], rel=TOL), name
    assert zh["word_f1"] == pytest.approx(2 * (1 / 6) / (1 / 6 + 1))
    # soft_match compares characters, and Chinese needs fewer of them: same order, not equal.
    assert 1 / 3 < zh["soft_match"] / en["soft_match"] < 3


@pytest.mark.parametrize("reference", ["包含", "不包含", "是的", "不是"])
def test_real_slake_zh_yes_no_references_are_found_in_a_longer_answer(reference: str) -> None:
    rows = json.loads((SAMPLES / "slake_test_zh.json").read_text(encoding="utf-8"))
    assert reference in {row["answer"] for row in rows}  # these are how Slake zh answers yes/no questions
    scores = _scores(f"{reference}，图片中{'没有' if '不' in reference else '有'}肝脏。", reference,
                     TEXT_METRICS + ["closed_accuracy"])
    assert all(scores[name] > 0 for name in TEXT_METRICS), scores
    assert scores["closed_accuracy"] == 1.0


def test_yes_no_folding_is_symmetric() -> None:
    # A reference alias and the same alias opening a prediction are spelled alike, in both languages.
    assert normalize_answer("是") == normalize_answer("是，图中有肝脏").split()[0] == "yes"
    assert normalize_answer("不包含") == normalize_answer("不包含。图片中没有脾脏").split()[0] == "no"
    assert normalize_answer("Yeah, it is") == "yes it is"
    # Only before a clause break, and never a single letter or a word inside a sentence.
    assert normalize_answer("有些病变") == "有些病变"
    assert normalize_answer("true lumen") == "true lumen"
    assert normalize_answer("N/A") == "n a"
    assert normalize_answer("Y, Z") == "y z"
    # Still one canonical form for a whole answer, so cross-language twins match exactly.
    assert M.exact_match("Yes", "是") == M.exact_match("是的", "是") == 1.0


def test_exact_match_ignores_spaces_between_chinese_characters() -> None:
    assert M.exact_match("左 肺", "左肺") == 1.0
    assert M.exact_match("左肺", "右肺") == 0.0


def test_chinese_is_tokenized_per_character_for_each_ngram_scorer() -> None:
    """The reference: the same library called on characters separated by spaces (how Chinese VQA work
    feeds BLEU and ROUGE), written out by hand here."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider_scorer import CiderScorer
    from rouge_score.rouge_scorer import RougeScorer

    preds = ["是，图中有肝脏", "左肺和右肺", "图片中不包含脾脏。", "腹部"]
    refs = ["是", "左肺，右肺", "不包含", "胸腔"]
    hyps_spaced = ["yes 图 中 有 肝 脏", "左 肺 和 右 肺", "图 片 中 不 包 含 脾 脏", "腹 部"]
    refs_spaced = ["yes", "左 肺 右 肺", "no", "胸 腔"]

    bleu = BleuScorer(n=4)
    cider = CiderScorer(n=4, sigma=6.0)
    for hyp, ref in zip(hyps_spaced, refs_spaced):
        bleu += (hyp, [ref])
        cider += (hyp, [ref])
    (bleu_score, bleu_scores), (cider_score, cider_scores) = bleu.compute_score(option="closest"), cider.compute_score()
    assert M.bleu4(preds, refs)[0] == pytest.approx(bleu_score[3], abs=TOL)
    assert M.bleu4(preds, refs)[1] == pytest.approx(bleu_scores[3], abs=TOL)
    assert M.cider(preds, refs)[0] == pytest.approx(cider_score, abs=TOL)
    assert M.cider(preds, refs)[1] == pytest.approx(list(cider_scores), abs=TOL)

    class Whitespace:  # rouge-score's default tokenizer keeps only [a-z0-9]: every Chinese pair would be 0
        def tokenize(self, text: str) -> list[str]:
            return text.split()

    assert RougeScorer(["rougeL"]).score("左肺，右肺", "左肺和右肺")["rougeL"].fmeasure == 0.0
    rouge = RougeScorer(["rougeL"], tokenizer=Whitespace())
    expected = [rouge.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hyps_spaced, refs_spaced)]
    assert M.rouge_l(preds, refs)[1] == pytest.approx(expected, abs=TOL)
    assert M.rouge_l(preds, refs)[1][1] == pytest.approx(8 / 9)  # LCS 左 肺 右 肺: P 4/5, R 4/4

    if shutil.which("java"):
        from pycocoevalcap.meteor.meteor import Meteor

        reference = Meteor()
        try:
            score, scores = reference.compute_score({i: [r] for i, r in enumerate(refs_spaced)},
                                                    {i: [h] for i, h in enumerate(hyps_spaced)})
        finally:
            del reference
        corpus, per_sample = M.meteor(preds, refs)
        assert corpus == pytest.approx(score, abs=TOL)
        assert per_sample == pytest.approx(scores, abs=TOL)
        assert per_sample[1] > 0


def test_row_language_reads_q_lang_before_the_text() -> None:
    assert row_language({"question": "这张图片的成像方式是什么?", "reference": "MRI", "meta": {"q_lang": "zh"}}) == "zh"
    assert row_language({"question": "Which modality?", "reference": "MRI", "meta": {"q_lang": "en"}}) == "en"
    assert row_language({"question": "这张图片的成像方式是什么?", "reference": "MRI"}) == "zh"
    assert row_language({"question": "q", "reference": "MRI", "meta": None}) == "en"
    assert text_language("左肺") == "zh" and text_language("CT") == "en"


def test_an_english_row_answered_in_chinese_stays_english() -> None:
    """A row's language is its data's: a Chinese prediction neither moves an English row into a zh group nor
    takes it out of BERTScore (the English model scores it, poorly but honestly)."""
    assert row_language({"question": "Which organ is shown?", "reference": "liver", "prediction": "肝脏"}) == "en"
    assert row_language({"question": "这是什么器官?", "reference": "MRI", "prediction": "MRI"}) == "zh"
    assert M.row_languages(["liver", "肝脏"]) == ["en", "zh"]
    data = [("left lung", "left lung"), ("liver", "the liver"), ("肝脏", "liver"), ("mri", "ct")]
    records = [{"id": f"r{i}", "question": "Which organ is shown?", "reference": ref, "prediction": pred,
                "category": "open_anatomy", "answer_type": "OPEN", "meta": {}} for i, (pred, ref) in enumerate(data)]
    tables = score(records, _cfg(["exact_match", "bertscore_f1"]))
    assert isinstance(records[2]["metrics"]["bertscore_f1"], float)
    assert "bertscore_f1" in tables["overall"]
    assert "by_lang" not in tables and "notes" not in tables
    per_sample, corpus = M.compute_metrics(["肝脏"], ["liver"], metrics=["bertscore_f1"])
    assert isinstance(per_sample[0]["bertscore_f1"], float) and "bertscore_f1" in corpus


def _slake_records() -> list[dict]:
    """Slake data.lang=all: real zh rows (one answered "MRI", in Latin letters) and English twins."""
    zh_rows = json.loads((SAMPLES / "slake_test_zh.json").read_text(encoding="utf-8"))[:6]
    records = []
    for i, row in enumerate(zh_rows):
        meta = {"q_lang": "zh", "modality": row["modality"]}
        records.append({"id": f"zh{i}", "question": row["question"], "reference": row["answer"],
                        "prediction": row["answer"] if i % 2 else "肝脏", "category": None,
                        "answer_type": row["answer_type"], "meta": meta})
    for i, (ref, pred, answer_type) in enumerate([("MRI", "MRI", "OPEN"), ("Yes", "yes, the image shows the liver",
                                                  "CLOSED"), ("Left lung", "lung", "OPEN"), ("No", "no", "CLOSED")]):
        records.append({"id": f"en{i}", "question": "Which organ is it?", "reference": ref, "prediction": pred,
                        "category": None, "answer_type": answer_type, "meta": {"q_lang": "en", "modality": "CT"}})
    return records


def _cfg(metrics: list[str], model_zh: str | None = None):
    return OmegaConf.create({"metrics": metrics, "bertscore": {"model": None, "num_layers": None,
                                                               "dtype": "float32", "model_zh": model_zh}})


def test_a_mixed_run_reports_en_and_zh_apart(tmp_path: Path) -> None:
    records = _slake_records()
    assert records[0]["reference"] == "MRI"  # a zh row all the same: its q_lang says so
    tables = score(records, _cfg(["exact_match", "word_f1", "bleu4"]), **dataset_labels("slake"))
    by_lang = tables["by_lang"]
    assert list(by_lang) == ["en", "zh"]
    assert by_lang["zh"]["count"] == 6 and by_lang["en"]["count"] == 4
    for lang, group in by_lang.items():
        rows = [r for r in records if r["meta"]["q_lang"] == lang]
        assert group["exact_match"] == pytest.approx(sum(r["metrics"]["exact_match"] for r in rows) / len(rows))
        # Corpus BLEU of the language's rows alone, as for any other breakdown.
        assert group["bleu4"] == pytest.approx(M.bleu4([r["prediction"] for r in rows],
                                                       [r["reference"] for r in rows])[0], abs=TOL)
    write_reports(records, tables, tmp_path)
    assert "## lang" in (tmp_path / "tables.md").read_text(encoding="utf-8")
    # One language: no by_lang table.
    english = [r for r in records if r["meta"]["q_lang"] == "en"]
    assert "by_lang" not in score(english, _cfg(["exact_match"]), **dataset_labels("slake"))


def test_bertscore_on_zh_rows_is_absent_with_the_reason_without_a_multilingual_model(tmp_path, capsys) -> None:
    records = _slake_records()
    tables = score(records, _cfg(["exact_match", "bertscore_f1"]), **dataset_labels("slake"))
    zh = [r for r in records if r["meta"]["q_lang"] == "zh"]
    en = [r for r in records if r["meta"]["q_lang"] == "en"]
    assert all(r["metrics"]["bertscore_f1"] is None for r in zh)  # not a 0, not an English model's score
    assert all(isinstance(r["metrics"]["bertscore_f1"], float) for r in en)
    assert "bertscore_f1" in tables["by_lang"]["en"]
    # Every group with a zh row leaves it out rather than averaging the en rows alone.
    assert "bertscore_f1" not in tables["by_lang"]["zh"]
    assert "bertscore_f1" not in tables["overall"]
    assert "exact_match" in tables["overall"]
    note = tables["notes"]["bertscore_f1"]
    assert "6 zh rows" in note and "bertscore.model_zh=" in note

    write_reports(records, tables, tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))["notes"]["bertscore_f1"] == note
    assert note in (tmp_path / "tables.md").read_text(encoding="utf-8")
    assert "bertscore.model_zh=" in capsys.readouterr().out.replace("\n", "")


def test_bertscore_on_zh_rows_comes_from_the_configured_model() -> None:
    """en rows use bertscore.model/num_layers, zh rows bertscore.model_zh at its own default layer.

    The one model on this machine stands in for a multilingual one: what is tested is which model
    and layer each row is scored with, not Chinese embeddings."""
    import bert_score

    model = M.default_bertscore_model()
    preds = ["左肺和右肺", "the left lung", "是，图中有肝脏", "a mass"]
    refs = ["左肺", "left lung", "是", "a round mass"]
    per_sample, corpus = M.compute_metrics(preds, refs, metrics=["bertscore_f1"], bertscore_num_layers=3,
                                           bertscore_model_zh=model)

    def expected(rows: list[int], num_layers: int) -> list[float]:
        _, _, f1 = bert_score.score([normalize_answer(preds[i]) for i in rows],
                                    [normalize_answer(refs[i]) for i in rows], model_type=model, num_layers=num_layers)
        return f1.tolist()

    assert [per_sample[i]["bertscore_f1"] for i in (0, 2)] == pytest.approx(expected([0, 2], 6), abs=TOL)
    assert [per_sample[i]["bertscore_f1"] for i in (1, 3)] == pytest.approx(expected([1, 3], 3), abs=TOL)
    assert corpus["bertscore_f1"] == pytest.approx(sum(r["bertscore_f1"] for r in per_sample) / 4, abs=TOL)
    # Through medvl.eval's scoring: the config key reaches the scorer and nothing is left out.
    records = _slake_records()
    tables = score(records, _cfg(["bertscore_f1"], model_zh=model), **dataset_labels("slake"))
    assert "notes" not in tables
    assert "bertscore_f1" in tables["overall"] and "bertscore_f1" in tables["by_lang"]["zh"]
