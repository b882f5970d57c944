"""Compare evaluation runs: side-by-side tables, paired bootstrap CIs and McNemar's test.

Each run is an eval directory written by ``python -m medvl.eval`` (``metrics.json``,
``predictions.jsonl`` and ``eval_fingerprint.json``). The tables come from the runs' ``metrics.json``
(overall, closed/open and every ``by_*`` breakdown: category, GMAI-MMBench's task, department,
granularity and modality, Slake's modality and content type, VQA-RAD's question type, ...); the paired
statistics come from their ``predictions.jsonl``, pairing rows by ``id`` and keeping only the ids both
runs scored. Runs evaluated on different data, or with different generation or scoring settings
(``eval_fingerprint.json``), are refused. Every function here is pure except :func:`load_runs` (reads)
and :func:`write_outputs` (writes); :func:`compare` chains them for ``python -m medvl.compare``.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
FINGERPRINT_FILE = "eval_fingerprint.json"
ANSWER_TYPE_GROUPS = ("closed", "open")
OVERALL = "overall"
#: The breakdown (table) that the closed and open groups belong to.
ANSWER_TYPE = "answer_type"
#: metrics.json keys ``by_<breakdown>`` hold ``{value: {metric: number, "count": n}}`` tables.
BREAKDOWN_PREFIX = "by_"
#: Per-sample accuracies that McNemar's test is run on (1.0 = correct; null where they do not apply:
#: closed accuracy on open rows, choice accuracy on rows without options).
MCNEMAR_METRICS = ("closed_accuracy", "choice_accuracy")
#: Below this many discordant pairs McNemar's test is the exact binomial test.
EXACT_BELOW = 25
_GLOB_CHARS = re.compile(r"[*?\[]")


class CompareError(Exception):
    """A problem with the runs given (missing path, no metrics.json, unknown name): one line for the user."""


@dataclass
class Run:
    """One evaluation run.

    Attributes:
        name: unique display name (``run.name`` from metrics.json, made unique when runs share it).
        path: the directory holding ``metrics.json``.
        metrics: the parsed ``metrics.json``.
        rows: the parsed ``predictions.jsonl`` (empty when the file is absent).
        fingerprint: the parsed ``eval_fingerprint.json`` (empty when the file is absent).
    """

    name: str
    path: Path
    metrics: dict[str, Any]
    rows: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)

    @property
    def has_predictions(self) -> bool:
        return bool(self.rows)


# --------------------------------------------------------------------------------------------
# Finding and loading runs.


def _eval_dir_of(path: Path) -> Path | None:
    """``path`` itself or its ``eval/`` subdirectory, whichever holds metrics.json."""
    for candidate in (path, path / "eval"):
        if (candidate / METRICS_FILE).is_file():
            return candidate
    return None


def _natural_key(path: Path) -> tuple[Any, ...]:
    # Sweep jobs are numbered 0, 1, ..., 10: sort "10" after "9", not after "1".
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name))


def is_sweep_dir(path: Path) -> bool:
    """A directory without metrics.json of its own whose subdirectories hold eval runs."""
    return path.is_dir() and _eval_dir_of(path) is None and bool(_sweep_jobs(path))


def _sweep_jobs(path: Path) -> list[Path]:
    children = sorted((child for child in path.iterdir() if child.is_dir()), key=_natural_key)
    return [found for child in children if (found := _eval_dir_of(child)) is not None]


def discover_eval_dirs(specs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Resolve paths, globs and sweep directories to eval directories, in the order given.

    Each spec is an eval directory (holding metrics.json), a directory whose ``eval/`` holds it,
    a multirun/sweep directory whose (numbered) subdirectories are either of those, a
    ``metrics.json`` file, or a glob matching any of these.

    Raises:
        CompareError: a spec that does not exist, matches nothing, or holds no metrics.json.
    """
    found: list[Path] = []
    for spec in specs:
        text = str(spec)
        if _GLOB_CHARS.search(text):
            matches = sorted(glob.glob(os.path.expanduser(text)), key=lambda m: _natural_key(Path(m)))
            if not matches:
                raise CompareError(f"no path matches {text!r}")
            dirs = [d for match in matches for d in _eval_dirs_at(Path(match), strict=False)]
            if not dirs:
                raise CompareError(f"no metrics.json under any path matching {text!r}")
        else:
            dirs = _eval_dirs_at(Path(text).expanduser(), strict=True)
        for d in dirs:
            if d.resolve() not in {f.resolve() for f in found}:
                found.append(d)
    return found


def _eval_dirs_at(path: Path, *, strict: bool) -> list[Path]:
    if not path.exists():
        if strict:
            raise CompareError(f"no such file or directory: {path}")
        return []
    if path.is_file():
        if path.name == METRICS_FILE:
            return [path.parent]
        if strict:
            raise CompareError(f"{path} is a file, not an eval directory or {METRICS_FILE}")
        return []
    if (eval_dir := _eval_dir_of(path)) is not None:
        return [eval_dir]
    jobs = _sweep_jobs(path)
    if not jobs and strict:
        raise CompareError(f"{path} holds no {METRICS_FILE} (nor eval/{METRICS_FILE}, nor sweep jobs with one)")
    return jobs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CompareError(f"cannot read {path}: {error}") from None
    if not isinstance(data, dict):
        raise CompareError(f"{path} is not a JSON object")
    return data


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CompareError(f"{path}:{number}: not JSON ({error})") from None
                if not isinstance(row, dict):
                    raise CompareError(f"{path}:{number}: not a JSON object")
                rows.append(row)
    except (OSError, UnicodeDecodeError) as error:
        raise CompareError(f"cannot read {path}: {error}") from None
    return rows


def _base_name(metrics: Mapping[str, Any], path: Path) -> str:
    run = metrics.get("run")
    name = run.get("name") if isinstance(run, Mapping) else None
    if isinstance(name, str) and name.strip():
        return name.strip()
    return (path.parent if path.name == "eval" else path).name or str(path)


