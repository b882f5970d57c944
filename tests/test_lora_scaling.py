"""LoRA scale: lora.alpha follows r by default, rsLoRA on request, and a rank sweep's jobs share one scale."""

from __future__ import annotations

import math

import pytest

from medvl.config import ALPHA_PER_RANK, validate
from medvl.models.lora import peft_lora_config

TARGET = ["model.language_model.layers.0.self_attn.q_proj"]


def sweep_jobs(cache_dir, experiment: str, *extra: str) -> list[list[str]]:
    """The overrides of each job of ``python -m medvl.train -m experiment=<experiment> <extra>``: the experiment's
    ``hydra.sweeper.params`` expanded as Hydra's basic sweeper does."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from medvl.config import CONF_DIR

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("train", overrides=[f"experiment={experiment}", f"cache_dir={cache_dir}", *extra],
                          return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    parsed = OverridesParser.create().parse_overrides([f"experiment={experiment}", *extra, *params])
    (batch,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [list(job) for job in batch]


@pytest.mark.parametrize("extra, scale", [
    ((), lambda alpha, r: alpha / r),
    (("lora.use_rslora=true",), lambda alpha, r: alpha / math.sqrt(r)),
])
def test_every_job_of_the_rank_sweep_has_the_same_scale(compose, cache_dir, extra, scale):
    jobs = sweep_jobs(cache_dir, "lora_rank_sweep", *extra)
    ranks, scales = [], set()
    for job in jobs:
        cfg = compose(job)
        validate(cfg)
        lora = peft_lora_config(cfg, TARGET)
        assert lora.use_rslora == bool(extra)
        assert cfg.lora.alpha == lora.lora_alpha  # config.yaml records the alpha peft was given
        ranks.append(lora.r)
        scales.add(round(scale(lora.lora_alpha, lora.r), 9))
    assert sorted(ranks) == [8, 16, 32]
    if extra:  # rsLoRA with alpha = 2r: alpha/sqrt(r) = 2 sqrt(r) grows with r; what it keeps is alpha/r
        assert len(scales) == 3
    else:
        assert scales == {float(ALPHA_PER_RANK)}


def test_explicit_alpha_is_kept(compose):
    cfg = compose(["lora.r=8", "lora.alpha=32"])
    validate(cfg)
    assert (peft_lora_config(cfg, TARGET).lora_alpha, cfg.lora.alpha) == (32, 32)


def test_default_alpha_is_unchanged_at_the_default_rank(compose):
    """alpha = 2r gives the old default (r=16, alpha=32), so runs without lora.* overrides train as before."""
    cfg = compose([])
    validate(cfg)
    assert (cfg.lora.r, cfg.lora.alpha) == (16, 32)


@pytest.mark.parametrize("rslora", [False, True])
def test_the_model_scales_adapters_as_configured(compose, tiny_dir, rslora):
    from peft.tuners.lora import LoraLayer

    from medvl.models.loading import load_model
    from medvl.models.lora import apply_training_setup

    cfg = compose(["lora.r=4", f"lora.use_rslora={str(rslora).lower()}"])
    validate(cfg)
    model = apply_training_setup(load_model(cfg.model), cfg)
    scalings = {m.scaling["default"] for m in model.modules() if isinstance(m, LoraLayer)}
    assert scalings == {8 / math.sqrt(4) if rslora else 8 / 4}  # alpha = 2r = 8
