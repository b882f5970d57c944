"""``evaluate(cfg, overrides)`` end to end on the tiny model: outputs, checkpoint kinds, resume,
perplexity, prompts, errors, uncategorized rows and multiple choice."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import medvl.evaluation.generate as generate_mod
import medvl.evaluation.run as eval_run
from medvl.data.dataset import IGNORE_INDEX, encode
from medvl.data.format import answer_of, question_of, read_jsonl, write_jsonl
from medvl.data.taxonomy import CATEGORIES
from medvl.evaluation.metrics import METRICS
from medvl.evaluation.perplexity import answer_nll, corpus_perplexity
from medvl.evaluation.report import SUMMARY_GROUPS
from medvl.evaluation.run import load_for_eval
from medvl.runs import RunDir

from .conftest import REPO, compose_config, run_eval, small_data_overrides

TRAIN = ["trainer.max_steps=4", "trainer.per_device_train_batch_size=8", "trainer.logging_steps=1",
         "trainer.save_steps=1000"]
# The same batch size everywhere, so that predictions of different runs are compared batch for batch.
FAST = ["max_new_tokens=4", "batch_size=16"]
N_TEST = 48  # small_synth's test split
CHARTS = ("chart_matching.png", "chart_fine_grained.png", "chart_generation.png", "chart_perplexity.png")


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cache_dir, small_synth) -> Path:
    """A tiny LoRA run trained for a few steps on the small synthetic data."""
    from medvl.training.run import train

    out = tmp_path_factory.mktemp("eval-run")
    train(compose_config(cache_dir, "train", [*TRAIN, *small_data_overrides(small_synth)], out))
    return out


@pytest.fixture(scope="module")
def run_eval_dir(tmp_path_factory, cache_dir, run_dir) -> Path:
    """``+ckpt=<run dir>`` and nothing about model or data: every default metric, once."""
    out = tmp_path_factory.mktemp("eval-of-run")
    result = run_eval(cache_dir, out, [f"+ckpt={run_dir}", *FAST])
    assert set(result) == {"ckpt"}
    return out


# ------------------------------------------------------------------------------------------------
# Outputs of one evaluation


def test_predictions_have_every_field(run_eval_dir, small_synth):
    rows = read_jsonl(small_synth / "test.jsonl")
    recs = predictions(run_eval_dir)
    assert [r["id"] for r in recs] == [r["id"] for r in rows]
    every_metric = set(METRICS)
    for rec, row in zip(recs, rows):
        assert rec["question"] == question_of(row) and "<image>" not in rec["question"]
        assert rec["reference"] == answer_of(row)
        assert isinstance(rec["prediction"], str)
        assert (rec["category"], rec["answer_type"]) == (row["category"], row["answer_type"])
        assert rec["meta"] == row["meta"]
        # Every default metric that applies to the row's answer type, plus the answer's NLL per token.
        other_type = "open_recall" if rec["answer_type"] == "CLOSED" else "closed_accuracy"
        assert set(rec["metrics"]) == every_metric - {other_type} | {"nll_per_token"}
        assert all(isinstance(v, float) for v in rec["metrics"].values())
        assert rec["n_tokens"] >= 2 and rec["nll"] > 0
        assert rec["perplexity"] == pytest.approx(math.exp(rec["nll"] / rec["n_tokens"]))
        assert rec["metrics"]["nll_per_token"] == pytest.approx(rec["nll"] / rec["n_tokens"])


def test_metrics_json_counts_add_up(run_eval_dir, run_dir):
    recs = predictions(run_eval_dir)
    tables = json.loads((run_eval_dir / "metrics.json").read_text())
    assert tables["overall"]["count"] == len(recs) == N_TEST
    assert tables["closed"]["count"] == sum(r["answer_type"] == "CLOSED" for r in recs)
    assert tables["open"]["count"] == sum(r["answer_type"] == "OPEN" for r in recs)
    assert tables["closed"]["count"] + tables["open"]["count"] == N_TEST
    assert {c: g["count"] for c, g in tables["by_category"].items()} == Counter(r["category"] for r in recs)
    assert set(tables["by_category"]) <= set(CATEGORIES)
    # synth's breakdown by modality
    assert sum(g["count"] for g in tables["by_modality"].values()) == N_TEST
    assert set(tables["by_modality"]) == {r["meta"]["modality"] for r in recs}
    # A sample metric's value for a group is the mean over the group's rows.
    closed = [r for r in recs if r["answer_type"] == "CLOSED"]
    assert tables["closed"]["closed_accuracy"] == pytest.approx(
        sum(r["metrics"]["closed_accuracy"] for r in closed) / len(closed))
    assert "open_recall" not in tables["closed"]
    assert tables["overall"]["exact_match"] == pytest.approx(sum(r["metrics"]["exact_match"] for r in recs) / N_TEST)
    assert set(METRICS) <= set(tables["overall"])
    assert tables["run"]["ckpt"] == str(run_dir / "adapter")
    assert tables["run"]["name"] == run_dir.name


def test_csv_markdown_and_charts_are_written(run_eval_dir):
    tables = json.loads((run_eval_dir / "metrics.json").read_text())
    with open(run_eval_dir / "by_category.csv", newline="", encoding="utf-8") as f:
        csv_rows = list(csv.DictReader(f))
    by_name = {r["category"]: r for r in csv_rows}
    assert set(by_name) == set(tables["by_category"]) | set(SUMMARY_GROUPS)
    for cat, group in tables["by_category"].items():
        assert int(by_name[cat]["count"]) == group["count"]
        assert by_name[cat]["answer_type"] == CATEGORIES[cat][0]
        assert float(by_name[cat]["exact_match"]) == pytest.approx(group["exact_match"])
    assert int(by_name["overall"]["count"]) == N_TEST

    md = (run_eval_dir / "tables.md").read_text(encoding="utf-8")
    counts = " | ".join(str(tables[g]["count"]) for g in SUMMARY_GROUPS)
    assert f"| count | {counts} |" in md
    assert "## By category" in md and "## modality" in md
    assert f"| perplexity | {tables['overall']['perplexity']:.4f} |" in md

    for name in CHARTS:
        with Image.open(run_eval_dir / name) as im:
            assert im.format == "PNG" and im.size[0] > 100


def test_console_table_is_readable_in_logs(run_eval_dir, capsys):
    # Output captured (not a terminal), as in a log file or CI: no column is cut to "0.…".
    from medvl.evaluation.report import console, console_table

    tables = json.loads((run_eval_dir / "metrics.json").read_text())
    console().print(console_table(tables))
    text = capsys.readouterr().out
    assert "…" not in text
    header = next(line for line in text.splitlines() if "exact_match" in line)
    assert "bertscore_f1" in header and "perplexity" in header
    overall = next(line for line in text.splitlines() if "overall" in line)
    assert f"{tables['overall']['exact_match']:.4f}" in overall


def test_run_config_supplies_model_and_data(run_eval_dir, run_dir, small_synth):
    """Only +ckpt was given: the run's data (48 test rows under small_synth) is evaluated, not
    conf/data/synth.yaml's default 300 rows under the cache."""
    used = OmegaConf.load(run_eval_dir / "eval_config.yaml")
    trained = OmegaConf.load(run_dir / "config.yaml")
    assert used.data.root == str(small_synth) == trained.data.root
    assert used.data.num_test == N_TEST
    assert used.model == trained.model
    assert len(predictions(run_eval_dir)) == N_TEST


