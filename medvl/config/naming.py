"""Default directory names: an evaluation's (conf/eval.yaml's ``${medvl_eval_name:...}`` resolver) and a sweep
job's (conf/train.yaml's ``${medvl_job_dir:...}``)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from medvl.runs import ADAPTER_DIR, MODEL_DIR, RunDir


def _slug(path: str) -> str:
    """A directory-name-safe label for a checkpoint path: its last two components."""
    if path in ("", "None", "base"):
        return "base"
    parts = [p for p in str(path).replace("\\", "/").split("/") if p not in ("", ".", ADAPTER_DIR, MODEL_DIR)]
    return "_".join(parts[-2:]).replace("=", "-").replace(",", "_") or "base"


#: Characters Hydra's command line does not take in an unquoted value, and what they become in a job's folder name.
_UNQUOTABLE = str.maketrans({"=": "-", ",": "_", " ": "_", "[": None, "]": None, "{": None, "}": None, "(": None,
                             ")": None, "'": None, '"': None, ":": "-"})


def sweep_job_dir(num: int, overrides: str) -> str:
    """A sweep job's folder, ``<num>_<overrides>``, in characters that ``+ckpt=``, ``init_from=`` and
    ``hydra.run.dir=`` take unquoted: ``lora.r=8,lora=attn`` becomes ``3_lora.r-8_lora-attn``, and
    ``eval.metrics=[bleu4,cider]`` ``eval.metrics-bleu4_cider`` (Hydra's own name refuses ``=`` and ``,``)."""
    return f"{num}_{overrides.translate(_UNQUOTABLE)}" if overrides else str(num)


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
