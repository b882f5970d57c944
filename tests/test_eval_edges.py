"""Edge cases of ``medvl.eval``: dataset breakdowns scored like categories, perplexity filled in on
resume, multi-turn perplexity of the reference only, and a ``+ckpt`` or ``compare_base`` that would
silently evaluate the base model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

import medvl.evaluation.run as eval_run
from medvl.config import dataset_labels
from medvl.data.format import read_jsonl
from medvl.evaluation.metrics import make_corpus_fn
from medvl.evaluation.perplexity import answer_nll
from medvl.evaluation.scoring import breakdown_labels, score
from medvl.runs import CheckpointError, RunDir


def _score_cfg(metrics: list[str]):
    return OmegaConf.create({"metrics": metrics, "bertscore": {"model": None, "num_layers": None,
                                                               "dtype": "float32"}})


def _record(i: int, modality: str | None, reference: str, prediction: str, nll: float, n: int) -> dict:
    return {"id": f"r{i}", "question": "q", "reference": reference, "prediction": prediction,
            "category": "open_anatomy", "answer_type": "OPEN",
            "meta": None if modality is None else {"modality": modality},
            "nll": nll, "n_tokens": n, "perplexity": math.exp(nll / n)}


def test_breakdowns_use_corpus_scores_and_corpus_perplexity_like_categories():
    records = [
        _record(0, "CT", "the left lung", "the left lung", 1.0, 2),
        _record(1, "CT", "a round mass in the liver", "a mass in the liver", 6.0, 3),
        _record(2, "MRI", "brain", "brain", 0.5, 1),
        _record(3, "MRI", "two small lesions", "one lesion", 9.0, 4),
        _record(4, None, "heart", "lung", 2.0, 2),  # a row without meta is left out of the breakdown
    ]
    names = ["exact_match", "bleu4", "cider"]
    tables = score(records, _score_cfg(names), **dataset_labels("synth"))
    corpus_fn = make_corpus_fn([r["prediction"] for r in records], [r["reference"] for r in records],
                               metrics=names)
    for modality, indices in (("CT", [0, 1]), ("MRI", [2, 3])):
        group = tables["by_modality"][modality]
        assert group["count"] == 2
        # BLEU-4 and CIDEr of the group's rows as a corpus, as by_category reports them.
        for name, value in corpus_fn(indices).items():
            assert group[name] == pytest.approx(value), (modality, name)
        nll = sum(records[i]["nll"] for i in indices)
        n = sum(records[i]["n_tokens"] for i in indices)
        assert group["perplexity"] == pytest.approx(math.exp(nll / n))
        assert "nll_per_token" not in group
    assert set(tables["by_modality"]) == {"CT", "MRI"}


def test_perplexity_is_not_reported_for_a_group_where_only_some_rows_have_it():
    records = [_record(0, "CT", "a", "a", 1.0, 2), _record(1, "CT", "b", "b", 2.0, 2)]
    records[1].update(nll=None, n_tokens=0, perplexity=None)
    tables = score(records, _score_cfg(["exact_match"]), **dataset_labels("synth"))
    assert "perplexity" not in tables["overall"] and "perplexity" not in tables["by_modality"]["CT"]


class _Model:
    def eval(self):
        return self


def test_resume_fills_in_perplexity_of_rows_predicted_without_it(tmp_path, monkeypatch):
    rows = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
            for i in range(5)]
    # An earlier run with perplexity=false predicted the first three rows.
    earlier = [{"id": r["id"], "question": f"q{i}", "reference": "a", "prediction": f"kept {i}",
                "nll": None, "n_tokens": 0, "perplexity": None} for i, r in enumerate(rows[:3])]
    (tmp_path / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in earlier))
    generated, scored = [], []

    def fake_generate(model, processor, chunk, *args, **kwargs):
        generated.extend(r["id"] for r in chunk)
        return ["new"] * len(chunk)

    def fake_nll(model, processor, chunk, *args, **kwargs):
        scored.extend(r["id"] for r in chunk)
        return [(float(int(r["id"][1:]) + 1), 2) for r in chunk]

    monkeypatch.setattr(eval_run, "generate_batch", fake_generate)
    monkeypatch.setattr(eval_run, "answer_nll", fake_nll)
    cfg = OmegaConf.create({"prompt": {"system_prompt": None}, "batch_size": 2, "max_new_tokens": 4,
                            "perplexity": True, "data": {"root": str(tmp_path)}})
    recs = eval_run.predict(_Model(), None, rows, cfg, tmp_path)
    assert generated == ["r3", "r4"]  # finished rows are not generated again
    assert sorted(scored) == [r["id"] for r in rows]
    assert [r["prediction"] for r in recs[:3]] == ["kept 0", "kept 1", "kept 2"]
    assert [r["nll"] for r in recs] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert all(r["perplexity"] == pytest.approx(math.exp(r["nll"] / 2)) for r in recs)


def test_perplexity_of_a_multi_turn_row_is_of_its_reference_answer_only(compose, small_synth):
    from medvl.evaluation.run import load_for_eval

    cfg = compose([], config_name="eval")
    model, processor = load_for_eval(cfg, None, device="cpu")
    model.eval()
    row = read_jsonl(small_synth / "test.jsonl")[0]
    longer = {**row, "conversations": [*row["conversations"], {"from": "human", "value": "Are you sure?"},
                                       {"from": "gpt", "value": "Yes, I am quite sure about it."}]}
    (nll, n), (nll_2, n_2) = answer_nll(model, processor, [row, longer], small_synth)
    assert n_2 == n
    assert nll_2 == pytest.approx(nll, abs=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (["+ckpt="], "+ckpt= is empty"),
    (["compare_base=true"], "compare_base=true compares the base model with a checkpoint"),
])
def test_ckpt_that_would_silently_evaluate_the_base_model_is_refused(compose, tmp_path, overrides, message):
    out = tmp_path / "eval"
    cfg = compose([*overrides, "metrics=[exact_match]"], config_name="eval", output_dir=out)
    with pytest.raises(CheckpointError, match=message.replace("+", r"\+")):
        eval_run.evaluate(cfg, overrides)
    assert not (out / "eval_config.yaml").exists() and not (out / "predictions.jsonl").exists()


def test_generation_stops_at_end_of_turn_when_the_tokenizer_eos_is_another_token(compose, small_synth):
    """A base checkpoint's eos is ``<|endoftext|>``; fine-tuned answers end with ``<|im_end|>``."""
    from medvl.evaluation.generate import generate_batch
    from medvl.evaluation.run import load_for_eval

    cfg = compose([], config_name="eval")
    model, processor = load_for_eval(cfg, None, device="cpu")
    tokenizer = processor.tokenizer
    tokenizer.eos_token = "<|endoftext|>"
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    seen = {}
    real = model.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    model.generate = spy
    generate_batch(model, processor, read_jsonl(small_synth / "test.jsonl")[:2], small_synth, max_new_tokens=2)
    assert end_of_turn in seen["eos_token_id"] and tokenizer.eos_token_id in seen["eos_token_id"]


