"""The default directory name of an evaluation (conf/eval.yaml's ``${medvl_eval_name:...}`` resolver)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from medvl.runs import ADAPTER_DIR, MODEL_DIR, RunDir


def _slug(path: str) -> str:
    """A directory-name-safe label for a checkpoint path: its last two components."""
    if path in ("", "None", "base"):
        return "base"
    parts = [p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".", ADAPTER_DIR, MODEL_DIR)]
    return "_".join(parts[-2:]).replace("=", "-").replace(",", "_") or "base"


def eval_dir_name(ckpt: str, model: str, data: str, split: str, prompt: str) -> str:
    """The default eval directory name, ``<model>_<data>_<split>_<prompt>_<checkpoint>``.

    With ``+ckpt=<run>``, medvl.eval takes model, data and prompt from the run unless the command
    line chooses them (:meth:`medvl.runs.RunDir.apply_config`); the name says the same, so
    that an eval of a 7B Slake run is not filed under the defaults' ``tiny_synth``.
    """
    run = _run_config_of(ckpt)
    if run is not None:
        given = _command_line_keys()
        if "model" not in given and OmegaConf.select(run, "model.name"):
            model = run.model.name
        if "data" not in given and OmegaConf.select(run, "data.name"):
            data = run.data.name
            if not given & {"split", "data.eval_split"}:
                split = OmegaConf.select(run, "data.eval_split", default=split)
        if not given & {"prompt", "prompt.name"} and OmegaConf.select(run, "prompt.name"):
            prompt = run.prompt.name
    return f"{model}_{data}_{split}_{prompt}_{_slug(ckpt)}"


def _run_config_of(ckpt: str) -> DictConfig | None:
    if ckpt in ("", "None", "base"):
        return None
    try:
        return RunDir.from_ckpt(ckpt).config
    except ValueError:  # a bad +ckpt gets its one-line error when medvl.eval starts, not here
        return None


def _command_line_keys() -> set[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    return {o.lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task}
