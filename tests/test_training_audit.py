"""Regression tests from the training audit: stage chains, full components beside LoRA, loading errors."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from medvl.config import validate
from medvl.models.loading import ModelLoadError, load_model
from medvl.models.lora import apply_training_setup, trainable_parameter_names
from medvl.training.run import build_model

from .conftest import REPO


def _fake_stage(compose, tmp_path, name: str, overrides: list[str], init_from: str | None):
    """A run dir as training leaves it (adapter/ + config.yaml), with random non-zero LoRA weights."""
    cfg = compose(overrides)
    validate(cfg)
    model = apply_training_setup(load_model(cfg.model), cfg)
    gen = torch.Generator().manual_seed(len(name))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    out = tmp_path / name
    model.save_pretrained(out / "adapter")
    (out / "config.yaml").write_text(OmegaConf.to_yaml({"init_from": init_from}))
    return out


def _merged(model: torch.nn.Module, adapter) -> torch.nn.Module:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def test_chaining_from_a_chained_run_keeps_every_earlier_stage(compose, tmp_path, tiny_dir):
    align = _fake_stage(compose, tmp_path, "align", ["stage=align"], None)
    instruct = _fake_stage(compose, tmp_path, "instruct", ["stage=instruct"], str(align))
    cfg = compose(["stage=instruct", "lora=attn", f"init_from={instruct}"])
    validate(cfg)
    _, model = build_model(cfg)

    expected = _merged(_merged(load_model(cfg.model), align / "adapter"), instruct / "adapter").state_dict()
    got = {k.removeprefix("base_model.model.").replace(".base_layer", ""): v
           for k, v in model.state_dict().items() if "lora_" not in k}
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name


def test_train_records_init_from_as_an_absolute_path(compose, tmp_path, tiny_dir, monkeypatch):
    from medvl.training import run

    align = _fake_stage(compose, tmp_path, "align", ["stage=align"], None)
    monkeypatch.chdir(tmp_path)
    cfg = compose(["stage=instruct", "init_from=align"])

    class Stop(Exception):
        pass

    def stop(cfg):
        raise Stop

    monkeypatch.setattr(run, "build_model", stop)
    with pytest.raises(Stop):
        run.train(cfg)
    assert cfg.init_from == str(align.resolve())


def test_vision_full_beside_llm_lora(compose, tiny_dir):
    cfg = compose(["stage=instruct", "stage.vision=full"])
    validate(cfg)
    base = load_model(cfg.model)
    model = apply_training_setup(load_model(cfg.model), cfg)
    names = trainable_parameter_names(model)
    vision = {n for n, _ in base.named_parameters()
              if n.startswith("model.visual.") and not n.startswith("model.visual.merger.")}
    copies = {n.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
              for n in names if "modules_to_save" in n}
    assert copies == vision  # patch embedding included, merger not
    assert all("language_model" in n for n in names if "lora_" in n)


def test_vision_full_without_lora_includes_the_patch_embedding(compose, tiny_dir):
    cfg = compose(["stage=align", "lora=none", "stage.vision=full"])
    validate(cfg)
    base = load_model(cfg.model)
    names = trainable_parameter_names(apply_training_setup(load_model(cfg.model), cfg))
    assert names == {n for n, _ in base.named_parameters() if n.startswith("model.visual.")}


def test_llm_full_beside_merger_lora_trains_the_head(compose, tiny_dir):
    cfg = compose(["stage=align", "stage.llm=full"])
    validate(cfg)
    names = trainable_parameter_names(apply_training_setup(load_model(cfg.model), cfg))
    assert "base_model.model.lm_head.modules_to_save.default.weight" in names
    assert any(".language_model.modules_to_save.default.layers.0." in n for n in names)
    assert not any("visual.blocks" in n for n in names)


def _training_dtype(compose, monkeypatch, overrides: list[str]) -> str:
    from medvl.training import run

    class Loaded(Exception):
        pass

    def fake_load(model_cfg, path=None, **kwargs):
        raise Loaded(str(model_cfg.dtype))

    monkeypatch.setattr("medvl.models.loading.load_model", fake_load)
    monkeypatch.setattr(run, "load_processor", lambda *a, **k: None)
    with pytest.raises(Loaded) as got:
        run.build_model(compose(overrides))
    return str(got.value)


def test_bf16_off_means_float32_weights(compose, monkeypatch, tiny_dir):
    # dtype=auto would load bf16 weights on a bf16 GPU even with trainer.bf16=false ("false forces float32").
    assert _training_dtype(compose, monkeypatch, ["model.dtype=auto", "trainer.bf16=false"]) == "float32"
    assert _training_dtype(compose, monkeypatch, ["model.dtype=auto"]) == "auto"
    assert _training_dtype(compose, monkeypatch, ["model.dtype=bfloat16", "trainer.bf16=false"]) == "bfloat16"


@pytest.mark.parametrize("path", ["/no/such/qwen7b", "./qwen7b", "models/qwen/7b", "'~/no-such-qwen7b'"])
def test_missing_local_directory_says_so(compose, path):
    cfg = compose(["model=7b", f"model.name_or_path={path}"])
    with pytest.raises(ModelLoadError) as err:
        load_model(cfg.model)
    msg = str(err.value)
    assert "no such directory" in msg and "\n" not in msg and "huggingface-cli download" not in msg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model=7b", "medvl: cannot load 'Qwen/Qwen2-VL-7B-Instruct'"),
        ("init_from=/no/such/run", "medvl: no LoRA adapter (adapter_config.json) in /no/such/run"),
    ],
)
def test_train_cli_errors_a_user_can_fix_are_one_line(cache_dir, tmp_path, override, expected):
    proc = subprocess.run(
        [sys.executable, "-m", "medvl.train", override, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "MEDVL_CACHE": str(cache_dir)})
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
    assert lines and lines[-1].startswith(expected), proc.stderr
    assert "Traceback" not in proc.stderr


def test_sweeps_started_in_the_same_second_get_their_own_directory(compose):
    import time

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from medvl.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", return_hydra_config=True)
    GlobalHydra.instance().clear()
    pattern = OmegaConf.to_container(cfg.hydra.sweep)["dir"]

    def resolve() -> str:  # a fresh node: ${now:} is cached per config
        return OmegaConf.to_container(OmegaConf.create({"dir": pattern}), resolve=True)["dir"]

    first = resolve()
    time.sleep(0.002)
    assert resolve() != first


@pytest.mark.parametrize("overrides", [["init_from=/no/such/stage1"], ["resume=/no/such/checkpoint-5"],
                                       ["data=slake", "data.root=/no/such/slake", "data.dir=/no/such/prepared"]])
def test_bad_paths_fail_before_weights_load(compose, monkeypatch, overrides):
    from medvl.training import run

    def never(*args, **kwargs):
        raise AssertionError("weights were loaded before the paths were checked")

    monkeypatch.setattr("medvl.models.loading.load_model", never)
    monkeypatch.setattr(run, "load_processor", never)
    with pytest.raises(FileNotFoundError):
        run.train(compose(overrides))


@pytest.fixture
def bf16_gpu(monkeypatch):
    """What build_model sees on a bf16 GPU with trainer.bf16 on (the weights themselves stay on the CPU)."""
    from medvl.training import run

    monkeypatch.setattr(run, "mixed_precision_bf16", lambda cfg: bool(cfg.trainer.bf16))


@pytest.mark.parametrize("overrides", [["stage=align", "lora=none"], ["stage=instruct", "stage.merger=full"]])
def test_trainable_weights_stay_float32_when_the_model_loads_in_bf16(compose, tiny_dir, small_synth, overrides,
                                                                     bf16_gpu):
    from medvl.data.dataset import Collator, encode
    from medvl.data.format import read_jsonl

    cfg = compose([*overrides, "model.dtype=bfloat16"])
    validate(cfg)
    processor, model = build_model(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert any(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    # Mixed precision as the Trainer runs it: the forward in bf16 under autocast, float32 gradients.
    rows = read_jsonl(small_synth / "train.jsonl")[:2]
    batch = Collator(processor.tokenizer.pad_token_id)([encode(r, processor, small_synth) for r in rows])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)


def test_deepspeed_runs_leave_dtypes_to_deepspeed(compose, tiny_dir, bf16_gpu):
    cfg = compose(["stage=align", "lora=none", "model.dtype=bfloat16", "deepspeed=zero2"])
    validate(cfg)
    _, model = build_model(cfg)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_validation_between_steps_runs_on_a_model_with_float32_trainable_weights(compose, tiny_dir, small_synth,
                                                                                  tmp_path, bf16_gpu):
    from medvl.data.format import read_jsonl
    from medvl.training.callbacks import GenerationEvalCallback

    cfg = compose(["stage=align", "lora=none", "model.dtype=bfloat16"])
    validate(cfg)
    processor, model = build_model(cfg)
    callback = GenerationEvalCallback(processor, read_jsonl(small_synth / "validation.jsonl")[:4], small_synth,
                                      eval_steps=1, system_prompt=None, batch_size=2, max_new_tokens=4,
                                      metrics=["exact_match"], metric_for_best="perplexity",
                                      best_dir=tmp_path / "best")
    tables = callback.run(model, step=1)
    assert tables["overall"]["count"] == 4 and math.isfinite(tables["overall"]["perplexity"])


def test_without_mixed_precision_a_bf16_model_trains_as_loaded(compose, tiny_dir):
    # No autocast around the forward (CPU, or trainer.bf16=false): float32 weights would meet bf16 activations.
    cfg = compose(["stage=align", "lora=none", "model.dtype=bfloat16"])
    validate(cfg)
    _, model = build_model(cfg)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


