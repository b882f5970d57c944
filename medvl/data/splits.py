"""Locate and read a data config's splits (generating the synthetic data on first use), and check at start-up
that prepared data fits the run that reads it.

``medvl.prepare`` writes ``report.json`` beside the splits: the absolute image folder, the model, pixel
budget, system prompt and ``max_length`` rows were measured with, and per split what was kept and why the
rest was rejected. Training and evaluation read it here, so that an empty split, an evaluation split that
lost rows to their length, or training rows too long for the model now in use stop the run in one line
before any weights load.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medvl.config import ConfigError
from medvl.data.format import read_jsonl

log = logging.getLogger(__name__)

#: Splits whose rows are evaluated per category; with the data config's own eval and validation splits
#: (:func:`eval_split_names`) they are also never dropped for their length.
EVAL_SPLITS = ("validation", "test")
REPORT = "report.json"


def ensure_data(data_cfg: Any) -> None:
    """Make sure the configured data exists on disk (only ``synth`` is generated)."""
    if data_cfg.format == "synth":
        from medvl.data.synth import ensure_synth

        sizes = {"train": data_cfg.num_train, "validation": data_cfg.num_validation, "test": data_cfg.num_test}
        ensure_synth(data_cfg.root, sizes, image_size=data_cfg.image_size, seed=data_cfg.seed)


def eval_split_names(data_cfg: Any) -> set[str]:
    """Splits that are scored (``validation``, ``test``, ``data.eval_split``, ``data.validation_split``),
    less the training split: their rows are kept whatever their length, since generation and
    perplexity do not truncate, and a benchmark scored on a subset would be a different benchmark."""
    names = {*EVAL_SPLITS, str(data_cfg.eval_split), str(data_cfg.validation_split)}
    return names - {str(data_cfg.train_split)}


def split_path(data_cfg: Any, split: str) -> Path:
    return Path(data_cfg.dir) / f"{split}.jsonl"


def read_report(data_cfg: Any) -> dict[str, Any] | None:
    """``<data.dir>/report.json`` as ``medvl.prepare`` wrote it, or None (synthetic or hand-made data)."""
    try:
        report = json.loads((Path(data_cfg.dir) / REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def prepare_command(data_cfg: Any, model_cfg: Any | None = None) -> str:
    root = "<dataset folder>" if OmegaConf.is_missing(data_cfg, "root") else data_cfg.root
    model = f" model={model_cfg.name}" if model_cfg is not None else ""
    return f"python -m medvl.prepare data={data_cfg.name} data.root={root} data.dir={data_cfg.dir}{model}"


def resolve_image_root(data_cfg: Any, required: bool = True) -> str | None:
    """The folder image paths are relative to: ``data.root`` when set, else the one ``medvl.prepare``
    recorded for ``data.dir`` (filled into ``data_cfg.root``), so prepared data alone is enough.
    ``required=False``: None instead of ConfigError when neither is there."""
    if not OmegaConf.is_missing(data_cfg, "root"):
        return str(data_cfg.root)
    report = read_report(data_cfg) or {}
    recorded = (report.get("data") or {}).get("root")
    if not recorded or not Path(recorded).is_absolute():
        if not required:
            return None
        where = (f"{Path(data_cfg.dir) / REPORT} does not record it" if report
                 else f"{data_cfg.dir} has no {REPORT} from medvl.prepare")
        raise ConfigError(f"data={data_cfg.name}: data.root is not set and {where}; add data.root=<the folder "
                          f"the rows' image paths are relative to>")
    data_cfg.root = recorded
    log.info("data.root=%s (recorded by medvl.prepare in %s)", recorded, Path(data_cfg.dir) / REPORT)
    return recorded


def load_split(data_cfg: Any, split: str, limit: int = 0) -> list[dict[str, Any]]:
    """Rows of ``<data.dir>/<split>.jsonl``; ``limit`` > 0 keeps the first ``limit`` rows.

    Raises:
        FileNotFoundError: the split file does not exist.
        ConfigError: the split has no rows, or it is scored and prepare dropped some of its rows for their
            length (see :func:`eval_split_names`).
    """
    ensure_data(data_cfg)
    path = split_path(data_cfg, split)
    report = read_report(data_cfg)
    summary = ((report or {}).get("splits") or {}).get(split)
    if not path.exists():
        found = f" ({Path(data_cfg.dir) / REPORT} lists no {split} split)" if report and summary is None else ""
        raise FileNotFoundError(
            f"data={data_cfg.name}: no {split} split at {path}{found}; run `{prepare_command(data_cfg)}` "
            f"first or set data.dir")
    resolve_image_root(data_cfg)
    if split in eval_split_names(data_cfg):
        _refuse_length_drops(data_cfg, split, summary)
    rows = read_jsonl(path)
    if not rows:
        raise ConfigError(f"data={data_cfg.name}: the {split} split at {path} has no rows"
                          + _rejected(data_cfg, summary))
    return rows[:limit] if limit > 0 else rows


def _rejected(data_cfg: Any, summary: dict[str, Any] | None) -> str:
    if not summary or not summary.get("rejected"):
        return ""
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(summary.get("by_reason", {}).items(),
                                                                 key=lambda kv: -kv[1]))
    return (f": prepare rejected all {summary['rejected']} ({reasons}); see {Path(data_cfg.dir) / 'rejects.jsonl'} "
            f"for each row's reason")


def _refuse_length_drops(data_cfg: Any, split: str, summary: dict[str, Any] | None) -> None:
    """Data prepared before evaluation rows were kept whatever their length lost some; scoring what is left
    would publish numbers on an unannounced subset."""
    dropped = int(((summary or {}).get("by_reason") or {}).get("too_long", 0))
    if dropped:
        raise ConfigError(
            f"data={data_cfg.name}: {dropped} of {summary['input']} {split} rows were dropped as too_long when "
            f"{data_cfg.dir} was prepared (listed in {Path(data_cfg.dir) / 'rejects.jsonl'}), so scores would "
            f"cover a subset; rerun `{prepare_command(data_cfg)}`: evaluation splits now keep every row")


def check_train_lengths(rows: list[dict[str, Any]], data_cfg: Any, model_cfg: Any, system_prompt: str | None,
                        split: str) -> list[int]:
    """Token length of every training row with this run's processor, or ConfigError when some are longer
    than the run's ``max_length`` (training refuses such a row mid-run and would not cut it).

    When ``report.json`` says the rows were measured with this model, pixel budget and system prompt and a
    ``max_length`` no larger than this run's, their recorded ``meta.n_tokens`` are used. Otherwise
    (another model, synthetic or hand-made data) every row is measured from its image header, as prepare's
    fast path does; the lengths also serve length grouping, which would measure them anyway.
    """
    from medvl.data.token_length import describe_max_length, resolve_max_length
    from medvl.models.loading import resolve_model_path

    max_length = resolve_max_length(model_cfg, data_cfg)
    model_path = resolve_model_path(model_cfg)
    report = read_report(data_cfg)
    why = _unvouched(report, model_cfg, model_path, system_prompt, max_length)
    if why is None and all(isinstance((r.get("meta") or {}).get("n_tokens"), int) for r in rows):
        lengths = [r["meta"]["n_tokens"] for r in rows]
    else:
        from medvl.data.token_length import estimate_lengths
        from medvl.models.loading import load_processor

        log.info("Measuring %d %s rows with %s (pixels %d..%d): %s", len(rows), split, model_path,
                 model_cfg.min_pixels, model_cfg.max_pixels, why or "no n_tokens in the rows")
        processor = load_processor(model_cfg, model_path)
        lengths = estimate_lengths(rows, processor, data_cfg.root, system_prompt=system_prompt)
    over = [(r.get("id"), n) for r, n in zip(rows, lengths) if n > max_length]
    log.info("max_length %d (%s); longest %s row: %d tokens", max_length, describe_max_length(model_cfg, data_cfg),
             split, max(lengths, default=0))
    if over:
        example = ", ".join(f"{row_id} ({n})" for row_id, n in over[:3])
        raise ConfigError(
            f"data={data_cfg.name}: {len(over)} of {len(rows)} {split} rows are longer than max_length={max_length} "
            f"with model={model_cfg.name} (e.g. {example} tokens; {why or 'measured now'}); rerun "
            f"`{prepare_command(data_cfg, model_cfg)}` to drop and count them, or raise data.max_length")
    return lengths


def _unvouched(report: dict[str, Any] | None, model_cfg: Any, model_path: str, system_prompt: str | None,
               max_length: int) -> str | None:
    """None when prepare's report covers this run's lengths, else why it does not."""
    if report is None:
        return f"no {REPORT} from medvl.prepare"
    model = report.get("model") or {}
    ran = {"model": model_path, "min_pixels": int(model_cfg.min_pixels), "max_pixels": int(model_cfg.max_pixels)}
    was = {"model": model.get("path"), "min_pixels": model.get("min_pixels"), "max_pixels": model.get("max_pixels")}
    differ = [f"{key} {was[key]} (now {ran[key]})" for key in ran if was[key] != ran[key]]
    if report.get("system_prompt") != system_prompt:
        differ.append("another system prompt")
    if not isinstance(report.get("max_length"), int) or report["max_length"] > max_length:
        differ.append(f"max_length {report.get('max_length')} (now {max_length})")
    return f"prepared with {', '.join(differ)}" if differ else None
