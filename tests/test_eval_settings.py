"""Like with like: one generation length for validation, the evaluation after training and medvl.eval;
generation, prompt and BERTScore settings in eval_fingerprint.json; medvl.compare refusing runs evaluated
with different generation or scoring settings (marking them with --allow-mixed-settings) and marking a
different prompt; ``+ckpt`` evaluation with the prompt the run was trained with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import medvl.evaluation.run as eval_run
from medvl.config import DEFAULT_MAX_NEW_TOKENS, eval_dir_name
from medvl.evaluation.compare import CompareError, compare
from medvl.runs import CheckpointError, RunDir

from .conftest import compare_cli, make_eval_dir, prediction_row


def test_training_validation_and_medvl_eval_generate_alike(compose, tmp_path: Path) -> None:
    train_cfg, eval_cfg = compose([]), compose([], config_name="eval")
    # Validation and the evaluation after training use train's max_new_tokens (training/run.py).
    assert train_cfg.max_new_tokens == eval_cfg.max_new_tokens == DEFAULT_MAX_NEW_TOKENS == 64


def test_fingerprint_records_generation_prompt_and_bertscore(compose, tmp_path: Path) -> None:
    cfg = compose(["prompt=custom", "max_new_tokens=16", "bertscore.model=roberta-large", "bertscore.num_layers=17"],
                  config_name="eval")
    fp = eval_run.fingerprint(cfg, None, "test")
    assert fp["generation"] == {"max_new_tokens": 16, "do_sample": False, "num_beams": 1}
    assert fp["prompt"] == {"name": "custom", "system_prompt": "Answer with a single word or phrase."}
    # The whole bertscore node (options added to it later are recorded too) and the layer it resolves to.
    assert fp["scoring"]["bertscore"] == {**OmegaConf.to_container(cfg.bertscore), "layer": 17}
    assert fp["scoring"]["bertscore"]["model"] == "roberta-large" and fp["scoring"]["bertscore"]["num_layers"] == 17


def test_another_bertscore_model_rescores_on_resume_but_another_generation_length_is_refused(compose, tmp_path):
    cfg = compose([], config_name="eval")
    eval_run.check_resumable(tmp_path, eval_run.fingerprint(cfg, None, "test"))
    (tmp_path / "predictions.jsonl").write_text("{}\n")
    cfg.bertscore.model = "roberta-large"  # every row is re-scored on resume: the predictions stay valid
    eval_run.check_resumable(tmp_path, eval_run.fingerprint(cfg, None, "test"))
    stored = json.loads((tmp_path / "eval_fingerprint.json").read_text())
    assert stored["scoring"]["bertscore"]["model"] == "roberta-large"  # what metrics.json will be scored with
    cfg.max_new_tokens = 16
    with pytest.raises(CheckpointError, match="generation changed"):
        eval_run.check_resumable(tmp_path, eval_run.fingerprint(cfg, None, "test"))


# --------------------------------------------------------------------------------------------
# medvl.compare


def _evaluated(compose, path: Path, name: str, overrides: list[str], bertscore: float | None = None) -> Path:
    """A fake eval dir with the eval_fingerprint.json medvl.eval writes for ``overrides``."""
    overall = {"exact_match": 0.5, **({"bertscore_f1": bertscore} if bertscore is not None else {})}
    make_eval_dir(path, name, [prediction_row(i, i % 2 == 0, 0.5) for i in range(4)], overall=overall)
    eval_run.check_resumable(path, eval_run.fingerprint(compose(overrides, config_name="eval"), None, "test"))
    return path


def test_runs_with_another_generation_length_are_refused_then_marked_when_allowed(compose, tmp_path: Path) -> None:
    a = _evaluated(compose, tmp_path / "a", "A", ["max_new_tokens=16"])
    b = _evaluated(compose, tmp_path / "b", "B", [])
    with pytest.raises(CompareError, match=r"different settings \(max_new_tokens: A=16, B=64\).*--allow-mixed"):
        compare([a, b], out_dir=tmp_path / "out", n_boot=10)
    assert not (tmp_path / "out").exists()

    result = compare([a, b], out_dir=tmp_path / "out", n_boot=10, allow_mixed_settings=True)
    assert result["settings_differ"] == {"max_new_tokens": {"A": "16", "B": "64"}}
    lines = (tmp_path / "out" / "model_comparison_tables.md").read_text(encoding="utf-8").splitlines()
    assert "## Evaluation settings that differ" in lines
    assert "| max_new_tokens | 16 | 64 |" in lines
    assert any(line.startswith("**Warning: the runs were not evaluated alike (max_new_tokens)") for line in lines)
    assert "**Warning: the runs were not evaluated alike" in (tmp_path / "out" / "significance.md").read_text()
    document = json.loads((tmp_path / "out" / "model_comparison.json").read_text())
    assert document["mixed_settings"] == ["max_new_tokens"]
    assert document["runs"][0]["settings"]["max_new_tokens"] == 16

    refused = compare_cli(str(a), str(b), cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "max_new_tokens" in refused.stderr
    allowed = compare_cli(str(a), str(b), "--allow-mixed-settings", "--n-boot", "10", "--out", "cli", cwd=tmp_path)
    assert allowed.returncode == 0, allowed.stderr
    assert "medvl: warning: runs were evaluated with different max_new_tokens: A=16, B=64" in allowed.stderr


def test_runs_scored_with_another_bertscore_model_are_refused(compose, tmp_path: Path) -> None:
    a = _evaluated(compose, tmp_path / "a", "A", [], bertscore=0.8)
    b = _evaluated(compose, tmp_path / "b", "B", ["bertscore.model=roberta-large"], bertscore=0.9)
    with pytest.raises(CompareError, match="different settings .*bertscore"):
        compare([a, b], out_dir=tmp_path / "out", n_boot=10)
    # Without BERTScore scores in one run, its BERTScore settings do not matter: marked, not refused.
    c = _evaluated(compose, tmp_path / "c", "C", ["bertscore.model=roberta-large"])
    result = compare([a, c], out_dir=tmp_path / "out", n_boot=10)
    assert result["settings_differ"]["bertscore"]["C"] == "not scored"
    assert "Warning" not in (tmp_path / "out" / "model_comparison_tables.md").read_text()


def test_the_bertscore_layer_a_local_copy_resolves_to_is_compared(compose, tmp_path: Path) -> None:
    copy = tmp_path / "models" / "roberta-large"  # huggingface-cli download roberta-large --local-dir ...
    copy.mkdir(parents=True)
    hub = _evaluated(compose, tmp_path / "a", "A", ["bertscore.model=roberta-large"], bertscore=0.8)
    local = _evaluated(compose, tmp_path / "b", "B", [f"bertscore.model={copy}"], bertscore=0.8)
    assert json.loads((local / "eval_fingerprint.json").read_text())["scoring"]["bertscore"]["layer"] == 17
    # Scored by the copy at its last layer (24), as medvl did before it found a copy's hub name: refused.
    fp = json.loads((local / "eval_fingerprint.json").read_text())
    fp["scoring"]["bertscore"]["layer"] = 24
    (local / "eval_fingerprint.json").write_text(json.dumps(fp))
    with pytest.raises(CompareError, match=r"different settings \(bertscore: .*\"layer\": 17.*\"layer\": 24"):
        compare([hub, local], out_dir=tmp_path / "out", n_boot=10)
    # An eval dir from before the layer was recorded: compared on the rest, which is alike.
    del fp["scoring"]["bertscore"]["layer"]
    fp["scoring"]["bertscore"]["model"] = "roberta-large"
    (local / "eval_fingerprint.json").write_text(json.dumps(fp))
    assert compare([hub, local], out_dir=tmp_path / "out", n_boot=10)["settings_differ"] == {}
    # Not scoring BERTScore resolves no layer (nothing loads for it).
    assert "layer" not in eval_run.fingerprint(compose(["metrics=[exact_match]"], config_name="eval"), None,
                                               "test")["scoring"]["bertscore"]


def test_a_different_prompt_is_marked_not_refused(compose, tmp_path: Path) -> None:
    # A prompt ablation (or a sweep over prompt=...) compares prompts on purpose.
    a = _evaluated(compose, tmp_path / "a", "A", [])
    b = _evaluated(compose, tmp_path / "b", "B", ["prompt=custom"])
    result = compare([a, b], out_dir=tmp_path / "out", n_boot=10)
    assert set(result["settings_differ"]) == {"prompt", "system_prompt"}
    markdown = (tmp_path / "out" / "model_comparison_tables.md").read_text(encoding="utf-8")
    assert "| prompt | default | custom |" in markdown.splitlines()
    assert "Warning" not in markdown


def test_alike_runs_and_runs_without_a_fingerprint(compose, tmp_path: Path) -> None:
    a = _evaluated(compose, tmp_path / "a", "A", [], bertscore=0.8)
    b = _evaluated(compose, tmp_path / "b", "B", [], bertscore=0.9)
    assert compare([a, b], out_dir=tmp_path / "out", n_boot=10)["settings_differ"] == {}
    assert "settings that differ" not in (tmp_path / "out" / "model_comparison_tables.md").read_text()
    # A BERTScore option added to medvl later, at its default (null), is the setting from before it existed.
    fp = json.loads((b / "eval_fingerprint.json").read_text())
    fp["scoring"]["bertscore"]["option_from_a_later_release"] = None
    (b / "eval_fingerprint.json").write_text(json.dumps(fp))
    assert compare([a, b], out_dir=tmp_path / "out", n_boot=10)["settings_differ"] == {}
    # An eval dir from before settings were recorded: not refused, but its unknown settings are marked.
    old = make_eval_dir(tmp_path / "old", "old", [prediction_row(i, True, 0.5) for i in range(4)])
    differ = compare([a, old], out_dir=tmp_path / "out2", n_boot=10)["settings_differ"]
    assert differ["max_new_tokens"] == {"A": "64", "old": "not recorded"}


# --------------------------------------------------------------------------------------------
# +ckpt evaluation takes the run's prompt


@pytest.fixture
def custom_prompt_run(compose, tmp_path: Path) -> Path:
    """A run directory trained with prompt=custom (its adapter is never loaded here)."""
    run = tmp_path / "runs" / "custom-run"
    (run / "adapter").mkdir(parents=True)
    (run / "adapter" / "adapter_config.json").write_text("{}")
    trained = compose(["prompt=custom"])
    (run / "config.yaml").write_text(OmegaConf.to_yaml(trained, resolve=False))
    return run


@pytest.mark.parametrize("overrides, name, system_prompt", [
    ([], "custom", "Answer with a single word or phrase."),
    (["prompt=default"], "default", None),
    (["prompt.system_prompt=Be brief."], "custom", "Be brief."),
])
def test_ckpt_evaluation_uses_the_runs_prompt_unless_the_command_line_names_one(
        compose, custom_prompt_run, overrides, name, system_prompt) -> None:
    cfg = compose([f"+ckpt={custom_prompt_run}", *overrides], config_name="eval")
    RunDir.from_ckpt(custom_prompt_run).apply_config(cfg, [f"+ckpt={custom_prompt_run}", *overrides])
    assert (cfg.prompt.name, cfg.prompt.system_prompt) == (name, system_prompt)


def test_default_eval_dir_names_the_runs_prompt(custom_prompt_run) -> None:
    # Outside a Hydra app no override was given: the folder says what RunDir.apply_config evaluates.
    assert eval_dir_name(str(custom_prompt_run), "tiny", "synth", "test", "default").split("_")[3] == "custom"


def test_fingerprint_records_the_attention_kernel_used_not_auto(compose, tmp_path: Path) -> None:
    """An eval directory made with attn_implementation=sdpa resumes under auto where auto means sdpa (no GPU)."""
    fp_auto = eval_run.fingerprint(compose(["model.attn_implementation=auto"], config_name="eval"), None, "test")
    fp_sdpa = eval_run.fingerprint(compose(["model.attn_implementation=sdpa"], config_name="eval"), None, "test")
    assert fp_auto["attn_implementation"] == "sdpa" and fp_auto == fp_sdpa
    eval_run.check_resumable(tmp_path, fp_sdpa)
    (tmp_path / "predictions.jsonl").write_text("{}\n")
    eval_run.check_resumable(tmp_path, fp_auto)  # no refusal
    fp_eager = eval_run.fingerprint(compose(["model.attn_implementation=eager"], config_name="eval"), None, "test")
    with pytest.raises(CheckpointError):
        eval_run.check_resumable(tmp_path, fp_eager)
