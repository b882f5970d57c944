"""medvl.compare's paired statistics against independent computations: corpus BLEU-4 and perplexity
resampled as corpus statistics, McNemar on a grid of tables, and runs on different data refused."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from medvl.evaluation.compare import (
    CompareError,
    bootstrap_ci,
    bootstrap_corpus_ci,
    compare,
    load_runs,
    mcnemar,
    pairwise_significance,
)
from medvl.evaluation.metrics import bleu4

from .conftest import compare_cli, make_eval_dir

ANSWERS = ["left lung", "the liver is enlarged", "yes", "no", "two nodules in the right lobe", "ct", "brain",
           "a mass in the upper left lobe of the lung", "heart", "mri scan of the abdomen"]


def _text_rows(predictions: list[str], nll_scale: float) -> list[dict]:
    rows = []
    for i, (pred, ref) in enumerate(zip(predictions, ANSWERS)):
        n_tokens = len(ref.split()) + 1
        nll = nll_scale * (1 + i % 3) * n_tokens
        rows.append({"id": f"q{i}", "question": "?", "reference": ref, "prediction": pred, "category": "open_location",
                     "answer_type": "OPEN", "metrics": {"bleu4": 0.123 * (i % 2), "meteor": 0.5},
                     "nll": nll, "n_tokens": n_tokens, "perplexity": math.exp(nll / n_tokens)})
    return rows


def _runs(tmp_path: Path):
    weak = ["lung", "liver", "yes", "yes", "nodules in the lobe", "mri", "brain", "a mass", "heart", "ct scan"]
    strong = ["left lung", "the liver is enlarged", "yes", "no", "two nodules in right lobe", "ct", "brain",
              "a mass in the left lobe of the lung", "heart", "mri of the abdomen"]
    a = make_eval_dir(tmp_path / "a", "weak", _text_rows(weak, 1.0))
    # The other run lists its rows in another order: pairing must be by id.
    b = make_eval_dir(tmp_path / "b", "strong", list(reversed(_text_rows(strong, 0.25))))
    return load_runs([a, b]), weak, strong


def test_bleu4_ci_is_of_the_corpus_bleu_not_the_mean_of_sentence_scores(tmp_path: Path) -> None:
    (ref, other), weak, strong = _runs(tmp_path)
    ci = pairwise_significance(ref, other, n_boot=300)["bootstrap"]["bleu4"]
    # The values beside the CI are the corpus BLEU-4 that medvl.eval puts in the tables.
    assert ci["reference_mean"] == pytest.approx(bleu4(weak, ANSWERS)[0], abs=1e-9)
    assert ci["other_mean"] == pytest.approx(bleu4(strong, ANSWERS)[0], abs=1e-9)
    assert ci["diff"] == pytest.approx(bleu4(strong, ANSWERS)[0] - bleu4(weak, ANSWERS)[0], abs=1e-9)
    assert ci["low"] <= ci["diff"] <= ci["high"]


def test_bleu4_resample_recomputes_corpus_score(tmp_path: Path) -> None:
    # One resample by hand: the statistic of a draw equals bleu4 on the drawn rows.
    (ref, _), weak, _ = _runs(tmp_path)
    from medvl.evaluation.compare.stats import corpus_statistic, corpus_stats

    by_id = corpus_stats(ref, "bleu4")
    draw = [0, 0, 3, 7, 7, 7, 9, 1]
    totals = np.sum([by_id[f"q{i}"] for i in draw], axis=0)
    assert float(corpus_statistic("bleu4", totals)) == pytest.approx(
        bleu4([weak[i] for i in draw], [ANSWERS[i] for i in draw])[0], abs=1e-9)


def test_perplexity_ci_is_of_the_corpus_perplexity(tmp_path: Path) -> None:
    (ref, other), _, _ = _runs(tmp_path)
    ci = pairwise_significance(ref, other, n_boot=300)["bootstrap"]["perplexity"]
    rows_a, rows_b = ref.rows, other.rows
    corpus_a = math.exp(sum(r["nll"] for r in rows_a) / sum(r["n_tokens"] for r in rows_a))
    corpus_b = math.exp(sum(r["nll"] for r in rows_b) / sum(r["n_tokens"] for r in rows_b))
    assert ci["reference_mean"] == pytest.approx(corpus_a) and ci["other_mean"] == pytest.approx(corpus_b)
    assert ci["low"] <= ci["diff"] <= ci["high"] < 0


def test_meteor_gets_no_ci_of_another_quantity(tmp_path: Path) -> None:
    (ref, other), _, _ = _runs(tmp_path)
    result = pairwise_significance(ref, other, n_boot=50)
    assert "meteor" not in result["bootstrap"] and "meteor" in result["skipped"]


def test_bootstrap_corpus_ci_of_identical_runs_is_zero() -> None:
    stats_ = [[1.0, 2.0], [3.0, 2.0], [0.5, 4.0]]
    ci = bootstrap_corpus_ci(stats_, stats_, lambda t: np.exp(t[..., 0] / t[..., 1]), n_boot=100)
    assert (ci["diff"], ci["low"], ci["high"]) == (0.0, 0.0, 0.0)


def _mcnemar_reference(b: int, c: int) -> tuple[float, float]:
    """Exact two-sided binomial (2 * lower tail, capped at 1) below 25 discordant pairs, else chi2 with correction."""
    n = b + c
    if n == 0:
        return 0.0, 1.0
    if n < 25:
        k = min(b, c)
        return float(k), min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)
    statistic = (abs(b - c) - 1) ** 2 / n
    return statistic, float(stats.chi2.sf(statistic, 1))


@pytest.mark.parametrize("b,c,both_right,both_wrong", [
    (0, 0, 5, 3), (0, 0, 0, 0), (0, 1, 2, 2), (3, 3, 1, 0), (12, 12, 4, 4), (0, 24, 1, 1),
    (12, 13, 0, 0), (13, 13, 2, 2), (10, 30, 5, 5), (40, 1, 0, 7),
])
def test_mcnemar_matches_hand_computation(b: int, c: int, both_right: int, both_wrong: int) -> None:
    ref = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    run = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    result = mcnemar(ref, run)
    statistic, p_value = _mcnemar_reference(b, c)
    assert (result["b"], result["c"], result["n"]) == (b, c, len(ref))
    assert result["statistic"] == pytest.approx(statistic)
    assert result["p_value"] == pytest.approx(p_value, rel=1e-9)
    if b + c:
        assert result["p_value"] == pytest.approx(
            stats.binomtest(b, b + c, 0.5).pvalue if b + c < 25 else stats.chi2.sf(statistic, 1))


def _with_data(path: Path, data: str, split: str | None = "test") -> Path:
    metrics = json.loads((path / "metrics.json").read_text())
    metrics["run"]["data"] = data
    metrics["run"]["split"] = split
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_runs_on_different_data_are_refused_in_one_line(tmp_path: Path) -> None:
    rows = _text_rows(ANSWERS, 1.0)  # the same ids on both: only the recorded data tells them apart
    a = _with_data(make_eval_dir(tmp_path / "a", "A", rows), "slake")
    b = _with_data(make_eval_dir(tmp_path / "b", "B", rows), "vqa_rad")
    with pytest.raises(CompareError, match="different data"):
        compare([a, b], out_dir=tmp_path / "out", n_boot=10)
    _with_data(b, "slake", "validation")
    with pytest.raises(CompareError, match="different data"):
        compare([a, b], out_dir=tmp_path / "out", n_boot=10)
    proc = compare_cli(str(a), str(b), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "different data" in proc.stderr
    _with_data(b, "slake", None)  # an older run without a recorded split is not refused
    compare([a, b], out_dir=tmp_path / "out", n_boot=10)


def _prepared_in(path: Path, directory: str) -> Path:
    fingerprint = path / "eval_fingerprint.json"
    recorded = json.loads(fingerprint.read_text()) if fingerprint.is_file() else {}
    fingerprint.write_text(json.dumps({**recorded, "data": directory}))
    return path


def test_runs_on_different_prepared_data_of_one_dataset_are_refused(tmp_path: Path) -> None:
    """Slake's English and Chinese test sets are both data=slake, split test: the prepared directory tells them
    apart. Its place does not matter (runs from two machines), its name does."""
    rows = _text_rows(ANSWERS, 1.0)
    a = _prepared_in(_with_data(make_eval_dir(tmp_path / "a", "A", rows), "slake"), "/cluster/outputs/data/slake_en")
    b = _prepared_in(_with_data(make_eval_dir(tmp_path / "b", "B", rows), "slake"), "outputs/data/slake_zh")
    with pytest.raises(CompareError, match=r"different data \(.*slake \(slake_en\)/test, .*slake \(slake_zh\)/test\)"):
        compare([a, b], out_dir=tmp_path / "out", n_boot=10)
    _prepared_in(b, "/home/me/medvl/outputs/data/slake_en")
    compare([a, b], out_dir=tmp_path / "out", n_boot=10)


def test_sweep_summary_survives_jobs_on_different_data(tmp_path: Path) -> None:
    from medvl.training.sweep import summarize_sweep

    for num, data in enumerate(("slake", "vqa_rad")):
        job = tmp_path / f"{num}_data={data}"
        _with_data(make_eval_dir(job / "eval", data, _text_rows(ANSWERS, 1.0)), data)
        (job / "job_status.json").write_text(json.dumps({"num": num, "overrides": [f"data={data}"], "dir": str(job),
                                                         "status": "ok"}))
    summary = summarize_sweep(tmp_path)
    assert summary["failed"] == [] and (tmp_path / "sweep_summary.md").is_file()


@pytest.mark.parametrize(("n", "n_boot"), [(50, 500), (2100, 2000)])  # 2100 pairs: resampled in two chunks
def test_paired_bootstrap_is_scipys_percentile_bootstrap(n: int, n_boot: int) -> None:
    # The same draws as scipy.stats.bootstrap; medvl keeps its own percentile step only because scipy's
    # differs in the last bit (see medvl.evaluation.resample.percentile_ci).
    rng = np.random.default_rng(3)
    ref, run = rng.random(n), (rng.random(n) < 0.5).astype(float)
    ours = bootstrap_ci(ref, run, n_boot=n_boot, seed=7, confidence=0.9)
    theirs = stats.bootstrap((run - ref,), np.mean, n_resamples=n_boot, batch=max(1, 4_000_000 // n),
                             method="percentile", confidence_level=0.9, rng=np.random.default_rng(7))
    assert ours["low"] == pytest.approx(float(theirs.confidence_interval.low), abs=1e-12)
    assert ours["high"] == pytest.approx(float(theirs.confidence_interval.high), abs=1e-12)
    assert bootstrap_ci([0.2], [0.7])["low"] == bootstrap_ci([0.2], [0.7])["high"] == pytest.approx(0.5)
