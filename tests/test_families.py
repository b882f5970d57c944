"""Every model family on its tiny offline variant: what each LoRA group resolves to, and a run that trains
align then instruct (init_from), evaluates and exports."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from medvl.config import ConfigError, validate
from medvl.models.loading import load_model, load_processor
from medvl.models.lora import apply_training_setup, target_modules, target_parameters, trainable_parameter_names

from .conftest import compose_config, run_eval, small_data_overrides

#: The tiny model group of each family.
TINY = {"qwen2_vl": "tiny", "qwen2_5_vl": "tiny25", "qwen3_vl": "tiny3", "qwen3_vl_moe": "tiny3_moe",
        "gemma3": "tiny_gemma3"}
ATTN = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
FFN = ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
#: What lora=merger must resolve to, written out by hand from the transformers classes.
MERGER = {
    "qwen2_vl": {"model.visual.merger.mlp.0", "model.visual.merger.mlp.2"},
    "qwen2_5_vl": {"model.visual.merger.mlp.0", "model.visual.merger.mlp.2"},
    "qwen3_vl": {f"model.visual.{m}.linear_fc{i}" for m in ("merger", "deepstack_merger_list.0",
                                                            "deepstack_merger_list.1") for i in (1, 2)},
}
MERGER["qwen3_vl_moe"] = MERGER["qwen3_vl"]
TRAIN = ["trainer.max_steps=2", "trainer.per_device_train_batch_size=8", "trainer.logging_steps=1",
         "trainer.save_steps=1000"]


def _llm(layers: int, suffixes: list[str]) -> set[str]:
    return {f"model.language_model.layers.{i}.{s}" for i in range(layers) for s in suffixes}


def _layers(model) -> int:
    return model.config.text_config.num_hidden_layers


@pytest.fixture(scope="module")
def models(cache_dir) -> dict[str, torch.nn.Module]:
    """One loaded tiny model per family (LoRA resolution only reads module names)."""
    return {family: load_model(compose_config(cache_dir, "train", [f"model={name}"]).model)
            for family, name in TINY.items()}


def _resolved(compose, model, overrides: list[str]) -> set[str]:
    cfg = compose(overrides)
    validate(cfg)
    return set(target_modules(model, cfg)) | set(target_parameters(model, cfg))


@pytest.mark.parametrize("family", list(TINY))
def test_every_lora_group_resolves_to_exactly_its_modules(compose, models, family):
    model, name = models[family], TINY[family]
    n = _layers(model)
    moe = family == "qwen3_vl_moe"
    llm = ["stage=instruct", f"model={name}"]
    assert _resolved(compose, model, [*llm, "lora=attn"]) == _llm(n, ATTN)
    # A MoE has no dense mlp.*_proj: instruct's default lora=attn_ffn adapts attention only there.
    assert _resolved(compose, model, [*llm, "lora=attn_ffn"]) == _llm(n, ATTN if moe else ATTN + FFN)
    all_linear = _resolved(compose, model, [*llm, "lora=all_linear"])
    assert all_linear >= _llm(n, ATTN) and all(n.startswith("model.language_model.layers.") for n in all_linear)
    if moe:
        assert _resolved(compose, model, [*llm, "lora=attn_experts"]) == _llm(n, ATTN + EXPERTS)
        with pytest.raises(ConfigError, match=r"lora=ffn .* matched no module under model\.language_model"):
            _resolved(compose, model, [*llm, "lora=ffn"])
    else:
        assert _resolved(compose, model, [*llm, "lora=ffn"]) == _llm(n, FFN)
    align = ["stage=align", f"model={name}", "lora=merger"]
    if family == "gemma3":
        # MedGemma's projector is one weight matrix, not an nn.Linear: the merger is trained fully instead.
        with pytest.raises(ConfigError, match=r"matched no module under model\.multi_modal_projector"):
            _resolved(compose, model, align)
    else:
        assert _resolved(compose, model, align) == MERGER[family]


def test_qwen3_vision_blocks_look_like_its_mergers_but_stay_untouched(models):
    # The reason the merger group is scoped by path: the vision blocks' MLPs have the same leaf names.
    names = {n for n, _ in models["qwen3_vl"].named_modules()}
    assert "model.visual.blocks.0.mlp.linear_fc1" in names


def _trainable(compose, overrides: list[str]) -> set[str]:
    cfg = compose(overrides)
    validate(cfg)
    return trainable_parameter_names(apply_training_setup(load_model(cfg.model), cfg))


def test_moe_experts_train_only_when_asked(compose, models):
    n = _layers(models["qwen3_vl_moe"])
    default = _trainable(compose, ["model=tiny3_moe", "stage=instruct"])
    assert default and all(".self_attn." in name for name in default)
    experts = _trainable(compose, ["model=tiny3_moe", "stage=instruct", "lora=attn_experts"])
    assert {name for name in experts if ".mlp.experts." in name} and default < experts
    assert len({name.split(".mlp.experts.")[0] for name in experts if ".mlp.experts." in name}) == n


@pytest.mark.parametrize("family, projector", [
    ("gemma3", {"model.multi_modal_projector.mm_input_projection_weight",
                "model.multi_modal_projector.mm_soft_emb_norm.weight"}),
    ("qwen3_vl", {f"model.visual.{m}.{p}" for m in ("merger", "deepstack_merger_list.0", "deepstack_merger_list.1")
                  for p in ("norm.weight", "norm.bias", "linear_fc1.weight", "linear_fc1.bias",
                            "linear_fc2.weight", "linear_fc2.bias")}),
])
def test_a_fully_trained_merger_is_the_projector(compose, family, projector):
    assert _trainable(compose, [f"model={TINY[family]}", "stage=align", "lora=none"]) == projector


@pytest.mark.parametrize("family, expected_prefixes", [
    ("qwen3_vl", ("model.visual.patch_embed.", "model.visual.pos_embed.", "model.visual.blocks.")),
    ("gemma3", ("model.vision_tower.",)),
])
def test_a_fully_trained_vision_encoder_leaves_the_merger_alone(compose, family, expected_prefixes):
    names = _trainable(compose, [f"model={TINY[family]}", "stage=align", "lora=none", "stage.merger=frozen",
                                 "stage.vision=full"])
    assert names and all(name.startswith(expected_prefixes) for name in names)
    assert {p for p in expected_prefixes if any(name.startswith(p) for name in names)} == set(expected_prefixes)


@pytest.mark.parametrize("name, family, tokens", [("tiny3", "qwen3_vl", 4), ("tiny3_moe", "qwen3_vl_moe", 4)])
def test_qwen3_image_tokens_are_32_px_squares(compose, name, family, tokens):
    from PIL import Image

    from medvl.data.token_length import image_token_count, max_image_tokens

    cfg = compose([f"model={name}"])
    processor = load_processor(cfg.model)
    assert processor.image_processor.patch_size == 16
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (64, 64))],
                    return_tensors="pt")
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (out["input_ids"] == image_token).sum() == tokens == image_token_count(64, 64, processor.image_processor)
    assert max_image_tokens(cfg.model) == cfg.model.max_pixels // (32 * 32) == 16


@pytest.mark.parametrize("name, end", [("tiny3", "<|im_end|>"), ("tiny_gemma3", "<end_of_turn>")])
def test_encoding_lengths_and_prompts_agree(compose, small_synth, name, end):
    from medvl.data.dataset import IGNORE_INDEX, append_answer, encode, encode_prompts, first_turn
    from medvl.data.format import answer_of, read_jsonl
    from medvl.data.token_length import estimate_lengths

    processor = load_processor(compose([f"model={name}"]).model)
    rows, system = read_jsonl(small_synth / "train.jsonl")[:6], "Answer briefly."
    items = [encode(row, processor, small_synth, system_prompt=system) for row in rows]
    # Header-only lengths (length grouping, prepare's limit) equal the real encoding's.
    assert estimate_lengths(rows, processor, small_synth, system_prompt=system) == [len(i["input_ids"]) for i in items]
    for row, item in zip(rows, items):
        answer = item["input_ids"][item["labels"] != IGNORE_INDEX]
        assert processor.tokenizer.decode(answer) == answer_of(row) + end  # labels: the answer and end of turn
    # Generation's batched prompts equal the prompts encoded one by one; perplexity's items built on them equal
    # the rows encoded whole.
    for row, batched in zip(rows, encode_prompts(rows, processor, small_synth, system_prompt=system)):
        single = encode(row, processor, small_synth, system_prompt=system, with_answer=False)
        assert batched.keys() == single.keys()
        assert all(torch.equal(batched[k], single[k]) for k in single if k != "labels")
        whole, built = encode(first_turn(row), processor, small_synth, system_prompt=system), append_answer(
            batched, row, processor, system_prompt=system)
        assert built.keys() == whole.keys() and all(torch.equal(built[k], whole[k]) for k in whole)


@pytest.mark.parametrize("name, tokens", [("qwen3_vl_8b", 1280), ("qwen2_5_vl_7b", 1280), ("medgemma_4b", 256),
                                          ("tiny_gemma3", 16)])
def test_derived_max_length_counts_each_familys_image_tokens(compose, name, tokens):
    from medvl.data.token_length import max_image_tokens, resolve_max_length

    cfg = compose([f"model={name}"])
    assert max_image_tokens(cfg.model) == tokens
    assert resolve_max_length(cfg.model, cfg.data) == tokens + cfg.data.text_tokens


def test_an_unregistered_family_is_one_line(compose, models, monkeypatch):
    from medvl.config import families

    # A filtered copy, not delitem: monkeypatch would put the key back at the end, reordering the registry
    # (tests/test_family_registry.py checks model.family's choices against its order).
    monkeypatch.setattr(families, "FAMILIES", {k: v for k, v in families.FAMILIES.items() if k != "qwen3_vl"})
    cfg = compose(["model=tiny3"])
    validate(cfg)
    with pytest.raises(ConfigError, match=r"^model.family=qwen3_vl is not a registered model family; add a "
                                          r"FamilySpec to medvl.config.families.FAMILIES \(known: qwen2_vl, "):
        apply_training_setup(models["qwen3_vl"], cfg)


# ------------------------------------------------------------------------------------------------
# A run per family: align (merger LoRA; MedGemma's projector fully), then instruct on top of it (init_from),
# evaluated and exported.

#: The weights the align stage must change, by tiny model group. MedGemma's projector trains fully: its norm
#: may stay put for two steps (its gradient flows through the projection, zero at the start).
PROJECTOR = {"tiny3": {f"{m}.weight" for m in MERGER["qwen3_vl"]},
             "tiny_gemma3": {"model.multi_modal_projector.mm_input_projection_weight"}}
PROJECTOR["tiny3_moe"] = PROJECTOR["tiny3"]


@pytest.fixture(scope="module", params=["tiny3", "tiny3_moe", "tiny_gemma3"])
def chain(request, tmp_path_factory, cache_dir, small_synth):
    from medvl.models.export import export
    from medvl.training.run import train

    name = request.param
    root = tmp_path_factory.mktemp(f"chain-{name}")
    data = small_data_overrides(small_synth)
    align = root / "align"
    train(compose_config(cache_dir, "train", [f"model={name}", "stage=align", *TRAIN, "trainer.learning_rate=0.05",
                                              *(["lora=none"] if name == "tiny_gemma3" else []), *data], align))
    instruct = root / "instruct"
    metrics = train(compose_config(cache_dir, "train", [f"model={name}", "stage=instruct", f"init_from={align}",
                                                        *TRAIN, *data], instruct))
    run_eval(cache_dir, root / "eval", [f"+ckpt={instruct}", "metrics=[exact_match]", "max_new_tokens=4",
                                        "batch_size=16", "data.max_eval_samples=8"])
    merged = export(compose_config(cache_dir, "export", [f"+ckpt={instruct}", f"save_dir={root / 'merged'}"],
                                   root / "export"), [f"+ckpt={instruct}"])
    return name, root, metrics, merged


def test_chain_trains_each_stage_on_its_component(chain):
    name, root, metrics, _ = chain
    assert metrics["train_loss"] > 0
    if name == "tiny_gemma3":
        assert (root / "align" / "model" / "model.safetensors").is_file()  # the projector trained fully
        align = {}
    else:
        align = load_file(root / "align" / "adapter" / "adapter_model.safetensors")
        assert {k.split(".lora_")[0].removeprefix("base_model.model.") for k in align} == MERGER["qwen3_vl"]
    instruct = load_file(root / "instruct" / "adapter" / "adapter_model.safetensors")
    assert instruct and all(".language_model.layers." in k for k in instruct)
    assert all(v.abs().sum() > 0 for k, v in {**align, **instruct}.items() if "lora_B" in k)  # B starts at zero


def test_chain_evaluates(chain):
    _, root, _, _ = chain
    rows = [json.loads(line) for line in (root / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(isinstance(r["prediction"], str) and r["nll"] > 0 for r in rows)
    assert "exact_match" in json.dumps(json.loads((root / "eval" / "metrics.json").read_text()))


def test_export_merges_both_stages(chain):
    name, root, _, merged = chain
    cfg = OmegaConf.load(root / "instruct" / "config.yaml")
    base = load_model(cfg.model).state_dict()
    got = load_model(cfg.model, str(merged)).state_dict()
    assert got.keys() == base.keys()
    changed = {k for k in base if not torch.equal(base[k], got[k])}
    assert PROJECTOR[name] <= changed  # the align stage, merged beneath the instruct adapter
    assert any(".language_model.layers." in k for k in changed)
    aligned = {k for k in changed if k in PROJECTOR[name] or k.startswith("model.multi_modal_projector.")}
    assert all(".language_model.layers." in k for k in changed - aligned), changed - aligned
    assert json.loads((merged / "medvl_export.json").read_text())["init_from"] == [str(root / "align")]
