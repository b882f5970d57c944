from __future__ import annotations

import difflib
import json
import math
from pathlib import Path

import pytest

from medvl.evaluation import metrics as M
from medvl.evaluation.normalize import normalize_answer, words

FIXTURES = Path(__file__).parent / "fixtures"
TOL = 1e-6

SAMPLE_METRICS = [
    "exact_match",
    "substring_match",
    "soft_match",
    "word_jaccard",
    "word_precision",
    "word_recall",
    "word_f1",
    "char_precision",
    "char_recall",
    "char_f1",
    "closed_accuracy",
    "open_recall",
]
CORPUS_METRICS = ["bleu4", "cider", "rouge_l", "meteor", "bertscore_f1"]


def load_rows() -> list[dict]:
    """Real Slake (en, zh), VQA-RAD, PathVQA and LLaVA-Med answers, with made-up predictions."""
    return json.loads((FIXTURES / "metrics_vqa_rows.json").read_text(encoding="utf-8"))["rows"]


ROWS = load_rows()
PREDS = [row["prediction"] for row in ROWS]
REFS = [row["answer"] for row in ROWS]
TYPES = [row["answer_type"] for row in ROWS]


def tokenized(texts: list[object]) -> list[str]:
    return [" ".join(words(text)) for text in texts]


# ------------------------------------------------------------------------------------------
# sample-level metrics, by hand


def test_exact_match() -> None:
    assert M.exact_match("Left  Lung.", "left lung") == 1.0
    assert M.exact_match("The left lung", "left lung") == 0.0  # articles are words like any other
    assert M.exact_match("Correct", "yes") == 1.0
    assert M.exact_match("是的", "是") == 1.0
    assert M.exact_match("left lung", "right lung") == 0.0
    assert M.exact_match("", "") == 0.0  # an empty prediction never matches


def test_substring_match() -> None:
    assert M.substring_match("The answer is MRI.", "MRI") == 1.0
    assert M.substring_match("lung", "Right Lung") == 1.0  # prediction inside reference
    assert M.substring_match("左肺", "左肺, 右侧") == 1.0
    assert M.substring_match("The image is normal.", "no") == 0.0  # whole words only
    assert M.substring_match("", "lung") == 0.0
    assert M.substring_match("lung", "") == 0.0
    assert M.substring_match("  ", "  ") == 0.0


def test_word_and_char_overlap_by_hand() -> None:
    # pred left, lung, lung / ref left, lung: 2 shared -> P 2/3, R 1, F 2*(2/3)/(5/3) = 0.8.
    assert M.word_precision("left lung lung", "Left Lung") == pytest.approx(2 / 3)
    assert M.word_recall("left lung lung", "Left Lung") == pytest.approx(1.0)
    assert M.word_f1("left lung lung", "Left Lung") == pytest.approx(0.8)
    # {right, lung} vs {left, lung}: 1 shared of 3.
    assert M.word_jaccard("right lung", "left lung") == pytest.approx(1 / 3)
    # 肝脏 vs 肝: P 1/2, R 1, F 2/3.
    assert M.char_precision("肝脏", "肝") == pytest.approx(0.5)
    assert M.char_recall("肝脏", "肝") == pytest.approx(1.0)
    assert M.char_f1("肝脏", "肝") == pytest.approx(2 / 3)
    # Chinese is split per character at the word level too.
    assert M.word_f1("左肺", "左侧") == pytest.approx(0.5)
    # "lung" vs "lungs": 4 shared characters, P 4/4, R 4/5, F 8/9.
    assert M.char_f1("lung", "lungs") == pytest.approx(8 / 9)
    assert M.word_f1("lung", "lungs") == 0.0


def test_soft_match_is_difflib_ratio_of_normalized_text() -> None:
    assert M.soft_match("Lung", "lungs") == pytest.approx(2 * 4 / 9)
    for pred, ref in zip(PREDS, REFS):
        pred_n, ref_n = normalize_answer(pred), normalize_answer(ref)
        expected = difflib.SequenceMatcher(None, pred_n, ref_n, autojunk=False).ratio() if pred_n and ref_n else 0.0
        assert M.soft_match(pred, ref) == pytest.approx(expected, abs=TOL)