def test_command_line_data_key_wins_over_the_run_config(cache_dir, run_dir, small_synth, tmp_path):
    out = tmp_path / "eval"
    result = run_eval(cache_dir, out, [f"+ckpt={run_dir}", "data.max_eval_samples=8", "metrics=[exact_match]",
                                       "perplexity=false", *FAST])
    used = OmegaConf.load(out / "eval_config.yaml")
    assert used.data.max_eval_samples == 8
    assert used.data.root == str(small_synth)  # the rest of data still comes from the run
    recs = predictions(out)
    assert [r["id"] for r in recs] == [r["id"] for r in read_jsonl(small_synth / "test.jsonl")[:8]]
    assert result["ckpt"]["overall"]["count"] == 8
    assert all(r["perplexity"] is None for r in recs) and "perplexity" not in result["ckpt"]["overall"]


# ------------------------------------------------------------------------------------------------
# What +ckpt points at


def test_run_dir_adapter_dir_and_merged_model_agree(cache_dir, run_dir, run_eval_dir, small_synth, tmp_path):
    from peft import PeftModel

    from medvl.models.loading import load_model, load_processor

    trained = OmegaConf.load(run_dir / "config.yaml")
    merged_dir = tmp_path / "merged"
    merged = PeftModel.from_pretrained(load_model(trained.model), str(run_dir / "adapter")).merge_and_unload()
    merged.save_pretrained(merged_dir)
    load_processor(trained.model, str(run_dir / "adapter")).save_pretrained(merged_dir)
    assert RunDir.from_ckpt(merged_dir).kind == "model"
    assert RunDir.from_ckpt(run_dir / "adapter").kind == "adapter"

    reference = predictions(run_eval_dir)
    assert len({r["prediction"] for r in reference}) > 3  # not one answer for every row
    run_eval(cache_dir, tmp_path / "adapter", [f"+ckpt={run_dir / 'adapter'}", "metrics=[exact_match]", *FAST])
    # A merged model dir has no run config: data is given on the command line.
    run_eval(cache_dir, tmp_path / "model", [f"+ckpt={merged_dir}", "metrics=[exact_match]", *FAST,
                                             *small_data_overrides(small_synth)])
    for kind in ("adapter", "model"):
        recs = predictions(tmp_path / kind)
        assert [r["id"] for r in recs] == [r["id"] for r in reference], kind
        assert [r["prediction"] for r in recs] == [r["prediction"] for r in reference], kind
        assert [r["nll"] for r in recs] == pytest.approx([r["nll"] for r in reference], rel=1e-5), kind
    assert json.loads((tmp_path / "model" / "metrics.json").read_text())["run"]["ckpt"] == str(merged_dir)