def unique_names(names: Sequence[str], paths: Sequence[Path]) -> list[str]:
    """Names made unique by suffixing shared ones with their path below the runs' common directory.

    >>> unique_names(["a", "a", "b"], [Path("s/0/eval"), Path("s/1/eval"), Path("s/2/eval")])
    ['a@0', 'a@1', 'b']
    """
    if len(set(names)) == len(names):
        return list(names)
    resolved = [p.resolve() for p in paths]
    common = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0].parent
    out = []
    for name, path in zip(names, resolved):
        if names.count(name) == 1:
            out.append(name)
            continue
        rel = path.relative_to(common) if path != common else Path(path.name)
        if rel.name == "eval" and rel.parent != Path("."):
            rel = rel.parent
        out.append(f"{name}@{rel.as_posix()}")
    # Identical paths cannot reach here (discover_eval_dirs drops duplicates), but stay unique anyway.
    seen: dict[str, int] = {}
    for index, name in enumerate(out):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            out[index] = f"{name}#{seen[name]}"
    return out


def load_runs(specs: Sequence[str | os.PathLike[str]]) -> list[Run]:
    """Load every eval run that ``specs`` name (see :func:`discover_eval_dirs`).

    Raises:
        CompareError: a spec is missing or holds no metrics.json, or a file is not valid JSON.
    """
    dirs = discover_eval_dirs(specs)
    if not dirs:
        raise CompareError("no eval directories given")
    loaded = []
    for d in dirs:
        metrics = _read_json(d / METRICS_FILE)
        predictions = d / PREDICTIONS_FILE
        rows = _read_jsonl(predictions) if predictions.is_file() else []
        fingerprint = _read_json(d / FINGERPRINT_FILE) if (d / FINGERPRINT_FILE).is_file() else {}
        loaded.append((d, metrics, rows, fingerprint))
    names = unique_names([_base_name(m, d) for d, m, _, _ in loaded], [d for d, _, _, _ in loaded])
    return [Run(name, d, m, rows, fp) for name, (d, m, rows, fp) in zip(names, loaded)]


def check_same_data(runs: Sequence[Run]) -> None:
    """Refuse runs evaluated on different data or splits (as recorded in metrics.json ``run``).

    Side-by-side bold "best" values and paired tests are meaningless across datasets, and ids may
    coincide by accident (own LLaVA-format data numbered 0, 1, ...). Runs that do not record their
    data are not checked.

    Raises:
        CompareError: two runs name different ``data`` or ``split``.
    """
    recorded = []
    for run in runs:
        meta = run.metrics.get("run")
        if isinstance(meta, Mapping) and meta.get("data"):
            recorded.append((run.name, str(meta["data"]), str(meta["split"]) if meta.get("split") else None))
    datasets = {data for _, data, _ in recorded}
    splits = {split for _, _, split in recorded if split is not None}
    if len(datasets) > 1 or len(splits) > 1:
        parts = ", ".join(f"{name}: {data}" + (f"/{split}" if split else "") for name, data, split in recorded)
        raise CompareError(f"runs were evaluated on different data ({parts}); compare runs of one dataset and split")


#: Evaluation settings and where eval_fingerprint.json (``fingerprint``) or metrics.json (``run``) record
#: them, first found wins (older eval dirs kept max_new_tokens and system_prompt at the fingerprint's top).
SETTING_SOURCES: dict[str, tuple[tuple[str, ...], ...]] = {
    "max_new_tokens": (("fingerprint", "generation", "max_new_tokens"), ("fingerprint", "max_new_tokens")),
    "do_sample": (("fingerprint", "generation", "do_sample"),),
    "num_beams": (("fingerprint", "generation", "num_beams"),),
    "bertscore": (("fingerprint", "scoring", "bertscore"),),
    "prompt": (("fingerprint", "prompt", "name"), ("run", "prompt")),
    "system_prompt": (("fingerprint", "prompt", "system_prompt"), ("fingerprint", "system_prompt"),
                      ("run", "system_prompt")),
}
#: Settings under which the same model scores differently (answers cut at another length or decoded
#: otherwise, the same answers scored by another BERTScore model): a difference in the tables would measure
#: the settings, not the models. Refused unless ``allow_mixed_settings``, then marked. The other settings
#: (the prompt) are marked, never refused: the prompt is often what is compared (a prompt ablation, a sweep
#: over ``prompt=...``).
STRICT_SETTINGS = ("max_new_tokens", "do_sample", "num_beams", "bertscore")
NOT_RECORDED = "not recorded"
#: The BERTScore settings of a run without BERTScore scores do not matter.
NOT_SCORED = "not scored"
_UNKNOWN = (NOT_RECORDED, NOT_SCORED)
_ABSENT = object()


def eval_settings(run: Run) -> dict[str, Any]:
    """``{setting: value}`` of :data:`SETTING_SOURCES` the run records (absent ones are left out)."""
    document = {"fingerprint": run.fingerprint, "run": run.metrics.get("run")}
    out = {}
    for setting, sources in SETTING_SOURCES.items():
        for path in sources:
            node: Any = document
            for key in path:
                node = node.get(key, _ABSENT) if isinstance(node, Mapping) else _ABSENT
            if node is not _ABSENT:
                out[setting] = node
                break
    overall = run.metrics.get(OVERALL)
    if not (isinstance(overall, Mapping) and "bertscore_f1" in overall):
        out["bertscore"] = NOT_SCORED
    return out


def _setting_text(value: Any) -> str:
    if value is _ABSENT:
        return NOT_RECORDED
    if isinstance(value, Mapping):
        # An option added later at its default (null) is the setting as it was before the option existed.
        value = {key: v for key, v in value.items() if v is not None}
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, ensure_ascii=False)


def differing_settings(runs: Sequence[Run]) -> dict[str, dict[str, str]]:
    """``{setting: {run name: value as text}}`` for each evaluation setting the runs do not share.

    A run that does not record a setting (an eval dir from an older medvl) shows ``not recorded``.
    """
    settings = [eval_settings(run) for run in runs]
    out = {}
    for setting in SETTING_SOURCES:
        texts = {run.name: _setting_text(recorded.get(setting, _ABSENT)) for run, recorded in zip(runs, settings)}
        if len(set(texts.values())) > 1:
            out[setting] = texts
    return out


