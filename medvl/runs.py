"""A training run's directory as train, eval and export read it.

``medvl.train`` leaves ``<run>/adapter/`` (LoRA) or ``<run>/model/`` (a whole model, stages without LoRA) and
``<run>/config.yaml``, whose ``init_from`` names the earlier stage the run was trained on top of. A
:class:`RunDir` knows where a run's weights are, its config and its stage chain; loading the weights it
describes is :func:`medvl.models.loading.load_run`. Nothing here imports torch: ``medvl.config`` reads a run's
config through this module to name eval directories.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

#: The layout medvl.train writes: weights in one of these folders, the resolved config beside them.
ADAPTER_DIR, MODEL_DIR, CONFIG_FILE = "adapter", "model", "config.yaml"
#: Config groups ``+ckpt=<run>`` evaluation and export take from the run: the model and data it was trained on,
#: and the prompt it was trained with (a model tuned on "Answer with a single word" is scored with that prompt).
RUN_GROUPS = ("model", "data", "prompt")


class CheckpointError(ValueError):
    """A path does not point at a run medvl can load; the message is one line."""


def weights_dir(run: Path, adapter: bool) -> Path:
    """Where medvl.train saves a run's weights: ``adapter/`` for a LoRA adapter, ``model/`` for a whole model."""
    return run / (ADAPTER_DIR if adapter else MODEL_DIR)


def _find_weights(path: Path) -> tuple[Path, str] | None:
    """(weights dir, kind) for a run dir, an adapter dir or a model dir; None when ``path`` is none of them."""
    for cand, kind in ((path / ADAPTER_DIR, "adapter"), (path / MODEL_DIR, "model"), (path, None)):
        if (cand / "adapter_config.json").exists():
            return cand, "adapter"
        if (cand / "config.json").exists() and kind != "adapter":
            return cand, "model"
    return None


@dataclass(frozen=True)
class RunDir:
    """A run's weights (a LoRA adapter or a whole model), its config and the stages beneath it."""

    #: The folder holding the weights: ``<run>/adapter``, ``<run>/model``, or an adapter or model dir itself.
    path: Path
    kind: str  # "adapter" or "model"
    #: The training run's resolved config, when the weights sit in a medvl run directory.
    config: DictConfig | None = field(default=None, compare=False)
    #: The directory as it was named (``+ckpt=`` or an ``init_from``).
    root: Path | None = field(default=None, compare=False)

    @classmethod
    def at(cls, path: Path) -> RunDir | None:
        """The run whose weights are found at ``path`` (a run, adapter or model dir), None if there are none."""
        found = _find_weights(path)
        if found is None:
            return None
        weights, kind = found
        config = None
        # Beside the weights, or in the run directory above them (``<run>/adapter``, ``<run>/best``).
        for cfg_file in (weights / CONFIG_FILE, weights.parent / CONFIG_FILE):
            if cfg_file.exists():
                config = OmegaConf.load(cfg_file)
                break
        return cls(weights, kind, config, path)

    @classmethod
    def from_ckpt(cls, ckpt: str | Path) -> RunDir:
        """What ``+ckpt=...`` points at: a medvl run dir, a LoRA adapter dir, or a merged model dir."""
        if not str(ckpt).strip():
            # `+ckpt=$RUN` with $RUN unset: evaluating the base model instead would pass for the checkpoint's numbers.
            raise CheckpointError("+ckpt= is empty; give a run, adapter or model directory, or leave +ckpt out "
                                  "to evaluate the base model")
        path = Path(ckpt).expanduser()
        if not path.exists():
            raise CheckpointError(f"+ckpt={ckpt} does not exist")
        run = cls.at(path)
        if run is None:
            raise CheckpointError(
                f"+ckpt={ckpt} is not a medvl run directory, a LoRA adapter (adapter_config.json) or a model "
                f"directory (config.json)")
        return run

    @classmethod
    def from_init_from(cls, init_from: str | Path) -> RunDir:
        """The earlier stage ``init_from`` names: a run dir (with ``adapter/`` or ``model/``) or its adapter."""
        path = Path(init_from).expanduser()
        run = cls.at(path)
        if run is None:
            raise FileNotFoundError(
                f"no LoRA adapter (adapter_config.json) in {path} or {path / ADAPTER_DIR}; name a medvl.train run "
                f"directory (with {ADAPTER_DIR}/ or {MODEL_DIR}/) or its {ADAPTER_DIR}/ folder")
        return run

    @property
    def name(self) -> str:
        """The run's name: its directory's, not ``adapter`` or ``model``."""
        return self.path.parent.name if self.path.name in (ADAPTER_DIR, MODEL_DIR) else self.path.name

    @property
    def trained_on(self) -> str | None:
        """The base model an adapter records it was trained on (peft's ``base_model_name_or_path``)."""
        if self.kind != "adapter":
            return None
        return json.loads((self.path / "adapter_config.json").read_text()).get("base_model_name_or_path")

    @property
    def init_from(self) -> Path | None:
        """The earlier stage's run directory (absolute) this run was trained on top of, as its config records it;
        that stage's weights are part of this run's."""
        value = OmegaConf.select(self.config, "init_from") if self.config is not None else None
        return Path(str(value)).expanduser().resolve() if value else None

    def stages(self) -> Iterator[RunDir]:
        """This run, then the earlier stages it was trained on top of, nearest first (read as they are reached:
        a stage that saved a whole model needs none of those beneath it)."""
        seen = {self.path.resolve()}
        run: RunDir = self
        yield run
        while (earlier := run.init_from) is not None:
            if not earlier.exists():
                raise CheckpointError(
                    f"{run.path} was trained on top of init_from={OmegaConf.select(run.config, 'init_from')}, which "
                    f"does not exist (relative paths are read from the current directory); restore that run "
                    f"directory (its weights are part of this run's)")
            below = RunDir.from_init_from(earlier)
            if below.path.resolve() in seen:
                raise CheckpointError(
                    f"init_from chain loops back to {below.path}: each run's config.yaml must name an earlier "
                    f"run as init_from; fix init_from in {(run.root or run.path) / CONFIG_FILE}")
            seen.add(below.path.resolve())
            yield below
            run = below

    def stage_chain(self) -> list[RunDir]:
        """The earlier stages this run was trained on top of, nearest first (every one checked to exist)."""
        return list(self.stages())[1:]

    def weight_stages(self) -> list[RunDir]:
        """The stages whose weights make up this run's, nearest first: this run and those beneath it, down to
        the first that saved a whole model (which holds every stage beneath it)."""
        out = []
        for stage in self.stages():
            out.append(stage)
            if stage.kind == "model":
                break
        return out

    def apply_config(self, cfg: DictConfig, overrides: list[str]) -> None:
        """Take :data:`RUN_GROUPS` from this run's config into ``cfg``, except what the command line sets.

        ``data=slake`` keeps the command line's whole data group; ``data.max_eval_samples=64`` keeps
        that one key on top of the run's data config.
        """
        if self.config is None:
            return
        keys = [o.lstrip("+~").split("=", 1)[0] for o in overrides if "=" in o]
        with open_dict(cfg):
            for group in RUN_GROUPS:
                if group in keys or group not in self.config or group not in cfg:
                    continue
                dotted = {k: OmegaConf.select(cfg, k) for k in keys if k.startswith(group + ".")}
                cfg[group] = OmegaConf.merge(cfg[group], self.config[group])
                for key, value in dotted.items():
                    OmegaConf.update(cfg, key, value)