def test_compare_base_writes_both_and_a_comparison(cache_dir, run_dir, tmp_path):
    out = tmp_path / "cmp"
    result = run_eval(cache_dir, out, [f"+ckpt={run_dir}", "compare_base=true", "data.max_eval_samples=8",
                                       "metrics=[exact_match,closed_accuracy]", *FAST])
    assert set(result) == {"base", "ckpt"}
    for sub in ("base", "ckpt"):
        for name in ("predictions.jsonl", "metrics.json", "by_category.csv", "tables.md", "report.html"):
            assert (out / sub / name).is_file(), f"{sub}/{name}"
    assert not (out / "predictions.jsonl").exists()
    # The two predictions side by side, with the data's images as thumbnails (tests/test_html_report.py has the rest).
    report = (out / "report.html").read_text(encoding="utf-8")
    assert "<th>base</th><th>fine-tuned</th>" in report and report.count('src="data:image/jpeg;base64,') == 8
    base_tables = json.loads((out / "base" / "metrics.json").read_text())
    tuned_tables = json.loads((out / "ckpt" / "metrics.json").read_text())
    assert base_tables["run"]["ckpt"] is None
    assert tuned_tables["run"]["ckpt"] == str(run_dir / "adapter")
    base, tuned = predictions(out / "base"), predictions(out / "ckpt")
    assert [r["id"] for r in base] == [r["id"] for r in tuned] and len(base) == 8
    # The base model really is the base: trained LoRA weights change the answers' likelihood.
    assert any(abs(b["nll"] - t["nll"]) > 1e-3 for b, t in zip(base, tuned))

    md = (out / "comparison.md").read_text(encoding="utf-8")
    assert md.startswith("| Group | Metric | base | fine-tuned |")
    for group in SUMMARY_GROUPS:
        for metric in ("exact_match", "perplexity"):
            assert (f"| {group} | {metric} | {base_tables[group][metric]:.4f} | "
                    f"{tuned_tables[group][metric]:.4f} |") in md
    assert f"| closed | closed_accuracy | {base_tables['closed']['closed_accuracy']:.4f} |" in md


