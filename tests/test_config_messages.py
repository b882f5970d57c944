"""Config errors name what was asked and what would work, and what they recommend does work."""

from __future__ import annotations

import copy
import itertools
import re

import pytest
from omegaconf import OmegaConf

from medvl.config import ConfigError, group_choices, validate

MODES = ("frozen", "lora", "full")


def _suggestions(msg: str) -> list[list[str]]:
    """The alternatives a message offers after its semicolon, each as the overrides it names."""
    advice = msg.partition("; ")[2]
    return [re.findall(r"((?:lora|stage\.\w+)=\w+)", part) for part in re.split(r",? or |, ", advice)
            if re.search(r"(?:lora|stage\.\w+)=\w+", part)]


def _stage_overrides(vision: str, merger: str, llm: str) -> list[str]:
    return [f"stage.vision={vision}", f"stage.merger={merger}", f"stage.llm={llm}"]


def test_the_reported_case_recommends_another_choice(compose):
    cfg = compose(["stage=instruct", *_stage_overrides("full", "full", "full"), "lora=attn_ffn"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    msg = str(err.value)
    assert msg == ("lora=attn_ffn puts adapters on the llm, but stage=instruct (vision=full, merger=full, llm=full) "
                   "trains no component with LoRA; choose lora=none, or set stage.llm=lora")


def test_default_lora_follows_a_stage_without_lora_component(compose):
    """lora=auto (the default) asks for the stage's own LoRA: a stage that trains everything fully has none."""
    cfg = compose(["stage=instruct", *_stage_overrides("full", "full", "full")])
    validate(cfg)
    assert (cfg.lora.name, list(cfg.lora.targets), cfg.lora.scope) == ("none", [], "none")


def test_default_lora_follows_the_component_the_stage_marks_lora(compose):
    cfg = compose(["stage=align", *_stage_overrides("frozen", "frozen", "lora")])
    validate(cfg)
    assert (cfg.lora.name, cfg.lora.scope) == ("attn_ffn", "llm")


@pytest.mark.parametrize("stage", ["align", "instruct"])
def test_every_refused_lora_choice_is_told_a_choice_that_works(compose, stage):
    """Every stage component setting x every lora preset: a refusal never recommends the choice that failed,
    and each alternative it offers cures it (the config then validates, or stops at another mistake)."""
    composed: dict[str, object] = {}

    def build(overrides: list[str]):
        """``compose(overrides)``, composing once per lora preset (stage.* values are set on a copy)."""
        values = dict(o.split("=", 1) for o in overrides)
        lora = values.pop("lora")
        if lora not in composed:
            composed[lora] = compose([f"stage={stage}", f"lora={lora}"])
        cfg = copy.deepcopy(composed[lora])
        for key, value in values.items():
            OmegaConf.update(cfg, key, value)
        return cfg

    refused = 0
    for modes, lora in itertools.product(itertools.product(MODES, repeat=3), group_choices("lora")):
        asked = [*_stage_overrides(*modes), f"lora={lora}"]
        try:
            validate(build(asked))
            continue
        except ConfigError as exc:
            msg = str(exc)
        refused += 1
        assert "\n" not in msg
        options = _suggestions(msg)
        assert options, msg
        for option in options:
            assert f"lora={lora}" not in option, msg
            keys = {o.split("=")[0] for o in option}
            retry = [a for a in asked if a.split("=")[0] not in keys] + option
            try:
                validate(build(retry))
            except ConfigError as again:
                assert str(again) != msg, (asked, option)
    assert refused


@pytest.mark.parametrize("overrides, expected", [
    (_stage_overrides("lora", "frozen", "frozen"), "stage.vision=lora: no lora preset puts adapters on the vision"),
    (_stage_overrides("frozen", "lora", "lora"), "marks both the merger and the llm lora"),
    (_stage_overrides("frozen", "frozen", "frozen"), "trains nothing; set stage.llm=lora or stage.llm=full"),
    (["stage=align", *_stage_overrides("frozen", "frozen", "frozen")], "trains nothing; set stage.merger=lora or"),
    (["lora=attn", "lora.targets=[]"], "lora=attn lists no targets; add lora.targets=[...]"),
    (["lora.alpha=-2"], "lora.alpha=-2 is invalid: must be a positive integer, or null (2 * lora.r)"),
])
def test_stage_and_lora_mistakes_name_a_fix(compose, overrides, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate(compose(overrides))


def test_lora_targets_that_match_nothing_name_a_fix(compose, tiny_dir):
    from medvl.models.loading import load_model
    from medvl.models.lora import target_modules

    cfg = compose(["lora=attn", "lora.targets=[self_attn.qkv]"])
    validate(cfg)
    with pytest.raises(ConfigError, match=r"matched no module under model\.language_model; name module-name "
                                          r"suffixes found there .* or use lora=all_linear"):
        target_modules(load_model(cfg.model), cfg)


@pytest.mark.parametrize("target, expected", [
    ("self_attn", "names model.language_model.layers.0.self_attn, a Qwen2VLAttention, which LoRA cannot adapt "
                  "(peft adapts nn.Linear, nn.Embedding and nn.Conv layers); name its linear layers instead (e.g. "
                  "self_attn.q_proj, self_attn.k_proj, self_attn.v_proj, self_attn.o_proj)"),
    ("mlp.act_fn", "names model.language_model.layers.0.mlp.act_fn, a SiLUActivation, which LoRA cannot adapt "
                   "(peft adapts nn.Linear, nn.Embedding and nn.Conv layers); use lora=all_linear"),
])
def test_lora_targets_that_name_a_module_peft_cannot_adapt_name_a_fix(compose, tiny_dir, target, expected):
    """Refused at setup in one line, before peft would raise its own ValueError with a traceback."""
    from medvl.models.loading import load_model
    from medvl.models.lora import apply_training_setup

    cfg = compose(["lora=attn", f"lora.targets=[{target}]"])
    validate(cfg)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        apply_training_setup(load_model(cfg.model), cfg)


def test_missing_resume_checkpoint_names_what_works(compose, tmp_path):
    from medvl.training.run import resume_checkpoint

    with pytest.raises(FileNotFoundError, match=r"not a complete Trainer checkpoint directory .*; use resume=auto"):
        resume_checkpoint(compose([f"resume={tmp_path}"]), tmp_path)




def test_a_line_for_the_log_file_only_reaches_the_file_handlers(tmp_path):
    """What the console already showed its own way (prepare's warnings in colour, the one-line error on stderr)
    goes to the run's log file once, not to the console a second time."""
    import io
    import logging

    from medvl.config.errors import to_log_file

    root = logging.getLogger()
    console, file = logging.StreamHandler(io.StringIO()), logging.FileHandler(tmp_path / "run.log")
    quiet = logging.FileHandler(tmp_path / "errors-only.log")
    quiet.setLevel(logging.ERROR)
    for handler in (console, file, quiet):
        root.addHandler(handler)
    try:
        to_log_file(logging.WARNING, "train: 2 of 4 rows dropped as too_long")
    finally:
        for handler in (console, file, quiet):
            root.removeHandler(handler)
            handler.close()
    assert (tmp_path / "run.log").read_text() == "train: 2 of 4 rows dropped as too_long\n"
    assert console.stream.getvalue() == "" and (tmp_path / "errors-only.log").read_text() == ""
