"""The Hugging Face model card (``README.md``) written beside every adapter and merged model.

The card states what a reader needs before using the weights: the base model, the data and the stage chain
they were trained through, the LoRA configuration as peft saved it, and, when the run was evaluated, its
numbers as ``model-index`` metadata. ``huggingface_hub``'s :class:`~huggingface_hub.ModelCard` writes the
metadata, so the card can be pushed with ``push_to_hub`` as it stands.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from omegaconf import OmegaConf

from medvl.config.families import DEFAULT_FAMILY
from medvl.runs import ADAPTER_DIR, MODEL_DIR, RunDir

log = logging.getLogger(__name__)

#: Where an evaluation after training leaves its numbers, inside the run directory.
EVAL_METRICS = Path("eval") / "metrics.json"
#: The overall metrics put into ``model-index`` (those present in the evaluation, in this order).
CARD_METRICS = ("exact_match", "closed_accuracy", "open_recall", "choice_accuracy", "word_f1", "bleu4",
                "rouge_l", "meteor", "cider", "bertscore_f1", "perplexity")
TASK = "visual-question-answering"


def _select(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key) if cfg is not None else None


def _hub_id(name: Any) -> str | None:
    """``name_or_path`` when it names a hub repository (``owner/name``), None for a local directory."""
    text = str(name or "")
    return text if text.count("/") == 1 and not Path(text).expanduser().exists() else None


def _stage_line(stage: RunDir) -> str:
    cfg = stage.config
    data = _select(cfg, "data.name") or "?"
    lora = _select(cfg, "lora.name") or "?"
    return f"| `{stage.name}` | {_select(cfg, 'stage.name') or '?'} | {data} | {lora} | {stage.kind} |"


def target_patterns(targets: Any) -> tuple[int, list[str]]:
    """How many modules peft's ``target_modules`` names, and their names with layer numbers as ``*``.

    medvl saves targets as one anchored regex of full module paths (``^(a\\.b|...)$``); a list of names is
    shown as it is."""
    if isinstance(targets, str):
        names = [re.sub(r"\\(.)", r"\1", t) for t in targets.removeprefix("^(").removesuffix(")$").split("|")]
    else:
        names = [str(t) for t in targets or []]
    return len(names), sorted({re.sub(r"\.\d+\.", ".*.", name) for name in names})


def _lora_lines(weights: Path) -> list[str]:
    config_file = weights / "adapter_config.json"
    if not config_file.exists():
        return ["Trained without LoRA: the weights are a whole model."]
    peft = json.loads(config_file.read_text())
    targets = target_patterns(peft.get("target_modules"))
    lines = [f"- rank `r`: {peft.get('r')}, `lora_alpha`: {peft.get('lora_alpha')}, "
             f"dropout: {peft.get('lora_dropout')}",
             f"- rsLoRA: {bool(peft.get('use_rslora'))}, DoRA: {bool(peft.get('use_dora'))}",
             f"- target modules ({targets[0]}): {', '.join(f'`{t}`' for t in targets[1])}"]
    if peft.get("modules_to_save"):
        lines.append(f"- trained fully and saved with the adapter: {', '.join(peft['modules_to_save'])}")
    return lines


def eval_results(metrics: dict[str, Any], cfg: Any) -> list[EvalResult]:
    """``model-index`` entries for the overall metrics of one evaluation."""
    overall = metrics.get("overall", {})
    run = metrics.get("run", {})
    data = run.get("data") or _select(cfg, "data.name") or "unknown"
    split = run.get("split") or _select(cfg, "data.eval_split")
    return [EvalResult(task_type=TASK, dataset_type=str(data), dataset_name=str(data), dataset_split=split,
                       metric_type=name, metric_name=name, metric_value=round(float(overall[name]), 4))
            for name in CARD_METRICS if isinstance(overall.get(name), (int, float))]


def _eval_lines(metrics: dict[str, Any]) -> list[str]:
    overall = metrics.get("overall", {})
    names = [n for n in CARD_METRICS if isinstance(overall.get(n), (int, float))]
    if not names:
        return []
    head = "| " + " | ".join(["rows", *names]) + " |"
    rule = "|" + "---:|" * (len(names) + 1)
    row = "| " + " | ".join([str(overall.get("count", "?")), *(f"{overall[n]:.4f}" for n in names)]) + " |"
    return ["## Evaluation", "", f"On `{metrics.get('run', {}).get('data', '?')}` "
            f"({metrics.get('run', {}).get('split', '?')} split), as `medvl.eval` computed it:", "",
            head, rule, row, ""]


def model_card(run: RunDir, *, base_model: str | None = None, merged: bool = False,
               metrics: dict[str, Any] | None = None) -> ModelCard:
    """The card of ``run``'s weights: an adapter (``merged=False``) or the model they were merged into."""
    cfg = run.config
    base = str(base_model or _select(cfg, "model.name_or_path") or run.trained_on or "unknown")
    stages = run.stages() if cfg is not None else iter([run])
    chain = list(reversed(list(stages)))  # first stage first
    data = ModelCardData(
        base_model=_hub_id(base),
        library_name="transformers" if merged else "peft",
        pipeline_tag="image-text-to-text",
        tags=["medvl", "medical", "vqa", "lora", str(_select(cfg, "model.family") or DEFAULT_FAMILY)],
        model_name=run.name,
        eval_results=(eval_results(metrics, cfg) or None) if metrics else None,
    )
    what = "A merged model (the LoRA adapter folded into the base weights)" if merged else "A LoRA adapter"
    lines = [f"# {run.name}", "",
             f"{what} for `{base}`, trained with medvl on medical visual "
             "question answering.", "",
             "## Training data and stages", "",
             "| run | stage | data | LoRA targets | saved |", "|---|---|---|---|---|",
             *(_stage_line(stage) for stage in chain), "",
             f"System prompt: {_select(cfg, 'prompt.system_prompt') or 'the chat template default'}.", "",
             "## LoRA configuration", "", *_lora_lines(run.path), ""]
    if metrics:
        lines += _eval_lines(metrics)
    lines += ["## Use", "", "```python",
              "from transformers import AutoModelForImageTextToText, AutoProcessor"]
    if merged:
        lines += ['model = AutoModelForImageTextToText.from_pretrained("<this folder>")']
    else:
        lines += ["from peft import PeftModel", "",
                  f'base = AutoModelForImageTextToText.from_pretrained("{base}")',
                  'model = PeftModel.from_pretrained(base, "<this folder>")']
    lines += ['processor = AutoProcessor.from_pretrained("<this folder>")', "```", ""]
    if len(chain) > 1 and not merged:
        lines += ["The earlier stages' weights are not in this adapter: load it with `medvl.eval +ckpt=<run dir>` "
                  "(which merges the stage chain), or use the merged model from `medvl.export`.", ""]
    return ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n" + "\n".join(lines))


def read_eval_metrics(run: RunDir) -> dict[str, Any] | None:
    """The numbers of the evaluation after training, when the run has one (``<run>/eval/metrics.json``)."""
    if run.path.name not in (ADAPTER_DIR, MODEL_DIR, "best"):
        return None  # an adapter or model folder on its own: no run directory around it
    path = run.path.parent / EVAL_METRICS
    return json.loads(path.read_text()) if path.exists() else None


def write_model_card(run: RunDir, out: Path, *, base_model: str | None = None, merged: bool = False,
                     metrics: dict[str, Any] | None = None) -> Path:
    """Write ``out/README.md`` (peft's placeholder card, if any, is replaced) and return its path."""
    path = out / "README.md"
    model_card(run, base_model=base_model, merged=merged, metrics=metrics).save(path)
    log.info("Model card: %s", path)
    return path


def write_run_card(run_dir: Path) -> Path:
    """(Re)write the card in a training run's weights folder, with the run's evaluation when it has one."""
    run = RunDir.from_ckpt(run_dir)
    return write_model_card(run, run.path, metrics=read_eval_metrics(run))