# ------------------------------------------------------------------------------------------------
# Prompts


@pytest.mark.parametrize("prompt, system", [("custom", "Answer with a single word or phrase."),
                                            ("default", "You are a helpful assistant.")])
def test_system_prompt_is_in_the_system_role(prompt, system, cache_dir, small_synth, tmp_path, monkeypatch):
    texts: dict[str, list[str]] = {"generate": [], "perplexity": []}

    def spy(name, key):
        """Record the text of what ``generate_mod.<name>`` encodes (its processor: the argument named so)."""
        real = getattr(generate_mod, name)

        def wrapper(*args, **kwargs):
            items = real(*args, **kwargs)
            processor = kwargs.get("processor") or next(a for a in args if hasattr(a, "tokenizer"))
            for item in items if isinstance(items, list) else [items]:
                texts[key].append(processor.tokenizer.decode(item["input_ids"]))
            return items

        monkeypatch.setattr(generate_mod, name, wrapper)

    spy("encode_prompts", "generate")
    spy("append_answer", "perplexity")  # perplexity's items: the prompts with their answers appended
    out = tmp_path / "eval"
    run_eval(cache_dir, out, [f"prompt={prompt}", "data.max_eval_samples=2", "metrics=[exact_match]", *FAST,
                              *small_data_overrides(small_synth)])
    assert len(texts["generate"]) == len(texts["perplexity"]) == 2
    header = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
    for text in texts["generate"]:
        assert text.startswith(header) and text.count("<|im_start|>system") == 1
        assert text.endswith("<|im_start|>assistant\n")
    for text in texts["perplexity"]:
        assert text.startswith(header)
    other = "You are a helpful assistant." if prompt == "custom" else "Answer with a single word or phrase."
    assert not any(other in t for t in texts["generate"] + texts["perplexity"])
    run = json.loads((out / "metrics.json").read_text())["run"]
    assert run["prompt"] == prompt
    assert run["system_prompt"] == (system if prompt == "custom" else None)


# ------------------------------------------------------------------------------------------------
# Resume


class Interrupted(Exception):
    pass


