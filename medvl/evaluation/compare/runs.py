"""Finding and loading evaluation runs for ``medvl.compare``, and naming where its results go.

Each run is an eval directory written by ``python -m medvl.eval`` (``metrics.json``,
``predictions.jsonl`` and ``eval_fingerprint.json``), given as a path, a glob or a sweep directory.
:func:`load_runs` is the only function here that reads files.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
FINGERPRINT_FILE = "eval_fingerprint.json"
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
    ``metrics.json`` file, or a glob matching any of these (a spec that exists as a path is taken as one).

    Raises:
        CompareError: a spec that does not exist, matches nothing, or holds no metrics.json.
    """
    found: list[Path] = []
    for spec in specs:
        text = str(spec)
        # A path that exists is itself, whatever its name holds: a sweep job's folder is named by its overrides
        # (".../eval.metrics=[exact_match,bleu4],lora.r=8/eval").
        if _GLOB_CHARS.search(text) and not Path(text).expanduser().exists():
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
