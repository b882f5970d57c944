"""Tiny offline models, the real loading path, and what each stage trains."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from medvl.config import validate
from medvl.models.loading import ModelLoadError, load_model, load_processor, resolve_model_path
from medvl.models.lora import apply_training_setup, trainable_parameter_names
from medvl.models.tiny import build_tiny

from .conftest import small_data_overrides

LLM_LINEAR = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_tiny_build_is_deterministic(tmp_path, tiny_dir):
    again = build_tiny(tmp_path / "again")
    a = load_file(tiny_dir / "model.safetensors")
    b = load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tiny_dir / "tokenizer.json").read_text() == (again / "tokenizer.json").read_text()


def test_tiny_built_by_other_code_is_rebuilt(tmp_path, tiny_dir):
    out = build_tiny(tmp_path / "tiny")
    stamp = json.loads((out / "medvl_tiny.json").read_text())
    assert stamp == json.loads((tiny_dir / "medvl_tiny.json").read_text())
    config = (out / "config.json").read_text()
    (out / "medvl_tiny.json").write_text(json.dumps({**stamp, "code": "older-builder"}))
    (out / "config.json").write_text("{}")  # what the older code left there
    build_tiny(out)
    assert json.loads((out / "medvl_tiny.json").read_text()) == stamp
    assert (out / "config.json").read_text() == config


def test_tiny_is_small_and_loads_like_a_hub_model(tiny_dir, compose):
    cfg = compose(["model=tiny"])
    model = load_model(cfg.model)
    processor = load_processor(cfg.model)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 2e6
    assert processor.tokenizer.eos_token == "<|im_end|>"
    for token in ("<|im_start|>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>"):
        assert processor.tokenizer.convert_tokens_to_ids(token) != processor.tokenizer.unk_token_id
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    text = processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                                         tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


def test_hub_id_path_is_the_real_loading_path(tiny_dir, compose):
    # model=7b with name_or_path pointing at a local directory goes through the same code as the hub id.
    cfg = compose(["model=7b", f"model.name_or_path={tiny_dir}", "model.dtype=float32"])
    model = load_model(cfg.model)
    assert model.config.model_type == "qwen2_vl"
    processor = load_processor(cfg.model)
    assert processor.image_processor.size["longest_edge"] == cfg.model.max_pixels
    assert processor.image_processor.size["shortest_edge"] == cfg.model.min_pixels


@pytest.mark.parametrize("layout", ["preprocessor_config.json", "processor_config.json"])
@pytest.mark.parametrize("model_name", ["7b", "qwen2_5_vl_7b", "lingshu_7b", "qwen3_vl_8b"])
def test_the_presets_pixel_budget_wins_over_a_published_preprocessor_configs(compose, tmp_path, model_name, layout):
    """The published preprocessor configs of Qwen2-VL, Qwen2.5-VL and Lingshu carry min_pixels 3136 and max_pixels
    12845056 beside `size`, which transformers lets override `size`: the preset's budget must still be what
    images are resized to, or images of up to 16,384 tokens meet a max_length derived from 1280."""
    import json
    import shutil

    from PIL import Image

    from medvl.data.token_length import max_image_tokens

    family = {"7b": "tiny", "qwen2_5_vl_7b": "tiny25", "lingshu_7b": "tiny25", "qwen3_vl_8b": "tiny3"}[model_name]
    local = tmp_path / model_name
    shutil.copytree(resolve_model_path(compose([f"model={family}"]).model), local)
    processor_config = json.loads((local / "processor_config.json").read_text())
    published = {**processor_config.pop("image_processor"), "min_pixels": 3136, "max_pixels": 12845056}
    if layout == "preprocessor_config.json":  # as the Hub's checkpoints ship it
        (local / "preprocessor_config.json").write_text(json.dumps(published))
    else:
        processor_config["image_processor"] = published
    (local / "processor_config.json").write_text(json.dumps(processor_config))
    cfg = compose([f"model={model_name}", f"model.name_or_path={local}"])
    processor = load_processor(cfg.model)
    assert processor.image_processor.size["longest_edge"] == cfg.model.max_pixels
    assert processor.image_processor.size["shortest_edge"] == cfg.model.min_pixels
    grid = processor.image_processor(images=Image.new("RGB", (2000, 2000)), return_tensors="pt")["image_grid_thw"]
    merge = processor.image_processor.merge_size ** 2
    assert int(grid.prod()) // merge <= max_image_tokens(cfg.model)


@pytest.mark.parametrize("name, loads", [("Qwen2_5_VLImageProcessor", True), ("NoSuchImageProcessor", False)])
def test_a_checkpoint_naming_a_forks_image_processor_loads_with_the_stock_class(compose, tmp_path, caplog, name,
                                                                                loads):
    """Checkpoints fine-tuned with forks of transformers name their Qwen2.5-VL image processor
    Qwen2_5_VLImageProcessor, which transformers 5 refuses; it is Qwen2VLImageProcessor, and loads as such from a
    copy of the processor files (the checkpoint is not written). A name transformers has no class for stays one
    line."""
    import json
    import shutil

    from PIL import Image
    from transformers import AutoProcessor

    local = tmp_path / "finetuned"
    shutil.copytree(resolve_model_path(compose(["model=tiny25"]).model), local)
    processor_config = json.loads((local / "processor_config.json").read_text())
    legacy = {**processor_config.pop("image_processor"), "image_processor_type": name,
              "processor_class": "Qwen2_5_VLProcessor"}
    (local / "preprocessor_config.json").write_text(json.dumps(legacy))
    (local / "processor_config.json").write_text(json.dumps(processor_config))
    before = {p.name: p.read_bytes() for p in local.iterdir()}
    cfg = compose(["model=qwen2_5_vl_7b", f"model.name_or_path={local}"])
    if not loads:
        with pytest.raises(ModelLoadError, match="^cannot load model from .*Unrecognized image processor[^\n]*$"):
            load_processor(cfg.model)
        return
    processor = load_processor(cfg.model)
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert f"names the image processor {name}" in caplog.text
    assert processor.image_processor.size["longest_edge"] == cfg.model.max_pixels  # the preset's budget still wins
    assert {p.name: p.read_bytes() for p in local.iterdir()} == before
    stock = load_processor(cfg.model, str(resolve_model_path(compose(["model=tiny25"]).model)))
    image = Image.new("RGB", (300, 200), "gray")
    assert torch.equal(processor.image_processor(images=image, return_tensors="pt")["pixel_values"],
                       stock.image_processor(images=image, return_tensors="pt")["pixel_values"])
    processor.save_pretrained(tmp_path / "saved")  # what a run or an export writes loads with plain transformers
    assert type(AutoProcessor.from_pretrained(tmp_path / "saved").image_processor).__name__ == "Qwen2VLImageProcessor"


def test_a_checkpoint_error_of_a_cached_hub_model_is_not_called_a_missing_download(compose, monkeypatch):
    """A hub id found in the local cache that transformers refuses (here: an attention its class does not run
    under) gets transformers' reason, not "the hub cannot be reached (offline?)"."""
    from transformers import AutoModelForImageTextToText

    import medvl.models.loading as loading

    def refuses(*args, **kwargs):
        raise ValueError("Gemma3ForConditionalGeneration does not support Flash Attention 2 yet.\nMore text")

    monkeypatch.setattr(loading, "check_available", lambda path: None)
    monkeypatch.setattr(AutoModelForImageTextToText, "from_pretrained", refuses)
    with pytest.raises(ModelLoadError) as err:
        load_model(compose(["model=medgemma_4b"]).model)
    assert str(err.value) == ("cannot load model from google/medgemma-4b-it: Gemma3ForConditionalGeneration does not "
                              "support Flash Attention 2 yet.")