def _llava_med_answers() -> list[str]:
    """Long LLaVA-Med answers, the kind soft_match's difflib heuristic distorted."""
    path = FIXTURES / "samples" / "llava_med_instruct_fewshot_rows.json"
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"]
    answers = [turn["value"] for row in rows for turn in row["conversations"] if turn["from"] == "gpt"]
    return [answer for answer in answers if len(normalize_answer(answer)) >= 200]


def test_soft_match_is_not_distorted_by_difflibs_autojunk_on_long_answers() -> None:
    long_refs = _llava_med_answers()
    assert len(long_refs) >= 2
    pred, ref = long_refs[0], long_refs[1]
    pred_n, ref_n = normalize_answer(pred), normalize_answer(ref)
    expected = difflib.SequenceMatcher(None, pred_n, ref_n, autojunk=False).ratio()
    assert M.soft_match(pred, ref) == pytest.approx(expected, abs=TOL)
    # With autojunk the common letters of a 200+ character reference are junk, and the ratio of
    # two medical answers sharing many words collapses toward 0.
    assert expected > 0.1


def test_closed_accuracy_mirrors_llava_med() -> None:
    assert M.closed_accuracy("Yes, the heart is enlarged.", "Yes") == 1.0
    assert M.closed_accuracy("There is no effusion.", "no") == 1.0
    assert M.closed_accuracy("No.", "yes") == 0.0
    assert M.closed_accuracy("The image is normal.", "no") == 0.0  # LLaVA-Med's substring test says 1
    assert M.closed_accuracy("是的", "是的") == 1.0
    assert M.closed_accuracy("图片中不包含脾脏", "不包含") == 1.0
    assert M.closed_accuracy("包含", "不包含") == 0.0
    # Closed questions with a non-yes/no answer ("heart or lung?"): the reference in the prediction.
    assert M.closed_accuracy("The liver is bigger.", "Liver") == 1.0
    assert M.closed_accuracy("The heart.", "Liver") == 0.0
    assert M.closed_accuracy("", "yes") == 0.0


def test_open_recall_is_the_share_of_reference_words_in_the_prediction() -> None:
    assert M.open_recall("The right lung is affected.", "Right Lung") == 1.0
    assert M.open_recall("left left", "left lung") == 0.5
    assert M.open_recall("lung", "Left Apical Pneumothorax") == 0.0
    assert M.open_recall("左肺", "左肺, 右侧") == pytest.approx(0.5)
    assert M.open_recall("", "lung") == 0.0


# ------------------------------------------------------------------------------------------
# corpus-level metrics against their reference implementations, on the fixture rows


def test_bleu4_equals_pycocoevalcap_bleu_on_the_same_tokens() -> None:
    from pycocoevalcap.bleu.bleu import Bleu

    hyps, refs = tokenized(PREDS), tokenized(REFS)
    score, scores = Bleu(4).compute_score(
        {i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}, verbose=0
    )
    corpus, per_sample = M.bleu4(PREDS, REFS)
    assert corpus == pytest.approx(score[3], abs=TOL)
    assert corpus > 0.1
    for mine, theirs, hyp in zip(per_sample, scores[3], hyps):
        assert mine == pytest.approx(theirs if hyp else 0.0, abs=TOL)


def test_cider_equals_pycocoevalcap_cider() -> None:
    from pycocoevalcap.cider.cider import Cider

    hyps, refs = tokenized(PREDS), tokenized(REFS)
    score, scores = Cider().compute_score({i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})
    corpus, per_sample = M.cider(PREDS, REFS)
    assert corpus == pytest.approx(float(score), abs=TOL)
    assert corpus > 0.5
    assert per_sample == pytest.approx([float(s) for s in scores], abs=TOL)