def check_same_settings(runs: Sequence[Run], *, allow_mixed: bool = False) -> dict[str, dict[str, str]]:
    """Refuse runs evaluated with different :data:`STRICT_SETTINGS`; return every setting that differs.

    Runs that do not record a setting are not refused for it (it is marked ``not recorded``), as
    :func:`check_same_data` does with unrecorded data; nor are runs without BERTScore scores for
    their BERTScore settings (``not scored``).

    Raises:
        CompareError: two runs record different values of a strict setting and ``allow_mixed`` is false.
    """
    differ = differing_settings(runs)
    refused = {s: differ[s] for s in mixed_strict_settings(differ)}
    if refused and not allow_mixed:
        parts = "; ".join(f"{s}: " + ", ".join(f"{name}={text}" for name, text in v.items())
                          for s, v in refused.items())
        raise CompareError(f"runs were evaluated with different settings ({parts}); evaluate them alike, or pass "
                           "--allow-mixed-settings to compare them with the differences marked")
    return differ


def mixed_strict_settings(differ: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The strict settings that two runs of ``differ`` record with different values (the ones only
    ``--allow-mixed-settings`` lets through)."""
    return [s for s, texts in differ.items() if s in STRICT_SETTINGS
            and len({text for text in texts.values() if text not in _UNKNOWN}) > 1]


def default_out_dir(
    specs: Sequence[str | os.PathLike[str]],
    runs: Sequence[Run],
    *,
    cwd: Path | None = None,
    now: datetime | None = None,
) -> Path:
    """Where results go when ``--out`` is not given.

    The sweep directory when the only spec is one; otherwise the runs' common parent directory,
    unless that is the filesystem root, the home directory, or the working directory or one of its
    ancestors (a shared parent that general would litter a repository or home directory); then
    ``outputs/compare/<timestamp with microseconds>`` under the working directory.
    """
    cwd = (cwd or Path.cwd()).resolve()
    if len(specs) == 1 and not _GLOB_CHARS.search(str(specs[0])):
        only = Path(specs[0]).expanduser()
        if is_sweep_dir(only):
            return only
    resolved = [run.path.resolve() for run in runs]
    common = Path(os.path.commonpath(resolved))
    if common in resolved:  # one run, or one run nested inside another: never write into an eval dir
        common = common.parent
    too_general = common == Path(common.anchor) or common == Path.home().resolve() or common in (cwd, *cwd.parents)
    if not too_general:
        return common
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S_%f")
    return cwd / "outputs" / "compare" / stamp


def select_reference(runs: Sequence[Run], reference: str | int | None) -> int:
    """Index of the reference run: a run name, else a 0-based index; the first run by default.

    Raises:
        CompareError: ``reference`` names no run and is no valid index.
    """
    if reference is None:
        return 0
    names = [run.name for run in runs]
    if str(reference) in names:
        return names.index(str(reference))
    try:
        index = int(reference)
    except (TypeError, ValueError):
        index = None
    if index is not None and -len(runs) <= index < len(runs):
        return index % len(runs)
    raise CompareError(f"reference {reference!r} is neither a run name nor an index 0..{len(runs) - 1}; runs: {names}")


# --------------------------------------------------------------------------------------------
# Direction of metrics.


#: A CI bound within this of 0 is 0 (float round-off of identical corpus statistics, shown as +0.0000).
_ZERO = 1e-12


def _default_higher_is_better(metric: str) -> bool:
    lowered = metric.lower()
    return not any(word in lowered for word in ("perplexity", "loss", "nll"))


def metric_directions(
    metrics: Sequence[str], higher_is_better: Mapping[str, bool] | None = None
) -> dict[str, bool]:
    """``{metric: higher_is_better}``: from ``higher_is_better``, else the metric registry, else by name.

    Names absent from the registry are higher-is-better unless they mention perplexity or loss.
    """
    registry: Mapping[str, Any]
    try:  # lazily, and optional: comparing finished runs must not depend on the scorers importing
        from medvl.evaluation.metrics import METRICS as registry
    except Exception:
        registry = {}
    explicit = dict(higher_is_better or {})
    out = {}
    for metric in metrics:
        if metric in explicit:
            out[metric] = bool(explicit[metric])
        elif metric in registry and hasattr(registry[metric], "higher_is_better"):
            out[metric] = bool(registry[metric].higher_is_better)
        else:
            out[metric] = _default_higher_is_better(metric)
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------------------------
# Tables.


def groups_of(metrics: Mapping[str, Any]) -> list[tuple[str, str, Mapping[str, Any]]]:
    """``[(breakdown, group, {metric: value, "count": n})]`` of one metrics.json.

    ``("overall", "overall")``, ``("answer_type", "closed" | "open")``, then one entry per value of
    every ``by_<breakdown>`` table in file order: ``("category", "closed_yes_no")``,
    ``("task", "Disease Diagnosis")``, ``("question_type", "ABN")``, ...
    """
    out = []
    if isinstance(metrics.get(OVERALL), Mapping):
        out.append((OVERALL, OVERALL, metrics[OVERALL]))
    for group in ANSWER_TYPE_GROUPS:
        if isinstance(metrics.get(group), Mapping):
            out.append((ANSWER_TYPE, group, metrics[group]))
    for key, table in metrics.items():
        if key.startswith(BREAKDOWN_PREFIX) and isinstance(table, Mapping):
            breakdown = key.removeprefix(BREAKDOWN_PREFIX)
            out.extend((breakdown, str(value), values) for value, values in table.items()
                       if isinstance(values, Mapping))
    return out


def available_metrics(runs: Sequence[Run]) -> list[str]:
    """Numeric metric names in the runs' metrics.json groups, in first-seen order (``count`` excluded)."""
    names: dict[str, None] = {}
    for run in runs:
        for _, _, values in groups_of(run.metrics):
            for key, value in values.items():
                if key != "count" and _is_number(value):
                    names.setdefault(key, None)
    return list(names)


def comparison_table(runs: Sequence[Run], metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Tidy records ``{"run", "breakdown", "group", "metric", "value", "count"}`` of every run's metrics.json.

    ``breakdown`` and ``group`` are as :func:`groups_of` gives them (``overall``/``overall``,
    ``answer_type``/``closed``, ``category``/``closed_yes_no``, ``task``/``Disease Diagnosis``, ...);
    ``value`` is None where a run lacks the metric for that group; ``count`` is the group's number of
    rows in that run. Breakdowns and their groups come in first-seen order (overall, closed, open,
    then metrics.json's ``by_*`` tables); metrics in ``metrics`` order (all numeric ones by default).
    """
    metrics = list(metrics) if metrics is not None else available_metrics(runs)
    order: dict[tuple[str, str], None] = {}
    for run in runs:
        for breakdown, group, _ in groups_of(run.metrics):
            order.setdefault((breakdown, group), None)
    # Grouped by breakdown, so that a breakdown only some runs have still reads as one table.
    breakdowns = list(dict.fromkeys(breakdown for breakdown, _ in order))
    keys = [key for breakdown in breakdowns for key in order if key[0] == breakdown]
    run_groups = [{(b, g): values for b, g, values in groups_of(run.metrics)} for run in runs]
    records = []
    for key in keys:
        for run, groups in zip(runs, run_groups):
            values = groups.get(key)
            if values is None:
                continue
            count = values.get("count")
            for metric in metrics:
                value = values.get(metric)
                records.append({
                    "run": run.name,
                    "breakdown": key[0],
                    "group": key[1],
                    "metric": metric,
                    "value": float(value) if _is_number(value) else None,
                    "count": int(count) if _is_number(count) else None,
                })
    return records


def best_runs(values: Mapping[str, float | None], higher_is_better: bool) -> list[str]:
    """Runs holding the best value (all of them on a tie); none when fewer than two values differ.

    >>> best_runs({"a": 0.5, "b": 0.7, "c": None}, higher_is_better=True)
    ['b']
    >>> best_runs({"a": 3.0, "b": 2.0}, higher_is_better=False)
    ['b']
    >>> best_runs({"a": 0.0, "b": 0.0}, higher_is_better=True)
    []
    """
    present = {run: v for run, v in values.items() if v is not None}
    if len(present) < 2 or len(set(present.values())) == 1:
        return []
    best = max(present.values()) if higher_is_better else min(present.values())
    return [run for run, v in present.items() if math.isclose(v, best, rel_tol=1e-12, abs_tol=0.0)]


Key = tuple[str, str]  # (breakdown, group)


def pivot(table: Sequence[Mapping[str, Any]]) -> dict[Key, dict[str, dict[str, Any]]]:
    """``{(breakdown, group): {metric: {run: value}, "count": {run: count}}}`` from tidy records, order kept."""
    out: dict[Key, dict[str, dict[str, Any]]] = {}
    for record in table:
        group = out.setdefault((record["breakdown"], record["group"]), {})
        group.setdefault(record["metric"], {})[record["run"]] = record["value"]
        group.setdefault("count", {})[record["run"]] = record["count"]
    for group in out.values():  # "count" last
        group["count"] = group.pop("count")
    return out


def best_cells(
    table: Sequence[Mapping[str, Any]], directions: Mapping[str, bool]
) -> dict[str, dict[str, dict[str, list[str]]]]:
    """``{breakdown: {group: {metric: [best runs]}}}`` for every row of the comparison tables."""
    out: dict[str, dict[str, dict[str, list[str]]]] = {}
    for (breakdown, group), rows in pivot(table).items():
        for metric, values in rows.items():
            if metric != "count":
                out.setdefault(breakdown, {}).setdefault(group, {})[metric] = best_runs(
                    values, directions.get(metric, True))
    return out


def is_best(best: Mapping[str, Mapping[str, Mapping[str, Sequence[str]]]], record: Mapping[str, Any]) -> bool:
    """Whether a tidy record holds the best value of its row (as bold in the markdown tables)."""
    return record["run"] in best.get(record["breakdown"], {}).get(record["group"], {}).get(record["metric"], ())


def _shown(rows: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """A group's rows to display: metrics no run has for the group are left out; counts stay."""
    return [(m, values) for m, values in rows.items() if m == "count" or any(v is not None for v in values.values())]


def format_value(value: float | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _arrow(higher_is_better: bool) -> str:
    return "↑" if higher_is_better else "↓"


def _markdown_rows(
    label_columns: list[str],
    rows: list[tuple[list[str], Mapping[str, Any], list[str]]],
    run_names: Sequence[str],
) -> list[str]:
    header = [*label_columns, *run_names]
    lines = [
        "| " + " | ".join(_md_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in label_columns) + "|" + "|".join("---:" for _ in run_names) + "|",
    ]
    for labels, values, bold in rows:
        cells = []
        for run in run_names:
            text = format_value(values.get(run))
            cells.append(f"**{text}**" if run in bold else text)
        lines.append("| " + " | ".join([*(_md_cell(label) for label in labels), *cells]) + " |")
    return lines


def _breakdown_title(breakdown: str) -> str:
    """``answer_type`` -> ``Answer type``, ``content_type`` -> ``Content type``."""
    return breakdown.replace("_", " ").capitalize()


def render_settings(differ: Mapping[str, Mapping[str, str]], run_names: Sequence[str]) -> list[str]:
    """Markdown lines marking the evaluation settings the runs do not share (none when they share all)."""
    if not differ:
        return []
    mixed = mixed_strict_settings(differ)
    lines = ["## Evaluation settings that differ", ""]
    if mixed:
        lines += [f"**Warning: the runs were not evaluated alike ({', '.join(mixed)}); differences in the tables "
                  "below measure these settings as well as the models.**", ""]
    lines += ["| Setting | " + " | ".join(_md_cell(n) for n in run_names) + " |",
              "|---|" + "---|" * len(run_names)]
    for setting, texts in differ.items():
        lines.append(f"| {setting} | " + " | ".join(_md_cell(str(texts.get(n, NOT_RECORDED))) for n in run_names)
                     + " |")
    return [*lines, ""]


def render_markdown(
    table: Sequence[Mapping[str, Any]],
    run_names: Sequence[str],
    directions: Mapping[str, bool],
    *,
    runs: Sequence[Run] = (),
    differ: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """Markdown tables, one column per run, best value of each row in bold.

    An overall table (rows: metrics), a closed/open table and one table per breakdown (category,
    task, department, modality, ...; rows: group x metric), each with the groups' row counts.
    ``runs``, when given, adds a legend of paths; ``differ`` (:func:`differing_settings`) a section
    marking the evaluation settings the runs do not share.
    """
    pivoted = pivot(table)
    best = best_cells(table, directions)
    lines = ["# Model comparison", ""]
    if runs:
        for run in runs:
            meta = run.metrics.get("run") if isinstance(run.metrics.get("run"), Mapping) else {}
            details = ", ".join(f"{key}={meta[key]}" for key in ("model", "ckpt", "data", "prompt") if meta.get(key))
            lines.append(f"- **{_md_cell(run.name)}**: `{run.path}`" + (f" ({_md_cell(details)})" if details else ""))
        lines.append("")
    lines += render_settings(differ or {}, run_names)
    lines += ["↑ higher is better, ↓ lower is better; the best value of each row is in **bold** (ties: all, "
              "all equal: none).", ""]

    def group_rows(key: Key, with_group: bool) -> list[tuple[list[str], Mapping[str, Any], list[str]]]:
        rows = []
        for metric, values in _shown(pivoted[key]):
            label = "count" if metric == "count" else f"{metric} {_arrow(directions.get(metric, True))}"
            bold = [] if metric == "count" else best[key[0]][key[1]].get(metric, [])
            rows.append(([key[1], label] if with_group else [label], values, bold))
        return rows

    breakdowns = list(dict.fromkeys(breakdown for breakdown, _ in pivoted))
    for breakdown in breakdowns:
        keys = [key for key in pivoted if key[0] == breakdown]
        if breakdown == OVERALL:
            lines += ["## Overall", "", *_markdown_rows(["Metric"], group_rows(keys[0], False), run_names), ""]
            continue
        title = "Closed / open" if breakdown == ANSWER_TYPE else f"By {_breakdown_title(breakdown).lower()}"
        rows = [row for key in keys for row in group_rows(key, True)]
        lines += [f"## {title}", "", *_markdown_rows([_breakdown_title(breakdown), "Metric"], rows, run_names), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Paired statistics.


def bootstrap_ci(
    reference: Sequence[float],
    other: Sequence[float],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | int | None]:
    """Paired bootstrap percentile CI of ``mean(other) - mean(reference)``.

    ``reference[i]`` and ``other[i]`` are the two runs' scores on the same item; items are
    resampled with replacement ``n_boot`` times with ``numpy.random.default_rng(seed)``.

    Returns:
        ``{"n", "reference_mean", "other_mean", "diff", "low", "high"}``; means and bounds are None
        when there are no pairs.
    """
    a = np.asarray(reference, dtype=float)
    b = np.asarray(other, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired scores must be two 1-d sequences of equal length, got {a.shape} and {b.shape}")
    _check_bootstrap(n_boot, confidence)
    n = int(a.size)
    if n == 0:
        return dict(_NO_PAIRS)
    deltas = b - a
    low, high = _percentile_ci(n, lambda index: deltas[index].mean(axis=1), n_boot=n_boot, seed=seed,
                               confidence=confidence)
    return {"n": n, "reference_mean": float(a.mean()), "other_mean": float(b.mean()), "diff": float(deltas.mean()),
            "low": low, "high": high}


_NO_PAIRS = {"n": 0, "reference_mean": None, "other_mean": None, "diff": None, "low": None, "high": None}


def _check_bootstrap(n_boot: int, confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")


def _percentile_ci(n: int, diff_of: Any, *, n_boot: int, seed: int, confidence: float) -> tuple[float, float]:
    """Percentile CI of ``diff_of(index)`` over ``n_boot`` resamples of ``n`` paired items.

    ``diff_of`` gets a ``(resamples, n)`` matrix of item indices, drawn with replacement by
    ``numpy.random.default_rng(seed)``, and returns one difference per resample.
    """
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    chunk = max(1, 4_000_000 // n)  # bound the (chunk x n) index matrix to ~32 MB
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        diffs[start:stop] = diff_of(rng.integers(0, n, size=(stop - start, n)))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(diffs, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar(reference_correct: Sequence[bool], other_correct: Sequence[bool]) -> dict[str, Any]:
    """McNemar's test of paired correctness.

    ``b`` counts items the reference got right and the other run wrong, ``c`` the reverse. With
    fewer than 25 discordant pairs it is the exact two-sided binomial test of ``b`` in ``b + c``
    trials at p = 0.5 (statistic: ``min(b, c)``); otherwise the chi-square test with continuity
    correction, ``(|b - c| - 1)^2 / (b + c)`` on 1 degree of freedom. No discordant pairs: p = 1.

    Returns:
        ``{"n", "b", "c", "method", "statistic", "p_value"}``.
    """
    from scipy import stats  # scipy.stats takes ~0.5 s to import; only needed here

    ref = [bool(x) for x in reference_correct]
    oth = [bool(x) for x in other_correct]
    if len(ref) != len(oth):
        raise ValueError(f"{len(ref)} reference outcomes but {len(oth)} other outcomes")
    b = sum(r and not o for r, o in zip(ref, oth))
    c = sum(o and not r for r, o in zip(ref, oth))
    discordant = b + c
    if discordant < EXACT_BELOW:
        method = "exact"
        statistic = float(min(b, c))
        p_value = 1.0 if discordant == 0 else float(stats.binomtest(b, discordant, 0.5).pvalue)
    else:
        method = "chi2"
        statistic = (abs(b - c) - 1) ** 2 / discordant
        p_value = float(stats.chi2.sf(statistic, df=1))
    return {"n": len(ref), "b": b, "c": c, "method": method, "statistic": float(statistic),
            "p_value": min(1.0, p_value)}


#: Metrics whose table value is a corpus statistic that the paired bootstrap recomputes on each
#: resample from per-row sufficient statistics (not the mean of per-sample scores).
CORPUS_STATISTICS = ("bleu4", "perplexity")
#: Corpus metrics whose statistic cannot be recomputed from what predictions.jsonl holds: METEOR's
#: corpus score pools fragmentation statistics inside the Java scorer. No CI rather than the CI of
#: a different quantity (the mean of sentence METEOR) beside the corpus value in the tables.
NO_BOOTSTRAP = {"meteor": "corpus METEOR pools statistics inside the Java scorer; no resampled CI"}
_BLEU_N = 4


def _bleu_stats(prediction: object, reference: object) -> list[float]:
    """[pred length, ref length, guess_1..4, correct_1..4] as pycocoevalcap's BleuScorer counts them.

    Texts are tokenized as ``medvl.evaluation.metrics.bleu4`` tokenizes them (normalized words), and
    with one reference, ``closest`` reference length is that reference's length.
    """
    from pycocoevalcap.bleu.bleu_scorer import cook_refs, cook_test

    from medvl.evaluation.normalize import words

    hyp, ref = " ".join(words(prediction)), " ".join(words(reference))
    comps = cook_test(hyp, cook_refs([ref], n=_BLEU_N), eff="closest", n=_BLEU_N)
    return [comps["testlen"], comps["reflen"], *comps["guess"], *comps["correct"]]


def _bleu_from_stats(totals: np.ndarray) -> np.ndarray:
    """Corpus BLEU-4 from summed :func:`_bleu_stats` (last axis), exactly as BleuScorer.compute_score."""
    small, tiny = 1e-9, 1e-15
    testlen, reflen = totals[..., 0], totals[..., 1]
    guess, correct = totals[..., 2 : 2 + _BLEU_N], totals[..., 2 + _BLEU_N :]
    bleu = np.prod((correct + tiny) / (guess + small), axis=-1) ** (1.0 / _BLEU_N)
    ratio = (testlen + tiny) / (reflen + small)
    penalty = np.where(ratio < 1, np.exp(1 - 1 / np.minimum(ratio, 1)), 1.0)
    # medvl's bleu4 scores a corpus with no words on either side as 0 (CiderScorer-style guard).
    return np.where((testlen > 0) & (reflen > 0), bleu * penalty, 0.0)


def _perplexity_from_stats(totals: np.ndarray) -> np.ndarray:
    """Corpus perplexity exp(total NLL / total tokens) from summed (nll, n_tokens)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.exp(totals[..., 0] / totals[..., 1])


def corpus_stats(run: Run, metric: str) -> dict[str, list[float]]:
    """``{id: sufficient statistics}`` of a :data:`CORPUS_STATISTICS` metric for each usable row."""
    out = {}
    for row in run.rows:
        if "id" not in row:
            continue
        if metric == "bleu4":
            if "prediction" in row and "reference" in row:
                out[str(row["id"])] = _bleu_stats(row["prediction"], row["reference"])
        elif metric == "perplexity":
            nll, n = row.get("nll"), row.get("n_tokens")
            if _is_number(nll) and _is_number(n) and n > 0:
                out[str(row["id"])] = [float(nll), float(n)]
    return out


_STATISTIC = {"bleu4": _bleu_from_stats, "perplexity": _perplexity_from_stats}


def bootstrap_corpus_ci(
    reference: Sequence[Sequence[float]],
    other: Sequence[Sequence[float]],
    statistic: Any,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, float | int | None]:
    """Paired bootstrap percentile CI of ``statistic(sum(other)) - statistic(sum(reference))``.

    ``reference[i]`` and ``other[i]`` are the two runs' sufficient statistics on the same item (a
    corpus statistic of summed per-item counts, such as BLEU or corpus perplexity); each resample
    draws items with replacement and recomputes the statistic of both runs on the same draw.
    """
    a = np.asarray(reference, dtype=float)
    b = np.asarray(other, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"paired statistics must be two (n, k) arrays of equal shape, got {a.shape} and {b.shape}")
    _check_bootstrap(n_boot, confidence)
    n = int(a.shape[0])
    if n == 0:
        return dict(_NO_PAIRS)
    ref_value, other_value = float(statistic(a.sum(axis=0))), float(statistic(b.sum(axis=0)))
    low, high = _percentile_ci(
        n, lambda index: statistic(b[index].sum(axis=1)) - statistic(a[index].sum(axis=1)),
        n_boot=n_boot, seed=seed, confidence=confidence,
    )
    return {"n": n, "reference_mean": ref_value, "other_mean": other_value, "diff": other_value - ref_value,
            "low": low, "high": high}


def sample_scores(run: Run, metric: str) -> dict[str, float]:
    """``{id: score}`` of one per-sample metric (``perplexity`` reads the row's own field)."""
    out = {}
    for row in run.rows:
        if "id" not in row:
            continue
        if metric == "perplexity" and "perplexity" in row:
            value = row.get("perplexity")
        else:
            value = (row.get("metrics") or {}).get(metric)
        if _is_number(value):
            out[str(row["id"])] = float(value)
    return out


def sample_metrics(runs: Sequence[Run]) -> list[str]:
    """Per-sample metric names found in the runs' predictions, first-seen order."""
    names: dict[str, None] = {}
    for run in runs:
        for row in run.rows:
            for key, value in (row.get("metrics") or {}).items():
                if _is_number(value):
                    names.setdefault(key, None)
            if _is_number(row.get("perplexity")):
                names.setdefault("perplexity", None)
    return list(names)


def _ids(run: Run) -> list[str]:
    return list(dict.fromkeys(str(row["id"]) for row in run.rows if "id" in row))


def pairwise_significance(
    reference: Run,
    other: Run,
    *,
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Bootstrap CIs of each per-sample metric's difference and McNemar on closed and multiple-choice accuracy.

    Rows are paired by id; a metric's pairs are the shared ids where both runs have a value.
    McNemar's test runs on each of :data:`MCNEMAR_METRICS` that ``metrics`` selects (all by default)
    and both runs score on some shared id.

    Returns:
        ``{"reference", "run", "n_reference", "n_run", "n_common", "bootstrap": {metric: ...},
        "mcnemar": {metric: ...}, "note": str | None, "skipped": {metric: why}}``; ``note`` says why
        statistics are missing (no predictions, or no ids in common). BLEU-4 and perplexity are
        resampled as corpus statistics (see :data:`CORPUS_STATISTICS`), METEOR is skipped.
    """
    ref_ids, other_ids = _ids(reference), _ids(other)
    other_set = set(other_ids)
    common = [i for i in ref_ids if i in other_set]
    result: dict[str, Any] = {
        "reference": reference.name,
        "run": other.name,
        "n_reference": len(ref_ids),
        "n_run": len(other_ids),
        "n_common": len(common),
        "bootstrap": {},
        "mcnemar": {},
        "note": None,
        "skipped": {},
    }
    missing = [run.name for run in (reference, other) if not run.has_predictions]
    if missing:
        result["note"] = f"no {PREDICTIONS_FILE} (or no rows) for {', '.join(missing)}: no paired statistics"
        return result
    if not common:
        result["note"] = (
            f"no ids in common ({len(ref_ids)} ids in {reference.name}, {len(other_ids)} in {other.name}; "
            "were they evaluated on different data?): no paired statistics"
        )
        return result
    names = list(metrics) if metrics is not None else sample_metrics([reference, other])
    for metric in names:
        if metric in NO_BOOTSTRAP:
            result["skipped"][metric] = NO_BOOTSTRAP[metric]
            continue
        if metric in CORPUS_STATISTICS:
            ref_stats, other_stats = corpus_stats(reference, metric), corpus_stats(other, metric)
            ids = [i for i in common if i in ref_stats and i in other_stats]
            if ids:
                result["bootstrap"][metric] = bootstrap_corpus_ci(
                    [ref_stats[i] for i in ids], [other_stats[i] for i in ids], _STATISTIC[metric],
                    n_boot=n_boot, seed=seed, confidence=confidence,
                )
            continue
        ref_scores, other_scores = sample_scores(reference, metric), sample_scores(other, metric)
        ids = [i for i in common if i in ref_scores and i in other_scores]
        if not ids:
            continue
        result["bootstrap"][metric] = bootstrap_ci(
            [ref_scores[i] for i in ids], [other_scores[i] for i in ids],
            n_boot=n_boot, seed=seed, confidence=confidence,
        )
    for metric in MCNEMAR_METRICS:
        if metrics is not None and metric not in metrics:
            continue
        ref_acc, other_acc = sample_scores(reference, metric), sample_scores(other, metric)
        ids = [i for i in common if i in ref_acc and i in other_acc]
        if ids:
            result["mcnemar"][metric] = mcnemar([ref_acc[i] >= 0.5 for i in ids], [other_acc[i] >= 0.5 for i in ids])
    return result


def significance(
    runs: Sequence[Run],
    reference_index: int = 0,
    *,
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """:func:`pairwise_significance` of every run against ``runs[reference_index]``."""
    reference = runs[reference_index]
    return [
        pairwise_significance(reference, run, metrics=metrics, n_boot=n_boot, seed=seed, confidence=confidence)
        for index, run in enumerate(runs)
        if index != reference_index
    ]


def _format_p(p: float) -> str:
    return f"{p:.2e}" if p < 1e-4 else f"{p:.4f}"


def render_significance(
    results: Sequence[Mapping[str, Any]],
    directions: Mapping[str, bool],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    mixed_settings: Sequence[str] = (),
) -> str:
    """Markdown report of :func:`significance` results; ``mixed_settings`` adds a warning that they differ."""
    level = f"{confidence:.0%}"
    lines = ["# Significance", ""]
    if not results:
        return "\n".join([*lines, "Only one run: nothing to compare.", ""])
    lines += [
        f"Reference: **{_md_cell(results[0]['reference'])}**. Differences are run − reference, paired by id over "
        f"the ids both runs scored (and where both have the metric). {level} CIs: percentile paired bootstrap, "
        f"{n_boot} resamples of ids, seed {seed}. BLEU-4 and perplexity are corpus statistics: each resample "
        "recomputes corpus BLEU-4 from the rows' summed n-gram counts and lengths, and exp(total NLL / total "
        "tokens), so reference and run are the corpus values over the common ids. CIDEr is the mean of "
        "per-sample CIDEr with document frequencies of each run's whole evaluation set (which is how the "
        "corpus CIDEr is defined). METEOR has no CI: its corpus score pools statistics inside the Java "
        f"scorer. * marks a CI that excludes 0. McNemar on {' and '.join(MCNEMAR_METRICS)} (the rows each "
        "applies to): b = reference right & run wrong, c = reference wrong & run right; exact binomial test "
        f"when b + c < {EXACT_BELOW}, else chi-square with continuity correction.",
        "",
    ]
    if mixed_settings:
        lines += [f"**Warning: the runs were not evaluated alike ({', '.join(mixed_settings)}); these tests measure "
                  "the settings as well as the models.**", ""]
    for result in results:
        lines += [f"## {_md_cell(result['run'])} vs {_md_cell(result['reference'])}", ""]
        lines.append(
            f"ids: {result['n_common']} in common; {result['n_reference'] - result['n_common']} only in the reference, "
            f"{result['n_run'] - result['n_common']} only in this run."
        )
        lines.append("")
        if result["note"]:
            lines += [f"**{_md_cell(result['note'])}**", ""]
            continue
        if result["mcnemar"]:
            lines += ["| McNemar | n | b | c | method | statistic | p-value |", "|---|---:|---:|---:|---|---:|---:|"]
            for metric, m in result["mcnemar"].items():
                lines.append(f"| {metric} | {m['n']} | {m['b']} | {m['c']} | {m['method']} | {m['statistic']:.4f} | "
                             f"{_format_p(m['p_value'])} |")
            lines.append("")
        if result["bootstrap"]:
            lines += [
                f"| Metric | n | reference | run | diff | {level} CI |",
                "|---|---:|---:|---:|---:|---|",
            ]
            for metric, ci in result["bootstrap"].items():
                star = " *" if ci["low"] > _ZERO or ci["high"] < -_ZERO else ""
                lines.append(
                    f"| {_md_cell(metric)} {_arrow(directions.get(metric, True))} | {ci['n']} | "
                    f"{ci['reference_mean']:.4f} | {ci['other_mean']:.4f} | {ci['diff']:+.4f} | "
                    f"[{ci['low']:+.4f}, {ci['high']:+.4f}]{star} |"
                )
            lines.append("")
        for metric, why in (result.get("skipped") or {}).items():
            lines += [f"{_md_cell(metric)}: {_md_cell(why)}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Writing and showing.


def write_outputs(
    out_dir: Path,
    runs: Sequence[Run],
    table: Sequence[Mapping[str, Any]],
    directions: Mapping[str, bool],
    significance_results: Sequence[Mapping[str, Any]],
    *,
    reference_index: int = 0,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    differ: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Path]:
    """Write model_comparison_tables.md, model_comparison.csv, model_comparison.json and significance.md.

    The CSV holds the tidy records with a ``best`` column (the bold cells of the markdown tables);
    ``differ`` (:func:`differing_settings`) marks the evaluation settings the runs do not share.
    """
    differ = dict(differ or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [run.name for run in runs]
    paths = {
        "tables": out_dir / "model_comparison_tables.md",
        "csv": out_dir / "model_comparison.csv",
        "json": out_dir / "model_comparison.json",
        "significance": out_dir / "significance.md",
    }
    best = best_cells(table, directions)
    paths["tables"].write_text(render_markdown(table, names, directions, runs=runs, differ=differ),
                               encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["run", "breakdown", "group", "metric", "value", "count", "best"])
        writer.writeheader()
        for record in table:
            writer.writerow({**{key: "" if record[key] is None else record[key] for key in writer.fieldnames[:-1]},
                             "best": is_best(best, record)})
    document = {
        "runs": [
            {"name": run.name, "path": str(run.path), "run": run.metrics.get("run"), "n_predictions": len(run.rows),
             "settings": eval_settings(run)}
            for run in runs
        ],
        "reference": names[reference_index],
        "settings_differ": differ,
        "mixed_settings": mixed_strict_settings(differ),
        "higher_is_better": dict(directions),
        "table": list(table),
        "best": best,
        "significance": {
            "confidence": confidence,
            "n_boot": n_boot,
            "seed": seed,
            "results": list(significance_results),
        },
    }
    paths["json"].write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["significance"].write_text(
        render_significance(significance_results, directions, n_boot=n_boot, seed=seed, confidence=confidence,
                            mixed_settings=mixed_strict_settings(differ)),
        encoding="utf-8",
    )
    return paths


def console_tables(
    table: Sequence[Mapping[str, Any]],
    run_names: Sequence[str],
    directions: Mapping[str, bool],
    significance_results: Sequence[Mapping[str, Any]] = (),
    *,
    confidence: float = 0.95,
) -> list[Any]:
    """rich Tables: overall/closed/open values (best in bold) and, when there are pairs, the paired tests."""
    from rich.markup import escape
    from rich.table import Table

    pivoted = pivot(table)
    best = best_cells(table, directions)
    values_table = Table(title="Model comparison (overall, closed, open)")
    values_table.add_column("Group")
    values_table.add_column("Metric")
    for name in run_names:
        values_table.add_column(escape(name), justify="right")
    for breakdown, group in ((OVERALL, OVERALL), *((ANSWER_TYPE, g) for g in ANSWER_TYPE_GROUPS)):
        if (breakdown, group) not in pivoted:
            continue
        for metric, values in _shown(pivoted[breakdown, group]):
            bold = [] if metric == "count" else best[breakdown][group].get(metric, [])
            label = metric if metric == "count" else f"{metric} {_arrow(directions.get(metric, True))}"
            cells = [f"[bold]{format_value(values.get(r))}[/bold]" if r in bold else format_value(values.get(r))
                     for r in run_names]
            values_table.add_row(group, escape(label), *cells)
        values_table.add_section()
    tables = [values_table]
    if significance_results:
        reference = significance_results[0]["reference"]
        tests = Table(title=f"Paired vs {escape(reference)} (diff = run − reference)")
        for column, justify in (("Run", "left"), ("Metric", "left"), ("n", "right"), ("diff", "right"),
                                (f"{confidence:.0%} CI / McNemar", "left")):
            tests.add_column(column, justify=justify)
        for result in significance_results:
            if result["note"]:
                tests.add_row(escape(result["run"]), "—", "", "", f"[yellow]{escape(result['note'])}[/yellow]")
            for metric, m in result["mcnemar"].items():
                tests.add_row(escape(result["run"]), f"{metric} (McNemar)", str(m["n"]), "",
                              f"b={m['b']} c={m['c']} {m['method']} stat={m['statistic']:.3f} p={_format_p(m['p_value'])}")
            for metric, ci in result["bootstrap"].items():
                excludes_zero = ci["low"] > 0 or ci["high"] < 0
                interval = f"[{ci['low']:+.4f}, {ci['high']:+.4f}]"
                tests.add_row(escape(result["run"]), escape(metric), str(ci["n"]), f"{ci['diff']:+.4f}",
                              f"[bold]{interval}[/bold]" if excludes_zero else interval)
            tests.add_section()
        tables.append(tests)
    return tables


# --------------------------------------------------------------------------------------------
# Everything at once.


def compare(
    specs: Sequence[str | os.PathLike[str]],
    *,
    reference: str | int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    metrics: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
    higher_is_better: Mapping[str, bool] | None = None,
    allow_mixed_settings: bool = False,
) -> dict[str, Any]:
    """Load runs, tabulate them, test each against the reference and write the results.

    Runs evaluated with different :data:`STRICT_SETTINGS` are refused unless ``allow_mixed_settings``;
    every evaluation setting the runs do not share (the prompt too) is marked in the outputs.

    Raises:
        CompareError: missing paths or metrics.json, runs on different data or (without
            ``allow_mixed_settings``) with different generation or scoring settings, an unknown
            reference or unknown metrics.

    Returns:
        ``{"runs", "reference_index", "table", "directions", "significance", "settings_differ",
        "paths", "out_dir"}``.
    """
    runs = load_runs(specs)
    check_same_data(runs)
    differ = check_same_settings(runs, allow_mixed=allow_mixed_settings)
    reference_index = select_reference(runs, reference)
    table_metrics = available_metrics(runs)
    per_sample = sample_metrics(runs)
    sample_selection = None
    if metrics is not None:
        known = set(table_metrics) | set(per_sample)
        unknown = [m for m in metrics if m not in known]
        if unknown:
            raise CompareError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(sorted(known))}")
        table_metrics = [m for m in metrics if m in table_metrics]
        sample_selection = [m for m in metrics if m in per_sample]
    table = comparison_table(runs, table_metrics)
    directions = metric_directions(list(dict.fromkeys([*table_metrics, *per_sample])), higher_is_better)
    results = significance(runs, reference_index, metrics=sample_selection, n_boot=n_boot, seed=seed,
                           confidence=confidence)
    target = Path(out_dir) if out_dir is not None else default_out_dir(specs, runs)
    paths = write_outputs(target, runs, table, directions, results, reference_index=reference_index,
                          n_boot=n_boot, seed=seed, confidence=confidence, differ=differ)
    return {
        "runs": runs,
        "reference_index": reference_index,
        "table": table,
        "directions": directions,
        "significance": results,
        "settings_differ": differ,
        "paths": paths,
        "out_dir": target,
    }