def test_an_empty_split_is_one_line(cache_dir, tmp_path):
    import os
    import subprocess
    import sys

    from .conftest import REPO

    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("")
    proc = subprocess.run([sys.executable, "-m", "medvl.eval", "data.format=medvl", f"data.root={data}",
                           f"data.dir={data}", "metrics=[exact_match]", f"hydra.run.dir={tmp_path / 'out'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MEDVL_CACHE": str(cache_dir), "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"medvl: data=synth: the test split at {data / 'test.jsonl'} has no rows"]


def test_a_run_trained_on_top_of_an_earlier_stage_is_evaluated_with_that_stage_merged(compose, tmp_path):
    """Stage 2 (``init_from=<stage-1 run>``) trains its LoRA on base + stage-1 weights; eval and export
    must rebuild that, not put the stage-2 adapter on the bare base."""
    from peft import LoraConfig, PeftModel, get_peft_model

    from medvl.evaluation.run import load_for_eval

    cfg = compose([], config_name="eval")

    def base():
        return load_for_eval(cfg, None, device="cpu")[0]

    stage1, run = tmp_path / "stage1", tmp_path / "stage2"
    # A stage-1 merger adapter that changes the weights (random B instead of zeros).
    get_peft_model(base(), LoraConfig(r=2, target_modules=r".*visual\.merger\.mlp\.0", init_lora_weights=False)
                   ).save_pretrained(stage1 / "adapter")
    get_peft_model(base(), LoraConfig(r=2, target_modules=r".*language_model.*q_proj")).save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(OmegaConf.to_yaml({"init_from": str(stage1)}))

    model, _ = load_for_eval(cfg, RunDir.from_ckpt(run), device="cpu")
    expected = PeftModel.from_pretrained(base(), str(stage1 / "adapter")).merge_and_unload()
    name = next(n for n, _ in expected.named_parameters() if "visual.merger.mlp.0.weight" in n)
    got = dict(model.named_parameters())[name]
    assert not torch.equal(expected.get_parameter(name), base().get_parameter(name))
    assert torch.allclose(got, expected.get_parameter(name), atol=1e-6)

    (run / "config.yaml").write_text(OmegaConf.to_yaml({"init_from": str(tmp_path / "gone")}))
    with pytest.raises(CheckpointError, match="init_from=.*does not exist"):
        load_for_eval(cfg, RunDir.from_ckpt(run), device="cpu")


def test_an_adapter_put_on_another_base_model_is_warned_about(compose, tmp_path, caplog):
    from peft import LoraConfig, get_peft_model

    from medvl.evaluation.run import load_for_eval

    tiny = compose([], config_name="eval")
    get_peft_model(load_for_eval(tiny, None, device="cpu")[0],
                   LoraConfig(r=2, target_modules=r".*language_model.*q_proj")).save_pretrained(tmp_path / "lone")
    with caplog.at_level("WARNING", logger="medvl.models.loading"):
        load_for_eval(tiny, RunDir.from_ckpt(tmp_path / "lone"), device="cpu")
        assert "trained on" not in caplog.text
        load_for_eval(compose(["model=tiny25"], config_name="eval"), RunDir.from_ckpt(tmp_path / "lone"),
                      device="cpu")
    assert f"was trained on {tiny.model.name_or_path} but is applied to" in caplog.text


def test_a_vqa_rad_row_with_two_question_types_counts_under_each():
    assert breakdown_labels("ABN, POS", multi_label=True) == ["ABN", "POS"]
    assert breakdown_labels(None, multi_label=True) == []
    assert breakdown_labels("Organ, Position") == ["Organ, Position"]  # Slake's content_type is one label
    records = [_record(i, None, "lung", pred, 1.0, 1) for i, pred in enumerate(["lung", "heart", "lung"])]
    for record, qtype in zip(records, ["ABN, POS", "ABN", "POS"]):
        record["meta"] = {"question_type": qtype}
    tables = score(records, _score_cfg(["exact_match"]), **dataset_labels("vqa_rad"))
    assert set(tables["by_question_type"]) == {"ABN", "POS"}
    assert tables["by_question_type"]["ABN"]["count"] == 2
    assert tables["by_question_type"]["ABN"]["exact_match"] == pytest.approx(0.5)
    assert tables["by_question_type"]["POS"]["exact_match"] == pytest.approx(1.0)


def test_a_smaller_rerun_never_drops_finished_rows(tmp_path, monkeypatch):
    rows = [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": "a"}]}
            for i in range(4)]
    finished = "".join(json.dumps({"id": r["id"], "prediction": "kept", "nll": 1.0, "n_tokens": 1}) + "\n"
                       for r in rows)
    (tmp_path / "predictions.jsonl").write_text(finished)
    monkeypatch.setattr(eval_run, "generate_batch", lambda *a, **k: pytest.fail("nothing should be generated"))
    cfg = OmegaConf.create({"prompt": {"system_prompt": None}, "batch_size": 2, "max_new_tokens": 4,
                            "perplexity": False, "data": {"root": str(tmp_path)}})
    with pytest.raises(CheckpointError, match="holds 4 predicted rows, 2 of them outside this selection of 2"):
        eval_run.predict(_Model(), None, rows[:2], cfg, tmp_path)
    assert (tmp_path / "predictions.jsonl").read_text() == finished
    assert len(eval_run.predict(_Model(), None, rows, cfg, tmp_path)) == 4  # the full selection resumes


def test_predictions_of_another_dtype_or_stage_one_are_not_mixed_in(compose, tmp_path):
    cfg = compose(config_name="eval", output_dir=tmp_path)
    base = eval_run.fingerprint(cfg, None, "test")
    eval_run.check_resumable(tmp_path, base)
    (tmp_path / "predictions.jsonl").write_text("{}\n")
    cfg.model.dtype = "bfloat16"
    with pytest.raises(CheckpointError, match="dtype changed"):
        eval_run.check_resumable(tmp_path, eval_run.fingerprint(cfg, None, "test"))
    assert base["init_from"] is None and base["attn_implementation"] == cfg.model.attn_implementation


def test_a_category_without_a_metric_gets_no_bar_rather_than_a_zero(tmp_path, monkeypatch):
    import matplotlib.axes

    from medvl.evaluation.report import plot_families

    drawn: dict[str, list[float]] = {}
    real_bar = matplotlib.axes.Axes.bar

    def spy(self, x, heights, *args, label=None, **kwargs):
        drawn[label] = list(heights)
        return real_bar(self, x, heights, *args, label=label, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy)
    tables = {"by_category": {"closed_presence": {"count": 2, "exact_match": 0.0, "perplexity": 3.0},
                              "open_anatomy": {"count": 1, "exact_match": 0.5}}}
    paths = plot_families(tables, tmp_path)
    assert drawn["exact_match"] == [0.0, 0.5]  # a real zero stays a bar at 0
    assert drawn["perplexity"][0] == 3.0 and math.isnan(drawn["perplexity"][1])
    assert all(p.is_file() for p in paths)


def test_closed_and_open_metrics_follow_the_answer_type_the_tables_use():
    # No answer_type: the category says CLOSED (an "A or B?" question), although the reference is not yes/no.
    records = [_record(0, None, "Left", "The left one.", 1.0, 1), _record(1, None, "yes", "Yes.", 1.0, 1)]
    records[0].update(category="closed_location", answer_type=None)
    records[1].update(category="mystery", answer_type=None)  # unknown category: yes/no reference -> CLOSED
    tables = score(records, _score_cfg(["closed_accuracy", "open_recall"]), **dataset_labels("synth"))
    for record in records:
        assert record["metrics"]["closed_accuracy"] == 1.0 and "open_recall" not in record["metrics"]
    assert tables["closed"]["count"] == 2 and tables["closed"]["closed_accuracy"] == 1.0
    assert tables["open"]["count"] == 0


def test_a_lowercase_letter_reference_is_matched():
    record = {**_record(0, None, "b", "(B) polyp", 1.0, 1), "answer_type": "CLOSED"}
    record["meta"] = {"options": {"A": "mass", "B": "polyp"}}
    score([record], _score_cfg(["exact_match"]), **dataset_labels("gmai_mmbench"))
    assert record["extracted_choice"] == "B" and record["metrics"]["choice_accuracy"] == 1.0