def test_rouge_l_equals_rouge_score() -> None:
    from rouge_score.rouge_scorer import RougeScorer

    corpus, per_sample = M.rouge_l(PREDS, REFS)
    # rouge-score's own tokenizer (ASCII letters and digits only) on the English rows ...
    default = RougeScorer(["rougeL"])
    for pred, ref, mine in zip(PREDS, REFS, per_sample):
        if all(ord(c) < 128 for c in pred + ref):
            assert mine == pytest.approx(default.score(ref, pred)["rougeL"].fmeasure, abs=TOL), (pred, ref)
    # ... and tokenized by medvl's words(), which also scores Chinese, on all of them.
    class Words:
        def tokenize(self, text: str) -> list[str]:
            return words(text)

    with_words = RougeScorer(["rougeL"], tokenizer=Words())
    expected = [with_words.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(PREDS, REFS)]
    assert per_sample == pytest.approx(expected, abs=TOL)
    assert corpus == pytest.approx(sum(expected) / len(expected), abs=TOL)
    assert any(mine > 0 for mine, row in zip(per_sample, ROWS) if row["dataset"] == "slake_zh")


def test_rouge_l_reads_a_numeric_reference_like_every_other_metric() -> None:
    per_sample, _ = M.compute_metrics(["2"], [2], metrics=["exact_match", "rouge_l", "word_f1"])
    assert per_sample[0] == {"exact_match": 1.0, "rouge_l": 1.0, "word_f1": 1.0}


def test_meteor_equals_pycocoevalcap_meteor_in_one_call() -> None:
    from pycocoevalcap.meteor.meteor import Meteor

    hyps, refs = tokenized(PREDS), tokenized(REFS)
    reference = Meteor()
    try:
        score, scores = reference.compute_score(
            {i: [r] for i, r in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}
        )
    finally:
        del reference
    corpus, per_sample = M.meteor(PREDS, REFS)
    assert corpus == pytest.approx(score, abs=TOL)
    assert 0.1 < corpus < 1.0
    assert per_sample == pytest.approx(scores, abs=TOL)
    # The JVM is started once and reused.
    assert M.meteor_scorer() is M.meteor_scorer()


def test_bertscore_equals_bert_score_and_is_not_zero() -> None:
    import bert_score

    model = M.default_bertscore_model()
    pairs = [(normalize_answer(p), normalize_answer(r)) for p, r in zip(PREDS, REFS)]
    keep = [i for i, (p, r) in enumerate(pairs) if p and r][::4]
    cands, refs = [pairs[i][0] for i in keep], [pairs[i][1] for i in keep]
    _, _, f1 = bert_score.score(cands, refs, model_type=model, num_layers=6)

    corpus, per_sample = M.bertscore_f1([PREDS[i] for i in keep], [REFS[i] for i in keep])
    assert per_sample == pytest.approx(f1.tolist(), abs=TOL)
    assert corpus == pytest.approx(f1.mean().item(), abs=TOL)
    assert 0.3 < corpus <= 1.0 + TOL
    # The same model object serves the next call.
    assert M.bertscore_scorer() is M.bertscore_scorer(model, 6)


def test_bertscore_batched_by_token_count_equals_bert_score_on_long_answers(tmp_path: Path) -> None:
    """medvl batches texts by token count, bert-score by word count: same scores, also rescaled."""
    import bert_score

    model = M.default_bertscore_model()
    long_refs = [r for r in REFS if isinstance(r, str) and len(r.split()) > 8]
    assert len(long_refs) >= 3
    # Texts whose word and token counts order differently ("x-ray" is 1 word, 3 tokens), in
    # batches of 4, so the two paths pad different texts together.
    refs = long_refs + ["pneumothorax x-ray ct-scan", "left lung", "yes"] * 2
    cands = list(reversed(refs))
    cands[0] = refs[0]  # a perfect match
    cands_n, refs_n = [normalize_answer(c) for c in cands], [normalize_answer(r) for r in refs]
    _, _, f1 = bert_score.score(cands_n, refs_n, model_type=model, num_layers=6, batch_size=4)
    _, per_sample = M.bertscore_f1(cands, refs, batch_size=4)
    assert per_sample == pytest.approx(f1.tolist(), abs=TOL)
    assert per_sample[0] == pytest.approx(1.0, abs=1e-5)

    baseline = tmp_path / "baseline.csv"  # bert-score's format: one row per layer, P,R,F
    baseline.write_text("LAYER,P,R,F\n" + "".join(f"{layer},0.3,0.35,0.4\n" for layer in range(7)))
    _, _, rescaled = bert_score.score(
        cands_n, refs_n, model_type=model, num_layers=6, lang="en", rescale_with_baseline=True, baseline_path=str(baseline)
    )
    _, per_sample = M.bertscore_f1(cands, refs, rescale_with_baseline=True, baseline_path=str(baseline))
    assert per_sample == pytest.approx(rescaled.tolist(), abs=TOL)
    assert per_sample == pytest.approx([(f - 0.4) / 0.6 for f in f1.tolist()], abs=TOL)