def test_unreachable_hub_id_is_one_clear_line(compose, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = compose(["model=7b"])
    with pytest.raises(ModelLoadError) as err:
        load_model(cfg.model)
    msg = str(err.value)
    assert "\n" not in msg
    assert "Qwen/Qwen2-VL-7B-Instruct" in msg and "model.name_or_path=" in msg


def test_tiny25_is_qwen2_5_vl(tiny25_dir, compose):
    model = load_model(compose(["model=tiny25"]).model)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert json.loads((tiny25_dir / "medvl_tiny.json").read_text())["family"] == "qwen2_5_vl"


def _trainable(compose, overrides):
    cfg = compose(overrides)
    validate(cfg)
    model = apply_training_setup(load_model(cfg.model), cfg)
    return trainable_parameter_names(model)


def _lora_names(prefix: str, modules: list[str]) -> set[str]:
    return {f"base_model.model.{prefix}.{m}.lora_{ab}.default.weight" for m in modules for ab in "AB"}


@pytest.mark.parametrize("model", ["tiny", "tiny25"])
def test_align_trains_exactly_the_merger_lora(compose, model, tiny_dir, tiny25_dir):
    names = _trainable(compose, [f"model={model}", "stage=align"])
    assert names == _lora_names("model.visual.merger", ["mlp.0", "mlp.2"])


@pytest.mark.parametrize("model", ["tiny", "tiny25"])
def test_instruct_trains_exactly_the_llm_lora(compose, model, tiny_dir, tiny25_dir):
    names = _trainable(compose, [f"model={model}", "stage=instruct"])
    expected = set()
    for layer in range(4):
        expected |= _lora_names(f"model.language_model.layers.{layer}", LLM_LINEAR)
    assert names == expected
    # Qwen2.5-VL's vision blocks have gate/up/down_proj too: an LLM LoRA must not touch them.
    assert not any("visual" in n for n in names)


def test_all_linear_stays_inside_the_llm(compose, tiny25_dir):
    names = _trainable(compose, ["model=tiny25", "stage=instruct", "lora=all_linear"])
    assert names and all(".language_model.layers." in n for n in names)
    attn = _trainable(compose, ["model=tiny25", "stage=instruct", "lora=attn"])
    assert attn < names and all("self_attn" in n for n in attn)


def test_align_without_lora_trains_the_whole_merger(compose, tiny_dir):
    names = _trainable(compose, ["stage=align", "lora=none"])
    model = load_model(compose([]).model)
    merger = {n for n, _ in model.named_parameters() if n.startswith("model.visual.merger.")}
    assert names == merger and len(merger) == 6


def test_instruct_without_lora_trains_the_whole_llm(compose, tiny_dir):
    names = _trainable(compose, ["stage=instruct", "lora=none"])
    assert names and all(n.startswith(("model.language_model.", "lm_head.")) for n in names)
    assert "lm_head.weight" in names and not any("visual" in n for n in names)


def test_no_network_fails_fast_without_offline_flag(compose, monkeypatch):
    from huggingface_hub import constants

    import medvl.models.loading as loading

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "_hub_reachable", lambda timeout=3.0: False)

    def never(*args, **kwargs):
        raise AssertionError("from_pretrained must not be reached (it would retry for a minute)")

    monkeypatch.setattr("transformers.AutoModelForImageTextToText.from_pretrained", never)
    with pytest.raises(ModelLoadError, match="hub cannot be reached"):
        load_model(compose(["model=2b"]).model)


