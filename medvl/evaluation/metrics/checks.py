"""What scoring needs, checked before generation or training starts (so that no job fails after hours):
metric names, Java for METEOR, each metric's library, and the BERTScore model files."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medvl.evaluation.metrics.bertscore import default_bertscore_model
from medvl.evaluation.metrics.registry import MetricError, selected

# Libraries behind each corpus metric, imported lazily (torch alone takes seconds) but in the
# calling thread: two threads importing torch and scipy at once see half-initialized modules.
BACKENDS = {
    "bleu4": ("pycocoevalcap.bleu.bleu_scorer",),
    "cider": ("pycocoevalcap.cider.cider_scorer",),
    "rouge_l": ("rouge_score.rouge_scorer",),
    "meteor": ("pycocoevalcap.meteor.meteor",),
    "bertscore_f1": ("torch", "bert_score"),
}


def import_backends(names: Sequence[str]) -> None:
    """Import the libraries behind the metrics ``names`` (see :data:`BACKENDS`)."""
    for name in names:
        for module in BACKENDS.get(name, ()):
            importlib.import_module(module)


def check_metrics(metrics: Sequence[str] | None = None, *, key: str = "metrics") -> list[str]:
    """The selected metric names (all when ``None``), or :class:`MetricError` before any work starts.

    METEOR runs pycocoevalcap's Java jar; without ``java`` it could only fail after generation.
    ``key`` is the config key the names come from, as the message tells the user to set it.
    """
    try:
        names = selected(metrics)
    except MetricError as err:
        raise MetricError(f"{key}: {err}") from None
    if "meteor" in names and shutil.which("java") is None:
        others = [name for name in names if name != "meteor"]
        raise MetricError(
            "metric meteor runs pycocoevalcap's Java jar and no `java` is on PATH: install a Java runtime "
            f"(e.g. apt install default-jre-headless) or choose metrics without it, e.g. {key}=[{','.join(others)}]"
        )
    return names


def check_scoring(settings: Any, *, prefix: str = "") -> list[str]:
    """Everything scoring with ``settings`` (an eval config's ``metrics`` and ``bertscore``) needs, checked
    before generation (or training) starts: metric names, Java for METEOR, each metric's library, and the
    BERTScore model files. ``prefix`` is where the settings live (``eval.`` in a training config).

    Raises:
        MetricError: naming the key to change.
    """
    names = check_metrics(list(settings.metrics) or None, key=f"{prefix}metrics")
    for name in names:
        for module in BACKENDS.get(name, ()):
            if importlib.util.find_spec(module.split(".")[0]) is None:
                raise MetricError(f"metric {name} needs the {module.split('.')[0]} package, which is not installed; "
                                  f"install it or leave {name} out of {prefix}metrics")
    if "bertscore_f1" in names:
        bertscore = settings.bertscore
        check_bertscore_model(bertscore.model, key=f"{prefix}bertscore.model", metrics_key=f"{prefix}metrics")
        if bertscore.get("model_zh"):
            check_bertscore_model(bertscore.model_zh, key=f"{prefix}bertscore.model_zh",
                                  metrics_key=f"{prefix}metrics")
    return names


def check_bertscore_model(model: str | None, *, key: str, metrics_key: str) -> None:
    """A BERTScore model that can be loaded here: the packaged default, a model directory, or a hub id that
    is cached or downloadable (otherwise loading it would fail after hours of generation)."""
    if model is None:
        try:
            default_bertscore_model()
        except RuntimeError as err:
            raise MetricError(f"{key}=null: {err}; or leave bertscore_f1 out of {metrics_key}") from None
        return
    path = Path(str(model)).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise MetricError(f"{key}={model} is not a model directory (it has no config.json); set {key} to a "
                              f"directory saved by from_pretrained/huggingface-cli download, or leave bertscore_f1 "
                              f"out of {metrics_key}")
        return
    from medvl.models.loading import ModelLoadError, check_available

    try:
        check_available(str(model))
    except ModelLoadError:
        raise MetricError(
            f"{key}={model} is not a local directory, nor a hub id in the local Hugging Face cache, and the hub "
            f"cannot be reached; download it where there is network (huggingface-cli download {model} --local-dir "
            f"DIR) and set {key}=DIR, or leave bertscore_f1 out of {metrics_key}") from None

