"""Tests of medvl.compare: run discovery, tables, bold, bootstrap CIs, McNemar and the CLI's errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from scipy import stats

from medvl.evaluation.compare import (
    CompareError,
    bootstrap_ci,
    compare,
    comparison_table,
    default_out_dir,
    discover_eval_dirs,
    load_runs,
    mcnemar,
    metric_directions,
    pairwise_significance,
    render_markdown,
    select_reference,
)

from .conftest import compare_cli, make_eval_dir, prediction_row

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# McNemar


def test_mcnemar_small_table_is_exact_binomial() -> None:
    # ref right / run wrong on items 0-1 (b = 2); ref wrong / run right on items 2-7 (c = 6);
    # both right on 8-9, both wrong on 10.
    ref = [1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0]
    run = [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0]
    result = mcnemar([bool(x) for x in ref], [bool(x) for x in run])
    assert (result["n"], result["b"], result["c"], result["method"]) == (11, 2, 6, "exact")
    assert result["statistic"] == 2.0
    assert result["p_value"] == pytest.approx(stats.binomtest(2, 8, 0.5).pvalue)
    assert result["p_value"] == pytest.approx(2 * (1 + 8 + 28) / 256)  # two-sided, by hand


def test_mcnemar_large_table_is_chi_square_with_continuity_correction() -> None:
    ref = [True] * 10 + [False] * 30 + [True] * 5
    run = [False] * 10 + [True] * 30 + [True] * 5
    result = mcnemar(ref, run)
    assert (result["b"], result["c"], result["method"]) == (10, 30, "chi2")
    assert result["statistic"] == pytest.approx((30 - 10 - 1) ** 2 / 40)  # 9.025
    assert result["p_value"] == pytest.approx(stats.chi2.sf(9.025, df=1))


def test_mcnemar_without_discordant_pairs_has_p_one() -> None:
    result = mcnemar([True, False], [True, False])
    assert (result["b"], result["c"], result["p_value"]) == (0, 0, 1.0)


# --------------------------------------------------------------------------------------------
# Bootstrap


def test_bootstrap_ci_contains_true_difference() -> None:
    import numpy as np

    rng = np.random.default_rng(1)
    ref = rng.normal(0.5, 0.1, size=400)
    run = ref + 0.05 + rng.normal(0, 0.05, size=400)  # true paired difference 0.05
    ci = bootstrap_ci(ref, run, n_boot=1000, seed=0)
    assert ci["n"] == 400
    assert ci["diff"] == pytest.approx(float(np.mean(run - ref)))
    assert ci["low"] < 0.05 < ci["high"]
    assert ci["low"] > 0  # clearly better
    assert ci == bootstrap_ci(ref, run, n_boot=1000, seed=0)  # seeded: reproducible


def test_bootstrap_ci_of_identical_runs_is_degenerate_at_zero() -> None:
    scores = [0.0, 1.0, 0.5, 0.25, 1.0]
    ci = bootstrap_ci(scores, scores, n_boot=200, seed=3)
    assert (ci["diff"], ci["low"], ci["high"]) == (0.0, 0.0, 0.0)


def test_bootstrap_ci_of_no_pairs_is_empty() -> None:
    assert bootstrap_ci([], [])["diff"] is None


# --------------------------------------------------------------------------------------------
# Tables and bold


def test_bold_goes_to_lowest_value_of_a_lower_is_better_metric(tmp_path: Path) -> None:
    a = make_eval_dir(tmp_path / "a", "A", [prediction_row(0, True, 1.0)], overall={"exact_match": 0.9, "perplexity": 12.5})
    b = make_eval_dir(tmp_path / "b", "B", [prediction_row(0, True, 1.0)], overall={"exact_match": 0.4, "perplexity": 3.25})
    runs = load_runs([a, b])
    table = comparison_table(runs)
    directions = metric_directions(["exact_match", "perplexity"])
    assert directions == {"exact_match": True, "perplexity": False}
    markdown = render_markdown(table, ["A", "B"], directions)
    lines = markdown.splitlines()
    assert "| perplexity ↓ | 12.5000 | **3.2500** |" in lines
    assert "| exact_match ↑ | **0.9000** | 0.4000 |" in lines
    assert "| count | 1 | 1 |" in lines
    # An explicit direction overrides the registry and the name rule.
    assert metric_directions(["perplexity"], {"perplexity": True}) == {"perplexity": True}


def test_comparison_table_is_tidy_with_counts_and_categories(tmp_path: Path) -> None:
    rows = [prediction_row(0, True, 1.0), prediction_row(1, None, 0.5)]
    by_category = {
        "closed_yes_no": {"exact_match": 1.0, "count": 1},
        "open_location": {"exact_match": 0.0, "count": 1},
    }
    a = make_eval_dir(tmp_path / "a", "A", rows, by_category=by_category)
    b = make_eval_dir(tmp_path / "b", "B", rows, by_category={"closed_yes_no": {"exact_match": 0.0, "count": 1}})
    table = comparison_table(load_runs([a, b]), ["exact_match"])
    assert {"run": "A", "breakdown": "category", "group": "open_location", "metric": "exact_match", "value": 0.0,
            "count": 1} in table
    assert not any(r["run"] == "B" and r["group"] == "open_location" for r in table)
    assert {"run": "A", "breakdown": "answer_type", "group": "open", "metric": "exact_match", "value": None,
            "count": 0} in table
    markdown = render_markdown(table, ["A", "B"], {"exact_match": True})
    assert "| closed_yes_no | exact_match ↑ | **1.0000** | 0.0000 |" in markdown
    assert "| open_location | exact_match ↑ | 0.0000 | — |" in markdown
    assert "| closed_yes_no | count | 1 | 1 |" in markdown
    assert "| open | exact_match" not in markdown  # no run has it: row left out, count kept
    assert "| open | count | 0 | 0 |" in markdown


# --------------------------------------------------------------------------------------------
# Discovery and loading


def test_discovery_of_globs_sweep_dirs_and_eval_subdirs(tmp_path: Path) -> None:
    sweep = tmp_path / "multirun"
    for job in (0, 1, 2, 10):  # numeric order: 10 after 2
        make_eval_dir(sweep / str(job) / "eval", "sweep", [prediction_row(0, True, 1.0)])
    (sweep / "multirun.yaml").write_text("{}")
    expected = [sweep / str(job) / "eval" for job in (0, 1, 2, 10)]
    assert discover_eval_dirs([sweep]) == expected
    assert discover_eval_dirs([str(sweep / "*")]) == expected
    assert discover_eval_dirs([sweep / "1"]) == [sweep / "1" / "eval"]
    assert discover_eval_dirs([sweep / "1" / "eval" / "metrics.json"]) == [sweep / "1" / "eval"]
    assert discover_eval_dirs([sweep / "1", sweep / "1" / "eval"]) == [sweep / "1" / "eval"]  # no duplicates

    runs = load_runs([sweep])
    assert [run.name for run in runs] == ["sweep@0", "sweep@1", "sweep@2", "sweep@10"]  # shared names made unique
    assert default_out_dir([sweep], runs) == sweep
    assert select_reference(runs, "sweep@2") == 2
    assert select_reference(runs, "3") == 3
    with pytest.raises(CompareError, match="neither a run name"):
        select_reference(runs, "nope")


def test_a_sweep_jobs_folder_named_with_brackets_is_a_path_not_a_glob(tmp_path: Path) -> None:
    """Hydra names a job's folder by its overrides: README's sweep without METEOR gives
    ``eval.metrics=[exact_match,...],lora.r=8``, which as a glob would match nothing."""
    job = tmp_path / "sweep" / "0_eval.metrics=[exact_match,bleu4],lora.r=8"
    make_eval_dir(job / "eval", "r8", [prediction_row(0, True, 1.0)])
    assert discover_eval_dirs([job / "eval"]) == discover_eval_dirs([job]) == [job / "eval"]
    assert discover_eval_dirs([tmp_path / "sweep"]) == [job / "eval"]


def test_default_out_dir_is_common_parent_or_timestamped(tmp_path: Path) -> None:
    a = make_eval_dir(tmp_path / "evals" / "a", "A", [prediction_row(0, True, 1.0)])
    b = make_eval_dir(tmp_path / "evals" / "b", "B", [prediction_row(0, True, 1.0)])
    runs = load_runs([a, b])
    assert default_out_dir([a, b], runs, cwd=tmp_path / "elsewhere") == tmp_path / "evals"
    # The working directory (a repository, say) is too general a parent to write into.
    out = default_out_dir([a, b], runs, cwd=tmp_path / "evals")
    assert out.parent == (tmp_path / "evals").resolve() / "outputs" / "compare"


def test_missing_path_and_missing_metrics_raise(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="no such file or directory"):
        discover_eval_dirs([tmp_path / "absent"])
    with pytest.raises(CompareError, match="holds no metrics.json"):
        discover_eval_dirs([tmp_path / "empty"])
    with pytest.raises(CompareError, match="no path matches"):
        discover_eval_dirs([str(tmp_path / "nothing*")])


# --------------------------------------------------------------------------------------------
# Paired statistics on runs


def test_pairwise_significance_pairs_by_id(tmp_path: Path) -> None:
    ref_rows = [prediction_row(i, i % 2 == 0, 0.5) for i in range(6)] + [prediction_row(6, None, 0.2)]
    # The other run scores only q1..q6 (q0 missing) in another order, plus q99 the reference lacks.
    run_rows = [prediction_row(i, True, 0.75) for i in reversed(range(1, 6))] + [prediction_row(6, None, 0.2), prediction_row(99, True, 1.0)]
    ref = make_eval_dir(tmp_path / "ref", "ref", ref_rows)
    run = make_eval_dir(tmp_path / "run", "run", run_rows)
    reference, other = load_runs([ref, run])
    result = pairwise_significance(reference, other, n_boot=100)
    assert (result["n_reference"], result["n_run"], result["n_common"]) == (7, 7, 6)
    # closed q1..q5: ref right on q2, q4; run right on all -> b = 0, c = 3.
    closed = result["mcnemar"]["closed_accuracy"]
    assert (closed["n"], closed["b"], closed["c"]) == (5, 0, 3)
    f1 = result["bootstrap"]["word_f1"]
    assert f1["n"] == 6 and f1["diff"] == pytest.approx((5 * 0.25 + 0) / 6)
    assert result["bootstrap"]["closed_accuracy"]["n"] == 5  # null on the open row


def test_disjoint_ids_are_stated(tmp_path: Path) -> None:
    a = make_eval_dir(tmp_path / "a", "A", [prediction_row(0, True, 1.0)])
    b = make_eval_dir(tmp_path / "b", "B", [prediction_row(1, True, 1.0)])
    result = pairwise_significance(*load_runs([a, b]))
    assert result["note"].startswith("no ids in common")
    assert result["bootstrap"] == {} and result["mcnemar"] == {}


def test_compare_writes_all_outputs(tmp_path: Path) -> None:
    rows = [prediction_row(i, i < 3, 0.5) for i in range(4)]
    a = make_eval_dir(tmp_path / "a", "A", rows)
    b = make_eval_dir(tmp_path / "b", "B", rows)
    result = compare([a, b], out_dir=tmp_path / "out", n_boot=50, metrics=["exact_match", "closed_accuracy"])
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["model_comparison.csv", "model_comparison.html", "model_comparison.json", "model_comparison_tables.md",
                     "significance.md"]
    with (tmp_path / "out" / "model_comparison.csv").open() as handle:
        records = list(csv.DictReader(handle))
    assert records[0].keys() == {"run", "breakdown", "group", "metric", "value", "count", "best"}
    assert {r["metric"] for r in records} == {"exact_match"}  # closed_accuracy is per-sample only here
    document = json.loads((tmp_path / "out" / "model_comparison.json").read_text())
    assert document["reference"] == "A"
    pair = document["significance"]["results"][0]
    assert pair["mcnemar"]["closed_accuracy"]["b"] == pair["mcnemar"]["closed_accuracy"]["c"] == 0
    assert set(pair["bootstrap"]) == {"exact_match", "closed_accuracy"}
    assert "## B vs A" in (tmp_path / "out" / "significance.md").read_text()
    assert result["out_dir"] == tmp_path / "out"
    with pytest.raises(CompareError, match="unknown metric"):
        compare([a, b], out_dir=tmp_path / "out2", metrics=["bleu99"])


# --------------------------------------------------------------------------------------------
# The command line


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    make_eval_dir(tmp_path / "a", "A", [prediction_row(0, True, 1.0)])
    (tmp_path / "no_metrics").mkdir()
    for bad in ("missing_dir", "no_metrics"):
        proc = compare_cli("a", bad, cwd=tmp_path)
        assert proc.returncode == 2
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("medvl: ")
        assert bad in proc.stderr


def test_cli_refuses_a_metric_without_a_registered_direction_in_one_line(tmp_path: Path) -> None:
    # Which run is best on an unregistered metric is unknown: never guessed from its name.
    for name in ("a", "b"):
        make_eval_dir(tmp_path / name, name.upper(), [prediction_row(0, True, 1.0)],
                      overall={"exact_match": 0.5, "my_score": 0.3})
    proc = compare_cli("a", "b", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("medvl: ") and "'my_score'" in proc.stderr


def test_cli_compares_a_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    make_eval_dir(sweep / "0" / "eval", "base", [prediction_row(i, i < 2, 0.5) for i in range(4)])
    make_eval_dir(sweep / "1" / "eval", "lora", [prediction_row(i, True, 0.75) for i in range(4)])
    make_eval_dir(sweep / "2", "other_data", [prediction_row(50, True, 1.0)])  # job dir itself is the eval dir
    proc = compare_cli(str(sweep), "--reference", "lora", "--n-boot", "100", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Model comparison" in proc.stdout
    assert "medvl: warning: other_data vs lora: no ids in common" in proc.stderr
    assert (sweep / "model_comparison_tables.md").is_file()
    assert "no ids in common" in (sweep / "significance.md").read_text()


def test_nll_is_lower_is_better_and_a_zero_width_ci_is_not_starred() -> None:
    from medvl.evaluation.compare import render_significance

    assert metric_directions(["nll_per_token"]) == {"nll_per_token": False}
    ci = {"n": 3, "reference_mean": 0.5, "other_mean": 0.5, "diff": 0.0}
    result = {"reference": "A", "run": "B", "n_reference": 3, "n_run": 3, "n_common": 3, "note": None,
              "mcnemar": {}, "skipped": {},
              "bootstrap": {"bleu4": {**ci, "low": 1e-17, "high": 2e-16},  # round-off of identical corpora
                            "exact_match": {**ci, "diff": 0.2, "low": 0.1, "high": 0.3}}}
    lines = render_significance([result], {"bleu4": True, "exact_match": True}).splitlines()
    assert any(line.startswith("| bleu4 ") and line.endswith("[+0.0000, +0.0000] |") for line in lines)
    assert any(line.startswith("| exact_match ") and line.endswith("[+0.1000, +0.3000] * |") for line in lines)