def test_resume_after_interruption_skips_finished_rows(cache_dir, run_dir, small_synth, tmp_path, monkeypatch):
    real = generate_mod.generate_batch
    asked: list[str] = []

    def dies_on_third_batch(model, processor, rows, *args, **kwargs):
        if len(asked) == 8:
            raise Interrupted
        asked.extend(r["id"] for r in rows)
        return real(model, processor, rows, *args, **kwargs)

    out = tmp_path / "eval"
    overrides = [f"+ckpt={run_dir}", "data.max_eval_samples=12", "batch_size=4", "max_new_tokens=4",
                 "metrics=[exact_match]"]
    monkeypatch.setattr(generate_mod, "generate_batch", dies_on_third_batch)
    with pytest.raises(Interrupted):
        run_eval(cache_dir, out, overrides)
    ids = [r["id"] for r in read_jsonl(small_synth / "test.jsonl")[:12]]
    path = out / "predictions.jsonl"
    done = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in done] == ids[:8]

    # Mark the finished rows so that a regenerated row would show, and tear a half-written line.
    for rec in done:
        rec["prediction"] = f"kept {rec['id']}"
    torn = json.dumps({**done[-1], "id": ids[8], "prediction": "torn"})
    path.write_text("".join(json.dumps(r) + "\n" for r in done) + torn[: len(torn) // 2], encoding="utf-8")

    asked.clear()

    def counting(model, processor, rows, *args, **kwargs):
        asked.extend(r["id"] for r in rows)
        return real(model, processor, rows, *args, **kwargs)

    monkeypatch.setattr(generate_mod, "generate_batch", counting)
    result = run_eval(cache_dir, out, overrides)
    assert asked == ids[8:]
    recs = predictions(out)
    assert [r["id"] for r in recs] == ids  # all rows, in split order, none twice
    assert [r["prediction"] for r in recs[:8]] == [f"kept {i}" for i in ids[:8]]
    assert not any(r["prediction"] in ("torn",) or r["prediction"].startswith("kept") for r in recs[8:])
    assert all("exact_match" in r["metrics"] and r["nll"] is not None for r in recs)
    assert result["ckpt"]["overall"]["count"] == 12

    # A finished evaluation run again generates nothing and stays whole.
    asked.clear()
    run_eval(cache_dir, out, overrides)
    assert asked == [] and [r["id"] for r in predictions(out)] == ids


# ------------------------------------------------------------------------------------------------
# Perplexity


def _reference_nll(model, processor, row, root) -> tuple[float, int]:
    """Summed NLL of the labelled tokens from the full-vocabulary logits of one unpadded row."""
    item = encode(row, processor, root)
    ids = item["input_ids"][None]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": item["pixel_values"],
              "image_grid_thw": item["image_grid_thw"]}
    if "mm_token_type_ids" in item:
        inputs["mm_token_type_ids"] = item["mm_token_type_ids"][None]
    with torch.no_grad():
        logits = model(**inputs).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    targets = item["labels"][1:]
    positions = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    return float(-logp[positions, targets[positions]].sum()), len(positions)


def test_answer_nll_matches_full_vocabulary_logits(run_dir, small_synth):
    ckpt = RunDir.from_ckpt(run_dir)
    model, processor = load_for_eval(ckpt.config, ckpt)
    model.eval()
    rows, lengths = [], set()
    for row in read_jsonl(small_synth / "test.jsonl"):
        n = len(encode(row, processor, small_synth)["input_ids"])
        if n not in lengths:
            rows.append(row)
            lengths.add(n)
        if len(rows) == 5:
            break
    assert len(rows) >= 3  # rows of different lengths, so the batch is padded

    reference = [_reference_nll(model, processor, row, small_synth) for row in rows]
    batched = answer_nll(model, processor, rows, small_synth)
    one_by_one = [answer_nll(model, processor, [row], small_synth)[0] for row in rows]
    tokenizer = processor.tokenizer
    for row, (ref, n_ref), (nll, n), (nll_1, n_1) in zip(rows, reference, batched, one_by_one):
        # The answer's tokens and the end-of-turn token.
        assert n == n_1 == n_ref == len(tokenizer(answer_of(row), add_special_tokens=False)["input_ids"]) + 1
        assert nll == pytest.approx(ref, abs=1e-5)
        assert nll_1 == pytest.approx(ref, abs=1e-5)
        assert nll == pytest.approx(nll_1, abs=1e-5)


def test_corpus_perplexity_by_hand():
    got = corpus_perplexity([(2.0, 1), (4.0, 3)])
    assert got["perplexity"] == pytest.approx(math.exp((2.0 + 4.0) / (1 + 3)))
    assert got["perplexity_median"] == pytest.approx((math.exp(2.0) + math.exp(4.0 / 3)) / 2)
    assert corpus_perplexity([(1.0, 2), (3.0, 1), (0.0, 4)])["perplexity_median"] == pytest.approx(math.exp(0.5))


def test_group_perplexity_is_total_nll_over_total_tokens(run_eval_dir):
    recs = predictions(run_eval_dir)
    tables = json.loads((run_eval_dir / "metrics.json").read_text())

    def by_hand(group):
        return math.exp(sum(r["nll"] for r in group) / sum(r["n_tokens"] for r in group))

    assert tables["overall"]["perplexity"] == pytest.approx(by_hand(recs))
    assert tables["closed"]["perplexity"] == pytest.approx(by_hand([r for r in recs if r["answer_type"] == "CLOSED"]))
    assert tables["open"]["perplexity"] == pytest.approx(by_hand([r for r in recs if r["answer_type"] == "OPEN"]))
    for cat, group in tables["by_category"].items():
        assert group["perplexity"] == pytest.approx(by_hand([r for r in recs if r["category"] == cat])), cat
    # Not the mean of per-row perplexities (which a few hard rows would dominate).
    mean = sum(r["perplexity"] for r in recs) / len(recs)
    assert tables["overall"]["perplexity"] < mean
    assert "nll_per_token" not in tables["overall"]


# ------------------------------------------------------------------------------------------------
# Errors


def test_bad_ckpt_is_one_line_on_stderr(cache_dir, tmp_path):
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("no weights here")
    env = {**os.environ, "MEDVL_CACHE": str(cache_dir), "HF_HUB_OFFLINE": "1"}
    cases = {tmp_path / "missing": "does not exist", not_a_run: "is not a medvl run directory"}
    procs = {
        path: subprocess.Popen([sys.executable, "-m", "medvl.eval", f"+ckpt={path}",
                                f"hydra.run.dir={tmp_path / ('out-' + path.name)}"],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for path in cases
    }
    for path, why in cases.items():
        stdout, stderr = procs[path].communicate(timeout=120)
        assert procs[path].returncode != 0
        assert "Traceback" not in stdout + stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert lines[0].startswith(f"medvl: +ckpt={path} ") and why in lines[0]
        assert not (tmp_path / f"out-{path.name}" / "eval_config.yaml").exists()


def _eval_proc(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "medvl.eval", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=180)


def test_default_eval_dir_is_named_after_the_model_and_data_it_evaluates(cache_dir, run_dir, tmp_path):
    # A run trained on "slake": without data=..., medvl.eval evaluates slake, and the folder must say so.
    run = tmp_path / "runs" / "slake-run"
    shutil.copytree(run_dir / "adapter", run / "adapter")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cfg.data.name, cfg.data.dir, cfg.data.eval_split = "slake", str(tmp_path / "no-data"), "validation"
    OmegaConf.save(cfg, run / "config.yaml")
    env = {"MEDVL_CACHE": str(cache_dir)}
    errors = [_one_line(_eval_proc(f"+ckpt={run}", *args, cwd=tmp_path, env_extra=env))
              for args in ([], ["data=vqa_rad", "prompt=custom"], ["split=train"])]
    assert all("split" in line for line in errors)
    made = {p.name for p in (tmp_path / "outputs" / "eval").iterdir()}
    assert made == {"tiny_slake_validation_default_runs_slake-run", "tiny_vqa_rad_test_custom_runs_slake-run",
                    "tiny_slake_train_default_runs_slake-run"}
    # Each directory's log ends with why its evaluation stopped: the line stderr showed.
    logs = [(tmp_path / "outputs" / "eval" / name / "eval.log").read_text().splitlines()[-1] for name in made]
    assert sorted(line.partition("[ERROR] - ")[2] for line in logs) == sorted(errors)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("medvl: ")
    return lines[0]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("device=gpu", "device=gpu is invalid: must be auto, auto_shard, cpu, cuda or cuda:N"),
        ("batch_size=0", "batch_size=0 is invalid: must be a positive integer"),
        ("max_new_tokens=-3", "max_new_tokens=-3 is invalid"),
        ("bertscore.dtype=float16", "bertscore.dtype=float16 is invalid: must be float32 or bfloat16"),
    ],
)
def test_bad_eval_value_is_one_line(override, expected, tmp_path):
    proc = _eval_proc(override, f"hydra.run.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert expected in _one_line(proc)
    assert not (tmp_path / "out").exists()


def test_meteor_without_java_fails_before_generation(cache_dir, small_synth, tmp_path):
    # A PATH holding python but no java: the error comes before any model is loaded.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    common = [*small_data_overrides(small_synth), f"hydra.run.dir={tmp_path / 'out'}"]
    env = {"MEDVL_CACHE": str(cache_dir), "PATH": str(bin_dir)}
    line = _one_line(_eval_proc(*common, cwd=tmp_path, env_extra=env))
    assert "metric meteor runs pycocoevalcap's Java jar and no `java` is on PATH" in line
    assert not (tmp_path / "out" / "predictions.jsonl").exists()
    # Without METEOR the same machine evaluates.
    proc = _eval_proc(*common, "metrics=[exact_match,bleu4]", "perplexity=false", "max_new_tokens=2",
                      cwd=tmp_path, env_extra=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert set(json.loads((tmp_path / "out" / "metrics.json").read_text())["overall"]) >= {"exact_match", "bleu4"}


def test_bertscore_options_reach_the_scorer(cache_dir, small_synth, tmp_path, monkeypatch):
    import medvl.evaluation.scoring as scoring

    seen: dict = {}
    real = scoring.compute_metrics

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "compute_metrics", spy)
    run_eval(cache_dir, tmp_path / "ev", ["bertscore.dtype=bfloat16", "bertscore.num_layers=5", "metrics=[exact_match]",
                                          "perplexity=false", "data.max_eval_samples=4", *FAST,
                                          *small_data_overrides(small_synth)])
    assert seen["bertscore_dtype"] == "bfloat16" and seen["bertscore_num_layers"] == 5
    assert seen["metrics"] == ["exact_match"]


def test_eval_device_auto_is_this_ranks_gpu_or_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert eval_run.eval_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert eval_run.eval_device("auto") == "cuda:3"
    assert eval_run.eval_device("cpu") == "cpu"


def test_load_for_eval_puts_the_model_on_the_configured_device(cache_dir, run_dir, tmp_path, monkeypatch):
    moved: list[str] = []
    from medvl.models import loading

    real = loading.load_model

    def spy(model_cfg, path=None, *, device=None):
        moved.append(device)
        return real(model_cfg, path, device=device)

    monkeypatch.setattr(loading, "load_model", spy)
    cfg = compose_config(cache_dir, "eval", [], tmp_path)
    model, _ = load_for_eval(cfg, RunDir.from_ckpt(run_dir))
    assert moved == ["cpu"] and next(model.parameters()).device.type == "cpu"
    # device=cuda:1 on the command line is what is resolved (to the CPU here, standing in for it).
    asked: list[str] = []
    monkeypatch.setattr(eval_run, "eval_device", lambda device: asked.append(device) or "cpu")
    load_for_eval(compose_config(cache_dir, "eval", ["device=cuda:1"], tmp_path), None)
    assert asked == ["cuda:1"] and moved[-1] == "cpu"


@pytest.mark.gpu
def test_eval_model_runs_on_the_gpu(cache_dir, run_dir, tmp_path):
    model, _ = load_for_eval(compose_config(cache_dir, "eval", [], tmp_path), RunDir.from_ckpt(run_dir))
    assert next(model.parameters()).is_cuda


# ------------------------------------------------------------------------------------------------
# Rows without labels; multiple choice


def test_rows_without_category_are_categorized_by_the_rules(cache_dir, small_synth, tmp_path, caplog):
    from medvl.data.categorize import categorize

    rows = read_jsonl(small_synth / "test.jsonl")[:8]
    for i, row in enumerate(rows):
        row["source"] = "user"
        del row["category"]
        if i >= 2:
            del row["answer_type"]  # the first two keep their dataset answer type
    expected = [categorize(row) for row in rows]
    data_dir = tmp_path / "plain"
    write_jsonl(data_dir / "test.jsonl", rows)
    out = tmp_path / "eval"
    with caplog.at_level("WARNING", logger="medvl.evaluation.run"):
        result = run_eval(cache_dir, out, ["data.name=plain", "data.format=medvl", f"data.root={small_synth}",
                                           f"data.dir={data_dir}", "metrics=[exact_match,closed_accuracy]",
                                           "perplexity=false", *FAST])
    assert "8 of 8 rows had no category" in caplog.text
    recs = predictions(out)
    assert [(r["answer_type"], r["category"]) for r in recs] == [(t, c) for t, c, _ in expected]
    assert [r["answer_type"] for r in recs[:2]] == [row["answer_type"] for row in rows[:2]]
    assert all(r["category"] in CATEGORIES for r in recs)
    tables = result["base"]
    assert "uncategorized" not in tables["by_category"]
    assert {c: g["count"] for c, g in tables["by_category"].items()} == Counter(c for _, c, _ in expected)
    assert tables["closed"]["count"] + tables["open"]["count"] == tables["overall"]["count"] == 8


def _gmai_split(root: Path, records: list[dict]) -> list[dict]:
    """A GMAI-MMBench VAL TSV from the fixture rows, stand-in images, and the converter's unified rows."""
    from medvl.data.converters import convert, partition

    columns = ["index", "question", "A", "B", "C", "D", "E", "answer", "category", "clinical vqa task",
               "department", "perceptual granularity", "modality", "original task", "image_path"]
    root.mkdir(parents=True)
    with open(root / "GMAI-MMBench_VAL.tsv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        for rec in records:
            writer.writerow({k: "" if rec.get(k) is None else rec[k] for k in columns})
            image = root / "images" / "GMAI-MMBench_VAL" / f"{rec['index']}.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (56, 56), (int(rec["index"]) % 256, 90, 160)).save(image)
    rows, rejects = partition(convert("gmai_mmbench", root, "validation"))
    assert not rejects and len(rows) == len(records)
    write_jsonl(root / "validation.jsonl", rows)
    return rows


def test_multiple_choice_accuracy_and_benchmark_breakdowns(cache_dir, tmp_path, monkeypatch):
    records = json.loads((REPO / "tests/fixtures/samples/gmai_mmbench_val.json").read_text())[::4]
    root = tmp_path / "gmai"
    rows = _gmai_split(root, records)
    assert all((root / row["image"]).is_file() for row in rows)

    # Each answer picks a letter in one of five ways; even rows pick the right one, odd rows a wrong one.
    answers, picked = {}, {}
    for i, row in enumerate(rows):
        options, right = row["meta"]["options"], answer_of(row)
        letter = right if i % 2 == 0 else next(k for k in options if k != right)
        form = i % 5
        answers[row["id"]] = [letter, f"({letter})", f"Answer: {letter}", options[letter], "I cannot tell."][form]
        picked[row["id"]] = letter if form != 4 else None

    def fake_generate(model, processor, chunk, *args, **kwargs):
        return [answers[r["id"]] for r in chunk]

    monkeypatch.setattr(generate_mod, "generate_batch", fake_generate)
    out = tmp_path / "eval"
    result = run_eval(cache_dir, out, ["data=gmai_mmbench", "data.format=medvl", f"data.root={root}",
                                       f"data.dir={root}", "split=validation", "metrics=[exact_match]",
                                       "perplexity=false", *FAST])
    tables = result["base"]
    recs = predictions(out)
    assert [r["extracted_choice"] for r in recs] == [picked[r["id"]] for r in recs]
    correct = {r["id"]: float(picked[r["id"]] == r["reference"]) for r in recs}
    assert [r["metrics"]["choice_accuracy"] for r in recs] == [correct[r["id"]] for r in recs]
    assert 0 < sum(correct.values()) < len(recs)
    # Strict match is reported too: "Answer: B" is the right choice but not an exact match.
    wordy = [r for r in recs if r["prediction"].startswith("Answer: ") and correct[r["id"]]]
    assert wordy and all(r["metrics"]["exact_match"] == 0.0 for r in wordy)

    assert tables["overall"]["choice_accuracy"] == pytest.approx(sum(correct.values()) / len(recs))
    for key, meta_key in (("by_task", "task"), ("by_department", "department"),
                          ("by_granularity", "granularity"), ("by_modality", "modality")):
        groups: dict[str, list[float]] = {}
        for rec in recs:
            groups.setdefault(rec["meta"][meta_key], []).append(correct[rec["id"]])
        assert len(groups) >= 2, key
        assert set(tables[key]) == set(groups), key
        for value, scores in groups.items():
            assert tables[key][value]["count"] == len(scores), (key, value)
            assert tables[key][value]["choice_accuracy"] == pytest.approx(sum(scores) / len(scores)), (key, value)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["by_task"] == tables["by_task"]
    assert "## task" in (out / "tables.md").read_text(encoding="utf-8")
