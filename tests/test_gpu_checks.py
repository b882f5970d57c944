"""benchmarks/gpu_checks.py runs every GPU check of issue 12 in one script: ``--smoke`` runs its steps on the CPU
at tiny sizes and summarizes them, a missing package or a step out of time is a "skipped"/"timed out" row."""

from __future__ import annotations

import sys

import pytest

from .conftest import benchmark_module


@pytest.fixture(scope="module")
def checks():
    with benchmark_module("gpu_checks") as module:
        yield module


def test_smoke_runs_every_step_and_summarizes_it(checks, tmp_path, cache_dir):
    rows = checks.main(["--smoke", "--out", str(tmp_path)])
    by_item = {(step, item): result for step, item, result in rows}
    assert by_item[("pytest -m gpu", "test_models::test_bf16_training_step_on_gpu")] == "skipped: needs a CUDA GPU"
    assert "tokens/s, MFU" in by_item[("gpu_train", "2b lora packed")]
    assert by_item[("gpu_train", "2b lora packed liger")].startswith("skipped: trainer.liger=true needs a CUDA GPU")
    assert "identical token ids 6/6" in by_item[("eval_generation", "2b")]
    assert {item for step, item, _ in rows if step == "packages"} == set(checks.OPTIONAL)
    summary = (tmp_path / "summary.md").read_text()
    assert summary.startswith("# GPU checks (smoke, CPU); tests: exit 0") and "| gpu_train | 2b lora packed |" in summary
    names = {p.name for p in tmp_path.iterdir()}
    # What the device tool brings back: at most 8 files, none deeper than $OUT/a/b.
    assert names == {"summary.md", "gpu_tests.log", "gpu_tests.xml", "gpu_train.log", "gpu_train.json",
                     "eval_generation.log", "eval_generation.json"}


def test_a_missing_package_or_result_is_a_row_that_says_why(checks, monkeypatch, tmp_path):
    monkeypatch.setattr(checks, "OPTIONAL", {"no_such_package_medvl": "trainer.something=true"})
    assert checks.packages() == [("packages", "no_such_package_medvl", "skipped: no_such_package_medvl is not "
                                                                      "installed (trainer.something=true skipped)")]
    assert checks.train_rows(tmp_path / "absent.json", "timed out after 5 s") == [
        ("gpu_train", "(all)", "no results: timed out after 5 s")]


def test_a_step_out_of_time_is_stopped(checks, tmp_path):
    status = checks.run_step("sleepy", [sys.executable, "-c", "import time; print('started', flush=True); "
                                                              "time.sleep(60)"], 2, tmp_path)
    assert status == "timed out after 2 s"
    assert (tmp_path / "sleepy.log").read_text() == "started\n"


def test_tests_cut_off_by_their_time_limit_keep_the_results_they_had(checks, tmp_path):
    """pytest writes its XML at the end: a run stopped at the limit leaves the verbose log, which still names the
    tests that finished."""
    log = tmp_path / "gpu_tests.log"
    log.write_text("tests/test_liger.py::test_liger_kernels_on_a_gpu_compute_what_the_model_computed[tiny] PASSED [ 4%]\n"
                   "tests/test_models.py::test_bf16_training_step_on_gpu FAILED                       [ 8%]\n"
                   "tests/test_speed_options.py::test_gpu_options_train_the_tiny_model[lora.qlora")
    assert checks.test_rows(tmp_path / "absent.xml", "timed out after 150 s", log) == [
        ("pytest -m gpu", "test_liger::test_liger_kernels_on_a_gpu_compute_what_the_model_computed[tiny]", "passed"),
        ("pytest -m gpu", "test_models::test_bf16_training_step_on_gpu", "failed"),
        ("pytest -m gpu", "(the rest)", "no results: timed out after 150 s")]


def test_the_kernel_comparisons_run_before_the_whole_runs(checks):
    files = checks.gpu_test_files()
    assert files[:4] == [f"tests/{name}" for name in checks.FIRST]
    assert "tests/test_speed_options.py" in files[4:] and len(set(files)) == len(files)