@pytest.mark.gpu
def test_bf16_training_step_on_gpu(compose, tiny_dir, small_synth):
    """bf16 weights on the GPU, float32 LoRA weights under bf16 autocast (as medvl.train sets them up): a step
    changes the LoRA weights, and only them, by finite amounts, with a finite loss."""
    from medvl.data.dataset import Collator, encode
    from medvl.data.format import read_jsonl
    from medvl.training.run import setup_for_training

    cfg = compose(["model.dtype=bfloat16", "stage=instruct", "lora=attn_ffn", *small_data_overrides(small_synth)])
    validate(cfg)
    model = setup_for_training(load_model(cfg.model, device="cuda"), cfg)
    frozen = next(p for p in model.parameters() if not p.requires_grad)
    assert frozen.dtype == torch.bfloat16
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(p.dtype == torch.float32 for p in trainable.values())
    processor = load_processor(cfg.model)
    batch = Collator(processor.tokenizer.pad_token_id)(
        [encode(row, processor, small_synth) for row in read_jsonl(small_synth / "train.jsonl")[:4]])
    batch = {k: v.cuda() for k, v in batch.items()}
    before = {n: p.detach().clone() for n, p in trainable.items()}
    frozen_before = frozen.detach().clone()
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-3)
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in trainable.values())
    assert any(not torch.equal(p, before[n]) for n, p in trainable.items())
    assert torch.equal(frozen, frozen_before)


def test_building_a_tiny_model_leaves_the_global_random_stream_alone(tmp_path):
    import torch

    from medvl.models.tiny import build_tiny

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(tmp_path / "tiny")  # built here, not found: it draws its random weights
    assert torch.equal(torch.rand(3), expected)