def test_bertscore_bfloat16_is_close_to_float32() -> None:
    pairs = [(p, r) for p, r in zip(PREDS, REFS) if normalize_answer(p) and normalize_answer(r)][::6]
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    exact, exact_scores = M.bertscore_f1(preds, refs)
    fast, fast_scores = M.bertscore_f1(preds, refs, dtype="bfloat16")
    assert fast_scores == pytest.approx(exact_scores, abs=1e-2)
    assert fast == pytest.approx(exact, abs=2e-3)
    with pytest.raises(ValueError, match="dtype"):
        M.bertscore_f1(preds, refs, dtype="float16")
    with pytest.raises(ValueError, match="bertscore_dtype"):
        M.compute_metrics(preds, refs, bertscore_dtype="int8")


def test_bertscore_empty_pairs_score_zero_without_touching_the_model() -> None:
    corpus, per_sample = M.bertscore_f1(["", None, "lung"], ["lung", "lung", "lung"])
    assert per_sample[:2] == [0.0, 0.0]
    assert per_sample[2] == pytest.approx(1.0, abs=1e-5)
    assert corpus == pytest.approx(per_sample[2] / 3, abs=TOL)
    assert M.bertscore_f1(["", "  "], ["a", "b"]) == (0.0, [0.0, 0.0])


# ------------------------------------------------------------------------------------------
# compute_metrics


def test_registry() -> None:
    # The registration order is the default metric order: the columns of metrics.json and the tables.
    assert list(M.METRICS) == SAMPLE_METRICS + CORPUS_METRICS
    assert all(M.METRICS[name].level == "sample" for name in SAMPLE_METRICS)
    assert all(M.METRICS[name].level == "corpus" for name in CORPUS_METRICS)
    assert all(metric.higher_is_better for metric in M.METRICS.values())
    assert M.METRICS["closed_accuracy"].answer_type == "CLOSED"
    assert M.METRICS["open_recall"].answer_type == "OPEN"
    with pytest.raises(ValueError, match="already registered"):
        M.register_metric("exact_match")(lambda p, r: 0.0)
    with pytest.raises(ValueError, match="level"):
        M.register_metric("x", level="token")


def test_compute_metrics_on_real_rows() -> None:
    timings: dict[str, float] = {}
    notes: dict[str, str] = {}
    per_sample, corpus = M.compute_metrics(PREDS, REFS, TYPES, timings=timings, notes=notes)
    # The Slake zh rows have no BERTScore without a multilingual model (tests/test_metrics_chinese.py),
    # so neither has the whole set.
    assert list(corpus) == [name for name in M.METRICS if name != "bertscore_f1"]
    assert "bertscore.model_zh" in notes["bertscore_f1"]
    assert set(timings) == set(M.METRICS)
    types = [M.resolve_answer_type(t, r) for t, r in zip(TYPES, REFS)]
    for name in SAMPLE_METRICS:
        values = [row[name] for row in per_sample if name in row]
        assert corpus[name] == pytest.approx(sum(values) / len(values), abs=TOL)
    assert sum("closed_accuracy" in row for row in per_sample) == types.count("CLOSED")
    assert sum("open_recall" in row for row in per_sample) == types.count("OPEN")
    assert all(("closed_accuracy" in row) == (t == "CLOSED") for row, t in zip(per_sample, types))
    # Corpus metrics agree with calling the metric alone.
    assert corpus["bleu4"] == pytest.approx(M.bleu4(PREDS, REFS)[0], abs=TOL)
    assert corpus["cider"] == pytest.approx(M.cider(PREDS, REFS)[0], abs=TOL)
    english = [row["bertscore_f1"] for row, lang in zip(per_sample, M.row_languages(REFS)) if lang == "en"]
    assert sum(english) / len(english) > 0.3
    for name in CORPUS_METRICS:
        assert all(name in row for row in per_sample)
    # Empty predictions score 0 on every metric.
    for pred, row in zip(PREDS, per_sample):
        if not normalize_answer(pred):
            assert all(value in (0.0, None) for value in row.values()), row
    # Hand check on the first rows: "MRI" / "MRI", then "The answer is MRI." / "MRI".
    assert per_sample[0]["exact_match"] == 1.0 and per_sample[1]["exact_match"] == 0.0
    assert per_sample[1]["substring_match"] == 1.0 and per_sample[1]["open_recall"] == 1.0
    assert per_sample[1]["word_precision"] == pytest.approx(1 / 4)


def test_compute_metrics_survives_bad_inputs() -> None:
    long_generation = "the lung is clear " * 5000  # 20,000 words, a generation that never stopped
    predictions = [None, 3.5, float("nan"), "", "   \n\t ", long_generation, "肝脏 🫁 ok", "a ||| b", "Yes", "x"]
    references = ["yes", "2", "lung", "liver", "lung", "Lung", "肝脏", "a b", "", None]
    per_sample, corpus = M.compute_metrics(predictions, references)
    assert len(per_sample) == len(predictions)
    # None: BERTScore left out on the Chinese row (no multilingual model configured).
    assert all(math.isfinite(value) for row in per_sample for value in row.values() if value is not None)
    assert [i for i, row in enumerate(per_sample) if None in row.values()] == [6]
    assert all(math.isfinite(value) for value in corpus.values())
    for index in (0, 1, 2, 3, 4, 8, 9):  # no prediction text, or no reference text
        assert all(value == 0.0 for value in per_sample[index].values()), (index, per_sample[index])
    assert per_sample[5]["open_recall"] == 1.0
    assert per_sample[6]["char_recall"] == 1.0
    assert per_sample[7]["exact_match"] == 1.0  # "a ||| b" cannot break METEOR's line protocol
    assert per_sample[7]["meteor"] > 0.5


def test_compute_metrics_edge_cases() -> None:
    assert M.compute_metrics([], []) == ([], {name: 0.0 for name in CORPUS_METRICS})
    per_sample, corpus = M.compute_metrics(["", None], ["", ""])
    assert all(value == 0.0 for row in per_sample for value in row.values())
    per_sample, corpus = M.compute_metrics(["Yes"], ["yes"], metrics=["exact_match", "closed_accuracy", "bleu4"])
    assert corpus == {"exact_match": 1.0, "closed_accuracy": 1.0, "bleu4": pytest.approx(M.bleu4(["Yes"], ["yes"])[0])}
    assert "open_recall" not in corpus  # no open rows: absent, not 0
    with pytest.raises(ValueError, match="unknown metrics"):
        M.compute_metrics(["a"], ["a"], metrics=["bleu"])
    with pytest.raises(ValueError, match="references"):
        M.compute_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="answer types"):
        M.compute_metrics(["a"], ["a"], ["OPEN", "OPEN"])


def test_compute_metrics_takes_one_metric_name_as_a_string() -> None:
    assert M.compute_metrics(["Yes"], ["yes"], metrics="exact_match") == ([{"exact_match": 1.0}], {"exact_match": 1.0})
    with pytest.raises(M.MetricError, match=r"unknown metrics \['bleu'\]"):
        M.compute_metrics(["a"], ["a"], metrics="bleu")


def test_make_corpus_fn_rescores_non_decomposable_corpus_metrics() -> None:
    corpus_fn = M.make_corpus_fn(PREDS, REFS)
    subset = [i for i, row in enumerate(ROWS) if row["dataset"] in ("vqa_rad", "llava_med")]
    result = corpus_fn(subset)
    # CIDEr is the mean of per-sample scores under the whole set's document frequencies.
    assert set(result) == {"bleu4", "meteor"}
    preds, refs = [PREDS[i] for i in subset], [REFS[i] for i in subset]
    assert result["bleu4"] == pytest.approx(M.bleu4(preds, refs)[0], abs=TOL)
    assert result["meteor"] == pytest.approx(M.meteor(preds, refs)[0], abs=TOL)
    assert M.make_corpus_fn(PREDS, REFS, metrics=["exact_match", "bleu4"])(subset).keys() == {"bleu4"}
    assert M.make_corpus_fn(PREDS, REFS, metrics=["exact_match", "cider"])(subset) == {}
